package trainer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/balance"
	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/metrics"
)

// Data parallelism
//
// With a communicator of W ranks, every global batch of B samples (the
// last one of an epoch holds the remainder) is split into W near-equal
// contiguous shares of the epoch's permutation; each share into
// Config.AccumSteps near-equal micro-batches. A micro-batch of m samples
// adds m/n times its mean gradient (n: samples in the global batch) into
// flat buckets, so that after a SUM all-reduce every rank holds the mean
// gradient over the global batch: the same quantity one process computes
// with batch B, whatever W, the remainder or the accumulation. Buckets hold
// the gradients in reverse parameter order (the order backward produces
// them), at most Config.BucketMB each; each bucket's all-reduce starts as
// soon as it is filled and overlaps the filling of the next. The reduced
// gradients are bitwise identical on every rank, so are the parameters
// after the optimiser step; a checksum verifies it at the start and at
// every checkpoint.

// ErrReplicas is returned when ranks disagree: another configuration, or
// parameters that are not identical.
var ErrReplicas = errors.New("ranks disagree")

// WithCommunicator makes the trainer one rank of a data-parallel job.
func WithCommunicator(c dist.Communicator) Option { return func(t *Trainer) { t.comm = c } }

func (t *Trainer) rank() int {
	if t.comm == nil {
		return 0
	}
	return t.comm.Rank()
}

func (t *Trainer) worldSize() int {
	if t.comm == nil {
		return 1
	}
	return t.comm.Size()
}

// allReduce is the all-reduce data-parallel strategy (and gradient
// accumulation in one process): see "Data parallelism".
type allReduce struct {
	base
	local bool             // local SGD: the buckets hold this rank's own mean gradient, reduced by none
	bal   *balance.Planner // nil: equal shares
	sizes []int            // this step's share of each rank
	// this rank's compute over the current balancing window, and its
	// device's clock summed over the window's steps (clocked devices only)
	winSeconds, winSamples float64
	winPerSample           []float64 // each step's seconds per sample
	winClock, winClockN    float64
	switchSeconds          float64 // what the last change of share cost (first runs)
	clocked                bool    // the headroom reports a clock
	bk                     *buckets
	red                    gradReducer
}

func (a *allReduce) start(ctx context.Context) error {
	t := a.t
	if err := a.joinJob(ctx); err != nil {
		return err
	}
	a.bk = newBuckets(t.Model, t.cfg.BucketMB)
	if err := a.setupBalance(); err != nil {
		return err
	}
	if err := t.exec.start(t.opt, nil); err != nil {
		return err
	}
	var c dist.Communicator // nil: nothing to reduce
	if t.worldSize() > 1 && !a.local {
		c = t.comm
	}
	var err error
	if a.red, err = t.exec.reducer(a.bk, c); err != nil {
		return err
	}
	if t.cfg.Prefetch {
		return t.exec.startPrefetcher(t.cfg.BatchSize)
	}
	return nil
}

// shard returns the part r of w of [lo,hi): near-equal contiguous parts,
// the first (hi-lo)%w one sample larger.
func shard(lo, hi, r, w int) (int, int) {
	n := hi - lo
	q, rem := n/w, n%w
	start := lo + r*q + min(r, rem)
	size := q
	if r < rem {
		size++
	}
	return start, start + size
}

// straggler is --debug-slow-rank's slow rank: after d of computation it
// sleeps (factor-1)·d, so that it takes factor times as long. A sleep
// overshoots (by milliseconds on a busy or virtual host, every time, so a
// rank taking many short steps would be slowed by more than factor): the
// overshoot is owed back and taken off the next sleeps, but never more
// than half of a step's sleep, so that every step stays slowed (the
// balancer measures the median step of a period) while the slowdown over
// a few steps stays at factor.
type straggler struct {
	factor float64
	owed   time.Duration // sleep still due; negative: slept ahead
	// sleep sleeps for about d and returns how long it slept; nil: the
	// real clock (tests inject one that overshoots by a known amount)
	sleep func(d time.Duration) time.Duration
}

// delay sleeps for d's computation and returns the time slept.
func (s *straggler) delay(d time.Duration) time.Duration {
	if s == nil {
		return 0
	}
	target := time.Duration(float64(d) * (s.factor - 1))
	want := max(target+s.owed, target/2)
	if want <= 0 {
		return 0
	}
	var slept time.Duration
	if s.sleep != nil {
		slept = s.sleep(want)
	} else {
		t0 := time.Now()
		time.Sleep(want)
		slept = time.Since(t0)
	}
	s.owed += target - slept
	return slept
}

