package graph

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Spec describes a built-in model.
type Spec struct {
	Kind       string  // "mlp" or "cnn"
	Hidden     []int   // mlp: hidden widths (default 256); cnn: the fully connected width (default 128)
	Activation string  // "relu" (default), "tanh" or "sigmoid"
	Dropout    float64 // dropout probability after each hidden activation; 0 disables
	InC        int     // input channels (default 1)
	InH, InW   int     // input height and width (default 28x28)
	Classes    int     // output classes (default 10)
}

// Models lists the built-in model kinds.
var Models = []string{"mlp", "cnn"}

// ErrUnknownModel is returned by New for a model kind that is not built in.
var ErrUnknownModel = errors.New("unknown model")

func (s Spec) withDefaults() Spec {
	if s.InC == 0 {
		s.InC = 1
	}
	if s.InH == 0 {
		s.InH = 28
	}
	if s.InW == 0 {
		s.InW = 28
	}
	if s.Classes == 0 {
		s.Classes = 10
	}
	if s.Activation == "" {
		s.Activation = "relu"
	}
	if len(s.Hidden) == 0 {
		if s.Kind == "cnn" {
			s.Hidden = []int{128}
		} else {
			s.Hidden = []int{256}
		}
	}
	return s
}

// Param is one named parameter. Data is its value, row-major, shared by
// every program of the model; its name and position in Model.Params are
// stable (checkpoints, gradient buckets and device executors rely on them).
type Param struct {
	Name  string
	Shape []int
	Data  []float32
	FanIn int
	value *tensor.Dense
}

// Size is the number of elements.
func (p *Param) Size() int { return len(p.Data) }

// layer adds itself to a graph being built.
type layer interface {
	apply(b *builder, x *G.Node) (*G.Node, error)
}

// Model is a built-in model: its layers and named, ordered parameters. It
// compiles one Program per (batch size, train/eval) on demand.
type Model struct {
	Spec   Spec
	Params []*Param
	layers []layer
	progs  map[progKey]*Program
	used   []progKey // least recently used first
	pool   bufPool   // the programs' buffers (see mem.go)
}

// MaxPrograms is how many compiled programs a model keeps; the least
// recently used one is dropped (and its buffers freed) beyond that. Load
// balancing changes a rank's batch size from time to time, which would
// otherwise keep every size's buffers alive.
const MaxPrograms = 12

type progKey struct {
	batch int
	train bool
}

// New builds the model described by spec and initialises its parameters
// from seed (PyTorch's default scheme: weights and biases uniform in
// ±1/sqrt(fan_in)).
func New(spec Spec, seed uint64) (*Model, error) {
	spec = spec.withDefaults()
	m := &Model{Spec: spec, progs: map[progKey]*Program{}}
	act, ok := map[string]Kind{"relu": OpReLU, "tanh": OpTanh, "sigmoid": OpSigmoid}[spec.Activation]
	if !ok {
		return nil, fmt.Errorf("graph: unknown activation %q (valid: relu, tanh, sigmoid)", spec.Activation)
	}
	if spec.Dropout < 0 || spec.Dropout >= 1 {
		return nil, fmt.Errorf("graph: dropout probability %v is outside [0,1)", spec.Dropout)
	}
	for _, h := range spec.Hidden {
		if h <= 0 {
			return nil, fmt.Errorf("graph: hidden width %d must be positive", h)
		}
	}
	switch spec.Kind {
	case "mlp":
		in := spec.InC * spec.InH * spec.InW
		m.layers = append(m.layers, flatten{})
		for i, h := range spec.Hidden {
			m.layers = append(m.layers, m.linear(fmt.Sprintf("fc%d", i+1), in, h), activation{act})
			if spec.Dropout > 0 {
				m.layers = append(m.layers, dropout{spec.Dropout})
			}
			in = h
		}
		m.layers = append(m.layers, m.linear(fmt.Sprintf("fc%d", len(spec.Hidden)+1), in, spec.Classes))
	case "cnn":
		// LeNet-5 style: conv5x5(pad 2)-act-pool2-conv5x5-act-pool2-fc-act-fc.
		c1, c2 := 16, 32
		h, w := spec.InH/2, spec.InW/2 // after conv1 (same size) and pool
		h, w = (h-4)/2, (w-4)/2        // after conv2 (valid) and pool
		if h <= 0 || w <= 0 {
			return nil, fmt.Errorf("graph: cnn needs inputs of at least 12x12, got %dx%d", spec.InH, spec.InW)
		}
		m.layers = append(m.layers,
			m.conv("conv1", spec.InC, c1, 5, 1, 2), activation{act}, maxPool{2},
			m.conv("conv2", c1, c2, 5, 1, 0), activation{act}, maxPool{2},
			flatten{},
			m.linear("fc1", c2*h*w, spec.Hidden[0]), activation{act})
		if spec.Dropout > 0 {
			m.layers = append(m.layers, dropout{spec.Dropout})
		}
		m.layers = append(m.layers, m.linear("fc2", spec.Hidden[0], spec.Classes))
	default:
		return nil, fmt.Errorf("graph: %w %q (valid: %s)", ErrUnknownModel, spec.Kind, strings.Join(Models, ", "))
	}
	m.Init(seed)
	return m, nil
}

