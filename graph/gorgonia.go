package graph

import (
	"fmt"

	"github.com/chewxy/hm"
	"math"
	"slices"
	"strconv"
	"strings"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Gorgonia's own operators that a program may hold. Gorgonia's Grad sums
// the gradients of a node with several consumers with its own Add (a
// residual connection, a tied weight), and a model may be written with
// Gorgonia's operators directly (gorgonia.Mul, BroadcastAdd, Rectify, ...)
// on the nodes nn.Ctx gives it. The set recognises these operators: a
// node of one is run by Gorgonia on the CPU, and a device executor runs
// it as the op of the set that computes the same (recognise). Those are:
//
//   - elementwise + - ⊙ ÷ of equal shapes (Add, Sub, Mul, Div), and of a
//     tensor and a scalar, with the comparisons < > <= >= that return
//     1 or 0 (ElemScalar: Rectify is x ⊙ (x >= 0));
//   - the unary functions neg exp ln sqrt square tanh sigmoid abs inv
//     invSqrt cube (ElemUnary);
//   - the matrix product, either side transposed (MatMul);
//   - Reshape; the Repeat along an axis of size 1 and SizeOf (a constant)
//     that broadcasting is made of (BroadcastAdd and the others); Sum
//     over one axis (ReduceSum), which is Repeat's gradient and Mean's
//     first half;
//   - SoftMax and LogSoftMax along an axis, and their gradient (Softmax,
//     SoftmaxGrad); Transpose by any permutation of the axes;
//   - Slice along one axis with a step, and its gradient (Slice,
//     SliceGrad); Concat along an axis; BatchedMatMul, either side
//     transposed.
//
// Any other node of Gorgonia's is refused when the program is compiled,
// naming the operator and the layer it came from.

// recognised lists the operators above, for messages.
const recognised = "elementwise + - ⊙ ÷ (equal shapes or with a scalar), comparisons with a scalar, neg exp ln sqrt square tanh sigmoid abs inv invSqrt cube, matrix products, Reshape, broadcasting (Repeat, SizeOf), Sum over one axis, SoftMax and LogSoftMax along an axis, Transpose, Slice, Concat, BatchedMatMul"

// gorgoniaOp names a Gorgonia operator by its Go type ("elemBinOp") and
// its String().
func gorgoniaOp(op G.Op) (typ, str string) {
	typ = strings.TrimPrefix(strings.TrimPrefix(fmt.Sprintf("%T", op), "*"), "gorgonia.")
	return typ, op.String()
}

// recognise returns the op of the set that computes a Gorgonia operator
// node of inputs in and output out, or false.
func recognise(op G.Op, in []tensor.Shape, out tensor.Shape) (Op, bool) {
	typ, str := gorgoniaOp(op)
	switch typ {
	case "elemBinOp":
		sym, retSame, ok := strings.Cut(str, " ")
		if !ok || len(in) != 2 {
			return nil, false
		}
		a, b := in[0], in[1]
		scalarA, scalarB := a.IsScalar(), b.IsScalar()
		switch {
		case !scalarA && !scalarB && a.Eq(b) && a.Eq(out):
			switch sym {
			case "+":
				return newAdd(len(out)), true
			case "-":
				return newElemBin(OpSub, len(out)), true
			case "⊙":
				return newMul(len(out)), true
			case "÷":
				return newElemBin(OpDiv, len(out)), true
			}
		case scalarA != scalarB || (scalarA && scalarB):
			t := a
			if scalarA && !scalarB {
				t = b
			}
			if !t.Eq(out) && !(t.IsScalar() && out.IsScalar()) {
				return nil, false
			}
			if _, known := scalarOps[sym]; !known || (isComparison(sym) && retSame != "true") {
				return nil, false
			}
			return newElemScalar(sym, scalarA && !scalarB, len(t)), true
		}
	case "elemUnaryOp":
		if _, known := unaryFns[str]; known && len(in) == 1 && in[0].Eq(out) {
			return newElemUnary(str, len(out)), true
		}
	case "linAlgBinOp":
		if ta, tb, ok := parseMatMul(str); ok && len(in) == 2 && len(in[0]) == 2 && len(in[1]) == 2 && len(out) == 2 {
			return newMatMul(ta, tb), true
		}
		if ta, tb, ok := parseMatMul(strings.ReplaceAll(str, "×××", "×")); ok && strings.Contains(str, "×××") && len(in) == 2 {
			if s := bmmShape(in[0], in[1], ta, tb); s != nil && tensor.Shape(s).Eq(out) {
				return newBatchedMatMul(ta, tb), true
			}
		}
	case "sliceOp", "sliceIncrOp":
		incr := typ == "sliceIncrOp"
		axis, start, step, ok := parseSlice(str, incr)
		x, y := in[0], out // Slice(X) -> Y; sliceIncrOp(X, dY) -> dX of X's shape
		switch {
		case !ok || len(in) != 1 && !incr || len(in) != 2 && incr:
			return nil, false
		case incr && !in[0].Eq(out):
			return nil, false
		case incr:
			x, y = out, in[1]
		}
		if sliceFits(x, y, axis, start, step) != nil {
			return nil, false
		}
		if incr {
			return newSliceGrad(axis, start, step, x, y), true
		}
		return newSlice(axis, start, step, x, y), true
	case "concatOp":
		var axis int
		if _, err := fmt.Sscanf(str, "Concat(axis=%d)", &axis); err == nil && concatFits(shapesToInts(in), out, axis) == nil {
			return newConcat(axis, len(in), len(out)), true
		}
	case "reshapeOp":
		if len(in) == 1 && in[0].TotalSize() == out.TotalSize() && len(out) > 0 {
			return newReshape(in[0], out), true
		}
	case "repeatOp":
		axis, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(str, "Repeat["), "]"))
		if err != nil {
			axis, err = strconv.Atoi(strings.TrimPrefix(str, "Repeat"))
		}
		if err == nil && len(in) == 2 && in[1].IsScalar() && repeatFits(in[0], out, axis) {
			return newRepeat(axis, len(out)), true
		}
	case "softmaxOp":
		axis, log, ok := parseSoftmax(str, "Softmax")
		if ok && len(in) == 1 && in[0].Eq(out) {
			if axis = softmaxAxis(in[0], axis); axis >= 0 && axis < len(out) {
				return newSoftmax(axis, log, len(out)), true
			}
		}
	case "softmaxDiffOp":
		axis, log, ok := parseSoftmax(str, "SoftmaxDiff")
		if ok && len(in) == 3 && in[1].Eq(out) && in[2].Eq(out) {
			if axis = softmaxAxis(in[1], axis); axis >= 0 && axis < len(out) {
				return newSoftmaxGrad(axis, log, len(out)), true
			}
		}
	case "transposeOp":
		perm, ok := parseTranspose(str)
		if ok && len(in) == 1 && len(perm) == len(in[0]) {
			return newTranspose(perm), true
		}
	case "sumOp":
		axes := strings.Fields(strings.Trim(strings.TrimPrefix(str, "Σ"), "[]"))
		if len(in) != 1 || len(axes) == 0 {
			return nil, false
		}
		if len(axes) == len(in[0]) && out.IsScalar() { // every axis: the sum of all values
			for i, a := range axes {
				if a != strconv.Itoa(i) {
					return nil, false
				}
			}
			return newReduceSumAll(len(in[0])), true
		}
		if len(axes) != 1 {
			return nil, false
		}
		axis, err := strconv.Atoi(axes[0])
		if err == nil && axis >= 0 && axis < len(in[0]) && reducedShape(in[0], axis).Eq(out) {
			return newReduceSum(axis, len(in[0])), true
		}
	}
	return nil, false
}

