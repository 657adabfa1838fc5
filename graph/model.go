package graph

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sync"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/nn"
)

// Spec describes a model to build: which one (Kind, a name in the
// registry: "mlp", "cnn" or one a program registered) and the settings the
// built-in models read. The input shape and class count usually come from
// the data.
type Spec struct {
	Kind       string  // a registered model: "mlp", "cnn", or a program's own (see Register)
	Hidden     []int   // mlp: hidden widths (default 256); cnn: the fully connected width (default 128)
	Activation string  // "relu" (default), "tanh" or "sigmoid"
	Dropout    float64 // dropout probability after each hidden activation; 0 disables
	InC        int     // input channels (default 1)
	InH, InW   int     // input height and width (default 28x28)
	Classes    int     // output classes (default 10)
	Depth      int     // resnet: 6n+2 layers, 20 (default), 32, 56, ...
	// LabelSmoothing is the training loss's label smoothing in [0, 1):
	// the cross-entropy against (1-ε)·onehot + ε/K, as PyTorch's
	// cross_entropy(label_smoothing=ε). Evaluation programs report the
	// same loss.
	LabelSmoothing float64
}

// ErrNotBuilt is returned for a Model that New or Build did not make (a
// zero or hand-assembled Model has no modules to compile).
var ErrNotBuilt = errors.New("graph: the model was not made by graph.New or graph.Build; write it with package graph/nn and build it with those")

// ErrUnknownModel is returned by New for a model kind that is not registered.
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
		switch s.Kind {
		case "cnn":
			s.Hidden = []int{128}
		case "mlp":
			s.Hidden = []int{256}
		}
	}
	return s
}

// Input is the per-sample input shape: [InC, InH, InW].
func (s Spec) Input() []int { return []int{s.InC, s.InH, s.InW} }

// Param is one named parameter or buffer. Data is its value, row-major,
// shared by every program of the model; its name and position in
// Model.Params are stable (checkpoints, gradient buckets and device
// executors rely on them).
type Param struct {
	Name   string
	Shape  []int
	Data   []float32
	Init   nn.Init // what Model.Init draws it from
	Buffer bool    // checkpointed, not optimised
	decl   *nn.Param
	value  *tensor.Dense
}

// Size is the number of elements.
func (p *Param) Size() int { return len(p.Data) }

