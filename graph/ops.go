package graph

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/cblas"
	"github.com/gotrain/gotrain/graph/kern"
)

// The registrations of this file's ops (see OpDef).
func init() {
	registerOp(OpDef{Kind: OpLinear, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 {
		return 2*prod(in[0])*float64(in[1][0]) + prod(in[0][:1])*float64(in[1][0])
	},
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newLinear(a.Bool("grad_x")), nil
		}})
	registerOp(OpDef{Kind: OpMatMul, FLOPs: func(_ Attrs, in [][]int, out []int) float64 { return 2 * prod(out) * float64(innerDim(in, out)) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newMatMul(a.Bool("trans_a"), a.Bool("trans_b")), nil
		}})
	registerOp(OpDef{Kind: OpSumRows, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return prod(in[0]) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newSumRows(), nil
		}})
	registerOp(OpDef{Kind: OpReLU, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newAct(OpReLU, d), nil
		}})
	registerOp(OpDef{Kind: OpTanh, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newAct(OpTanh, d), nil
		}})
	registerOp(OpDef{Kind: OpSigmoid, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newAct(OpSigmoid, d), nil
		}})
	registerOp(OpDef{Kind: OpReLUGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newActGrad(OpReLUGrad, d), nil
		}})
	registerOp(OpDef{Kind: OpTanhGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newActGrad(OpTanhGrad, d), nil
		}})
	registerOp(OpDef{Kind: OpSigmoidGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newActGrad(OpSigmoidGrad, d), nil
		}})
	registerOp(OpDef{Kind: OpMul, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newMul(d), nil
		}})
	registerOp(OpDef{Kind: OpReshape, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newReshape(tensor.Shape(in[0]), tensor.Shape(out)), nil
		}})
	registerOp(OpDef{Kind: OpSoftmaxCE, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newSoftmaxCESmoothed(a.Float("smoothing")), nil
		}})
	registerOp(OpDef{Kind: OpSoftmaxCEGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newSoftmaxCEGradSmoothed(a.Float("smoothing")), nil
		}})
}

// ---- Linear: Y[N,out] = X[N,in]·W[out,in]ᵀ + b[out] ----

type linearOp struct {
	base
	needX bool // false when X is data: its gradient is never computed
}

func newLinear(needX bool) *linearOp {
	return &linearOp{base: newBase(OpLinear, map[string]any{"grad_x": needX}, tt(2), tt(2), tt(2), tt(1)), needX: needX}
}

func (o *linearOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x, w, b := shapeOf(ds[0]), shapeOf(ds[1]), shapeOf(ds[2])
	if len(x) != 2 || len(w) != 2 || len(b) != 1 || x[1] != w[1] || b[0] != w[0] {
		return nil, fmt.Errorf("%s: X %v, W %v, b %v do not fit (want X[N,in], W[out,in], b[out])", OpLinear, x, w, b)
	}
	return tensor.Shape{x[0], w[0]}, nil
}

func (o *linearOp) Do(in ...G.Value) (G.Value, error) {
	xs, ws := dims(in[0]), dims(in[1])
	n, k, m := xs[0], xs[1], ws[0]
	out := o.output(n, m)
	y, b := f32(out), f32(in[2])
	for i := 0; i < n; i++ {
		copy(y[i*m:(i+1)*m], b)
	}
	cblas.Sgemm(false, true, n, m, k, 1, f32(in[0]), k, f32(in[1]), k, 1, y, m)
	return out, nil
}

func (o *linearOp) DiffWRT(int) []bool { return []bool{o.needX, true, true} }

func (o *linearOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	var dx *G.Node
	var err error
	if o.needX {
		if dx, err = G.ApplyOp(newMatMul(false, false), grad, in[1]); err != nil {
			return nil, err
		}
	}
	dw, err := G.ApplyOp(newMatMul(true, false), grad, in[0])
	if err != nil {
		return nil, err
	}
	db, err := G.ApplyOp(newSumRows(), grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dw, db}, nil
}

// ---- MatMul: C = op(A)·op(B) ----

type matMulOp struct {
	base
	transA, transB bool
}

func newMatMul(ta, tb bool) *matMulOp {
	return &matMulOp{base: newBase(OpMatMul, map[string]any{"trans_a": ta, "trans_b": tb}, tt(2), tt(2), tt(2)), transA: ta, transB: tb}
}

