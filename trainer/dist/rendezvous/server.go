package rendezvous

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gotrain/gotrain/trainer/dist/secure"
)

// writeTimeout bounds one response write: a peer that stops reading loses
// its connection instead of holding a goroutine.
const writeTimeout = 30 * time.Second

// Server is the key-value store. It serves until Close.
type Server struct {
	ln   net.Listener
	opt  secure.Options
	gate *secure.Gate // handshakes in progress

	mu       sync.Mutex
	data     map[string][]byte
	size     int64 // bytes of keys and values
	maxStore int64
	ready    map[string]*waitEntry
	conns    map[net.Conn]struct{} // raw connections, handshaking or served
	closed   bool

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type waitEntry struct {
	ch chan struct{} // closed when the key is set
	n  int           // waiters
}

// Serve serves the store on ln until Close. Every connection must pass
// secure.Server with opt before any request is read. At most
// secure.DefaultMaxHandshakes handshakes run at once; a connection beyond
// them is closed at once (see secure.Gate).
func Serve(ln net.Listener, opt secure.Options) *Server {
	return serve(ln, opt, secure.DefaultMaxHandshakes)
}

func serve(ln net.Listener, opt secure.Options, maxHandshakes int) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		ln: ln, opt: opt, gate: secure.NewGate("rendezvous store on "+ln.Addr().String(), maxHandshakes, nil),
		data: map[string][]byte{}, maxStore: MaxStoreSize,
		ready: map[string]*waitEntry{}, conns: map[net.Conn]struct{}{},
		ctx: ctx, cancel: cancel,
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server: it closes the listener and every connection and
// waits for the server's goroutines to end. Blocked clients get errors.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return err
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (e.g. out of file descriptors): back off and retry.
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !s.gate.Admit(c) {
			continue // refused: too many handshakes in progress
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			s.gate.Release()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

type serverConn struct {
	s       *Server
	raw, c  net.Conn
	wmu     sync.Mutex
	ctx     context.Context // canceled when the connection ends
	mu      sync.Mutex
	pending map[uint64]context.CancelFunc
}

func (s *Server) serveConn(raw net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, raw)
		s.mu.Unlock()
		raw.Close()
	}()
	c, err := secure.Server(raw, s.opt)
	s.gate.Release() // authenticated or gone: the slot is free
	if err != nil {
		return // secure.Server closed it; the peer is not part of the job
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel() // releases every waiter of this connection
	sc := &serverConn{s: s, raw: raw, c: c, ctx: ctx, pending: map[uint64]context.CancelFunc{}}
	for {
		p, err := readFrame(c, maxRequest)
		if err != nil {
			if errors.Is(err, errMalformed) {
				sc.respond(0, statusError, []byte(err.Error()))
			}
			return
		}
		req, err := decodeRequest(p)
		if err != nil {
			sc.respond(0, statusError, []byte(err.Error()))
			return
		}
		if !sc.handle(req) {
			return
		}
	}
}

// respond writes one response; on a write error it closes the connection.
func (sc *serverConn) respond(id uint64, status byte, body []byte) bool {
	hdr := make([]byte, 4+respHeader)
	binary.BigEndian.PutUint32(hdr, uint32(respHeader+len(body)))
	binary.BigEndian.PutUint64(hdr[4:], id)
	hdr[12] = status
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.raw.SetWriteDeadline(time.Now().Add(writeTimeout))
	bufs := net.Buffers{hdr, body}
	if _, err := bufs.WriteTo(sc.c); err != nil {
		sc.raw.Close()
		return false
	}
	return true
}

func (sc *serverConn) fail(id uint64, err error) bool {
	return sc.respond(id, statusError, []byte(err.Error()))
}

// handle serves one request; false ends the connection.
func (sc *serverConn) handle(r request) bool {
	s := sc.s
	switch r.op {
	case opSet:
		if err := s.set(r.keys[0], r.value); err != nil {
			return sc.fail(r.id, err)
		}
		return sc.respond(r.id, statusOK, nil)
	case opAdd:
		v, err := s.add(r.keys[0], r.delta)
		if err != nil {
			return sc.fail(r.id, err)
		}
		return sc.respond(r.id, statusOK, binary.BigEndian.AppendUint64(nil, uint64(v)))
	case opGet, opWait:
		if r.op == opGet {
			if v, ok := s.lookup(r.keys[0]); ok {
				return sc.respond(r.id, statusOK, v)
			}
		}
		sc.mu.Lock()
		if _, dup := sc.pending[r.id]; dup {
			sc.mu.Unlock()
			sc.fail(0, fmt.Errorf("%w: request id %d is already in use", errMalformed, r.id))
			return false
		}
		if len(sc.pending) >= MaxPendingPerConn {
			sc.mu.Unlock()
			return sc.fail(r.id, fmt.Errorf("rendezvous: too many blocked requests on one connection (limit %d)", MaxPendingPerConn))
		}
		ctx, cancel := context.WithCancel(sc.ctx)
		if r.timeoutMS > 0 {
			ctx, cancel = context.WithTimeout(sc.ctx, time.Duration(min(r.timeoutMS, uint64(365*24*time.Hour/time.Millisecond)))*time.Millisecond)
		}
		sc.pending[r.id] = cancel
		sc.mu.Unlock()
		s.wg.Add(1)
		go sc.wait(ctx, cancel, r)
		return true
	case opCancel:
		sc.mu.Lock()
		if cancel, ok := sc.pending[r.id]; ok {
			cancel()
		}
		sc.mu.Unlock()
		return true
	}
	sc.fail(0, fmt.Errorf("%w: unknown operation %d", errMalformed, r.op))
	return false
}

func (sc *serverConn) wait(ctx context.Context, cancel context.CancelFunc, r request) {
	defer sc.s.wg.Done()
	defer func() {
		cancel()
		sc.mu.Lock()
		delete(sc.pending, r.id)
		sc.mu.Unlock()
	}()
	var val []byte
	for _, k := range r.keys {
		v, err := sc.s.waitKey(ctx, k)
		if err != nil {
			if sc.ctx.Err() == nil { // the connection is still there
				sc.respond(r.id, statusTimeout, nil)
			}
			return
		}
		val = v
	}
	if r.op == opWait {
		val = nil
	}
	sc.respond(r.id, statusOK, val)
}

func (s *Server) lookup(key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	return v, ok
}

// waitKey returns key's value once it is set, or ctx's error.
func (s *Server) waitKey(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	if v, ok := s.data[key]; ok {
		s.mu.Unlock()
		return v, nil
	}
	e := s.ready[key]
	if e == nil {
		e = &waitEntry{ch: make(chan struct{})}
		s.ready[key] = e
	}
	e.n++
	s.mu.Unlock()
	select {
	case <-e.ch:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.n--
	if e.n == 0 && s.ready[key] == e {
		delete(s.ready, key)
	}
	if v, ok := s.data[key]; ok {
		return v, nil
	}
	return nil, ctx.Err()
}

// store sets key under s.mu.
func (s *Server) store(key string, value []byte) error {
	old, had := s.data[key]
	size := s.size + int64(len(value))
	if had {
		size -= int64(len(old))
	} else {
		size += int64(len(key))
	}
	if size > s.maxStore {
		return fmt.Errorf("rendezvous: store full: setting %q (%d bytes) would exceed the store's limit of %d bytes", key, len(value), s.maxStore)
	}
	s.size = size
	s.data[key] = value
	if e := s.ready[key]; e != nil {
		close(e.ch)
		delete(s.ready, key)
	}
	return nil
}

func (s *Server) set(key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store(key, value)
}

func (s *Server) add(key string, delta int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cur int64
	if old, ok := s.data[key]; ok {
		v, err := strconv.ParseInt(string(old), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("rendezvous: Add to %q: its value is not a decimal integer", key)
		}
		cur = v
	}
	n := cur + delta
	if (delta > 0 && n < cur) || (delta < 0 && n > cur) {
		return 0, fmt.Errorf("rendezvous: Add %d to %q overflows int64", delta, key)
	}
	if err := s.store(key, []byte(strconv.FormatInt(n, 10))); err != nil {
		return 0, err
	}
	return n, nil
}
