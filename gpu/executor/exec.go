package executor

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Params are a model's parameters on a device, shared by all its programs
// (every batch size, training and evaluation).
type Params struct {
	dev device.Device
	T   []Tensor // in Model.Params order
}

// UploadParams copies m's parameters to dev.
func UploadParams(dev device.Device, m *graph.Model) (*Params, error) {
	return UploadParamsOf(dev, m, nil)
}

// UploadParamsOf copies the parameters of m listed in only (indices into
// m.Params; nil: all) to dev: a pipeline stage's. The others' tensors stay
// empty, and a program that uses one does not compile.
func UploadParamsOf(dev device.Device, m *graph.Model, only []int) (*Params, error) {
	ps := &Params{dev: dev}
	for i, p := range m.Params {
		if only != nil && !slices.Contains(only, i) {
			ps.T = append(ps.T, Tensor{Shape: p.Shape})
			continue
		}
		b, err := dev.Alloc(len(p.Data))
		if err != nil {
			ps.Free()
			return nil, fmt.Errorf("executor: parameter %s: %w", p.Name, err)
		}
		ps.T = append(ps.T, Tensor{Buf: b, Shape: p.Shape})
		if err := dev.Write(b, p.Data); err != nil {
			ps.Free()
			return nil, err
		}
	}
	return ps, nil
}

// Download copies the parameters back into m (for checkpoints, evaluation
// on the host, --out).
func (ps *Params) Download(m *graph.Model) error {
	if err := ps.dev.Sync(); err != nil {
		return err
	}
	for i, p := range m.Params {
		if ps.T[i].Buf == nil {
			continue
		}
		if err := ps.dev.Read(p.Data, ps.T[i].Buf); err != nil {
			return fmt.Errorf("executor: parameter %s: %w", p.Name, err)
		}
	}
	return nil
}

// Upload copies m's parameters into the device's (local SGD's averaged
// parameters, after the host averaged them).
func (ps *Params) Upload(m *graph.Model) error {
	for i, p := range m.Params {
		if ps.T[i].Buf == nil {
			continue
		}
		if err := ps.dev.Write(ps.T[i].Buf, p.Data); err != nil {
			return fmt.Errorf("executor: parameter %s: %w", p.Name, err)
		}
	}
	return nil
}

// Free releases the parameters' memory.
func (ps *Params) Free() {
	for _, t := range ps.T {
		if t.Buf != nil {
			ps.dev.Free(t.Buf)
		}
	}
	ps.T = nil
}

// Program is a graph.Program (or a pipeline stage's graph.StageProgram)
// compiled for a device: buffers planned once
// (an op's output takes the buffer of a value no longer read when one
// fits, a Reshape shares its input's), the ops with one workspace for all
// their scratch, and the parameters shared with the other programs. A run
// uploads the batch, draws the dropout masks on the device, runs every op
// in order and reads back the loss.
type Program struct {
	Batch     int
	Train     bool
	dev       device.Device
	layout    *graph.Layout
	vals      []Tensor
	owned     []device.Buffer
	ops       []*Op
	ins       [][]Tensor  // per op node: its inputs, bound once
	x, y      int         // y: -1 without labels (a stage before the last)
	up        int         // a stage's upstream gradient G; -1 without
	masks     []int       // node indices of the dropout masks
	gradOf    map[int]int // node index of a gradient -> its parameter
	runs      int
	prof      *Profile // nil: no profiling
	profNames []string // per op node: its row in a profile
	sync      *bnSync  // its BatchNorm ops' synchronisation (SyncBatchNorm)
}

// SyncBatchNorm makes the program's BatchNorm layers normalise by the
// statistics of the global batch, of which this program's batch is the
// fraction share, summed across the ranks by s, as
// graph.Program.SyncBatchNorm does on the CPU; nil s restores each batch's
// own statistics. Each BatchNorm sums its channels' sums and squared
// deviations (and the value count) in its forward pass, and the same
// again with its gradient's two sums in the backward pass, which
// recomputes them: every rank's program makes the same calls in the same
// order. An evaluation program ignores it.
func (e *Program) SyncBatchNorm(s graph.BatchSync, share float64) error {
	if s != nil && !(share > 0 && share <= 1) {
		return fmt.Errorf("executor: SyncBatchNorm: share %v must be in (0, 1]", share)
	}
	e.sync.s, e.sync.share = s, share
	return nil
}

