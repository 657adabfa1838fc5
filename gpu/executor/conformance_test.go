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
	// positive: input i is drawn as |normal| + 0.5 (a variance)
	positive map[int]bool
	// inPlace: inputs the op updates in place, which must end equal to
	// those graph/'s CPU op leaves
	inPlace []int
	// consts: input i holds consts[i] in every value (a Repeat's count)
	consts map[int]float32
}

func opCases() []opCase {
	conv := func(stride, pad int) map[string]any {
		return map[string]any{"stride": stride, "pad": pad, "grad_x": true}
	}
	x, w := []int{3, 4, 9, 8}, []int{5, 4, 3, 3}
	y1 := []int{3, 5, 9, 8} // stride 1, pad 1
	y2 := []int{3, 5, 4, 3} // stride 2, pad 0
	pool := map[string]any{"kernel": 2, "stride": 2}
	// 1×1, stride 2 (a ResNet's downsampling shortcut), and without bias
	x1, w1, y1x1 := []int{3, 4, 9, 8}, []int{5, 4, 1, 1}, []int{3, 5, 5, 4}
	noBias := conv(1, 1)
	noBias["no_bias"] = true
	xw, ww, yw := []int{3, 6, 12, 14}, []int{5, 6, 3, 3}, []int{3, 5, 12, 14}
	bn := func(train bool) map[string]any {
		return map[string]any{"eps": 1e-5, "momentum": 0.1, "train": train}
	}
	// BatchNorm's inputs: X, gamma, beta, running mean, running var (drawn
	// positive), batches tracked (a count); training updates the last three.
	bnCase := func(name string, x []int, train bool) opCase {
		c := x[1]
		tc := opCase{name: name, kind: graph.OpBatchNorm, attrs: bn(train), in: [][]int{x, {c}, {c}, {c}, {c}, {1}}, out: x,
			positive: map[int]bool{4: true}, labels: map[int]int{5: 10}}
		if train {
			tc.inPlace = []int{3, 4, 5}
		}
		return tc
	}
	// frozen: a training BatchNorm with no_update, whose in-place inputs
	// must end as they were drawn
	frozen := func(tc opCase) opCase {
		tc.attrs["no_update"] = true
		return tc
	}
	eps := map[string]any{"eps": 1e-5}
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
		{name: "AvgPool2D/2", kind: graph.OpAvgPool2D, attrs: map[string]any{"kernel": 2, "stride": 2}, in: [][]int{{2, 3, 7, 6}}, out: []int{2, 3, 3, 3}},
		{name: "AvgPool2D/3s2", kind: graph.OpAvgPool2D, attrs: map[string]any{"kernel": 3, "stride": 2}, in: [][]int{{2, 3, 9, 8}}, out: []int{2, 3, 4, 3}},
		{name: "AvgPool2DGrad/2", kind: graph.OpAvgPool2DGrad, attrs: map[string]any{"kernel": 2, "stride": 2, "h": 7, "w": 6}, in: [][]int{{2, 3, 3, 3}}, out: []int{2, 3, 7, 6}},
		{name: "AvgPool2DGrad/3s2", kind: graph.OpAvgPool2DGrad, attrs: map[string]any{"kernel": 3, "stride": 2, "h": 9, "w": 8}, in: [][]int{{2, 3, 4, 3}}, out: []int{2, 3, 9, 8}},
		{name: "AvgPool2DGrad/3s1", kind: graph.OpAvgPool2DGrad, attrs: map[string]any{"kernel": 3, "stride": 1, "h": 5, "w": 6}, in: [][]int{{2, 3, 3, 4}}, out: []int{2, 3, 5, 6}},
		// Planes 12 and more wide: graph's CPU takes kern's direct 3x3
		// kernels (forward, the input gradient as a flipped convolution,
		// the weight gradient) where they are available.
		{name: "Conv2D/s1p1/wide", kind: graph.OpConv2D, attrs: noBias, in: [][]int{xw, ww}, out: yw},
		{name: "Conv2DGradInput/s1p1/wide", kind: graph.OpConv2DGradInput, attrs: noBias, in: [][]int{yw, ww}, out: xw},
		{name: "Conv2DGradW/s1p1/wide", kind: graph.OpConv2DGradW, attrs: noBias, in: [][]int{xw, yw}, out: ww},
		// Positions of several images per part, and more parts than a
		// thread adds up (1105 positions, 35 parts).
		{name: "Conv2DGradB/parts", kind: graph.OpConv2DGradB, in: [][]int{{5, 3, 17, 13}}, out: []int{3}},
		{name: "Conv2D/1x1s2", kind: graph.OpConv2D, attrs: conv(2, 0), in: [][]int{x1, w1, {5}}, out: y1x1},
		{name: "Conv2D/1x1s2/nobias", kind: graph.OpConv2D, attrs: map[string]any{"stride": 2, "pad": 0, "grad_x": true, "no_bias": true}, in: [][]int{x1, w1}, out: y1x1},
		{name: "Conv2D/s1p1/nobias", kind: graph.OpConv2D, attrs: noBias, in: [][]int{x, w}, out: y1},
		{name: "Conv2DGradInput/1x1s2", kind: graph.OpConv2DGradInput, attrs: conv(2, 0), in: [][]int{y1x1, w1}, out: x1},
		{name: "Conv2DGradW/1x1s2", kind: graph.OpConv2DGradW, attrs: conv(2, 0), in: [][]int{x1, y1x1}, out: w1},
		{name: "Conv2DGradB/1x1s2", kind: graph.OpConv2DGradB, in: [][]int{y1x1}, out: []int{5}},
		bnCase("BatchNorm/train", []int{4, 3, 5, 6}, true),
		bnCase("BatchNorm/eval", []int{4, 3, 5, 6}, false),
		bnCase("BatchNorm/train2d", []int{7, 5}, true),
		bnCase("BatchNorm/eval2d", []int{7, 5}, false),
		// 7293 values per channel: 228 partial sums, then a tree 228 to 8 to 1.
		bnCase("BatchNorm/train/parts", []int{33, 3, 17, 13}, true),
		// A pipeline stage's training pass: the batch's statistics, the
		// running buffers left as they were.
		frozen(bnCase("BatchNorm/train/no_update", []int{4, 3, 5, 6}, true)),
		{name: "BatchNormGrad", kind: graph.OpBatchNormGrad, attrs: eps, in: [][]int{{4, 3, 5, 6}, {3}, {4, 3, 5, 6}}, out: []int{4, 3, 5, 6}},
		{name: "BatchNormGrad/2d", kind: graph.OpBatchNormGrad, attrs: eps, in: [][]int{{7, 5}, {5}, {7, 5}}, out: []int{7, 5}},
		{name: "BatchNormGrad/parts", kind: graph.OpBatchNormGrad, attrs: eps, in: [][]int{{33, 3, 17, 13}, {3}, {33, 3, 17, 13}}, out: []int{33, 3, 17, 13}},
		{name: "BatchNormGradGamma", kind: graph.OpBatchNormGradGamma, attrs: eps, in: [][]int{{4, 3, 5, 6}, {4, 3, 5, 6}}, out: []int{3}},
		{name: "BatchNormGradGamma/2d", kind: graph.OpBatchNormGradGamma, attrs: eps, in: [][]int{{7, 5}, {7, 5}}, out: []int{5}},
		{name: "GlobalAvgPool", kind: graph.OpGlobalAvgPool, in: [][]int{{3, 4, 5, 6}}, out: []int{3, 4}},
		{name: "GlobalAvgPoolGrad", kind: graph.OpGlobalAvgPoolGrad, attrs: map[string]any{"h": 5, "w": 6}, in: [][]int{{3, 4}}, out: []int{3, 4, 5, 6}},
		{name: "MaxPool2D", kind: graph.OpMaxPool2D, attrs: pool, in: [][]int{{2, 3, 6, 7}}, out: []int{2, 3, 3, 3}},
		{name: "MaxPool2DGrad/ties", kind: graph.OpMaxPool2DGrad, attrs: pool, in: [][]int{{2, 3, 6, 6}, {2, 3, 3, 3}, {2, 3, 3, 3}}, out: []int{2, 3, 6, 6}, ties: true},
		{name: "Mul", kind: graph.OpMul, in: [][]int{{4, 6}, {4, 6}}, out: []int{4, 6}},
		{name: "Add", kind: graph.OpAdd, in: [][]int{{4, 6}, {4, 6}}, out: []int{4, 6}},
		{name: "Reshape", kind: graph.OpReshape, in: [][]int{{2, 3, 4}}, out: []int{2, 12}},
		{name: "Softmax/last", kind: graph.OpSoftmax, attrs: map[string]any{"axis": 1, "log": false}, in: [][]int{{5, 7}}, out: []int{5, 7}},
		{name: "Softmax/middle", kind: graph.OpSoftmax, attrs: map[string]any{"axis": 1, "log": false}, in: [][]int{{2, 6, 3}}, out: []int{2, 6, 3}},
		{name: "Softmax/log", kind: graph.OpSoftmax, attrs: map[string]any{"axis": 1, "log": true}, in: [][]int{{5, 7}}, out: []int{5, 7}},
		{name: "SoftmaxGrad/last", kind: graph.OpSoftmaxGrad, attrs: map[string]any{"axis": 1, "log": false}, in: [][]int{{5, 7}, {5, 7}, {5, 7}}, out: []int{5, 7}},
		{name: "SoftmaxGrad/log/first", kind: graph.OpSoftmaxGrad, attrs: map[string]any{"axis": 0, "log": true}, in: [][]int{{4, 3, 2}, {4, 3, 2}, {4, 3, 2}}, out: []int{4, 3, 2}},
		{name: "Transpose/2d", kind: graph.OpTranspose, attrs: map[string]any{"perm": "1,0"}, in: [][]int{{5, 7}}, out: []int{7, 5}},
		{name: "Transpose/3d", kind: graph.OpTranspose, attrs: map[string]any{"perm": "2,0,1"}, in: [][]int{{2, 3, 4}}, out: []int{4, 2, 3}},
		{name: "Transpose/4d", kind: graph.OpTranspose, attrs: map[string]any{"perm": "0,2,1,3"}, in: [][]int{{2, 3, 4, 5}}, out: []int{2, 4, 3, 5}},
		{name: "Slice/range", kind: graph.OpSlice, attrs: map[string]any{"axis": 1, "start": 2, "step": 1}, in: [][]int{{3, 7, 2}}, out: []int{3, 3, 2}},
		{name: "Slice/step", kind: graph.OpSlice, attrs: map[string]any{"axis": 0, "start": 1, "step": 3}, in: [][]int{{8, 5}}, out: []int{3, 5}},
		{name: "Slice/index", kind: graph.OpSlice, attrs: map[string]any{"axis": 1, "start": 4, "step": 1}, in: [][]int{{3, 7, 2}}, out: []int{3, 2}},
		{name: "SliceGrad/range", kind: graph.OpSliceGrad, attrs: map[string]any{"axis": 1, "start": 2, "step": 1}, in: [][]int{{3, 7, 2}, {3, 3, 2}}, out: []int{3, 7, 2}},
		{name: "SliceGrad/step", kind: graph.OpSliceGrad, attrs: map[string]any{"axis": 0, "start": 1, "step": 3}, in: [][]int{{8, 5}, {3, 5}}, out: []int{8, 5}},
		{name: "SliceGrad/index", kind: graph.OpSliceGrad, attrs: map[string]any{"axis": 1, "start": 4, "step": 1}, in: [][]int{{3, 7, 2}, {3, 2}}, out: []int{3, 7, 2}},
		{name: "Concat/3", kind: graph.OpConcat, attrs: map[string]any{"axis": 1}, in: [][]int{{2, 3, 4}, {2, 1, 4}, {2, 5, 4}}, out: []int{2, 9, 4}},
		{name: "Concat/first", kind: graph.OpConcat, attrs: map[string]any{"axis": 0}, in: [][]int{{2, 6}, {3, 6}}, out: []int{5, 6}},
		{name: "BatchedMatMul", kind: graph.OpBatchedMatMul, attrs: map[string]any{"trans_a": false, "trans_b": false}, in: [][]int{{3, 4, 5}, {3, 5, 6}}, out: []int{3, 4, 6}},
		{name: "BatchedMatMul/At", kind: graph.OpBatchedMatMul, attrs: map[string]any{"trans_a": true, "trans_b": false}, in: [][]int{{3, 5, 4}, {3, 5, 6}}, out: []int{3, 4, 6}},
		{name: "BatchedMatMul/Bt", kind: graph.OpBatchedMatMul, attrs: map[string]any{"trans_a": false, "trans_b": true}, in: [][]int{{3, 4, 5}, {3, 6, 5}}, out: []int{3, 4, 6}},
		{name: "BatchedMatMul/AtBt", kind: graph.OpBatchedMatMul, attrs: map[string]any{"trans_a": true, "trans_b": true}, in: [][]int{{3, 5, 4}, {3, 6, 5}}, out: []int{3, 4, 6}},
		{name: "SoftmaxCrossEntropy", kind: graph.OpSoftmaxCE, in: [][]int{{7, 10}, {7}}, labels: map[int]int{1: 10}},
		{name: "SoftmaxCrossEntropyGrad", kind: graph.OpSoftmaxCEGrad, in: [][]int{{7, 10}, {7}, nil}, out: []int{7, 10}, labels: map[int]int{1: 10}},
		// with label smoothing (PyTorch's label_smoothing=0.1)
		{name: "SoftmaxCrossEntropy/smoothing=0.1", kind: graph.OpSoftmaxCE, attrs: map[string]any{"smoothing": 0.1},
			in: [][]int{{7, 10}, {7}}, labels: map[int]int{1: 10}},
		{name: "SoftmaxCrossEntropyGrad/smoothing=0.1", kind: graph.OpSoftmaxCEGrad, attrs: map[string]any{"smoothing": 0.1},
			in: [][]int{{7, 10}, {7}, nil}, out: []int{7, 10}, labels: map[int]int{1: 10}},
		{name: "Dot", kind: graph.OpDot, in: [][]int{{3, 5}, {3, 5}}},
		{name: "Dot/parts", kind: graph.OpDot, in: [][]int{{64, 100}, {64, 100}}}, // more values than dotParts
		{name: "DotGrad", kind: graph.OpDotGrad, in: [][]int{{3, 5}, nil}, out: []int{3, 5}},
	}
	// LayerNorm over the last dimension (graph/layernorm.go): X, weight,
	// bias; its gradients of X (X, weight, dY) and of the weight (X, dY).
	for _, x := range [][]int{{7, 10}, {3, 4, 8}} {
		d := []int{x[len(x)-1]}
		cases = append(cases,
			opCase{name: "LayerNorm/" + dimsName(x), kind: graph.OpLayerNorm, attrs: eps, in: [][]int{x, d, d}, out: x},
			opCase{name: "LayerNormGrad/" + dimsName(x), kind: graph.OpLayerNormGrad, attrs: eps, in: [][]int{x, d, x}, out: x},
			opCase{name: "LayerNormGradW/" + dimsName(x), kind: graph.OpLayerNormGradW, attrs: eps, in: [][]int{x, x}, out: d})
	}
	// More rows than a thread adds up: 63 chunks of rows, then a tree 63
	// to 2 to 1.
	cases = append(cases, opCase{name: "LayerNormGradW/2000x6", kind: graph.OpLayerNormGradW, attrs: eps,
		in: [][]int{{2000, 6}, {2000, 6}}, out: []int{6}})
	// Gorgonia's own operators (graph/gorgonia.go).
	cases = append(cases,
		opCase{name: "Sub", kind: graph.OpSub, in: [][]int{{4, 6}, {4, 6}}, out: []int{4, 6}},
		opCase{name: "Div", kind: graph.OpDiv, in: [][]int{{4, 6}, {4, 6}}, out: []int{4, 6}},
	)
	for _, op := range []string{"+", "-", "⊙", "÷", "<", ">", "<=", ">="} {
		comparison := op[0] == '<' || op[0] == '>'
		for _, first := range []bool{false, true} {
			in := [][]int{{4, 6}, nil}
			if first {
				in = [][]int{nil, {4, 6}}
			}
			attrs := map[string]any{"op": op, "scalar_first": first}
			name := fmt.Sprintf("ElemScalar/%s/scalar_first=%v", op, first)
			cases = append(cases, opCase{name: name, kind: graph.OpElemScalar, attrs: attrs, in: in, out: []int{4, 6}})
			if comparison { // values equal to the scalar: < against <=
				cases = append(cases, opCase{name: name + "/ties", kind: graph.OpElemScalar, attrs: attrs, in: in, out: []int{4, 6}, ties: true})
			}
		}
	}
	for _, fn := range []string{"neg", "exp", "ln", "sqrt", "square", "tanh", "sigmoid", "abs", "inv", "invSqrt", "cube"} {
		tc := opCase{name: "ElemUnary/" + fn, kind: graph.OpElemUnary, attrs: map[string]any{"fn": fn}, in: [][]int{{5, 8}}, out: []int{5, 8}}
		switch fn {
		case "ln", "sqrt", "inv", "invSqrt":
			tc.positive = map[int]bool{0: true}
		}
		cases = append(cases, tc)
	}
	// Repeat's second input is the count, a scalar that the output's shape
	// already says.
	for _, r := range []struct {
		x, out []int
		axis   int
	}{{[]int{1, 5}, []int{4, 5}, 0}, {[]int{3, 1}, []int{3, 6}, 1}, {[]int{2, 1, 4}, []int{2, 3, 4}, 1}} {
		cases = append(cases, opCase{name: fmt.Sprintf("Repeat/%s/axis%d", dimsName(r.x), r.axis), kind: graph.OpRepeat,
			attrs: map[string]any{"axis": r.axis}, in: [][]int{r.x, nil}, out: r.out, consts: map[int]float32{1: float32(r.out[r.axis])}})
	}
	for _, r := range []struct {
		x, out []int
		axis   int
	}{
		{[]int{7, 5}, []int{5}, 0}, {[]int{7, 5}, []int{7}, 1}, {[]int{2, 3, 4}, []int{2, 4}, 1},
		{[]int{9}, nil, 0}, // a scalar
		// Longer than a thread adds up: chunks, then a tree 94 to 3 to 1,
		// and 35 to 2 to 1 between an outer and an inner axis.
		{[]int{3000, 4}, []int{4}, 0}, {[]int{3, 1100, 2}, []int{3, 2}, 1},
	} {
		cases = append(cases, opCase{name: fmt.Sprintf("ReduceSum/%s/axis%d", dimsName(r.x), r.axis), kind: graph.OpReduceSum,
			attrs: map[string]any{"axis": r.axis}, in: [][]int{r.x}, out: r.out})
	}
	// Every axis (Gorgonia's Sum of a whole tensor, Mean's first half): a scalar.
	for _, x := range [][]int{{5, 6}, {40, 3, 2}} {
		cases = append(cases, opCase{name: "ReduceSum/all/" + dimsName(x), kind: graph.OpReduceSum,
			attrs: map[string]any{"axis": 0, "all": true}, in: [][]int{x}})
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
	for _, k := range []graph.Kind{graph.OpReLU, graph.OpTanh, graph.OpSigmoid, graph.OpGELU, graph.OpSiLU} {
		cases = append(cases, opCase{name: string(k), kind: k, in: [][]int{{5, 8}}, out: []int{5, 8}})
	}
	for _, k := range []graph.Kind{graph.OpReLUGrad, graph.OpTanhGrad, graph.OpSigmoidGrad, graph.OpGELUGrad, graph.OpSiLUGrad} {
		cases = append(cases, opCase{name: string(k), kind: k, in: [][]int{{5, 8}, {5, 8}}, out: []int{5, 8}})
	}
	return cases
}

