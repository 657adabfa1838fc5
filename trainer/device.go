package trainer

import (
	"context"
	"fmt"
	"slices"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/gpu/executor"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/dist"
)

// Training on a device
//
// With WithDevice the model trains through gpu/executor: the parameters,
// the optimiser's state and every program's activations and gradients live
// on the device; each step uploads the batch and reads back the loss. In a
// job of several ranks the gradients come back to the host buckets, are
// all-reduced there like the CPU's, and go up again for the optimiser. The
// host's copies of the parameters and the optimiser state are brought up to
// date (hostSync) where the host needs them: checkpoints, the replica
// check and the end of the run. Evaluation runs on the device too. Dropout masks come from the
// device's RNG, so a run with dropout follows another random sequence than
// on the CPU; without dropout it follows the CPU's run to rounding.

// devRun is the device state of a Trainer.
type devRun struct {
	dev    device.Device
	prec   device.Precision // of the matrix products (--precision)
	params *executor.Params
	opt    *executor.Optimizer
	progs  map[progKey]devProg // by batch size and mode
	grads  []executor.Tensor   // reduced gradients (jobs of several ranks)
	host   [][]float32         // per parameter: its gradient downloaded
	// With a backend that all-reduces device memory (NCCL), the gradient
	// buckets live on the device too: offsets[i] is parameter i's place in
	// its bucket (t.dp.buckets' layout), one is a one-value scratch.
	reduce   dist.DeviceAllReducer
	buckets  []device.Buffer
	offsets  []int
	bucketOf []int           // per parameter: its bucket
	bf16     []device.Buffer // --reduce-precision bf16: each bucket's bfloat16 copy, which travels
	one      device.Buffer
	clip     *executor.Clipper // --clip-grad-norm, made at first use
	red      *bucketReducer    // the step's reductions in flight, if started during the backward pass
	// Pipeline stages: the stage's programs on the device (by the host
	// program they were compiled from), its summed gradients (per
	// Stage.Params), and a host buffer for what goes to a neighbour.
	stageProgs  map[*graph.StageProgram]*executor.Program
	acc         []executor.Tensor
	stageParams []executor.Tensor // the stage's parameters on the device, in Stage.Params order
	out         []float32
	// With a backend that sends device memory (NCCL), stages pass their
	// activations and input gradients device to device: p2p is set, and
	// stageIn holds each micro-batch's input as received, for the
	// backward pass's recomputation.
	p2p     dist.DeviceSendRecver
	stageIn []device.Buffer
	pf      *prefetcher // one process: the batches, decoded ahead
	names   []string
	stale   bool // the host's parameters and optimiser state are behind
	runs    int  // programs run on the device
	steps   int  // optimiser steps on the device
	evals   int  // evaluation batches on the device
	fetched int  // batches taken from the prefetcher
}

type progKey struct {
	batch int
	train bool
}

// devProg is a device program and the host program it was compiled from.
type devProg struct {
	from *graph.Program
	e    *executor.Program
}

// WithDevice makes the trainer train on dev (see "Training on a device").
func WithDevice(dev device.Device) Option { return func(t *Trainer) { t.devr = &devRun{dev: dev} } }

