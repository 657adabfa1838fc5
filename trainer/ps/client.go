package ps

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Client is a worker's connection to the parameter server. It is not safe
// for concurrent use: a worker pushes one gradient at a time.
type Client struct {
	c      net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
	params []float32
	buf    []byte
}

// Work is what the server gives a worker: the parameters (flat, valid until
// the next call) at Version, and the batch to compute; End when the run's
// work is done.
type Work struct {
	End     bool
	Version uint64
	Epoch   int
	Batch   int
	Waited  time.Duration // held by the staleness bound
	Params  []float32
}

// Join says hello on c (already authenticated) as worker id with a model
// of nparams values and returns the first work.
func Join(ctx context.Context, c net.Conn, id, nparams int) (*Client, Work, error) {
	cl := &Client{c: c, r: bufio.NewReaderSize(c, 1<<16), w: bufio.NewWriterSize(c, 1<<16), params: make([]float32, nparams), buf: make([]byte, 1<<16)}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := writeHello(cl.w, Hello{Worker: uint32(id), NParams: uint32(nparams)}); err != nil {
		return nil, Work{}, fmt.Errorf("ps: worker %d saying hello: %w", id, err)
	}
	wk, err := cl.read()
	if err != nil {
		return nil, Work{}, err
	}
	return cl, wk, nil
}

func (cl *Client) read() (Work, error) {
	rp, err := readReply(cl.r, cl.params, cl.buf)
	if err != nil {
		return Work{}, fmt.Errorf("ps: reading the server's reply: %w (the parameter server, rank 0, may have stopped)", err)
	}
	switch rp.Kind {
	case kindRefused:
		return Work{}, fmt.Errorf("%w: %s", ErrRefused, rp.Message)
	case kindLost:
		return Work{}, fmt.Errorf("%w: %s", ErrLost, rp.Message)
	case kindEnd:
		return Work{End: true, Version: rp.Version, Waited: time.Duration(rp.WaitedNanos)}, nil
	}
	return Work{Version: rp.Version, Epoch: int(rp.Epoch), Batch: int(rp.Batch), Waited: time.Duration(rp.WaitedNanos), Params: rp.Params}, nil
}

// Push sends the gradient (flat, the model's parameter order) of the work
// w and returns the next work. ctx bounds the call.
func (cl *Client) Push(ctx context.Context, w Work, samples int, grad []float32) (Work, error) {
	stop := context.AfterFunc(ctx, func() { _ = cl.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := writePush(cl.w, Push{BaseVersion: w.Version, Samples: uint32(samples), Epoch: uint32(w.Epoch), Batch: uint32(w.Batch), Grad: grad}); err != nil {
		// The server may have declared this worker lost and closed the
		// connection: its lost reply is then waiting to be read.
		_ = cl.c.SetReadDeadline(time.Now().Add(lostReadTimeout))
		if _, rerr := cl.read(); errors.Is(rerr, ErrLost) {
			return Work{}, rerr
		}
		return Work{}, fmt.Errorf("ps: pushing epoch %d batch %d: %w (the parameter server, rank 0, may have stopped)", w.Epoch+1, w.Batch, err)
	}
	return cl.read()
}

// lostReadTimeout bounds the look for a lost reply after a failed push.
const lostReadTimeout = time.Second

// Close closes the connection.
func (cl *Client) Close() error { return cl.c.Close() }