func (o *matMulOp) mnk(a, b tensor.Shape) (m, n, k, k2 int) {
	m, k = a[0], a[1]
	if o.transA {
		m, k = k, m
	}
	k2, n = b[0], b[1]
	if o.transB {
		k2, n = n, k2
	}
	return
}

func (o *matMulOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	a, b := shapeOf(ds[0]), shapeOf(ds[1])
	if len(a) != 2 || len(b) != 2 {
		return nil, fmt.Errorf("MatMul: want matrices, got %v and %v", a, b)
	}
	m, n, k, k2 := o.mnk(a, b)
	if k != k2 {
		return nil, fmt.Errorf("MatMul%v: inner dimensions of %v and %v differ", o.attrs, a, b)
	}
	return tensor.Shape{m, n}, nil
}

func (o *matMulOp) Do(in ...G.Value) (G.Value, error) {
	as, bs := tensor.Shape(dims(in[0])), tensor.Shape(dims(in[1]))
	m, n, k, _ := o.mnk(as, bs)
	out := o.output(m, n)
	cblas.Sgemm(o.transA, o.transB, m, n, k, 1, f32(in[0]), as[1], f32(in[1]), bs[1], 0, f32(out), n)
	return out, nil
}

func (o *matMulOp) DiffWRT(n int) []bool                               { return make([]bool, n) }
func (o *matMulOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) { return nil, noGrad("MatMul") }

// ---- SumRows: y[j] = Σ_i X[i,j] ----

type sumRowsOp struct{ base }

func newSumRows() *sumRowsOp { return &sumRowsOp{newBase(OpSumRows, nil, tt(1), tt(2))} }

func (o *sumRowsOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x := shapeOf(ds[0])
	if len(x) != 2 {
		return nil, fmt.Errorf("SumRows: want a matrix, got %v", x)
	}
	return tensor.Shape{x[1]}, nil
}

func (o *sumRowsOp) Do(in ...G.Value) (G.Value, error) {
	xs := dims(in[0])
	n, m := xs[0], xs[1]
	out := o.output(m)
	y, x := f32(out), f32(in[0])
	clear(y)
	for i := 0; i < n; i++ {
		row := x[i*m : (i+1)*m]
		for j, v := range row {
			y[j] += v
		}
	}
	return out, nil
}

func (o *sumRowsOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *sumRowsOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("SumRows")
}

// ---- elementwise activations and their gradients ----

type actOp struct {
	base
	grad Kind
	// from is the BatchNorm that computes this ReLU (fuseBNReLU), fused
	// the run it computed it.
	from  *batchNormOp
	fused uint64
}

func newAct(k Kind, d int) *actOp {
	g := map[Kind]Kind{OpReLU: OpReLUGrad, OpTanh: OpTanhGrad, OpSigmoid: OpSigmoidGrad}[k]
	return &actOp{base: newBase(k, nil, tt(d), tt(d)), grad: g}
}

func (o *actOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[0]).Clone(), nil
}

func (o *actOp) Do(in ...G.Value) (G.Value, error) {
	if o.from != nil && o.out != nil && o.fused == o.from.runs {
		return o.out, nil
	}
	out := o.output(dims(in[0])...)
	x, y := f32(in[0]), f32(out)
	y = y[:len(x)]
	parallelFor(len(x), len(x), func(lo, hi int) {
		x, y := x[lo:hi], y[lo:hi]
		switch o.kind {
		case OpReLU:
			// Branch-free: clear the value when its sign bit is set.
			kern.ReLU(y, x)
		case OpTanh:
			for i, v := range x {
				y[i] = float32(math.Tanh(float64(v)))
			}
		case OpSigmoid:
			for i, v := range x {
				y[i] = float32(1 / (1 + math.Exp(-float64(v))))
			}
		}
	})
	return out, nil
}

func (o *actOp) DiffWRT(int) []bool { return []bool{true} }

func (o *actOp) SymDiff(_ G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	g := newActGrad(o.grad, out.Dims())
	g.fwd = o
	dx, err := G.ApplyOp(g, out, grad)
	return G.Nodes{dx}, err
}