// constantOf is the value of a Gorgonia node that is a constant of the
// program without being a value node: SizeOf, whose value is its input's
// size along an axis, known from the shapes.
func constantOf(n *G.Node) (float32, bool) {
	typ, str := gorgoniaOp(n.Op())
	if typ != "sizeOp" {
		return 0, false
	}
	v, err := strconv.Atoi(strings.TrimPrefix(str, "SizeOf="))
	if err != nil || v <= 0 {
		return 0, false
	}
	return float32(v), true
}

// recogniseNode is recognise for a node of g.
func recogniseNode(g *G.ExprGraph, n *G.Node) (Op, bool) {
	var in []tensor.Shape
	it := g.From(n.ID())
	for it.Next() {
		in = append(in, it.Node().(*G.Node).Shape())
	}
	return recognise(n.Op(), in, n.Shape())
}

// refusal is the error for a node of g that is neither an op of the set
// nor a Gorgonia operator the set recognises.
func refusal(g *G.ExprGraph, n *G.Node) error {
	var in []string
	it := g.From(n.ID())
	for it.Next() {
		in = append(in, fmt.Sprint(it.Node().(*G.Node).Shape()))
	}
	typ, str := gorgoniaOp(n.Op())
	return fmt.Errorf("node %q: Gorgonia's %s %q of inputs %s is not one gotrain runs (it runs %s)", n.Name(), typ, str, strings.Join(in, ", "), recognised)
}

