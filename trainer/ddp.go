package trainer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/balance"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/metrics"
	"github.com/gotrain/gotrain/trainer/optim"
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

// ddp is the data-parallel state of a Trainer.
type ddp struct {
	comm  dist.Communicator
	bal   *balance.Planner // nil: equal shares
	sizes []int            // this step's share of each rank
	// this rank's compute over the current balancing window, and its
	// device's clock summed over the window's steps (clocked devices only)
	winSeconds, winSamples float64
	winPerSample           []float64 // each step's seconds per sample
	winClock, winClockN    float64
	switchSeconds          float64 // what the last change of share cost (first runs)
	clocked                bool    // the headroom reports a clock
	buckets                []gradBucket
	views                  [][]float32   // per parameter: its gradient inside a bucket
	params                 []optim.Param // Data: the model's parameters, Grad: views
	stop                   []float32     // the stop flag travels in the last bucket
}

type gradBucket struct {
	buf    []float32
	params []int // parameter indices, in bucket order
}

// WithCommunicator makes the trainer one rank of a data-parallel job.
func WithCommunicator(c dist.Communicator) Option { return func(t *Trainer) { t.dp = &ddp{comm: c} } }

func (t *Trainer) rank() int {
	if t.dp == nil || t.dp.comm == nil {
		return 0
	}
	return t.dp.comm.Rank()
}

func (t *Trainer) worldSize() int {
	if t.dp == nil || t.dp.comm == nil {
		return 1
	}
	return t.dp.comm.Size()
}

// distributed reports whether steps go through buckets (several ranks or
// gradient accumulation).
func (t *Trainer) distributed() bool { return t.worldSize() > 1 || t.cfg.AccumSteps > 1 }

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
func (t *Trainer) shareOf(lo, hi, r int) (int, int) {
	if t.dp == nil || t.dp.bal == nil {
		return shard(lo, hi, r, t.worldSize())
	}
	balance.Sizes(hi-lo, t.dp.bal.Weights(), nil, t.dp.sizes)
	start := lo
	for i := 0; i < r; i++ {
		start += t.dp.sizes[i]
	}
	return start, start + t.dp.sizes[r]
}

// measureFields is how many numbers each rank contributes to a re-plan.
const measureFields = 6