// devStart puts the parameters and the optimiser state (restored or fresh)
// on the device.
func (t *Trainer) devStart() error {
	d := t.devr
	if d == nil || d.params != nil {
		return nil
	}
	var err error
	if t.cfg.Precision != "" {
		if d.prec, err = device.ParsePrecision(t.cfg.Precision); err != nil {
			return fmt.Errorf("%w: --%v", ErrConfig, err)
		}
	}
	// A pipeline stage keeps only its own parameters on the device.
	var only []int
	var ps []executor.Tensor // the parameters the optimiser updates
	st, step := t.opt.State()
	if t.pp != nil {
		only = t.pp.stage.Params
		st, step = t.pp.opt.State()
	}
	if d.params, err = executor.UploadParamsOf(d.dev, t.Model, only); err != nil {
		return t.devErr("uploading the parameters", err)
	}
	for i, p := range t.Model.Params {
		if only == nil || slices.Contains(only, i) {
			d.names = append(d.names, p.Name)
			ps = append(ps, d.params.T[i])
		}
		d.host = append(d.host, make([]float32, len(p.Data)))
	}
	if d.opt, err = executor.NewOptimizer(d.dev, t.cfg.optimizer(), ps); err != nil {
		return t.devErr("creating the optimiser", err)
	}
	if err := d.opt.LoadState(d.names, st, step); err != nil {
		return t.devErr("loading the optimiser state", err)
	}
	if t.pp != nil {
		d.stageParams = ps
		for _, pi := range only {
			b, err := d.dev.Alloc(t.Model.Params[pi].Size())
			if err != nil {
				return t.devErr("allocating a stage gradient", err)
			}
			d.acc = append(d.acc, executor.Tensor{Buf: b, Shape: t.Model.Params[pi].Shape})
		}
		d.stageProgs = map[*graph.StageProgram]*executor.Program{}
		if r, ok := t.dp.comm.(dist.DeviceSendRecver); ok && len(d.acc) > 0 {
			if _, ok := d.acc[0].Buf.(device.Addresser); ok {
				d.p2p = r
				t.log.Info("pipeline stages pass activations device to device", "device", d.dev.Name())
			}
		}
	}
	if t.distributed() && t.cfg.Sync != "async" && t.pp == nil {
		for _, p := range d.params.T {
			b, err := d.dev.Alloc(p.Size())
			if err != nil {
				return t.devErr("allocating a gradient", err)
			}
			d.grads = append(d.grads, executor.Tensor{Buf: b, Shape: p.Shape})
		}
		if err := t.devBuckets(); err != nil {
			return err
		}
	}
	if t.cfg.Sync != "async" && t.pp == nil && t.cfg.Prefetch {
		if d.pf, err = newPrefetcher(d.dev, t.cfg.BatchSize, t.Model.InputSize(), t.cfg.PinMemory); err != nil {
			return t.devErr("starting the prefetcher", err)
		}
	}
	d.progs = map[progKey]devProg{}
	t.log.Info("training on a device", "device", d.dev.Name(), "precision", d.prec.String())
	return nil
}

// devProgram returns p compiled for the device.
func (t *Trainer) devProgram(p *graph.Program) (*executor.Program, error) {
	d := t.devr
	k := progKey{p.Batch, p.Train}
	if dp, ok := d.progs[k]; ok {
		if dp.from == p {
			return dp.e, nil
		}
		dp.e.Free() // the model compiled the program anew
	}
	e, err := executor.Compile(d.dev, p, d.params, d.prec)
	if err != nil {
		return nil, t.devErr("compiling a program", err)
	}
	d.progs[k] = devProg{p, e}
	return e, nil
}

// devWarm reports whether p has run on the device before.
func (t *Trainer) devWarm(p *graph.Program) bool {
	dp, ok := t.devr.progs[progKey{p.Batch, p.Train}]
	return ok && dp.from == p && dp.e.Warm()
}

// devRunProgram runs p on the device on the batch x, y (p.X, p.Y, or a
// prefetched batch); watch, when not nil, hears of each gradient as it is
// issued.
func (t *Trainer) devRunProgram(p *graph.Program, x, y []float32, seed, stream uint64, watch func(param int) error) (*executor.Program, float32, error) {
	e, err := t.devProgram(p)
	if err != nil {
		return nil, 0, err
	}
	loss, err := e.RunWatched(x, y, seed, stream, watch)
	if err != nil {
		return nil, 0, t.devErr("running a program", err)
	}
	t.devr.stale = true
	t.devr.runs++
	return e, loss, nil
}

// devAsyncGrad is an asynchronous worker's computation on the device: the
// server's parameters (in the host model) go up, p runs there, and its
// gradients come down into grad, concatenated in parameter order.
func (t *Trainer) devAsyncGrad(p *graph.Program, seed, stream uint64, grad []float32) (float32, error) {
	d := t.devr
	if err := d.params.Upload(t.Model); err != nil {
		return 0, t.devErr("uploading the parameters", err)
	}
	e, loss, err := t.devRunProgram(p, p.X, p.Y, seed, stream, nil)
	if err != nil {
		return 0, err
	}
	d.stale = false // the device holds the server's parameters; its optimiser is not used
	off := 0
	for i := range t.Model.Params {
		g, err := t.devGrad(e, i)
		if err != nil {
			return 0, err
		}
		off += copy(grad[off:], g)
	}
	return loss, nil
}

