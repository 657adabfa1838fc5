package graph

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Global average pooling: PyTorch's AdaptiveAvgPool2d(1) followed by a
// flatten, [N,C,H,W] -> [N,C], as ResNets end.

func init() {
	registerOp(OpDef{Kind: OpGlobalAvgPool, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return prod(in[0]) },
		Make: func(_ Attrs, _ [][]int, _ []int) (Op, error) { return newGlobalAvgPool(), nil }})
	registerOp(OpDef{Kind: OpGlobalAvgPoolGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, _ [][]int, _ []int) (Op, error) {
			return newGlobalAvgPoolGrad(a.Int("h"), a.Int("w")), nil
		}})
}

// ---- GlobalAvgPool: Y[n,c] = mean of X[n,c,·,·] ----

type globalAvgPoolOp struct{ base }

func newGlobalAvgPool() *globalAvgPoolOp {
	return &globalAvgPoolOp{newBase(OpGlobalAvgPool, nil, tt(2), tt(4))}
}

func (o *globalAvgPoolOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x := shapeOf(ds[0])
	if len(x) != 4 {
		return nil, fmt.Errorf("%s: input %v is not [N,C,H,W]", OpGlobalAvgPool, x)
	}
	return tensor.Shape{x[0], x[1]}, nil
}

func (o *globalAvgPoolOp) Do(in ...G.Value) (G.Value, error) {
	s := dims(in[0])
	planes, p := s[0]*s[1], s[2]*s[3]
	out := o.output(s[0], s[1])
	x, y := f32(in[0]), f32(out)
	parallelFor(planes, planes*p, func(i0, i1 int) {
		for i := i0; i < i1; i++ {
			var sum float64
			for _, v := range x[i*p:][:p] {
				sum += float64(v)
			}
			y[i] = float32(sum / float64(p))
		}
	})
	return out, nil
}

func (o *globalAvgPoolOp) DiffWRT(int) []bool { return []bool{true} }

func (o *globalAvgPoolOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	s := in[0].Shape()
	dx, err := G.ApplyOp(newGlobalAvgPoolGrad(s[2], s[3]), grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx}, nil
}

// ---- GlobalAvgPoolGrad: dX[n,c,·,·] = dY[n,c]/(H·W) ----

type globalAvgPoolGradOp struct {
	base
	h, w int
}

func newGlobalAvgPoolGrad(h, w int) *globalAvgPoolGradOp {
	return &globalAvgPoolGradOp{base: newBase(OpGlobalAvgPoolGrad, map[string]any{"h": h, "w": w}, tt(4), tt(2)), h: h, w: w}
}

func (o *globalAvgPoolGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	dy := shapeOf(ds[0])
	if len(dy) != 2 || o.h < 1 || o.w < 1 {
		return nil, fmt.Errorf("%s: dY %v is not [N,C] or the plane %dx%d is empty", OpGlobalAvgPoolGrad, dy, o.h, o.w)
	}
	return tensor.Shape{dy[0], dy[1], o.h, o.w}, nil
}

func (o *globalAvgPoolGradOp) Do(in ...G.Value) (G.Value, error) {
	s := dims(in[0])
	p := o.h * o.w
	out := o.output(s[0], s[1], o.h, o.w)
	dy, dx := f32(in[0]), f32(out)
	parallelFor(len(dy), len(dx), func(i0, i1 int) {
		for i := i0; i < i1; i++ {
			v := dy[i] / float32(p)
			d := dx[i*p:][:p]
			for j := range d {
				d[j] = v
			}
		}
	})
	return out, nil
}

func (o *globalAvgPoolGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *globalAvgPoolGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("GlobalAvgPoolGrad")
}