// Warm reports whether the program has run before (the first run of a
// program is slower: timings that stand for its speed leave it out).
func (e *Program) Warm() bool { return e.runs > 0 }

// Compile lays p out on dev; params are the model's parameters there, prec
// the precision of its matrix products.
func Compile(dev device.Device, p *graph.Program, params *Params, prec device.Precision) (*Program, error) {
	l, err := p.Layout()
	if err != nil {
		return nil, err
	}
	if l.Loss < 0 {
		return nil, errors.New("executor: the program has no loss")
	}
	return compile(dev, l, p.Batch, p.Train, params, prec)
}

// CompileStage lays a pipeline stage's program out on dev: params need
// hold only the stage's parameters (UploadParamsOf). Run it with RunStage.
func CompileStage(dev device.Device, p *graph.StageProgram, params *Params, prec device.Precision) (*Program, error) {
	l, err := p.Layout()
	if err != nil {
		return nil, err
	}
	return compile(dev, l, p.Batch, p.Train, params, prec)
}

func compile(dev device.Device, l *graph.Layout, batch int, train bool, params *Params, prec device.Precision) (*Program, error) {
	e := &Program{Batch: batch, Train: train, dev: dev, layout: l, vals: make([]Tensor, len(l.Nodes)),
		ops: make([]*Op, len(l.Nodes)), x: -1, y: -1, up: -1, sync: &bnSync{}}
	fail := func(err error) (*Program, error) {
		e.Free()
		return nil, err
	}
	// Liveness: the last node that reads each value. A value whose buffer
	// a Reshape shares lives as long as the Reshape's readers. The loss,
	// the output and the gradients are read after the run: they live on.
	root := make([]int, len(l.Nodes)) // whose buffer a node's value is in
	last := make([]int, len(l.Nodes))
	for i, n := range l.Nodes {
		root[i] = i
		if n.Role == graph.RoleOp && n.Op.Kind() == graph.OpReshape {
			root[i] = root[n.Inputs[0]]
		}
		for _, k := range n.Inputs {
			last[root[k]] = max(last[root[k]], i)
		}
	}
	forever := len(l.Nodes)
	for _, k := range append([]int{l.Loss, l.Out, l.DX}, l.Grads...) {
		if k >= 0 {
			last[root[k]] = forever
		}
	}
	// Buffers of values no longer read go back to a pool and are handed to
	// later values that fit: activations of the forward pass become the
	// backward pass's. Op outputs only: inputs, masks and constants are
	// written outside the ops and keep their own.
	type pooled struct {
		b    device.Buffer
		free int // the node after which it is free
	}
	var pool []pooled
	alloc := func(i int, shape []int, shared bool) error {
		need := size(shape)
		if shared {
			best := -1
			for j, p := range pool {
				if p.free < i && p.b.Len() >= need && (best < 0 || p.b.Len() < pool[best].b.Len()) {
					best = j
				}
			}
			if best >= 0 {
				e.vals[i] = Tensor{Buf: pool[best].b, Shape: shape}
				pool[best].free = last[i]
				return nil
			}
		}
		b, err := dev.Alloc(need)
		if err != nil {
			return fmt.Errorf("executor: node %d %v: %w", i, shape, err)
		}
		e.owned = append(e.owned, b)
		e.vals[i] = Tensor{Buf: b, Shape: shape}
		if shared {
			pool = append(pool, pooled{b, last[i]})
		}
		return nil
	}
	for i, n := range l.Nodes {
		switch n.Role {
		case graph.RoleParam:
			if n.Index >= len(params.T) || params.T[n.Index].Buf == nil {
				return fail(fmt.Errorf("executor: the program uses parameter %d, which is not on the device (%d parameters, this stage's only if a stage's)", n.Index, len(params.T)))
			}
			e.vals[i] = params.T[n.Index]
			continue
		case graph.RoleInput:
			e.x = i
		case graph.RoleLabels:
			e.y = i
		case graph.RoleUpstream:
			e.up = i
		case graph.RoleMask:
			e.masks = append(e.masks, i)
		case graph.RoleOp:
			in := make([][]int, len(n.Inputs))
			for j, k := range n.Inputs {
				in[j] = l.Nodes[k].Shape
			}
			op, err := newOp(n.Op.Kind(), n.Op.Attrs(), in, n.Shape, prec, e.sync, n.Inputs)
			if err != nil {
				return fail(fmt.Errorf("executor: node %d: %w", i, err))
			}
			e.ops[i] = op
			for _, k := range op.keep {
				b, err := dev.Alloc(k)
				if err != nil {
					return fail(fmt.Errorf("executor: node %d: %d values kept: %w", i, k, err))
				}
				e.owned = append(e.owned, b)
				op.kept = append(op.kept, b)
			}
			if n.Op.Kind() == graph.OpReshape {
				e.vals[i] = Tensor{Buf: e.vals[n.Inputs[0]].Buf, Shape: n.Shape}
				continue
			}
		}
		if err := alloc(i, n.Shape, n.Role == graph.RoleOp); err != nil {
			return fail(err)
		}
		if n.Role == graph.RoleConst {
			if err := dev.Write(e.vals[i].Buf, []float32{n.Value}); err != nil {
				return fail(err)
			}
		}
	}
	if e.x < 0 || (e.y < 0) == (l.Loss >= 0) {
		return fail(errors.New("executor: the program has no input, or a loss without labels"))
	}
	e.ins = make([][]Tensor, len(l.Nodes))
	for i, op := range e.ops {
		if op != nil {
			for _, k := range l.Nodes[i].Inputs {
				e.ins[i] = append(e.ins[i], e.vals[k])
			}
		}
	}
	e.gradOf = make(map[int]int, len(l.Grads))
	for pi, k := range l.Grads {
		e.gradOf[k] = pi
	}
	// One workspace for every op's scratch: ops run one at a time, so
	// slot j only needs the largest scratch j of any op.
	var ws []device.Buffer
	var sizes []int
	for _, op := range e.ops {
		if op == nil {
			continue
		}
		for j, n := range op.need {
			if j == len(sizes) {
				sizes = append(sizes, 0)
			}
			sizes[j] = max(sizes[j], n)
		}
	}
	for _, n := range sizes {
		b, err := dev.Alloc(n)
		if err != nil {
			return fail(fmt.Errorf("executor: workspace of %d values: %w", n, err))
		}
		e.owned = append(e.owned, b)
		ws = append(ws, b)
	}
	for _, op := range e.ops {
		if op != nil {
			op.scratch = ws[:len(op.need)]
		}
	}
	return e, nil
}

