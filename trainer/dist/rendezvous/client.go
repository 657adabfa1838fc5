package rendezvous

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gotrain/gotrain/trainer/dist/secure"
)

// Client is a connection to the store. Its methods may be called
// concurrently; each honours its ctx (a blocked Get or Wait gives up when
// ctx ends and tells the server to stop waiting).
type Client struct {
	addr string
	conn net.Conn

	wmu sync.Mutex // one request on the wire at a time

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan response
	err     error // why the connection ended
	done    chan struct{}
	closed  bool
}

type response struct {
	status byte
	body   []byte
}

type setterKey struct{}

// WithSetter returns a ctx that names who is expected to set the keys a
// Get or Wait waits for ("rank 0", "the launcher"); the error on a timeout
// quotes it.
func WithSetter(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, setterKey{}, who)
}

// Dial connects to the store at addr and authenticates with opt. It retries
// refused (and other failed) connections until ctx ends, since the server
// may start later; a peer that refuses this job's secret ends it at once.
func Dial(ctx context.Context, addr string, opt secure.Options) (*Client, error) {
	if opt.TLS != nil && opt.TLS.ServerName == "" && !opt.TLS.InsecureSkipVerify {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			opt.TLS = opt.TLS.Clone()
			opt.TLS.ServerName = host
		}
	}
	backoff := 20 * time.Millisecond
	var lastErr error
	attempts := 0
	for {
		attempts++
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			o := opt
			if dl, ok := ctx.Deadline(); ok {
				left := time.Until(dl)
				if t := o.Timeout; t <= 0 || t > left {
					o.Timeout = max(left, time.Millisecond)
				}
			}
			var conn net.Conn
			conn, err = secure.Client(raw, o)
			if err == nil {
				return newClient(addr, conn), nil
			}
			if errors.Is(err, secure.ErrAuth) {
				return nil, fmt.Errorf("rendezvous: connecting to %s: %w", addr, err)
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rendezvous: could not connect to the store at %s (%d attempts, gave up: %v): last error: %w; "+
				"check that the rank 0 process is running and that MASTER_ADDR/MASTER_PORT point at it", addr, attempts, ctx.Err(), lastErr)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func newClient(addr string, conn net.Conn) *Client {
	c := &Client{addr: addr, conn: conn, pending: map[uint64]chan response{}, done: make(chan struct{})}
	go c.readLoop()
	return c
}

func (c *Client) readLoop() {
	var reason error
	for {
		p, err := readFrame(c.conn, maxResponse)
		if err == nil && len(p) < respHeader {
			err = fmt.Errorf("short response of %d bytes", len(p))
		}
		if err != nil {
			if reason == nil {
				reason = err
			}
			break
		}
		id, status, body := binary.BigEndian.Uint64(p), p[8], p[respHeader:]
		if id == 0 {
			// The server reports a protocol error, then hangs up.
			reason = fmt.Errorf("server reported: %s", truncate(body))
			continue
		}
		c.mu.Lock()
		ch, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ok {
			ch <- response{status, body}
		}
	}
	c.mu.Lock()
	if c.closed {
		c.err = errors.New("rendezvous: client closed")
	} else {
		c.err = fmt.Errorf("rendezvous: connection to the store at %s lost: %w", c.addr, reason)
	}
	c.pending = nil
	c.mu.Unlock()
	c.conn.Close()
	close(c.done)
}

func truncate(b []byte) string {
	if len(b) > maxErrorMsg {
		b = b[:maxErrorMsg]
	}
	return string(b)
}

// Close closes the connection; calls in flight end with an error.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}

// call sends r and waits for its response or ctx's end.
func (c *Client) call(ctx context.Context, r request) (response, error) {
	if err := ctx.Err(); err != nil {
		return response{}, err
	}
	ch := make(chan response, 1)
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return response{}, err
	}
	if c.closed {
		c.mu.Unlock()
		return response{}, errors.New("rendezvous: client closed")
	}
	c.nextID++
	r.id = c.nextID
	c.pending[r.id] = ch
	c.mu.Unlock()
	if err := c.send(ctx, r); err != nil {
		c.forget(r.id)
		return response{}, err
	}
	select {
	case resp := <-ch:
		return resp, nil
	case <-c.done:
		select {
		case resp := <-ch:
			return resp, nil
		default:
		}
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		return response{}, err
	case <-ctx.Done():
		c.forget(r.id)
		if r.op == opGet || r.op == opWait {
			go c.send(context.Background(), request{op: opCancel, id: r.id})
		}
		return response{}, ctx.Err()
	}
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// send writes one request frame. A failed write leaves the stream broken,
// so it closes the connection.
func (c *Client) send(ctx context.Context, r request) error {
	p := encodeRequest(r)
	hdr := binary.BigEndian.AppendUint32(nil, uint32(len(p)))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	dl, _ := ctx.Deadline()
	c.conn.SetWriteDeadline(dl)
	bufs := net.Buffers{hdr, p}
	if _, err := bufs.WriteTo(c.conn); err != nil {
		c.conn.Close()
		select {
		case <-c.done:
		case <-time.After(time.Second):
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err != nil {
			return c.err
		}
		return fmt.Errorf("rendezvous: sending to the store at %s: %w", c.addr, err)
	}
	return nil
}

func timeoutMS(ctx context.Context) uint64 {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	// The server's own limit is a backstop in case the cancel is lost:
	// the client's ctx normally ends first.
	return uint64(max(time.Until(dl)+time.Second, time.Millisecond) / time.Millisecond)
}

func (c *Client) remoteErr(op, key string, resp response) error {
	if resp.status == statusError {
		return fmt.Errorf("rendezvous: %s %q: %s", op, key, truncate(resp.body))
	}
	return fmt.Errorf("rendezvous: %s %q: unexpected response status %d", op, key, resp.status)
}

// Set stores value under key, replacing any previous value, and wakes the
// Gets and Waits blocked on it.
func (c *Client) Set(ctx context.Context, key string, value []byte) error {
	if err := validKey(key); err != nil {
		return err
	}
	if len(value) > MaxValueLen {
		return fmt.Errorf("rendezvous: Set %q: value of %d bytes exceeds the limit of %d", key, len(value), MaxValueLen)
	}
	resp, err := c.call(ctx, request{op: opSet, keys: []string{key}, value: value})
	if err != nil {
		return fmt.Errorf("rendezvous: Set %q: %w", key, err)
	}
	if resp.status != statusOK {
		return c.remoteErr("Set", key, resp)
	}
	return nil
}

// Get returns key's value, waiting until some process sets it or ctx ends.
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	if err := validKey(key); err != nil {
		return nil, err
	}
	resp, err := c.call(ctx, request{op: opGet, keys: []string{key}, timeoutMS: timeoutMS(ctx)})
	if err == nil && resp.status == statusTimeout {
		err = context.DeadlineExceeded
	}
	if err != nil {
		return nil, c.waitErr(ctx, "Get", []string{key}, err)
	}
	if resp.status != statusOK {
		return nil, c.remoteErr("Get", key, resp)
	}
	return resp.body, nil
}

func (c *Client) waitErr(ctx context.Context, op string, keys []string, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("rendezvous: %s %q: %w", op, keys, err)
	}
	who := "no process has set it yet: is the process that publishes it running and in the same job?"
	if s, ok := ctx.Value(setterKey{}).(string); ok && s != "" {
		who = "it should have been set by " + s
	}
	if len(keys) == 1 {
		return fmt.Errorf("rendezvous: %s: key %q was not set in time (%s): %w", op, keys[0], who, err)
	}
	return fmt.Errorf("rendezvous: %s: keys %q were not all set in time (%s): %w", op, keys, who, err)
}