func (m *Model) param(name string, fanIn int, shape ...int) *Param {
	n := 1
	for _, s := range shape {
		n *= s
	}
	p := &Param{Name: name, Shape: shape, Data: make([]float32, n), FanIn: fanIn}
	p.value = tensor.New(tensor.WithShape(shape...), tensor.WithBacking(p.Data))
	m.Params = append(m.Params, p)
	return p
}

func (m *Model) linear(name string, in, out int) linear {
	return linear{w: m.param(name+".weight", in, out, in), b: m.param(name+".bias", in, out)}
}

func (m *Model) conv(name string, in, out, k, stride, pad int) conv {
	return conv{w: m.param(name+".weight", in*k*k, out, in, k, k), b: m.param(name+".bias", in*k*k, out), stride: stride, pad: pad}
}

// Init sets every parameter from seed, deterministically: parameter i draws
// from its own stream, so adding a layer does not change the others.
func (m *Model) Init(seed uint64) {
	for i, p := range m.Params {
		r := rand.New(rand.NewPCG(seed, uint64(i)+0x9e3779b97f4a7c15))
		bound := 1 / math.Sqrt(float64(p.FanIn))
		for j := range p.Data {
			p.Data[j] = float32((2*r.Float64() - 1) * bound)
		}
	}
}

// NumParams is the total number of parameter elements.
func (m *Model) NumParams() int {
	n := 0
	for _, p := range m.Params {
		n += p.Size()
	}
	return n
}

// InputSize is the number of float32 values of one input sample.
func (m *Model) InputSize() int { return m.Spec.InC * m.Spec.InH * m.Spec.InW }

