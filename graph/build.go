package graph

import (
	"errors"
	"fmt"
	"slices"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/nn"
)

// builder adds a model's modules to one program's graph: it is the nn.Ctx
// that Forward sees.
type builder struct {
	m     *Model
	g     *G.ExprGraph
	batch int
	train bool
	nodes map[*Param]*G.Node
	// data holds the nodes computed from the input alone, with no
	// parameter upstream: an op over them needs no gradient of its input
	// (the first Linear or Conv2D does not compute dX).
	data  map[*G.Node]bool
	masks []dropMask
	err   error
	block int // the block being built, for error messages
	// touched records, per block, the parameters it uses (set by the
	// shape trace only)
	touched *[][]int
	sync    *bnSync // the program's BatchNorm synchronisation
	// frozen: a training forward pass whose BatchNorm layers leave their
	// buffers alone (a pipeline stage's, which its training program
	// repeats).
	frozen bool
}

func newBuilder(m *Model, g *G.ExprGraph, batch int, train bool) *builder {
	return &builder{m: m, g: g, batch: batch, train: train, nodes: map[*Param]*G.Node{}, data: map[*G.Node]bool{}, sync: &bnSync{}}
}

var _ nn.Ctx = (*builder)(nil)

func (b *builder) Train() bool    { return b.train }
func (b *builder) Batch() int     { return b.batch }
func (b *builder) Input() []int   { return b.m.Spec.Input() }
func (b *builder) Err() error     { return b.err }
func (b *builder) Fail(err error) { b.fail(err) }

func (b *builder) fail(err error) {
	if b.err == nil && err != nil {
		b.err = err
	}
}

// ok reports whether the next op may be added: no error so far and every
// input present.
func (b *builder) ok(what string, in ...*G.Node) bool {
	if b.err != nil {
		return false
	}
	for _, n := range in {
		if n == nil {
			b.fail(fmt.Errorf("%s: an input is missing (nil)", what))
			return false
		}
	}
	return true
}

// apply adds op over in; its output is data when every input is.
func (b *builder) apply(op Op, in ...*G.Node) *G.Node {
	n, err := G.ApplyOp(op, in...)
	if err != nil {
		b.fail(fmt.Errorf("%s: %w", op.Kind(), err))
		return nil
	}
	isData := true
	for _, x := range in {
		isData = isData && b.data[x]
	}
	if isData {
		b.data[n] = true
	}
	return n
}

