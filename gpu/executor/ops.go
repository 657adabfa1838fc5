package executor

import (
	"fmt"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/graph"
)

// Tensor is a device buffer with a shape; a scalar has a nil shape and
// one value.
type Tensor struct {
	Buf   device.Buffer
	Shape []int
}

// Size is the number of values.
func (t Tensor) Size() int { return size(t.Shape) }

func size(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// Op is one op of graph/'s set on a device.
type Op struct {
	Kind    graph.Kind
	in      [][]int
	out     []int
	need    []int           // the scratch buffers' sizes
	scratch []device.Buffer // the scratch buffers: the op's own, or a program's shared workspace
	own     bool            // the op allocated scratch itself
	run     func(dev device.Device, in []Tensor, out Tensor) error
}

// Run computes out from in. Shapes must be those the op was made for.
func (o *Op) Run(dev device.Device, in []Tensor, out Tensor) error {
	if len(in) != len(o.in) {
		return fmt.Errorf("executor: %s takes %d inputs, got %d", o.Kind, len(o.in), len(in))
	}
	return o.run(dev, in, out)
}

// Free releases the op's scratch memory, when it is its own.
func (o *Op) Free(dev device.Device) {
	if o.own {
		for _, b := range o.scratch {
			dev.Free(b)
		}
	}
	o.scratch = nil
}

// dotParts is how many partial sums a Dot takes (see dot_parts in
// csrc/kernels.cu).
const dotParts = 4096

// rowChunk is how many values one thread adds up in a column sum
// (sum_rows) or a convolution's bias gradient (conv_grad_b_parts): longer
// sums go through a tree of partial sums, rowChunk at a time. A thread's
// loads wait on each other, and a GPU hides that only with many threads:
// one thread per column over 512 rows spends about 128 memory round trips
// (at four loads in flight), one per chunk of 32 about 8.
const rowChunk = 32

// rowSum adds up the columns of an n×m matrix: y[j] = Σ_i x[i,j], through
// partial sums of rowChunk rows, level by level (ceil(n/32) rows, then
// ceil(n/1024), ...) into two scratch buffers in turn, and a last pass
// over at most rowChunk rows. The tree comes from n alone, so the order of
// the sums, and the result, do not depend on the launch.
type rowSum struct {
	n, m int
	tmp  [2]func() device.Buffer
}

// newRowSum reserves the scratch of a column sum of n rows of m values.
func newRowSum(alloc func(int) func() device.Buffer, n, m int) rowSum {
	r := rowSum{n: n, m: m}
	for lvl, rows := 0, n; rows > rowChunk && lvl < 2; lvl++ {
		rows = (rows + rowChunk - 1) / rowChunk
		r.tmp[lvl] = alloc(rows * m)
	}
	return r
}

func (r rowSum) run(dev device.Device, x, y device.Buffer) error {
	src, rows := x, r.n
	for lvl := 0; rows > rowChunk; lvl++ {
		chunks := (rows + rowChunk - 1) / rowChunk
		dst := r.tmp[lvl%2]()
		if err := dev.Launch("sum_rows", chunks*r.m, src, dst, rows, r.m, rowChunk); err != nil {
			return err
		}
		src, rows = dst, chunks
	}
	return dev.Launch("sum_rows", r.m, src, y, rows, r.m, max(rows, 1))
}

// convGeom is a convolution's geometry, as graph/ lays it out.
type convGeom struct{ N, C, H, W, K, KH, KW, OH, OW, stride, pad int }

func newConvGeom(x, w []int, stride, pad int) (convGeom, error) {
	if len(x) != 4 || len(w) != 4 || x[1] != w[1] || stride < 1 {
		return convGeom{}, fmt.Errorf("executor: convolution of X %v with W %v (stride %d) does not fit", x, w, stride)
	}
	g := convGeom{N: x[0], C: x[1], H: x[2], W: x[3], K: w[0], KH: w[2], KW: w[3], stride: stride, pad: pad}
	g.OH = (g.H+2*pad-g.KH)/stride + 1
	g.OW = (g.W+2*pad-g.KW)/stride + 1
	if g.OH < 1 || g.OW < 1 {
		return convGeom{}, fmt.Errorf("executor: convolution of X %v with W %v leaves no output", x, w)
	}
	return g, nil
}

func (g convGeom) ckk() int   { return g.C * g.KH * g.KW }
func (g convGeom) ncols() int { return g.N * g.OH * g.OW }
func (g convGeom) args() []any {
	return []any{g.N, g.C, g.H, g.W, g.KH, g.KW, g.stride, g.pad, g.OH, g.OW}
}

// NewOp makes op kind (with graph/'s attributes) for inputs of shapes in
// and an output of shape out (nil: a scalar), with its scratch memory
// allocated on dev.
//
// prec is the precision of its matrix products (see device.Precision).
func NewOp(dev device.Device, kind graph.Kind, attrs map[string]any, in [][]int, out []int, prec device.Precision) (*Op, error) {
	o, err := newOp(kind, attrs, in, out, prec)
	if err != nil {
		return nil, err
	}
	o.own = true
	for _, n := range o.need {
		b, err := dev.Alloc(n)
		if err != nil {
			o.Free(dev)
			return nil, err
		}
		o.scratch = append(o.scratch, b)
	}
	return o, nil
}

// newOp makes the op without its scratch memory (o.need says what it
// takes).
func newOp(kind graph.Kind, attrs map[string]any, in [][]int, out []int, prec device.Precision) (*Op, error) {
	intAttr := func(k string) int { v, _ := attrs[k].(int); return v }
	boolAttr := func(k string) bool { v, _ := attrs[k].(bool); return v }
	o := &Op{Kind: kind, in: in, out: out}
	// alloc reserves scratch of n values: slot k of o.scratch, which is
	// the op's own (NewOp) or a workspace shared by a program's ops.
	alloc := func(n int) func() device.Buffer {
		k := len(o.need)
		o.need = append(o.need, n)
		return func() device.Buffer { return o.scratch[k] }
	}
	need := func(n int) error {
		if len(in) != n {
			return fmt.Errorf("executor: %s takes %d inputs, got shapes %v", kind, n, in)
		}
		return nil
	}
	elementwise := func(kernel string, inputs int) error {
		if err := need(inputs); err != nil {
			return err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			args := make([]any, 0, inputs+2)
			for _, t := range in {
				args = append(args, t.Buf)
			}
			n := out.Size()
			return dev.Launch(kernel, n, append(args, out.Buf, n)...)
		}
		return nil
	}
	var err error
	switch kind {
	case graph.OpLinear:
		if err = need(3); err != nil {
			return nil, err
		}
		n, k, m := in[0][0], in[0][1], in[1][0]
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("bias_rows", n*m, out.Buf, in[2].Buf, n, m); err != nil {
				return err
			}
			return dev.Gemm(prec, false, true, n, m, k, 1, in[0].Buf, k, in[1].Buf, k, 1, out.Buf, m)
		}
	case graph.OpMatMul:
		if err = need(2); err != nil {
			return nil, err
		}
		ta, tb := boolAttr("trans_a"), boolAttr("trans_b")
		m, k := in[0][0], in[0][1]
		if ta {
			m, k = k, m
		}
		n := in[1][1]
		if tb {
			n = in[1][0]
		}
		lda, ldb := in[0][1], in[1][1]
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Gemm(prec, ta, tb, m, n, k, 1, in[0].Buf, lda, in[1].Buf, ldb, 0, out.Buf, n)
		}
	case graph.OpSumRows:
		if err = need(1); err != nil {
			return nil, err
		}
		sum := newRowSum(alloc, in[0][0], in[0][1])
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return sum.run(dev, in[0].Buf, out.Buf)
		}
	case graph.OpConv2D:
		if err = need(3); err != nil {
			return nil, err
		}
		g, err := newConvGeom(in[0], in[1], intAttr("stride"), intAttr("pad"))
		if err != nil {
			return nil, err
		}
		cols, tmp := alloc(g.ckk()*g.ncols()), alloc(g.K*g.ncols())
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("im2col", g.ckk()*g.ncols(), append([]any{in[0].Buf, cols()}, g.args()...)...); err != nil {
				return err
			}
			if err := dev.Gemm(prec, false, false, g.K, g.ncols(), g.ckk(), 1, in[1].Buf, g.ckk(), cols(), g.ncols(), 0, tmp(), g.ncols()); err != nil {
				return err
			}
			return dev.Launch("km_to_nchw_bias", out.Size(), tmp(), out.Buf, in[2].Buf, g.N, g.K, g.OH*g.OW)
		}
	case graph.OpConv2DGradInput: // dY, W -> dX of shape out
		if err = need(2); err != nil {
			return nil, err
		}
		g, err := newConvGeom(out, in[1], intAttr("stride"), intAttr("pad"))
		if err != nil {
			return nil, err
		}
		dyKM, dcols := alloc(g.K*g.ncols()), alloc(g.ckk()*g.ncols())
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("nchw_to_km", g.K*g.ncols(), in[0].Buf, dyKM(), g.N, g.K, g.OH*g.OW); err != nil {
				return err
			}
			if err := dev.Gemm(prec, true, false, g.ckk(), g.ncols(), g.K, 1, in[1].Buf, g.ckk(), dyKM(), g.ncols(), 0, dcols(), g.ncols()); err != nil {
				return err
			}
			return dev.Launch("col2im", out.Size(), append([]any{dcols(), out.Buf}, g.args()...)...)
		}
	case graph.OpConv2DGradW: // X, dY -> dW of shape out
		if err = need(2); err != nil {
			return nil, err
		}
		g, err := newConvGeom(in[0], out, intAttr("stride"), intAttr("pad"))
		if err != nil {
			return nil, err
		}
		cols, dyKM := alloc(g.ckk()*g.ncols()), alloc(g.K*g.ncols())
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("im2col", g.ckk()*g.ncols(), append([]any{in[0].Buf, cols()}, g.args()...)...); err != nil {
				return err
			}
			if err := dev.Launch("nchw_to_km", g.K*g.ncols(), in[1].Buf, dyKM(), g.N, g.K, g.OH*g.OW); err != nil {
				return err
			}
			return dev.Gemm(prec, false, true, g.K, g.ckk(), g.ncols(), 1, dyKM(), g.ncols(), cols(), g.ncols(), 0, out.Buf, g.ckk())
		}
	case graph.OpConv2DGradB:
		if err = need(1); err != nil {
			return nil, err
		}
		s := in[0]
		n, k, p := s[0], s[1], s[2]*s[3]
		parts := max((n*p+rowChunk-1)/rowChunk, 1)
		part := alloc(parts * k)
		sum := newRowSum(alloc, parts, k)
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("conv_grad_b_parts", k*parts, in[0].Buf, part(), n, k, p, parts); err != nil {
				return err
			}
			return sum.run(dev, part(), out.Buf)
		}
	case graph.OpMaxPool2D:
		if err = need(1); err != nil {
			return nil, err
		}
		s, k := in[0], intAttr("kernel")
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("maxpool", out.Size(), in[0].Buf, out.Buf, s[0]*s[1], s[2], s[3], k)
		}
	case graph.OpMaxPool2DGrad: // X, Y, dY -> dX
		if err = need(3); err != nil {
			return nil, err
		}
		s, k := in[0], intAttr("kernel")
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("maxpool_grad", out.Size(), in[0].Buf, in[1].Buf, in[2].Buf, out.Buf, s[0]*s[1], s[2], s[3], k)
		}
	case graph.OpReLU:
		err = elementwise("relu", 1)
	case graph.OpTanh:
		err = elementwise("tanh_fwd", 1)
	case graph.OpSigmoid:
		err = elementwise("sigmoid_fwd", 1)
	case graph.OpReLUGrad:
		err = elementwise("relu_grad", 2)
	case graph.OpTanhGrad:
		err = elementwise("tanh_grad", 2)
	case graph.OpSigmoidGrad:
		err = elementwise("sigmoid_grad", 2)
	case graph.OpMul:
		err = elementwise("mul", 2)
	case graph.OpReshape:
		// Executors alias the output to the input; a copy when they do not.
		if err = need(1); err != nil {
			return nil, err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if in[0].Buf == out.Buf {
				return nil
			}
			return dev.Launch("copy_f32", out.Size(), in[0].Buf, out.Buf, out.Size())
		}
	case graph.OpSoftmaxCE: // logits, labels -> mean loss
		if err = need(2); err != nil {
			return nil, err
		}
		n, k := in[0][0], in[0][1]
		rows := alloc(2 * n) // float64 per row
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("softmax_ce_rows", n, in[0].Buf, in[1].Buf, rows(), n, k); err != nil {
				return err
			}
			return dev.Launch("mean_f64", 1, rows(), out.Buf, n)
		}
	case graph.OpSoftmaxCEGrad: // logits, labels, g -> dLogits
		if err = need(3); err != nil {
			return nil, err
		}
		n, k := in[0][0], in[0][1]
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("softmax_ce_grad", n, in[0].Buf, in[1].Buf, in[2].Buf, out.Buf, n, k)
		}
	case graph.OpDot:
		if err = need(2); err != nil {
			return nil, err
		}
		n := size(in[0])
		parts := max(min(n, dotParts), 1)
		partial := alloc(2 * parts) // float64s
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("dot_parts", parts, in[0].Buf, in[1].Buf, partial(), n, parts); err != nil {
				return err
			}
			return dev.Launch("sum_f64_to_f32", 1, partial(), out.Buf, parts)
		}
	case graph.OpDotGrad:
		err = elementwise("scale_by", 2)
	default:
		return nil, fmt.Errorf("executor: %q is not an op of graph/'s set", kind)
	}
	if err != nil {
		return nil, err
	}
	return o, nil
}
