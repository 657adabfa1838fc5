package trainer

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/gotrain/gotrain/gpu/device"
	gpuexec "github.com/gotrain/gotrain/gpu/executor"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Training on a device
//
// With WithDevice the model trains through gpu/executor (devRun, the
// device executor): the parameters, the optimiser's state and every
// program's activations and gradients live on the device; each step
// uploads the batch and reads back the loss. In a job of several ranks
// the gradients come back to the host buckets, are all-reduced there like
// the CPU's, and go up again for the optimiser; with a backend that
// all-reduces device memory (NCCL) the buckets live on the device
// (devReducer). The host's copies of the parameters and the optimiser
// state are brought up to date (sync) where the host needs them:
// checkpoints, the replica check and the end of the run. Evaluation runs
// on the device too. Dropout masks come from the device's RNG, so a run
// with dropout follows another random sequence than on the CPU; without
// dropout it follows the CPU's run to rounding.

// devRun is the device executor.
type devRun struct {
	t       *Trainer
	dev     device.Device
	prec    device.Precision // of the matrix products (--precision)
	params  *gpuexec.Params
	opt     *gpuexec.Optimizer
	hostOpt optim.Optimizer     // the host optimiser sync loads the state into
	progs   map[progKey]devProg // by batch size and mode
	grads   []gpuexec.Tensor    // reduced gradients (data parallelism)
	host    [][]float32         // per parameter: its gradient downloaded
	ps      []gpuexec.Tensor    // the parameters the optimiser updates
	cur     []gpuexec.Tensor    // the step's gradients
	// isBuffer marks, per entry of ps, a buffer (see optim.Param.Buffer);
	// curParams is scratch for normed.
	isBuffer  []bool
	curParams []gpuexec.Tensor
	// With a backend that all-reduces device memory (NCCL), the gradient
	// buckets live on the device too (see devReducer).
	clip    *gpuexec.Clipper // made at first use
	red     *bucketReducer   // the step's reductions in flight, if started during the backward pass
	st      *devStage        // a pipeline stage's state
	closers []func()         // free what reducers put on the device
	pf      *prefetcher      // the batches, decoded ahead (--prefetch)
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
	e    *gpuexec.Program
}

// WithDevice makes the trainer train on dev (see "Training on a device").
func WithDevice(dev device.Device) Option { return func(t *Trainer) { t.devr = &devRun{dev: dev} } }

// start puts the parameters (a pipeline stage's: only) and opt's state
// (restored or fresh) on the device.
func (d *devRun) start(opt optim.Optimizer, only []int) error {
	t := d.t
	var err error
	if t.cfg.Precision != "" {
		if d.prec, err = device.ParsePrecision(t.cfg.Precision); err != nil {
			return fmt.Errorf("%w: --%v", ErrConfig, err)
		}
	}
	d.hostOpt = opt
	st, step := opt.State()
	if d.params, err = gpuexec.UploadParamsOf(d.dev, t.Model, only); err != nil {
		return d.err("uploading the parameters", err)
	}
	var buffers []bool
	for i, p := range t.Model.Params {
		if only == nil || slices.Contains(only, i) {
			d.names = append(d.names, p.Name)
			d.ps = append(d.ps, d.params.T[i])
			buffers = append(buffers, p.Buffer)
		}
		d.host = append(d.host, make([]float32, len(p.Data)))
	}
	if d.opt, err = gpuexec.NewOptimizer(d.dev, t.cfg.optimizer(), d.ps); err != nil {
		return d.err("creating the optimiser", err)
	}
	if err := d.opt.SetBuffers(buffers); err != nil {
		return d.err("creating the optimiser", err)
	}
	d.isBuffer = buffers
	if err := d.opt.LoadState(d.names, st, step); err != nil {
		return d.err("loading the optimiser state", err)
	}
	if only != nil {
		if d.st, err = newDevStage(d, only); err != nil {
			return err
		}
	}
	d.progs = map[progKey]devProg{}
	t.log.Info("training on a device", "device", d.dev.Name(), "precision", d.prec.String())
	return nil
}

// startPrefetcher makes the prefetcher (see prefetch.go) for batches of
// at most batch samples.
func (d *devRun) startPrefetcher(batch int) error {
	var err error
	if d.pf, err = newPrefetcher(d.dev, batch, d.t.Model.InputSize(), d.t.cfg.PinMemory); err != nil {
		return d.err("starting the prefetcher", err)
	}
	return nil
}

func (d *devRun) prefetch(spans [][2]int, fill func(lo, hi int, x, y []float32) error) {
	if d.pf != nil {
		d.pf.start(spans, fill)
	}
}

func (d *devRun) stopPrefetch() {
	if d.pf != nil {
		d.pf.stop()
	}
}

func (d *devRun) input(prog *graph.Program, lo, hi int, fill func(x, y []float32) error) ([]float32, []float32, func(), error) {
	if !d.pf.active() {
		return prog.X, prog.Y, nil, fill(prog.X, prog.Y)
	}
	b, err := d.pf.next(lo, hi)
	if err != nil {
		return nil, nil, nil, err
	}
	return b.x, b.y, func() { d.pf.release(b) }, nil
}