func shapesToInts(s []tensor.Shape) [][]int {
	out := make([][]int, len(s))
	for i, x := range s {
		out[i] = x
	}
	return out
}

func parseMatMul(s string) (ta, tb, ok bool) {
	switch s {
	case "A × B":
		return false, false, true
	case "Aᵀ × B":
		return true, false, true
	case "A × Bᵀ":
		return false, true, true
	case "Aᵀ × Bᵀ":
		return true, true, true
	}
	return false, false, false
}

func repeatFits(x, out tensor.Shape, axis int) bool {
	if len(x) != len(out) || axis < 0 || axis >= len(out) || x[axis] != 1 {
		return false
	}
	for i := range x {
		if i != axis && x[i] != out[i] {
			return false
		}
	}
	return true
}

// reducedShape is s without axis (a scalar's shape for a vector).
func reducedShape(s tensor.Shape, axis int) tensor.Shape {
	r := append(append(tensor.Shape{}, s[:axis]...), s[axis+1:]...)
	if len(r) == 0 {
		return tensor.ScalarShape()
	}
	return r
}

// typeOf is the gorgonia type of a float32 value of d dimensions (a
// scalar for 0).
func typeOf(d int) hm.Type {
	if d == 0 {
		return scalarT
	}
	return tt(d)
}

func init() {
	registerOp(OpDef{Kind: OpAdd, FLOPs: elementwiseFLOPs,
		Make: func(_ Attrs, in [][]int, _ []int) (Op, error) {
			return newAdd(firstDims(in)), nil
		}})
	registerOp(OpDef{Kind: OpSub, FLOPs: elementwiseFLOPs,
		Make: func(_ Attrs, in [][]int, _ []int) (Op, error) { return newElemBin(OpSub, firstDims(in)), nil }})
	registerOp(OpDef{Kind: OpDiv, FLOPs: elementwiseFLOPs,
		Make: func(_ Attrs, in [][]int, _ []int) (Op, error) { return newElemBin(OpDiv, firstDims(in)), nil }})
	registerOp(OpDef{Kind: OpElemScalar, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			sym := a.String("op")
			if _, ok := scalarOps[sym]; !ok {
				return nil, fmt.Errorf("graph: %s: op %q is not one of + - ⊙ ÷ < > <= >=", OpElemScalar, sym)
			}
			first := a.Bool("scalar_first")
			t := 0
			if first {
				t = 1
			}
			if len(in) != 2 {
				return nil, fmt.Errorf("graph: %s takes a tensor and a scalar, got %v", OpElemScalar, in)
			}
			return newElemScalar(sym, first, len(in[t])), nil
		}})
	registerOp(OpDef{Kind: OpElemUnary, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			fn := a.String("fn")
			if _, ok := unaryFns[fn]; !ok {
				return nil, fmt.Errorf("graph: %s: function %q is not one the set runs", OpElemUnary, fn)
			}
			return newElemUnary(fn, firstDims(in)), nil
		}})
	registerOp(OpDef{Kind: OpRepeat, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			if len(in) == 0 || !repeatFits(in[0], out, a.Int("axis")) {
				return nil, fmt.Errorf("graph: %s along %d of %v to %v does not fit", OpRepeat, a.Int("axis"), in, out)
			}
			return newRepeat(a.Int("axis"), len(out)), nil
		}})
	registerOp(OpDef{Kind: OpReduceSum, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return prod(in[0]) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			if len(in) != 1 || a.Int("axis") < 0 || a.Int("axis") >= len(in[0]) {
				return nil, fmt.Errorf("graph: %s along %d of %v does not fit", OpReduceSum, a.Int("axis"), in)
			}
			if a.Bool("all") {
				return newReduceSumAll(len(in[0])), nil
			}
			return newReduceSum(a.Int("axis"), len(in[0])), nil
		}})
}

// ---- Add: Y = A + B elementwise, the same shapes ----

type addOp struct{ base }

func newAdd(d int) *addOp { return &addOp{newBase(OpAdd, nil, tt(d), tt(d), tt(d))} }

func (o *addOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[1])) {
		return nil, fmt.Errorf("%s: shapes %v and %v differ", OpAdd, ds[0], ds[1])
	}
	return shapeOf(ds[0]).Clone(), nil
}

