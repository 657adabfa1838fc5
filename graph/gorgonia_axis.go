package graph

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Gorgonia's SoftMax, LogSoftMax and Transpose, as ops of the set: the ops
// a device executor runs for them (recognise). On the CPU Gorgonia runs
// its own nodes; these kernels are the reference the devices are checked
// against, and compute the same functions (not Gorgonia's rounding).

func init() {
	registerOp(OpDef{Kind: OpSoftmax, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return 4 * prod(out) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			if len(in) != 1 || a.Int("axis") < 0 || a.Int("axis") >= len(in[0]) {
				return nil, fmt.Errorf("graph: %s along %d of %v does not fit", OpSoftmax, a.Int("axis"), in)
			}
			return newSoftmax(a.Int("axis"), a.Bool("log"), len(in[0])), nil
		}})
	registerOp(OpDef{Kind: OpSoftmaxGrad, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return 4 * prod(out) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			if len(in) != 3 || a.Int("axis") < 0 || a.Int("axis") >= len(in[0]) {
				return nil, fmt.Errorf("graph: %s along %d of %v does not fit", OpSoftmaxGrad, a.Int("axis"), in)
			}
			return newSoftmaxGrad(a.Int("axis"), a.Bool("log"), len(in[0])), nil
		}})
	registerOp(OpDef{Kind: OpTranspose, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return prod(out) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			perm, err := ParsePerm(a.String("perm"))
			if err != nil || len(in) != 1 || len(perm) != len(in[0]) {
				return nil, fmt.Errorf("graph: %s %q of %v does not fit", OpTranspose, a.String("perm"), in)
			}
			return newTranspose(perm), nil
		}})
}

// ---- Softmax: Y = softmax(X) along an axis (log: log-softmax) ----

type softmaxOp struct {
	base
	axis int
	log  bool
}

func newSoftmax(axis int, log bool, d int) *softmaxOp {
	return &softmaxOp{base: newBase(OpSoftmax, map[string]any{"axis": axis, "log": log}, tt(d), tt(d)), axis: axis, log: log}
}

func (o *softmaxOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[0]).Clone(), nil
}

// Do takes each line along the axis: its maximum m, s = Σ exp(x-m) in
// float64, then exp(x-m)/s, or x-m-ln s.
func (o *softmaxOp) Do(in ...G.Value) (G.Value, error) {
	xs := dims(in[0])
	out := o.output(xs...)
	x, y := f32(in[0]), f32(out)
	outer, n, inner := splitAt(xs, o.axis)
	for q := 0; q < outer; q++ {
		for i := 0; i < inner; i++ {
			at := func(k int) int { return (q*n+k)*inner + i }
			m := math.Inf(-1)
			for k := 0; k < n; k++ {
				m = max(m, float64(x[at(k)]))
			}
			var s float64
			for k := 0; k < n; k++ {
				s += math.Exp(float64(x[at(k)]) - m)
			}
			for k := 0; k < n; k++ {
				if o.log {
					y[at(k)] = float32(float64(x[at(k)]) - m - math.Log(s))
				} else {
					y[at(k)] = float32(math.Exp(float64(x[at(k)])-m) / s)
				}
			}
		}
	}
	return out, nil
}

func (o *softmaxOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *softmaxOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Softmax (Gorgonia differentiates its own)")
}

// ---- SoftmaxGrad: dX from (X, Y, dY) ----

type softmaxGradOp struct {
	base
	axis int
	log  bool
}

func newSoftmaxGrad(axis int, log bool, d int) *softmaxGradOp {
	return &softmaxGradOp{base: newBase(OpSoftmaxGrad, map[string]any{"axis": axis, "log": log}, tt(d), tt(d), tt(d), tt(d)), axis: axis, log: log}
}

func (o *softmaxGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[1]).Clone(), nil
}

// Do is dX = Y ⊙ (dY - Σ dY⊙Y) along the axis, or for log-softmax
// dX = dY - exp(Y)·Σ dY, the sums in float64. X is not read.
func (o *softmaxGradOp) Do(in ...G.Value) (G.Value, error) {
	ys := dims(in[1])
	out := o.output(ys...)
	y, g, dx := f32(in[1]), f32(in[2]), f32(out)
	outer, n, inner := splitAt(ys, o.axis)
	for q := 0; q < outer; q++ {
		for i := 0; i < inner; i++ {
			at := func(k int) int { return (q*n+k)*inner + i }
			var s float64
			for k := 0; k < n; k++ {
				if o.log {
					s += float64(g[at(k)])
				} else {
					s += float64(g[at(k)]) * float64(y[at(k)])
				}
			}
			for k := 0; k < n; k++ {
				if o.log {
					dx[at(k)] = float32(float64(g[at(k)]) - math.Exp(float64(y[at(k)]))*s)
				} else {
					dx[at(k)] = float32(float64(y[at(k)]) * (float64(g[at(k)]) - s))
				}
			}
		}
	}
	return out, nil
}

