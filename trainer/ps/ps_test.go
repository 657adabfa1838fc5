package ps

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"maps"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/optim"
)

// quadratic: the loss Σ(p-3)²/2 has gradient p-3; SGD drives p to 3.
func newTestServer(t *testing.T, epochs, batches int, maxStale int64, onPush func(PushInfo)) (*Server, net.Listener) {
	t.Helper()
	s, err := NewServer(Config{
		Params: []optim.Param{{Name: "a", Data: []float32{0, 0}}, {Name: "b", Data: []float32{10}}},
		NewOptimizer: func(ps []optim.Param) (optim.Optimizer, error) {
			return optim.New(optim.Config{Name: "sgd"}, ps)
		},
		LR:           func(uint64) float64 { return 0.1 },
		Epochs:       epochs,
		Batches:      func(int) int { return batches },
		MaxStaleness: maxStale,
		OnPush:       onPush,
	})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	t.Cleanup(func() { s.Close(); ln.Close() })
	return s, ln
}

// work runs a worker until the end (or until stopAfter pushes, when it
// leaves without pushing its last batch); delay is its compute time.
func work(t *testing.T, addr string, id int, delay time.Duration, stopAfter int) (pushes int, err error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	cl, w, err := Join(ctx, c, id, 3)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	grad := make([]float32, 3)
	for !w.End {
		if stopAfter >= 0 && pushes == stopAfter {
			return pushes, nil // leaves holding a batch
		}
		for i, p := range w.Params {
			grad[i] = p - 3
		}
		time.Sleep(delay)
		if w, err = cl.Push(ctx, w, 8, grad); err != nil {
			return pushes, err
		}
		pushes++
	}
	return pushes, nil
}

func TestWorkersShareTheWorkAndConverge(t *testing.T) {
	var mu sync.Mutex
	done := map[[2]int]int{}
	s, ln := newTestServer(t, 2, 40, -1, func(p PushInfo) {
		mu.Lock()
		done[[2]int{p.Epoch, p.Batch}]++
		mu.Unlock()
	})
	var wg sync.WaitGroup
	pushes := make([]int, 3)
	errs := make([]error, 3)
	for id, d := range []time.Duration{time.Millisecond, time.Millisecond, 4 * time.Millisecond} {
		wg.Add(1)
		go func() { defer wg.Done(); pushes[id], errs[id] = work(t, ln.Addr().String(), id, d, -1) }()
	}
	wg.Wait()
	require.NoError(t, s.Wait(context.Background()))
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, done, 80, "every batch of both epochs")
	for k, n := range done {
		require.Equal(t, 1, n, "batch %v pushed once", k)
	}
	require.Equal(t, 80, pushes[0]+pushes[1]+pushes[2])
	require.Greater(t, pushes[0], pushes[2], "the fast worker takes more batches than the slow one: %v", pushes)
	dst := [][]float32{make([]float32, 2), make([]float32, 1)}
	require.Equal(t, uint64(80), s.Params(dst))
	require.InDelta(t, 3, dst[0][0], 1e-3)
	require.InDelta(t, 3, dst[1][0], 1e-3)
	st := s.Stats()
	require.Equal(t, int64(80), st.Pushes)
	require.Greater(t, st.StalenessMax, uint64(0), "three workers see stale versions")
	require.Empty(t, st.Lost)
}

func TestALeavingWorkerLosesNoBatch(t *testing.T) {
	var mu sync.Mutex
	done := map[[2]int]int{}
	s, ln := newTestServer(t, 1, 30, 2, func(p PushInfo) {
		mu.Lock()
		done[[2]int{p.Epoch, p.Batch}]++
		mu.Unlock()
	})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Add(2)
	// Worker 1 is slow and leaves after 3 pushes holding a batch; worker 0,
	// held by the staleness bound meanwhile, is released and finishes.
	go func() { defer wg.Done(); _, errs[0] = work(t, ln.Addr().String(), 0, time.Millisecond, -1) }()
	go func() { defer wg.Done(); _, errs[1] = work(t, ln.Addr().String(), 1, 20*time.Millisecond, 3) }()
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Wait(ctx))
	require.Len(t, done, 30)
	for k, n := range done {
		require.Equal(t, 1, n, "batch %v pushed once", k)
	}
	st := s.Stats()
	require.Equal(t, []int{1}, st.Lost)
	require.Greater(t, st.WaitSeconds[0], 0.0, "worker 0 was held by the staleness bound")
	require.LessOrEqual(t, st.StalenessMax, uint64(3), "bounded: at most the bound plus the push in flight")
}

func TestNoWorkersLeft(t *testing.T) {
	s, ln := newTestServer(t, 1, 30, -1, nil)
	_, err := work(t, ln.Addr().String(), 0, 0, 2)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.ErrorIs(t, s.Wait(ctx), ErrNoWorkers)
}

