package graph

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// LayerNorm: PyTorch's nn.LayerNorm over the last dimension D of its
// input ([N, D] or [N, T, D]): each row of D values is normalised by its
// own mean and (biased) variance, then scaled by weight [D] and shifted by
// bias [D]. Row statistics are summed in float64. Its gradients are
// LayerNormGrad (dX), LayerNormGradW (dweight) and the column sum of dY
// (dbias: SumRows over the rows). On the CPU the gradient ops reuse the
// forward's statistics; a device recomputes them from X.

func init() {
	registerOp(OpDef{Kind: OpLayerNorm, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return 7 * prod(out) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			return newLayerNorm(firstDims(in), a.Float("eps")), nil
		}})
	registerOp(OpDef{Kind: OpLayerNormGrad, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return 8 * prod(out) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			return newLayerNormGrad(firstDims(in), a.Float("eps"), nil), nil
		}})
	registerOp(OpDef{Kind: OpLayerNormGradW, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return 4 * prod(in[0]) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			return newLayerNormGradW(firstDims(in), a.Float("eps"), nil), nil
		}})
}

// lnStats is a forward's row statistics, reused by its gradient ops.
type lnStats struct {
	of           *float32
	n            int
	mean, invstd []float64
}

func (s *lnStats) valid(x []float32) bool {
	return s != nil && len(x) > 0 && s.of == &x[0] && s.n == len(x)
}

// rowStats computes the rows' mean and 1/sqrt(var+eps) into s.
func (s *lnStats) compute(x []float32, d int, eps float64) {
	rows := len(x) / d
	if len(s.mean) != rows {
		s.mean, s.invstd = make([]float64, rows), make([]float64, rows)
	}
	parallelFor(rows, 2*len(x), func(r0, r1 int) {
		for r := r0; r < r1; r++ {
			row := x[r*d : (r+1)*d]
			var sum float64
			for _, v := range row {
				sum += float64(v)
			}
			mu := sum / float64(d)
			var q float64
			for _, v := range row {
				e := float64(v) - mu
				q += e * e
			}
			s.mean[r], s.invstd[r] = mu, 1/math.Sqrt(q/float64(d)+eps)
		}
	})
	s.of, s.n = &x[0], len(x)
}

// stats returns fwd's statistics when they are x's, else computes them
// into scratch.
func (s *lnStats) stats(x []float32, d int, eps float64, scratch *lnStats) *lnStats {
	if s.valid(x) {
		return s
	}
	scratch.compute(x, d, eps)
	return scratch
}

func lastDim(s tensor.Shape) int { return s[len(s)-1] }

// ---- LayerNorm ----

type layerNormOp struct {
	base
	eps   float64
	saved lnStats
}

func newLayerNorm(dims int, eps float64) *layerNormOp {
	return &layerNormOp{base: newBase(OpLayerNorm, map[string]any{"eps": eps}, tt(dims), tt(dims), tt(1), tt(1)), eps: eps}
}

func (o *layerNormOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x := shapeOf(ds[0])
	if len(x) < 2 {
		return nil, fmt.Errorf("%s: input %v has no rows to normalise", OpLayerNorm, x)
	}
	for i, name := range []string{"weight", "bias"} {
		if s := shapeOf(ds[i+1]); len(s) != 1 || s[0] != lastDim(x) {
			return nil, fmt.Errorf("%s: %s %v does not fit rows of %d", OpLayerNorm, name, s, lastDim(x))
		}
	}
	return x.Clone(), nil
}

func (o *layerNormOp) Do(in ...G.Value) (G.Value, error) {
	x, w, b := f32(in[0]), f32(in[1]), f32(in[2])
	d := lastDim(dims(in[0]))
	o.saved.compute(x, d, o.eps)
	out := o.output(dims(in[0])...)
	y := f32(out)
	parallelFor(len(x)/d, len(x), func(r0, r1 int) {
		for r := r0; r < r1; r++ {
			mu, is := float32(o.saved.mean[r]), float32(o.saved.invstd[r])
			xr, yr := x[r*d:(r+1)*d], y[r*d:(r+1)*d]
			for j, v := range xr {
				yr[j] = (v-mu)*is*w[j] + b[j]
			}
		}
	})
	return out, nil
}