// Model is a model ready to compile: its modules and named, ordered
// parameters. It compiles one Program per (batch size, train/eval) on
// demand.
type Model struct {
	Spec   Spec
	Params []*Param
	blocks []nn.Module // the root module, or a root Sequential's layers
	byDecl map[*nn.Param]*Param
	owned  [][]int   // per block: the parameters it uses first (Params indices)
	shapes [][]int   // per block: its per-sample output shape
	fp     Footprint // from the shapes (see Footprint)
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

// Init sets every parameter from seed, deterministically: each draws from
// its own PCG stream, seeded by seed and its name alone, so adding,
// removing or reordering other parameters does not change it.
func (m *Model) Init(seed uint64) {
	for _, p := range m.Params {
		h := fnv.New64a()
		h.Write([]byte(p.Name))
		r := rand.New(rand.NewPCG(seed, h.Sum64()))
		p.Init.Fill(p.Data, r)
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

// ---- programs ----

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
	sync   *bnSync  // its BatchNorm layers' (SyncBatchNorm)
	stable stableGrads
}

// stableGrads keeps the gradients that Gorgonia's own operators compute
// (a model written with them) in buffers of their own: Gorgonia gives
// such a node a new value each run, and Grad's slices must stay the same
// from run to run (an optimiser holds them).
type stableGrads struct {
	of  []*G.Node   // the gradient nodes
	buf [][]float32 // per node: its copy, nil for the set's ops and parameters (whose values stay put)
}

func newStableGrads(grads []*G.Node) stableGrads {
	s := stableGrads{of: grads, buf: make([][]float32, len(grads))}
	for i, n := range grads {
		if n == nil || n.Op() == nil {
			continue
		}
		if _, ours := n.Op().(Op); !ours {
			s.buf[i] = make([]float32, max(n.Shape().TotalSize(), 1))
		}
	}
	return s
}

// keep copies the last run's values of Gorgonia's gradient nodes.
func (s stableGrads) keep() {
	for i, b := range s.buf {
		if b != nil {
			copy(b, f32(s.of[i].Value()))
		}
	}
}

// get is gradient i: its copy, or the node's value.
func (s stableGrads) get(i int) []float32 {
	if s.buf[i] != nil {
		return s.buf[i]
	}
	if v := s.of[i].Value(); v != nil {
		return f32(v)
	}
	return nil
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
	seen := map[uintptr]bool{} // a value two nodes share (a BatchNorm fused with its ReLU) counts once
	for _, nd := range p.g.AllNodes() {
		if _, ok := p.paramI[nd]; ok {
			continue
		}
		if v := nd.Value(); v != nil && !seen[v.Uintptr()] {
			seen[v.Uintptr()] = true
			n += int64(v.MemSize())
		}
		if w, ok := nd.Op().(interface{ workspaceBytes() int64 }); ok {
			n += w.workspaceBytes()
		}
	}
	return n
}

// BytesPerSample is what one more sample in the batch costs: Bytes less
// what does not grow with the batch (the parameter gradients, the
// convolutions' per-CPU scratch), over Batch. Like Bytes it is whole only
// after the first Run.
func (p *Program) BytesPerSample() float64 {
	n := p.Bytes()
	for _, g := range p.grads {
		if v := g.Value(); v != nil {
			if _, isParam := p.paramI[g]; !isParam { // a buffer's slot is the buffer
				n -= int64(v.MemSize())
			}
		}
	}
	for _, nd := range p.g.AllNodes() {
		if w, ok := nd.Op().(interface{ fixedBytes() int64 }); ok {
			n -= w.fixedBytes()
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
	if m.progs == nil {
		return nil, ErrNotBuilt
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
	b := newBuilder(m, g, batch, train)
	p := &Program{Batch: batch, Train: train, g: g, sync: b.sync}
	p.X = make([]float32, batch*m.InputSize())
	p.Y = make([]float32, batch)
	x := G.NewMatrix(g, tensor.Float32, G.WithShape(batch, m.InputSize()), G.WithName("x"),
		G.WithValue(tensor.New(tensor.WithShape(batch, m.InputSize()), tensor.WithBacking(p.X))))
	y := G.NewVector(g, tensor.Float32, G.WithShape(batch), G.WithName("y"),
		G.WithValue(tensor.New(tensor.WithShape(batch), tensor.WithBacking(p.Y))))
	b.data[x] = true
	h, err := b.forward(x, 0, len(m.blocks))
	if err != nil {
		return nil, err
	}
	p.logits = h
	if p.loss, err = G.ApplyOp(newSoftmaxCESmoothed(m.Spec.LabelSmoothing), h, y); err != nil {
		return nil, fmt.Errorf("graph: loss: %w", err)
	}
	p.masks = b.masks
	p.x, p.y = x, y
	p.paramI = b.paramIndex()
	if train {
		if p.grads, err = b.grads(p.loss, nil, nil); err != nil {
			return nil, err
		}
	}
	if err := checkClosed(g); err != nil {
		return nil, err
	}
	p.stable = newStableGrads(p.grads)
	fuseConvBN(g)
	fuseBNReLU(g, append([]*G.Node{p.logits, p.loss}, p.grads...)...)
	p.vm = G.NewTapeMachine(g, G.WithEngine(cpuEng))
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

// checkClosed verifies that every op in the graph belongs to the op set
// or is a Gorgonia operator the set recognises (see gorgonia.go).
func checkClosed(g *G.ExprGraph) error {
	if err := checkNodes(g, g.AllNodes()); err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	return nil
}

// checkNodes is checkClosed for some nodes of g.
func checkNodes(g *G.ExprGraph, nodes G.Nodes) error {
	for _, n := range nodes {
		if n.Op() == nil {
			continue
		}
		// Constants (the gradient seed) have arity 0; variadic operators
		// (Concat) say -1.
		if _, ok := n.Op().(Op); !ok && n.Op().Arity() != 0 {
			if _, ok := recogniseNode(g, n); ok {
				continue
			}
			if _, ok := constantOf(n); ok {
				continue
			}
			return refusal(g, n)
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
		} else if sorted[i].Op() == nil || sorted[i].Op().Arity() == 0 {
			continue
		} else if op, ok := recogniseNode(p.g, sorted[i]); ok {
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
	return p.exec()
}

func (p *Program) exec() (float32, error) {
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
	p.stable.keep()
	return scalarOf(p.loss.Value()), nil
}

// RunAt executes the program once on X and Y with the dropout masks of
// each sample drawn from its own stream: row i from (seed, step, row0+i).
// A batch split across ranks or micro-batches, each part run with row0 at
// its first sample's place in the batch, then draws exactly the masks of
// the whole batch in one process. It returns the mean loss over the batch.
func (p *Program) RunAt(seed, step uint64, row0 int) (float32, error) {
	drawMaskRows(p.masks, p.Batch, seed, step, row0)
	return p.exec()
}

// drawMaskRows fills the masks row by row: row i of mask j from the
// stream (seed, step, row0+i, j); 0 with probability p, else 1/(1-p).
func drawMaskRows(masks []dropMask, batch int, seed, step uint64, row0 int) {
	var pcg rand.PCG
	r := rand.New(&pcg)
	for j, mk := range masks {
		per := len(mk.data) / batch
		for i := 0; i < batch; i++ {
			pcg.Seed(seed^(uint64(j)+1)*0x9e3779b97f4a7c15, step<<32^uint64(row0+i))
			fillMask(mk.data[i*per:(i+1)*per], mk.p, r)
		}
	}
}

// fillMask sets each value of m to 0 with probability p, else 1/(1-p),
// drawing from r.
func fillMask(m []float32, p float64, r *rand.Rand) {
	scale := float32(1 / (1 - p))
	for k := range m {
		if r.Float64() < p {
			m[k] = 0
		} else {
			m[k] = scale
		}
	}
}

// drawMasks fills the dropout masks from rng: 0 with probability p, else
// 1/(1-p).
func drawMasks(masks []dropMask, rng *rand.Rand) error {
	for _, mk := range masks {
		if rng == nil {
			return errors.New("graph: a training program with dropout needs an rng")
		}
		fillMask(mk.data, mk.p, rng)
	}
	return nil
}

// Logits returns the [Batch, Classes] output of the last Run.
func (p *Program) Logits() []float32 { return f32(p.logits.Value()) }

// Grad returns the gradient of parameter i (Model.Params order) from the
// last Run of a training program (nil before the first Run). The slice is
// the same from run to run.
func (p *Program) Grad(i int) []float32 {
	if p.runs == 0 {
		return nil
	}
	return p.stable.get(i)
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