// Add adds delta to the integer stored under key (0 when absent; stored as
// decimal text, so Get returns e.g. "3") and returns the new value. It is
// atomic across clients.
func (c *Client) Add(ctx context.Context, key string, delta int64) (int64, error) {
	if err := validKey(key); err != nil {
		return 0, err
	}
	resp, err := c.call(ctx, request{op: opAdd, keys: []string{key}, delta: delta})
	if err != nil {
		return 0, fmt.Errorf("rendezvous: Add %q: %w", key, err)
	}
	if resp.status != statusOK {
		return 0, c.remoteErr("Add", key, resp)
	}
	if len(resp.body) != 8 {
		return 0, fmt.Errorf("rendezvous: Add %q: malformed response of %d bytes", key, len(resp.body))
	}
	return int64(binary.BigEndian.Uint64(resp.body)), nil
}

// Wait returns once every key is set, or ctx's end.
func (c *Client) Wait(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) > MaxWaitKeys {
		return fmt.Errorf("rendezvous: Wait for %d keys exceeds the limit of %d", len(keys), MaxWaitKeys)
	}
	for _, k := range keys {
		if err := validKey(k); err != nil {
			return err
		}
	}
	resp, err := c.call(ctx, request{op: opWait, keys: keys, timeoutMS: timeoutMS(ctx)})
	if err == nil && resp.status == statusTimeout {
		err = context.DeadlineExceeded
	}
	if err != nil {
		return c.waitErr(ctx, "Wait", keys, err)
	}
	if resp.status != statusOK {
		return c.remoteErr("Wait", fmt.Sprint(keys), resp)
	}
	return nil
}
