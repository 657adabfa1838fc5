package graph

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// NewOp builds one op of the set outside any graph, for executors'
// conformance tests: its Do is the CPU reference an executor's kernels are
// compared with. attrs are the op's attributes as Attrs reports them; in
// are the shapes of its inputs, out the shape of its output (needed by the
// convolution gradients, which produce a given shape).
func NewOp(kind Kind, attrs map[string]any, in [][]int, out []int) (Op, error) {
	intAttr := func(k string) int { v, _ := attrs[k].(int); return v }
	boolAttr := func(k string) bool { v, _ := attrs[k].(bool); return v }
	d := 0
	if len(in) > 0 {
		d = len(in[0])
	}
	switch kind {
	case OpLinear:
		return newLinear(boolAttr("grad_x")), nil
	case OpMatMul:
		return newMatMul(boolAttr("trans_a"), boolAttr("trans_b")), nil
	case OpSumRows:
		return newSumRows(), nil
	case OpConv2D:
		return newConv2D(intAttr("stride"), intAttr("pad"), boolAttr("grad_x")), nil
	case OpConv2DGradInput:
		fwd := newConv2D(intAttr("stride"), intAttr("pad"), true)
		return &conv2dGradInputOp{base: newBase(OpConv2DGradInput, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, xShape: tensor.Shape(out).Clone()}, nil
	case OpConv2DGradW:
		fwd := newConv2D(intAttr("stride"), intAttr("pad"), true)
		return &conv2dGradWOp{base: newBase(OpConv2DGradW, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, wShape: tensor.Shape(out).Clone()}, nil
	case OpConv2DGradB:
		return &conv2dGradBOp{base: newBase(OpConv2DGradB, nil, tt(1), tt(4))}, nil
	case OpMaxPool2D:
		return newMaxPool(intAttr("kernel")), nil
	case OpMaxPool2DGrad:
		p := newMaxPool(intAttr("kernel"))
		return &maxPoolGradOp{base: newBase(OpMaxPool2DGrad, p.attrs, tt(4), tt(4), tt(4), tt(4)), k: p.k}, nil
	case OpReLU, OpTanh, OpSigmoid:
		return newAct(kind, d), nil
	case OpReLUGrad, OpTanhGrad, OpSigmoidGrad:
		return newActGrad(kind, d), nil
	case OpMul:
		return newMul(d), nil
	case OpReshape:
		return newReshape(tensor.Shape(in[0]), tensor.Shape(out)), nil
	case OpSoftmaxCE:
		return newSoftmaxCE(), nil
	case OpSoftmaxCEGrad:
		return newSoftmaxCEGrad(), nil
	case OpDot:
		return newDot(d), nil
	case OpDotGrad:
		return &dotGradOp{base: newBase(OpDotGrad, nil, tt(d), tt(d), scalarT)}, nil
	}
	return nil, fmt.Errorf("graph: %q is not an op of the set", kind)
}

// Run runs a standalone op on float32 inputs of the given shapes (a
// scalar input is a one-element slice with a nil shape) and returns its
// output and the output's shape (nil for a scalar).
func Run(op Op, in [][]float32, shapes [][]int) ([]float32, []int, error) {
	vals := make([]G.Value, len(in))
	for i, x := range in {
		if shapes[i] == nil {
			v := G.F32(x[0])
			vals[i] = &v
			continue
		}
		vals[i] = tensor.New(tensor.WithShape(shapes[i]...), tensor.WithBacking(x))
	}
	out, err := op.Do(vals...)
	if err != nil {
		return nil, nil, err
	}
	if s, ok := out.(*G.F32); ok {
		return []float32{float32(*s)}, nil, nil
	}
	return f32(out), out.Shape().Clone(), nil
}