// Run trains (or evaluates) on one batch: x is [Batch, features], y the
// class indices. Dropout masks come from the device RNG, from seed and
// stream (use the step: every step gets other masks). It returns the mean
// loss.
func (e *Program) Run(x, y []float32, seed, stream uint64) (float32, error) {
	return e.RunWatched(x, y, seed, stream, nil)
}

// RunWatched is Run that calls gradReady with a parameter's index as soon
// as the op computing its gradient has been issued (in the order the
// backward pass produces them), so that a caller can start reducing a
// bucket of gradients while the rest of the backward pass runs. An error
// from gradReady ends the run.
func (e *Program) RunWatched(x, y []float32, seed, stream uint64, gradReady func(param int) error) (float32, error) {
	if err := e.launch(x, y, nil, seed, stream, gradReady); err != nil {
		return 0, err
	}
	return e.Loss()
}

// RunStage runs a pipeline stage's program: x is the stage's input (the
// data, or the previous stage's output), y the labels (the last stage
// only), g the gradient of the output (training, other stages). It
// returns the last stage's mean loss, 0 on the others. Out, DX and Grad
// hold the results.
func (e *Program) RunStage(x, y, g []float32, seed, stream uint64) (float32, error) {
	if err := e.launch(x, y, g, seed, stream, nil); err != nil {
		return 0, err
	}
	return e.Loss()
}