func (o *layerNormOp) DiffWRT(int) []bool { return []bool{true, true, true} }

func (o *layerNormOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dims := in[0].Dims()
	dx, err := G.ApplyOp(newLayerNormGrad(dims, o.eps, &o.saved), in[0], in[1], grad)
	if err != nil {
		return nil, err
	}
	dw, err := G.ApplyOp(newLayerNormGradW(dims, o.eps, &o.saved), in[0], grad)
	if err != nil {
		return nil, err
	}
	g := grad
	if dims > 2 { // the rows as a matrix, for their column sum
		s := in[0].Shape()
		if g, err = G.ApplyOp(newReshape(s, tensor.Shape{s.TotalSize() / lastDim(s), lastDim(s)}), grad); err != nil {
			return nil, err
		}
	}
	db, err := G.ApplyOp(newSumRows(), g)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dw, db}, nil
}

// ---- LayerNormGrad: dX = invstd·(g - mean(g) - x̂·mean(g·x̂)), g = dY·weight ----

type layerNormGradOp struct {
	base
	eps     float64
	fwd     *lnStats
	scratch lnStats
}

func newLayerNormGrad(dims int, eps float64, fwd *lnStats) *layerNormGradOp {
	return &layerNormGradOp{base: newBase(OpLayerNormGrad, map[string]any{"eps": eps}, tt(dims), tt(dims), tt(1), tt(dims)), eps: eps, fwd: fwd}
}

func (o *layerNormGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[2])) {
		return nil, fmt.Errorf("%s: X %v and dY %v differ", OpLayerNormGrad, ds[0], ds[2])
	}
	return shapeOf(ds[0]).Clone(), nil
}

func (o *layerNormGradOp) Do(in ...G.Value) (G.Value, error) {
	x, w, dy := f32(in[0]), f32(in[1]), f32(in[2])
	d := lastDim(dims(in[0]))
	st := o.fwd.stats(x, d, o.eps, &o.scratch)
	out := o.output(dims(in[0])...)
	dx := f32(out)
	parallelFor(len(x)/d, 3*len(x), func(r0, r1 int) {
		for r := r0; r < r1; r++ {
			mu, is := st.mean[r], st.invstd[r]
			xr, gr, dr := x[r*d:(r+1)*d], dy[r*d:(r+1)*d], dx[r*d:(r+1)*d]
			var s1, s2 float64
			for j, v := range gr {
				g := float64(v) * float64(w[j])
				s1 += g
				s2 += g * (float64(xr[j]) - mu) * is
			}
			a, b := s1/float64(d), s2/float64(d)
			for j, v := range gr {
				g := float64(v) * float64(w[j])
				dr[j] = float32(is * (g - a - (float64(xr[j])-mu)*is*b))
			}
		}
	})
	return out, nil
}

func (o *layerNormGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *layerNormGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("LayerNormGrad")
}

// ---- LayerNormGradW: dweight[j] = Σ_rows dY·x̂ ----

type layerNormGradWOp struct {
	base
	eps     float64
	fwd     *lnStats
	scratch lnStats
}

func newLayerNormGradW(dims int, eps float64, fwd *lnStats) *layerNormGradWOp {
	return &layerNormGradWOp{base: newBase(OpLayerNormGradW, map[string]any{"eps": eps}, tt(1), tt(dims), tt(dims)), eps: eps, fwd: fwd}
}

func (o *layerNormGradWOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return tensor.Shape{lastDim(shapeOf(ds[0]))}, nil
}

func (o *layerNormGradWOp) Do(in ...G.Value) (G.Value, error) {
	x, dy := f32(in[0]), f32(in[1])
	d := lastDim(dims(in[0]))
	st := o.fwd.stats(x, d, o.eps, &o.scratch)
	out := o.output(d)
	dw := f32(out)
	rows := len(x) / d
	parallelFor(d, 2*len(x), func(j0, j1 int) {
		for j := j0; j < j1; j++ {
			var s float64
			for r := 0; r < rows; r++ {
				s += float64(dy[r*d+j]) * (float64(x[r*d+j]) - st.mean[r]) * st.invstd[r]
			}
			dw[j] = float32(s)
		}
	})
	return out, nil
}

func (o *layerNormGradWOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *layerNormGradWOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("LayerNormGradW")
}