func TestRefusals(t *testing.T) {
	_, ln := newTestServer(t, 1, 5, -1, nil)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	_, _, err = Join(context.Background(), c, 0, 7)
	require.ErrorIs(t, err, ErrRefused)
	require.ErrorContains(t, err, "model of 7 parameters, the server's has 3")
	c.Close()
	// The same rank twice.
	c1, _ := net.Dial("tcp", ln.Addr().String())
	_, _, err = Join(context.Background(), c1, 1, 3)
	require.NoError(t, err)
	c2, _ := net.Dial("tcp", ln.Addr().String())
	_, _, err = Join(context.Background(), c2, 1, 3)
	require.ErrorContains(t, err, "cannot join twice")
	c1.Close()
	c2.Close()
	// Garbage: the server drops the connection, and keeps serving.
	g, _ := net.Dial("tcp", ln.Addr().String())
	g.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = g.Read(make([]byte, 1))
	require.Error(t, err, "closed")
	g.Close()
	_, err = work(t, ln.Addr().String(), 2, 0, -1)
	require.NoError(t, err)
}

func FuzzDecode(f *testing.F) {
	var b bytes.Buffer
	w := bufioWriter(&b)
	writeHello(w, Hello{Worker: 1, NParams: 3})
	writePush(w, Push{BaseVersion: 2, Samples: 8, Epoch: 0, Batch: 1, Grad: []float32{1, 2, 3}})
	f.Add(b.Bytes())
	b.Reset()
	writeReply(w, Reply{Kind: kindWork, Version: 4, Params: []float32{1, 2, 3}})
	writeReply(w, Reply{Kind: kindRefused, Message: "no"})
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		buf := make([]byte, 64)
		r := bytes.NewReader(in)
		if _, err := readHello(r); err == nil {
			readPush(r, make([]float32, 3), buf)
		}
		r = bytes.NewReader(in)
		for range 3 {
			if _, err := readReply(r, make([]float32, 3), buf); err != nil {
				break
			}
		}
	})
}

func TestFramesRoundTrip(t *testing.T) {
	var b bytes.Buffer
	w := bufioWriter(&b)
	require.NoError(t, writePush(w, Push{BaseVersion: 9, Samples: 8, Epoch: 1, Batch: 5, Grad: []float32{1.5, -2}}))
	g := make([]float32, 2)
	p, err := readPush(&b, g, make([]byte, 64))
	require.NoError(t, err)
	require.Equal(t, Push{BaseVersion: 9, Samples: 8, Epoch: 1, Batch: 5, Grad: []float32{1.5, -2}}, p)
	require.NoError(t, writePush(w, Push{Grad: []float32{1, 2, 3}}))
	_, err = readPush(&b, g, make([]byte, 64))
	require.ErrorContains(t, err, "a gradient of 3 values for a model of 2")
	b.Reset()
	require.NoError(t, writeReply(w, Reply{Kind: kindRefused, Message: "because"}))
	rp, err := readReply(&b, g, make([]byte, 64))
	require.NoError(t, err)
	require.Equal(t, "because", rp.Message)
}

func bufioWriter(b *bytes.Buffer) *bufio.Writer { return bufio.NewWriter(b) }

// logBuffer is a log destination safe for the server's goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newTickedServer is a server of one epoch of batches with a 10s Timeout
// whose clock only the test ticks; it counts the pushes of every batch.
func newTickedServer(t *testing.T, batches int, maxStale int64) (s *Server, addr string, applied func() map[int]int, log *logBuffer) {
	t.Helper()
	var mu sync.Mutex
	done := map[int]int{}
	log = &logBuffer{}
	s, err := NewServer(Config{
		Params: []optim.Param{{Name: "a", Data: []float32{0, 0}}, {Name: "b", Data: []float32{10}}},
		NewOptimizer: func(ps []optim.Param) (optim.Optimizer, error) {
			return optim.New(optim.Config{Name: "sgd"}, ps)
		},
		LR:           func(uint64) float64 { return 0.1 },
		Epochs:       1,
		Batches:      func(int) int { return batches },
		MaxStaleness: maxStale,
		Timeout:      10 * time.Second,
		ManualTick:   true,
		Log:          slog.New(slog.NewTextHandler(log, nil)),
		OnPush: func(p PushInfo) {
			mu.Lock()
			done[p.Batch]++
			mu.Unlock()
		},
	})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	t.Cleanup(func() { s.Close(); ln.Close() })
	return s, ln.Addr().String(), func() map[int]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(done)
	}, log
}

// joinAs connects worker id and returns its client and first work.
func joinAs(t *testing.T, addr string, id int) (*Client, Work) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	cl, w, err := Join(context.Background(), c, id, 3)
	require.NoError(t, err)
	t.Cleanup(func() { cl.Close() })
	return cl, w
}

type pushResult struct {
	w   Work
	err error
}

// pushAsync pushes w's gradient in the background.
func pushAsync(cl *Client, w Work) <-chan pushResult {
	ch := make(chan pushResult, 1)
	go func() {
		next, err := cl.Push(context.Background(), w, 8, []float32{1, 1, 1})
		ch <- pushResult{next, err}
	}()
	return ch
}

// held says the push has not been answered after a moment (it is held).
func held(ch <-chan pushResult) bool {
	select {
	case <-ch:
		return false
	case <-time.After(200 * time.Millisecond):
		return true
	}
}