// Launch issues a run and returns without waiting for the device or
// reading the loss: a device queues the work, and the caller may prepare
// the next batch meanwhile. Loss waits for it. x and y, when in the
// device's page-locked memory (device.Pinner), must stay as they are
// until then: their copies may still be queued.
func (e *Program) Launch(x, y []float32, seed, stream uint64) error {
	return e.launch(x, y, nil, seed, stream, nil)
}

// Loss waits for the last run and returns its mean loss. A stage without
// labels has none: it returns 0 at once, and a Read of its results waits.
//
// It waits by reading the loss, which waits for the work queued before it
// (and returns an error of that work): not for the whole device, whose
// communication stream may be all-reducing gradient buckets that a peer
// never joins. Those the trainer waits for under NCCL's watchdog.
func (e *Program) Loss() (float32, error) {
	if e.layout.Loss < 0 {
		return 0, nil
	}
	loss := []float32{0}
	if err := e.dev.Read(loss, e.vals[e.layout.Loss].Buf); err != nil {
		return 0, err
	}
	return loss[0], nil
}

// RunStageLoaded is RunStage with the input and the output's gradient
// already in the program's buffers (Input, Upstream), put there on the
// device: received from the neighbouring stages, or copied.
func (e *Program) RunStageLoaded(y []float32, seed, stream uint64) (float32, error) {
	if err := e.checkLabels(y); err != nil {
		return 0, err
	}
	if err := e.writeLabels(y); err != nil {
		return 0, err
	}
	if err := e.exec(seed, stream, nil); err != nil {
		return 0, err
	}
	return e.Loss()
}

// Input is the program's input buffer ([Batch, features]).
func (e *Program) Input() Tensor { return e.vals[e.x] }

// Upstream is the buffer of a stage's output gradient G (training, not the
// last stage); the zero Tensor elsewhere.
func (e *Program) Upstream() Tensor {
	if e.up < 0 {
		return Tensor{}
	}
	return e.vals[e.up]
}

func (e *Program) launch(x, y, g []float32, seed, stream uint64, gradReady func(param int) error) error {
	if len(x) != e.vals[e.x].Size() {
		return fmt.Errorf("executor: %d inputs for a program of batch %d that takes %d", len(x), e.Batch, e.vals[e.x].Size())
	}
	wantG := 0
	if e.up >= 0 {
		wantG = e.vals[e.up].Size()
	}
	if len(g) != wantG {
		return fmt.Errorf("executor: an output gradient of %d values for a program that takes %d", len(g), wantG)
	}
	if err := e.checkLabels(y); err != nil {
		return err
	}
	// From page-locked memory (device.Pinner) the copies are queued with
	// the kernels, and the host goes on at once.
	err := e.timed("upload the batch", 0, func() error {
		if err := device.WriteAsync(e.dev, e.vals[e.x].Buf, x); err != nil {
			return err
		}
		if e.up >= 0 {
			if err := device.WriteAsync(e.dev, e.vals[e.up].Buf, g); err != nil {
				return err
			}
		}
		return e.writeLabels(y)
	})
	if err != nil {
		return err
	}
	return e.exec(seed, stream, gradReady)
}

// Profile makes the program time its work into p (nil: stop); see Profile.
func (e *Program) Profile(p *Profile) {
	e.prof = p
	if p == nil || e.profNames != nil {
		return
	}
	e.profNames = make([]string, len(e.ops))
	for i, op := range e.ops {
		if op == nil {
			continue
		}
		in := make([][]int, len(e.ins[i]))
		for j, t := range e.ins[i] {
			in[j] = t.Shape
		}
		e.profNames[i] = opName(op, in, e.layout.Nodes[i].Op.Attrs())
	}
}

// timed runs fn, through the profile when there is one.
func (e *Program) timed(name string, flops int64, fn func() error) error {
	if e.prof == nil {
		return fn()
	}
	return e.prof.Time(e.dev, name, flops, fn)
}

// writeLabels queues the upload of y, checked (programs with labels).
func (e *Program) writeLabels(y []float32) error {
	if e.y < 0 {
		return nil
	}
	return device.WriteAsync(e.dev, e.vals[e.y].Buf, y)
}