// measurement is this rank's report to a re-plan (balance.Measurement),
// flattened for the all-gather: its compute over the window and, with
// WithHeadroom, its device's free memory as a share of the batch, clock
// ratio and slowdown reasons.
func (t *Trainer) measurement(dst []float64) {
	secs := t.dp.winSeconds
	if len(t.dp.winPerSample) > 0 {
		secs = interquartileMean(t.dp.winPerSample) * t.dp.winSamples
	}
	m := balance.Measurement{Seconds: secs, Samples: t.dp.winSamples, SwitchSeconds: t.dp.switchSeconds}
	if t.headroom != nil {
		h := t.headroom()
		m.Slowdown = h.Slowdown
		if h.ClockMHz > 0 && t.dp.winClockN > 0 {
			m.ClockRatio = h.ClockMHz / (t.dp.winClock / t.dp.winClockN)
		}
		m.MaxShare = t.maxShare(h.FreeBytes)
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
func (t *Trainer) maxShare(free uint64) float64 {
	cur := t.dp.sizes[t.rank()]
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
func (t *Trainer) rebalance(ctx context.Context) error {
	w := t.worldSize()
	mine := make([]float64, measureFields)
	t.measurement(mine)
	all := make([]float64, measureFields*w)
	if err := t.collective(ctx, "balance measurements", func(ctx context.Context) error {
		return t.dp.comm.AllGather(ctx, mine, all)
	}); err != nil {
		return err
	}
	t.dp.winSeconds, t.dp.winSamples, t.dp.winClock, t.dp.winClockN = 0, 0, 0, 0
	t.dp.winPerSample = t.dp.winPerSample[:0]
	ms := make([]balance.Measurement, w)
	for i := range ms {
		f := all[measureFields*i:]
		ms[i] = balance.Measurement{Seconds: f[0], Samples: f[1], MaxShare: f[2], ClockRatio: f[3], Slowdown: uint64(f[4]), SwitchSeconds: f[5]}
	}
	// New shares must pay for their switch within the rest of the run, at
	// most planHorizon periods.
	t.dp.bal.Batch = t.cfg.BatchSize
	last := t.TotalSteps()
	if t.cfg.MaxSteps > 0 {
		last = min(last, t.cfg.MaxSteps)
	}
	t.dp.bal.Horizon = int(max(0, min(last-t.pos.step, planHorizon*t.cfg.BalanceEvery)))
	r, old := t.rank(), t.dp.sizes[t.rank()]
	changed, reason := t.dp.bal.Plan(ms)
	if !changed && reason == "" {
		return nil
	}
	if changed {
		t.releaseShare(r, old)
	}
	shares := slices.Clone(t.dp.bal.Weights())
	t.log.Info("rebalanced", "step", t.pos.step, "shares", shares, "reason", reason)
	if bs, ok := t.sink.(interface{ Balance(metrics.Balance) }); ok {
		bs.Balance(metrics.Balance{Step: t.pos.step, Shares: shares, Reason: reason, Rank: t.rank(), WorldSize: w})
	}
	return nil
}

// releaseShare drops the training programs of rank r's previous share of
// old samples (its micro-batch sizes) when the new plan gives it another
// size, so that the programs of the new size reuse their memory.
func (t *Trainer) releaseShare(r, old int) {
	balance.Sizes(t.cfg.BatchSize, t.dp.bal.Weights(), nil, t.dp.sizes)
	if t.dp.sizes[r] == old || old == 0 {
		return
	}
	k := max(t.cfg.AccumSteps, 1)
	for _, n := range []int{old / k, old/k + 1} {
		if n > 0 {
			t.Model.Release(n, true)
			t.devRelease(n, true)
		}
	}
}

// setupBalance creates the planner for a job of several ranks.
func (t *Trainer) setupBalance() error {
	if t.dp == nil || t.dp.comm == nil || t.worldSize() < 2 {
		return nil
	}
	if shares := t.cfg.Shares; shares != nil {
		if len(shares) != t.worldSize() {
			return fmt.Errorf("%w: --shares has %d shares for a world of %d ranks: give one per rank", ErrConfig, len(shares), t.worldSize())
		}
		t.dp.sizes = make([]int, t.worldSize())
		var err error
		if t.dp.bal, err = balance.New(balance.Static, t.worldSize()); err != nil {
			return err
		}
		t.dp.bal.Freeze()
		return t.dp.bal.SetWeights(shares)
	}
	mode, err := balance.ParseMode(t.cfg.Balance)
	if err != nil || mode == balance.Off {
		return err
	}
	if t.dp.bal, err = balance.New(mode, t.worldSize()); err != nil {
		return err
	}
	// The first re-plan grows the fast ranks' batches: room reserved now
	// makes that a reuse of their buffers.
	t.Model.Reserve(balanceReserve)
	t.dp.sizes = make([]int, t.worldSize())
	t.dp.clocked = t.headroom != nil && t.headroom().ClockMHz > 0
	// A resumed run goes on with the shares it had, so that it need not
	// measure its way back to them; a job of another size starts equal.
	if len(t.resumeShares) == t.worldSize() && t.dp.bal.SetWeights(t.resumeShares) == nil {
		if mode == balance.Static && t.pos.step >= int64(min(4, t.cfg.BalanceEvery)) {
			t.dp.bal.Freeze() // its one measurement is behind it
		}
		t.log.Info("resumed the balancer's shares", "shares", t.dp.bal.Weights())
	}
	return nil
}

// setupBuckets lays the gradients out in buckets of at most BucketMB, in
// reverse parameter order; one extra slot at the end of the last bucket
// carries the ranks' stop requests.
func (t *Trainer) setupBuckets() {
	if t.dp == nil {
		t.dp = &ddp{}
	}
	limit := int(t.cfg.BucketMB * (1 << 20) / 4)
	if limit < 1 {
		limit = 1
	}
	ps := t.Model.Params
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
	t.dp.views = make([][]float32, len(ps))
	for _, b := range bs {
		off := 0
		for _, i := range b.params {
			t.dp.views[i] = b.buf[off : off+ps[i].Size()]
			off += ps[i].Size()
		}
	}
	last := bs[len(bs)-1].buf
	t.dp.stop = last[len(last)-1:]
	t.dp.buckets = bs
	t.dp.params = make([]optim.Param, len(ps))
	for i, p := range ps {
		t.dp.params[i] = optim.Param{Name: p.Name, Data: p.Data, Grad: t.dp.views[i]}
	}
}

// ddpStep computes the mean gradient of the global batch perm[lo:hi] into
// the buckets and all-reduces them. It returns this rank's loss summed over
// its samples and whether any rank asked to stop.
func (t *Trainer) ddpStep(ctx context.Context, stopRequested bool, lo, hi int, pcg *rand.PCG, rng *rand.Rand) (lossSum float64, stop bool, err error) {
	w, r, k := t.worldSize(), t.rank(), max(t.cfg.AccumSteps, 1)
	n := float32(hi - lo)
	rs, re := t.shareOf(lo, hi, r)
	local := t.cfg.Sync == "local-sgd"
	if local {
		n = float32(re - rs) // the mean over this rank's own samples
	}
	var compute time.Duration // this rank's computation, program compilation excluded
	var cold time.Duration    // of which first runs of new programs
	coldSamples := 0
	// Micro-batches, each a training program run. Each one's gradients are
	// folded into the buckets before the next run (programs are shared by
	// batch size), except the last one's, which are copied bucket by bucket
	// while the buckets are reduced.
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
			for bi := range t.dp.buckets {
				if err := t.fillBucket(bi, last, lastScale, first); err != nil {
					return 0, false, err
				}
			}
			first = false
		}
		prog, err := t.Model.Program(me-ms, true)
		if err != nil {
			return 0, false, err
		}
		t0 := time.Now()
		warm := prog.Warm()
		x, y := prog.X, prog.Y
		var slot batchSlot
		if pf := t.devr.prefetch(); pf != nil {
			if slot, err = pf.next(ms, me); err != nil {
				return 0, false, err
			}
			x, y = slot.x, slot.y
		} else if err = t.fillTrain(x, y, t.perm[ms:me], t.pos.epoch); err != nil {
			return 0, false, err
		}
		var loss float32
		if t.devr != nil {
			var watch func(int) error
			if j == lastJ && t.devr.reduce != nil && w > 1 {
				// The buckets are reduced as the backward pass fills them.
				if watch, err = t.startReducer(ctx, prog, float32(me-ms)/n, first, stopRequested); err != nil {
					return 0, false, err
				}
			}
			warm = t.devWarm(prog)
			_, loss, err = t.devRunProgram(prog, x, y, t.cfg.Seed^0x5eedd70a^uint64(r)<<40, uint64(t.pos.step)*uint64(k)+uint64(j), watch)
			if slot.x != nil {
				t.devr.pf.release(slot) // the loss is read: the device is done with it
			}
			if err != nil && t.devr.red != nil {
				t.devr.red.finish() // ends the reducing goroutine
				t.devr.red = nil
			}
		} else {
			// Each sample's dropout masks come from its own stream, keyed
			// by its place in the global batch: any split across ranks and
			// micro-batches draws the masks of one process.
			loss, err = prog.RunAt(t.cfg.Seed^0x5eedd70a, uint64(t.pos.step), ms-lo)
		}
		if err != nil {
			return 0, false, err
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
		if s := t.straggler(); s != nil {
			compute += s.delay(compute)
			cold = time.Duration(float64(cold) * s.factor)
		}
		// A new program's first run allocates its buffers: that is the
		// cost of a change of share, not the rank's speed.
		if cold > 0 {
			t.dp.switchSeconds = cold.Seconds()
		}
		if n := re - rs - coldSamples; n > 0 {
			t.computeSecs += (compute - cold).Seconds()
			t.computeSamples += float64(n)
			t.dp.winSeconds += (compute - cold).Seconds()
			t.dp.winSamples += float64(n)
			t.dp.winPerSample = append(t.dp.winPerSample, (compute-cold).Seconds()/float64(n))
		}
		if t.dp.clocked {
			if c := t.headroom().ClockMHz; c > 0 {
				t.dp.winClock += c
				t.dp.winClockN++
			}
		}
	}
	t.dp.stop[0] = 0
	if stopRequested {
		t.dp.stop[0] = 1
	}
	if t.devr != nil && t.devr.reduce != nil {
		stop, err := t.devAllReduce(ctx, last, lastScale, first, stopRequested)
		return lossSum, stop, err
	}
	if t.dp.comm == nil || w == 1 || local {
		for bi := range t.dp.buckets {
			if err := t.fillBucket(bi, last, lastScale, first); err != nil {
				return 0, false, err
			}
		}
		return lossSum, t.dp.stop[0] > 0, nil
	}
	// Reduce bucket b while bucket b+1 is filled.
	jobs := make(chan int, len(t.dp.buckets))
	done := make(chan error, 1)
	go func() {
		var err error
		for bi := range jobs {
			if err == nil {
				cctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
				b := t.dp.buckets[bi].buf
				err = t.dp.comm.AllReduce(cctx, b, b, dist.Sum)
				cancel()
				if err != nil {
					err = fmt.Errorf("rank %d: all-reduce of gradient bucket %d: %w", r, bi, err)
				}
			}
		}
		done <- err
	}()
	var fillErr error
	for bi := range t.dp.buckets {
		if fillErr = t.fillBucket(bi, last, lastScale, first); fillErr != nil {
			break
		}
		jobs <- bi
	}
	close(jobs)
	if err := <-done; err != nil {
		return 0, false, err
	}
	if fillErr != nil {
		// The other ranks wait in the all-reduce of the bucket not sent:
		// abort so that they fail at once, naming this rank.
		t.dp.comm.Abort(fillErr)
		return 0, false, fillErr
	}
	return lossSum, t.dp.stop[0] > 0, nil
}

// fillBucket adds scale times prog's gradients of bucket bi's parameters
// (or sets them, when first). prog nil (a rank with no samples) zeroes.
func (t *Trainer) fillBucket(bi int, prog *graph.Program, scale float32, first bool) error {
	if t.devr != nil && t.devr.reduce != nil {
		return t.devFillBucket(bi, prog, scale, first)
	}
	for _, i := range t.dp.buckets[bi].params {
		dst := t.dp.views[i]
		if prog == nil {
			if first {
				clear(dst)
			}
			continue
		}
		var g []float32
		if t.devr != nil {
			e, err := t.devProgram(prog)
			if err != nil {
				return err
			}
			if g, err = t.devGrad(e, i); err != nil {
				return err
			}
		} else {
			g = prog.Grad(i)[:len(dst)]
		}
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

// averageParams is local SGD's synchronisation: every rank's parameters
// become their mean (bitwise the same on every rank). It also carries the
// ranks' stop requests, so that all stop at the same step.
func (t *Trainer) averageParams(ctx context.Context, stopRequested bool) (stop bool, err error) {
	// On a device the parameters come to the host to be averaged and go
	// back after: a sync period's steps between two round trips.
	if err := t.hostSync(); err != nil {
		return false, err
	}
	if d := t.devr; d != nil && d.params != nil {
		defer func() {
			if err == nil {
				if err = d.params.Upload(t.Model); err != nil {
					err = t.devErr("uploading the averaged parameters", err)
				}
			}
		}()
	}
	for _, p := range t.Model.Params {
		if err := t.collective(ctx, "parameter averaging of "+p.Name, func(ctx context.Context) error {
			return t.dp.comm.AllReduce(ctx, p.Data, p.Data, dist.Avg)
		}); err != nil {
			return false, err
		}
	}
	if o := t.outer; o != nil {
		// The outer gradient is the averaged change since the last
		// synchronisation; the outer step moves the anchor, which every
		// rank then starts from. The same numbers on every rank: replicas
		// stay bitwise identical.
		for i, p := range t.Model.Params {
			a, g := o.params[i].Data, o.params[i].Grad
			for j, v := range p.Data {
				g[j] = a[j] - v
			}
		}
		o.opt.Step(o.params, t.cfg.OuterLR)
		for i, p := range t.Model.Params {
			copy(p.Data, o.params[i].Data)
		}
	}
	flag := []float32{0}
	if stopRequested {
		flag[0] = 1
	}
	if err := t.collective(ctx, "stop flag", func(ctx context.Context) error {
		return t.dp.comm.AllReduce(ctx, flag, flag, dist.Max)
	}); err != nil {
		return false, err
	}
	return flag[0] > 0, nil
}

// outerOpt is local SGD's outer optimiser: Data holds the anchor (the
// parameters after the last synchronisation), Grad the outer gradient.
type outerOpt struct {
	opt    optim.Optimizer
	params []optim.Param
}

// newOuter makes the outer optimiser anchored at the model's parameters.
func newOuter(cfg Config, m *graph.Model) (*outerOpt, error) {
	o := &outerOpt{params: make([]optim.Param, len(m.Params))}
	for i, p := range m.Params {
		o.params[i] = optim.Param{Name: p.Name, Data: slices.Clone(p.Data), Grad: make([]float32, len(p.Data))}
	}
	var err error
	o.opt, err = optim.New(optim.Config{Name: "sgd", Momentum: cfg.OuterMomentum, Nesterov: cfg.OuterMomentum > 0}, o.params)
	if err != nil {
		return nil, fmt.Errorf("%w: outer optimiser: %v", ErrConfig, err)
	}
	return o, nil
}

// anchor sets the outer optimiser's anchor to the model's parameters.
func (o *outerOpt) anchor(m *graph.Model) {
	for i, p := range m.Params {
		copy(o.params[i].Data, p.Data)
	}
}

// gatherLocalStates collects every rank's optimiser state on rank 0 (local
// SGD, where they differ); nil on the other ranks.
func (t *Trainer) gatherLocalStates(ctx context.Context) ([]map[string][]float32, error) {
	c, w := t.dp.comm, t.worldSize()
	st, _ := t.opt.State()
	names := slices.Sorted(maps.Keys(st))
	var out []map[string][]float32
	if c.Rank() == 0 {
		out = make([]map[string][]float32, w)
		for r := range out {
			out[r] = map[string][]float32{}
		}
	}
	for _, k := range names {
		all := make([]float32, w*len(st[k]))
		if err := t.collective(ctx, "gathering optimiser state "+k, func(ctx context.Context) error {
			return c.AllGather(ctx, st[k], all)
		}); err != nil {
			return nil, err
		}
		for r := range out {
			out[r][k] = all[r*len(st[k]) : (r+1)*len(st[k])]
		}
	}
	return out, nil
}

// scatterLocalStates gives ranks 1.. their own optimiser state from the
// checkpoint rank 0 resumed (local SGD); every rank calls it with the
// number of ranks the checkpoint holds states for.
func (t *Trainer) scatterLocalStates(ctx context.Context, saved int) error {
	c, w, r := t.dp.comm, t.worldSize(), t.rank()
	if saved != w {
		if r == 0 {
			t.log.Warn("the checkpoint holds local SGD optimiser states of another world size; every rank starts from rank 0's", "saved", saved, "world_size", w)
		}
		return nil
	}
	st, step := t.opt.State()
	names := slices.Sorted(maps.Keys(st))
	for src := 1; src < w; src++ {
		for _, k := range names {
			buf := st[k]
			if r == 0 {
				buf = t.localStates[src][k]
				if len(buf) != len(st[k]) {
					return fmt.Errorf("%w: %s: rank %d's optimiser state %q has %d values, want %d", ErrCheckpoint, t.resumedFrom, src, k, len(buf), len(st[k]))
				}
			} else if r != src {
				buf = make([]float32, len(st[k]))
			}
			if err := t.collective(ctx, "broadcast of rank "+fmt.Sprint(src)+"'s optimiser state "+k, func(ctx context.Context) error {
				return c.Broadcast(ctx, buf, 0)
			}); err != nil {
				return err
			}
		}
	}
	if r != 0 {
		return t.opt.LoadState(st, step)
	}
	return nil
}

// broadcastOptState gives every rank rank 0's state of opt (which has
// taken step steps on rank 0).
func (t *Trainer) broadcastOptState(ctx context.Context, opt optim.Optimizer, step int64, what string) error {
	c := t.dp.comm
	st, _ := opt.State()
	names := slices.Sorted(maps.Keys(st))
	for _, k := range names {
		if err := t.collective(ctx, "broadcast of "+what+k, func(ctx context.Context) error {
			return c.Broadcast(ctx, st[k], 0)
		}); err != nil {
			return err
		}
	}
	stepBuf := []float64{float64(step)}
	if err := t.collective(ctx, "broadcast of "+what+"step", func(ctx context.Context) error {
		return c.Broadcast(ctx, stepBuf, 0)
	}); err != nil {
		return err
	}
	if c.Rank() != 0 {
		return opt.LoadState(st, int64(stepBuf[0]))
	}
	return nil
}

// localSGD reports whether ranks average parameters instead of gradients.
func (t *Trainer) localSGD() bool {
	return t.cfg.Sync == "local-sgd" && t.dp != nil && t.dp.comm != nil && t.worldSize() > 1
}

// collective runs f with the collective timeout.
func (t *Trainer) collective(ctx context.Context, what string, f func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	defer cancel()
	if err := f(cctx); err != nil {
		return fmt.Errorf("rank %d: %s: %w", t.rank(), what, err)
	}
	return nil
}

// fingerprint is what every rank must agree on: the config fields that
// shape the model, the data and the trajectory, and the world size.
func (t *Trainer) fingerprint() []byte {
	c := t.cfg
	// Each rank may train on another kind of device (a mixed cluster).
	c.Resume, c.CheckpointDir, c.MetricsFile, c.Out, c.DataDir, c.Threads, c.Device = "", "", "", "", "", 0, ""
	// Files, addresses and deadlines of this process: they may differ per
	// machine and do not change what is trained.
	c.TLSCert, c.TLSKey, c.TLSCA, c.MetricsAddr, c.CPUProfile, c.RdzvTimeout = "", "", "", "", "", 0
	b, _ := json.Marshal(struct {
		Config    Config `json:"config"`
		WorldSize int    `json:"world_size"`
		Params    int    `json:"params"`
		Train     int    `json:"train_samples"`
	}{c, t.worldSize(), t.Model.NumParams(), t.train.Len()})
	return b
}

// diffJSON names the top-level fields whose values differ.
func diffJSON(a, b []byte) string {
	var ma, mb map[string]any
	_ = json.Unmarshal(a, &ma)
	_ = json.Unmarshal(b, &mb)
	flat := func(m map[string]any) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				for k2, v2 := range sub {
					vb, _ := json.Marshal(v2)
					out[k2] = string(vb)
				}
				continue
			}
			vb, _ := json.Marshal(v)
			out[k] = string(vb)
		}
		return out
	}
	fa, fb := flat(ma), flat(mb)
	var diffs []string
	for k, v := range fa {
		if fb[k] != v {
			diffs = append(diffs, fmt.Sprintf("%s: %s here, %s on rank 0", k, v, fb[k]))
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}

// syncStart makes the ranks one job: they check that they run the same
// configuration, take rank 0's parameters (and, on resume, its optimiser
// state and position), and verify that they now hold identical models.
func (t *Trainer) syncStart(ctx context.Context) error {
	c := t.dp.comm
	w, r := c.Size(), c.Rank()
	// 1. Configuration: rank 0's fingerprint against everyone's.
	mine := t.fingerprint()
	var length [8]byte
	binary.LittleEndian.PutUint64(length[:], uint64(len(mine)))
	if err := t.collective(ctx, "broadcast of the configuration", func(ctx context.Context) error {
		return c.Broadcast(ctx, length[:], 0)
	}); err != nil {
		return err
	}
	ref := make([]byte, min(binary.LittleEndian.Uint64(length[:]), 1<<20))
	if r == 0 {
		ref = slices.Clone(mine)
	}
	if err := t.collective(ctx, "broadcast of the configuration", func(ctx context.Context) error {
		return c.Broadcast(ctx, ref, 0)
	}); err != nil {
		return err
	}
	ok := []byte{1}
	diff := ""
	if !bytes.Equal(ref, mine) {
		ok[0] = 0
		diff = diffJSON(mine, ref)
	}
	oks := make([]byte, w)
	if err := t.collective(ctx, "configuration check", func(ctx context.Context) error { return c.AllGather(ctx, ok, oks) }); err != nil {
		return err
	}
	var bad []string
	for i, v := range oks {
		if v == 0 {
			bad = append(bad, fmt.Sprint(i))
		}
	}
	if len(bad) > 0 {
		if diff != "" {
			return fmt.Errorf("%w: rank %d runs another configuration than rank 0 (%s); start every rank with the same flags", ErrReplicas, r, diff)
		}
		return fmt.Errorf("%w: ranks %s run another configuration than rank 0; start every rank with the same flags", ErrReplicas, strings.Join(bad, ", "))
	}
	// 2. Rank 0's state.
	var pos [7]int64
	resumed := t.resumedFrom != ""
	if r == 0 {
		pos = [7]int64{t.pos.step, int64(t.pos.epoch), int64(t.pos.batch), 0, 0, int64(len(t.localStates)), int64(len(t.resumeShares))}
		if resumed {
			pos[3] = 1
			_, pos[4] = t.opt.State()
		}
	}
	posBytes := make([]byte, 8*len(pos))
	for i, v := range pos {
		binary.LittleEndian.PutUint64(posBytes[8*i:], uint64(v))
	}
	if err := t.collective(ctx, "broadcast of the start position", func(ctx context.Context) error {
		return c.Broadcast(ctx, posBytes, 0)
	}); err != nil {
		return err
	}
	for i := range pos {
		pos[i] = int64(binary.LittleEndian.Uint64(posBytes[8*i:]))
	}
	for _, p := range t.Model.Params {
		if err := t.collective(ctx, "broadcast of "+p.Name, func(ctx context.Context) error {
			return c.Broadcast(ctx, p.Data, 0)
		}); err != nil {
			return err
		}
	}
	if t.outer != nil {
		t.outer.anchor(t.Model) // rank 0's parameters, as synchronised
	}
	if pos[3] == 1 {
		if err := t.broadcastOptState(ctx, t.opt, pos[4], "optimiser state "); err != nil {
			return err
		}
		if t.outer != nil {
			_, step := t.outer.opt.State()
			if err := t.broadcastOptState(ctx, t.outer.opt, step, "outer optimiser state "); err != nil {
				return err
			}
		}
		if pos[5] > 1 && t.localSGD() {
			if err := t.scatterLocalStates(ctx, int(pos[5])); err != nil {
				return err
			}
		}
		if n := pos[6]; n > 0 && n <= 1<<16 {
			shares := make([]float64, n)
			if r == 0 {
				copy(shares, t.resumeShares)
			}
			if err := t.collective(ctx, "broadcast of the balancer's shares", func(ctx context.Context) error {
				return c.Broadcast(ctx, shares, 0)
			}); err != nil {
				return err
			}
			t.resumeShares = shares
		}
		t.pos = position{step: pos[0], epoch: int(pos[1]), batch: int(pos[2])}
		t.savedStep = t.pos.step
	}
	// 3. Identical replicas.
	return t.verifyReplicas(ctx, "at start")
}

// verifyReplicas checks that every rank holds bitwise-identical parameters.
func (t *Trainer) verifyReplicas(ctx context.Context, when string) error {
	if t.dp == nil || t.dp.comm == nil || t.worldSize() == 1 || t.pipelined() {
		return nil
	}
	h := sha256.New()
	for _, p := range t.Model.Params {
		_ = binary.Write(h, binary.LittleEndian, p.Data)
	}
	sum := h.Sum(nil)
	all := make([]byte, len(sum)*t.worldSize())
	if err := t.collective(ctx, "parameter checksum", func(ctx context.Context) error {
		return t.dp.comm.AllGather(ctx, sum, all)
	}); err != nil {
		return err
	}
	var bad []string
	for i := 0; i < t.worldSize(); i++ {
		if !bytes.Equal(all[i*len(sum):(i+1)*len(sum)], all[:len(sum)]) {
			bad = append(bad, fmt.Sprint(i))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s, the parameters of ranks %s differ from rank 0's", ErrReplicas, when, strings.Join(bad, ", "))
	}
	return nil
}

// allSum adds v over the ranks (float64, in place).
func (t *Trainer) allSum(ctx context.Context, what string, v []float64) error {
	if t.dp == nil || t.dp.comm == nil || t.worldSize() == 1 {
		return nil
	}
	return t.collective(ctx, what, func(ctx context.Context) error { return t.dp.comm.AllReduce(ctx, v, v, dist.Sum) })
}

// evaluateShard evaluates this rank's share of the test set and combines
// the ranks' counts, so that every rank returns the whole set's numbers.
func (t *Trainer) evaluateShard(ctx context.Context) (acc, loss float64, err error) {
	lo, hi := shard(0, t.test.Len(), t.rank(), t.worldSize())
	var sums [2]float64
	if hi > lo {
		var a, l float64
		if t.devr != nil && t.devr.params != nil {
			a, l, err = t.devEvaluate(lo, hi, t.cfg.EvalBatchSize)
		} else {
			a, l, err = evaluate(t.Model, t.test, lo, hi, t.cfg.EvalBatchSize, func(p *graph.Program) (float32, int, error) {
				l, err := p.Run(nil)
				if err != nil {
					return 0, 0, err
				}
				return l, p.Correct(), nil
			})
		}
		if err != nil {
			return 0, 0, err
		}
		sums = [2]float64{a * float64(hi-lo), l * float64(hi-lo)}
	}
	if err := t.allSum(ctx, "evaluation", sums[:]); err != nil {
		return 0, 0, err
	}
	n := float64(t.test.Len())
	return sums[0] / n, sums[1] / n, nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
