package graph

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// golden is a tensor of testdata/golden_ops.json (gen_golden.py).
type golden struct {
	Shape []int     `json:"shape"`
	Data  []float32 `json:"data"`
}

type goldenCase map[string]json.RawMessage

func (c goldenCase) t(t *testing.T, k string) golden {
	var g golden
	require.Contains(t, c, k)
	require.NoError(t, json.Unmarshal(c[k], &g))
	return g
}

func (c goldenCase) val(t *testing.T, k string, v any) {
	require.Contains(t, c, k)
	require.NoError(t, json.Unmarshal(c[k], v))
}

func loadGolden(t *testing.T) []goldenCase {
	b, err := os.ReadFile("testdata/golden_ops.json")
	require.NoError(t, err)
	var f struct {
		Cases []goldenCase `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(b, &f))
	require.NotEmpty(t, f.Cases)
	return f.Cases
}

// requireClose compares within 1e-5 relative (and 1e-6 absolute, for
// values near zero).
// requireCloseToScale is requireClose relative to the tensor's largest
// value: for a convolution's weight gradient, whose values sum N·H·W
// products that cancel, so that a value near zero carries the rounding of
// terms a hundred times larger, in PyTorch's order as in ours.
func requireCloseToScale(t *testing.T, want golden, got []float32, what string) {
	t.Helper()
	require.Len(t, got, len(want.Data), what)
	var scale float64
	for _, w := range want.Data {
		scale = math.Max(scale, math.Abs(float64(w)))
	}
	for i, w := range want.Data {
		require.InDelta(t, w, got[i], 1e-6+1e-5*scale, "%s[%d]: PyTorch %g, gotrain %g (largest %g)", what, i, w, got[i], scale)
	}
}

func requireClose(t *testing.T, want golden, got []float32, what string) {
	t.Helper()
	require.Len(t, got, len(want.Data), what)
	for i, w := range want.Data {
		require.InDelta(t, w, got[i], 1e-6+1e-5*math.Abs(float64(w)), "%s[%d]: PyTorch %g, gotrain %g", what, i, w, got[i])
	}
}

// runGraph builds out = f(inputs) in a Gorgonia graph, with the cost
// Σ out·dy, and returns out and, when wrt is not empty, the gradients of
// the cost with respect to inputs wrt, computed by Gorgonia's Grad over
// the ops' SymDiff (as a program does).
func runGraph(t *testing.T, ins []golden, dy golden, wrt []int, f func(g *G.ExprGraph, in []*G.Node) *G.Node) ([]float32, [][]float32) {
	t.Helper()
	g := G.NewGraph()
	nodes := make([]*G.Node, len(ins))
	for i, x := range ins {
		nodes[i] = G.NewTensor(g, tensor.Float32, len(x.Shape), G.WithShape(x.Shape...), G.WithName(fmt.Sprint("in", i)),
			G.WithValue(tensor.New(tensor.WithShape(x.Shape...), tensor.WithBacking(x.Data))))
	}
	out := f(g, nodes)
	var grads []*G.Node
	if len(wrt) > 0 {
		dn := G.NewTensor(g, tensor.Float32, len(dy.Shape), G.WithShape(dy.Shape...), G.WithName("dy"),
			G.WithValue(tensor.New(tensor.WithShape(dy.Shape...), tensor.WithBacking(dy.Data))))
		cost, err := G.ApplyOp(newDot(out.Dims()), out, dn)
		require.NoError(t, err)
		var ws G.Nodes
		for _, i := range wrt {
			ws = append(ws, nodes[i])
		}
		grads, err = G.Grad(cost, ws...)
		require.NoError(t, err)
	}
	require.NoError(t, checkClosed(g))
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	require.NoError(t, vm.RunAll())
	gs := make([][]float32, len(grads))
	for i, n := range grads {
		gs[i] = append([]float32(nil), f32(n.Value())...)
	}
	return append([]float32(nil), f32(out.Value())...), gs
}

// TestGoldenOps compares the new ops' forward and backward with PyTorch's
// on golden data (testdata/gen_golden.py), within 1e-5 relative.
func TestGoldenOps(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range loadGolden(t) {
		var name, op string
		c.val(t, "name", &name)
		c.val(t, "op", &op)
		seen[op] = true
		t.Run(name, func(t *testing.T) {
			x, dy := c.t(t, "x"), c.t(t, "dy")
			switch op {
			case "BatchNorm":
				var train bool
				var eps, mom float64
				c.val(t, "train", &train)
				c.val(t, "eps", &eps)
				c.val(t, "momentum", &mom)
				ins := []golden{x, c.t(t, "in.weight"), c.t(t, "in.bias"), c.t(t, "in.running_mean"), c.t(t, "in.running_var"), c.t(t, "in.num_batches_tracked")}
				ins[5].Shape = []int{1} // PyTorch's is a 0-d int64
				var wrt []int
				if train {
					wrt = []int{0, 1, 2}
				}
				y, gs := runGraph(t, ins, dy, wrt, func(g *G.ExprGraph, in []*G.Node) *G.Node {
					n, err := G.ApplyOp(newBatchNorm(len(x.Shape), eps, mom, train), in...)
					require.NoError(t, err)
					return n
				})
				requireClose(t, c.t(t, "y"), y, "y")
				for i, k := range []string{"running_mean", "running_var", "num_batches_tracked"} {
					requireClose(t, c.t(t, "after."+k), ins[3+i].Data, k)
				}
				if train {
					requireClose(t, c.t(t, "dx"), gs[0], "dx")
					requireClose(t, c.t(t, "dweight"), gs[1], "dweight")
					requireClose(t, c.t(t, "dbias"), gs[2], "dbias")
				}
			case "GlobalAvgPool":
				y, gs := runGraph(t, []golden{x}, dy, []int{0}, func(g *G.ExprGraph, in []*G.Node) *G.Node {
					n, err := G.ApplyOp(newGlobalAvgPool(), in...)
					require.NoError(t, err)
					return n
				})
				requireClose(t, c.t(t, "y"), y, "y")
				requireClose(t, c.t(t, "dx"), gs[0], "dx")
			case "AvgPool2D":
				var k, stride int
				c.val(t, "kernel", &k)
				c.val(t, "stride", &stride)
				y, gs := runGraph(t, []golden{x}, dy, []int{0}, func(g *G.ExprGraph, in []*G.Node) *G.Node {
					op, err := newAvgPool(k, stride)
					require.NoError(t, err)
					n, err := G.ApplyOp(op, in...)
					require.NoError(t, err)
					return n
				})
				requireClose(t, c.t(t, "y"), y, "y")
				requireClose(t, c.t(t, "dx"), gs[0], "dx")
			case "Conv2D":
				var stride, pad int
				c.val(t, "stride", &stride)
				c.val(t, "pad", &pad)
				y, gs := runGraph(t, []golden{x, c.t(t, "w")}, dy, []int{0, 1}, func(g *G.ExprGraph, in []*G.Node) *G.Node {
					n, err := G.ApplyOp(newConv2DNoBias(stride, pad, true), in...)
					require.NoError(t, err)
					return n
				})
				requireClose(t, c.t(t, "y"), y, "y")
				requireClose(t, c.t(t, "dx"), gs[0], "dx")
				requireCloseToScale(t, c.t(t, "dw"), gs[1], "dw")
			case "LayerNorm":
				var eps float64
				c.val(t, "eps", &eps)
				y, gs := runGraph(t, []golden{x, c.t(t, "weight"), c.t(t, "bias")}, dy, []int{0, 1, 2}, func(g *G.ExprGraph, in []*G.Node) *G.Node {
					n, err := G.ApplyOp(newLayerNorm(len(x.Shape), eps), in...)
					require.NoError(t, err)
					return n
				})
				requireClose(t, c.t(t, "y"), y, "y")
				requireClose(t, c.t(t, "dx"), gs[0], "dx")
				requireClose(t, c.t(t, "dweight"), gs[1], "dweight")
				requireClose(t, c.t(t, "dbias"), gs[2], "dbias")
			case "GELU", "SiLU":
				k := map[string]Kind{"GELU": OpGELU, "SiLU": OpSiLU}[op]
				y, gs := runGraph(t, []golden{x}, dy, []int{0}, func(g *G.ExprGraph, in []*G.Node) *G.Node {
					n, err := G.ApplyOp(newSmoothAct(k, 2), in...)
					require.NoError(t, err)
					return n
				})
				requireClose(t, c.t(t, "y"), y, "y")
				requireClose(t, c.t(t, "dx"), gs[0], "dx")
			case "SoftmaxCrossEntropy":
				var eps float64
				c.val(t, "smoothing", &eps)
				g := G.NewGraph()
				lab := c.t(t, "labels")
				xn := G.NewMatrix(g, tensor.Float32, G.WithShape(x.Shape...), G.WithName("x"),
					G.WithValue(tensor.New(tensor.WithShape(x.Shape...), tensor.WithBacking(x.Data))))
				yn := G.NewVector(g, tensor.Float32, G.WithShape(lab.Shape...), G.WithName("labels"),
					G.WithValue(tensor.New(tensor.WithShape(lab.Shape...), tensor.WithBacking(lab.Data))))
				loss, err := G.ApplyOp(newSoftmaxCESmoothed(eps), xn, yn)
				require.NoError(t, err)
				gs, err := G.Grad(loss, xn)
				require.NoError(t, err)
				vm := G.NewTapeMachine(g)
				defer vm.Close()
				require.NoError(t, vm.RunAll())
				requireClose(t, c.t(t, "y"), []float32{scalarOf(loss.Value())}, "loss")
				requireClose(t, c.t(t, "dx"), f32(gs[0].Value()), "dx")
			default:
				t.Fatalf("no check for golden op %q", op)
			}
		})
	}
	for _, op := range []string{"BatchNorm", "GlobalAvgPool", "AvgPool2D", "Conv2D", "GELU", "SiLU", "SoftmaxCrossEntropy", "LayerNorm"} {
		require.True(t, seen[op], "no golden case of %s: %v", op, seen)
	}
}
