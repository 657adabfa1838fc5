package trainer

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/metrics"
)

// ring connects w in-process ranks over loopback TCP.
func ring(t *testing.T, w int) []dist.Communicator {
	t.Helper()
	store := dist.NewMemStore()
	comms := make([]dist.Communicator, w)
	errs := make([]error, w)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for r := 0; r < w; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			comms[r], errs[r] = dist.NewRing(ctx, dist.RingConfig{Rank: r, Size: w, Store: store, Prefix: fmt.Sprintf("%s/", t.Name())})
		}(r)
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms
}

// runRanks trains one Trainer per rank, concurrently, and returns them;
// each rank also gets the options opts returns for it.
func runRanks(t *testing.T, cfgs []Config, opts ...func(r int) Option) []*Trainer {
	t.Helper()
	trs, _ := runRanksResults(t, cfgs, opts...)
	return trs
}

// runRanksResults is runRanks that returns the ranks' results too.
func runRanksResults(t *testing.T, cfgs []Config, opts ...func(r int) Option) ([]*Trainer, []Result) {
	t.Helper()
	comms := ring(t, len(cfgs))
	trs := make([]*Trainer, len(cfgs))
	res := make([]Result, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for r := range cfgs {
		o := []Option{WithCommunicator(comms[r])}
		for _, f := range opts {
			o = append(o, f(r))
		}
		trs[r] = newTrainer(t, cfgs[r], o...)
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			res[r], errs[r] = trs[r].Run(context.Background())
			if errs[r] != nil {
				comms[r].Abort(errs[r])
			}
		}(r)
	}
	wg.Wait()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
	return trs, res
}

// TestDataParallelEqualsOneProcess: W ranks with global batch B end where
// one process with batch B ends (SGD, 100 steps, the epoch remainder
// included), and the ranks hold bitwise-identical parameters.
func TestDataParallelEqualsOneProcess(t *testing.T) {
	for _, drop := range []float64{0, 0.3} {
		t.Run(fmt.Sprintf("dropout%g", drop), func(t *testing.T) { dataParallelEqualsOneProcess(t, drop) })
	}
}

// dataParallelEqualsOneProcess: with dropout too, since each sample's
// masks are drawn from a stream of its place in the global batch.
func dataParallelEqualsOneProcess(t *testing.T, dropout float64) {
	base := sgdConfig(t)
	base.MaxSteps = 100 // 19 steps an epoch, the last of 30 samples
	base.Epochs = 6
	base.Dropout = dropout
	ref := newTrainer(t, base)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)
	cases := []struct{ w, accum int }{{2, 1}, {4, 1}, {3, 1}, {2, 2}}
	if dropout > 0 {
		cases = []struct{ w, accum int }{{3, 1}, {2, 2}}
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("w%d-accum%d", tc.w, tc.accum), func(t *testing.T) {
			cfgs := make([]Config, tc.w)
			for r := range cfgs {
				cfgs[r] = base
				cfgs[r].AccumSteps = tc.accum
			}
			trs := runRanks(t, cfgs)
			d := maxAbsDiff(params(ref), params(trs[0]))
			t.Logf("max |Δ| against one process: %g", d)
			require.Less(t, d, 1e-5)
			for r := 1; r < tc.w; r++ {
				require.Equal(t, params(trs[0]), params(trs[r]), "rank %d differs from rank 0", r)
			}
		})
	}
}

func TestRanksWithAnotherConfigAreRefused(t *testing.T) {
	a := sgdConfig(t)
	b := a
	b.LR = 0.1
	comms := ring(t, 2)
	trs := []*Trainer{newTrainer(t, a, WithCommunicator(comms[0])), newTrainer(t, b, WithCommunicator(comms[1]))}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range trs {
		wg.Add(1)
		go func(r int) { defer wg.Done(); _, errs[r] = trs[r].Run(context.Background()) }(r)
	}
	wg.Wait()
	require.ErrorIs(t, errs[0], ErrReplicas)
	require.ErrorContains(t, errs[0], "ranks 1 run another configuration")
	require.ErrorIs(t, errs[1], ErrReplicas)
	require.ErrorContains(t, errs[1], "lr: 0.1 here, 0.05 on rank 0")
}

