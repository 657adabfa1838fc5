package graph

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/graph/nn"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// gorgoniaNet builds, with Gorgonia's operators only, a residual MLP
// with a Mean loss and its gradients: the nodes a user's Gorgonia model
// and Grad produce.
func gorgoniaNet(t *testing.T, g *G.ExprGraph, r *rand.Rand) (G.Nodes, *G.Node) {
	t.Helper()
	val := func(name string, s ...int) *G.Node {
		d := make([]float32, tensor.Shape(s).TotalSize())
		for i := range d {
			d[i] = float32(r.NormFloat64())
		}
		return G.NewTensor(g, tensor.Float32, len(s), G.WithShape(s...), G.WithName(name),
			G.WithValue(tensor.New(tensor.WithShape(s...), tensor.WithBacking(d))))
	}
	x, w1, b1, w2, b2 := val("x", 5, 4), val("w1", 4, 6), val("b1", 6), val("w2", 6, 6), val("b2", 6)
	must := func(n *G.Node, err error) *G.Node {
		t.Helper()
		require.NoError(t, err)
		return n
	}
	h := must(G.Rectify(must(G.BroadcastAdd(must(G.Mul(x, w1)), b1, nil, []byte{0}))))
	r2 := must(G.Tanh(must(G.BroadcastAdd(must(G.Mul(h, w2)), b2, nil, []byte{0}))))
	h = must(G.Add(h, r2))
	// Attention-like: softmax(h·hᵀ)·h, and a log-softmax.
	att := must(G.SoftMax(must(G.Mul(h, must(G.Transpose(h))))))
	h = must(G.Add(h, must(G.Mul(att, h))))
	h = must(G.Add(h, must(G.Mul(must(G.LogSoftMax(h)), G.NewConstant(float32(0.1))))))
	// Slices (a range, a stepped range) put back together by Concat.
	left, right := must(G.Slice(h, nil, G.S(0, 2))), must(G.Slice(h, nil, G.S(2, 6)))
	even := must(G.Slice(h, nil, G.S(0, 6, 2)))
	h = must(G.Add(h, must(G.Mul(must(G.Concat(1, right, left)), G.NewConstant(float32(0.5))))))
	h = must(G.Add(h, must(G.Concat(1, even, even))))
	// Batched products of [5, 2, 3] with itself, the second transposed.
	h3 := must(G.Reshape(h, tensor.Shape{5, 2, 3}))
	bm := must(G.BatchedMatMul(h3, h3, false, true))
	h = must(G.Add(h, must(G.Reshape(must(G.BatchedMatMul(bm, h3)), tensor.Shape{5, 6}))))
	h = must(G.Sub(must(G.HadamardProd(h, h)), must(G.Exp(must(G.Neg(h))))))
	h = must(G.Mul(h, G.NewConstant(float32(0.5))))
	h = must(G.HadamardDiv(h, must(G.Add(must(G.Square(h)), G.NewConstant(float32(2))))))
	h = must(G.Sigmoid(h))
	cost := must(G.Mean(must(G.Sum(h, 1))))
	grads, err := G.Grad(cost, w1, b1, w2, b2)
	require.NoError(t, err)
	return grads, cost
}

// TestRecognisedOperatorsComputeWhatGorgoniaComputes: every node of a
// Gorgonia model and its gradients is an op of the set or one the set
// recognises, and the program evaluated with the recognised ops alone (as
// a device runs it) gives the loss and the gradients Gorgonia computes.
func TestRecognisedOperatorsComputeWhatGorgoniaComputes(t *testing.T) {
	g := G.NewGraph()
	grads, cost := gorgoniaNet(t, g, rand.New(rand.NewPCG(1, 2)))
	require.NoError(t, checkClosed(g))
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	require.NoError(t, vm.RunAll())

	order, err := G.Sort(g)
	require.NoError(t, err)
	vals := map[*G.Node]G.Value{}
	kinds := map[Kind]int{}
	for i := len(order) - 1; i >= 0; i-- { // inputs first
		n := order[i]
		switch {
		case n.Op() == nil || n.Op().Arity() == 0:
			vals[n] = n.Value()
			continue
		}
		if v, isConst := constantOf(n); isConst {
			f := G.F32(v)
			vals[n] = &f
			continue
		}
		op, ok := recogniseNode(g, n)
		require.True(t, ok, "%v", n)
		kinds[op.Kind()]++
		var in []G.Value
		it := g.From(n.ID())
		for it.Next() {
			in = append(in, vals[it.Node().(*G.Node)])
		}
		vals[n], err = op.Do(in...)
		require.NoError(t, err, "%s for %v", op, n)
	}
	for _, n := range append(G.Nodes{cost}, grads...) {
		want, got := n.Value(), vals[n]
		require.Equal(t, []int(want.Shape()), []int(got.Shape()), "%v", n)
		var w, gv []float32
		if want.Shape().IsScalar() {
			w, gv = []float32{scalarOf(want)}, []float32{scalarOf(got)}
		} else {
			w, gv = f32(want), f32(got)
		}
		for i := range w {
			require.InDelta(t, w[i], gv[i], 1e-5*math.Max(1, math.Abs(float64(w[i]))), "%v, value %d", n, i)
		}
	}
	for _, k := range []Kind{OpMatMul, OpAdd, OpSub, OpMul, OpDiv, OpElemScalar, OpElemUnary, OpRepeat, OpReduceSum, OpReshape, OpSoftmax, OpSoftmaxGrad, OpTranspose, OpSlice, OpSliceGrad, OpConcat, OpBatchedMatMul} {
		require.Positive(t, kinds[k], "no %s in the program: %v", k, kinds)
	}
	t.Logf("ops: %v", kinds)
}

