package gpu

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

type fakeTicker struct {
	ch       chan time.Time
	interval time.Duration
	stopped  atomic.Bool
}

func (f *fakeTicker) C() <-chan time.Time { return f.ch }
func (f *fakeTicker) Stop()               { f.stopped.Store(true) }

// fakeMonitor returns one DeviceStats whose UtilGPUPercent is the call
// number, and fails or panics on the calls listed.
type fakeMonitor struct {
	mu     sync.Mutex
	calls  int
	failAt map[int]error
	panics map[int]bool
}

func (f *fakeMonitor) Devices() []DeviceInfo { return []DeviceInfo{{Name: "fake"}} }
func (f *fakeMonitor) Close() error          { return nil }
func (f *fakeMonitor) Sample() ([]DeviceStats, error) {
	f.mu.Lock()
	f.calls++
	c := f.calls
	f.mu.Unlock()
	if f.panics[c] {
		panic("boom")
	}
	if err := f.failAt[c]; err != nil {
		return nil, err
	}
	return []DeviceStats{{Name: "fake", UtilGPUPercent: uint32(c)}}, nil
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func waitSamples(t *testing.T, s *Sampler, n uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return s.Samples() >= n }, 5*time.Second, time.Millisecond)
	require.Equal(t, n, s.Samples())
}

func TestSamplerWithFakeTicker(t *testing.T) {
	errBad := errors.New("bad sample")
	mon := &fakeMonitor{failAt: map[int]error{3: errBad}, panics: map[int]bool{4: true}}
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	var tk *fakeTicker
	var hooks atomic.Int32
	s := NewSampler(mon, 2*time.Second,
		WithTicker(func(d time.Duration) Ticker {
			tk = &fakeTicker{ch: make(chan time.Time), interval: d}
			return tk
		}),
		WithClock(clock.Now),
		WithOnSample(func([]DeviceStats, time.Time, error) { hooks.Add(1) }),
	)
	require.Equal(t, 2*time.Second, tk.interval)

	// One sample at start.
	waitSamples(t, s, 1)
	stats, at := s.Latest()
	require.Len(t, stats, 1)
	require.Equal(t, uint32(1), stats[0].UtilGPUPercent)
	require.Equal(t, clock.Now(), at)
	require.NoError(t, s.Err())

	// A tick takes another.
	clock.Add(2 * time.Second)
	tk.ch <- time.Time{}
	waitSamples(t, s, 2)
	stats, at = s.Latest()
	require.Equal(t, uint32(2), stats[0].UtilGPUPercent)
	require.Equal(t, clock.Now(), at)

	// A failing sample keeps the error and the previous statistics.
	t2 := clock.Now()
	clock.Add(2 * time.Second)
	tk.ch <- time.Time{}
	waitSamples(t, s, 3)
	require.ErrorIs(t, s.Err(), errBad)
	stats, at = s.Latest()
	require.Equal(t, uint32(2), stats[0].UtilGPUPercent)
	require.Equal(t, t2, at)

	// A panicking monitor does not crash the sampler.
	tk.ch <- time.Time{}
	waitSamples(t, s, 4)
	require.ErrorContains(t, s.Err(), "panicked")

	// And it goes on sampling; the error is kept.
	tk.ch <- time.Time{}
	waitSamples(t, s, 5)
	stats, _ = s.Latest()
	require.Equal(t, uint32(5), stats[0].UtilGPUPercent)
	require.ErrorContains(t, s.Err(), "panicked")
	require.Equal(t, int32(5), hooks.Load())

	s.Stop()
	require.True(t, tk.stopped.Load())
	select {
	case <-s.done:
	default:
		t.Fatal("sampling goroutine still running after Stop")
	}
	s.Stop() // idempotent
	// No sample after Stop: nobody receives from the ticker any more.
	select {
	case tk.ch <- time.Time{}:
		t.Fatal("a tick was received after Stop")
	case <-time.After(20 * time.Millisecond):
	}
	require.Equal(t, uint64(5), s.Samples())
}

// With the real time.Ticker inside a synctest bubble (fake time): the
// default wiring samples at start and at every interval, and Stop leaves no
// goroutine behind (synctest.Test fails if one is still blocked).
func TestSamplerRealTickerNoLeak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mon := &fakeMonitor{}
		start := time.Now()
		s := NewSampler(mon, time.Second)
		time.Sleep(3500 * time.Millisecond)
		synctest.Wait()
		require.Equal(t, uint64(4), s.Samples())
		_, at := s.Latest()
		require.Equal(t, start.Add(3*time.Second), at)
		s.Stop()

		// Non-positive interval falls back to DefaultInterval.
		s = NewSampler(mon, 0)
		time.Sleep(DefaultInterval + DefaultInterval/2)
		synctest.Wait()
		require.Equal(t, uint64(2), s.Samples())
		s.Stop()
	})
}