func TestResumeAcrossRanks(t *testing.T) {
	// One process trains and checkpoints; two ranks resume from it (rank 0
	// reads the file and broadcasts) and end where one process ends.
	straight := sgdConfig(t)
	straight.MaxSteps = 40
	ref := newTrainer(t, straight)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)

	first := sgdConfig(t)
	first.MaxSteps = 13
	first.CheckpointDir = t.TempDir()
	tr := newTrainer(t, first)
	_, err = tr.Run(context.Background())
	require.NoError(t, err)

	cfgs := make([]Config, 2)
	for r := range cfgs {
		cfgs[r] = straight
		cfgs[r].Resume = first.CheckpointDir
	}
	cfgs[1].Resume = "/nonexistent" // only rank 0 reads the checkpoint
	trs := runRanks(t, cfgs)
	require.Equal(t, ref.Step(), trs[1].Step())
	require.Less(t, maxAbsDiff(params(ref), params(trs[1])), 1e-5)
}

// balanceRecorder keeps the balancer's records.
// balanceRecorder keeps the balance and async records besides the others.
type balanceRecorder struct {
	recorder
	mu    sync.Mutex
	bal   []metrics.Balance
	async []metrics.Async
}

func (b *balanceRecorder) Async(r metrics.Async) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.async = append(b.async, r)
}

func (b *balanceRecorder) Balance(r metrics.Balance) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.bal = append(b.bal, r)
}

// TestUnequalSharesEqualOneProcess: with unequal shares of the global
// batch (fixed 0.8/0.2, and 3 ranks 0.5/0.3/0.2), the parameters equal one
// process's with the global batch.
func TestUnequalSharesEqualOneProcess(t *testing.T) {
	base := sgdConfig(t)
	base.MaxSteps = 30
	ref := newTrainer(t, base)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)
	for _, shares := range [][]float64{{0.8, 0.2}, {0.5, 0.3, 0.2}} {
		cfgs := make([]Config, len(shares))
		for r := range cfgs {
			cfgs[r] = base
			cfgs[r].Shares = shares // as --shares gives them
		}
		trs := runRanks(t, cfgs)
		lo, hi := trs[0].strat.(*allReduce).shareOf(0, 50, 0)
		require.InDelta(t, shares[0]*50, hi-lo, 1, "rank 0's share of a batch of 50")
		d := maxAbsDiff(params(ref), params(trs[0]))
		t.Logf("shares %v: max |Δ| against one process %g", shares, d)
		require.Less(t, d, 1e-5)
		for r := 1; r < len(trs); r++ {
			require.Equal(t, params(trs[0]), params(trs[r]))
		}
	}
}

// stragglerBase is the config of the balancing tests, adaptive balancing
// every 3 steps with rank 1 slowed 4x, on a model whose steps take
// milliseconds, so that the straggler's sleeps dwarf the timer's noise; and
// the reference: one process's run of it (where neither setting acts).
func stragglerBase(t *testing.T, steps int64) (Config, *Trainer) {
	base := sgdConfig(t)
	base.MaxSteps = steps
	base.Hidden = []int{256}
	base.Balance, base.BalanceEvery, base.DebugSlowRank = "adaptive", 3, "1:4"
	ref := newTrainer(t, base)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)
	return base, ref
}

// TestAdaptiveBalancingFavoursTheFastRank: with a 4x straggler the
// balancer re-plans, every rank takes the same decisions, the fast rank
// gets the larger share, and the result still equals one process's.
func TestAdaptiveBalancingFavoursTheFastRank(t *testing.T) {
	base, ref := stragglerBase(t, 30)
	cfgs := []Config{base, base}
	recs := []*balanceRecorder{{}, {}}
	trs := runRanks(t, cfgs, func(r int) Option { return WithSink(recs[r]) })
	require.NotEmpty(t, recs[0].bal, "the balancer re-planned")
	last := recs[0].bal[len(recs[0].bal)-1]
	require.Greater(t, last.Shares[0], last.Shares[1], "the fast rank takes the larger share: %v", last.Shares)
	require.Len(t, recs[1].bal, len(recs[0].bal))
	for i := range recs[0].bal {
		require.Equal(t, recs[0].bal[i].Shares, recs[1].bal[i].Shares, "every rank takes the same decisions")
		require.Equal(t, recs[0].bal[i].Step, recs[1].bal[i].Step)
	}
	require.Less(t, maxAbsDiff(params(ref), params(trs[0])), 1e-5)
	require.Equal(t, params(trs[0]), params(trs[1]))
	// Both ranks report both ranks' computation speeds, the same list; the
	// 4x straggler's is the lower by at least most of its factor (more:
	// its tiny share pays a program run's fixed cost on few samples).
	require.Len(t, recs[0].sum, 1)
	speeds := recs[0].sum[0].RankComputeSamplesPerSec
	require.Len(t, speeds, 2)
	require.Equal(t, speeds, recs[1].sum[0].RankComputeSamplesPerSec)
	require.Positive(t, speeds[1])
	ratio := speeds[0] / speeds[1]
	require.Greater(t, ratio, 3.0, "speeds %v: rank 1 sleeps 3x its computation", speeds)
}

