package secure

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMaxHandshakes is the default cap on the handshakes in progress at
// once on one listener ([NewGate] with max 0). A job's own processes need
// one slot each for a few milliseconds while they connect, so 128 leaves
// ample room for the largest jobs' set-up bursts while bounding what a
// flood of connections that never finish the handshake can hold: 128 file
// descriptors and goroutines per listener, each for at most the handshake
// deadline ([DefaultTimeout]).
const DefaultMaxHandshakes = 128

// WarnInterval is the least time between two warnings a [Gate] logs about
// the connections it refused.
const WarnInterval = 10 * time.Second

// Gate caps the connections in progress on one listener: the handshakes
// that have not finished (an accept loop takes a slot for each connection
// it accepts and gives it back when the handshake ends, whatever its
// outcome), or, through [LimitListener], the connections open at once.
// Authenticated, established connections do not hold a slot.
//
// A connection that finds every slot taken is refused at once: [Gate.Admit]
// closes it and logs a warning at most once per [WarnInterval], with the
// number refused since the last one. Nothing else happens: the job goes on,
// and the peer sees its connection closed (a process of the job retries;
// see [Retryable]).
//
// The accept loops of the rendezvous store (and so the elastic launchers'
// store), the CPU ring and the parameter server each have a Gate of
// DefaultMaxHandshakes; the Prometheus endpoint wraps its listener in
// LimitListener. A Gate is safe for concurrent use.
//
//	gate := secure.NewGate("rendezvous store", 0, log)
//	for {
//		c, err := ln.Accept()
//		...
//		if !gate.Admit(c) {
//			continue // refused and closed
//		}
//		go func() {
//			conn, err := secure.Server(c, opt)
//			gate.Release()
//			...
//		}()
//	}
type Gate struct {
	name string
	max  int64
	log  *slog.Logger

	inUse   atomic.Int64
	refused atomic.Uint64

	mu         sync.Mutex
	lastWarn   time.Time
	warnedUpTo uint64 // refused count at the last warning
}

// NewGate returns a gate of max slots (DefaultMaxHandshakes when max is 0;
// a negative max means no cap, for tests only). name says in its warnings
// which listener it guards; log receives them (slog.Default() when nil).
func NewGate(name string, max int, log *slog.Logger) *Gate {
	if max == 0 {
		max = DefaultMaxHandshakes
	}
	if log == nil {
		log = slog.Default()
	}
	return &Gate{name: name, max: int64(max), log: log}
}

// Max returns the number of slots (negative: no cap).
func (g *Gate) Max() int { return int(g.max) }

// InProgress returns the slots taken now.
func (g *Gate) InProgress() int { return int(g.inUse.Load()) }

// Refused returns the number of connections refused so far.
func (g *Gate) Refused() uint64 { return g.refused.Load() }

// TryAcquire takes a slot if one is free. Every true result must be
// matched by one Release.
func (g *Gate) TryAcquire() bool {
	if g.max < 0 {
		g.inUse.Add(1)
		return true
	}
	for {
		n := g.inUse.Load()
		if n >= g.max {
			return false
		}
		if g.inUse.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release gives a slot back.
func (g *Gate) Release() { g.inUse.Add(-1) }

// Admit takes a slot for c, or, when every slot is taken, closes c at once,
// counts it, warns (rate-limited) and returns false.
func (g *Gate) Admit(c net.Conn) bool {
	if g.TryAcquire() {
		return true
	}
	c.Close()
	g.refuse()
	return false
}

func (g *Gate) refuse() {
	n := g.refused.Add(1)
	now := time.Now()
	g.mu.Lock()
	if !g.lastWarn.IsZero() && now.Sub(g.lastWarn) < WarnInterval {
		g.mu.Unlock()
		return
	}
	since := n - g.warnedUpTo
	g.lastWarn, g.warnedUpTo = now, n
	g.mu.Unlock()
	g.log.Warn("refusing connections: every slot is taken (a flood of connections, or peers that stall)",
		"listener", g.name, "max_in_progress", g.max, "refused", since, "refused_total", n)
}

// LimitListener returns a listener whose Accept returns at most g.Max()
// connections open at once: each takes a slot of g, given back when it is
// closed (once, however often Close is called). A connection accepted while
// every slot is taken is refused as by [Gate.Admit], and Accept waits for
// the next one. Unlike golang.org/x/net/netutil.LimitListener it never
// blocks Accept, so the listen queue keeps draining and a flood cannot
// delay the connections that do get a slot.
func LimitListener(ln net.Listener, g *Gate) net.Listener {
	return &limitListener{Listener: ln, g: g}
}

type limitListener struct {
	net.Listener
	g *Gate
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.g.Admit(c) {
			return &limitConn{Conn: c, g: l.g}, nil
		}
	}
}

type limitConn struct {
	net.Conn
	g    *Gate
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.g.Release)
	return err
}

// Retryable reports whether a failed connection attempt may succeed when
// tried again: err is a handshake failure ([ErrHandshake]: the server
// closed or reset the connection, as it does when its [Gate] is full, or
// the exchange timed out) or a dial error, and not an [ErrAuth] (the peer
// refused this process's secret or certificate, which no retry changes).
func Retryable(err error) bool {
	if err == nil || errors.Is(err, ErrAuth) {
		return false
	}
	if errors.Is(err, ErrHandshake) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
