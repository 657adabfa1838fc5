package graph

import (
	"fmt"
	"hash"
	"hash/fnv"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Kind names an op of the closed op set. A device executor switches on it;
// the CPU implementation is the op's Do method.
type Kind string

// The closed op set. Every gradient is expressed in this same set.
const (
	OpLinear          Kind = "Linear"          // Y = X·Wᵀ + b
	OpMatMul          Kind = "MatMul"          // C = op(A)·op(B)
	OpSumRows         Kind = "SumRows"         // y[j] = Σ_i X[i,j]
	OpConv2D          Kind = "Conv2D"          // NCHW convolution with bias
	OpConv2DGradInput Kind = "Conv2DGradInput" // dX from dY and W
	OpConv2DGradW     Kind = "Conv2DGradW"     // dW from X and dY
	OpConv2DGradB     Kind = "Conv2DGradB"     // db from dY
	OpMaxPool2D       Kind = "MaxPool2D"       // max over k×k windows
	OpMaxPool2DGrad   Kind = "MaxPool2DGrad"   // dX from X, Y and dY
	OpReLU            Kind = "ReLU"
	OpReLUGrad        Kind = "ReLUGrad" // dX = dY·[Y>0]
	OpTanh            Kind = "Tanh"
	OpTanhGrad        Kind = "TanhGrad" // dX = dY·(1-Y²)
	OpSigmoid         Kind = "Sigmoid"
	OpSigmoidGrad     Kind = "SigmoidGrad" // dX = dY·Y·(1-Y)
	OpMul             Kind = "Mul"         // elementwise X·M (dropout with a scaled 0/1 mask)
	OpReshape         Kind = "Reshape"     // same data, new shape
	OpSoftmaxCE       Kind = "SoftmaxCrossEntropy"
	OpSoftmaxCEGrad   Kind = "SoftmaxCrossEntropyGrad"
	OpDot             Kind = "Dot"     // Σ X·G: the cost of a pipeline stage that is not the last
	OpDotGrad         Kind = "DotGrad" // dX = G·g
	OpAdd             Kind = "Add"     // A + B elementwise: Gorgonia's own Add, recognised (see gorgonia.go)

	OpBatchNorm          Kind = "BatchNorm"          // per-channel normalisation (see norm.go); training updates the running buffers in place
	OpBatchNormGrad      Kind = "BatchNormGrad"      // dX from X, gamma and dY (batch statistics)
	OpBatchNormGradGamma Kind = "BatchNormGradGamma" // dgamma[c] = Σ dY·x̂ over channel c
	OpGlobalAvgPool      Kind = "GlobalAvgPool"      // [N,C,H,W] -> [N,C], the mean of each plane
	OpGlobalAvgPoolGrad  Kind = "GlobalAvgPoolGrad"  // dX[n,c,·,·] = dY[n,c]/(H·W)
	OpAvgPool2D          Kind = "AvgPool2D"          // the mean of k×k windows, stride s, no padding (PyTorch's AvgPool2d(k, s))
	OpAvgPool2DGrad      Kind = "AvgPool2DGrad"      // dX: each window's dY/(k·k) added to its values

	// Gorgonia's own operators, as the set runs them on devices (see
	// gorgonia.go); Add, Mul (⊙), MatMul and Reshape above serve too.
	OpSub           Kind = "Sub"           // A - B, equal shapes
	OpDiv           Kind = "Div"           // A ÷ B, equal shapes
	OpElemScalar    Kind = "ElemScalar"    // X op s (or s op X) with a scalar s: + - ⊙ ÷ and comparisons (1 or 0)
	OpElemUnary     Kind = "ElemUnary"     // f(X): neg exp ln sqrt square tanh sigmoid abs inv invSqrt cube
	OpRepeat        Kind = "Repeat"        // X repeated along an axis of size 1 (Gorgonia's broadcasting)
	OpReduceSum     Kind = "ReduceSum"     // Σ over one axis, which goes
	OpSoftmax       Kind = "Softmax"       // Gorgonia's SoftMax (or LogSoftMax, attribute "log") along an axis
	OpSoftmaxGrad   Kind = "SoftmaxGrad"   // its gradient from (X, Y, dY), as Gorgonia's SoftmaxDiff
	OpTranspose     Kind = "Transpose"     // Gorgonia's Transpose: the axes permuted (attribute "perm", e.g. "1,0,2")
	OpSlice         Kind = "Slice"         // Gorgonia's Slice along one axis: start, step; the output's shape says how many (and whether the axis goes)
	OpSliceGrad     Kind = "SliceGrad"     // its gradient: zeros of X's shape, dY at the slice (Gorgonia's sliceIncrOp)
	OpConcat        Kind = "Concat"        // Gorgonia's Concat of its inputs along an axis
	OpBatchedMatMul Kind = "BatchedMatMul" // Gorgonia's BatchedMatMul: [B,M,K]·[B,K,N], either side transposed (trans_a, trans_b)

	OpGELU     Kind = "GELU"     // x·Φ(x), PyTorch's exact GELU
	OpGELUGrad Kind = "GELUGrad" // dX from X and dY
	OpSiLU     Kind = "SiLU"     // x·σ(x)
	OpSiLUGrad Kind = "SiLUGrad" // dX from X and dY

	OpLayerNorm      Kind = "LayerNorm"      // each row of the last dimension normalised, scaled and shifted
	OpLayerNormGrad  Kind = "LayerNormGrad"  // dX from X, weight and dY (the rows' statistics)
	OpLayerNormGradW Kind = "LayerNormGradW" // dweight[j] = Σ_rows dY·x̂
)

// Op is implemented by every op of the set. Attrs holds the op's static
// attributes (stride, padding, transposes, shapes) for device executors.
type Op interface {
	G.Op
	Kind() Kind
	Attrs() map[string]any
}

// base holds what every op shares: its kind, attributes, the gorgonia type
// and the output buffer it reuses from step to step.
type base struct {
	kind  Kind
	attrs map[string]any
	typ   hm.Type
	arity int
	out   *tensor.Dense
	buf   []float32 // out's backing, with its whole capacity
	pool  *bufPool  // where buf comes from (nil: the heap)
}

func newBase(k Kind, attrs map[string]any, ret hm.Type, args ...hm.Type) base {
	ts := append(append([]hm.Type{}, args...), ret)
	return base{kind: k, attrs: attrs, typ: hm.NewFnType(ts...), arity: len(args)}
}

func (b *base) Kind() Kind            { return b.kind }
func (b *base) Attrs() map[string]any { return b.attrs }
func (b *base) Arity() int            { return b.arity }
func (b *base) Type() hm.Type         { return b.typ }
func (b *base) ReturnsPtr() bool      { return false }
func (b *base) CallsExtern() bool     { return false }
func (b *base) OverwritesInput() int  { return -1 }
func (b *base) String() string        { return fmt.Sprintf("%s%v", b.kind, b.attrs) }
func (b *base) WriteHash(h hash.Hash) { fmt.Fprintf(h, "%s%v", b.kind, b.attrs) }
func (b *base) Hashcode() uint32 {
	h := fnv.New32a()
	b.WriteHash(h)
	return h.Sum32()
}

// output returns the op's output buffer of the given shape, allocated once
// and reused for as long as the shape stays the same. Buffers are planned
// per program (one graph per batch size), so the steady state allocates
// nothing.
func (b *base) output(shape ...int) *tensor.Dense {
	if b.out != nil && b.out.Shape().Eq(tensor.Shape(shape)) {
		return b.out
	}
	n := 1
	for _, s := range shape {
		n *= s
	}
	b.pool.put(b.buf)
	b.buf = b.pool.get(n)
	b.out = tensor.New(tensor.WithShape(shape...), tensor.WithBacking(b.buf))
	return b.out
}

func (b *base) setPool(p *bufPool) { b.pool = p }

// releaseTo gives the output buffer back to p; the next run allocates anew.
func (b *base) releaseTo(p *bufPool) {
	p.put(b.buf)
	b.out, b.buf = nil, nil
}

// tt is the gorgonia type of a float32 tensor with d dimensions.
func tt(d int) hm.Type { return G.TensorType{Dims: d, Of: tensor.Float32} }

// scalarT is the gorgonia type of a float32 scalar.
var scalarT hm.Type = tensor.Float32

func shapeOf(ds G.DimSizer) tensor.Shape { return ds.(tensor.Shape) }

func f32(v G.Value) []float32 {
	if s, ok := v.(*G.F32); ok { // a scalar, read only
		return []float32{float32(*s)}
	}
	return v.Data().([]float32)
}

// scalarOf reads a float32 scalar value (a gorgonia scalar or a one-element tensor).
func scalarOf(v G.Value) float32 {
	switch s := v.(type) {
	case *G.F32:
		return float32(*s)
	}
	return f32(v)[0]
}

func dims(v G.Value) []int { return v.Shape() }

func noGrad(name string) error { return fmt.Errorf("graph: %s has no gradient in the op set", name) }