// program returns p compiled for the device.
func (d *devRun) program(p *graph.Program) (*gpuexec.Program, error) {
	k := progKey{p.Batch, p.Train}
	if dp, ok := d.progs[k]; ok {
		if dp.from == p {
			return dp.e, nil
		}
		dp.e.Free() // the model compiled the program anew
	}
	e, err := gpuexec.Compile(d.dev, p, d.params, d.prec)
	if err != nil {
		return nil, d.err("compiling a program", err)
	}
	d.progs[k] = devProg{p, e}
	return e, nil
}

func (d *devRun) warm(p *graph.Program) bool {
	dp, ok := d.progs[progKey{p.Batch, p.Train}]
	return ok && dp.from == p && dp.e.Warm()
}

// run runs p on the device on the batch x, y. A data-parallel step's
// micro-batch j of k on rank r draws the masks of stream step·k+j of a
// seed of its rank.
func (d *devRun) run(p *graph.Program, x, y []float32, k runKey, watch func(param int) error) (float32, error) {
	_, loss, err := d.runProgram(p, x, y, d.t.cfg.Seed^dropoutSalt^uint64(k.rank)<<40, uint64(k.step)*uint64(k.micros)+uint64(k.micro), watch)
	if err != nil && d.red != nil {
		d.red.finish() // ends the reducing goroutine
		d.red = nil
	}
	return loss, err
}

func (d *devRun) runProgram(p *graph.Program, x, y []float32, seed, stream uint64, watch func(param int) error) (*gpuexec.Program, float32, error) {
	e, err := d.program(p)
	if err != nil {
		return nil, 0, err
	}
	if err := e.SyncBatchNorm(p.BatchSync()); err != nil {
		return nil, 0, err
	}
	loss, err := e.RunWatched(x, y, seed, stream, watch)
	if err != nil {
		return nil, 0, d.err("running a program", err)
	}
	d.stale = true
	d.runs++
	return e, loss, nil
}

// runStream is an asynchronous worker's computation: the parameters
// loadParams put up, p's run there.
func (d *devRun) runStream(p *graph.Program, seed, stream uint64, _ *rand.Rand, _ *rand.PCG) (float32, error) {
	_, loss, err := d.runProgram(p, p.X, p.Y, seed, stream, nil)
	d.stale = false // the device holds the server's parameters; its optimiser is not used
	return loss, err
}

// loadParams uploads the host model's parameters.
func (d *devRun) loadParams() error {
	if err := d.params.Upload(d.t.Model); err != nil {
		return d.err("uploading the parameters", err)
	}
	return nil
}

// grad downloads parameter i's gradient from p's last run.
func (d *devRun) grad(p *graph.Program, i int) ([]float32, error) {
	e, err := d.program(p)
	if err != nil {
		return nil, err
	}
	g := d.host[i]
	if err := d.dev.Read(g, e.Grad(i).Buf); err != nil {
		return nil, d.err("downloading the gradient of "+d.t.Model.Params[i].Name, err)
	}
	return g, nil
}

func (d *devRun) useProgramGrads(p *graph.Program) error {
	e, err := d.program(p)
	if err != nil {
		return err
	}
	d.cur = e.Grads()
	return nil
}

// useHostGrads uploads reduced gradients for the optimiser.
func (d *devRun) useHostGrads(grads [][]float32) error {
	if err := d.allocGrads(); err != nil {
		return err
	}
	for i, v := range grads {
		if err := d.dev.Write(d.grads[i].Buf, v); err != nil {
			return d.err("uploading the reduced gradients", err)
		}
	}
	d.cur = d.grads
	return nil
}

// allocGrads makes the buffers of the reduced gradients.
func (d *devRun) allocGrads() error {
	if len(d.grads) == len(d.params.T) {
		return nil
	}
	for _, p := range d.params.T {
		b, err := d.dev.Alloc(p.Size())
		if err != nil {
			return d.err("allocating a gradient", err)
		}
		d.grads = append(d.grads, gpuexec.Tensor{Buf: b, Shape: p.Shape})
	}
	return nil
}

// sumSquares: with the global norm, clipped by or not, a NaN or an
// infinity in any gradient shows, and the step stops before the
// parameters move, as on the CPU.
func (d *devRun) sumSquares() (float64, error) {
	if d.clip == nil {
		var err error
		if d.clip, err = gpuexec.NewClipper(d.dev, len(d.cur)); err != nil {
			return 0, d.err("creating the gradient clipper", err)
		}
	}
	sq, err := d.clip.SumSquares(d.normed())
	if err != nil {
		return 0, d.err("summing the gradients' squares", err)
	}
	return sq, nil
}

