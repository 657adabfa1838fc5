package dist

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/gotrain/gotrain/trainer/dist/secure"
)

// RingConfig configures NewRing.
type RingConfig struct {
	Rank, Size int
	// Store is where ranks publish and look up their addresses (required
	// when Size > 1).
	Store Store
	// Prefix is the store key prefix of this group, e.g. "ring/"; it is also
	// part of the handshake, so connections from another group are refused.
	Prefix string
	// ListenHost is the address to listen on and advertise; "" = 127.0.0.1.
	ListenHost string
	// TCPOnly disables the Unix-socket path: by default, ranks on the same
	// host (same boot and network namespace) connect through an abstract
	// Unix socket, which moves data about 2.5 times faster than loopback TCP
	// here. The environment variable GOTRAIN_RING_TRANSPORT=tcp does the same.
	TCPOnly bool
	// Upgrade, if set, wraps each new connection (authentication,
	// encryption) before the handshake; server is true on the accepting side.
	Upgrade func(c net.Conn, server bool) (net.Conn, error)
	// ChunkBytes is the largest frame payload (the pipelining unit);
	// default DefaultChunkBytes, rounded down to a multiple of 8, clamped
	// to [4 KiB, 64 MiB].
	ChunkBytes int
	// Timeout bounds connection setup (default 2 minutes); collectives use
	// their ctx.
	Timeout time.Duration
	// MaxHandshakes caps the handshakes (Upgrade and hello) in progress at
	// once on each of this rank's listeners; a connection beyond it is
	// closed at once, and the dialing rank retries (see secure.Gate).
	// 0: secure.DefaultMaxHandshakes; negative: no cap (tests only).
	MaxHandshakes int
}

// DefaultChunkBytes is the default RingConfig.ChunkBytes.
const DefaultChunkBytes = 1 << 20

const (
	defaultSetupTimeout = 2 * time.Minute
	socketBufferBytes   = 4 << 20
	abortNotifyWait     = 50 * time.Millisecond
	abortWriteTimeout   = 100 * time.Millisecond
	drainWait           = 200 * time.Millisecond
)

type ring struct {
	rank, size int
	useUnix    bool   // same-host peers connect through Unix sockets
	hostID     string // hostIdentity(), when useUnix
	prefix     string
	chunk      int
	peers      []*peer // by rank; nil at our own rank
	store      Store

	opMu    sync.Mutex // serialises collectives
	scratch []byte     // receive scratch (chunk bytes, 8-aligned), under opMu
	tmp     []byte     // big-endian decode scratch, under opMu
	wtmp    []byte     // big-endian encode scratch for collective senders, under opMu

	mu       sync.Mutex
	cause    error // why the communicator was aborted; nil while healthy
	causeCtx bool  // cause is a context ending
	done     chan struct{}
}

func alignedBytes(n int) []byte {
	if n == 0 {
		return nil
	}
	f := make([]float64, (n+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), n)
}

// NewRing connects a group of cfg.Size ranks (a full mesh of TCP
// connections) and returns this rank's Communicator. Every rank must call it
// with the same Size, Store and Prefix. It returns once all peers are
// connected, or fails after cfg.Timeout or when ctx ends.
func NewRing(ctx context.Context, cfg RingConfig) (Communicator, error) {
	if cfg.Size < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.Size {
		return nil, &OpError{Rank: cfg.Rank, Op: "setup", Kind: ErrInvalidArg,
			Err: fmt.Errorf("rank %d, size %d", cfg.Rank, cfg.Size)}
	}
	if cfg.Size > 1 && cfg.Store == nil {
		return nil, &OpError{Rank: cfg.Rank, Op: "setup", Kind: ErrInvalidArg, Err: errors.New("no Store")}
	}
	if len(cfg.Prefix) > 1024 {
		return nil, &OpError{Rank: cfg.Rank, Op: "setup", Kind: ErrInvalidArg, Err: errors.New("prefix longer than 1024 bytes")}
	}
	chunk := cfg.ChunkBytes
	if chunk <= 0 {
		chunk = DefaultChunkBytes
	}
	chunk = min(max(chunk, 4096), maxFramePayload) &^ 7
	c := &ring{
		rank: cfg.Rank, size: cfg.Size, prefix: cfg.Prefix, chunk: chunk, store: cfg.Store,
		peers: make([]*peer, cfg.Size), done: make(chan struct{}),
	}
	c.scratch = alignedBytes(chunk)
	if !nativeLE {
		c.tmp, c.wtmp = alignedBytes(chunk), alignedBytes(chunk)
	}
	if cfg.Size == 1 {
		return c, nil
	}
	if err := c.connect(ctx, cfg); err != nil {
		c.abort(err, false)
		return nil, err
	}
	return c, nil
}

func tune(conn net.Conn) {
	switch tc := conn.(type) {
	case *net.TCPConn:
		_ = tc.SetNoDelay(true)
		_ = tc.SetReadBuffer(socketBufferBytes)
		_ = tc.SetWriteBuffer(socketBufferBytes)
	case *net.UnixConn:
		_ = tc.SetReadBuffer(socketBufferBytes)
		_ = tc.SetWriteBuffer(socketBufferBytes)
	}
}