// straggler returns this rank's --debug-slow-rank straggler, nil when it is
// not the slow one.
func (t *Trainer) straggler() *straggler {
	if t.slow == nil {
		r, f, _ := t.cfg.slowRank()
		t.slow = &straggler{}
		if r == t.rank() && f > 1 {
			t.slow.factor = f
		}
	}
	if t.slow.factor == 0 {
		return nil
	}
	return t.slow
}

// shareOf is rank r's part of the global batch [lo,hi): equal shares, or
// the balancer's.
func (a *allReduce) shareOf(lo, hi, r int) (int, int) {
	if a.bal == nil {
		return shard(lo, hi, r, a.t.worldSize())
	}
	balance.Sizes(hi-lo, a.bal.Weights(), nil, a.sizes)
	start := lo
	for i := 0; i < r; i++ {
		start += a.sizes[i]
	}
	return start, start + a.sizes[r]
}

// beginEpoch starts prefetching this rank's micro-batches of its shares
// of the epoch's batches from t.pos.batch on, by the shares of now.
func (a *allReduce) beginEpoch() {
	t := a.t
	nb, n := t.batchesPerEpoch(), t.train.Len()
	var spans [][2]int
	k := max(t.cfg.AccumSteps, 1)
	for b := t.pos.batch; b < nb; b++ {
		lo := b * t.cfg.BatchSize
		hi := min(lo+t.cfg.BatchSize, n)
		rs, re := a.shareOf(lo, hi, t.rank())
		for j := range k {
			if ms, me := shard(rs, re, j, k); me > ms {
				spans = append(spans, [2]int{ms, me})
			}
		}
	}
	t.prefetch(spans)
}

func (a *allReduce) endEpoch() { a.t.exec.stopPrefetch() }

// endStep re-plans the shares every --balance-every steps (and once
// early, at step min(4, --balance-every)).
func (a *allReduce) endStep(ctx context.Context) error {
	t := a.t
	if a.bal == nil || (t.pos.step%t.cfg.BalanceEvery != 0 && t.pos.step != min(4, t.cfg.BalanceEvery)) {
		return nil
	}
	if err := a.rebalance(ctx); err != nil {
		return err
	}
	// The shares may have moved: prefetch by the new ones.
	a.endEpoch()
	a.beginEpoch()
	return nil
}

// checkpoint adds the balancer's shares to the checkpoint.
func (a *allReduce) checkpoint(context.Context) (func(*checkpoint.File), error) {
	if a.bal == nil {
		return nil, nil
	}
	shares := a.bal.Weights()
	return func(f *checkpoint.File) { f.Metadata[metaShares] = sharesMeta(shares) }, nil
}

// computeSpeeds gathers every rank's computation speed over the run.
func (a *allReduce) computeSpeeds(ctx context.Context, mine []float64) ([]float64, error) {
	t := a.t
	if t.worldSize() < 2 {
		return mine, nil
	}
	all := make([]float64, t.worldSize())
	err := t.collective(ctx, "the ranks' speeds", func(ctx context.Context) error { return t.comm.AllGather(ctx, mine, all) })
	return all, err
}

// measureFields is how many numbers each rank contributes to a re-plan.
const measureFields = 6

// measurement is this rank's report to a re-plan (balance.Measurement),
// flattened for the all-gather: its compute over the window and, with
// WithHeadroom, its device's free memory as a share of the batch, clock
// ratio and slowdown reasons.
func (a *allReduce) measurement(dst []float64) {
	t := a.t
	secs := a.winSeconds
	if len(a.winPerSample) > 0 {
		secs = interquartileMean(a.winPerSample) * a.winSamples
	}
	m := balance.Measurement{Seconds: secs, Samples: a.winSamples, SwitchSeconds: a.switchSeconds}
	if t.headroom != nil {
		h := t.headroom()
		m.Slowdown = h.Slowdown
		if h.ClockMHz > 0 && a.winClockN > 0 {
			m.ClockRatio = h.ClockMHz / (a.winClock / a.winClockN)
		}
		m.MaxShare = a.maxShare(h.FreeBytes)
	}
	copy(dst, []float64{m.Seconds, m.Samples, m.MaxShare, m.ClockRatio, float64(m.Slowdown), m.SwitchSeconds})
}

