package graph

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// The smooth activations of transformers and modern CNNs: GELU (PyTorch's
// exact form, x·Φ(x) with Φ the normal distribution function) and SiLU
// (x·σ(x), "swish"). Unlike ReLU, Tanh and Sigmoid, their gradients are
// functions of the input, so the gradient ops take X and dY.

func init() {
	for _, k := range []Kind{OpGELU, OpSiLU} {
		registerOp(OpDef{Kind: k, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return 8 * prod(out) },
			Make: func(_ Attrs, in [][]int, _ []int) (Op, error) { return newSmoothAct(k, firstDims(in)), nil }})
	}
	for _, k := range []Kind{OpGELUGrad, OpSiLUGrad} {
		registerOp(OpDef{Kind: k, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return 10 * prod(out) },
			Make: func(_ Attrs, in [][]int, _ []int) (Op, error) { return newSmoothActGrad(k, firstDims(in)), nil }})
	}
}

// gelu is x·Φ(x); geluGrad its derivative Φ(x) + x·φ(x).
func gelu(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }
func geluGrad(x float64) float64 {
	return 0.5*(1+math.Erf(x/math.Sqrt2)) + x*math.Exp(-0.5*x*x)/math.Sqrt(2*math.Pi)
}

// silu is x·σ(x); siluGrad its derivative σ(x)·(1 + x·(1-σ(x))).
func silu(x float64) float64 { return x / (1 + math.Exp(-x)) }
func siluGrad(x float64) float64 {
	s := 1 / (1 + math.Exp(-x))
	return s * (1 + x*(1-s))
}

type smoothActOp struct {
	base
	f    func(float64) float64
	grad Kind
}

func newSmoothAct(k Kind, d int) *smoothActOp {
	o := &smoothActOp{base: newBase(k, nil, tt(d), tt(d)), f: gelu, grad: OpGELUGrad}
	if k == OpSiLU {
		o.f, o.grad = silu, OpSiLUGrad
	}
	return o
}

func (o *smoothActOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[0]).Clone(), nil
}

func (o *smoothActOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	x, y := f32(in[0]), f32(out)
	parallelFor(len(x), 8*len(x), func(i0, i1 int) {
		for i := i0; i < i1; i++ {
			y[i] = float32(o.f(float64(x[i])))
		}
	})
	return out, nil
}

func (o *smoothActOp) DiffWRT(int) []bool { return []bool{true} }

func (o *smoothActOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(newSmoothActGrad(o.grad, in[0].Dims()), in[0], grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx}, nil
}

type smoothActGradOp struct {
	base
	df func(float64) float64
}

func newSmoothActGrad(k Kind, d int) *smoothActGradOp {
	o := &smoothActGradOp{base: newBase(k, nil, tt(d), tt(d), tt(d)), df: geluGrad}
	if k == OpSiLUGrad {
		o.df = siluGrad
	}
	return o
}

func (o *smoothActGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[1])) {
		return nil, fmt.Errorf("%s: X %v and dY %v differ", o.kind, ds[0], ds[1])
	}
	return shapeOf(ds[0]).Clone(), nil
}

func (o *smoothActGradOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	x, dy, dx := f32(in[0]), f32(in[1]), f32(out)
	parallelFor(len(x), 10*len(x), func(i0, i1 int) {
		for i := i0; i < i1; i++ {
			dx[i] = float32(float64(dy[i]) * o.df(float64(x[i])))
		}
	})
	return out, nil
}

func (o *smoothActGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *smoothActGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad(string(o.kind))
}