// checkLabels checks that y holds a class index per sample, or is empty
// for a program without labels.
func (e *Program) checkLabels(y []float32) error {
	wantY := 0
	if e.y >= 0 {
		wantY = e.Batch
	}
	if len(y) != wantY {
		return fmt.Errorf("executor: %d labels for a program of batch %d that takes %d", len(y), e.Batch, wantY)
	}
	classes := e.vals[e.layout.Out].Shape
	for i, v := range y {
		if v < 0 || v != float32(math.Trunc(float64(v))) || int(v) >= classes[len(classes)-1] {
			return fmt.Errorf("executor: label %v of sample %d is not a class of this model (0 to %d)", v, i, classes[len(classes)-1]-1)
		}
	}
	return nil
}

// exec draws the dropout masks and runs the ops.
func (e *Program) exec(seed, stream uint64, gradReady func(param int) error) error {
	e.sync.runs++
	var err error
	if len(e.masks) > 0 {
		err = e.timed("dropout masks", 0, e.drawMasks(seed, stream))
	}
	if err != nil {
		return err
	}
	for i, op := range e.ops {
		if op == nil {
			continue
		}
		run := func() error { return op.Run(e.dev, e.ins[i], e.vals[i]) }
		if e.prof != nil {
			err = e.prof.Time(e.dev, e.profNames[i], nodeFLOPs(e.layout, e.layout.Nodes[i]), run)
		} else {
			err = run()
		}
		if err != nil {
			return fmt.Errorf("executor: %s: %w", op.Kind, err)
		}
		if pi, ok := e.gradOf[i]; ok && gradReady != nil {
			if err := gradReady(pi); err != nil {
				return err
			}
		}
	}
	e.runs++
	return nil
}

// drawMasks returns the work that draws the dropout masks of a run.
func (e *Program) drawMasks(seed, stream uint64) func() error {
	return func() error {
		for j, i := range e.masks {
			n := e.layout.Nodes[i]
			size := e.vals[i].Size()
			if err := e.dev.Launch("dropout_mask", size, e.vals[i].Buf, size, float32(n.DropP), seed, stream*uint64(len(e.masks))+uint64(j)); err != nil {
				return err
			}
		}
		return nil
	}
}

// Grad is parameter i's gradient from the last run (training programs).
func (e *Program) Grad(i int) Tensor { return e.vals[e.layout.Grads[i]] }

// Grads are all the parameters' gradients, in Model.Params order.
func (e *Program) Grads() []Tensor {
	g := make([]Tensor, len(e.layout.Grads))
	for i := range g {
		g[i] = e.Grad(i)
	}
	return g
}

// Logits copies the last run's logits into dst ([Batch, classes]).
func (e *Program) Logits(dst []float32) error { return e.dev.Read(dst, e.Out().Buf) }

// Out is the last run's output: the logits, or a stage's activations.
func (e *Program) Out() Tensor { return e.vals[e.layout.Out] }

// DX is the gradient of the input from the last run of a training program
// of a stage after the first; the zero Tensor elsewhere.
func (e *Program) DX() Tensor {
	if e.layout.DX < 0 {
		return Tensor{}
	}
	return e.vals[e.layout.DX]
}

// Bytes is the device memory the program holds: its values' buffers and
// the ops' shared workspace (the parameters are the model's).
func (e *Program) Bytes() int64 {
	var n int64
	for _, b := range e.owned {
		n += 4 * int64(b.Len())
	}
	return n
}

// Free releases the program's memory (not the parameters').
func (e *Program) Free() {
	for _, b := range e.owned {
		e.dev.Free(b)
	}
	for _, op := range e.ops {
		if op != nil {
			op.Free(e.dev)
		}
	}
	e.owned, e.ops = nil, nil
}

// Optimizer is trainer/optim's optimiser as fused kernels: the state lives
// on the device, and each step computes what trainer/optim computes, in
// the same order and roundings.
type Optimizer struct {
	dev   device.Device
	name  string
	cfg   optim.Config
	state [][]device.Buffer // per parameter: momentum buffer, or Adam's m and v
	step  int64
	// buffer marks the buffers (SetBuffers): Step copies their "gradient"
	// into them, as trainer/optim does (see optim.Param.Buffer).
	buffer []bool
}