// interquartileMean is the mean of the middle of xs (sorted in place):
// about half of them, the median of three or four. It stands for a
// balancing window's time per sample: a step that a noisy host stalled,
// or a first run at a new share, does not skew it, and a rank whose steps
// alternate between two speeds (sharing a core's caches with a neighbour
// part of the time) is measured at their mix, which a median would miss.
func interquartileMean(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	cut := (n + 3) / 4
	if n < 3 {
		cut = 0
	}
	var sum float64
	for _, v := range xs[cut : n-cut] {
		sum += v
	}
	return sum / float64(n-2*cut)
}

// planHorizon is how many balancing periods new shares have to pay for
// the cost of switching to them.
const planHorizon = 20

// balanceReserve is the room, as a multiple of a rank's first batch,
// that its programs' buffers hold when the balancer may move its share:
// 1.5 covers a rank of a pair three times as fast as the other.
const balanceReserve = 1.5

// freeMemoryUse is the part of the free memory a larger share may take.
const freeMemoryUse = 0.8

// maxShare is the largest share of the global batch whose program fits
// freeMemoryUse of free bytes (a new batch size compiles a new program
// beside the current one), never below the current share; 0 when unknown
// or unbounded.
func (a *allReduce) maxShare(free uint64) float64 {
	t := a.t
	cur := a.sizes[t.rank()]
	if free == 0 || cur == 0 {
		return 0
	}
	prog, err := t.Model.Program(cur, true)
	if err != nil || !(prog.BytesPerSample() > 0) {
		return 0
	}
	fit := max(float64(cur), math.Floor(freeMemoryUse*float64(free)/prog.BytesPerSample()))
	if share := fit / float64(t.cfg.BatchSize); share < 1 {
		return share
	}
	return 0
}

// rebalance gathers every rank's measurement over the last window and lets
// the planner (the same on every rank) re-plan the shares.
func (a *allReduce) rebalance(ctx context.Context) error {
	t := a.t
	w := t.worldSize()
	mine := make([]float64, measureFields)
	a.measurement(mine)
	all := make([]float64, measureFields*w)
	if err := t.collective(ctx, "balance measurements", func(ctx context.Context) error {
		return t.comm.AllGather(ctx, mine, all)
	}); err != nil {
		return err
	}
	a.winSeconds, a.winSamples, a.winClock, a.winClockN = 0, 0, 0, 0
	a.winPerSample = a.winPerSample[:0]
	ms := make([]balance.Measurement, w)
	for i := range ms {
		f := all[measureFields*i:]
		ms[i] = balance.Measurement{Seconds: f[0], Samples: f[1], MaxShare: f[2], ClockRatio: f[3], Slowdown: uint64(f[4]), SwitchSeconds: f[5]}
	}
	// New shares must pay for their switch within the rest of the run, at
	// most planHorizon periods.
	a.bal.Batch = t.cfg.BatchSize
	last := t.TotalSteps()
	if t.cfg.MaxSteps > 0 {
		last = min(last, t.cfg.MaxSteps)
	}
	a.bal.Horizon = int(max(0, min(last-t.pos.step, planHorizon*t.cfg.BalanceEvery)))
	r, old := t.rank(), a.sizes[t.rank()]
	changed, reason := a.bal.Plan(ms)
	if !changed && reason == "" {
		return nil
	}
	if changed {
		a.releaseShare(r, old)
	}
	shares := slices.Clone(a.bal.Weights())
	t.log.Info("rebalanced", "step", t.pos.step, "shares", shares, "reason", reason)
	if bs, ok := t.sink.(interface{ Balance(metrics.Balance) }); ok {
		bs.Balance(metrics.Balance{Step: t.pos.step, Shares: shares, Reason: reason, Rank: t.rank(), WorldSize: w})
	}
	return nil
}