// TestUnrecognisedOperatorsAreRefused: a Gorgonia operator the set does
// not run is refused, naming it and its inputs.
func TestUnrecognisedOperatorsAreRefused(t *testing.T) {
	g := G.NewGraph()
	x := G.NewMatrix(g, tensor.Float32, G.WithShape(3, 4), G.WithName("x"))
	_, err := G.Softplus(x)
	require.NoError(t, err)
	err = checkClosed(g)
	require.ErrorContains(t, err, "is not one gotrain runs")
	require.ErrorContains(t, err, "elemUnaryOp")
	require.ErrorContains(t, err, "softplus")
	require.ErrorContains(t, err, "(3, 4)")
	// A variadic operator (arity -1) is checked too: Concat of a shape it
	// does not fit would be refused, one it fits is recognised.
	g2 := G.NewGraph()
	y := G.NewMatrix(g2, tensor.Float32, G.WithShape(3, 4), G.WithName("y"))
	_, err = G.Concat(0, y, y)
	require.NoError(t, err)
	require.NoError(t, checkClosed(g2))
}

// gorgoniaMLP is a residual MLP whose Forward calls Gorgonia's operators
// directly: x·W1 + b1 (gorgonia.Mul, BroadcastAdd), Rectify, a residual
// block, and a last product to the class scores.
func gorgoniaMLP(s *nn.Scope, spec Spec) (nn.Module, error) {
	in, h := spec.InC*spec.InH*spec.InW, 8
	w1 := s.Param("w1", nn.FanIn(in), in, h)
	b1 := s.Param("b1", nn.Zeros(), h)
	w2 := s.Param("w2", nn.FanIn(h), h, h)
	b2 := s.Param("b2", nn.Zeros(), h)
	w3 := s.Param("w3", nn.FanIn(h), h, spec.Classes)
	b3 := s.Param("b3", nn.Zeros(), spec.Classes)
	dense := func(c nn.Ctx, x nn.T, w, b *nn.Param) nn.T {
		xw, err := G.Mul(x, c.Param(w))
		if err != nil {
			c.Fail(err)
			return nil
		}
		y, err := G.BroadcastAdd(xw, c.Param(b), nil, []byte{0})
		if err != nil {
			c.Fail(err)
		}
		return y
	}
	relu := func(c nn.Ctx, x nn.T) nn.T {
		y, err := G.Rectify(x)
		if err != nil {
			c.Fail(err)
		}
		return y
	}
	return nn.Seq(
		nn.Func(func(c nn.Ctx, x nn.T) nn.T { return relu(c, dense(c, x, w1, b1)) }),
		nn.Func(func(c nn.Ctx, x nn.T) nn.T { return c.Add(x, relu(c, dense(c, x, w2, b2))) }),
		nn.Func(func(c nn.Ctx, x nn.T) nn.T { return dense(c, x, w3, b3) }),
	), nil
}

