package ps

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Config configures a Server.
type Config struct {
	// Params are the model's parameters, in order; the server keeps its own
	// copy of their values (Data) and owns their gradients.
	Params []optim.Param
	// NewOptimizer makes the optimiser over the server's parameters.
	NewOptimizer func([]optim.Param) (optim.Optimizer, error)
	// LR is the learning rate of the update that makes version v+1.
	LR func(version uint64) float64
	// Epochs and Batches: the run's work is Batches(e) batches in each
	// epoch e in 0..Epochs-1.
	Epochs  int
	Batches func(epoch int) int
	// MaxStaleness bounds how many versions a worker may be ahead of the
	// oldest version a live worker computes on; negative: no bound.
	MaxStaleness int64
	// DownWeight scales a gradient of staleness s by 1/(1+s).
	DownWeight bool
	// Upgrade authenticates a connection Serve accepted (secure.Server);
	// nil: none (tests).
	Upgrade func(net.Conn) (net.Conn, error)
	// OnPush, if set, is called after every applied push, with the
	// server's lock held: keep it short.
	OnPush func(PushInfo)
	// Timeout: a worker that has held a batch for longer than Timeout
	// without pushing it is declared lost (see the package doc); 0: never.
	// It must be longer than a batch's compute time.
	Timeout time.Duration
	// ManualTick: nothing ticks the server's clock but calls to Tick
	// (tests); otherwise, with a Timeout, NewServer starts a ticker of
	// Timeout/TicksPerTimeout that Close stops.
	ManualTick bool
	Log        *slog.Logger
}

// TicksPerTimeout is how many ticks make a Timeout: a worker is declared
// lost at the first tick after it has been silent TicksPerTimeout ticks.
const TicksPerTimeout = 8

// PushInfo describes one applied push.
type PushInfo struct {
	Worker    int
	Version   uint64 // after the update
	Staleness uint64
	Samples   int
	Epoch     int
	Batch     int
	Workers   int // connected now
}

// Stats are the server's running figures.
type Stats struct {
	Version      uint64
	Pushes       int64
	StalenessSum uint64
	StalenessMax uint64
	// WaitSeconds is, per worker, the time its replies were held by the
	// staleness bound.
	WaitSeconds map[int]float64
	Workers     int // live workers
	// Lost lists the workers that left before the end or were declared
	// lost; TimedOut those of them declared lost after Timeout without a
	// push.
	Lost     []int
	TimedOut []int
}

type task struct{ epoch, batch int }

type workerState struct {
	base     uint64 // version it computes on
	task     task
	busy     bool // holds a task
	waited   time.Duration
	finished bool
	conn     net.Conn
	handed   time.Time // when it was given its task (for the log only)
	silent   int       // ticks since it was given its task
	lost     bool      // declared lost
}

// Server is a parameter server. It is safe for concurrent use.
type Server struct {
	cfg    Config
	params []optim.Param
	opt    optim.Optimizer
	n      int // total parameter values

	mu       sync.Mutex
	cond     *sync.Cond
	version  uint64
	next     task   // the next new task
	requeued []task // tasks of workers that left
	pending  int    // tasks handed out and not pushed
	workers  map[int]*workerState
	seen     map[int]bool
	stats    Stats
	done     bool
	doneCh   chan struct{}
	conns    map[net.Conn]bool
	closed   bool
	lostMsg  map[int]string // why each worker declared lost was
	stopTick chan struct{}  // closed by Close: ends the ticker
}

// NewServer makes a server with cfg's parameters (copied).
func NewServer(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{cfg: cfg, workers: map[int]*workerState{}, seen: map[int]bool{}, doneCh: make(chan struct{}), conns: map[net.Conn]bool{},
		lostMsg: map[int]string{}, stopTick: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	s.params = make([]optim.Param, len(cfg.Params))
	for i, p := range cfg.Params {
		s.params[i] = optim.Param{Name: p.Name, Data: append([]float32(nil), p.Data...), Grad: make([]float32, len(p.Data)), Buffer: p.Buffer}
		s.n += len(p.Data)
	}
	var err error
	if s.opt, err = cfg.NewOptimizer(s.params); err != nil {
		return nil, err
	}
	s.stats.WaitSeconds = map[int]float64{}
	s.skipEmpty()
	if cfg.Timeout > 0 && !cfg.ManualTick {
		go s.ticker(max(cfg.Timeout/TicksPerTimeout, time.Millisecond))
	}
	return s, nil
}

// ticker calls Tick every d until Close. A ticker drops the ticks its
// reader misses, so a process that was stopped gets one tick when it runs
// again, not all it missed.
func (s *Server) ticker(d time.Duration) {
	tk := time.NewTicker(d)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			s.Tick()
		case <-s.stopTick:
			return
		}
	}
}