// releaseShare drops the training programs of rank r's previous share of
// old samples (its micro-batch sizes) when the new plan gives it another
// size, so that the programs of the new size reuse their memory.
func (a *allReduce) releaseShare(r, old int) {
	t := a.t
	balance.Sizes(t.cfg.BatchSize, a.bal.Weights(), nil, a.sizes)
	if a.sizes[r] == old || old == 0 {
		return
	}
	k := max(t.cfg.AccumSteps, 1)
	for _, n := range []int{old / k, old/k + 1} {
		if n > 0 {
			t.Model.Release(n, true)
			t.exec.release(n, true)
		}
	}
}

// setupBalance creates the planner for a job of several ranks.
func (a *allReduce) setupBalance() error {
	t := a.t
	if t.worldSize() < 2 {
		return nil
	}
	if shares := t.cfg.Shares; shares != nil {
		if len(shares) != t.worldSize() {
			return fmt.Errorf("%w: --shares has %d shares for a world of %d ranks: give one per rank", ErrConfig, len(shares), t.worldSize())
		}
		a.sizes = make([]int, t.worldSize())
		var err error
		if a.bal, err = balance.New(balance.Static, t.worldSize()); err != nil {
			return err
		}
		a.bal.Freeze()
		return a.bal.SetWeights(shares)
	}
	mode, err := balance.ParseMode(t.cfg.Balance)
	if err != nil || mode == balance.Off {
		return err
	}
	if a.bal, err = balance.New(mode, t.worldSize()); err != nil {
		return err
	}
	// The first re-plan grows the fast ranks' batches: room reserved now
	// makes that a reuse of their buffers.
	t.Model.Reserve(balanceReserve)
	a.sizes = make([]int, t.worldSize())
	a.clocked = t.headroom != nil && t.headroom().ClockMHz > 0
	// A resumed run goes on with the shares it had, so that it need not
	// measure its way back to them; a job of another size starts equal.
	if len(t.resumeShares) == t.worldSize() && a.bal.SetWeights(t.resumeShares) == nil {
		if mode == balance.Static && t.pos.step >= int64(min(4, t.cfg.BalanceEvery)) {
			a.bal.Freeze() // its one measurement is behind it
		}
		t.log.Info("resumed the balancer's shares", "shares", a.bal.Weights())
	}
	return nil
}

// buckets are the flat gradient buckets of a data-parallel step: at
// most BucketMB each, in reverse parameter order (the order backward
// produces them); one extra slot at the end of the last bucket carries
// the ranks' stop requests.
type buckets struct {
	list  []gradBucket
	views [][]float32 // per parameter: its gradient inside a bucket
	stop  []float32   // the stop flag's slot
}

type gradBucket struct {
	buf    []float32
	params []int // parameter indices, in bucket order
}

// newBuckets lays m's gradients out in buckets of at most mb MiB.
func newBuckets(m *graph.Model, mb float64) *buckets {
	limit := int(mb * (1 << 20) / 4)
	if limit < 1 {
		limit = 1
	}
	ps := m.Params
	var bs []gradBucket
	cur := gradBucket{}
	size := 0
	for i := len(ps) - 1; i >= 0; i-- {
		n := ps[i].Size()
		if size > 0 && size+n > limit {
			cur.buf = make([]float32, size)
			bs = append(bs, cur)
			cur, size = gradBucket{}, 0
		}
		cur.params = append(cur.params, i)
		size += n
	}
	cur.buf = make([]float32, size+1)
	bs = append(bs, cur)
	b := &buckets{list: bs, views: make([][]float32, len(ps))}
	for _, bk := range bs {
		off := 0
		for _, i := range bk.params {
			b.views[i] = bk.buf[off : off+ps[i].Size()]
			off += ps[i].Size()
		}
	}
	last := bs[len(bs)-1].buf
	b.stop = last[len(last)-1:]
	return b
}

// A gradReducer sums a data-parallel step's micro-batch gradients into
// the buckets and reduces them over the ranks (PyTorch's Reducer): on the
// host (hostReducer), or in device memory (devReducer), as the executor
// chooses.
type gradReducer interface {
	// add adds scale times prog's gradients into the buckets (sets them
	// when first; prog nil, a rank with no samples, zeroes them).
	add(prog *graph.Program, scale float32, first bool) error
	// overlap starts reducing the buckets while prog's run, the step's
	// last, fills them: it returns the hook the run calls as each
	// gradient is issued; nil when the reducer does not overlap.
	overlap(ctx context.Context, prog *graph.Program, scale float32, first, stopRequested bool) (func(int) error, error)
	// finish folds in the last micro-batch (prog, scale, first), reduces
	// what is left with the stop requests and makes the reduced
	// gradients the executor's step's. It returns whether any rank asked
	// to stop.
	finish(ctx context.Context, last *graph.Program, scale float32, first, stopRequested bool) (bool, error)
}

