package job

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/dist/secure"
)

// psAddrKey is where rank 0 publishes its parameter server's address.
const psAddrKey = "ps/addr"

// psDialTimeout bounds a worker's attempts to reach the parameter server.
const psDialTimeout = 2 * time.Minute

// asyncTransport connects this rank to the parameter server of an
// asynchronous job: rank 0 listens on its host (port chosen by the system)
// and publishes the address in the rendezvous store; the other ranks read
// it and connect. Every connection passes the job's handshake (secret,
// TLS when set), like the ring's. The function returned closes what it
// opened.
func (j *Job) asyncTransport(ctx context.Context) (trainer.AsyncTransport, func() error, error) {
	if j.env.Rank == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(j.host, "0"))
		if err != nil {
			return trainer.AsyncTransport{}, nil, fmt.Errorf("rank 0 cannot listen for the parameter server on %s: %w", j.host, err)
		}
		if err := j.store.Set(ctx, psAddrKey, []byte(ln.Addr().String())); err != nil {
			ln.Close()
			return trainer.AsyncTransport{}, nil, fmt.Errorf("rank 0: publishing the parameter server's address: %w", err)
		}
		closeLn := func() error {
			ln.Close() // the server may have closed it already
			return nil
		}
		return trainer.AsyncTransport{Listener: ln, Upgrade: func(c net.Conn) (net.Conn, error) { return secure.Server(c, j.srvOpts) }},
			closeLn, nil
	}
	return trainer.AsyncTransport{Dial: func(ctx context.Context) (net.Conn, error) {
		addr, err := j.store.Get(ctx, psAddrKey)
		if err != nil {
			return nil, fmt.Errorf("reading the parameter server's address: %w", err)
		}
		// The server refuses connections while its handshake cap is full
		// (secure.Gate): retry those, for at most psDialTimeout.
		ctx, cancel := context.WithTimeout(ctx, psDialTimeout)
		defer cancel()
		backoff := 20 * time.Millisecond
		for {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", string(addr))
			if err == nil {
				if c, err = secure.Client(c, j.cliOpts); err == nil {
					return c, nil
				}
			}
			if !secure.Retryable(err) {
				return nil, err
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("%w (gave up after %v: %w)", err, psDialTimeout, ctx.Err())
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}}, func() error { return nil }, nil
}