// SetBuffers marks which of the parameters are buffers (a BatchNorm's
// running statistics): Step sets each to its gradient slot's values, which
// hold the buffer as the ranks averaged it, instead of optimising it.
func (o *Optimizer) SetBuffers(mask []bool) error {
	if len(mask) != len(o.state) {
		return fmt.Errorf("executor: %d buffer flags for an optimiser of %d parameters", len(mask), len(o.state))
	}
	o.buffer = append([]bool(nil), mask...)
	return nil
}

// NewOptimizer makes cfg's optimiser for params on dev.
func NewOptimizer(dev device.Device, cfg optim.Config, params []Tensor) (*Optimizer, error) {
	// trainer/optim validates the configuration and fills the defaults.
	probe := make([]optim.Param, len(params))
	for i, p := range params {
		probe[i] = optim.Param{Name: fmt.Sprint(i), Data: make([]float32, 1), Grad: make([]float32, 1)}
		_ = p
	}
	if _, err := optim.New(cfg, probe); err != nil {
		return nil, err
	}
	o := &Optimizer{dev: dev, name: strings.ToLower(strings.TrimSpace(cfg.Name)), cfg: cfg}
	if o.name != optim.SGD {
		if o.cfg.Beta1 == 0 {
			o.cfg.Beta1 = optim.DefaultBeta1
		}
		if o.cfg.Beta2 == 0 {
			o.cfg.Beta2 = optim.DefaultBeta2
		}
		if o.cfg.Eps == 0 {
			o.cfg.Eps = optim.DefaultEps
		}
	}
	bufs := 0
	switch {
	case o.name == optim.SGD && cfg.Momentum != 0:
		bufs = 1
	case o.name != optim.SGD:
		bufs = 2
	}
	for _, p := range params {
		var st []device.Buffer
		for range bufs {
			b, err := dev.Alloc(p.Size())
			if err != nil {
				o.Free()
				return nil, err
			}
			st = append(st, b)
		}
		o.state = append(o.state, st)
	}
	return o, nil
}

// Step updates params from grads with learning rate lr.
func (o *Optimizer) Step(params, grads []Tensor, lr float64) error {
	if len(params) != len(o.state) || len(grads) != len(params) {
		return fmt.Errorf("executor: optimiser of %d parameters stepped with %d parameters and %d gradients", len(o.state), len(params), len(grads))
	}
	for i, p := range params {
		n := p.Size()
		var err error
		switch {
		case o.buffer != nil && o.buffer[i]:
			if grads[i].Buf != p.Buf {
				err = o.dev.Launch("copy_f32", n, grads[i].Buf, p.Buf, n)
			}
		case o.name == optim.SGD && o.cfg.Momentum == 0:
			err = o.dev.Launch("sgd", n, p.Buf, grads[i].Buf, n, float32(-lr), float32(o.cfg.WeightDecay))
		case o.name == optim.SGD:
			err = o.dev.Launch("sgd_momentum", n, p.Buf, grads[i].Buf, o.state[i][0], n, float32(-lr), float32(o.cfg.WeightDecay),
				float32(o.cfg.Momentum), float32(1-o.cfg.Dampening), o.cfg.Nesterov, o.step == 0)
		default:
			t := float64(o.step + 1)
			bc1 := 1 - math.Pow(o.cfg.Beta1, t)
			bc2 := 1 - math.Pow(o.cfg.Beta2, t)
			var wd, decay float32 = 0, 1
			if o.name == optim.AdamW {
				decay = float32(1 - lr*o.cfg.WeightDecay)
			} else {
				wd = float32(o.cfg.WeightDecay)
			}
			err = o.dev.Launch("adam", n, p.Buf, grads[i].Buf, o.state[i][0], o.state[i][1], n, float32(-(lr / bc1)),
				float32(math.Sqrt(bc2)), float32(o.cfg.Beta1), float32(o.cfg.Beta2), float32(1-o.cfg.Beta1), float32(1-o.cfg.Beta2),
				float32(o.cfg.Eps), wd, decay)
		}
		if err != nil {
			return err
		}
	}
	o.step++
	return nil
}

