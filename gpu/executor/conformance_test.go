package executor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/graph"
)

// devices lists the devices of this build to test: the host, and the host
// running each kernel over a GPU's grid in a scattered thread order, which
// also checks at the end of each test that no launch left a GPU's threads
// looping over outputs its grid should have covered; the gpu build's test
// files add a GPU where one is present.
var devices = []func(t *testing.T) device.Device{
	func(*testing.T) device.Device { return device.Host{} },
	hostGrid,
}

func hostGrid(t *testing.T) device.Device {
	d := &device.HostGrid{}
	t.Cleanup(func() {
		require.Empty(t, d.Underfilled(), "launches whose grid was smaller than their loop")
	})
	return d
}

type opCase struct {
	name  string
	kind  graph.Kind
	attrs map[string]any
	in    [][]int // nil: a scalar
	out   []int
	// labels: input i holds class indices below labels[i]
	labels map[int]int
	// ties: inputs drawn from a few values, so that windows hold equal maxima
	ties bool
}

func opCases() []opCase {
	conv := func(stride, pad int) map[string]any {
		return map[string]any{"stride": stride, "pad": pad, "grad_x": true}
	}
	x, w := []int{3, 4, 9, 8}, []int{5, 4, 3, 3}
	y1 := []int{3, 5, 9, 8} // stride 1, pad 1
	y2 := []int{3, 5, 4, 3} // stride 2, pad 0
	pool := map[string]any{"kernel": 2, "stride": 2}
	cases := []opCase{
		{name: "Linear", kind: graph.OpLinear, attrs: map[string]any{"grad_x": true}, in: [][]int{{6, 7}, {5, 7}, {5}}, out: []int{6, 5}},
		{name: "SumRows", kind: graph.OpSumRows, in: [][]int{{9, 4}}, out: []int{4}},
		// More rows than a thread adds up: a tree of partial sums, 1100
		// rows to 35 to 2 to 1, and 70 to 3 to 1 over wide rows.
		{name: "SumRows/tree", kind: graph.OpSumRows, in: [][]int{{1100, 3}}, out: []int{3}},
		{name: "SumRows/wide", kind: graph.OpSumRows, in: [][]int{{70, 300}}, out: []int{300}},
		{name: "Conv2D/s1p1", kind: graph.OpConv2D, attrs: conv(1, 1), in: [][]int{x, w, {5}}, out: y1},
		{name: "Conv2D/s2p0", kind: graph.OpConv2D, attrs: conv(2, 0), in: [][]int{x, w, {5}}, out: y2},
		{name: "Conv2DGradInput/s1p1", kind: graph.OpConv2DGradInput, attrs: conv(1, 1), in: [][]int{y1, w}, out: x},
		{name: "Conv2DGradInput/s2p0", kind: graph.OpConv2DGradInput, attrs: conv(2, 0), in: [][]int{y2, w}, out: x},
		{name: "Conv2DGradW/s1p1", kind: graph.OpConv2DGradW, attrs: conv(1, 1), in: [][]int{x, y1}, out: w},
		{name: "Conv2DGradW/s2p0", kind: graph.OpConv2DGradW, attrs: conv(2, 0), in: [][]int{x, y2}, out: w},
		{name: "Conv2DGradB", kind: graph.OpConv2DGradB, in: [][]int{y1}, out: []int{5}},
		// Positions of several images per part, and more parts than a
		// thread adds up (1105 positions, 35 parts).
		{name: "Conv2DGradB/parts", kind: graph.OpConv2DGradB, in: [][]int{{5, 3, 17, 13}}, out: []int{3}},
		{name: "MaxPool2D", kind: graph.OpMaxPool2D, attrs: pool, in: [][]int{{2, 3, 6, 7}}, out: []int{2, 3, 3, 3}},
		{name: "MaxPool2DGrad/ties", kind: graph.OpMaxPool2DGrad, attrs: pool, in: [][]int{{2, 3, 6, 6}, {2, 3, 3, 3}, {2, 3, 3, 3}}, out: []int{2, 3, 6, 6}, ties: true},
		{name: "Mul", kind: graph.OpMul, in: [][]int{{4, 6}, {4, 6}}, out: []int{4, 6}},
		{name: "Add", kind: graph.OpAdd, in: [][]int{{4, 6}, {4, 6}}, out: []int{4, 6}},
		{name: "Reshape", kind: graph.OpReshape, in: [][]int{{2, 3, 4}}, out: []int{2, 12}},
		{name: "SoftmaxCrossEntropy", kind: graph.OpSoftmaxCE, in: [][]int{{7, 10}, {7}}, labels: map[int]int{1: 10}},
		{name: "SoftmaxCrossEntropyGrad", kind: graph.OpSoftmaxCEGrad, in: [][]int{{7, 10}, {7}, nil}, out: []int{7, 10}, labels: map[int]int{1: 10}},
		{name: "Dot", kind: graph.OpDot, in: [][]int{{3, 5}, {3, 5}}},
		{name: "Dot/parts", kind: graph.OpDot, in: [][]int{{64, 100}, {64, 100}}}, // more values than dotParts
		{name: "DotGrad", kind: graph.OpDotGrad, in: [][]int{{3, 5}, nil}, out: []int{3, 5}},
	}
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			a, b := []int{4, 6}, []int{6, 5}
			if ta {
				a = []int{6, 4}
			}
			if tb {
				b = []int{5, 6}
			}
			cases = append(cases, opCase{name: fmt.Sprintf("MatMul/ta=%v,tb=%v", ta, tb), kind: graph.OpMatMul,
				attrs: map[string]any{"trans_a": ta, "trans_b": tb}, in: [][]int{a, b}, out: []int{4, 5}})
		}
	}
	for _, k := range []graph.Kind{graph.OpReLU, graph.OpTanh, graph.OpSigmoid} {
		cases = append(cases, opCase{name: string(k), kind: k, in: [][]int{{5, 8}}, out: []int{5, 8}})
	}
	for _, k := range []graph.Kind{graph.OpReLUGrad, graph.OpTanhGrad, graph.OpSigmoidGrad} {
		cases = append(cases, opCase{name: string(k), kind: k, in: [][]int{{5, 8}, {5, 8}}, out: []int{5, 8}})
	}
	return cases
}

