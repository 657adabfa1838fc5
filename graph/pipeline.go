package graph

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// The registrations of this file's ops (see OpDef).
func init() {
	registerOp(OpDef{Kind: OpDot, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newDot(d), nil
		}})
	registerOp(OpDef{Kind: OpDotGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return &dotGradOp{base: newBase(OpDotGrad, nil, tt(d), tt(d), scalarT)}, nil
		}})
}

// Stage is a contiguous run of a model's layers, for pipeline (model)
// parallelism: stage k takes stage k−1's output activations (stage 0 the
// data), and sends back the gradient of its input. The parameters are the
// model's, partitioned: Params lists the indices (into Model.Params) that
// this stage owns.
type Stage struct {
	Model       *Model
	Index, Of   int
	first, last int   // layers [first, last)
	Params      []int // indices into Model.Params
	InShape     []int // per-sample input shape; stage 0: the data
	OutShape    []int // per-sample output shape
	progs       map[stageKey]*StageProgram
}

// stageKey is a stage program's batch size and what it computes.
type stageKey struct {
	batch          int
	dropout, grads bool
}

// ErrTooFewLayers is returned by Stages when the model has fewer layers
// with parameters than stages.
var ErrTooFewLayers = errors.New("the model has fewer parametrised layers than pipeline stages")

// Stages splits the model into n consecutive stages balanced by parameter
// count; every stage holds at least one layer with parameters.
func (m *Model) Stages(n int) ([]*Stage, error) {
	if m.progs == nil {
		return nil, ErrNotBuilt
	}
	var paramLayers []int
	owned := map[int][]int{} // layer -> param indices
	user := map[int]int{}    // param -> the layer that uses it
	for i, ps := range m.owned {
		if len(ps) == 0 {
			continue
		}
		paramLayers = append(paramLayers, i)
		owned[i] = ps
		for _, p := range ps {
			if j, ok := user[p]; ok && n > 1 {
				return nil, fmt.Errorf("graph: %d stages for %s: parameter %q is used by %s and %s; pipeline stages cut between layers that share no parameter",
					n, m.Spec.Kind, m.Params[p].Name, m.blockName(j), m.blockName(i))
			}
			user[p] = i
		}
	}
	if n < 1 || n > len(paramLayers) {
		return nil, fmt.Errorf("graph: %d stages for %s: %w (%d)", n, m.Spec.Kind, ErrTooFewLayers, len(paramLayers))
	}
	size := func(layer int) int {
		s := 0
		for _, p := range owned[layer] {
			s += m.Params[p].Size()
		}
		return s
	}
	total := 0
	for _, l := range paramLayers {
		total += size(l)
	}
	// Cut before parametrised layers, greedily towards equal parameter counts.
	cuts := []int{0}
	acc := 0
	for j, l := range paramLayers {
		left := len(paramLayers) - j // parametrised layers from here on
		need := n - len(cuts)        // stages still to open after the current one
		if j > 0 && need > 0 && (acc >= total*len(cuts)/n || left == need) {
			cuts = append(cuts, l)
		}
		acc += size(l)
	}
	cuts = append(cuts, len(m.blocks))
	stages := make([]*Stage, n)
	for k := 0; k < n; k++ {
		s := &Stage{Model: m, Index: k, Of: n, first: cuts[k], last: cuts[k+1]}
		for i := s.first; i < s.last; i++ {
			s.Params = append(s.Params, owned[i]...)
		}
		slices.Sort(s.Params)
		if k > 0 {
			s.InShape = m.shapes[s.first-1]
		} else {
			s.InShape = []int{m.InputSize()}
		}
		s.OutShape = m.shapes[s.last-1]
		stages[k] = s
	}
	return stages, nil
}

func (m *Model) indexOf(p *Param) int {
	for i, q := range m.Params {
		if q == p {
			return i
		}
	}
	return -1
}