// param is the program's node of p (one per program).
func (b *builder) param(p *Param) *G.Node {
	if b.touched != nil {
		for len(*b.touched) <= b.block {
			*b.touched = append(*b.touched, nil)
		}
		i := b.m.indexOf(p)
		if !slices.Contains((*b.touched)[b.block], i) {
			(*b.touched)[b.block] = append((*b.touched)[b.block], i)
		}
	}
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

func (b *builder) lookup(d *nn.Param) *Param {
	if d == nil {
		b.fail(errors.New("a parameter is nil"))
		return nil
	}
	p, ok := b.m.byDecl[d]
	if !ok {
		b.fail(fmt.Errorf("parameter %q was not declared under this model's scope", d.Name))
		return nil
	}
	return p
}

func (b *builder) Param(d *nn.Param) *G.Node {
	if b.err != nil {
		return nil
	}
	p := b.lookup(d)
	if p == nil {
		return nil
	}
	return b.param(p)
}

func (b *builder) Linear(x *G.Node, w, bias *nn.Param) *G.Node {
	if !b.ok("Linear", x) {
		return nil
	}
	wn, bn := b.Param(w), b.Param(bias)
	if wn == nil || bn == nil {
		return nil
	}
	return b.apply(newLinear(!b.data[x]), x, wn, bn)
}

func (b *builder) Conv2D(x *G.Node, w, bias *nn.Param, stride, pad int) *G.Node {
	if !b.ok("Conv2D", x) {
		return nil
	}
	if stride < 1 || pad < 0 {
		b.fail(fmt.Errorf("Conv2D %s: stride %d must be at least 1 and padding %d at least 0", w.Name, stride, pad))
		return nil
	}
	wn := b.Param(w)
	if wn == nil {
		return nil
	}
	if bias == nil {
		return b.apply(newConv2DNoBias(stride, pad, !b.data[x]), x, wn)
	}
	bn := b.Param(bias)
	if bn == nil {
		return nil
	}
	return b.apply(newConv2D(stride, pad, !b.data[x]), x, wn, bn)
}

func (b *builder) BatchNorm(x *G.Node, l *nn.BatchNorm) *G.Node {
	if !b.ok("BatchNorm", x) {
		return nil
	}
	if l == nil {
		b.fail(errors.New("BatchNorm: the layer is nil"))
		return nil
	}
	if d := x.Dims(); d != 2 && d != 4 {
		b.fail(fmt.Errorf("BatchNorm %s: input %v is neither [N,C] nor [N,C,H,W]", l.Weight.Name, x.Shape()))
		return nil
	}
	if x.Shape()[1] != l.C {
		b.fail(fmt.Errorf("BatchNorm %s: input %v has %d channels, the layer %d", l.Weight.Name, x.Shape(), x.Shape()[1], l.C))
		return nil
	}
	if !(l.Eps > 0) || !(l.Momentum >= 0 && l.Momentum <= 1) {
		b.fail(fmt.Errorf("BatchNorm %s: eps %v must be positive and momentum %v in [0,1]", l.Weight.Name, l.Eps, l.Momentum))
		return nil
	}
	var ins []*G.Node
	for _, p := range []*nn.Param{l.Weight, l.Bias, l.RunningMean, l.RunningVar, l.NumBatchesTracked} {
		n := b.Param(p)
		if n == nil {
			return nil
		}
		ins = append(ins, n)
	}
	if b.train && x.Shape().TotalSize()/l.C < 2 {
		b.fail(fmt.Errorf("BatchNorm %s: training needs more than one value per channel, got input %v (a batch of 1?)", l.Weight.Name, x.Shape()))
		return nil
	}
	op := newBatchNorm(x.Dims(), l.Eps, l.Momentum, b.train)
	if b.train && b.frozen {
		op.frozen()
	}
	op.sync = b.sync
	return b.apply(op, append([]*G.Node{x}, ins...)...)
}

func (b *builder) LayerNorm(x *G.Node, l *nn.LayerNorm) *G.Node {
	if !b.ok("LayerNorm", x) {
		return nil
	}
	if l == nil {
		b.fail(errors.New("LayerNorm: the layer is nil"))
		return nil
	}
	if s := x.Shape(); len(s) < 2 || s[len(s)-1] != l.D {
		b.fail(fmt.Errorf("LayerNorm %s: input %v does not end in the layer's %d values", l.Weight.Name, x.Shape(), l.D))
		return nil
	}
	if !(l.Eps > 0) {
		b.fail(fmt.Errorf("LayerNorm %s: eps %v must be positive", l.Weight.Name, l.Eps))
		return nil
	}
	w, bias := b.Param(l.Weight), b.Param(l.Bias)
	if w == nil || bias == nil {
		return nil
	}
	return b.apply(newLayerNorm(x.Dims(), l.Eps), x, w, bias)
}

func (b *builder) GlobalAvgPool2D(x *G.Node) *G.Node {
	if !b.ok("GlobalAvgPool2D", x) {
		return nil
	}
	if x.Dims() != 4 {
		b.fail(fmt.Errorf("GlobalAvgPool2D: input %v is not [N,C,H,W]", x.Shape()))
		return nil
	}
	return b.apply(newGlobalAvgPool(), x)
}

func (b *builder) AvgPool2D(x *G.Node, k, stride int) *G.Node {
	if !b.ok("AvgPool2D", x) {
		return nil
	}
	if x.Dims() != 4 {
		b.fail(fmt.Errorf("AvgPool2D: input %v is not [N,C,H,W]", x.Shape()))
		return nil
	}
	op, err := newAvgPool(k, stride)
	if err != nil {
		b.fail(err)
		return nil
	}
	return b.apply(op, x)
}

func (b *builder) MaxPool2D(x *G.Node, k int) *G.Node {
	if !b.ok("MaxPool2D", x) {
		return nil
	}
	if k < 1 {
		b.fail(fmt.Errorf("MaxPool2D: kernel %d must be at least 1", k))
		return nil
	}
	return b.apply(newMaxPool(k), x)
}

func (b *builder) act(k Kind, x *G.Node) *G.Node {
	if !b.ok(string(k), x) {
		return nil
	}
	return b.apply(newAct(k, x.Dims()), x)
}

func (b *builder) ReLU(x *G.Node) *G.Node    { return b.act(OpReLU, x) }
func (b *builder) Tanh(x *G.Node) *G.Node    { return b.act(OpTanh, x) }
func (b *builder) Sigmoid(x *G.Node) *G.Node { return b.act(OpSigmoid, x) }

func (b *builder) GELU(x *G.Node) *G.Node { return b.smooth(OpGELU, x) }
func (b *builder) SiLU(x *G.Node) *G.Node { return b.smooth(OpSiLU, x) }

func (b *builder) smooth(k Kind, x *G.Node) *G.Node {
	if !b.ok(string(k), x) {
		return nil
	}
	return b.apply(newSmoothAct(k, x.Dims()), x)
}

func (b *builder) Dropout(x *G.Node, p float64) *G.Node {
	if !b.ok("Dropout", x) {
		return nil
	}
	if p < 0 || p >= 1 {
		b.fail(fmt.Errorf("Dropout: probability %v is outside [0,1)", p))
		return nil
	}
	if !b.train || p == 0 {
		return x
	}
	mask := b.m.pool.get(x.Shape().TotalSize())
	mv := tensor.New(tensor.WithShape(x.Shape()...), tensor.WithBacking(mask))
	mn := G.NodeFromAny(b.g, mv, G.WithName(fmt.Sprintf("dropout%d.mask", len(b.masks))))
	b.masks = append(b.masks, dropMask{data: mask, p: p, node: mn})
	b.data[mn] = true
	return b.apply(newMul(x.Dims()), x, mn)
}

func (b *builder) Reshape(x *G.Node, shape ...int) *G.Node {
	if !b.ok("Reshape", x) {
		return nil
	}
	to := tensor.Shape(shape)
	if len(shape) == 0 || to.TotalSize() != x.Shape().TotalSize() {
		b.fail(fmt.Errorf("Reshape: %v cannot become %v (sizes differ)", x.Shape(), shape))
		return nil
	}
	for _, d := range shape {
		if d < 1 {
			b.fail(fmt.Errorf("Reshape: %v cannot become %v", x.Shape(), shape))
			return nil
		}
	}
	if x.Shape().Eq(to) {
		return x
	}
	return b.apply(newReshape(x.Shape(), to), x)
}

// Add is Gorgonia's own Add, which the set recognises (see gorgonia.go).
func (b *builder) Add(x, y *G.Node) *G.Node {
	if !b.ok("Add", x, y) {
		return nil
	}
	if !x.Shape().Eq(y.Shape()) {
		b.fail(fmt.Errorf("Add: shapes %v and %v differ (broadcasting is not supported yet)", x.Shape(), y.Shape()))
		return nil
	}
	n, err := G.Add(x, y)
	if err != nil {
		b.fail(fmt.Errorf("Add: %w", err))
		return nil
	}
	if b.data[x] && b.data[y] {
		b.data[n] = true
	}
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

// forward adds blocks [first, last) to the graph on h.
func (b *builder) forward(h *G.Node, first, last int) (*G.Node, error) {
	for i := first; i < last; i++ {
		b.block = i
		before := len(b.g.AllNodes())
		h = b.m.blocks[i].Forward(b, h)
		if b.err == nil && h == nil {
			b.fail(errors.New("its Forward returned nil"))
		}
		if b.err == nil {
			// The layer's nodes: ours, or Gorgonia operators the set
			// recognises (a layer may call Gorgonia directly).
			b.fail(checkNodes(b.g, b.g.AllNodes()[before:]))
		}
		if b.err != nil {
			return nil, fmt.Errorf("graph: model %s, %s: %w", b.m.Spec.Kind, b.m.blockName(i), b.err)
		}
	}
	return h, nil
}

// blockName names block i for errors.
func (m *Model) blockName(i int) string {
	if len(m.blocks) == 1 {
		return fmt.Sprintf("module %T", m.blocks[0])
	}
	return fmt.Sprintf("layer %d (%T)", i, m.blocks[i])
}

// trace builds the model once at batch 1 for evaluation: it checks that
// the modules fit together and that the output is [Classes] per sample,
// and records each block's output shape and the parameters it uses (for
// pipeline stages).
func (m *Model) trace() error {
	g := G.NewGraph()
	b := newBuilder(m, g, 1, false)
	var touched [][]int
	b.touched = &touched
	x := G.NewMatrix(g, tensor.Float32, G.WithShape(1, m.InputSize()), G.WithName("x"))
	b.data[x] = true
	h := x
	m.shapes = make([][]int, len(m.blocks))
	for i := range m.blocks {
		var err error
		if h, err = b.forward(h, i, i+1); err != nil {
			return err
		}
		m.shapes[i] = append([]int(nil), h.Shape()[1:]...)
	}
	if s := h.Shape(); len(s) != 2 || s[1] != m.Spec.Classes {
		return fmt.Errorf("graph: model %s gives %v per sample; the loss wants the %d class scores, [%d]", m.Spec.Kind, []int(s[1:]), m.Spec.Classes, m.Spec.Classes)
	}
	for len(touched) < len(m.blocks) {
		touched = append(touched, nil)
	}
	m.owned = touched
	// The footprint of a sample: the input and every op's output, kept
	// in evaluation; in training also each one's gradient (dropout's
	// masks are outputs of no op, and are few).
	var floats float64
	params := b.paramIndex()
	for _, n := range g.AllNodes() {
		if _, isParam := params[n]; !isParam {
			floats += float64(n.Shape().TotalSize())
		}
	}
	m.fp = Footprint{Params: float64(m.NumParams()), TrainFloatsPerSample: 2 * floats, EvalFloatsPerSample: floats}
	for _, p := range m.Params {
		if _, ok := b.nodes[p]; !ok {
			return fmt.Errorf("graph: model %s declares %q but its Forward does not use it: every parameter and buffer must take part", m.Spec.Kind, p.Name)
		}
	}
	return nil
}

// grads differentiates cost (Gorgonia's Grad) with respect to the
// parameters idx (nil: every parameter of the model) and then extra (when
// not nil). The result is aligned with idx, then extra. A buffer has no
// gradient: its slot holds the buffer itself, as the program leaves it
// (a BatchNorm's running statistics after the step's update), so that
// reducing the gradients across ranks averages the buffers by the ranks'
// shares of the batch, and the optimiser sets each buffer to that average
// (see trainer/optim.Param.Buffer): every rank ends a step with the same
// buffers.
func (b *builder) grads(cost *G.Node, idx []int, extra *G.Node) ([]*G.Node, error) {
	if idx == nil {
		idx = make([]int, len(b.m.Params))
		for i := range idx {
			idx[i] = i
		}
	}
	var wrt G.Nodes
	var at []int // position in the result of each wrt node
	out := make([]*G.Node, len(idx)+map[bool]int{true: 1}[extra != nil])
	for k, i := range idx {
		if p := b.m.Params[i]; !p.Buffer {
			wrt = append(wrt, b.param(p))
			at = append(at, k)
		} else {
			out[k] = b.param(p)
		}
	}
	if extra != nil {
		wrt = append(wrt, extra)
		at = append(at, len(idx))
	}
	if len(wrt) == 0 {
		return out, nil
	}
	gs, err := G.Grad(cost, wrt...)
	if err != nil {
		return nil, fmt.Errorf("graph: model %s: gradients: %w", b.m.Spec.Kind, err)
	}
	for j, g := range gs {
		out[at[j]] = g
	}
	return out, nil
}