func answered(t *testing.T, ch <-chan pushResult) Work {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r.w
	case <-time.After(5 * time.Second):
		t.Fatal("the push was not answered")
		return Work{}
	}
}

func ticks(s *Server, n int) {
	for range n {
		s.Tick()
	}
}

// TestASilentWorkerIsDeclaredLost: worker 1 takes a batch and goes silent
// (a stopped process: its connection stays open). Worker 0, held by the
// staleness bound for it, is released when the Timeout's ticks have passed
// and worker 1 is declared lost; worker 0 takes worker 1's batch and every
// batch is applied exactly once. Worker 1's late push, and its joining
// again, are answered ErrLost with the reason.
func TestASilentWorkerIsDeclaredLost(t *testing.T) {
	s, addr, applied, log := newTickedServer(t, 4, 1)
	a, wa := joinAs(t, addr, 0)
	b, wb := joinAs(t, addr, 1)
	require.Equal(t, []int{0, 1}, []int{wa.Batch, wb.Batch})
	wa = answered(t, pushAsync(a, wa)) // version 1, batch 2
	require.Equal(t, 2, wa.Batch)
	ch := pushAsync(a, wa) // version 2: two ahead of worker 1's version 0
	require.True(t, held(ch), "worker 0 is held by the staleness bound")

	ticks(s, TicksPerTimeout/2-1)
	require.NotContains(t, log.String(), "worker=1")
	s.Tick()
	require.Contains(t, log.String(), "has not pushed its batch for half the timeout")
	require.Contains(t, log.String(), "worker=1")
	ticks(s, TicksPerTimeout/2)
	require.True(t, held(ch), "not before the Timeout")
	require.Empty(t, s.Stats().TimedOut)
	s.Tick()
	wa = answered(t, ch)
	require.Equal(t, 1, wa.Batch, "worker 0 takes the lost worker's batch first")
	st := s.Stats()
	require.Equal(t, []int{1}, st.Lost)
	require.Equal(t, []int{1}, st.TimedOut)
	require.Equal(t, 1, st.Workers)
	require.Regexp(t, `a worker is lost.* worker=1 `, log.String())

	for !wa.End {
		wa = answered(t, pushAsync(a, wa))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Wait(ctx))
	require.Equal(t, map[int]int{0: 1, 1: 1, 2: 1, 3: 1}, applied(), "every batch applied exactly once")

	// Worker 1 runs again: its push is refused, not applied.
	_, err := b.Push(context.Background(), wb, 8, []float32{1, 1, 1})
	require.ErrorIs(t, err, ErrLost)
	require.ErrorContains(t, err, "worker 1 held epoch 1 batch 1 for more than 10s (--timeout) without pushing it; its batches were given to the other workers")
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, _, err = Join(context.Background(), c, 1, 3)
	require.ErrorIs(t, err, ErrLost)
	c.Close()
	require.Equal(t, map[int]int{0: 1, 1: 1, 2: 1, 3: 1}, applied())
	require.Equal(t, uint64(4), s.Stats().Version)
}

// TestALostWorkersLastBatchIsDone: the run's last batch is with a worker
// that goes silent. The other, with nothing left to take, is held (not
// sent the end) until that batch comes back, then does it: the run ends
// with every batch done instead of with a batch and no worker for it.
func TestALostWorkersLastBatchIsDone(t *testing.T) {
	s, addr, applied, _ := newTickedServer(t, 2, -1)
	a, wa := joinAs(t, addr, 0)
	_, wb := joinAs(t, addr, 1)
	require.Equal(t, 1, wb.Batch)
	ch := pushAsync(a, wa)
	require.True(t, held(ch), "no batch to take while worker 1 holds the last one")
	ticks(s, TicksPerTimeout+1)
	wa = answered(t, ch)
	require.False(t, wa.End)
	require.Equal(t, 1, wa.Batch)
	require.True(t, answered(t, pushAsync(a, wa)).End)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Wait(ctx))
	require.Equal(t, map[int]int{0: 1, 1: 1}, applied())
}

// TestAPushingWorkerIsNotLost: a worker's silence is counted from the
// batch it was given, so one that pushes within the Timeout, however many
// ticks its whole run takes, is never declared lost; a worker held by the
// staleness bound is not silent either.
func TestAPushingWorkerIsNotLost(t *testing.T) {
	s, addr, applied, _ := newTickedServer(t, 6, 0)
	a, wa := joinAs(t, addr, 0)
	b, wb := joinAs(t, addr, 1)
	ch := pushAsync(a, wa)
	require.True(t, held(ch), "worker 0 waits for worker 1 (bound 0)")
	ticks(s, TicksPerTimeout)
	wb = answered(t, pushAsync(b, wb)) // just in time
	wa = answered(t, ch)
	for !wa.End || !wb.End {
		ticks(s, TicksPerTimeout) // after worker 0 was held that long
		ca, cb := pushAsync(a, wa), pushAsync(b, wb)
		if !wa.End {
			wa = answered(t, ca)
		}
		if !wb.End {
			wb = answered(t, cb)
		}
	}
	require.Empty(t, s.Stats().Lost)
	require.Len(t, applied(), 6)
}
