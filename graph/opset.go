package graph

import "gorgonia.org/tensor"

// The registrations of the op set: how each op is made outside a graph
// (for conformance tests and device executors) and what it costs.

func init() {
	registerOp(OpDef{Kind: OpLinear, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 {
		return 2*prod(in[0])*float64(in[1][0]) + prod(in[0][:1])*float64(in[1][0])
	},
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newLinear(a.Bool("grad_x")), nil
		}})
	registerOp(OpDef{Kind: OpMatMul, FLOPs: func(_ Attrs, in [][]int, out []int) float64 { return 2 * prod(out) * float64(innerDim(in, out)) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newMatMul(a.Bool("trans_a"), a.Bool("trans_b")), nil
		}})
	registerOp(OpDef{Kind: OpSumRows, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return prod(in[0]) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newSumRows(), nil
		}})
	registerOp(OpDef{Kind: OpConv2D, FLOPs: func(_ Attrs, in [][]int, out []int) float64 { return 2*prod(out)*prod(in[1][1:]) + prod(out) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			if a.Bool("no_bias") {
				return newConv2DNoBias(a.Int("stride"), a.Int("pad"), a.Bool("grad_x")), nil
			}
			return newConv2D(a.Int("stride"), a.Int("pad"), a.Bool("grad_x")), nil
		}})
	registerOp(OpDef{Kind: OpConv2DGradInput, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return 2 * prod(in[0]) * prod(in[1][1:]) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			fwd := newConv2D(a.Int("stride"), a.Int("pad"), true)
			return &conv2dGradInputOp{base: newBase(OpConv2DGradInput, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, xShape: tensor.Shape(out).Clone()}, nil
		}})
	registerOp(OpDef{Kind: OpConv2DGradW, FLOPs: func(_ Attrs, in [][]int, out []int) float64 { return 2 * prod(in[1]) * prod(out[1:]) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			fwd := newConv2D(a.Int("stride"), a.Int("pad"), true)
			return &conv2dGradWOp{base: newBase(OpConv2DGradW, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, wShape: tensor.Shape(out).Clone()}, nil
		}})
	registerOp(OpDef{Kind: OpConv2DGradB, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return prod(in[0]) },
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return &conv2dGradBOp{base: newBase(OpConv2DGradB, nil, tt(1), tt(4))}, nil
		}})
	registerOp(OpDef{Kind: OpMaxPool2D, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newMaxPool(a.Int("kernel")), nil
		}})
	registerOp(OpDef{Kind: OpMaxPool2DGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			p := newMaxPool(a.Int("kernel"))
			return &maxPoolGradOp{base: newBase(OpMaxPool2DGrad, p.attrs, tt(4), tt(4), tt(4), tt(4)), k: p.k}, nil
		}})
	registerOp(OpDef{Kind: OpReLU, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newAct(OpReLU, d), nil
		}})
	registerOp(OpDef{Kind: OpTanh, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newAct(OpTanh, d), nil
		}})
	registerOp(OpDef{Kind: OpSigmoid, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newAct(OpSigmoid, d), nil
		}})
	registerOp(OpDef{Kind: OpReLUGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newActGrad(OpReLUGrad, d), nil
		}})
	registerOp(OpDef{Kind: OpTanhGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newActGrad(OpTanhGrad, d), nil
		}})
	registerOp(OpDef{Kind: OpSigmoidGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newActGrad(OpSigmoidGrad, d), nil
		}})
	registerOp(OpDef{Kind: OpMul, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newMul(d), nil
		}})
	registerOp(OpDef{Kind: OpReshape, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newReshape(tensor.Shape(in[0]), tensor.Shape(out)), nil
		}})
	registerOp(OpDef{Kind: OpSoftmaxCE, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newSoftmaxCESmoothed(a.Float("smoothing")), nil
		}})
	registerOp(OpDef{Kind: OpSoftmaxCEGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			return newSoftmaxCEGradSmoothed(a.Float("smoothing")), nil
		}})
	registerOp(OpDef{Kind: OpDot, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return newDot(d), nil
		}})
	registerOp(OpDef{Kind: OpDotGrad, FLOPs: elementwiseFLOPs,
		Make: func(a Attrs, in [][]int, out []int) (Op, error) {
			d := firstDims(in)
			return &dotGradOp{base: newBase(OpDotGrad, nil, tt(d), tt(d), scalarT)}, nil
		}})
	registerOp(OpDef{Kind: OpAdd, FLOPs: elementwiseFLOPs,
		Make: func(_ Attrs, in [][]int, _ []int) (Op, error) {
			return newAdd(firstDims(in)), nil
		}})
}