// hostReducer sums the gradients into the host buckets (downloaded from
// a device) and all-reduces bucket b while bucket b+1 is filled.
type hostReducer struct {
	t    *Trainer
	exec executor
	b    *buckets
	comm dist.Communicator // nil: no reduction
}

func newHostReducer(t *Trainer, e executor, b *buckets, c dist.Communicator) *hostReducer {
	return &hostReducer{t: t, exec: e, b: b, comm: c}
}

func (h *hostReducer) add(prog *graph.Program, scale float32, first bool) error {
	for bi := range h.b.list {
		if err := h.fill(bi, prog, scale, first); err != nil {
			return err
		}
	}
	return nil
}

// fill adds scale times prog's gradients of bucket bi's parameters (or
// sets them, when first). prog nil (a rank with no samples) zeroes.
func (h *hostReducer) fill(bi int, prog *graph.Program, scale float32, first bool) error {
	for _, i := range h.b.list[bi].params {
		dst := h.b.views[i]
		if prog == nil {
			if first {
				clear(dst)
			}
			continue
		}
		g, err := h.exec.grad(prog, i)
		if err != nil {
			return err
		}
		g = g[:len(dst)]
		if first {
			for j, v := range g {
				dst[j] = v * scale
			}
		} else {
			for j, v := range g {
				dst[j] += v * scale
			}
		}
	}
	return nil
}

func (h *hostReducer) overlap(context.Context, *graph.Program, float32, bool, bool) (func(int) error, error) {
	return nil, nil
}

func (h *hostReducer) finish(ctx context.Context, last *graph.Program, scale float32, first, stopRequested bool) (bool, error) {
	stop, err := h.reduce(ctx, last, scale, first, stopRequested)
	if err != nil {
		return false, err
	}
	return stop, h.exec.useHostGrads(h.b.views)
}

func (h *hostReducer) reduce(ctx context.Context, last *graph.Program, scale float32, first, stopRequested bool) (bool, error) {
	h.b.stop[0] = 0
	if stopRequested {
		h.b.stop[0] = 1
	}
	if h.comm == nil {
		return h.b.stop[0] > 0, h.add(last, scale, first)
	}
	r := h.t.rank()
	jobs := make(chan int, len(h.b.list))
	done := make(chan error, 1)
	go func() {
		var err error
		for bi := range jobs {
			if err == nil {
				cctx, cancel := context.WithTimeout(ctx, h.t.cfg.Timeout)
				b := h.b.list[bi].buf
				err = h.comm.AllReduce(cctx, b, b, dist.Sum)
				cancel()
				if err != nil {
					err = fmt.Errorf("rank %d: all-reduce of gradient bucket %d: %w", r, bi, err)
				}
			}
		}
		done <- err
	}()
	var fillErr error
	for bi := range h.b.list {
		if fillErr = h.fill(bi, last, scale, first); fillErr != nil {
			break
		}
		jobs <- bi
	}
	close(jobs)
	if err := <-done; err != nil {
		return false, err
	}
	if fillErr != nil {
		// The other ranks wait in the all-reduce of the bucket not sent:
		// abort so that they fail at once, naming this rank.
		h.comm.Abort(fillErr)
		return false, fillErr
	}
	return h.b.stop[0] > 0, nil
}