func (o *addOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	a, b, y := f32(in[0]), f32(in[1]), f32(out)
	b, y = b[:len(a)], y[:len(a)]
	for i, v := range a {
		y[i] = v + b[i]
	}
	return out, nil
}

func (o *addOp) DiffWRT(int) []bool { return []bool{true, true} }

func (o *addOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	return G.Nodes{grad, grad}, nil
}

// ---- Sub, Div: elementwise, the same shapes ----

type elemBinOp struct{ base }

func newElemBin(k Kind, d int) *elemBinOp { return &elemBinOp{newBase(k, nil, tt(d), tt(d), tt(d))} }

func (o *elemBinOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[1])) {
		return nil, fmt.Errorf("%s: shapes %v and %v differ", o.kind, ds[0], ds[1])
	}
	return shapeOf(ds[0]).Clone(), nil
}

func (o *elemBinOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	a, b, y := f32(in[0]), f32(in[1]), f32(out)
	b, y = b[:len(a)], y[:len(a)]
	if o.kind == OpSub {
		for i, v := range a {
			y[i] = v - b[i]
		}
	} else {
		for i, v := range a {
			y[i] = v / b[i]
		}
	}
	return out, nil
}

func (o *elemBinOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *elemBinOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad(string(o.kind) + " (Gorgonia differentiates its own)")
}

// ---- ElemScalar: X op s, or s op X ----

var scalarOps = map[string]func(a, b float32) float32{
	"+": func(a, b float32) float32 { return a + b },
	"-": func(a, b float32) float32 { return a - b },
	"⊙": func(a, b float32) float32 { return a * b },
	"÷": func(a, b float32) float32 { return a / b },
	"<": func(a, b float32) float32 { return b2f(a < b) },
	">": func(a, b float32) float32 { return b2f(a > b) },
	"<=": func(a, b float32) float32 {
		return b2f(a <= b)
	},
	">=": func(a, b float32) float32 { return b2f(a >= b) },
}

func isComparison(sym string) bool { return strings.ContainsAny(sym, "<>") }

func b2f(b bool) float32 {
	if b {
		return 1
	}
	return 0
}

type elemScalarOp struct {
	base
	f     func(a, b float32) float32
	first bool // the scalar is the first operand
	d     int
}

func newElemScalar(sym string, scalarFirst bool, d int) *elemScalarOp {
	args := []hm.Type{typeOf(d), scalarT}
	if scalarFirst {
		args = []hm.Type{scalarT, typeOf(d)}
	}
	o := &elemScalarOp{f: scalarOps[sym], first: scalarFirst, d: d}
	o.base = newBase(OpElemScalar, map[string]any{"op": sym, "scalar_first": scalarFirst}, typeOf(d), args...)
	return o
}

func (o *elemScalarOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	t := shapeOf(ds[0])
	if o.first {
		t = shapeOf(ds[1])
	}
	return t.Clone(), nil
}

func (o *elemScalarOp) Do(in ...G.Value) (G.Value, error) {
	xv, sv := in[0], in[1]
	if o.first {
		xv, sv = in[1], in[0]
	}
	s := scalarOf(sv)
	if o.d == 0 {
		x := scalarOf(xv)
		r := o.f(x, s)
		if o.first {
			r = o.f(s, x)
		}
		v := G.F32(r)
		return &v, nil
	}
	out := o.output(dims(xv)...)
	x, y := f32(xv), f32(out)
	y = y[:len(x)]
	if o.first {
		for i, v := range x {
			y[i] = o.f(s, v)
		}
	} else {
		for i, v := range x {
			y[i] = o.f(v, s)
		}
	}
	return out, nil
}

func (o *elemScalarOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *elemScalarOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("ElemScalar (Gorgonia differentiates its own)")
}

// ---- ElemUnary: f(X) ----

var unaryFns = map[string]func(float64) float64{
	"neg":     func(x float64) float64 { return -x },
	"exp":     math.Exp,
	"ln":      math.Log,
	"sqrt":    math.Sqrt,
	"square":  func(x float64) float64 { return x * x },
	"tanh":    math.Tanh,
	"sigmoid": func(x float64) float64 { return 1 / (1 + math.Exp(-x)) },
	"abs":     math.Abs,
	"inv":     func(x float64) float64 { return 1 / x },
	"invSqrt": func(x float64) float64 { return 1 / math.Sqrt(x) },
	"cube":    func(x float64) float64 { return x * x * x },
}