// devGrad downloads parameter i's gradient from e's last run.
func (t *Trainer) devGrad(e *executor.Program, i int) ([]float32, error) {
	g := t.devr.host[i]
	if err := t.devr.dev.Read(g, e.Grad(i).Buf); err != nil {
		return nil, t.devErr("downloading the gradient of "+t.Model.Params[i].Name, err)
	}
	return g, nil
}

// devStep applies the optimiser on the device: with e's gradients (one
// process) or with the reduced gradients in the host buckets.
func (t *Trainer) devStep(e *executor.Program, lr, loss float64) error {
	d := t.devr
	grads := d.grads
	switch {
	case grads == nil:
		grads = e.Grads()
	case d.reduce != nil: // the reduced gradients are on the device already
	default:
		for i, v := range t.dp.views {
			if err := d.dev.Write(grads[i].Buf, v); err != nil {
				return t.devErr("uploading the reduced gradients", err)
			}
		}
	}
	// The global norm, clipped by or not: a NaN or an infinity in any
	// gradient shows in it, and the step stops before the parameters
	// move, as on the CPU.
	if d.clip == nil {
		var err error
		if d.clip, err = executor.NewClipper(d.dev, len(grads)); err != nil {
			return t.devErr("creating the gradient clipper", err)
		}
	}
	norm, err := d.clip.Clip(grads, t.cfg.ClipGradNorm)
	if err != nil {
		return t.devErr("clipping the gradients", err)
	}
	if !finite(norm) {
		return t.diverged(loss)
	}
	if err := d.opt.Step(d.params.T, grads, lr); err != nil {
		return t.devErr("optimiser step", err)
	}
	d.stale = true
	d.steps++
	return nil
}

// hostSync brings the host's parameters and optimiser state up to date
// with the device's.
func (t *Trainer) hostSync() error {
	d := t.devr
	if d == nil || !d.stale {
		return nil
	}
	if err := d.params.Download(t.Model); err != nil {
		return t.devErr("downloading the parameters", err)
	}
	st, step, err := d.opt.State(d.names)
	if err != nil {
		return t.devErr("downloading the optimiser state", err)
	}
	opt := t.opt
	if t.pp != nil {
		opt = t.pp.opt
	}
	if err := opt.LoadState(st, step); err != nil {
		return t.devErr("loading the optimiser state on the host", err)
	}
	d.stale = false
	return nil
}

// devRelease frees the device program of this batch size and mode (the
// balancer moved this rank's batch size away from it).
func (t *Trainer) devRelease(batch int, train bool) {
	if t.devr == nil || t.devr.progs == nil {
		return
	}
	k := progKey{batch, train}
	if dp, ok := t.devr.progs[k]; ok {
		dp.e.Free()
		delete(t.devr.progs, k)
	}
}

// devClose frees everything on the device.
func (t *Trainer) devClose() {
	d := t.devr
	if d == nil || d.params == nil {
		return
	}
	for _, dp := range d.progs {
		dp.e.Free()
	}
	for _, e := range d.stageProgs {
		e.Free()
	}
	for _, g := range append(d.grads, d.acc...) {
		d.dev.Free(g.Buf)
	}
	for _, b := range d.stageIn {
		if b != nil {
			d.dev.Free(b)
		}
	}
	for _, b := range append(d.buckets, d.bf16...) {
		d.dev.Free(b)
	}
	if d.one != nil {
		d.dev.Free(d.one)
	}
	if d.clip != nil {
		d.clip.Free()
	}
	if d.pf != nil {
		d.fetched += d.pf.taken
		d.pf.close()
		d.pf = nil
	}
	d.opt.Free()
	d.params.Free()
	d.progs, d.grads, d.params, d.stageProgs, d.acc, d.stageIn = nil, nil, nil, nil, nil, nil
}