// StageProgram is a stage compiled for one batch size. Fill X (the data,
// or the previous stage's output), and Y on the last stage; for training
// on other stages also G, the gradient of this stage's output. Run, then
// read Out (forward output), DX (gradient of X, training, stage > 0) and
// Grad(i) for the stage's i-th parameter (Stage.Params order).
type StageProgram struct {
	Batch   int
	Train   bool
	X, Y, G []float32
	g       *G.ExprGraph
	x, y    *G.Node
	up      *G.Node // G's node (training, not the last stage)
	out     *G.Node
	loss    *G.Node   // the last stage's
	grads   []*G.Node // stage params, then X when stage > 0
	hasDX   bool      // grads ends with X's
	paramI  map[*G.Node]int
	masks   []dropMask
	vm      G.VM
	stable  stableGrads
}

// Program returns the stage's program for batch samples, compiled at first
// use: for training (dropout active, gradients) or evaluation. A training
// program of a stage that is not the last computes the gradients of
// cost = Σ output·G, whose gradient is exactly the upstream one.
func (s *Stage) Program(batch int, train bool) (*StageProgram, error) {
	return s.program(stageKey{batch, train, train})
}

// ForwardProgram returns the training forward pass of a stage that is not
// the last: the output with dropout active and no gradients. A pipeline
// runs it to send the activations on, and later the training program on
// the same input to back-propagate; drawn from the same random state,
// their dropout masks are the same, so the gradient is that of the
// activations that were sent.
func (s *Stage) ForwardProgram(batch int) (*StageProgram, error) {
	return s.program(stageKey{batch, true, false})
}

// MaxStagePrograms bounds the programs a stage keeps: a pipeline step uses
// at most two micro-batch sizes in each of three modes, and the last batch
// of an epoch two more. When a new one would pass the bound, the stage
// drops the ones it has.
const MaxStagePrograms = 12

func (s *Stage) program(k stageKey) (*StageProgram, error) {
	if k.batch <= 0 {
		return nil, fmt.Errorf("graph: batch size %d must be positive", k.batch)
	}
	if p, ok := s.progs[k]; ok {
		return p, nil
	}
	p, err := s.compile(k)
	if err != nil {
		return nil, err
	}
	if s.progs == nil || len(s.progs) >= MaxStagePrograms {
		s.progs = map[stageKey]*StageProgram{}
	}
	s.progs[k] = p
	return p, nil
}

func (s *Stage) compile(k stageKey) (*StageProgram, error) {
	compileMu.Lock() // see compileMu
	defer compileMu.Unlock()
	batch, train := k.batch, k.grads
	m := s.Model
	g := G.NewGraph()
	b := newBuilder(m, g, batch, k.dropout)
	b.frozen = k.dropout && !k.grads // the forward pass the training program repeats
	p := &StageProgram{Batch: batch, Train: train, g: g}
	inShape := append([]int{batch}, s.InShape...)
	n := tensor.Shape(inShape).TotalSize()
	p.X = make([]float32, n)
	x := G.NewTensor(g, tensor.Float32, len(inShape), G.WithShape(inShape...), G.WithName("x"),
		G.WithValue(tensor.New(tensor.WithShape(inShape...), tensor.WithBacking(p.X))))
	p.x = x
	if s.Index == 0 {
		b.data[x] = true // the data: its gradient is not needed
	}
	h, err := b.forward(x, s.first, s.last)
	if err != nil {
		return nil, fmt.Errorf("graph: stage %d: %w", s.Index, err)
	}
	p.out = h
	var cost *G.Node
	if s.Index == s.Of-1 {
		p.Y = make([]float32, batch)
		y := G.NewVector(g, tensor.Float32, G.WithShape(batch), G.WithName("y"),
			G.WithValue(tensor.New(tensor.WithShape(batch), tensor.WithBacking(p.Y))))
		if cost, err = G.ApplyOp(newSoftmaxCESmoothed(s.Model.Spec.LabelSmoothing), h, y); err != nil {
			return nil, err
		}
		p.y, p.loss = y, cost
	} else if train {
		p.G = make([]float32, h.Shape().TotalSize())
		gn := G.NewTensor(g, tensor.Float32, h.Dims(), G.WithShape(h.Shape()...), G.WithName("upstream"),
			G.WithValue(tensor.New(tensor.WithShape(h.Shape()...), tensor.WithBacking(p.G))))
		if cost, err = G.ApplyOp(newDot(h.Dims()), h, gn); err != nil {
			return nil, err
		}
		p.up = gn
	}
	p.masks = b.masks
	p.paramI = b.paramIndex()
	if train {
		var dx *G.Node
		if s.Index > 0 {
			dx = x
			p.hasDX = true
		}
		if p.grads, err = b.grads(cost, s.Params, dx); err != nil {
			return nil, fmt.Errorf("graph: stage %d: %w", s.Index, err)
		}
	}
	if err := checkClosed(g); err != nil {
		return nil, err
	}
	p.stable = newStableGrads(p.grads)
	fuseConvBN(g)
	fuseBNReLU(g, append([]*G.Node{p.out, p.loss}, p.grads...)...)
	p.vm = G.NewTapeMachine(g, G.WithEngine(cpuEng))
	return p, nil
}