// dimsName writes a shape as a test's name: 2x3x4.
func dimsName(s []int) string {
	name := ""
	for i, d := range s {
		if i > 0 {
			name += "x"
		}
		name += fmt.Sprint(d)
	}
	return name
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
							v, isConst := tc.consts[i]
							switch {
							case isConst:
								ins[i][j] = v
							case tc.labels[i] > 0:
								ins[i][j] = float32(rng.IntN(tc.labels[i]))
							case tc.ties:
								ins[i][j] = float32(rng.IntN(3))
							case tc.positive[i]:
								ins[i][j] = float32(math.Abs(rng.NormFloat64()) + 0.5)
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
					drawn := map[int][]float32{}
					for _, k := range tc.inPlace {
						drawn[k] = append([]float32(nil), ins[k]...)
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
					// graph.Run updated the CPU's inputs in place, as the op
					// the device's; with no_update neither touched them.
					frozen, _ := tc.attrs["no_update"].(bool)
					for _, k := range tc.inPlace {
						got := make([]float32, len(ins[k]))
						require.NoError(t, dev.Read(got, dins[k].Buf))
						if frozen {
							require.Equal(t, drawn[k], ins[k], "run %d: the CPU op updated input %d despite no_update", run, k)
							require.Equal(t, drawn[k], got, "run %d: the device updated input %d despite no_update", run, k)
							continue
						}
						require.NotEqual(t, drawn[k], ins[k], "run %d: the CPU op left input %d as it was", run, k)
						for i := range got {
							d := math.Abs(float64(got[i] - ins[k][i]))
							require.LessOrEqual(t, d, 1e-5*math.Max(1, math.Abs(float64(ins[k][i]))),
								"run %d: input %d, value %d, updated in place: device %g, CPU %g", run, k, i, got[i], ins[k][i])
						}
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
	_, err := NewOp(device.Host{}, "Gather", nil, [][]int{{2, 3}}, []int{2, 3}, device.FP32)
	require.ErrorContains(t, err, `"Gather" is not an op of graph/'s set`)
	_, err = NewOp(device.Host{}, graph.OpTranspose, map[string]any{"perm": "0,1,2,3,4"}, [][]int{{1, 2, 1, 2, 1}}, []int{1, 2, 1, 2, 1}, device.FP32)
	require.ErrorContains(t, err, "at most 4")
	_, err = NewOp(device.Host{}, graph.OpLinear, nil, [][]int{{2, 3}}, []int{2, 3}, device.FP32)
	require.ErrorContains(t, err, "Linear takes 3 inputs")
	_, err = NewOp(device.Host{}, graph.OpConv2D, map[string]any{"stride": 1}, [][]int{{1, 2, 3, 3}, {4, 3, 3, 3}, {4}}, nil, device.FP32)
	require.ErrorContains(t, err, "does not fit")
}