// Param returns the parameter with the given name, or nil.
func (m *Model) Param(name string) *Param {
	for _, p := range m.Params {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// ---- layers ----

type linear struct{ w, b *Param }

func (l linear) apply(b *builder, x *G.Node) (*G.Node, error) {
	return G.ApplyOp(newLinear(b.takeNeedX()), x, b.node(l.w), b.node(l.b))
}

type conv struct {
	w, b        *Param
	stride, pad int
}

func (l conv) apply(b *builder, x *G.Node) (*G.Node, error) {
	if x.Dims() != 4 {
		var err error
		s := b.m.Spec
		if x, err = G.ApplyOp(newReshape(x.Shape(), tensor.Shape{b.batch, s.InC, s.InH, s.InW}), x); err != nil {
			return nil, err
		}
	}
	return G.ApplyOp(newConv2D(l.stride, l.pad, b.takeNeedX()), x, b.node(l.w), b.node(l.b))
}

type activation struct{ kind Kind }

func (l activation) apply(_ *builder, x *G.Node) (*G.Node, error) {
	return G.ApplyOp(newAct(l.kind, x.Dims()), x)
}

type maxPool struct{ k int }

func (l maxPool) apply(_ *builder, x *G.Node) (*G.Node, error) { return G.ApplyOp(newMaxPool(l.k), x) }

type flatten struct{}

func (flatten) apply(b *builder, x *G.Node) (*G.Node, error) {
	s := x.Shape()
	if len(s) == 2 {
		return x, nil
	}
	return G.ApplyOp(newReshape(s, tensor.Shape{s[0], s.TotalSize() / s[0]}), x)
}

type dropout struct{ p float64 }

func (l dropout) apply(b *builder, x *G.Node) (*G.Node, error) {
	if !b.train {
		return x, nil
	}
	mask := b.m.pool.get(x.Shape().TotalSize())
	mv := tensor.New(tensor.WithShape(x.Shape()...), tensor.WithBacking(mask))
	mn := G.NodeFromAny(b.g, mv, G.WithName(fmt.Sprintf("dropout%d.mask", len(b.masks))))
	b.masks = append(b.masks, dropMask{data: mask, p: l.p, node: mn})
	return G.ApplyOp(newMul(x.Dims()), x, mn)
}

// ---- programs ----

type builder struct {
	m     *Model
	g     *G.ExprGraph
	batch int
	train bool
	nodes map[*Param]*G.Node
	needX bool
	masks []dropMask
}

// takeNeedX reports whether the next parametrised layer needs the gradient
// of its input: every one but the first, whose input is data.
func (b *builder) takeNeedX() bool {
	n := b.needX
	b.needX = true
	return n
}

func (b *builder) node(p *Param) *G.Node {
	if n, ok := b.nodes[p]; ok {
		return n
	}
	var n *G.Node
	if len(p.Shape) == 1 {
		n = G.NewVector(b.g, tensor.Float32, G.WithShape(p.Shape...), G.WithName(p.Name), G.WithValue(p.value))
	} else {
		n = G.NewTensor(b.g, tensor.Float32, len(p.Shape), G.WithShape(p.Shape...), G.WithName(p.Name), G.WithValue(p.value))
	}
	b.nodes[p] = n
	return n
}

// paramIndex maps the parameter nodes built so far to their index in
// Model.Params.
func (b *builder) paramIndex() map[*G.Node]int {
	idx := make(map[*G.Node]int, len(b.nodes))
	for i, prm := range b.m.Params {
		if n, ok := b.nodes[prm]; ok {
			idx[n] = i
		}
	}
	return idx
}

type dropMask struct {
	data []float32
	p    float64
	node *G.Node
}

// Program is the model compiled for one batch size, for training (forward,
// loss and gradients, dropout active) or evaluation (forward and loss).
// Fill X and Y, then Run. Programs reuse every buffer from run to run.
type Program struct {
	Batch  int
	Train  bool
	X      []float32 // [Batch, InC·InH·InW] input, normalised
	Y      []float32 // [Batch] class indices
	g      *G.ExprGraph
	vm     G.VM
	logits *G.Node
	loss   *G.Node
	grads  []*G.Node // aligned with Model.Params; nil for eval programs
	masks  []dropMask
	paramI map[*G.Node]int // the parameter nodes, whose values all programs share: their index in Model.Params
	x, y   *G.Node
	runs   int
	pool   *bufPool // the model's
}

// Warm reports whether the program has run before. The first Run of a
// program allocates its buffers and takes several times as long as the
// next ones; timings that stand for the program's speed leave it out.
func (p *Program) Warm() bool { return p.runs > 0 }

// Bytes is the memory the program holds, parameters excluded (every
// program of a model shares them): its node values (input, activations,
// gradients, dropout masks) and its ops' scratch buffers. Node values and
// scratch buffers are allocated by the first Run, so the figure is whole
// only after it. The load balancer divides it by Batch to bound a rank's
// share by its free memory (see BytesPerSample).
func (p *Program) Bytes() int64 {
	var n int64
	for _, nd := range p.g.AllNodes() {
		if _, ok := p.paramI[nd]; ok {
			continue
		}
		if v := nd.Value(); v != nil {
			n += int64(v.MemSize())
		}
		if w, ok := nd.Op().(interface{ workspaceBytes() int64 }); ok {
			n += w.workspaceBytes()
		}
	}
	return n
}

// BytesPerSample is what one more sample in the batch costs: Bytes less
// the parameter gradients (the one part that does not grow with the
// batch), over Batch. Like Bytes it is whole only after the first Run.
func (p *Program) BytesPerSample() float64 {
	n := p.Bytes()
	for _, g := range p.grads {
		if v := g.Value(); v != nil {
			n -= int64(v.MemSize())
		}
	}
	return float64(n) / float64(p.Batch)
}

// Program returns the compiled program for this batch size and mode,
// building it on first use.
func (m *Model) Program(batch int, train bool) (*Program, error) {
	if batch <= 0 {
		return nil, fmt.Errorf("graph: batch size %d must be positive", batch)
	}
	k := progKey{batch, train}
	if p, ok := m.progs[k]; ok {
		m.touch(k)
		return p, nil
	}
	p, err := m.compile(batch, train)
	if err != nil {
		return nil, err
	}
	if len(m.progs) >= MaxPrograms {
		delete(m.progs, m.used[0])
		m.used = m.used[1:]
	}
	m.progs[k] = p
	m.used = append(m.used, k)
	return p, nil
}

// Release drops the compiled program for this batch size and mode, if
// there is one, and keeps its buffers for the next program's first run: a
// load balancer that moves a rank to another batch size releases the old
// one's, and the new program then reuses that memory instead of touching
// fresh pages, which is several times slower (see mem.go). The released
// program must not be run again; a later Program call compiles it anew.
func (m *Model) Release(batch int, train bool) {
	k := progKey{batch, train}
	p, ok := m.progs[k]
	if !ok {
		return
	}
	p.release()
	delete(m.progs, k)
	m.used = slices.DeleteFunc(m.used, func(u progKey) bool { return u == k })
}

// Reserve makes the buffers of programs compiled from now on hold room
// for factor times their batch (at least 1): a load balancer that may
// move a rank from its first batch size to a larger one reserves the room
// up front, so that the move reuses the buffers and writes only the new
// samples' pages (see mem.go). Room that is never used costs address
// space, not memory.
func (m *Model) Reserve(factor float64) {
	m.pool.mu.Lock()
	m.pool.slack = max(factor, 1) - 1
	m.pool.mu.Unlock()
}

// touch marks k as the most recently used program.
func (m *Model) touch(k progKey) {
	if m.used[len(m.used)-1] == k {
		return
	}
	for i, u := range m.used {
		if u == k {
			copy(m.used[i:], m.used[i+1:])
			m.used[len(m.used)-1] = k
			return
		}
	}
}

// compileMu serialises graph building across models: Gorgonia's Grad
// shares constant nodes between graphs (their cached hash is written on
// first use), so two models compiling at once in one process (in-process
// ranks) would race. Compiling takes milliseconds and happens rarely.
var compileMu sync.Mutex

func (m *Model) compile(batch int, train bool) (*Program, error) {
	compileMu.Lock()
	defer compileMu.Unlock()
	g := G.NewGraph()
	b := &builder{m: m, g: g, batch: batch, train: train, nodes: map[*Param]*G.Node{}}
	p := &Program{Batch: batch, Train: train, g: g}
	p.X = make([]float32, batch*m.InputSize())
	p.Y = make([]float32, batch)
	x := G.NewMatrix(g, tensor.Float32, G.WithShape(batch, m.InputSize()), G.WithName("x"),
		G.WithValue(tensor.New(tensor.WithShape(batch, m.InputSize()), tensor.WithBacking(p.X))))
	y := G.NewVector(g, tensor.Float32, G.WithShape(batch), G.WithName("y"),
		G.WithValue(tensor.New(tensor.WithShape(batch), tensor.WithBacking(p.Y))))
	h := x
	var err error
	for i, l := range m.layers {
		if h, err = l.apply(b, h); err != nil {
			return nil, fmt.Errorf("graph: building layer %d of %s: %w", i, m.Spec.Kind, err)
		}
	}
	p.logits = h
	if p.loss, err = G.ApplyOp(newSoftmaxCE(), h, y); err != nil {
		return nil, fmt.Errorf("graph: loss: %w", err)
	}
	p.masks = b.masks
	p.x, p.y = x, y
	p.paramI = b.paramIndex()
	if train {
		wrt := make(G.Nodes, len(m.Params))
		for i, prm := range m.Params {
			wrt[i] = b.node(prm)
		}
		if p.grads, err = G.Grad(p.loss, wrt...); err != nil {
			return nil, fmt.Errorf("graph: gradients: %w", err)
		}
	}
	if err := checkClosed(g); err != nil {
		return nil, err
	}
	p.vm = G.NewTapeMachine(g)
	p.pool = &m.pool
	for _, n := range g.AllNodes() {
		if o, ok := n.Op().(pooled); ok {
			o.setPool(p.pool)
		}
	}
	return p, nil
}

// release gives the program's buffers back to its pool, for the next
// program's first run; the program must not run again.
func (p *Program) release() {
	for _, n := range p.g.AllNodes() {
		if o, ok := n.Op().(pooled); ok {
			o.releaseTo(p.pool)
		}
	}
	for _, mk := range p.masks {
		p.pool.put(mk.data)
	}
	p.masks = nil
	p.vm = nil
}

// checkClosed verifies that every op in the graph belongs to the op set.
func checkClosed(g *G.ExprGraph) error {
	for _, n := range g.AllNodes() {
		if n.Op() == nil {
			continue
		}
		if _, ok := n.Op().(Op); !ok && n.Op().Arity() > 0 { // constants (the gradient seed) have no children
			return fmt.Errorf("graph: node %v uses op %v outside the op set", n, n.Op())
		}
	}
	return nil
}

// Ops lists the op kinds the program executes, in execution order.
func (p *Program) Ops() ([]Kind, error) {
	sorted, err := G.Sort(p.g)
	if err != nil {
		return nil, err
	}
	var ks []Kind
	for i := len(sorted) - 1; i >= 0; i-- {
		if op, ok := sorted[i].Op().(Op); ok {
			ks = append(ks, op.Kind())
		}
	}
	return ks, nil
}

// Run executes the program once on X and Y. rng draws the dropout masks of
// a training program (it may be nil when the model has no dropout). It
// returns the mean loss over the batch.
func (p *Program) Run(rng *rand.Rand) (float32, error) {
	if err := drawMasks(p.masks, rng); err != nil {
		return 0, err
	}
	if p.vm == nil {
		return 0, fmt.Errorf("graph: the %s program of batch %d was released; get a new one from Model.Program", map[bool]string{true: "train", false: "eval"}[p.Train], p.Batch)
	}
	defer p.vm.Reset()
	p.runs++
	err := p.vm.RunAll()
	if p.runs == 1 {
		// The first run took what it could reuse of released programs'
		// buffers; the rest goes to the garbage collector.
		p.pool.trim()
	}
	if err != nil {
		return 0, fmt.Errorf("graph: running %s program (batch %d): %w", map[bool]string{true: "train", false: "eval"}[p.Train], p.Batch, err)
	}
	return scalarOf(p.loss.Value()), nil
}

// drawMasks fills the dropout masks from rng: 0 with probability p, else
// 1/(1-p).
func drawMasks(masks []dropMask, rng *rand.Rand) error {
	for _, mk := range masks {
		if rng == nil {
			return errors.New("graph: a training program with dropout needs an rng")
		}
		scale := float32(1 / (1 - mk.p))
		for i := range mk.data {
			if rng.Float64() < mk.p {
				mk.data[i] = 0
			} else {
				mk.data[i] = scale
			}
		}
	}
	return nil
}

// Logits returns the [Batch, Classes] output of the last Run.
func (p *Program) Logits() []float32 { return f32(p.logits.Value()) }

// Grad returns the gradient of parameter i (Model.Params order) from the
// last Run of a training program (nil before the first Run). The slice is
// the same from run to run.
func (p *Program) Grad(i int) []float32 {
	if v := p.grads[i].Value(); v != nil {
		return f32(v)
	}
	return nil
}

// Correct counts the rows of the last Run whose arg-max logit is the label.
func (p *Program) Correct() int { return CountCorrect(p.Logits(), p.Y, len(p.Logits())/p.Batch) }

// CountCorrect counts the rows of logits ([n, k]) whose largest value (the
// first, on ties) is at the row's label.
func CountCorrect(logits, labels []float32, k int) int {
	c := 0
	for i := range labels {
		row := logits[i*k : (i+1)*k]
		best := 0
		for j, v := range row {
			if v > row[best] {
				best = j
			}
		}
		if best == int(labels[i]) {
			c++
		}
	}
	return c
}
