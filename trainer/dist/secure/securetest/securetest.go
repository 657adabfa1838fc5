// Package securetest floods a listener with connections that never finish
// the handshake, for the tests of the listeners that secure.Gate guards
// (the rendezvous store, the CPU ring, the parameter server, the metrics
// endpoint) and the end-to-end tests of cmd/gotrain.
//
// A [Flood] opens n TCP connections to one address, a bounded number at a
// time, sends each the same payload (typically secure.Preamble, the first
// line of a real handshake) and then holds it, reading, until the server
// closes it or the flood is stopped. It never reconnects. It counts the
// connections it opened, those it could not open, and those the server
// closed, and when each closed: a connection the server refused at once
// (its gate was full) closes within milliseconds, one that held a slot
// closes at the handshake deadline.
//
//	f := securetest.Start("127.0.0.1:29500", 2000, []byte(secure.Preamble))
//	defer f.Stop()
//	f.WaitOpened(30 * time.Second)
//	require.Equal(t, secure.DefaultMaxHandshakes, f.Held())
//
// The flood goes only where the test sends it (use loopback addresses) and
// is bounded by n; [Start] does not raise the process's open-file limit
// (see [RaiseFileLimit]).
package securetest

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// dialers is how many connections a Flood opens at once.
const dialers = 64

// Flood is a running flood; see the package doc.
type Flood struct {
	addr    string
	payload []byte

	opened, failed, closed atomic.Int64
	quick                  atomic.Int64 // closed by the server within QuickClose

	mu    sync.Mutex
	conns map[net.Conn]struct{}

	stop   chan struct{}
	dialWG sync.WaitGroup // the dialers
	connWG sync.WaitGroup // one reader per open connection
	once   sync.Once
}

// QuickClose is how soon after it opened a connection must be closed by
// the server to count as refused at once ([Flood.Refused]).
const QuickClose = 500 * time.Millisecond

// Start opens n connections to addr in the background, each sending
// payload and then held.
func Start(addr string, n int, payload []byte) *Flood {
	f := &Flood{addr: addr, payload: payload, conns: map[net.Conn]struct{}{}, stop: make(chan struct{})}
	var next atomic.Int64
	for range min(dialers, n) {
		f.dialWG.Go(func() {
			for next.Add(1) <= int64(n) {
				select {
				case <-f.stop:
					return
				default:
				}
				f.open()
			}
		})
	}
	return f
}

func (f *Flood) open() {
	c, err := net.DialTimeout("tcp", f.addr, 10*time.Second)
	if err != nil {
		f.failed.Add(1)
		return
	}
	start := time.Now()
	f.mu.Lock()
	select {
	case <-f.stop:
		f.mu.Unlock()
		c.Close()
		return
	default:
	}
	f.conns[c] = struct{}{}
	f.connWG.Add(1)
	f.mu.Unlock()
	f.opened.Add(1)
	if len(f.payload) > 0 {
		_, _ = c.Write(f.payload)
	}
	go func() {
		defer f.connWG.Done()
		var b [64]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				break
			}
		}
		f.mu.Lock()
		_, mine := f.conns[c]
		delete(f.conns, c)
		f.mu.Unlock()
		if mine { // not closed by Stop
			f.closed.Add(1)
			if time.Since(start) < QuickClose {
				f.quick.Add(1)
			}
		}
		c.Close()
	}()
}

// WaitOpened waits until every connection has been opened or has failed to
// open, or timeout passes; it reports whether they all were.
func (f *Flood) WaitOpened(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { f.dialWG.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Opened is the number of connections opened so far.
func (f *Flood) Opened() int { return int(f.opened.Load()) }

// Failed is the number of connections that could not be opened.
func (f *Flood) Failed() int { return int(f.failed.Load()) }

// Closed is the number of connections the server closed.
func (f *Flood) Closed() int { return int(f.closed.Load()) }

// Refused is the number of connections the server closed within
// QuickClose of their opening: refused at once.
func (f *Flood) Refused() int { return int(f.quick.Load()) }

// Held is the number of connections open now.
func (f *Flood) Held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// WaitHeld waits until Held() == n or timeout passes, and returns Held().
func (f *Flood) WaitHeld(n int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		h := f.Held()
		if h == n || time.Now().After(deadline) {
			return h
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop stops opening connections, closes those still open and waits for
// the flood's goroutines. It may be called more than once.
func (f *Flood) Stop() {
	f.once.Do(func() {
		close(f.stop)
		f.dialWG.Wait()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		clear(f.conns)
		f.mu.Unlock()
		f.connWG.Wait()
	})
}

// RaiseFileLimit raises this process's soft limit on open files to at
// least want, raising the hard limit too when the process may (root), and
// returns the soft limit now in force.
func RaiseFileLimit(want uint64) uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	if l.Cur >= want {
		return l.Cur
	}
	if l.Max < want {
		try := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &try) == nil {
			return want
		}
	}
	l.Cur = l.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}