// hostIdentity names this host and network namespace: ranks that share it
// can reach each other's abstract Unix sockets. Empty where unknown.
func hostIdentity() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(boot)) + "/" + ns
}

// endpoint is what a rank publishes: its TCP address and, when it has one,
// its Unix socket and host identity, one per line.
type endpoint struct{ tcp, unix, host string }

func (e endpoint) encode() []byte { return []byte(e.tcp + "\n" + e.unix + "\n" + e.host) }

func parseEndpoint(b []byte) endpoint {
	parts := strings.SplitN(string(b), "\n", 3)
	e := endpoint{tcp: parts[0]}
	if len(parts) == 3 {
		e.unix, e.host = parts[1], parts[2]
	}
	return e
}

type accepted struct {
	p   *peer
	err error
}

func (c *ring) connect(ctx context.Context, cfg RingConfig) error {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultSetupTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	setupErr := func(kind error, peers []int, err error) error {
		return &OpError{Rank: c.rank, Op: "setup", Peers: peers, Kind: kind, Err: err}
	}

	host := cfg.ListenHost
	if host == "" {
		host = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return setupErr(ErrInvalidArg, nil, err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ep := endpoint{tcp: net.JoinHostPort(host, port)}
	listeners := []net.Listener{ln}
	if c.useUnix = !cfg.TCPOnly && os.Getenv("GOTRAIN_RING_TRANSPORT") != "tcp"; c.useUnix {
		if id := hostIdentity(); id != "" {
			var nonce [8]byte
			_, _ = crand.Read(nonce[:])
			name := fmt.Sprintf("@gotrain-%x", nonce)
			if uln, err := net.Listen("unix", name); err == nil {
				listeners = append(listeners, uln)
				ep.unix, ep.host = name, id
				c.hostID = id
			}
		}
	}
	if err := cfg.Store.Set(ctx, c.addrKey(c.rank), ep.encode()); err != nil {
		for _, l := range listeners {
			l.Close()
		}
		return setupErr(ErrTimeout, nil, fmt.Errorf("publishing address: %w", err))
	}
	me := hello{rank: c.rank, size: c.size, prefix: c.prefix}

	// Higher ranks dial us; we dial lower ranks.
	acc := make(chan accepted)
	var hwg sync.WaitGroup
	defer func() {
		cancel() // ends pending handshakes
		for _, l := range listeners {
			l.Close()
		}
		hwg.Wait()
	}()
	for _, ln := range listeners {
		hwg.Add(1)
		gate := secure.NewGate(fmt.Sprintf("ring rank %d on %s", c.rank, ln.Addr()), cfg.MaxHandshakes, nil)
		go c.acceptLoop(ctx, ln, gate, &hwg, cfg, deadline, me, acc)
	}
	for q := 0; q < c.rank; q++ {
		go func() {
			p, err := c.dial(ctx, q, cfg.Upgrade, deadline, me)
			select {
			case acc <- accepted{p: p, err: err}:
			case <-ctx.Done():
				if p != nil {
					p.conn.Close()
				}
			}
		}()
	}
	need := c.size - 1
	for need > 0 {
		select {
		case a := <-acc:
			if a.err != nil {
				return a.err
			}
			if c.peers[a.p.rank] != nil {
				a.p.conn.Close() // duplicate
				continue
			}
			c.peers[a.p.rank] = a.p
			need--
		case <-ctx.Done():
			var missing []int
			for q, p := range c.peers {
				if p == nil && q != c.rank {
					missing = append(missing, q)
				}
			}
			return setupErr(ErrTimeout, missing, fmt.Errorf("connecting the group: %w", ctx.Err()))
		}
	}
	for _, l := range listeners {
		l.Close()
	}
	for _, p := range c.peers {
		if p != nil {
			_ = p.conn.SetDeadline(time.Time{})
		}
	}
	return nil
}

// acceptLoop hands the handshaken connections of ln to acc until ln closes.
// At most gate's handshakes run at once: a connection beyond them is closed
// at once (the dialing rank retries).
func (c *ring) acceptLoop(ctx context.Context, ln net.Listener, gate *secure.Gate, hwg *sync.WaitGroup, cfg RingConfig, deadline time.Time, me hello, acc chan accepted) {
	defer hwg.Done()
	backoff := 5 * time.Millisecond
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			// Transient (e.g. out of file descriptors): back off and retry.
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !gate.Admit(conn) {
			continue
		}
		hwg.Go(func() {
			stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
			p, err := c.serverHandshake(conn, cfg.Upgrade, deadline, me)
			gate.Release()
			if !stop() || err != nil {
				conn.Close() // a stray or wrong-group connection: refused, keep waiting
				return
			}
			select {
			case acc <- accepted{p: p}:
			case <-ctx.Done():
				p.conn.Close()
			}
		})
	}
}

func (c *ring) addrKey(rank int) string { return c.prefix + "addr/" + strconv.Itoa(rank) }

// serverHandshake authenticates conn (upgrade) and reads its hello, within
// secure.DefaultTimeout for each (and before deadline): an unauthenticated
// peer holds a slot of the listener's gate no longer than that.
func (c *ring) serverHandshake(conn net.Conn, upgrade func(net.Conn, bool) (net.Conn, error), deadline time.Time, me hello) (*peer, error) {
	tune(conn)
	short := func() time.Time {
		if t := time.Now().Add(secure.DefaultTimeout); t.Before(deadline) {
			return t
		}
		return deadline
	}
	_ = conn.SetDeadline(short())
	if upgrade != nil {
		up, err := upgrade(conn, true)
		if err != nil {
			return nil, err
		}
		conn = up
		_ = conn.SetDeadline(short())
	}
	p := newPeer(-1, conn, bufio.NewReaderSize(conn, 64<<10))
	b, err := p.fr.readControl(opHello)
	if err != nil {
		return nil, err
	}
	h, err := parseHello(b)
	reject := func(format string, args ...any) (*peer, error) {
		msg := fmt.Sprintf(format, args...)
		_ = p.writeFrame(opReject, []byte(msg))
		return nil, protof("%s", msg)
	}
	switch {
	case err != nil:
		return reject("rank %d: bad hello: %v", c.rank, err)
	case h.prefix != me.prefix:
		return reject("rank %d: group prefix %q, not %q (wrong group)", c.rank, me.prefix, h.prefix)
	case h.size != me.size:
		return reject("rank %d: group size %d, not %d", c.rank, me.size, h.size)
	case h.rank <= me.rank:
		return reject("rank %d: rank %d must not dial rank %d", c.rank, h.rank, me.rank)
	}
	if err := p.writeFrame(opHello, me.encode()); err != nil {
		return nil, err
	}
	p.rank = h.rank
	return p, nil
}

func (c *ring) dial(ctx context.Context, q int, upgrade func(net.Conn, bool) (net.Conn, error), deadline time.Time, me hello) (*peer, error) {
	fail := func(kind error, err error) (*peer, error) {
		return nil, &OpError{Rank: c.rank, Op: "setup", Peers: []int{q}, Kind: kind, Err: err}
	}
	raw, err := c.getAddr(ctx, q)
	if err != nil {
		return fail(ErrTimeout, fmt.Errorf("looking up address: %w", err))
	}
	ep := parseEndpoint([]byte(raw))
	network, addr := "tcp", ep.tcp
	if c.useUnix && ep.unix != "" && ep.host != "" && ep.host == c.hostID {
		network, addr = "unix", ep.unix
	}
	backoff := 50 * time.Millisecond
	for {
		p, retry, err := c.dialOnce(ctx, q, network, addr, upgrade, deadline, me)
		if !retry {
			if err != nil {
				return fail(errKind(err), err)
			}
			return p, nil
		}
		// Refused (the listener's handshake cap was full, or it is not
		// listening yet) or cut: try again until the setup deadline.
		select {
		case <-ctx.Done():
			return fail(ErrTimeout, fmt.Errorf("%w (gave up: %w)", err, ctx.Err()))
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// kindErr carries the OpError kind of a dial failure.
type kindErr struct {
	kind error
	err  error
}

func (e *kindErr) Error() string { return e.err.Error() }
func (e *kindErr) Unwrap() error { return e.err }

func errKind(err error) error {
	var k *kindErr
	if errors.As(err, &k) {
		return k.kind
	}
	return ErrPeerLost
}

// dialOnce makes one connection to rank q at addr and runs the handshake;
// retry says whether a failure may pass on another attempt.
func (c *ring) dialOnce(ctx context.Context, q int, network, addr string, upgrade func(net.Conn, bool) (net.Conn, error), deadline time.Time, me hello) (p *peer, retry bool, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, true, fmt.Errorf("dialing %s: %w", addr, err)
	}
	tune(conn)
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if upgrade != nil {
		up, err := upgrade(conn, false)
		if err != nil {
			conn.Close()
			return nil, secure.Retryable(err), &kindErr{ErrProtocol, fmt.Errorf("upgrading connection to %s: %w", addr, err)}
		}
		conn = up
		_ = conn.SetDeadline(deadline)
	}
	p = newPeer(q, conn, bufio.NewReaderSize(conn, 64<<10))
	if err := p.writeFrame(opHello, me.encode()); err != nil {
		conn.Close()
		return nil, true, &kindErr{ErrPeerLost, fmt.Errorf("handshake with %s: %w", addr, err)}
	}
	b, err := p.fr.readControl(opHello)
	if err != nil {
		conn.Close()
		var g *goneErr
		if errors.As(err, &g) {
			return nil, false, &kindErr{ErrProtocol, fmt.Errorf("connection refused: %s", g.msg)}
		}
		if errors.Is(err, ErrProtocol) {
			return nil, false, &kindErr{ErrProtocol, err}
		}
		// Closed without a word: refused by the listener's handshake cap.
		return nil, true, &kindErr{ErrPeerLost, fmt.Errorf("handshake with %s: %w", addr, err)}
	}
	h, err := parseHello(b)
	if err == nil && (h.rank != q || h.size != me.size || h.prefix != me.prefix) {
		err = protof("%s answered as rank %d of %d in group %q, want rank %d of %d in %q",
			addr, h.rank, h.size, h.prefix, q, me.size, me.prefix)
	}
	if err != nil {
		conn.Close()
		return nil, false, &kindErr{ErrProtocol, err}
	}
	return p, false, nil
}

func (c *ring) getAddr(ctx context.Context, q int) (string, error) {
	b, err := c.store.Get(ctx, c.addrKey(q))
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// ---- state, errors, abort ----

func (c *ring) Rank() int { return c.rank }
func (c *ring) Size() int { return c.size }

func (c *ring) abortCause() (error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause, c.causeCtx
}

// begin starts a call: it fails if the communicator is aborted or ctx has
// already ended, and arranges for ctx ending to abort the communicator.
func (c *ring) begin(ctx context.Context, op string) (func() bool, error) {
	if cause, _ := c.abortCause(); cause != nil {
		return nil, &OpError{Rank: c.rank, Op: op, Kind: ErrAborted, Err: cause}
	}
	if err := ctx.Err(); err != nil {
		return nil, &OpError{Rank: c.rank, Op: op, Kind: ctxKind(err), Err: err}
	}
	if c.size == 1 {
		return func() bool { return true }, nil
	}
	return context.AfterFunc(ctx, func() {
		err := ctx.Err()
		c.abortCtx(&OpError{Rank: c.rank, Op: op, Kind: ctxKind(err), Err: err})
	}), nil
}

func ctxKind(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return ErrTimeout
	}
	if errors.Is(err, context.Canceled) {
		return context.Canceled
	}
	return err
}

// peerErr turns an I/O or protocol failure talking to rank q into the error
// the call returns, aborting the communicator if this is the first failure.
func (c *ring) peerErr(op string, q int, err error) error {
	cause, isCtx := c.abortCause()
	if cause != nil {
		if isCtx {
			var oe *OpError
			if errors.As(cause, &oe) {
				return &OpError{Rank: c.rank, Op: op, Peers: []int{q}, Kind: oe.Kind, Err: oe.Err}
			}
		}
		return &OpError{Rank: c.rank, Op: op, Kind: ErrAborted, Err: cause}
	}
	var pe *protoErr
	if errors.As(err, &pe) && pe.drain && q >= 0 && q < len(c.peers) && c.peers[q] != nil {
		p := c.peers[q]
		_ = p.conn.SetReadDeadline(time.Now().Add(drainWait))
		if gone := p.fr.drainForGone(pe.skip); gone != nil && !errors.Is(gone, os.ErrDeadlineExceeded) {
			err = gone
		}
	}
	kind := ErrPeerLost
	if errors.Is(err, ErrProtocol) {
		kind = ErrProtocol
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = fmt.Errorf("connection closed (%w)", err)
	}
	e := &OpError{Rank: c.rank, Op: op, Peers: []int{q}, Kind: kind, Err: err}
	c.abort(e, true)
	return e
}

// Abort implements Communicator.
func (c *ring) Abort(err error) {
	if err == nil {
		err = errors.New("Abort called")
	}
	c.abort(err, true)
}

// Close implements Communicator.
func (c *ring) Close() error {
	c.abort(ErrClosed, true)
	return nil
}

func (c *ring) abortCtx(cause *OpError) { c.abortAs(cause, true, true) }

// abort records cause (once), unblocks pending reads, tells the peers
// (best effort, bounded time) and closes every connection.
func (c *ring) abort(cause error, notify bool) { c.abortAs(cause, notify, false) }

func (c *ring) abortAs(cause error, notify, isCtx bool) {
	c.mu.Lock()
	if c.cause != nil {
		c.mu.Unlock()
		return
	}
	c.cause, c.causeCtx = cause, isCtx
	close(c.done)
	c.mu.Unlock()

	op, msg := opAbort, fmt.Sprintf("rank %d aborted: %v", c.rank, cause)
	if cause == ErrClosed {
		op, msg = opBye, fmt.Sprintf("rank %d closed its communicator", c.rank)
	}
	if len(msg) > maxControlPayload {
		msg = msg[:maxControlPayload]
	}
	past := time.Unix(1, 0)
	for _, p := range c.peers {
		if p != nil {
			_ = p.conn.SetReadDeadline(past)
		}
	}
	var wg sync.WaitGroup
	for _, p := range c.peers {
		if p == nil {
			continue
		}
		wg.Go(func() {
			defer p.conn.Close()
			if !notify {
				return
			}
			t := time.NewTimer(abortNotifyWait)
			defer t.Stop()
			select {
			case p.wsem <- struct{}{}:
				_ = p.conn.SetWriteDeadline(time.Now().Add(abortWriteTimeout))
				_ = p.writeFrame(op, []byte(msg))
			case <-t.C:
			}
		})
	}
	wg.Wait()
}

func (c *ring) lockW(p *peer) error {
	select {
	case <-c.done:
		return errLocalAbort
	default:
	}
	select {
	case p.wsem <- struct{}{}:
		return nil
	case <-c.done:
		return errLocalAbort
	}
}

func (c *ring) lockR(p *peer) error {
	select {
	case <-c.done:
		return errLocalAbort
	default:
	}
	select {
	case p.rsem <- struct{}{}:
		return nil
	case <-c.done:
		return errLocalAbort
	}
}

// ---- message transfer ----

// sendSeg sends elements [lo, hi) of v to p as frames of op, at most
// c.chunk bytes each. wtmp is the encode scratch (big-endian machines only).
func (c *ring) sendSeg(p *peer, op opcode, v vec, lo, hi int, wtmp []byte) error {
	if hi <= lo {
		return nil
	}
	if err := c.lockW(p); err != nil {
		return err
	}
	defer func() { <-p.wsem }()
	per := c.chunk / v.k.size()
	for lo < hi {
		e := min(hi, lo+per)
		if err := p.writeFrame(op, v.wire(lo, e, wtmp)); err != nil {
			return err
		}
		lo = e
	}
	return nil
}

// recvSeg receives elements [lo, hi) of v from p (frames of op). Each frame
// is handed to onFrame (if set) once stored. With red set, the wire data is
// instead reduced: v[i] = wire[i] red b[i].
func (c *ring) recvSeg(p *peer, op opcode, v vec, lo, hi int, reduce bool, red Op, b vec, onFrame func(lo, hi int) error) error {
	if hi <= lo {
		return nil
	}
	if err := c.lockR(p); err != nil {
		return err
	}
	defer func() { <-p.rsem }()
	size := v.k.size()
	for lo < hi {
		n, err := p.fr.next(op, (hi-lo)*size)
		if err != nil {
			return err
		}
		if n == 0 || n%size != 0 {
			return protof("%s frame of %d bytes (not a positive multiple of %d)", op, n, size)
		}
		e := lo + n/size
		if !reduce && v.direct() {
			if _, err := io.ReadFull(p.fr.r, v.raw(lo, e)); err != nil {
				return err
			}
		} else {
			per := len(c.scratch) / size
			for i := lo; i < e; {
				j := min(e, i+per)
				piece := c.scratch[:(j-i)*size]
				if _, err := io.ReadFull(p.fr.r, piece); err != nil {
					return err
				}
				if reduce {
					v.reduceWire(red, i, piece, b, i, c.tmp)
				} else {
					v.setWire(i, piece)
				}
				i = j
			}
		}
		if onFrame != nil {
			if err := onFrame(lo, e); err != nil {
				return err
			}
		}
		lo = e
	}
	return nil
}

// exchange runs send (to rank to) and recv (from rank from) concurrently and
// returns the more telling error.
func (c *ring) exchange(name string, to int, send func() error, from int, recv func() error) error {
	ch := make(chan error, 1)
	go func() { ch <- send() }()
	rerr := recv()
	if rerr != nil {
		rerr = c.peerErr(name, from, rerr)
	}
	serr := <-ch
	if serr != nil {
		serr = c.peerErr(name, to, serr)
	}
	return pickErr(rerr, serr)
}

func pickErr(errs ...error) error {
	var first error
	for _, e := range errs {
		if e == nil {
			continue
		}
		if first == nil {
			first = e
		}
		if !errors.Is(e, ErrAborted) {
			return e
		}
	}
	return first
}

func (c *ring) badBuf(op string, format string, args ...any) error {
	return &OpError{Rank: c.rank, Op: op, Kind: ErrBadBuffer, Err: fmt.Errorf(format, args...)}
}

func (c *ring) badArg(op string, format string, args ...any) error {
	return &OpError{Rank: c.rank, Op: op, Kind: ErrInvalidArg, Err: fmt.Errorf(format, args...)}
}

func (c *ring) vecs(op string, send, recv any, bytesOK bool) (vec, vec, error) {
	sv, err := toVec(send, bytesOK)
	if err != nil {
		return vec{}, vec{}, &OpError{Rank: c.rank, Op: op, Kind: ErrBadBuffer, Err: fmt.Errorf("send: %w", err)}
	}
	rv, err := toVec(recv, bytesOK)
	if err != nil {
		return vec{}, vec{}, &OpError{Rank: c.rank, Op: op, Kind: ErrBadBuffer, Err: fmt.Errorf("recv: %w", err)}
	}
	if sv.k != rv.k {
		return vec{}, vec{}, c.badBuf(op, "send is %s, recv is %s", sv.k, rv.k)
	}
	return sv, rv, nil
}

func (c *ring) neighbours() (left, right *peer) {
	return c.peers[(c.rank+c.size-1)%c.size], c.peers[(c.rank+1)%c.size]
}

func (c *ring) wrapOpErr(name string, err error) error {
	if err == nil {
		return nil
	}
	var oe *OpError
	if errors.As(err, &oe) {
		return err
	}
	return &OpError{Rank: c.rank, Op: name, Kind: ErrAborted, Err: err}
}

// ---- collectives ----

// AllReduce implements Communicator: a ring reduce-scatter followed by a ring
// all-gather over Size() blocks.
func (c *ring) AllReduce(ctx context.Context, send, recv any, op Op) error {
	const name = "AllReduce"
	sv, rv, err := c.vecs(name, send, recv, false)
	if err != nil {
		return err
	}
	if sv.len() != rv.len() {
		return c.badBuf(name, "len(send) = %d, len(recv) = %d", sv.len(), rv.len())
	}
	if !op.valid() {
		return c.badArg(name, "unknown op %v", op)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	stop, err := c.begin(ctx, name)
	if err != nil {
		return err
	}
	defer stop()
	if c.size == 1 {
		if !sv.same(rv) {
			rv.copyFrom(0, sv, 0, sv.len())
		}
		return nil
	}
	n, r := c.size, c.rank
	bl := blocks{rv.len(), n}
	left, right := c.neighbours()
	// Reduce-scatter: at step s send block r-s-1 and receive block r-s-2,
	// reduced with our own contribution. Step 0 sends straight from send.
	for s := 0; s < n-1; s++ {
		src := rv
		if s == 0 {
			src = sv
		}
		slo, shi := bl.span(r - s - 1)
		rlo, rhi := bl.span(r - s - 2)
		err := c.exchange(name, right.rank,
			func() error { return c.sendSeg(right, opAllReduce, src, slo, shi, c.wtmp) },
			left.rank,
			func() error { return c.recvSeg(left, opAllReduce, rv, rlo, rhi, true, op, sv, nil) })
		if err != nil {
			return c.wrapOpErr(name, err)
		}
	}
	// Block r is now fully reduced here.
	if op == Avg {
		lo, hi := bl.span(r)
		rv.scale(lo, hi, n)
	}
	// All-gather: at step s send block r-s, receive block r-s-1.
	for s := 0; s < n-1; s++ {
		slo, shi := bl.span(r - s)
		rlo, rhi := bl.span(r - s - 1)
		err := c.exchange(name, right.rank,
			func() error { return c.sendSeg(right, opAllReduce, rv, slo, shi, c.wtmp) },
			left.rank,
			func() error { return c.recvSeg(left, opAllReduce, rv, rlo, rhi, false, 0, vec{}, nil) })
		if err != nil {
			return c.wrapOpErr(name, err)
		}
	}
	return nil
}

// Broadcast implements Communicator: a chunk-pipelined chain around the
// ring starting at root.
func (c *ring) Broadcast(ctx context.Context, buf any, root int) error {
	const name = "Broadcast"
	v, err := toVec(buf, true)
	if err != nil {
		return &OpError{Rank: c.rank, Op: name, Kind: ErrBadBuffer, Err: err}
	}
	if root < 0 || root >= c.size {
		return c.badArg(name, "root %d out of range [0, %d)", root, c.size)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	stop, err := c.begin(ctx, name)
	if err != nil {
		return err
	}
	defer stop()
	if c.size == 1 || v.len() == 0 {
		return nil
	}
	left, right := c.neighbours()
	pos := (c.rank - root + c.size) % c.size
	if pos == 0 {
		if err := c.sendSeg(right, opBroadcast, v, 0, v.len(), c.wtmp); err != nil {
			return c.wrapOpErr(name, c.peerErr(name, right.rank, err))
		}
		return nil
	}
	if pos == c.size-1 { // end of the chain
		if err := c.recvSeg(left, opBroadcast, v, 0, v.len(), false, 0, vec{}, nil); err != nil {
			return c.wrapOpErr(name, c.peerErr(name, left.rank, err))
		}
		return nil
	}
	// Forward each frame to the right while receiving the next.
	type span struct{ lo, hi int }
	ch := make(chan span, 64)
	fwd := make(chan error, 1)
	go func() {
		var err error
		for s := range ch {
			if err == nil {
				err = c.sendSeg(right, opBroadcast, v, s.lo, s.hi, c.wtmp)
			}
		}
		fwd <- err
	}()
	rerr := c.recvSeg(left, opBroadcast, v, 0, v.len(), false, 0, vec{}, func(lo, hi int) error {
		select {
		case ch <- span{lo, hi}:
			return nil
		case <-c.done:
			return errLocalAbort
		}
	})
	close(ch)
	if rerr != nil {
		rerr = c.peerErr(name, left.rank, rerr)
	}
	serr := <-fwd
	if serr != nil {
		serr = c.peerErr(name, right.rank, serr)
	}
	return c.wrapOpErr(name, pickErr(rerr, serr))
}

// AllGather implements Communicator: Size()-1 ring steps, each passing one
// rank's block on.
func (c *ring) AllGather(ctx context.Context, send, recv any) error {
	const name = "AllGather"
	sv, rv, err := c.vecs(name, send, recv, true)
	if err != nil {
		return err
	}
	m := sv.len()
	if rv.len() != c.size*m {
		return c.badBuf(name, "len(recv) = %d, want Size()*len(send) = %d", rv.len(), c.size*m)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	stop, err := c.begin(ctx, name)
	if err != nil {
		return err
	}
	defer stop()
	rv.copyFrom(c.rank*m, sv, 0, m)
	if c.size == 1 || m == 0 {
		return nil
	}
	n, r := c.size, c.rank
	left, right := c.neighbours()
	for s := 0; s < n-1; s++ {
		sb, rb := ((r-s)%n+n)%n, ((r-s-1)%n+n)%n
		err := c.exchange(name, right.rank,
			func() error { return c.sendSeg(right, opAllGather, rv, sb*m, sb*m+m, c.wtmp) },
			left.rank,
			func() error { return c.recvSeg(left, opAllGather, rv, rb*m, rb*m+m, false, 0, vec{}, nil) })
		if err != nil {
			return c.wrapOpErr(name, err)
		}
	}
	return nil
}

// ReduceScatter implements Communicator: the reduce-scatter half of the ring
// AllReduce, with two recv-sized accumulators so send is left untouched.
func (c *ring) ReduceScatter(ctx context.Context, send, recv any, op Op) error {
	const name = "ReduceScatter"
	sv, rv, err := c.vecs(name, send, recv, false)
	if err != nil {
		return err
	}
	m := rv.len()
	if sv.len() != c.size*m {
		return c.badBuf(name, "len(send) = %d, want Size()*len(recv) = %d", sv.len(), c.size*m)
	}
	if !op.valid() {
		return c.badArg(name, "unknown op %v", op)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	stop, err := c.begin(ctx, name)
	if err != nil {
		return err
	}
	defer stop()
	n, r := c.size, c.rank
	if n == 1 || m == 0 {
		rv.copyFrom(0, sv, r*m, m)
		return nil
	}
	var acc [2]vec
	if n > 2 {
		for i := range acc {
			acc[i] = vec{k: rv.k}
			if rv.k == kindF32 {
				acc[i].f32 = make([]float32, m)
			} else {
				acc[i].f64 = make([]float64, m)
			}
		}
	}
	left, right := c.neighbours()
	// acc/recv index i holds block b at element offset i - b*m... we express
	// each step as (source vec, its offset) -> (dest vec, its offset).
	for s := 0; s < n-1; s++ {
		sb, rb := ((r-s-1)%n+n)%n, ((r-s-2)%n+n)%n
		src, soff := sv, sb*m
		if s > 0 {
			src, soff = acc[(s-1)%2], 0
		}
		dst := rv
		if s < n-2 {
			dst = acc[s%2]
		}
		own := vec{k: sv.k}
		if sv.k == kindF32 {
			own.f32 = sv.f32[rb*m : rb*m+m]
		} else {
			own.f64 = sv.f64[rb*m : rb*m+m]
		}
		err := c.exchange(name, right.rank,
			func() error { return c.sendSeg(right, opReduceScatter, src, soff, soff+m, c.wtmp) },
			left.rank,
			func() error { return c.recvSeg(left, opReduceScatter, dst, 0, m, true, op, own, nil) })
		if err != nil {
			return c.wrapOpErr(name, err)
		}
	}
	if op == Avg {
		rv.scale(0, m, n)
	}
	return nil
}

// Barrier implements Communicator: a dissemination barrier, ceil(log2 n)
// rounds of empty frames.
func (c *ring) Barrier(ctx context.Context) error {
	const name = "Barrier"
	c.opMu.Lock()
	defer c.opMu.Unlock()
	stop, err := c.begin(ctx, name)
	if err != nil {
		return err
	}
	defer stop()
	for k := 1; k < c.size; k <<= 1 {
		to, from := c.peers[(c.rank+k)%c.size], c.peers[(c.rank-k+c.size)%c.size]
		err := c.exchange(name, to.rank, func() error {
			if err := c.lockW(to); err != nil {
				return err
			}
			defer func() { <-to.wsem }()
			return to.writeFrame(opBarrier, nil)
		}, from.rank, func() error {
			if err := c.lockR(from); err != nil {
				return err
			}
			defer func() { <-from.rsem }()
			_, err := from.fr.next(opBarrier, 0)
			return err
		})
		if err != nil {
			return c.wrapOpErr(name, err)
		}
	}
	return nil
}

func (c *ring) checkPeer(name string, q int) error {
	if q < 0 || q >= c.size {
		return c.badArg(name, "peer %d out of range [0, %d)", q, c.size)
	}
	if q == c.rank {
		return c.badArg(name, "peer %d is this rank", q)
	}
	return nil
}

// Send implements Communicator: a header frame (element type and count)
// then the data frames.
func (c *ring) Send(ctx context.Context, buf any, q int) error {
	const name = "Send"
	v, err := toVec(buf, true)
	if err != nil {
		return &OpError{Rank: c.rank, Op: name, Kind: ErrBadBuffer, Err: err}
	}
	if err := c.checkPeer(name, q); err != nil {
		return err
	}
	stop, err := c.begin(ctx, name)
	if err != nil {
		return err
	}
	defer stop()
	p := c.peers[q]
	var wtmp []byte
	if !nativeLE {
		wtmp = alignedBytes(c.chunk)
	}
	var hdr [9]byte
	hdr[0] = byte(v.k)
	putUint64(hdr[1:], uint64(v.len()))
	if err := c.lockW(p); err != nil {
		return c.peerErr(name, q, err)
	}
	err = p.writeFrame(opSendHdr, hdr[:])
	<-p.wsem
	if err == nil {
		err = c.sendSeg(p, opSendData, v, 0, v.len(), wtmp)
	}
	if err != nil {
		return c.wrapOpErr(name, c.peerErr(name, q, err))
	}
	return nil
}

// Recv implements Communicator.
func (c *ring) Recv(ctx context.Context, buf any, q int) error {
	const name = "Recv"
	v, err := toVec(buf, true)
	if err != nil {
		return &OpError{Rank: c.rank, Op: name, Kind: ErrBadBuffer, Err: err}
	}
	if err := c.checkPeer(name, q); err != nil {
		return err
	}
	stop, err := c.begin(ctx, name)
	if err != nil {
		return err
	}
	defer stop()
	p := c.peers[q]
	if err := c.lockR(p); err != nil {
		return c.peerErr(name, q, err)
	}
	mismatch, err := c.recvMsg(p, v)
	<-p.rsem
	if err != nil {
		return c.wrapOpErr(name, c.peerErr(name, q, err))
	}
	if mismatch != nil {
		return &OpError{Rank: c.rank, Op: name, Peers: []int{q}, Kind: ErrBadBuffer, Err: mismatch}
	}
	return nil
}

// recvMsg reads one Send message from p (rsem held). A type or length
// mismatch discards the data and returns it as mismatch, leaving the stream
// in step.
func (c *ring) recvMsg(p *peer, v vec) (mismatch, err error) {
	n, err := p.fr.next(opSendHdr, 9)
	if err != nil {
		return nil, err
	}
	var hdr [9]byte
	if n != 9 {
		return nil, protof("Send header of %d bytes, want 9", n)
	}
	if _, err := io.ReadFull(p.fr.r, hdr[:]); err != nil {
		return nil, err
	}
	k, count := kind(hdr[0]), getUint64(hdr[1:])
	if k != kindF32 && k != kindF64 && k != kindBytes {
		return nil, protof("Send header with unknown element type %d", hdr[0])
	}
	if count > 1<<50 {
		return nil, protof("Send header with %d elements", count)
	}
	if k == v.k && count == uint64(v.len()) {
		var tmp []byte
		if !nativeLE {
			tmp = alignedBytes(c.chunk)
		}
		return nil, c.recvDirect(p, v, tmp)
	}
	// Drain the message, then report.
	left := count * uint64(k.size())
	discard := make([]byte, min(left, 64<<10))
	for left > 0 {
		n, err := p.fr.next(opSendData, int(min(left, maxFramePayload)))
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, protof("empty Send data frame")
		}
		for rem := n; rem > 0; {
			m, err := io.ReadFull(p.fr.r, discard[:min(rem, len(discard))])
			if err != nil {
				return nil, err
			}
			rem -= m
		}
		left -= uint64(n)
	}
	return fmt.Errorf("rank %d sent %d elements of %s, buffer is %d elements of %s", p.rank, count, k, v.len(), v.k), nil
}

// recvDirect reads opSendData frames filling all of v (rsem held).
func (c *ring) recvDirect(p *peer, v vec, tmp []byte) error {
	size := v.k.size()
	for lo, hi := 0, v.len(); lo < hi; {
		n, err := p.fr.next(opSendData, (hi-lo)*size)
		if err != nil {
			return err
		}
		if n == 0 || n%size != 0 {
			return protof("Send data frame of %d bytes (not a positive multiple of %d)", n, size)
		}
		e := lo + n/size
		if v.direct() {
			if _, err := io.ReadFull(p.fr.r, v.raw(lo, e)); err != nil {
				return err
			}
		} else {
			for i := lo; i < e; {
				j := min(e, i+len(tmp)/size)
				if _, err := io.ReadFull(p.fr.r, tmp[:(j-i)*size]); err != nil {
					return err
				}
				v.setWire(i, tmp[:(j-i)*size])
				i = j
			}
		}
		lo = e
	}
	return nil
}

// ---- small helpers ----

func putUint64(b []byte, x uint64) {
	for i := range 8 {
		b[i] = byte(x >> (8 * i))
	}
}

func getUint64(b []byte) uint64 {
	var x uint64
	for i := range 8 {
		x |= uint64(b[i]) << (8 * i)
	}
	return x
}