// TestResumeKeepsTheShares: a checkpoint holds the balancer's shares; the
// ranks that resume from it (rank 0 reads it) go on with them instead of
// equal shares, and still end where one process ends. A job of another
// size starts from equal shares.
func TestResumeKeepsTheShares(t *testing.T) {
	base, ref := stragglerBase(t, 13)

	dir := t.TempDir()
	cfgs := make([]Config, 2)
	recs := []*balanceRecorder{{}, {}}
	for r := range cfgs {
		cfgs[r] = base
		cfgs[r].MaxSteps = 12
		cfgs[r].CheckpointDir = dir
	}
	trs := runRanks(t, cfgs, func(r int) Option { return WithSink(recs[r]) })
	require.NotEmpty(t, recs[0].bal)
	saved := slices.Clone(trs[0].strat.(*allReduce).bal.Weights())
	require.Greater(t, saved[0], 0.55, "the fast rank took the larger share: %v", saved)

	// One more step from the checkpoint: no re-plan falls on step 13, so
	// the shares in use are the resumed ones.
	for r := range cfgs {
		cfgs[r].MaxSteps = 13
		cfgs[r].Resume = dir
	}
	cfgs[1].Resume = "/nonexistent"
	trs = runRanks(t, cfgs)
	for r, tr := range trs {
		require.Equal(t, saved, tr.strat.(*allReduce).bal.Weights(), "rank %d resumed the shares", r)
	}
	require.Less(t, maxAbsDiff(params(ref), params(trs[0])), 1e-5)

	three := make([]Config, 3)
	for r := range three {
		three[r] = cfgs[0]
		three[r].MaxSteps = 14 // one step from the last checkpoint, no re-plan
		three[r].DebugSlowRank = ""
	}
	trs = runRanks(t, three)
	require.Equal(t, int64(14), trs[0].Step())
	for _, w := range trs[0].strat.(*allReduce).bal.Weights() {
		require.InDelta(t, 1.0/3, w, 1e-12, "a job of 3 ranks starts from equal shares")
	}
}

// TestSharesMustMatchTheWorld: --shares gives one share per rank.
func TestSharesMustMatchTheWorld(t *testing.T) {
	cfg := sgdConfig(t)
	cfg.Shares = []float64{0.5, 0.3, 0.2}
	comms := ring(t, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range comms {
		tr := newTrainer(t, cfg, WithCommunicator(comms[r]))
		wg.Add(1)
		go func(r int) { defer wg.Done(); _, errs[r] = tr.Run(context.Background()); comms[r].Abort(errs[r]) }(r)
	}
	wg.Wait()
	for _, err := range errs {
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, "3 shares for a world of 2 ranks")
	}
}

// TestDeviceHeadroomBoundsAndResetsTheShares: the fast rank's free memory
// holds only 60% of the batch, so its share stops there however fast it
// is; the slow rank's device starts to throttle mid-run, which the re-plan
// names. The result still equals one process's.
func TestDeviceHeadroomBoundsAndResetsTheShares(t *testing.T) {
	base := sgdConfig(t)
	base.MaxSteps = 30
	ref := newTrainer(t, base)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)
	// The memory one sample costs in this model's training program.
	probe := newTrainer(t, base).Model
	prog, err := probe.Program(10, true)
	require.NoError(t, err)
	_, err = prog.Run(nil)
	require.NoError(t, err)
	const limit = 0.6
	free := uint64(limit * float64(base.BatchSize) * prog.BytesPerSample() / freeMemoryUse)
	var calls atomic.Int64
	headroom := []func() gpu.Headroom{
		func() gpu.Headroom {
			if calls.Add(1) > 3 { // from the third re-plan on
				return gpu.Headroom{Slowdown: gpu.ThrottleHWSlowdown}
			}
			return gpu.Headroom{}
		},
		func() gpu.Headroom { return gpu.Headroom{FreeBytes: free} },
	}
	cfgs := []Config{base, base}
	recs := []*balanceRecorder{{}, {}}
	for r := range cfgs {
		cfgs[r].Balance, cfgs[r].BalanceEvery, cfgs[r].DebugSlowRank = "adaptive", 3, "0:4"
	}
	trs := runRanks(t, cfgs, func(r int) Option { return WithSink(recs[r]) }, func(r int) Option { return WithHeadroom(headroom[r]) })
	require.NotEmpty(t, recs[0].bal)
	var capped, throttled bool
	for _, b := range recs[0].bal {
		t.Logf("step %d shares %.3f: %s", b.Step, b.Shares, b.Reason)
		require.LessOrEqual(t, b.Shares[1], limit+0.01, "rank 1's share fits its free memory")
		capped = capped || strings.Contains(b.Reason, "rank 1 capped")
		throttled = throttled || strings.Contains(b.Reason, "rank 0 throttled (hw_slowdown)")
	}
	require.True(t, capped, "the cap is named")
	require.True(t, throttled, "the throttling is named")
	require.Greater(t, recs[0].bal[len(recs[0].bal)-1].Shares[1], 0.5, "the fast rank still takes the larger share")
	require.Less(t, maxAbsDiff(params(ref), params(trs[0])), 1e-5)
	require.Equal(t, params(trs[0]), params(trs[1]))
}