// roundTo rounds x to the precision's mantissa, to nearest, ties to even
// (written here independently of the kernels).
func roundTo(x float32, prec device.Precision) float32 {
	drop := 23 - prec.MantissaBits()
	if drop == 0 || math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
		return x
	}
	u := math.Float32bits(x)
	half := uint32(1)<<(drop-1) - 1 + (u>>drop)&1
	return math.Float32frombits((u + half) >> drop << drop)
}

// TestReducedPrecisionProducts: at TF32 and BF16 the matrix products take
// their inputs rounded as the tensor cores do and sum in float32: each
// equals graph/'s CPU op on inputs rounded here (to float32 rounding), and
// differs from the unrounded product.
func TestReducedPrecisionProducts(t *testing.T) {
	for _, mk := range devices {
		dev := mk(t)
		for _, prec := range []device.Precision{device.TF32, device.BF16} {
			for _, tc := range opCases() {
				switch tc.kind {
				case graph.OpLinear, graph.OpMatMul, graph.OpConv2D, graph.OpConv2DGradInput, graph.OpConv2DGradW:
				default:
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/%s", dev.Name(), prec, tc.name), func(t *testing.T) {
					op, err := NewOp(dev, tc.kind, tc.attrs, tc.in, tc.out, prec)
					require.NoError(t, err)
					defer op.Free(dev)
					ref, err := graph.NewOp(tc.kind, tc.attrs, tc.in, tc.out)
					require.NoError(t, err)
					rng := rand.New(rand.NewPCG(5, uint64(prec)))
					ins, rounded := make([][]float32, len(tc.in)), make([][]float32, len(tc.in))
					dins := make([]Tensor, len(tc.in))
					for i, s := range tc.in {
						ins[i] = make([]float32, size(s))
						rounded[i] = make([]float32, size(s))
						for j := range ins[i] {
							ins[i][j] = float32(rng.NormFloat64())
							rounded[i][j] = ins[i][j]
							if i < 2 { // the product's operands; a bias is added in float32
								rounded[i][j] = roundTo(ins[i][j], prec)
							}
						}
						b, err := dev.Alloc(len(ins[i]))
						require.NoError(t, err)
						defer dev.Free(b)
						require.NoError(t, dev.Write(b, ins[i]))
						dins[i] = Tensor{Buf: b, Shape: s}
					}
					want, _, err := graph.Run(ref, rounded, tc.in)
					require.NoError(t, err)
					want = append([]float32(nil), want...)
					exact, _, err := graph.Run(ref, ins, tc.in)
					require.NoError(t, err)
					ob, err := dev.Alloc(len(want))
					require.NoError(t, err)
					defer dev.Free(ob)
					require.NoError(t, op.Run(dev, dins, Tensor{Buf: ob, Shape: tc.out}))
					got := make([]float32, len(want))
					require.NoError(t, dev.Read(got, ob))
					differs := false
					for i := range want {
						require.InDelta(t, want[i], got[i], 1e-4*math.Max(1, math.Abs(float64(want[i]))), "value %d", i)
						differs = differs || math.Abs(float64(got[i]-exact[i])) > 1e-5*math.Max(1, math.Abs(float64(exact[i])))
					}
					require.True(t, differs, "the result equals the float32 product: the inputs were not rounded")
				})
			}
		}
	}
}