// Free releases the optimiser's state.
func (o *Optimizer) Free() {
	for _, st := range o.state {
		for _, b := range st {
			o.dev.Free(b)
		}
	}
	o.state = nil
}

// stateNames are trainer/optim's names of parameter name's state tensors.
func (o *Optimizer) stateNames(name string) []string {
	switch {
	case o.name == optim.SGD && o.cfg.Momentum == 0:
		return nil
	case o.name == optim.SGD:
		return []string{name + ".momentum_buffer"}
	default:
		return []string{name + ".exp_avg", name + ".exp_avg_sq"}
	}
}

// State downloads the optimiser's state under trainer/optim's names
// (names: the parameters' names), with its step count: what a checkpoint
// holds.
func (o *Optimizer) State(names []string) (map[string][]float32, int64, error) {
	if len(names) != len(o.state) {
		return nil, 0, fmt.Errorf("executor: %d names for %d parameters", len(names), len(o.state))
	}
	st := map[string][]float32{}
	for i, name := range names {
		for j, sn := range o.stateNames(name) {
			b := o.state[i][j]
			v := make([]float32, b.Len())
			if err := o.dev.Read(v, b); err != nil {
				return nil, 0, err
			}
			st[sn] = v
		}
	}
	return st, o.step, nil
}

// LoadState uploads state saved by trainer/optim or State. Every tensor is
// checked before any is written.
func (o *Optimizer) LoadState(names []string, st map[string][]float32, step int64) error {
	if len(names) != len(o.state) {
		return fmt.Errorf("executor: %d names for %d parameters", len(names), len(o.state))
	}
	for i, name := range names {
		for j, sn := range o.stateNames(name) {
			if v, ok := st[sn]; !ok || len(v) != o.state[i][j].Len() {
				return fmt.Errorf("executor: optimiser state %q is missing or has %d values, want %d", sn, len(v), o.state[i][j].Len())
			}
		}
	}
	for i, name := range names {
		for j, sn := range o.stateNames(name) {
			if err := o.dev.Write(o.state[i][j], st[sn]); err != nil {
				return err
			}
		}
	}
	o.step = step
	return nil
}

// FLOPs is the number of floating-point operations of one run of the
// program's matrix products (Linear, MatMul and the convolutions, counted
// as 2·m·n·k each): the model FLOPs that utilisation figures divide by the
// device's peak. Elementwise ops are left out, as is usual.
func FLOPs(l *graph.Layout) int64 {
	var f int64
	for _, n := range l.Nodes {
		f += nodeFLOPs(l, n)
	}
	return f
}

// nodeFLOPs is FLOPs of one node: 0 but for the matrix products.
func nodeFLOPs(l *graph.Layout, n graph.Node) int64 {
	if n.Role != graph.RoleOp {
		return 0
	}
	in := func(i int) []int { return l.Nodes[n.Inputs[i]].Shape }
	switch n.Op.Kind() {
	case graph.OpLinear: // X[N,in] W[out,in]
		return 2 * int64(in(0)[0]) * int64(in(0)[1]) * int64(in(1)[0])
	case graph.OpMatMul: // out [m,n], inner k
		a := in(0)
		k := a[1]
		if t, _ := n.Op.Attrs()["trans_a"].(bool); t {
			k = a[0]
		}
		return 2 * int64(n.Shape[0]) * int64(n.Shape[1]) * int64(k)
	case graph.OpConv2D: // X[N,C,H,W] W[K,C,kh,kw] -> [N,K,OH,OW]
		w := in(1)
		return 2 * int64(size(n.Shape)) * int64(w[1]*w[2]*w[3])
	case graph.OpConv2DGradInput: // dY[N,K,OH,OW], W -> dX: the same products as the forward
		w := in(1)
		return 2 * int64(size(in(0))) * int64(w[1]*w[2]*w[3])
	case graph.OpConv2DGradW: // X, dY[N,K,OH,OW] -> dW[K,C,kh,kw]
		return 2 * int64(size(in(1))) * int64(n.Shape[1]*n.Shape[2]*n.Shape[3])
	}
	return 0
}
