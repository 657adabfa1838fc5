package graph

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/cblas"
)

// Gorgonia's Slice (with its gradient, sliceIncrOp), Concat and
// BatchedMatMul, as ops of the set: what a device executor runs for them
// (recognise). On the CPU Gorgonia runs its own nodes; these kernels are
// the reference the devices are checked against.

func init() {
	registerOp(OpDef{Kind: OpSlice, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return prod(out) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			if len(in) != 1 || sliceFits(in[0], out, a.Int("axis"), a.Int("start"), a.Int("step")) != nil {
				return nil, fmt.Errorf("graph: %s along %d from %d by %d of %v to %v does not fit", OpSlice, a.Int("axis"), a.Int("start"), a.Int("step"), in, out)
			}
			return newSlice(a.Int("axis"), a.Int("start"), a.Int("step"), in[0], out), nil
		}})
	registerOp(OpDef{Kind: OpSliceGrad, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return prod(out) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			if len(in) != 2 || sliceFits(in[0], in[1], a.Int("axis"), a.Int("start"), a.Int("step")) != nil {
				return nil, fmt.Errorf("graph: %s along %d from %d by %d of %v does not fit", OpSliceGrad, a.Int("axis"), a.Int("start"), a.Int("step"), in)
			}
			return newSliceGrad(a.Int("axis"), a.Int("start"), a.Int("step"), in[0], in[1]), nil
		}})
	registerOp(OpDef{Kind: OpConcat, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return prod(out) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			if err := concatFits(in, out, a.Int("axis")); err != nil {
				return nil, err
			}
			return newConcat(a.Int("axis"), len(in), len(out)), nil
		}})
	registerOp(OpDef{Kind: OpBatchedMatMul, FLOPs: func(a Attrs, in [][]int, out []int) float64 {
		k := in[0][2]
		if a.Bool("trans_a") { // A is [B,K,M]
			k = in[0][1]
		}
		return 2 * prod(out) * float64(k)
	},
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			if len(in) != 2 || bmmShape(in[0], in[1], a.Bool("trans_a"), a.Bool("trans_b")) == nil {
				return nil, fmt.Errorf("graph: %s of %v does not fit", OpBatchedMatMul, in)
			}
			return newBatchedMatMul(a.Bool("trans_a"), a.Bool("trans_b")), nil
		}})
}

// ---- Slice: Y[o,k,i] = X[o, start + k·step, i] ----

type sliceOp struct {
	base
	axis, start, step int
	in, out           tensor.Shape
}

func newSlice(axis, start, step int, in, out []int) *sliceOp {
	return &sliceOp{base: newBase(OpSlice, map[string]any{"axis": axis, "start": start, "step": step}, tt(len(out)), tt(len(in))),
		axis: axis, start: start, step: step, in: slicesClone(in), out: slicesClone(out)}
}

func slicesClone(s []int) tensor.Shape { return append(tensor.Shape{}, s...) }

// sliceFits checks a slice of x along axis from start by step that gives
// y: y has x's shape with n values along axis, or x's shape without axis
// (one value, a single index).
func sliceFits(x, y []int, axis, start, step int) error {
	if axis < 0 || axis >= len(x) || start < 0 || step < 1 {
		return fmt.Errorf("bad slice")
	}
	n := 1
	switch len(y) {
	case len(x):
		n = y[axis]
		for d := range x {
			if d != axis && x[d] != y[d] {
				return fmt.Errorf("bad slice")
			}
		}
	case len(x) - 1:
		for d := range y {
			sd := d
			if d >= axis {
				sd = d + 1
			}
			if x[sd] != y[d] {
				return fmt.Errorf("bad slice")
			}
		}
	default:
		return fmt.Errorf("bad slice")
	}
	if n < 1 || start+(n-1)*step >= x[axis] {
		return fmt.Errorf("bad slice")
	}
	return nil
}

// sliceN is how many values along the axis a slice of x to y keeps.
func sliceN(x, y []int, axis int) int {
	if len(y) == len(x) {
		return y[axis]
	}
	return 1
}

func (o *sliceOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return o.out.Clone(), nil }

func (o *sliceOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(o.out...)
	x, y := f32(in[0]), f32(out)
	outer, nx, inner := splitAt(o.in, o.axis)
	n := sliceN(o.in, o.out, o.axis)
	for q := 0; q < outer; q++ {
		for k := 0; k < n; k++ {
			copy(y[(q*n+k)*inner:][:inner], x[(q*nx+o.start+k*o.step)*inner:][:inner])
		}
	}
	return out, nil
}

func (o *sliceOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *sliceOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Slice (Gorgonia differentiates its own)")
}

// ---- SliceGrad: zeros of X's shape with dY at the slice ----

type sliceGradOp struct {
	base
	axis, start, step int
	x, dy             tensor.Shape
}

func newSliceGrad(axis, start, step int, x, dy []int) *sliceGradOp {
	return &sliceGradOp{base: newBase(OpSliceGrad, map[string]any{"axis": axis, "start": start, "step": step}, tt(len(x)), tt(len(x)), tt(len(dy))),
		axis: axis, start: start, step: step, x: slicesClone(x), dy: slicesClone(dy)}
}

func (o *sliceGradOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return o.x.Clone(), nil }

func (o *sliceGradOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(o.x...)
	g, dx := f32(in[1]), f32(out)
	clear(dx)
	outer, nx, inner := splitAt(o.x, o.axis)
	n := sliceN(o.x, o.dy, o.axis)
	for q := 0; q < outer; q++ {
		for k := 0; k < n; k++ {
			copy(dx[(q*nx+o.start+k*o.step)*inner:][:inner], g[(q*n+k)*inner:][:inner])
		}
	}
	return out, nil
}