// actGradOp computes dX from the activation's output Y and dY.
type actGradOp struct {
	base
	fwd *actOp // the activation (nil outside a model's gradients)
}

func newActGrad(k Kind, d int) *actGradOp {
	return &actGradOp{base: newBase(k, nil, tt(d), tt(d), tt(d))}
}

func (o *actGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[1])) {
		return nil, fmt.Errorf("%s: Y %v and dY %v differ", o.kind, ds[0], ds[1])
	}
	return shapeOf(ds[0]).Clone(), nil
}

func (o *actGradOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	y, dy, dx := f32(in[0]), f32(in[1]), f32(out)
	dx = dx[:len(y)]
	dy = dy[:len(y)]
	if o.fwd != nil && o.fwd.from != nil && o.kind == OpReLUGrad && o.fwd.from.saved.reluGradSums(dims(in[0]), dx, y, dy) {
		return out, nil
	}
	parallelFor(len(y), 2*len(y), func(lo, hi int) {
		y, dy, dx := y[lo:hi], dy[lo:hi], dx[lo:hi]
		switch o.kind {
		case OpReLUGrad:
			// Branch-free: keep dY's bits where Y > 0.
			kern.ReLUGrad(dx, y, dy)
		case OpTanhGrad:
			for i, v := range y {
				dx[i] = dy[i] * (1 - v*v)
			}
		case OpSigmoidGrad:
			for i, v := range y {
				dx[i] = dy[i] * v * (1 - v)
			}
		}
	})
	return out, nil
}

func (o *actGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *actGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad(string(o.kind))
}

// ---- Mul: Y = X·M elementwise (dropout: M holds 0 or 1/(1-p)) ----

type mulOp struct{ base }

func newMul(d int) *mulOp { return &mulOp{newBase(OpMul, nil, tt(d), tt(d), tt(d))} }

func (o *mulOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[1])) {
		return nil, fmt.Errorf("%s: shapes %v and %v differ", OpMul, ds[0], ds[1])
	}
	return shapeOf(ds[0]).Clone(), nil
}

func (o *mulOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	x, m, y := f32(in[0]), f32(in[1]), f32(out)
	m = m[:len(x)]
	y = y[:len(x)]
	for i, v := range x {
		y[i] = v * m[i]
	}
	return out, nil
}

func (o *mulOp) DiffWRT(int) []bool { return []bool{true, false} }

func (o *mulOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(newMul(grad.Dims()), grad, in[1])
	return G.Nodes{dx, nil}, err
}

// ---- Reshape: same data, new shape (Flatten) ----

type reshapeOp struct {
	base
	to tensor.Shape
}

func newReshape(from, to tensor.Shape) *reshapeOp {
	return &reshapeOp{base: newBase(OpReshape, map[string]any{"shape": []int(to)}, tt(len(to)), tt(len(from))), to: to.Clone()}
}

func (o *reshapeOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if shapeOf(ds[0]).TotalSize() != o.to.TotalSize() {
		return nil, fmt.Errorf("%s: %v has %d elements, %v has %d", OpReshape, ds[0], shapeOf(ds[0]).TotalSize(), o.to, o.to.TotalSize())
	}
	return o.to.Clone(), nil
}

func (o *reshapeOp) Do(in ...G.Value) (G.Value, error) {
	x := f32(in[0])
	if o.out != nil && len(x) > 0 && &f32(o.out)[0] == &x[0] {
		return o.out, nil
	}
	o.out = tensor.New(tensor.WithShape(o.to...), tensor.WithBacking(x))
	return o.out, nil
}

func (o *reshapeOp) DiffWRT(int) []bool { return []bool{true} }

func (o *reshapeOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(newReshape(o.to, in[0].Shape()), grad)
	return G.Nodes{dx}, err
}

// ---- SoftmaxCrossEntropy: mean over rows of -log softmax(logits)[label] ----

type softmaxCEOp struct {
	base
	loss G.F32
	eps  float64 // label smoothing
}

func newSoftmaxCE() *softmaxCEOp { return newSoftmaxCESmoothed(0) }

// smoothingAttrs are the attributes of a cross-entropy with label
// smoothing eps (none for 0).
func smoothingAttrs(eps float64) map[string]any {
	if eps == 0 {
		return nil
	}
	return map[string]any{"smoothing": eps}
}