// Tick advances the server's clock by Timeout/TicksPerTimeout: every
// worker holding a batch has been silent one tick more, and one silent for
// more than TicksPerTimeout ticks is declared lost (one silent half as
// long is logged, so that a wait for it does not pass unexplained).
// Without a Timeout it does nothing.
func (s *Server) Tick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.Timeout <= 0 || s.closed || s.done {
		return
	}
	for id, ws := range s.workers {
		if !ws.busy {
			continue
		}
		switch ws.silent++; {
		case ws.silent > TicksPerTimeout:
			s.declareLost(id, ws)
		case ws.silent == TicksPerTimeout/2:
			s.cfg.Log.Warn("parameter server: a worker has not pushed its batch for half the timeout; it is declared lost at the timeout",
				"worker", id, "silent_seconds", time.Since(ws.handed).Seconds(), "timeout", s.cfg.Timeout, "epoch", ws.task.epoch+1, "batch", ws.task.batch)
		}
	}
}

// declareLost drops a silent worker: its batch goes back to the queue,
// the staleness bound stops waiting for it, and its connection's pending
// read or write is cut short so that ServeConn sends it the lost reply.
// Caller holds mu.
func (s *Server) declareLost(id int, ws *workerState) {
	t := ws.task
	silent := time.Since(ws.handed)
	msg := fmt.Sprintf("worker %d held epoch %d batch %d for more than %v (--timeout) without pushing it; its batches were given to the other workers",
		id, t.epoch+1, t.batch, s.cfg.Timeout)
	s.cfg.Log.Warn("parameter server: a worker is lost: no push within the timeout; its batch goes to another worker",
		"worker", id, "silent_seconds", silent.Seconds(), "timeout", s.cfg.Timeout, "epoch", t.epoch+1, "batch", t.batch)
	ws.lost, ws.busy = true, false
	s.pending--
	s.requeued = append(s.requeued, t)
	s.lostMsg[id] = msg
	delete(s.workers, id)
	s.stats.Workers--
	s.stats.Lost = append(s.stats.Lost, id)
	s.stats.TimedOut = append(s.stats.TimedOut, id)
	if ws.conn != nil {
		_ = ws.conn.SetDeadline(time.Unix(1, 0))
	}
	s.cond.Broadcast()
}

// lostWriteTimeout bounds the write of a lost reply to a worker that may
// not be reading.
const lostWriteTimeout = time.Second

// sendLost tells a worker declared lost why, if its connection is at a
// frame boundary (a reply cut short leaves w with an error, and nothing
// more is written).
func (s *Server) sendLost(c net.Conn, w *bufio.Writer, id int) {
	s.mu.Lock()
	msg := s.lostMsg[id]
	s.mu.Unlock()
	_ = c.SetDeadline(time.Now().Add(lostWriteTimeout))
	_ = writeReply(w, Reply{Kind: kindLost, Message: msg})
}

// isLost says whether ws was declared lost.
func (s *Server) isLost(ws *workerState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ws.lost
}

// errLost: apply refused the push of a worker declared lost.
var errLost = errors.New("ps: push of a lost worker")

// skipEmpty moves next past epochs without batches; marks the run done
// when no work is left. Caller holds mu (or s is not shared yet).
func (s *Server) skipEmpty() {
	for s.next.epoch < s.cfg.Epochs && s.next.batch >= s.cfg.Batches(s.next.epoch) {
		s.next = task{s.next.epoch + 1, 0}
	}
	s.checkDone()
}

func (s *Server) checkDone() {
	if !s.done && s.next.epoch >= s.cfg.Epochs && len(s.requeued) == 0 && s.pending == 0 {
		s.done = true
		close(s.doneCh)
		s.cond.Broadcast()
	}
}

// Serve accepts workers on ln until Close. Each connection is served in
// its own goroutine, after Upgrade. At most secure.DefaultMaxHandshakes
// Upgrades run at once (each bounded by its own deadline); a connection
// beyond them is closed at once and the worker's dial retries (see
// secure.Gate). A failed Upgrade is logged at most once per
// secure.WarnInterval, with the count since the last line. A transient
// Accept error (out of file descriptors) is retried with a back-off; Serve
// returns the error only when ln fails for good.
func (s *Server) Serve(ln net.Listener) error {
	gate := secure.NewGate("parameter server on "+ln.Addr().String(), 0, s.cfg.Log)
	var warnMu sync.Mutex
	var lastWarn time.Time
	failed := 0
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !gate.Admit(c) {
			continue
		}
		go func() {
			remote := c.RemoteAddr().String()
			if s.cfg.Upgrade != nil {
				u, err := s.cfg.Upgrade(c)
				gate.Release()
				if err != nil {
					c.Close()
					warnMu.Lock()
					failed++
					if now := time.Now(); now.Sub(lastWarn) >= secure.WarnInterval {
						s.cfg.Log.Warn("parameter server: connection refused", "remote", remote, "err", err, "refused_since_last_warning", failed)
						lastWarn, failed = now, 0
					}
					warnMu.Unlock()
					return
				}
				c = u
			} else {
				gate.Release()
			}
			if err := s.ServeConn(c); err != nil {
				s.cfg.Log.Warn("parameter server: worker connection ended", "remote", remote, "err", err)
			}
		}()
	}
}