// step computes the mean gradient of the global batch perm[lo:hi] into
// the buckets and all-reduces them (local SGD: this rank's own mean
// gradient, reduced by none).
func (a *allReduce) step(ctx context.Context, stopRequested bool, lo, hi int) (stepResult, error) {
	t := a.t
	r, k := t.rank(), max(t.cfg.AccumSteps, 1)
	n := float32(hi - lo)
	rs, re := a.shareOf(lo, hi, r)
	if a.local {
		n = float32(re - rs) // the mean over this rank's own samples
	}
	var lossSum float64
	var compute time.Duration // this rank's computation, program compilation excluded
	var cold time.Duration    // of which first runs of new programs
	coldSamples := 0
	// Micro-batches, each a training program run. Each one's gradients are
	// folded into the buckets before the next run (programs are shared by
	// batch size), except the last one's, which are folded bucket by
	// bucket while the buckets are reduced.
	var last *graph.Program
	var lastScale float32
	first := true
	lastJ := -1 // the last micro-batch with samples
	for j := k - 1; j >= 0 && lastJ < 0; j-- {
		if ms, me := shard(rs, re, j, k); me > ms {
			lastJ = j
		}
	}
	for j := 0; j < k; j++ {
		ms, me := shard(rs, re, j, k)
		if me == ms {
			continue
		}
		if last != nil {
			if err := a.red.add(last, lastScale, first); err != nil {
				return stepResult{}, err
			}
			first = false
		}
		prog, err := t.Model.Program(me-ms, true)
		if err != nil {
			return stepResult{}, err
		}
		t0 := time.Now()
		tw := time.Now()
		x, y, done, err := t.exec.input(prog, ms, me, func(x, y []float32) error { return t.fillTrain(x, y, t.perm[ms:me], t.pos.epoch) })
		t.dataWait += time.Since(tw)
		if err != nil {
			return stepResult{}, err
		}
		var watch func(int) error
		if j == lastJ {
			// The buckets are reduced as the backward pass fills them.
			if watch, err = a.red.overlap(ctx, prog, float32(me-ms)/n, first, stopRequested); err != nil {
				return stepResult{}, err
			}
		}
		if t.cfg.SyncBatchNorm && t.worldSize() > 1 {
			// Every rank runs one program a step (--sync-batchnorm
			// refuses --accum-steps): its BatchNorm layers sum their
			// statistics across the ranks.
			if err := prog.SyncBatchNorm(rankSum{t: t, ctx: ctx}, float64(me-ms)/float64(hi-lo)); err != nil {
				return stepResult{}, err
			}
		}
		warm := t.exec.warm(prog)
		loss, err := t.exec.run(prog, x, y, runKey{step: t.pos.step, row: ms - lo, rank: r, micro: j, micros: k}, watch)
		if done != nil {
			done() // the loss is read: the device is done with the batch
		}
		if err != nil {
			return stepResult{}, err
		}
		d := time.Since(t0)
		compute += d
		if !warm {
			cold += d
			coldSamples += me - ms
		}
		lossSum += float64(loss) * float64(me-ms)
		last, lastScale = prog, float32(me-ms)/n
	}
	if re > rs {
		a.account(re-rs, compute, cold, coldSamples)
	}
	stop, err := a.red.finish(ctx, last, lastScale, first, stopRequested)
	if err != nil {
		return stepResult{}, err
	}
	sq, err := t.exec.sumSquares()
	if err != nil {
		return stepResult{}, err
	}
	res := stepResult{lossSum: lossSum, sumSquares: sq, stop: stop}
	if re > rs {
		res.loss = lossSum / float64(re-rs)
	}
	return res, nil
}

// account adds a step's computation of samples (compute, of which cold
// on first runs of coldSamples) to the run's and the balancing window's.
func (a *allReduce) account(samples int, compute, cold time.Duration, coldSamples int) {
	t := a.t
	if s := t.straggler(); s != nil {
		compute += s.delay(compute)
		cold = time.Duration(float64(cold) * s.factor)
	}
	// A new program's first run allocates its buffers: that is the cost
	// of a change of share, not the rank's speed.
	if cold > 0 {
		a.switchSeconds = cold.Seconds()
	}
	if n := samples - coldSamples; n > 0 {
		t.computeSecs += (compute - cold).Seconds()
		t.computeSamples += float64(n)
		a.winSeconds += (compute - cold).Seconds()
		a.winSamples += float64(n)
		a.winPerSample = append(a.winPerSample, (compute-cold).Seconds()/float64(n))
	}
	if a.clocked {
		if c := t.headroom().ClockMHz; c > 0 {
			a.winClock += c
			a.winClockN++
		}
	}
}

// rankSum sums BatchNorm's statistics across the ranks (--sync-batchnorm).
type rankSum struct {
	t   *Trainer
	ctx context.Context
}

func (s rankSum) Sum(buf []float64) error {
	return s.t.collective(s.ctx, "sync-batchnorm statistics", func(ctx context.Context) error {
		return s.t.comm.AllReduce(ctx, buf, buf, dist.Sum)
	})
}