func (o *sliceGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *sliceGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("SliceGrad")
}

// ---- Concat: the inputs one after another along an axis ----

type concatOp struct {
	base
	axis int
}

func newConcat(axis, n, d int) *concatOp {
	args := make([]hm.Type, n)
	for i := range args {
		args[i] = tt(d)
	}
	return &concatOp{base: newBase(OpConcat, map[string]any{"axis": axis}, tt(d), args...), axis: axis}
}

// concatFits checks inputs of equal shapes but along axis, whose sizes
// there add up to the output's.
func concatFits(in [][]int, out []int, axis int) error {
	if len(in) == 0 || axis < 0 || axis >= len(out) {
		return fmt.Errorf("graph: %s along %d of %v to %v does not fit", OpConcat, axis, in, out)
	}
	n := 0
	for _, s := range in {
		if len(s) != len(out) {
			return fmt.Errorf("graph: %s along %d of %v to %v does not fit", OpConcat, axis, in, out)
		}
		for d := range s {
			if d != axis && s[d] != out[d] {
				return fmt.Errorf("graph: %s along %d of %v to %v does not fit", OpConcat, axis, in, out)
			}
		}
		n += s[axis]
	}
	if n != out[axis] {
		return fmt.Errorf("graph: %s along %d of %v to %v does not fit", OpConcat, axis, in, out)
	}
	return nil
}

func (o *concatOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	out := shapeOf(ds[0]).Clone()
	for _, d := range ds[1:] {
		out[o.axis] += shapeOf(d)[o.axis]
	}
	return out, nil
}

func (o *concatOp) Do(in ...G.Value) (G.Value, error) {
	os := slicesClone(dims(in[0]))
	for _, v := range in[1:] {
		os[o.axis] += dims(v)[o.axis]
	}
	out := o.output(os...)
	y := f32(out)
	outer, ny, inner := splitAt(os, o.axis)
	off := 0
	for _, v := range in {
		x, n := f32(v), dims(v)[o.axis]
		for q := 0; q < outer; q++ {
			copy(y[(q*ny+off)*inner:][:n*inner], x[q*n*inner:][:n*inner])
		}
		off += n
	}
	return out, nil
}

func (o *concatOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *concatOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Concat (Gorgonia differentiates its own)")
}

// ---- BatchedMatMul: C[b] = op(A[b])·op(B[b]) ----

type batchedMatMulOp struct {
	base
	ta, tb bool
}

func newBatchedMatMul(ta, tb bool) *batchedMatMulOp {
	return &batchedMatMulOp{base: newBase(OpBatchedMatMul, map[string]any{"trans_a": ta, "trans_b": tb}, tt(3), tt(3), tt(3)), ta: ta, tb: tb}
}

// bmmShape is the output's shape ([B, M, N]), or nil when a and b do not fit.
func bmmShape(a, b []int, ta, tb bool) []int {
	if len(a) != 3 || len(b) != 3 || a[0] != b[0] {
		return nil
	}
	m, k := a[1], a[2]
	if ta {
		m, k = k, m
	}
	k2, n := b[1], b[2]
	if tb {
		k2, n = n, k2
	}
	if k != k2 {
		return nil
	}
	return []int{a[0], m, n}
}

func (o *batchedMatMulOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	s := bmmShape(shapeOf(ds[0]), shapeOf(ds[1]), o.ta, o.tb)
	if s == nil {
		return nil, fmt.Errorf("%s of %v and %v", OpBatchedMatMul, ds[0], ds[1])
	}
	return s, nil
}

func (o *batchedMatMulOp) Do(in ...G.Value) (G.Value, error) {
	as, bs := dims(in[0]), dims(in[1])
	s := bmmShape(as, bs, o.ta, o.tb)
	if s == nil {
		return nil, fmt.Errorf("%s of %v and %v", OpBatchedMatMul, as, bs)
	}
	out := o.output(s...)
	a, b, c := f32(in[0]), f32(in[1]), f32(out)
	m, n := s[1], s[2]
	k := as[2]
	if o.ta {
		k = as[1]
	}
	asz, bsz := as[1]*as[2], bs[1]*bs[2]
	for q := 0; q < s[0]; q++ {
		cblas.Sgemm(o.ta, o.tb, m, n, k, 1, a[q*asz:][:asz], as[2], b[q*bsz:][:bsz], bs[2], 0, c[q*m*n:][:m*n], n)
	}
	return out, nil
}

func (o *batchedMatMulOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *batchedMatMulOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("BatchedMatMul (Gorgonia differentiates its own)")
}

// parseSlice reads Gorgonia's "T[:, :, 2:5:1...]" (Slice) and
// "T[...]+=..." (its gradient): the axis, start and step (":", the whole
// axis, is 0 by 1).
func parseSlice(str string, incr bool) (axis, start, step int, ok bool) {
	body, found := strings.CutPrefix(str, "T[")
	suffix := "...]"
	if incr {
		suffix = "...]+=..."
	}
	if body, ok = strings.CutSuffix(body, suffix); !found || !ok {
		return 0, 0, 0, false
	}
	for strings.HasPrefix(body, ":, ") {
		body = body[3:]
		axis++
	}
	if body == ":" {
		return axis, 0, 1, true
	}
	f := strings.Split(body, ":")
	if len(f) != 3 {
		return 0, 0, 0, false
	}
	v := make([]int, 3)
	for i, x := range f {
		n, err := strconv.Atoi(x)
		if err != nil {
			return 0, 0, 0, false
		}
		v[i] = n
	}
	return axis, v[0], v[2], v[2] >= 1
}