// ServeConn serves one worker on c, already authenticated (Serve runs
// Upgrade first; an in-process worker connects over net.Pipe), until its
// work is done or it leaves; it closes c.
func (s *Server) ServeConn(c net.Conn) (err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return errors.New("ps: server closed")
	}
	s.conns[c] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r, w := bufio.NewReaderSize(c, 1<<16), bufio.NewWriterSize(c, 1<<16)
	h, err := readHello(r)
	if err != nil {
		return err
	}
	id := int(h.Worker)
	if int64(h.NParams) != int64(s.n) {
		msg := fmt.Sprintf("worker %d has a model of %d parameters, the server's has %d: every rank must train the same --model", id, h.NParams, s.n)
		_ = writeReply(w, Reply{Kind: kindRefused, Message: msg})
		return fmt.Errorf("%w: %s", ErrRefused, msg)
	}
	s.mu.Lock()
	if msg, ok := s.lostMsg[id]; ok {
		s.mu.Unlock()
		_ = writeReply(w, Reply{Kind: kindLost, Message: msg})
		return fmt.Errorf("%w: %s", ErrLost, msg)
	}
	if s.seen[id] {
		s.mu.Unlock()
		msg := fmt.Sprintf("worker %d is already connected or has left; a rank cannot join twice", id)
		_ = writeReply(w, Reply{Kind: kindRefused, Message: msg})
		return fmt.Errorf("%w: %s", ErrRefused, msg)
	}
	s.seen[id] = true
	ws := &workerState{conn: c}
	s.workers[id] = ws
	s.stats.Workers++
	s.mu.Unlock()
	defer s.leave(id, ws)

	flat := make([]float32, s.n)
	grad := make([]float32, s.n)
	buf := make([]byte, 1<<16)
	reply := func() error {
		rp := s.assign(id, ws, flat)
		if err := writeReply(w, rp); err != nil {
			return err
		}
		if rp.Kind == kindEnd {
			return io.EOF
		}
		return nil
	}
	// A worker declared lost has been logged: its connection's end (cut
	// short by declareLost, or a push refused) is no error of its own.
	ended := func(err error) error {
		if s.isLost(ws) {
			s.sendLost(c, w, id)
			return nil
		}
		return ignoreEOF(err)
	}
	if err := reply(); err != nil {
		return ended(err)
	}
	for {
		p, err := readPush(r, grad, buf)
		if err != nil {
			return ended(err)
		}
		if err := s.apply(id, ws, p); err != nil {
			if errors.Is(err, errLost) {
				return ended(err)
			}
			return err
		}
		if err := reply(); err != nil {
			return ended(err)
		}
	}
}

func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// apply steps the parameters with a worker's gradient.
func (s *Server) apply(id int, ws *workerState, p Push) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ws.lost {
		return errLost
	}
	if !ws.busy || p.Epoch != uint32(ws.task.epoch) || p.Batch != uint32(ws.task.batch) {
		return fmt.Errorf("%w: worker %d pushed epoch %d batch %d, which it was not given", ErrProtocol, id, p.Epoch, p.Batch)
	}
	if p.BaseVersion > s.version {
		return fmt.Errorf("%w: worker %d pushed a gradient of version %d, newer than the server's %d", ErrProtocol, id, p.BaseVersion, s.version)
	}
	stale := s.version - p.BaseVersion
	scale := float32(1)
	if s.cfg.DownWeight {
		scale = 1 / float32(1+stale)
	}
	off := 0
	for _, q := range s.params {
		g := p.Grad[off : off+len(q.Grad)]
		for i, v := range g {
			q.Grad[i] = v * scale
		}
		off += len(q.Grad)
	}
	if !optim.GradsFinite(s.params) {
		return fmt.Errorf("worker %d pushed a gradient that is not finite (epoch %d batch %d); lower --lr", id, p.Epoch, p.Batch)
	}
	s.opt.Step(s.params, s.cfg.LR(s.version))
	s.version++
	ws.busy = false
	s.pending--
	s.stats.Pushes++
	s.stats.StalenessSum += stale
	s.stats.StalenessMax = max(s.stats.StalenessMax, stale)
	s.stats.Version = s.version
	if s.cfg.OnPush != nil {
		s.cfg.OnPush(PushInfo{Worker: id, Version: s.version, Staleness: stale, Samples: int(p.Samples), Epoch: int(p.Epoch), Batch: int(p.Batch), Workers: s.stats.Workers})
	}
	s.checkDone()
	s.cond.Broadcast()
	return nil
}