// TestGorgoniaModelTrains: a model built from Gorgonia's operators
// compiles, its gradients match finite differences, and its layout holds
// only registered ops.
func TestGorgoniaModelTrains(t *testing.T) {
	m, err := Build(Spec{Kind: "gorgonia-mlp", InH: 3, InW: 4, Classes: 3}, gorgoniaMLP, 2)
	require.NoError(t, err)
	prog := labelledProgram(t, m, 6, 1, 2, 3)
	gradCheck(t, m, prog, 3)
	// Grad's slices stay the same from run to run, holding each run's
	// gradients (an optimiser keeps them), though Gorgonia's operators
	// give their nodes new values every run.
	_, err = prog.Run(nil)
	require.NoError(t, err)
	held := make([][]float32, len(m.Params))
	first := make([][]float32, len(m.Params))
	for i := range m.Params {
		held[i], first[i] = prog.Grad(i), slices.Clone(prog.Grad(i))
	}
	fill(rand.New(rand.NewPCG(5, 6)), prog.X, 1)
	_, err = prog.Run(nil)
	require.NoError(t, err)
	for i, p := range m.Params {
		require.Same(t, &held[i][0], &prog.Grad(i)[0], "%s: the same slice", p.Name)
		require.NotEqual(t, first[i], held[i], "%s: holding the new run's gradient", p.Name)
	}
	l, err := prog.Layout()
	require.NoError(t, err)
	for _, nd := range l.Nodes {
		if nd.Role == RoleOp {
			_, ok := LookupOp(nd.Op.Kind())
			require.True(t, ok, "%s", nd.Op.Kind())
		}
	}
}

// TestGorgoniaOperatorRefusalNamesTheLayer: a layer calling an operator
// the set does not run is refused when the program is built, naming the
// layer and the operator.
func TestGorgoniaOperatorRefusalNamesTheLayer(t *testing.T) {
	bad := func(s *nn.Scope, spec Spec) (nn.Module, error) {
		fc := nn.NewLinear(s.Sub("fc"), spec.InC*spec.InH*spec.InW, spec.Classes)
		return nn.Seq(fc, nn.Func(func(c nn.Ctx, x nn.T) nn.T {
			y, err := G.Softplus(x)
			if err != nil {
				c.Fail(err)
			}
			return y
		})), nil
	}
	_, err := Build(Spec{Kind: "softplussed", InH: 2, InW: 2, Classes: 3}, bad, 1)
	require.ErrorContains(t, err, "layer 1")
	require.ErrorContains(t, err, "softplus")
}

// TestLayerNormModelGradients: a model with LayerNorm (rows of [N, T, D]
// too) and GELU matches finite differences.
func TestLayerNormModelGradients(t *testing.T) {
	f := func(s *nn.Scope, spec Spec) (nn.Module, error) {
		in := spec.InC * spec.InH * spec.InW
		fc := nn.NewLinear(s.Sub("fc"), in, 12)
		ln := nn.NewLayerNorm(s.Sub("ln"), 4)
		ln2 := nn.NewLayerNorm(s.Sub("ln2"), 12)
		head := nn.NewLinear(s.Sub("head"), 12, spec.Classes)
		return nn.Seq(fc,
			nn.Func(func(c nn.Ctx, x nn.T) nn.T { return c.Reshape(x, c.Batch(), 3, 4) }), // [N, T=3, D=4]
			ln, nn.GELU{},
			nn.Func(func(c nn.Ctx, x nn.T) nn.T { return c.Reshape(x, c.Batch(), 12) }),
			ln2, nn.SiLU{}, head), nil
	}
	m, err := Build(Spec{Kind: "ln", InH: 3, InW: 3, Classes: 4}, f, 5)
	require.NoError(t, err)
	prog := labelledProgram(t, m, 5, 7, 8, 4)
	gradCheck(t, m, prog, 1)
}

// TestAvgPoolModelGradients: a model with AvgPool2d (windows that
// overlap, stride 1, and that do not, stride 2) and a wide 3x3 convolution
// (kern's direct kernels where the CPU has them) matches finite
// differences.
func TestAvgPoolModelGradients(t *testing.T) {
	f := func(s *nn.Scope, spec Spec) (nn.Module, error) {
		conv0 := nn.NewConv2d(s.Sub("conv0"), spec.InC, 3, 3, 1, 1)
		conv := nn.NewConv2d(s.Sub("conv"), 3, 3, 3, 1, 1) // both gradients: kern.Conv3Bwd's one pass
		conv2 := nn.NewConv2d(s.Sub("conv2"), 3, 2, 3, 1, 1)
		fc := nn.NewLinear(s.Sub("fc"), 2*3*5, spec.Classes)
		return nn.Seq(conv0, nn.Tanh{}, conv, nn.Tanh{}, nn.AvgPool2d{Kernel: 3, Stride: 1}, conv2, nn.AvgPool2d{Kernel: 2},
			nn.Func(func(c nn.Ctx, x nn.T) nn.T { return c.Reshape(x, c.Batch(), 2*3*5) }), fc), nil
	}
	m, err := Build(Spec{Kind: "avgpooled", InH: 8, InW: 13, Classes: 3}, f, 5)
	require.NoError(t, err)
	prog := labelledProgram(t, m, 4, 9, 8, 3)
	gradCheck(t, m, prog, 1)
}