// TestLocalSGD: ranks step on their own shares and average parameters
// every period; they end identical and learn as well as synchronous
// training on the planted pattern.
func TestLocalSGD(t *testing.T) {
	base := sgdConfig(t)
	base.MaxSteps = 0
	base.Epochs = 3
	sync := runRanks(t, []Config{base, base})
	cfgs := []Config{base, base}
	for r := range cfgs {
		cfgs[r].Sync = "local-sgd"
		cfgs[r].SyncPeriod = 4
	}
	local := runRanks(t, cfgs)
	require.Equal(t, params(local[0]), params(local[1]), "replicas agree after the final average")
	require.NotEqual(t, params(sync[0]), params(local[0]), "local SGD is a different algorithm")
	accSync, _, err := Evaluate(sync[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	accLocal, _, err := Evaluate(local[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	t.Logf("test accuracy: allreduce %.3f, local-sgd %.3f", accSync, accLocal)
	require.Greater(t, accLocal, accSync-0.05)
}

// TestPipelineRanksEqualOneProcess: 2 and 4 ranks, one pipeline stage
// each, with micro-batches, end 50 SGD steps with the parameters one
// process reaches; evaluation through the pipeline agrees too.
func TestPipelineRanksEqualOneProcess(t *testing.T) {
	base := sgdConfig(t)
	base.Hidden = []int{32, 24, 16}
	base.MaxSteps = 50
	base.Epochs = 3
	ref := newTrainer(t, base)
	refRes, err := ref.Run(context.Background())
	require.NoError(t, err)
	for _, tc := range []struct{ world, stages int }{{2, 2}, {4, 4}, {4, 2}} {
		n := tc.world
		cfgs := make([]Config, n)
		for r := range cfgs {
			cfgs[r] = base
			cfgs[r].PipelineStages = tc.stages
			cfgs[r].MicroBatches = 3
		}
		trs, res := runRanksResults(t, cfgs)
		d := 0.0
		for r := range trs {
			for _, i := range trs[r].strat.(*pipeline).stage.Params {
				for e, v := range trs[r].Model.Params[i].Data {
					d = math.Max(d, math.Abs(float64(v-ref.Model.Params[i].Data[e])))
				}
			}
			require.Equal(t, res[0].TestAccuracy, res[r].TestAccuracy)
		}
		t.Logf("%d ranks, %d stages: max |Δ| against one process %g; test accuracy %.3f (one process %.3f)", n, tc.stages, d, res[0].TestAccuracy, refRes.TestAccuracy)
		require.Less(t, d, 1e-5)
		require.InDelta(t, refRes.TestAccuracy, res[0].TestAccuracy, 0.011)
	}
}

// TestLocalSGDOuterOptimizer: local SGD with DiLoCo's outer optimiser
// (Nesterov, lr 0.7, momentum 0.9) learns the planted pattern, keeps the
// replicas identical, differs from plain averaging, and resumes exactly:
// a run stopped at step 16 and resumed on two ranks (rank 0 reads the
// checkpoint, outer momentum included) ends bitwise where an unbroken run
// ends: the checkpoint holds every rank's inner optimiser state (SGD with
// momentum, which differs from rank to rank) and the outer momentum.
func TestLocalSGDOuterOptimizer(t *testing.T) {
	base := sgdConfig(t)
	base.MaxSteps = 0
	base.Epochs = 3
	base.Sync, base.SyncPeriod = "local-sgd", 4
	plain := runRanks(t, []Config{base, base})
	outer := base
	outer.OuterLR, outer.OuterMomentum = 0.7, 0.9
	straight := runRanks(t, []Config{outer, outer})
	require.Equal(t, params(straight[0]), params(straight[1]), "replicas agree")
	require.NotEqual(t, params(plain[0]), params(straight[0]), "the outer step is not plain averaging")
	accPlain, _, err := Evaluate(plain[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	accOuter, _, err := Evaluate(straight[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	t.Logf("test accuracy: plain averaging %.3f, outer optimiser %.3f", accPlain, accOuter)
	require.Greater(t, accOuter, accPlain-0.05)

	resumed := stopAndResume(t, outer, 16)
	require.Equal(t, params(straight[0]), params(resumed[0]), "resumed bitwise where the unbroken run ended")
	require.Equal(t, params(straight[0]), params(resumed[1]))
}

// TestLocalSGDResumesExactly: plain local SGD with SGD momentum, stopped at
// step 16 and resumed on two ranks, ends bitwise where an unbroken run
// ends (each rank gets its own momentum back from the checkpoint).
func TestLocalSGDResumesExactly(t *testing.T) {
	base := sgdConfig(t)
	base.MaxSteps = 0
	base.Epochs = 2
	base.Sync, base.SyncPeriod = "local-sgd", 4
	straight := runRanks(t, []Config{base, base})
	resumed := stopAndResume(t, base, 16)
	require.Equal(t, params(straight[0]), params(resumed[0]))
	require.Equal(t, params(straight[1]), params(resumed[1]))
}

// stopAndResume runs cfg on two ranks until step stop, with checkpoints,
// then resumes it on two ranks to the end (only rank 0 reads the
// checkpoint) and returns the resumed ranks.
func stopAndResume(t *testing.T, cfg Config, stop int64) []*Trainer {
	t.Helper()
	first := cfg
	first.MaxSteps = stop
	first.CheckpointDir = t.TempDir()
	runRanks(t, []Config{first, first})
	cfgs := []Config{cfg, cfg}
	for r := range cfgs {
		cfgs[r].Resume = first.CheckpointDir
	}
	cfgs[1].Resume = "/nonexistent" // only rank 0 reads the checkpoint
	return runRanks(t, cfgs)
}

// TestStragglerKeepsItsFactor: many short steps. Every sleep overshoots
// (Linux's timer slack alone is 50µs), so sleeping (F-1)·d per step would
// slow short steps by much more than F; the straggler takes the overshoot
// off the next sleeps and stays close to F overall, and every step sleeps
// at least half its share.
func TestStragglerKeepsItsFactor(t *testing.T) {
	// A clock whose every sleep overshoots by 1 ms (a busy host's can be
	// several).
	const over = time.Millisecond
	var asked []time.Duration
	s := &straggler{factor: 2, sleep: func(d time.Duration) time.Duration {
		asked = append(asked, d)
		return d + over
	}}
	const steps, d = 50, 4 * time.Millisecond
	var slept time.Duration
	for range steps {
		one := s.delay(d)
		require.GreaterOrEqual(t, one, d/2, "every step sleeps at least half its share")
		slept += one
	}
	want := steps * d // (factor-1)·d per step
	require.Equal(t, want, slept+s.owed)
	// Each sleep after the first asks for its share less the last one's
	// overshoot, so what is left over after fifty is one overshoot.
	require.Equal(t, d, asked[0])
	for _, a := range asked[1:] {
		require.Equal(t, d-over, a)
	}
	require.Equal(t, want+over, slept, "the overshoot is taken back")

	// The real clock: the same accounting.
	wall := &straggler{factor: 2}
	var total time.Duration
	for range 5 {
		total += wall.delay(time.Millisecond)
	}
	require.Equal(t, 5*time.Millisecond, total+wall.owed)

	var none *straggler
	require.Zero(t, none.delay(time.Second), "a rank that is not slow never sleeps")
}

// A balancing window's time per sample: stalls and slow first runs are
// left out, and steps that alternate between two speeds count at their
// mix (the median would pick one of them).
func TestInterquartileMean(t *testing.T) {
	require.Equal(t, 2.0, interquartileMean([]float64{2}))
	require.Equal(t, 3.0, interquartileMean([]float64{2, 4}))
	require.Equal(t, 3.0, interquartileMean([]float64{3, 9, 2}), "three: the median")
	stalled := []float64{1, 1, 1, 1, 1, 1, 1, 1, 1, 40}
	require.Equal(t, 1.0, interquartileMean(stalled))
	// Half the steps fast, half slow, one stall: the mix, not either mode.
	mixed := []float64{1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 30}
	got := interquartileMean(mixed)
	require.Greater(t, got, 1.2)
	require.Less(t, got, 1.8)
}