func (o *softmaxGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *softmaxGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("SoftmaxGrad")
}

// ---- Transpose: Y's axis d is X's axis perm[d] ----

type transposeOp struct {
	base
	perm []int
}

func newTranspose(perm []int) *transposeOp {
	return &transposeOp{base: newBase(OpTranspose, map[string]any{"perm": FormatPerm(perm)}, tt(len(perm)), tt(len(perm))), perm: perm}
}

// FormatPerm writes a permutation as the attribute "perm" holds it: "1,0,2".
func FormatPerm(perm []int) string {
	s := make([]string, len(perm))
	for i, p := range perm {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

// ParsePerm reads a "perm" attribute: a permutation of 0..n-1.
func ParsePerm(s string) ([]int, error) {
	var perm []int
	seen := map[int]bool{}
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || p < 0 || seen[p] {
			return nil, fmt.Errorf("graph: %q is not a permutation of axes", s)
		}
		seen[p] = true
		perm = append(perm, p)
	}
	for _, p := range perm {
		if p >= len(perm) {
			return nil, fmt.Errorf("graph: %q is not a permutation of axes", s)
		}
	}
	return perm, nil
}

func (o *transposeOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	xs := shapeOf(ds[0])
	if len(xs) != len(o.perm) {
		return nil, fmt.Errorf("%s %v of %v", OpTranspose, o.perm, xs)
	}
	out := make(tensor.Shape, len(xs))
	for d, p := range o.perm {
		out[d] = xs[p]
	}
	return out, nil
}

func (o *transposeOp) Do(in ...G.Value) (G.Value, error) {
	xs := dims(in[0])
	os := make([]int, len(xs))
	for d, p := range o.perm {
		os[d] = xs[p]
	}
	out := o.output(os...)
	x, y := f32(in[0]), f32(out)
	// stride[d] is X's stride along the axis that Y's axis d is.
	xstride := make([]int, len(xs))
	st := 1
	for d := len(xs) - 1; d >= 0; d-- {
		xstride[d] = st
		st *= xs[d]
	}
	stride := make([]int, len(xs))
	for d, p := range o.perm {
		stride[d] = xstride[p]
	}
	idx := make([]int, len(os))
	for t := range y {
		src := 0
		for d := range idx {
			src += idx[d] * stride[d]
		}
		y[t] = x[src]
		for d := len(idx) - 1; d >= 0; d-- {
			if idx[d]++; idx[d] < os[d] {
				break
			}
			idx[d] = 0
		}
	}
	return out, nil
}

func (o *transposeOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *transposeOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Transpose (Gorgonia differentiates its own)")
}

// softmaxAxis is the axis Gorgonia's SoftMax of shape s takes for its
// axis attribute a: a itself, or for -1 the last (0 for a column vector
// or a vector that is not a row vector), as softmaxOp.UsePreallocDo does.
func softmaxAxis(s tensor.Shape, a int) int {
	if a != -1 {
		return a
	}
	if s.IsColVec() || (s.IsVector() && !s.IsRowVec()) {
		return 0
	}
	return len(s) - 1
}

// parseSoftmax reads Gorgonia's "Softmax{axis, isLog}()" and
// "SoftmaxDiff{axis, isLog}()".
func parseSoftmax(str, name string) (axis int, log bool, ok bool) {
	body, found := strings.CutPrefix(str, name+"{")
	if !found {
		return 0, false, false
	}
	body, found = strings.CutSuffix(body, "}()")
	a, l, two := strings.Cut(body, ", ")
	if !found || !two {
		return 0, false, false
	}
	axis, err := strconv.Atoi(a)
	if err != nil || (l != "true" && l != "false") {
		return 0, false, false
	}
	return axis, l == "true", true
}

// parseTranspose reads Gorgonia's "Aᵀ{1, 0}".
func parseTranspose(str string) ([]int, bool) {
	body, found := strings.CutPrefix(str, "Aᵀ{")
	if !found {
		return nil, false
	}
	body, found = strings.CutSuffix(body, "}")
	if !found {
		return nil, false
	}
	perm, err := ParsePerm(strings.ReplaceAll(body, " ", ""))
	return perm, err == nil
}