// devStage returns a pipeline stage's program compiled for the device.
func (t *Trainer) devStage(p *graph.StageProgram) (*executor.Program, error) {
	d := t.devr
	if e, ok := d.stageProgs[p]; ok {
		return e, nil
	}
	if len(d.stageProgs) >= 2*graph.MaxStagePrograms {
		// The stage compiled programs anew (it keeps a bounded number):
		// start over rather than keep the old ones' memory.
		for _, e := range d.stageProgs {
			e.Free()
		}
		clear(d.stageProgs)
	}
	e, err := executor.CompileStage(d.dev, p, d.params, d.prec)
	if err != nil {
		return nil, t.devErr("compiling a stage program", err)
	}
	d.stageProgs[p] = e
	return e, nil
}

// devRead downloads a device tensor into the host buffer for neighbours,
// valid until the next devRead.
func (t *Trainer) devRead(v executor.Tensor) ([]float32, error) {
	d := t.devr
	d.out = slices.Grow(d.out[:0], v.Size())[:v.Size()]
	if err := d.dev.Read(d.out, v.Buf); err != nil {
		return nil, t.devErr("downloading a stage output", err)
	}
	return d.out, nil
}

// devErr names the device, and what the trainer asked of it (op, e.g.
// "running a program"), in an error from it; the cause stays wrapped for
// errors.Is and errors.As.
func (t *Trainer) devErr(op string, err error) error {
	return fmt.Errorf("device %s: %s: %w", t.devr.dev.Name(), op, err)
}

// devEvaluate evaluates test samples [lo, hi) on the device: the
// evaluation programs run there and only the losses and logits come back.
func (t *Trainer) devEvaluate(lo, hi, batch int) (accuracy, loss float64, err error) {
	var logits []float32
	return evaluate(t.Model, t.test, lo, hi, batch, func(p *graph.Program) (float32, int, error) {
		e, err := t.devProgram(p)
		if err != nil {
			return 0, 0, err
		}
		l, err := e.Run(p.X, p.Y, 0, 0)
		if err != nil {
			return 0, 0, t.devErr("evaluation", err)
		}
		k := t.Model.Spec.Classes
		logits = slices.Grow(logits[:0], p.Batch*k)[:p.Batch*k]
		if err := e.Logits(logits); err != nil {
			return 0, 0, t.devErr("downloading the logits", err)
		}
		t.devr.evals++
		return l, graph.CountCorrect(logits, p.Y, k), nil
	})
}

// devBuckets puts the gradient buckets on the device when the backend
// all-reduces device memory and the device's buffers have addresses.
func (t *Trainer) devBuckets() error {
	d := t.devr
	red, ok := t.dp.comm.(dist.DeviceAllReducer)
	wantBF16 := t.cfg.ReducePrecision == "bf16"
	// Local SGD reduces no gradients: its ranks average their parameters
	// through the host every --sync-period steps (averageParams).
	if !ok || t.worldSize() < 2 || t.cfg.Sync == "local-sgd" {
		if wantBF16 && t.worldSize() > 1 {
			return fmt.Errorf("%w: --reduce-precision bf16 all-reduces the gradient buckets on the device, which this backend cannot: use --backend nccl", ErrConfig)
		}
		return nil
	}
	d.offsets = make([]int, len(t.Model.Params))
	d.bucketOf = make([]int, len(t.Model.Params))
	for bi, b := range t.dp.buckets {
		off := 0
		for _, i := range b.params {
			d.offsets[i] = off
			d.bucketOf[i] = bi
			off += t.Model.Params[i].Size()
		}
		buf, err := d.dev.Alloc(len(b.buf))
		if err != nil {
			return t.devErr("allocating a gradient bucket", err)
		}
		d.buckets = append(d.buckets, buf)
		if _, ok := buf.(device.Addresser); !ok {
			if wantBF16 {
				return fmt.Errorf("%w: --reduce-precision bf16: the backend cannot reach %s's memory", ErrConfig, d.dev.Name())
			}
			return nil // the backend cannot reach this device's memory: the host buckets serve
		}
		if wantBF16 {
			half, err := d.dev.Alloc((len(b.buf) + 1) / 2)
			if err != nil {
				return t.devErr("allocating a bf16 gradient bucket", err)
			}
			d.bf16 = append(d.bf16, half)
		}
	}
	var err error
	if d.one, err = d.dev.Alloc(1); err != nil {
		return t.devErr("allocating the stop flag", err)
	}
	d.reduce = red
	t.log.Info("gradient buckets on the device", "device", d.dev.Name(), "buckets", len(d.buckets), "reduce_precision", map[bool]string{false: "fp32", true: "bf16"}[wantBF16])
	return nil
}

