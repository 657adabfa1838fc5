package trainer

import (
	"context"
	"net"
	"slices"
	"testing"

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