// Run executes the program; rng draws dropout masks (nil without dropout).
// The loss is the last stage's mean loss (0 elsewhere).
func (p *StageProgram) Run(rng *rand.Rand) (float32, error) {
	if err := drawMasks(p.masks, rng); err != nil {
		return 0, err
	}
	return p.exec()
}

// RunAt runs the program with each sample's dropout masks drawn from its
// own stream, as Program.RunAt: row0 is the micro-batch's first sample's
// place in the whole batch.
func (p *StageProgram) RunAt(seed, step uint64, row0 int) (float32, error) {
	drawMaskRows(p.masks, p.Batch, seed, step, row0)
	return p.exec()
}

func (p *StageProgram) exec() (float32, error) {
	defer p.vm.Reset()
	if err := p.vm.RunAll(); err != nil {
		return 0, err
	}
	p.stable.keep()
	if p.loss != nil {
		return scalarOf(p.loss.Value()), nil
	}
	return 0, nil
}

// Out is the stage's output of the last Run (logits on the last stage).
func (p *StageProgram) Out() []float32 { return f32(p.out.Value()) }

// Grad is the gradient of the stage's i-th parameter from the last Run.
func (p *StageProgram) Grad(i int) []float32 { return p.stable.get(i) }

// DX is the gradient of X from the last Run of a training program of a
// stage after the first.
func (p *StageProgram) DX() []float32 { return p.stable.get(len(p.grads) - 1) }

// ---- Dot: Σ X·G, the cost of a pipeline stage that is not the last ----

type dotOp struct {
	base
	sum G.F32
}

func newDot(d int) *dotOp { return &dotOp{base: newBase(OpDot, nil, scalarT, tt(d), tt(d))} }

func (o *dotOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[1])) {
		return nil, fmt.Errorf("%s: shapes %v and %v differ", OpDot, ds[0], ds[1])
	}
	return tensor.ScalarShape(), nil
}

func (o *dotOp) Do(in ...G.Value) (G.Value, error) {
	x, g := f32(in[0]), f32(in[1])
	var s float64
	for i, v := range x {
		s += float64(v) * float64(g[i])
	}
	o.sum = G.F32(s)
	return &o.sum, nil
}

func (o *dotOp) DiffWRT(int) []bool { return []bool{true, false} }

func (o *dotOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(&dotGradOp{base: newBase(OpDotGrad, nil, tt(in[1].Dims()), tt(in[1].Dims()), scalarT)}, in[1], grad)
	return G.Nodes{dx, nil}, err
}

// dotGradOp: dX = G·g.
type dotGradOp struct{ base }

func (o *dotGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[0]).Clone(), nil
}

func (o *dotGradOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	g, s, y := f32(in[0]), scalarOf(in[1]), f32(out)
	for i, v := range g {
		y[i] = v * s
	}
	return out, nil
}

func (o *dotGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *dotGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("DotGrad")
}