type elemUnaryOp struct {
	base
	f func(float64) float64
	d int
}

func newElemUnary(fn string, d int) *elemUnaryOp {
	return &elemUnaryOp{base: newBase(OpElemUnary, map[string]any{"fn": fn}, typeOf(d), typeOf(d)), f: unaryFns[fn], d: d}
}

func (o *elemUnaryOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[0]).Clone(), nil
}

func (o *elemUnaryOp) Do(in ...G.Value) (G.Value, error) {
	if o.d == 0 {
		v := G.F32(float32(o.f(float64(scalarOf(in[0])))))
		return &v, nil
	}
	out := o.output(dims(in[0])...)
	x, y := f32(in[0]), f32(out)
	y = y[:len(x)]
	for i, v := range x {
		y[i] = float32(o.f(float64(v)))
	}
	return out, nil
}

func (o *elemUnaryOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *elemUnaryOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("ElemUnary (Gorgonia differentiates its own)")
}

// ---- Repeat: X of size 1 along axis, repeated to the output's size ----

type repeatOp struct {
	base
	axis int
}

func newRepeat(axis, d int) *repeatOp {
	return &repeatOp{base: newBase(OpRepeat, map[string]any{"axis": axis}, tt(d), tt(d), scalarT), axis: axis}
}

func (o *repeatOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return nil, fmt.Errorf("%s: its output's size comes from its count's value; run it with Run", OpRepeat)
}

// outer, n and inner split an output of shape s at axis.
func splitAt(s []int, axis int) (outer, n, inner int) {
	outer, inner = 1, 1
	for _, d := range s[:axis] {
		outer *= d
	}
	for _, d := range s[axis+1:] {
		inner *= d
	}
	return outer, s[axis], inner
}

func (o *repeatOp) Do(in ...G.Value) (G.Value, error) {
	xs := slices.Clone(dims(in[0]))
	count := int(scalarOf(in[1]))
	if o.axis >= len(xs) || xs[o.axis] != 1 || count < 1 {
		return nil, fmt.Errorf("%s: %v along %d, %d times, does not fit", OpRepeat, xs, o.axis, count)
	}
	xs[o.axis] = count
	out := o.output(xs...)
	x, y := f32(in[0]), f32(out)
	outer, n, inner := splitAt(xs, o.axis)
	for q := 0; q < outer; q++ {
		src := x[q*inner:][:inner]
		for k := 0; k < n; k++ {
			copy(y[(q*n+k)*inner:][:inner], src)
		}
	}
	return out, nil
}

func (o *repeatOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *repeatOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Repeat (Gorgonia differentiates its own)")
}

// ---- ReduceSum: Σ over one axis, which goes ----

type reduceSumOp struct {
	base
	axis int
	all  bool // every axis: a scalar
}

func newReduceSum(axis, d int) *reduceSumOp {
	return &reduceSumOp{base: newBase(OpReduceSum, map[string]any{"axis": axis}, typeOf(d-1), tt(d)), axis: axis}
}

// newReduceSumAll sums every value of a d-dimensional input: the attribute
// "all" says so (a device sums the input as one axis).
func newReduceSumAll(d int) *reduceSumOp {
	return &reduceSumOp{base: newBase(OpReduceSum, map[string]any{"axis": 0, "all": true}, scalarT, tt(d)), all: true}
}

func (o *reduceSumOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if o.all {
		return tensor.ScalarShape(), nil
	}
	return reducedShape(shapeOf(ds[0]), o.axis), nil
}

func (o *reduceSumOp) Do(in ...G.Value) (G.Value, error) {
	xs := dims(in[0])
	x := f32(in[0])
	if o.all {
		xs = []int{len(x)}
	}
	outer, n, inner := splitAt(xs, o.axis)
	sum := func(q, i int) float32 {
		var s float64
		for k := 0; k < n; k++ {
			s += float64(x[(q*n+k)*inner+i])
		}
		return float32(s)
	}
	rs := reducedShape(tensor.Shape(xs), o.axis)
	if rs.IsScalar() {
		v := G.F32(sum(0, 0))
		return &v, nil
	}
	out := o.output(rs...)
	y := f32(out)
	for q := 0; q < outer; q++ {
		for i := 0; i < inner; i++ {
			y[q*inner+i] = sum(q, i)
		}
	}
	return out, nil
}

func (o *reduceSumOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *reduceSumOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("ReduceSum (Gorgonia differentiates its own)")
}
