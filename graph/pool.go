package graph

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Global average pooling: PyTorch's AdaptiveAvgPool2d(1) followed by a
// flatten, [N,C,H,W] -> [N,C], as ResNets end; and average pooling over
// k×k windows with stride s and no padding, PyTorch's AvgPool2d(k, s)
// (floor mode: windows that do not fit are dropped).

func init() {
	registerOp(OpDef{Kind: OpGlobalAvgPool, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return prod(in[0]) },
		Make: func(_ Attrs, _ [][]int, _ []int) (Op, error) { return newGlobalAvgPool(), nil }})
	registerOp(OpDef{Kind: OpGlobalAvgPoolGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, _ [][]int, _ []int) (Op, error) {
			return newGlobalAvgPoolGrad(a.Int("h"), a.Int("w")), nil
		}})
	registerOp(OpDef{Kind: OpAvgPool2D, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return prod(in[0]) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			if len(in) != 1 || len(in[0]) != 4 {
				return nil, fmt.Errorf("graph: %s of %v: want one [N,C,H,W] input", OpAvgPool2D, in)
			}
			return newAvgPool(a.Int("kernel"), a.Int("stride"))
		}})
	registerOp(OpDef{Kind: OpAvgPool2DGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, _ [][]int, _ []int) (Op, error) {
			p, err := newAvgPool(a.Int("kernel"), a.Int("stride"))
			if err != nil {
				return nil, err
			}
			return newAvgPoolGrad(p, a.Int("h"), a.Int("w")), nil
		}})
}

// ---- AvgPool2D: Y[n,c,i,j] = mean of X[n,c, i·s .. i·s+k, j·s .. j·s+k] ----

type avgPoolOp struct {
	base
	k, s int
}

func newAvgPool(k, s int) (*avgPoolOp, error) {
	if k < 1 || s < 1 {
		return nil, fmt.Errorf("graph: %s: kernel %d and stride %d must be at least 1", OpAvgPool2D, k, s)
	}
	return &avgPoolOp{base: newBase(OpAvgPool2D, map[string]any{"kernel": k, "stride": s}, tt(4), tt(4)), k: k, s: s}, nil
}

// pooled is the output side of a side of n.
func (o *avgPoolOp) pooled(n int) int { return (n-o.k)/o.s + 1 }

func (o *avgPoolOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x := shapeOf(ds[0])
	if len(x) != 4 || x[2] < o.k || x[3] < o.k {
		return nil, fmt.Errorf("%s: input %v is not [N,C,H,W] with H and W at least the kernel %d", OpAvgPool2D, x, o.k)
	}
	return tensor.Shape{x[0], x[1], o.pooled(x[2]), o.pooled(x[3])}, nil
}

// Do sums each window in float64, row by row, and divides by k·k.
func (o *avgPoolOp) Do(in ...G.Value) (G.Value, error) {
	s := dims(in[0])
	h, w := s[2], s[3]
	oh, ow := o.pooled(h), o.pooled(w)
	out := o.output(s[0], s[1], oh, ow)
	x, y := f32(in[0]), f32(out)
	planes := s[0] * s[1]
	area := float64(o.k * o.k)
	parallelFor(planes, planes*h*w, func(p0, p1 int) {
		for p := p0; p < p1; p++ {
			src, dst := x[p*h*w:][:h*w], y[p*oh*ow:][:oh*ow]
			for i := 0; i < oh; i++ {
				for j := 0; j < ow; j++ {
					var sum float64
					for a := 0; a < o.k; a++ {
						for _, v := range src[(i*o.s+a)*w+j*o.s:][:o.k] {
							sum += float64(v)
						}
					}
					dst[i*ow+j] = float32(sum / area)
				}
			}
		}
	})
	return out, nil
}

func (o *avgPoolOp) DiffWRT(int) []bool { return []bool{true} }

func (o *avgPoolOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	s := in[0].Shape()
	dx, err := G.ApplyOp(newAvgPoolGrad(o, s[2], s[3]), grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx}, nil
}

// ---- AvgPool2DGrad: dX[n,c,y,x] = Σ over the windows holding (y,x) of dY/(k·k) ----

type avgPoolGradOp struct {
	base
	k, s, h, w int
}

func newAvgPoolGrad(p *avgPoolOp, h, w int) *avgPoolGradOp {
	return &avgPoolGradOp{base: newBase(OpAvgPool2DGrad, map[string]any{"kernel": p.k, "stride": p.s, "h": h, "w": w}, tt(4), tt(4)),
		k: p.k, s: p.s, h: h, w: w}
}

func (o *avgPoolGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	dy := shapeOf(ds[0])
	if len(dy) != 4 || o.h < o.k || o.w < o.k || dy[2] != (o.h-o.k)/o.s+1 || dy[3] != (o.w-o.k)/o.s+1 {
		return nil, fmt.Errorf("%s: dY %v does not pool a %dx%d plane by %d, stride %d", OpAvgPool2DGrad, dy, o.h, o.w, o.k, o.s)
	}
	return tensor.Shape{dy[0], dy[1], o.h, o.w}, nil
}

// Do visits each input position once and adds, in the order of the
// windows (row, then column), the dY of the windows that hold it: the same
// bits whichever the thread (a device does it so).
func (o *avgPoolGradOp) Do(in ...G.Value) (G.Value, error) {
	s := dims(in[0])
	oh, ow := s[2], s[3]
	out := o.output(s[0], s[1], o.h, o.w)
	dy, dx := f32(in[0]), f32(out)
	planes := s[0] * s[1]
	area := float32(o.k * o.k)
	parallelFor(planes, planes*o.h*o.w, func(p0, p1 int) {
		for p := p0; p < p1; p++ {
			g, d := dy[p*oh*ow:][:oh*ow], dx[p*o.h*o.w:][:o.h*o.w]
			for y := 0; y < o.h; y++ {
				i0, i1 := windows(y, o.k, o.s, oh)
				for x := 0; x < o.w; x++ {
					j0, j1 := windows(x, o.k, o.s, ow)
					var sum float32
					for i := i0; i < i1; i++ {
						for j := j0; j < j1; j++ {
							sum += g[i*ow+j] / area
						}
					}
					d[y*o.w+x] = sum
				}
			}
		}
	})
	return out, nil
}

// windows is the range [i0, i1) of the n windows of size k, stride s,
// that hold position y.
func windows(y, k, s, n int) (i0, i1 int) {
	i0 = 0
	if y >= k {
		i0 = (y-k)/s + 1
	}
	i1 = min(y/s+1, n)
	return i0, max(i1, i0)
}

func (o *avgPoolGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *avgPoolGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("AvgPool2DGrad")
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