// TestOpsMatchTheCPU runs every op of graph/'s set on each device against
// graph/'s CPU op, on fresh random inputs, three times, the output poisoned
// with NaN before each run.
func TestOpsMatchTheCPU(t *testing.T) {
	covered := map[graph.Kind]bool{}
	for _, mk := range devices {
		dev := mk(t)
		for _, tc := range opCases() {
			covered[tc.kind] = true
			t.Run(dev.Name()+"/"+tc.name, func(t *testing.T) {
				op, err := NewOp(dev, tc.kind, tc.attrs, tc.in, tc.out, device.FP32)
				require.NoError(t, err)
				defer op.Free(dev)
				ref, err := graph.NewOp(tc.kind, tc.attrs, tc.in, tc.out)
				require.NoError(t, err)
				rng := rand.New(rand.NewPCG(uint64(len(tc.name)), 7))
				for run := range 3 {
					ins := make([][]float32, len(tc.in))
					dins := make([]Tensor, len(tc.in))
					for i, s := range tc.in {
						ins[i] = make([]float32, size(s))
						for j := range ins[i] {
							switch {
							case tc.labels[i] > 0:
								ins[i][j] = float32(rng.IntN(tc.labels[i]))
							case tc.ties:
								ins[i][j] = float32(rng.IntN(3))
							default:
								ins[i][j] = float32(rng.NormFloat64())
							}
						}
						b, err := dev.Alloc(len(ins[i]))
						require.NoError(t, err)
						defer dev.Free(b)
						require.NoError(t, dev.Write(b, ins[i]))
						dins[i] = Tensor{Buf: b, Shape: s}
					}
					if tc.kind == graph.OpMaxPool2DGrad {
						// Y is the pooled X, as in a program.
						pool, err := graph.NewOp(graph.OpMaxPool2D, tc.attrs, tc.in[:1], tc.in[1])
						require.NoError(t, err)
						y, _, err := graph.Run(pool, ins[:1], tc.in[:1])
						require.NoError(t, err)
						ins[1] = append([]float32(nil), y...)
						require.NoError(t, dev.Write(dins[1].Buf, ins[1]))
					}
					want, wantShape, err := graph.Run(ref, ins, tc.in)
					require.NoError(t, err)
					if tc.out != nil {
						require.Equal(t, tc.out, wantShape)
					}
					want = append([]float32(nil), want...)
					ob, err := dev.Alloc(len(want))
					require.NoError(t, err)
					defer dev.Free(ob)
					poison := make([]float32, len(want))
					for i := range poison {
						poison[i] = float32(math.NaN())
					}
					require.NoError(t, dev.Write(ob, poison))
					require.NoError(t, op.Run(dev, dins, Tensor{Buf: ob, Shape: tc.out}))
					require.NoError(t, dev.Sync())
					got := make([]float32, len(want))
					require.NoError(t, dev.Read(got, ob))
					for i := range want {
						require.False(t, math.IsNaN(float64(got[i])), "run %d: value %d is NaN (never written?)", run, i)
						d := math.Abs(float64(got[i] - want[i]))
						require.LessOrEqual(t, d, 1e-4*math.Max(1, math.Abs(float64(want[i]))),
							"run %d: value %d: device %g, CPU %g", run, i, got[i], want[i])
					}
				}
			})
		}
	}
	for _, k := range graph.OpKinds() { // every registered op
		require.True(t, covered[k], "no conformance case for %s", k)
	}
}

func TestNewOpRefusesWhatItCannotRun(t *testing.T) {
	_, err := NewOp(device.Host{}, "Softmax", nil, [][]int{{2, 3}}, []int{2, 3}, device.FP32)
	require.ErrorContains(t, err, `"Softmax" is not an op of graph/'s set`)
	_, err = NewOp(device.Host{}, graph.OpLinear, nil, [][]int{{2, 3}}, []int{2, 3}, device.FP32)
	require.ErrorContains(t, err, "Linear takes 3 inputs")
	_, err = NewOp(device.Host{}, graph.OpConv2D, map[string]any{"stride": 1}, [][]int{{1, 2, 3, 3}, {4, 3, 3, 3}, {4}}, nil, device.FP32)
	require.ErrorContains(t, err, "does not fit")
}