// normed is the gradients that the norm counts and clipping scales: not
// the buffers' slots (see optim.Param.Buffer).
func (d *devRun) normed() []gpuexec.Tensor {
	if !slices.Contains(d.isBuffer, true) {
		return d.cur
	}
	d.curParams = d.curParams[:0]
	for i, g := range d.cur {
		if !d.isBuffer[i] {
			d.curParams = append(d.curParams, g)
		}
	}
	return d.curParams
}

func (d *devRun) scale(c float32) error {
	if err := d.clip.Scale(d.normed(), c); err != nil {
		return d.err("clipping the gradients", err)
	}
	return nil
}

func (d *devRun) step(lr float64) error {
	if err := d.opt.Step(d.ps, d.cur, lr); err != nil {
		return d.err("optimiser step", err)
	}
	d.stale = true
	d.steps++
	return nil
}

// sync brings the host's parameters and optimiser state up to date with
// the device's.
func (d *devRun) sync() error {
	if !d.stale {
		return nil
	}
	if err := d.params.Download(d.t.Model); err != nil {
		return d.err("downloading the parameters", err)
	}
	st, step, err := d.opt.State(d.names)
	if err != nil {
		return d.err("downloading the optimiser state", err)
	}
	if err := d.hostOpt.LoadState(st, step); err != nil {
		return d.err("loading the optimiser state on the host", err)
	}
	d.stale = false
	return nil
}

// syncedParams uploads the host's parameters (averaged by local SGD).
func (d *devRun) syncedParams() error {
	if err := d.params.Upload(d.t.Model); err != nil {
		return d.err("uploading the averaged parameters", err)
	}
	return nil
}

// release frees the device program of this batch size and mode (the
// balancer moved this rank's batch size away from it).
func (d *devRun) release(batch int, train bool) {
	k := progKey{batch, train}
	if dp, ok := d.progs[k]; ok {
		dp.e.Free()
		delete(d.progs, k)
	}
}

// close frees everything on the device.
func (d *devRun) close() {
	if d.opt == nil {
		return
	}
	for _, dp := range d.progs {
		dp.e.Free()
	}
	if d.st != nil {
		d.st.free()
	}
	for _, f := range d.closers {
		f()
	}
	for _, g := range d.grads {
		d.dev.Free(g.Buf)
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
	d.progs, d.grads, d.params, d.st, d.opt = nil, nil, nil, nil, nil
}

// read downloads a device tensor into a host buffer for neighbours, valid
// until the next read.
func (d *devRun) read(v gpuexec.Tensor, buf *[]float32) ([]float32, error) {
	*buf = slices.Grow((*buf)[:0], v.Size())[:v.Size()]
	if err := d.dev.Read(*buf, v.Buf); err != nil {
		return nil, d.err("downloading a stage output", err)
	}
	return *buf, nil
}

// err names the device, and what the trainer asked of it (op, e.g.
// "running a program"), in an error from it; the cause stays wrapped for
// errors.Is and errors.As.
func (d *devRun) err(op string, err error) error {
	return fmt.Errorf("device %s: %s: %w", d.dev.Name(), op, err)
}

// evaluate evaluates test samples [lo, hi) on the device: the evaluation
// programs run there and only the losses and logits come back.
func (d *devRun) evaluate(lo, hi, batch int) (accuracy, loss float64, err error) {
	var logits []float32
	m := d.t.Model
	return evaluate(m, d.t.test, lo, hi, batch, func(p *graph.Program) (float32, int, error) {
		e, err := d.program(p)
		if err != nil {
			return 0, 0, err
		}
		l, err := e.Run(p.X, p.Y, 0, 0)
		if err != nil {
			return 0, 0, d.err("evaluation", err)
		}
		k := m.Spec.Classes
		logits = slices.Grow(logits[:0], p.Batch*k)[:p.Batch*k]
		if err := e.Logits(logits); err != nil {
			return 0, 0, d.err("downloading the logits", err)
		}
		d.evals++
		return l, graph.CountCorrect(logits, p.Y, k), nil
	})
}

// reducer puts the gradient buckets on the device when the backend
// all-reduces device memory and the device's buffers have addresses;
// otherwise the host buckets serve (hostReducer).
func (d *devRun) reducer(b *buckets, c dist.Communicator) (gradReducer, error) {
	t := d.t
	wantBF16 := t.cfg.ReducePrecision == "bf16"
	host := newHostReducer(t, d, b, c)
	red, ok := c.(dist.DeviceAllReducer)
	if !ok || c.Size() < 2 {
		if wantBF16 && t.worldSize() > 1 {
			return nil, fmt.Errorf("%w: --reduce-precision bf16 all-reduces the gradient buckets on the device, which this backend cannot: use --backend nccl", ErrConfig)
		}
		return host, nil
	}
	if err := d.allocGrads(); err != nil {
		return nil, err
	}
	r, err := newDevReducer(d, b, red, wantBF16)
	if err != nil || r == nil {
		return host, err
	}
	return r, nil
}

func (d *devRun) stage() stageExec { return d.st }