// assign waits for the staleness bound, then hands worker id its next task
// with the current parameters (copied into flat), or the end. With no task
// left to hand out while others hold batches, it waits for the end or for
// one of those batches to come back.
func (s *Server) assign(id int, ws *workerState, flat []float32) Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	var waited time.Duration // held by the staleness bound
	for !s.closed && !s.done {
		if s.tooFarAhead(id) {
			start := time.Now()
			s.cond.Wait()
			waited += time.Since(start)
			continue
		}
		if len(s.requeued) > 0 || s.next.epoch < s.cfg.Epochs {
			break
		}
		s.cond.Wait()
	}
	ws.waited += waited
	s.stats.WaitSeconds[id] = ws.waited.Seconds()
	t, ok := s.take()
	if !ok {
		ws.finished = true
		s.cond.Broadcast()
		return Reply{Kind: kindEnd, Version: s.version, WaitedNanos: uint64(waited)}
	}
	ws.task, ws.busy, ws.base = t, true, s.version
	ws.handed, ws.silent = time.Now(), 0
	s.pending++
	off := 0
	for _, q := range s.params {
		copy(flat[off:], q.Data)
		off += len(q.Data)
	}
	return Reply{Kind: kindWork, Version: s.version, Epoch: uint32(t.epoch), Batch: uint32(t.batch), WaitedNanos: uint64(waited), Params: flat}
}

// tooFarAhead: the server's version is more than MaxStaleness ahead of the
// version another live, busy worker computes on.
func (s *Server) tooFarAhead(id int) bool {
	if s.cfg.MaxStaleness < 0 {
		return false
	}
	for j, o := range s.workers {
		if j != id && o.busy && s.version-o.base > uint64(s.cfg.MaxStaleness) {
			return true
		}
	}
	return false
}

// take returns the next task: a requeued one first. Caller holds mu.
func (s *Server) take() (task, bool) {
	if n := len(s.requeued); n > 0 {
		t := s.requeued[n-1]
		s.requeued = s.requeued[:n-1]
		return t, true
	}
	if s.next.epoch >= s.cfg.Epochs {
		return task{}, false
	}
	t := s.next
	s.next.batch++
	s.skipEmpty()
	return t, true
}

// leave drops a worker: its unfinished task goes back to the queue.
func (s *Server) leave(id int, ws *workerState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ws.lost {
		return // declareLost did it all
	}
	if ws.busy {
		ws.busy = false
		s.pending--
		s.requeued = append(s.requeued, ws.task)
		s.cfg.Log.Warn("parameter server: a worker left with its batch unfinished; the batch goes to another worker",
			"worker", id, "epoch", ws.task.epoch+1, "batch", ws.task.batch)
	}
	if !ws.finished {
		s.stats.Lost = append(s.stats.Lost, id)
	}
	delete(s.workers, id)
	s.stats.Workers--
	if s.stats.Workers == 0 && !s.done {
		s.cond.Broadcast()
	}
	s.cond.Broadcast()
}

// ErrNoWorkers is returned by Wait when every worker left before the
// run's work was done.
var ErrNoWorkers = errors.New("ps: every worker left before the work was done")

// Wait returns when every batch of the run has been pushed (nil), when
// ctx ends, or when every worker that joined has left while batches
// remain (ErrNoWorkers).
func (s *Server) Wait(ctx context.Context) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.doneCh:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			s.mu.Lock()
			none := s.stats.Workers == 0 && len(s.seen) > 0
			s.mu.Unlock()
			if none {
				return ErrNoWorkers
			}
		}
	}
}

// Params copies the current parameters into dst (the model's parameters,
// in order) and returns the version.
func (s *Server) Params(dst [][]float32) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, q := range s.params {
		copy(dst[i], q.Data)
	}
	return s.version
}

// Stats returns a copy of the running figures.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.WaitSeconds = make(map[int]float64, len(s.stats.WaitSeconds))
	for k, v := range s.stats.WaitSeconds {
		st.WaitSeconds[k] = v
	}
	st.Lost = append([]int(nil), s.stats.Lost...)
	st.TimedOut = append([]int(nil), s.stats.TimedOut...)
	return st
}

// Close ends Serve, drops every connection and releases waiting workers.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		close(s.stopTick)
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}