// devFillBucket adds scale times e's gradients of bucket bi's parameters
// into the device bucket (or sets them, when first); e nil (no samples)
// zeroes them. The same arithmetic as fillBucket's on the host.
func (t *Trainer) devFillBucket(bi int, prog *graph.Program, scale float32, first bool) error {
	var e *executor.Program
	if prog != nil {
		var err error
		if e, err = t.devProgram(prog); err != nil {
			return err
		}
	}
	return t.devPackBucket(bi, e, scale, first)
}

// devPackBucket is devFillBucket with the device program at hand.
func (t *Trainer) devPackBucket(bi int, e *executor.Program, scale float32, first bool) error {
	d := t.devr
	for _, i := range t.dp.buckets[bi].params {
		n := t.Model.Params[i].Size()
		var err error
		switch {
		case e != nil:
			err = d.dev.Launch("axpy_at", n, e.Grad(i).Buf, d.buckets[bi], n, d.offsets[i], scale, !first)
		case first:
			err = d.dev.Launch("fill_at", n, d.buckets[bi], d.offsets[i], n, float32(0))
		}
		if err != nil {
			return t.devErr(fmt.Sprintf("packing gradient bucket %d", bi), err)
		}
	}
	return nil
}

// bucketReducer all-reduces the device buckets in a goroutine, each as
// soon as it is packed, so that the backward pass goes on meanwhile. On a
// device with a communication stream (device.Streamer) the collectives
// are queued there, each behind the event that follows its bucket's
// packing, and the compute stream goes on with the backward pass's
// kernels while they run; elsewhere they queue behind the kernels issued
// before them.
type bucketReducer struct {
	t         *Trainer
	e         *executor.Program // the last micro-batch's program; nil: no samples
	scale     float32
	first     bool
	stop      float32
	remaining []int           // per bucket: gradients still to come
	streams   device.Streamer // nil: the device has no communication stream
	jobs      chan reduceJob
	done      chan error
}

// reduceJob is a packed bucket to all-reduce, and the event after its
// packing (with a communication stream).
type reduceJob struct {
	bucket int
	packed device.Event
}

// startReducer starts the reductions of this step and returns the hook
// that packs each bucket once prog's run has issued its last gradient.
func (t *Trainer) startReducer(ctx context.Context, prog *graph.Program, scale float32, first, stopRequested bool) (func(int) error, error) {
	d := t.devr
	b := &bucketReducer{t: t, scale: scale, first: first, jobs: make(chan reduceJob, len(d.buckets)), done: make(chan error, 1)}
	b.streams, _ = d.dev.(device.Streamer)
	if stopRequested {
		b.stop = 1
	}
	if prog != nil {
		var err error
		if b.e, err = t.devProgram(prog); err != nil {
			return nil, err
		}
	}
	for _, bk := range t.dp.buckets {
		b.remaining = append(b.remaining, len(bk.params))
	}
	r := t.rank()
	go func() {
		var err error
		for job := range b.jobs {
			if err != nil {
				continue
			}
			bi := job.bucket
			buf, n, bf16 := d.buckets[bi], d.buckets[bi].Len(), d.bf16 != nil
			if bf16 {
				buf = d.bf16[bi] // packed by pack(), widened by devAllReduce
			}
			addr := buf.(device.Addresser).Addr()
			cctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
			if b.streams != nil {
				err = b.streams.OnComm(job.packed, func(stream uintptr) error {
					return d.reduce.AllReduceDevice(cctx, addr, n, bf16, dist.Sum, stream)
				})
			} else {
				err = d.reduce.AllReduceDevice(cctx, addr, n, bf16, dist.Sum, 0)
			}
			cancel()
			if err != nil {
				err = fmt.Errorf("rank %d: all-reduce of gradient bucket %d on the device: %w", r, bi, err)
			}
		}
		b.done <- err
	}()
	d.red = b
	return func(param int) error {
		bi := d.bucketOf[param]
		if b.remaining[bi]--; b.remaining[bi] == 0 {
			return b.pack(bi)
		}
		return nil
	}, nil
}

