package trainer

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/metrics"
)

// asyncOptions gives each of w in-process ranks its transport to rank 0's
// parameter server over loopback TCP.
func asyncOptions(t *testing.T) func(r int) Option {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return func(r int) Option {
		tr := AsyncTransport{Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		}}
		if r == 0 {
			tr.Listener = ln
		}
		return WithAsync(tr)
	}
}

// rank0Sink gives rank 0 the sink rec and the other ranks one each of
// their own.
func rank0Sink(rec *balanceRecorder) func(r int) Option {
	return func(r int) Option {
		if r == 0 {
			return WithSink(rec)
		}
		return WithSink(&recorder{})
	}
}

// TestAsyncLearnsAndTheFastRankTakesMore: three async ranks, rank 2 slowed
// 3×, learn the planted pattern as well as synchronous training, and the
// slow rank computes fewer batches.
func TestAsyncLearnsAndTheFastRankTakesMore(t *testing.T) {
	base := sgdConfig(t)
	base.MaxSteps = 0
	base.Epochs = 3
	sync3 := runRanks(t, []Config{base, base, base})
	accSync, _, err := Evaluate(sync3[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	cfgs := []Config{base, base, base}
	for r := range cfgs {
		cfgs[r].Sync = "async"
		cfgs[r].DebugSlowRank = "2:3"
	}
	rec := &balanceRecorder{}
	trs := runRanks(t, cfgs, asyncOptions(t), rank0Sink(rec))
	accAsync, _, err := Evaluate(trs[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	t.Logf("test accuracy: allreduce %.3f, async %.3f", accSync, accAsync)
	require.Greater(t, accAsync, accSync-0.05)
	require.NotEmpty(t, rec.async)
	require.True(t, slices.ContainsFunc(rec.async, func(a metrics.Async) bool { return a.Workers == 3 }), "the window records count the connected workers")
	last := rec.async[len(rec.async)-1]
	// 930 samples, batches of 50/3 = 16: 59 batches an epoch, 3 epochs.
	require.Equal(t, uint64(3*59), last.Version, "every batch of every epoch was applied once")
	require.Len(t, last.WaitSeconds, 3)
	require.Empty(t, last.Lost)
	require.Less(t, trs[2].Step(), trs[1].Step()+1, "the slow rank does not take more batches")
}

// lockedBuffer is a log destination safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAsyncStalledRankIsDroppedAndRefused: one rank stalls in its first
// batch (its compute does not return for 4 timeouts) while its connection
// stays open. The parameter server declares it lost after --timeout, the
// other ranks do its batch and finish the run (every batch applied once),
// and when the stalled rank runs again it is refused and ends without an
// error, so that it does not fail the job. Rank 2 reads the server's lost
// reply; rank 0's worker, over a pipe that keeps no reply for it, finds
// its push failing after more than --timeout and concludes the same, and
// rank 0 still evaluates and reports the run.
func TestAsyncStalledRankIsDroppedAndRefused(t *testing.T) {
	const timeout = time.Second
	cfg := sgdConfig(t)
	cfg.MaxSteps = 0
	cfg.Epochs = 1
	cfg.Sync = "async"
	cfg.Timeout = timeout
	for _, tc := range []struct {
		stalled int
		says    string
	}{
		{2, `worker 2 held epoch 1 batch \d+ for more than 1s \(--timeout\) without pushing it`},
		{0, `\d\.\ds from its batch to its push, more than --timeout 1s`},
	} {
		t.Run(fmt.Sprintf("rank%d", tc.stalled), func(t *testing.T) {
			stall := func(r int) Option {
				if r != tc.stalled {
					return func(*Trainer) {}
				}
				var once sync.Once
				return func(t *Trainer) {
					t.slow = &straggler{factor: 2, sleep: func(d time.Duration) time.Duration {
						once.Do(func() { time.Sleep(4 * timeout) })
						return d
					}}
				}
			}
			log := &lockedBuffer{}
			logs := func(r int) Option {
				if r != tc.stalled {
					return func(*Trainer) {}
				}
				return WithLogger(slog.New(slog.NewTextHandler(log, nil)))
			}
			rec := &balanceRecorder{}
			start := time.Now()
			_, res := runRanksResults(t, []Config{cfg, cfg, cfg}, asyncOptions(t), rank0Sink(rec), stall, logs)
			t.Logf("the run took %v; rank %d's log: %s", time.Since(start), tc.stalled, log.String())
			last := rec.async[len(rec.async)-1]
			require.Equal(t, uint64(59), last.Version, "every batch of the epoch applied exactly once (930 samples, batches of 16)")
			require.Equal(t, []int{tc.stalled}, last.Lost)
			require.Equal(t, []int{tc.stalled}, last.TimedOut)
			require.Contains(t, log.String(), "this rank was declared lost by the parameter server")
			require.Regexp(t, tc.says, log.String())
			if tc.stalled == 0 {
				require.Equal(t, int64(59), res[0].Steps, "rank 0 reports the run's updates")
				require.Greater(t, res[0].TestAccuracy, 0.0)
			} else {
				require.Equal(t, int64(0), res[tc.stalled].Steps, "the stalled rank pushed nothing")
			}
		})
	}
}