// newSoftmaxCESmoothed is the cross-entropy with label smoothing eps, as
// PyTorch's cross_entropy(label_smoothing=eps): the target is
// (1-eps)·onehot + eps/K.
func newSoftmaxCESmoothed(eps float64) *softmaxCEOp {
	return &softmaxCEOp{base: newBase(OpSoftmaxCE, smoothingAttrs(eps), scalarT, tt(2), tt(1)), eps: eps}
}

func (o *softmaxCEOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	l, y := shapeOf(ds[0]), shapeOf(ds[1])
	if len(l) != 2 || len(y) != 1 || l[0] != y[0] {
		return nil, fmt.Errorf("SoftmaxCrossEntropy: logits %v and labels %v do not fit (want [N,K] and [N])", l, y)
	}
	return tensor.ScalarShape(), nil
}

func (o *softmaxCEOp) Do(in ...G.Value) (G.Value, error) {
	ls := dims(in[0])
	n, k := ls[0], ls[1]
	logits, labels := f32(in[0]), f32(in[1])
	var total float64
	for i := 0; i < n; i++ {
		row := logits[i*k : (i+1)*k]
		c := int(labels[i])
		if c < 0 || c >= k {
			return nil, fmt.Errorf("SoftmaxCrossEntropy: label %v of row %d is outside [0,%d)", labels[i], i, k)
		}
		mx, lse := logSumExp(row)
		l := lse + float64(mx) - float64(row[c])
		if o.eps != 0 {
			var mean float64
			for _, v := range row {
				mean += float64(v)
			}
			mean /= float64(k)
			l = (1-o.eps)*l + o.eps*(lse+float64(mx)-mean)
		}
		total += l
	}
	o.loss = G.F32(total / float64(n))
	return &o.loss, nil
}

// logSumExp returns the row's maximum m and log Σ exp(x-m), stable for any
// magnitude of logits.
func logSumExp(row []float32) (float32, float64) {
	mx := row[0]
	for _, v := range row[1:] {
		if v > mx {
			mx = v
		}
	}
	var s float64
	for _, v := range row {
		s += math.Exp(float64(v - mx))
	}
	return mx, math.Log(s)
}

func (o *softmaxCEOp) DiffWRT(int) []bool { return []bool{true, false} }

func (o *softmaxCEOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	d, err := G.ApplyOp(newSoftmaxCEGradSmoothed(o.eps), in[0], in[1], grad)
	return G.Nodes{d, nil}, err
}

// softmaxCEGradOp: dLogits = (softmax(logits) - target) · g / N, the
// target (1-eps)·onehot(labels) + eps/K.
type softmaxCEGradOp struct {
	base
	eps float64
}

func newSoftmaxCEGrad() *softmaxCEGradOp { return newSoftmaxCEGradSmoothed(0) }

func newSoftmaxCEGradSmoothed(eps float64) *softmaxCEGradOp {
	return &softmaxCEGradOp{base: newBase(OpSoftmaxCEGrad, smoothingAttrs(eps), tt(2), tt(2), tt(1), scalarT), eps: eps}
}

func (o *softmaxCEGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[0]).Clone(), nil
}

func (o *softmaxCEGradOp) Do(in ...G.Value) (G.Value, error) {
	ls := dims(in[0])
	n, k := ls[0], ls[1]
	out := o.output(n, k)
	logits, labels, d := f32(in[0]), f32(in[1]), f32(out)
	scale := scalarOf(in[2]) / float32(n)
	for i := 0; i < n; i++ {
		row, drow := logits[i*k:(i+1)*k], d[i*k:(i+1)*k]
		mx, lse := logSumExp(row)
		for j, v := range row {
			drow[j] = float32(math.Exp(float64(v-mx)-lse)) * scale
		}
		if o.eps == 0 {
			drow[int(labels[i])] -= scale
			continue
		}
		spread := float32(o.eps / float64(k))
		for j := range drow {
			drow[j] -= spread * scale
		}
		drow[int(labels[i])] -= float32(1-o.eps) * scale
	}
	return out, nil
}

func (o *softmaxCEGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *softmaxCEGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("SoftmaxCrossEntropyGrad")
}