// pack writes bucket bi (and, in the last bucket, the stop flag) and hands
// it to the reducing goroutine.
func (b *bucketReducer) pack(bi int) error {
	t, d := b.t, b.t.devr
	if err := t.devPackBucket(bi, b.e, b.scale, b.first); err != nil {
		return err
	}
	if lb := len(d.buckets) - 1; bi == lb {
		if err := d.dev.Launch("fill_at", 1, d.buckets[lb], len(t.dp.buckets[lb].buf)-1, 1, b.stop); err != nil {
			return t.devErr("packing the stop flag", err)
		}
	}
	if d.bf16 != nil {
		n := d.buckets[bi].Len()
		if err := d.dev.Launch("to_bf16", n, d.buckets[bi], d.bf16[bi], n); err != nil {
			return t.devErr(fmt.Sprintf("rounding gradient bucket %d to bf16", bi), err)
		}
	}
	job := reduceJob{bucket: bi}
	if b.streams != nil {
		var err error
		if job.packed, err = b.streams.Mark(); err != nil {
			return t.devErr(fmt.Sprintf("marking gradient bucket %d", bi), err)
		}
	}
	b.jobs <- job
	return nil
}

// finish waits for the reductions.
func (b *bucketReducer) finish() error {
	close(b.jobs)
	return <-b.done
}

// devAllReduce ends a step whose gradient buckets are on the device: the
// buckets (packed and being reduced since the backward pass, or packed
// now) are all-reduced by the backend in device memory, and the reduced
// gradients go to the optimiser's buffers. It returns whether any rank
// asked to stop.
func (t *Trainer) devAllReduce(ctx context.Context, last *graph.Program, scale float32, first, stopRequested bool) (bool, error) {
	d := t.devr
	b := d.red
	d.red = nil
	if b == nil {
		// No samples on this rank, or no run reported its gradients: pack
		// and reduce every bucket now.
		if _, err := t.startReducer(ctx, last, scale, first, stopRequested); err != nil {
			return false, err
		}
		b, d.red = d.red, nil
		for bi := range d.buckets {
			if err := b.pack(bi); err != nil {
				b.finish()
				return false, err
			}
		}
	} else if slices.ContainsFunc(b.remaining, func(n int) bool { return n > 0 }) {
		b.finish()
		return false, fmt.Errorf("device %s: the run did not report every gradient (%v still due per bucket)", d.dev.Name(), b.remaining)
	}
	if err := b.finish(); err != nil {
		return false, err
	}
	if b.streams != nil {
		// The compute stream reads the reduced buckets next: it waits for
		// the communication stream, and the host for both, under the
		// watchdog (a Read would block for good on a peer that never
		// joins).
		if err := b.streams.JoinComm(); err != nil {
			return false, t.devErr("joining the communication stream", err)
		}
		cctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
		err := d.reduce.WaitDevice(cctx, b.streams.CommDone)
		cancel()
		if err != nil {
			return false, fmt.Errorf("rank %d: all-reduce of the gradient buckets on the device: %w", t.rank(), err)
		}
	}
	for bi := range d.bf16 {
		n := d.buckets[bi].Len()
		if err := d.dev.Launch("from_bf16", n, d.bf16[bi], d.buckets[bi], n); err != nil {
			return false, t.devErr(fmt.Sprintf("widening gradient bucket %d from bf16", bi), err)
		}
	}
	lb := len(d.buckets) - 1
	stopAt := len(t.dp.buckets[lb].buf) - 1
	for bi, bk := range t.dp.buckets {
		for _, i := range bk.params {
			n := t.Model.Params[i].Size()
			if err := d.dev.Launch("copy_at", n, d.buckets[bi], d.offsets[i], d.grads[i].Buf, 0, n); err != nil {
				return false, t.devErr(fmt.Sprintf("unpacking gradient bucket %d", bi), err)
			}
		}
	}
	if err := d.dev.Launch("copy_at", 1, d.buckets[lb], stopAt, d.one, 0, 1); err != nil {
		return false, t.devErr("unpacking the stop flag", err)
	}
	v := []float32{0}
	if err := d.dev.Read(v, d.one); err != nil {
		return false, t.devErr("downloading the stop flag", err)
	}
	return v[0] > 0, nil
}
