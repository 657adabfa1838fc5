package graph

import (
	"fmt"
	"slices"
	"sync/atomic"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/cblas"
	"github.com/gotrain/gotrain/graph/kern"
)

// The registrations of this file's ops (see OpDef).
func init() {
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
}

// convGeom is the geometry of one NCHW convolution.
type convGeom struct {
	N, C, H, W  int // input
	K, KH, KW   int // filters
	Stride, Pad int
	OH, OW      int // output
}

func (g convGeom) ckk() int { return g.C * g.KH * g.KW }
func (g convGeom) ohw() int { return g.OH * g.OW }

func newGeom(x, w tensor.Shape, stride, pad int) (convGeom, error) {
	if len(x) != 4 || len(w) != 4 || x[1] != w[1] {
		return convGeom{}, fmt.Errorf("Conv2D: X %v and W %v do not fit (want X[N,C,H,W], W[K,C,KH,KW])", x, w)
	}
	g := convGeom{N: x[0], C: x[1], H: x[2], W: x[3], K: w[0], KH: w[2], KW: w[3], Stride: stride, Pad: pad}
	g.OH = (g.H+2*pad-g.KH)/stride + 1
	g.OW = (g.W+2*pad-g.KW)/stride + 1
	if g.OH <= 0 || g.OW <= 0 {
		return convGeom{}, fmt.Errorf("Conv2D: kernel %dx%d does not fit input %dx%d with padding %d", g.KH, g.KW, g.H, g.W, pad)
	}
	return g, nil
}

// im2col lays the receptive fields of x out as the columns of cols, a
// [C·KH·KW, N·OH·OW] matrix: row (c,i,j), column (n,oy,ox). Samples are
// independent, so the work is split across CPUs by sample.
func im2col(g convGeom, x, cols []float32) {
	ohw, ncols, chw, kg := g.ohw(), g.N*g.ohw(), g.C*g.H*g.W, g.kgeom()
	parallelFor(g.N, g.ckk()*ncols, func(n0, n1 int) {
		for n := n0; n < n1; n++ {
			kern.Im2Col(kg, x[n*chw:][:chw], cols, ncols, n*ohw)
		}
	})
}

// col2im is im2col's adjoint: it sums the columns back into dx (zeroed
// first), split across CPUs by sample like im2col, each sample's by
// kern.Col2Im (in C where the native kernels are).
func col2im(g convGeom, cols, dx []float32) {
	ohw, ncols, chw, kg := g.ohw(), g.N*g.ohw(), g.C*g.H*g.W, g.kgeom()
	parallelFor(g.N, g.ckk()*ncols, func(n0, n1 int) {
		for n := n0; n < n1; n++ {
			kern.Col2Im(kg, cols, ncols, n*ohw, dx[n*chw:][:chw])
		}
	})
}

// The CPU convolutions work sample by sample: each sample's im2col
// ([C·KH·KW, OH·OW], small enough to stay in cache) and its matrix
// products, on one goroutine each, the samples split across the CPUs.
// Y[n] = W·cols(X[n]) is already in NCHW order.

func (g convGeom) one() convGeom { g.N = 1; return g }
func (g convGeom) xSize() int    { return g.C * g.H * g.W }
func (g convGeom) ySize() int    { return g.K * g.ohw() }

// direct reports a 1x1 convolution of stride 1 without padding, whose
// im2col is the sample itself.
func (g convGeom) direct() bool { return g.KH == 1 && g.KW == 1 && g.Stride == 1 && g.Pad == 0 }

// nativeConv turns kern's convolutions on (tests turn it off to compare).
var nativeConv = kern.Available()

// native3 reports a convolution that kern's direct 3x3 kernels compute
// (kern.Conv3, kern.Conv3DW): 3x3, stride 1, padding 1, on planes at least
// 12 wide. On narrower planes the two padding columns of each row that
// they compute and drop cost more than im2col does (measured on ResNet's
// 7x7 planes: 63 GFLOP/s for the kernel, 80 for im2col and OpenBLAS);
// there several samples side by side make one wider image (wide).
func (g convGeom) native3() bool {
	return nativeConv && g.KH == 3 && g.KW == 3 && g.Stride == 1 && g.Pad == 1 && g.W >= 12
}

// nativeK reports a strided convolution, which kern's general direct
// kernel (kern.Conv) computes faster than the general im2col and
// OpenBLAS do (ResNet-20's, batch 128, measured: 3x3 stride 2 from 28x28
// 1.7-2.1 ms against 4.0-4.7, from 14x14 2.1-2.2 against 3.1-3.7; 1x1
// stride 2 0.4-0.6 against 0.5-1.2). Stride 1 on planes too small for
// native3 stays with im2col (7x7: 4.7 ms against 3.5), but for windows
// of 5x5 and more over several channels: their im2col copies each value
// 25 times and more, in rows as short as the output (a LeNet's second
// convolution, 16 planes of 14x14 to 10x10: the CNN's whole step, batch
// 64, at 7,429 samples/s against 6,435, medians of 4 runs on an AMD
// EPYC). A single channel's im2col is small, and OpenBLAS as fast there.
func (g convGeom) nativeK() bool {
	return nativeConv && (g.Stride > 1 || g.KH*g.KW >= 25 && g.C > 1)
}

// nativeKDW reports a weight gradient that kern.ConvDW computes faster
// than im2col and OpenBLAS: strided, with windows of 6 and more (3x3
// stride 2: 2.2-2.9 ms against 3.1-5.6). A 1x1 window keeps too few sums
// in registers (1.2-1.5 ms against 0.4-0.9).
func (g convGeom) nativeKDW() bool { return g.nativeK() && g.KH*g.KW >= 6 }

// wide is, for a 3x3 stride-1 padding-1 convolution on planes too narrow
// for native3 (ResNet's 7x7), how many samples kern's direct kernels take
// side by side as one image (0: none). Each row of that image holds a
// row of each sample, one zero column between them: the zeros are the
// samples' padding, so every output has the products, in the order, of
// the sample's own convolution. Eight 7x7 planes (a group of the weight
// gradient's partial sums, convGroup, which the gradients' groups of
// planes stay within) make rows of 63: with the zero after each row the
// kernels compute 7·64 = 448 positions (456, rounded up to their
// 24-wide blocks), 392 of which (86%) are outputs; four planes, rows of
// 31: 196 of 240 (82%); a 7x7 plane alone: 49 of 72. ResNet-20's
// 64-channel 7x7 convolutions, batch 128, measured against im2col and
// OpenBLAS with four planes: forward 2.9 ms against 3.2, both gradients
// 6.5 against 6.7-6.8 (best of 20). Eight planes instead of four: the
// whole ResNet-20 step in 0.98 of the time (runs of 240 steps
// alternating the two: 0.986, 0.968, 0.983, 0.978; nine and twelve
// about the same, six 0.99, three 1.02). The weight gradient's sums
// over a group's positions differ from four planes' in the last bits.
func (g convGeom) wide() int {
	if !nativeConv || !wideConv || g.KH != 3 || g.KW != 3 || g.Stride != 1 || g.Pad != 1 || g.W >= 12 {
		return 0
	}
	return min(max(2, 64/(g.W+1)), convGroup)
}

// wideConv turns wide on (tests turn it off to compare).
var wideConv = true

// wideW is the width of s samples side by side.
func (g convGeom) wideW(s int) int { return kern.WideW(g.W, s) }

// gatherWide lays channels of c planes of samples [n0, n1) of src (each
// c·H·W) side by side into dst (c·H·wideW), zero columns between them.
func (g convGeom) gatherWide(dst, src []float32, c, n0, n1 int) {
	kern.GatherWide(dst, src[n0*c*g.H*g.W:], c, g.H, g.W, n1-n0)
}

// wideGroups runs f for samples [n0, n1) of a wide() convolution, sw at
// a time: samples [m0, m1) side by side, of width ww, their X in xw and
// their dY in dyw, both gathered into scratch; rest is the scratch after
// them.
func (g convGeom) wideGroups(x, dy, scratch []float32, n0, n1, sw int, f func(m0, m1, ww int, xw, dyw, rest []float32)) {
	for m0 := n0; m0 < n1; m0 += sw {
		m1 := min(m0+sw, n1)
		ww := g.wideW(m1 - m0)
		xw, dyw := scratch[:g.C*g.H*ww], scratch[g.C*g.H*ww:][:g.K*g.H*ww]
		g.gatherWide(xw, x, g.C, m0, m1)
		g.gatherWide(dyw, dy, g.K, m0, m1)
		f(m0, m1, ww, xw, dyw, scratch[(g.C+g.K)*g.H*ww:])
	}
}

// scatterWide is gatherWide's inverse, the zero columns dropped.
func (g convGeom) scatterWide(dst, src []float32, c, n0, n1 int) {
	kern.ScatterWide(dst[n0*c*g.H*g.W:], src, c, g.H, g.W, n1-n0)
}

func (g convGeom) kgeom() kern.Geom {
	return kern.Geom{C: g.C, H: g.H, W: g.W, K: g.K, KH: g.KH, KW: g.KW, S: g.Stride, P: g.Pad}
}

// scratchSize is the scratch a worker needs for one sample of the forward
// pass or, dw, of the weight gradient: its im2col, or kern's.
func (g convGeom) scratchSize(dw bool) int {
	switch {
	case g.native3():
		return kern.Conv3Scratch(g.C, g.H, g.W, g.K)
	case g.nativeK() && (!dw || g.nativeKDW()):
		return kern.ConvScratch(g.kgeom())
	}
	return g.colsSize()
}

// colsSize is the scratch a worker needs for one sample's im2col.
func (g convGeom) colsSize() int {
	if g.direct() {
		return 0
	}
	return g.ckk() * g.ohw()
}

// colsOf is sample x's im2col, in scratch (x itself when direct).
func (g convGeom) colsOf(x, scratch []float32) []float32 {
	switch {
	case g.direct():
		return x
	case g.same():
		im2colSame(g, x, scratch)
	default:
		im2col(g.one(), x, scratch)
	}
	return scratch
}

// same reports a convolution of stride 1 whose output has its input's
// size ("same" padding, as a ResNet's 3x3 with padding 1): row (c,i,j) of
// its im2col is then the plane shifted by (i-Pad)·W + (j-Pad), with the
// rows and columns that fall outside zeroed, so it is copied in one run
// per (c,i,j) rather than row by row.
func (g convGeom) same() bool { return g.Stride == 1 && g.OH == g.H && g.OW == g.W }

// im2colSame is im2col of one sample x for a same() geometry.
func im2colSame(g convGeom, x, cols []float32) {
	hw, w := g.H*g.W, g.W
	for c := 0; c < g.C; c++ {
		plane := x[c*hw:][:hw]
		for i := 0; i < g.KH; i++ {
			dy := i - g.Pad
			oy0, oy1 := max(0, -dy), min(g.H, g.H-dy) // rows whose source row is inside
			for j := 0; j < g.KW; j++ {
				dx := j - g.Pad
				dst := cols[((c*g.KH+i)*g.KW+j)*hw:][:hw]
				if oy1 <= oy0 {
					clear(dst)
					continue
				}
				s := dy*w + dx
				p0, p1 := oy0*w, oy1*w
				q0, q1 := max(p0, -s), min(p1, hw-s)
				clear(dst[:q0])
				copy(dst[q0:q1], plane[q0+s:q1+s])
				clear(dst[q1:])
				// The columns whose source column is outside took their
				// neighbouring row's values: zero them.
				zeroEdges(dst, w, oy0, oy1, dx)
			}
		}
	}
}

// zeroEdges zeroes, in rows [oy0, oy1) of the w-wide rows of m, the
// columns that a shift by dx takes from outside the row: the first -dx
// (dx < 0) or the last dx (dx > 0).
func zeroEdges(m []float32, w, oy0, oy1, dx int) {
	switch {
	case dx == -1:
		for p := oy0 * w; p < oy1*w; p += w {
			m[p] = 0
		}
	case dx == 1:
		for p := oy0*w + w - 1; p < oy1*w; p += w {
			m[p] = 0
		}
	case dx < 0:
		for oy := oy0; oy < oy1; oy++ {
			clear(m[oy*w:][:min(-dx, w)])
		}
	case dx > 0:
		for oy := oy0; oy < oy1; oy++ {
			clear(m[oy*w+max(w-dx, 0) : (oy+1)*w])
		}
	}
}

// col2imSame is col2im of one sample for a same() geometry: it zeroes dx
// and adds each row of cols (whose entries of outside columns it zeroes)
// back in one run.
func col2imSame(g convGeom, cols, dx []float32) {
	hw, w := g.H*g.W, g.W
	clear(dx[:g.C*hw])
	for c := 0; c < g.C; c++ {
		plane := dx[c*hw:][:hw]
		for i := 0; i < g.KH; i++ {
			dy := i - g.Pad
			oy0, oy1 := max(0, -dy), min(g.H, g.H-dy)
			if oy1 <= oy0 {
				continue
			}
			for j := 0; j < g.KW; j++ {
				ddx := j - g.Pad
				src := cols[((c*g.KH+i)*g.KW+j)*hw:][:hw]
				zeroEdges(src, w, oy0, oy1, ddx)
				s := dy*w + ddx
				q0, q1 := max(oy0*w, -s), min(oy1*w, hw-s)
				d := plane[q0+s : q1+s]
				for k, v := range src[q0:q1] {
					d[k] += v
				}
			}
		}
	}
}

// flops is one pass's multiply-adds, doubled: the work estimate that
// decides whether to split.
func (g convGeom) flops() int { return 2 * g.N * g.ySize() * g.ckk() }

// convGroup is how many samples' weight gradients are summed into one
// partial sum: the partial sums are added in order, so dW does not depend
// on how many CPUs computed it.
const convGroup = 8

// ---- Conv2D: Y[N,K,OH,OW] = W ⊛ X + b ----

type conv2dOp struct {
	base
	stride, pad int
	needX       bool
	noBias      bool      // two inputs (X, W): no bias (before a BatchNorm, as torchvision's ResNets)
	cols        []float32 // per worker: a sample's im2col
	// The last forward pass: its count, X and W, which the gradient ops
	// read when one of them computes both gradients (conv2dGradWOp.both).
	runs         uint64
	lastX, lastW []float32
	// bn is the training BatchNorm that normalises this convolution's
	// output (fuseConvBN), mom the moments of that output it takes.
	bn  *batchNormOp
	mom convMoments
}

// convMoments is, for each sample and filter, the moments of the output
// plane about the BatchNorm's running mean (kern.PlaneMoments), taken
// right after the sample is computed, while its planes are in cache: the
// BatchNorm adds them up rather than reading its input again for its
// statistics, with the same bits (kern.ChanMoments adds the same terms in
// the same order).
type convMoments struct {
	k    []float32 // the running mean they are about
	part []float64 // [N][K][2]: Σ (y-k) and Σ (y-k)²
	out  *float32  // the output they are of; nil until a run takes them
}

// momentsOf returns the moments of output y taken by the convolution's
// last run, about k, or nil.
func (m *convMoments) momentsOf(y []float32, k []float32) []float64 {
	if m.out == nil || len(y) == 0 || &y[0] != m.out || !slices.Equal(m.k, k) {
		return nil
	}
	return m.part
}

// takeMoments reports whether this run takes its output's moments, and
// readies them: only for a training BatchNorm's input, once the
// BatchNorm has run once (its running mean is then known).
func (o *conv2dOp) takeMoments(g convGeom) bool {
	o.mom.out = nil
	if o.bn == nil || !o.bn.train || len(o.bn.guess) != g.K || (o.bn.sync != nil && o.bn.sync.s != nil) {
		return false
	}
	o.mom.k = append(o.mom.k[:0], o.bn.guess...)
	if n := g.N * g.K * 2; len(o.mom.part) != n {
		o.mom.part = make([]float64, n)
	}
	return true
}

// sampleMoments takes sample n's moments (takeMoments).
func (o *conv2dOp) sampleMoments(g convGeom, y []float32, n int) {
	kern.PlaneMoments(y[n*g.ySize():][:g.ySize()], g.K, g.ohw(), o.mom.k, o.mom.part[n*g.K*2:][:g.K*2])
}

// workspaceBytes is the memory of the ops' scratch buffers (see
// Program.Bytes).
func (o *conv2dOp) workspaceBytes() int64          { return 4*int64(len(o.cols)) + 8*int64(len(o.mom.part)) }
func (o *conv2dGradInputOp) workspaceBytes() int64 { return 4 * int64(len(o.dcols)) }
func (o *conv2dGradWOp) workspaceBytes() int64     { return 4 * int64(len(o.cols)+len(o.partial)) }

// fixedBytes is the part of workspaceBytes that does not grow with the
// batch: the workers' im2col scratch (see Program.BytesPerSample).
func (o *conv2dOp) fixedBytes() int64          { return 4 * int64(len(o.cols)) }
func (o *conv2dGradInputOp) fixedBytes() int64 { return 4 * int64(len(o.dcols)) }
func (o *conv2dGradWOp) fixedBytes() int64     { return 4 * int64(len(o.cols)) }

func (o *conv2dOp) releaseTo(p *bufPool) {
	o.base.releaseTo(p)
	p.put(o.cols)
	o.cols = nil
}

func (o *conv2dGradInputOp) releaseTo(p *bufPool) {
	o.base.releaseTo(p)
	p.put(o.dcols)
	o.dcols = nil
}

func (o *conv2dGradWOp) releaseTo(p *bufPool) {
	o.base.releaseTo(p)
	p.put(o.cols)
	p.put(o.partial)
	o.cols, o.partial = nil, nil
}

func newConv2D(stride, pad int, needX bool) *conv2dOp {
	return &conv2dOp{base: newBase(OpConv2D, map[string]any{"stride": stride, "pad": pad, "grad_x": needX}, tt(4), tt(4), tt(4), tt(1)), stride: stride, pad: pad, needX: needX}
}

// newConv2DNoBias is a convolution without bias: inputs X and W; its
// attributes say "no_bias".
func newConv2DNoBias(stride, pad int, needX bool) *conv2dOp {
	return &conv2dOp{base: newBase(OpConv2D, map[string]any{"stride": stride, "pad": pad, "grad_x": needX, "no_bias": true}, tt(4), tt(4), tt(4)), stride: stride, pad: pad, needX: needX, noBias: true}
}

func (o *conv2dOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	g, err := newGeom(shapeOf(ds[0]), shapeOf(ds[1]), o.stride, o.pad)
	if err != nil {
		return nil, err
	}
	if o.noBias {
		return tensor.Shape{g.N, g.K, g.OH, g.OW}, nil
	}
	if b := shapeOf(ds[2]); len(b) != 1 || b[0] != g.K {
		return nil, fmt.Errorf("Conv2D: bias %v does not fit %d filters", b, g.K)
	}
	return tensor.Shape{g.N, g.K, g.OH, g.OW}, nil
}

func (o *conv2dOp) Do(in ...G.Value) (G.Value, error) {
	g, err := newGeom(dims(in[0]), dims(in[1]), o.stride, o.pad)
	if err != nil {
		return nil, err
	}
	x, w := f32(in[0]), f32(in[1])
	var bias []float32
	if !o.noBias {
		bias = f32(in[2])
	}
	o.runs++
	o.lastX, o.lastW = x, w
	out := o.output(g.N, g.K, g.OH, g.OW)
	y := f32(out)
	var moments func(n int)
	if o.takeMoments(g) {
		moments = func(n int) { o.sampleMoments(g, y, n) }
		defer func() { o.mom.out = &y[0] }()
	}
	if sw := g.wide(); sw > 0 {
		o.cols = wideConv3(g, x, w, bias, y, sw, o.cols, o.pool, moments)
		return out, nil
	}
	parts, _ := splitWork(g.N, g.flops())
	cs := g.scratchSize(false)
	o.cols = grow(o.pool, o.cols, parts*cs)
	parallelParts(g.N, g.flops(), func(part, lo, hi int) {
		scratch := o.cols[part*cs:][:cs]
		for n := lo; n < hi; n++ {
			xn, yn := x[n*g.xSize():][:g.xSize()], y[n*g.ySize():][:g.ySize()]
			if g.native3() {
				kern.Conv3(xn, w, yn, scratch, g.C, g.H, g.W, g.K)
			} else if g.nativeK() {
				kern.Conv(g.kgeom(), xn, w, yn, scratch)
			} else {
				cols := g.colsOf(xn, scratch)
				cblas.SgemmSerial(false, false, g.K, g.ohw(), g.ckk(), 1, w, g.ckk(), cols, g.ohw(), 0, yn, g.ohw())
			}
			g.addBias(yn, bias)
			if moments != nil {
				moments(n)
			}
		}
	})
	return out, nil
}

// addBias adds bias[k] to filter k's plane of one sample's output yn (nil
// bias: nothing).
func (g convGeom) addBias(yn, bias []float32) {
	for k, b := range bias {
		row := yn[k*g.ohw():][:g.ohw()]
		for i := range row {
			row[i] += b
		}
	}
}

// wideConv3 sets y = w ⊛ x (+ bias) for a wide() convolution, sw samples
// side by side to a call of kern.Conv3. scratch is the workers' (grown
// from pool as needed, and returned).
func wideConv3(g convGeom, x, w, bias, y []float32, sw int, scratch []float32, pool *bufPool, moments func(n int)) []float32 {
	groups, ww := (g.N+sw-1)/sw, g.wideW(sw)
	cs := (g.C+g.K)*g.H*ww + kern.Conv3Scratch(g.C, g.H, ww, g.K)
	parts, _ := splitWork(groups, g.flops())
	scratch = grow(pool, scratch, parts*cs)
	parallelParts(groups, g.flops(), func(part, lo, hi int) {
		mine := scratch[part*cs:][:cs]
		for q := lo; q < hi; q++ {
			n0, n1 := q*sw, min((q+1)*sw, g.N)
			ww := g.wideW(n1 - n0)
			xw, yw := mine[:g.C*g.H*ww], mine[g.C*g.H*ww:][:g.K*g.H*ww]
			g.gatherWide(xw, x, g.C, n0, n1)
			kern.Conv3(xw, w, yw, mine[(g.C+g.K)*g.H*ww:], g.C, g.H, ww, g.K)
			g.scatterWide(y, yw, g.K, n0, n1)
			for n := n0; n < n1; n++ {
				g.addBias(y[n*g.ySize():][:g.ySize()], bias)
				if moments != nil {
					moments(n)
				}
			}
		}
	})
	return scratch
}

func (o *conv2dOp) DiffWRT(int) []bool {
	if o.noBias {
		return []bool{o.needX, true}
	}
	return []bool{o.needX, true, true}
}

func (o *conv2dOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	var dx *G.Node
	var err error
	gw := &conv2dGradWOp{base: newBase(OpConv2DGradW, o.attrs, tt(4), tt(4), tt(4)), fwd: o, wShape: in[1].Shape().Clone()}
	if o.needX {
		gi := &conv2dGradInputOp{base: newBase(OpConv2DGradInput, o.attrs, tt(4), tt(4), tt(4)), fwd: o, xShape: in[0].Shape().Clone()}
		gw.gi = gi
		gi.gw = gw
		if dx, err = G.ApplyOp(gi, grad, in[1]); err != nil {
			return nil, err
		}
	}
	dw, err := G.ApplyOp(gw, in[0], grad)
	if err != nil {
		return nil, err
	}
	if o.noBias {
		return G.Nodes{dx, dw}, nil
	}
	db, err := G.ApplyOp(&conv2dGradBOp{base: newBase(OpConv2DGradB, nil, tt(1), tt(4))}, grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dw, db}, nil
}

// ---- Conv2DGradInput: dX = col2im(Wᵀ · dY) ----

type conv2dGradInputOp struct {
	base
	fwd    *conv2dOp
	gw     *conv2dGradWOp // the same convolution's weight gradient (nil outside a model's gradients)
	done   uint64         // the forward run whose dX the weight gradient's op computed (both)
	xShape tensor.Shape
	dcols  []float32 // per worker: a sample's column gradients, or dY's im2col
	wT     []float32 // the flipped, transposed filters (transposed)
}

func (o *conv2dGradInputOp) InferShape(...G.DimSizer) (tensor.Shape, error) {
	return o.xShape.Clone(), nil
}

func (o *conv2dGradInputOp) Do(in ...G.Value) (G.Value, error) {
	g, err := newGeom(o.xShape, dims(in[1]), o.fwd.stride, o.fwd.pad)
	if err != nil {
		return nil, err
	}
	dy, w := f32(in[0]), f32(in[1])
	if o.gw.fusable(g, o.fwd.lastX, dy, w) {
		if o.done != o.fwd.runs {
			o.gw.both(g, o.fwd.lastX, dy, w)
		}
		return o.out, nil
	}
	out := o.output(o.xShape...)
	dx := f32(out)
	if t, ok := g.transposed(); ok {
		o.transposedConv(g, t, dy, w, dx)
		return out, nil
	}
	parts, _ := splitWork(g.N, g.flops())
	cs := g.colsSize()
	o.dcols = grow(o.pool, o.dcols, parts*cs)
	parallelParts(g.N, g.flops(), func(part, lo, hi int) {
		scratch := o.dcols[part*cs:][:cs]
		for n := lo; n < hi; n++ {
			dxn := dx[n*g.xSize():][:g.xSize()]
			dcols := scratch
			if g.direct() {
				dcols = dxn
			}
			cblas.SgemmSerial(true, false, g.ckk(), g.ohw(), g.K, 1, w, g.ckk(), dy[n*g.ySize():][:g.ySize()], g.ohw(), 0, dcols, g.ohw())
			switch {
			case g.direct():
			case g.same():
				col2imSame(g, dcols, dxn)
			default:
				col2im(g.one(), dcols, dxn)
			}
		}
	})
	return out, nil
}

// transposed is, for a same() convolution with an odd square kernel
// centred by its padding, the convolution that computes its input's
// gradient: dX = conv(dY, W'), W'[c,k,i,j] = W[k,c,KH-1-i,KW-1-j], itself
// same(). Its im2col copies (im2colSame) where col2im would add.
func (g convGeom) transposed() (convGeom, bool) {
	if !g.same() || g.KH != 2*g.Pad+1 || g.KW != 2*g.Pad+1 {
		return convGeom{}, false
	}
	return convGeom{N: g.N, C: g.K, H: g.H, W: g.W, K: g.C, KH: g.KH, KW: g.KW, Stride: 1, Pad: g.Pad, OH: g.H, OW: g.W}, true
}

// transposedConv computes dX as the convolution t of dY with W' (see
// transposed), sample by sample.
func (o *conv2dGradInputOp) transposedConv(g, t convGeom, dy, w, dx []float32) {
	o.flip(g, w)
	if sw := t.wide(); sw > 0 {
		o.dcols = wideConv3(t, dy, o.wT, nil, dx, sw, o.dcols, o.pool, nil)
		return
	}
	parts, _ := splitWork(t.N, t.flops())
	cs := t.scratchSize(false)
	o.dcols = grow(o.pool, o.dcols, parts*cs)
	parallelParts(t.N, t.flops(), func(part, lo, hi int) {
		scratch := o.dcols[part*cs:][:cs]
		for n := lo; n < hi; n++ {
			dyn, dxn := dy[n*t.xSize():][:t.xSize()], dx[n*t.ySize():][:t.ySize()]
			if t.native3() {
				kern.Conv3(dyn, o.wT, dxn, scratch, t.C, t.H, t.W, t.K)
				continue
			}
			if t.nativeK() { // its scratch is kern.Conv's (scratchSize)
				kern.Conv(t.kgeom(), dyn, o.wT, dxn, scratch)
				continue
			}
			cols := t.colsOf(dyn, scratch)
			cblas.SgemmSerial(false, false, t.K, t.ohw(), t.ckk(), 1, o.wT, t.ckk(), cols, t.ohw(), 0, dxn, t.ohw())
		}
	})
}

// flip sets wT to the filters W' of transposed: W'[c,k,i,j] =
// W[k,c,KH-1-i,KW-1-j].
func (o *conv2dGradInputOp) flip(g convGeom, w []float32) {
	kk := g.KH * g.KW
	o.wT = growF(o.wT, len(w))
	for k := 0; k < g.K; k++ {
		for c := 0; c < g.C; c++ {
			src, dst := w[(k*g.C+c)*kk:][:kk], o.wT[(c*g.K+k)*kk:][:kk]
			for i := range kk {
				dst[i] = src[kk-1-i]
			}
		}
	}
}

// growF returns buf with length n, reallocated when too short.
func growF(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return make([]float32, n)
	}
	return buf[:n]
}

func (o *conv2dGradInputOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *conv2dGradInputOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Conv2DGradInput")
}

// ---- Conv2DGradW: dW = dY · im2col(X)ᵀ ----

type conv2dGradWOp struct {
	base
	fwd     *conv2dOp
	gi      *conv2dGradInputOp // the same convolution's input gradient (nil: none, or outside a model's gradients)
	done    uint64             // the forward run whose dW both computed
	wShape  tensor.Shape
	cols    []float32 // per worker: a sample's im2col
	partial []float32 // per group of convGroup samples: its dW
}

func (o *conv2dGradWOp) InferShape(...G.DimSizer) (tensor.Shape, error) {
	return o.wShape.Clone(), nil
}

func (o *conv2dGradWOp) Do(in ...G.Value) (G.Value, error) {
	g, err := newGeom(dims(in[0]), o.wShape, o.fwd.stride, o.fwd.pad)
	if err != nil {
		return nil, err
	}
	x, dy := f32(in[0]), f32(in[1])
	if o.fusable(g, x, dy, o.fwd.lastW) {
		if o.done != o.fwd.runs {
			o.both(g, x, dy, o.fwd.lastW)
		}
		return o.out, nil
	}
	out := o.output(o.wShape...)
	dw := f32(out)
	groups := (g.N + convGroup - 1) / convGroup
	wsz := g.K * g.ckk()
	parts, _ := splitWork(groups, g.flops())
	cs := g.scratchSize(true)
	sw := g.wide()
	if sw > 0 {
		ww := g.wideW(sw)
		cs = (g.C+g.K)*g.H*ww + kern.Conv3Scratch(g.C, g.H, ww, g.K)
	}
	o.cols = grow(o.pool, o.cols, parts*cs)
	if groups > 1 {
		o.partial = grow(o.pool, o.partial, groups*wsz)
	}
	parallelParts(groups, g.flops(), func(part, lo, hi int) {
		scratch := o.cols[part*cs:][:cs]
		for gi := lo; gi < hi; gi++ {
			sum := dw
			if groups > 1 {
				sum = o.partial[gi*wsz:][:wsz]
			}
			if sw > 0 {
				clear(sum)
				g.wideGroups(x, dy, scratch, gi*convGroup, min((gi+1)*convGroup, g.N), sw, func(_, _, ww int, xw, dyw, rest []float32) {
					kern.Conv3DW(xw, dyw, sum, rest, g.C, g.H, ww, g.K)
				})
				continue
			}
			if g.native3() || g.nativeKDW() {
				clear(sum)
				for n := gi * convGroup; n < min((gi+1)*convGroup, g.N); n++ {
					xn, dyn := x[n*g.xSize():][:g.xSize()], dy[n*g.ySize():][:g.ySize()]
					if g.native3() {
						kern.Conv3DW(xn, dyn, sum, scratch, g.C, g.H, g.W, g.K)
					} else {
						kern.ConvDW(g.kgeom(), xn, dyn, sum, scratch)
					}
				}
				continue
			}
			for n := gi * convGroup; n < min((gi+1)*convGroup, g.N); n++ {
				cols := g.colsOf(x[n*g.xSize():][:g.xSize()], scratch)
				beta := float32(1)
				if n == gi*convGroup {
					beta = 0
				}
				cblas.SgemmSerial(false, true, g.K, g.ckk(), g.ohw(), 1, dy[n*g.ySize():][:g.ySize()], g.ohw(), cols, g.ohw(), beta, sum, g.ckk())
			}
		}
	})
	o.addPartials(dw, groups, wsz)
	return out, nil
}

// addPartials sets dw to the groups' partial sums added in order (when
// there is more than one group; else the one group summed into dw).
func (o *conv2dGradWOp) addPartials(dw []float32, groups, wsz int) {
	if groups <= 1 {
		return
	}
	parallelFor(wsz, groups*wsz, func(i0, i1 int) {
		copy(dw[i0:i1], o.partial[i0:i1])
		for q := 1; q < groups; q++ {
			kern.Add(dw[i0:i1], dw[i0:i1], o.partial[q*wsz+i0:q*wsz+i1])
		}
	})
}

// fusable reports whether both gradients of a native3 convolution come
// from one pass (kern.Conv3Bwd, one padding of each sample's dY for both):
// whichever of the two ops runs first computes both, with X and W of the
// forward run that their inputs are.
func (o *conv2dGradWOp) fusable(g convGeom, x, dy, w []float32) bool {
	if o == nil || o.gi == nil || !(g.native3() || g.wide() > 0) || len(x) == 0 || len(w) == 0 || len(dy) == 0 {
		return false
	}
	f := o.fwd
	return len(f.lastX) == len(x) && &f.lastX[0] == &x[0] && len(f.lastW) == len(w) && &f.lastW[0] == &w[0] &&
		len(x) == g.N*g.xSize() && len(dy) == g.N*g.ySize()
}

// both computes dX into the input gradient op's output and dW into this
// op's, sample by sample in the groups of convGroup that dW's partial
// sums take: each has the bits that the two ops compute separately.
func (o *conv2dGradWOp) both(g convGeom, x, dy, w []float32) {
	gi := o.gi
	dx := f32(gi.output(gi.xShape...))
	dw := f32(o.output(o.wShape...))
	gi.flip(g, w)
	groups := (g.N + convGroup - 1) / convGroup
	wsz := g.K * g.ckk()
	parts, _ := splitWork(groups, 2*g.flops())
	sw := g.wide()
	cs := kern.Conv3BwdScratch(g.C, g.H, g.W, g.K)
	if sw > 0 {
		ww := g.wideW(sw)
		cs = (2*g.C+g.K)*g.H*ww + kern.Conv3BwdScratch(g.C, g.H, ww, g.K)
	}
	o.cols = grow(o.pool, o.cols, parts*cs)
	if groups > 1 {
		o.partial = grow(o.pool, o.partial, groups*wsz)
	}
	parallelParts(groups, 2*g.flops(), func(part, lo, hi int) {
		scratch := o.cols[part*cs:][:cs]
		for q := lo; q < hi; q++ {
			sum := dw
			if groups > 1 {
				sum = o.partial[q*wsz:][:wsz]
			}
			clear(sum)
			if sw > 0 {
				g.wideGroups(x, dy, scratch, q*convGroup, min((q+1)*convGroup, g.N), sw, func(m0, m1, ww int, xw, dyw, rest []float32) {
					dxw := rest[:g.C*g.H*ww]
					kern.Conv3Bwd(xw, dyw, gi.wT, dxw, sum, rest[g.C*g.H*ww:], g.C, g.H, ww, g.K)
					g.scatterWide(dx, dxw, g.C, m0, m1)
				})
				continue
			}
			for n := q * convGroup; n < min((q+1)*convGroup, g.N); n++ {
				kern.Conv3Bwd(x[n*g.xSize():][:g.xSize()], dy[n*g.ySize():][:g.ySize()], gi.wT,
					dx[n*g.xSize():][:g.xSize()], sum, scratch, g.C, g.H, g.W, g.K)
			}
		}
	})
	o.addPartials(dw, groups, wsz)
	o.done, gi.done = o.fwd.runs, o.fwd.runs
}

func (o *conv2dGradWOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *conv2dGradWOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Conv2DGradW")
}

// ---- Conv2DGradB: db[k] = Σ_{n,p} dY[n,k,p] ----

type conv2dGradBOp struct {
	base
	// bn is the BatchNorm whose bias gradient this is: when its gradient
	// ops took the channels' Σ dY of this dY already (bnSaved.sums), they
	// are the bias gradient, with the bits kern.ChanSum gives.
	bn *bnSaved
}

// betaFromSums counts the bias gradients taken from BatchNorm's sums, and
// reuseBNSums turns that off (for tests).
var (
	betaFromSums atomic.Int64
	reuseBNSums  = true
)

func (o *conv2dGradBOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return tensor.Shape{shapeOf(ds[0])[1]}, nil
}

func (o *conv2dGradBOp) Do(in ...G.Value) (G.Value, error) {
	s := dims(in[0])
	n, k, hw := s[0], s[1], s[2]*s[3]
	out := o.output(k)
	db, dy := f32(out), f32(in[0])
	if b := o.bn; b != nil && reuseBNSums && len(dy) > 0 && b.sumsOf == &dy[0] && len(b.sums[0]) == k {
		for c, v := range b.sums[0] {
			db[c] = float32(v)
		}
		betaFromSums.Add(1)
		return out, nil
	}
	// In float64 (kern.ChanSum), rounded once: a float32 running sum over
	// a channel of a whole batch loses its last bits.
	parallelFor(k, n*k*hw, func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			db[c] = float32(kern.ChanSum(dy, n, k, hw, c))
		}
	})
	return out, nil
}

func (o *conv2dGradBOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *conv2dGradBOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("Conv2DGradB")
}

// ---- MaxPool2D: k×k windows, stride k (floor) ----

type maxPoolOp struct {
	base
	k int
}

func newMaxPool(k int) *maxPoolOp {
	return &maxPoolOp{base: newBase(OpMaxPool2D, map[string]any{"kernel": k, "stride": k}, tt(4), tt(4)), k: k}
}

func (o *maxPoolOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x := shapeOf(ds[0])
	if len(x) != 4 || x[2] < o.k || x[3] < o.k {
		return nil, fmt.Errorf("MaxPool2D(%d): input %v is not [N,C,H,W] with H,W >= %d", o.k, x, o.k)
	}
	return tensor.Shape{x[0], x[1], x[2] / o.k, x[3] / o.k}, nil
}

func (o *maxPoolOp) Do(in ...G.Value) (G.Value, error) {
	s := dims(in[0])
	nc, h, w := s[0]*s[1], s[2], s[3]
	oh, ow, k := h/o.k, w/o.k, o.k
	out := o.output(s[0], s[1], oh, ow)
	x, y := f32(in[0]), f32(out)
	parallelFor(nc, nc*h*w, func(p0, p1 int) {
		for p := p0; p < p1; p++ {
			plane, dst := x[p*h*w:][:h*w], y[p*oh*ow:][:oh*ow]
			for oy := 0; oy < oh; oy++ {
				d := dst[oy*ow:][:ow]
				if k == 2 {
					r0, r1 := plane[2*oy*w:][:2*ow], plane[(2*oy+1)*w:][:2*ow]
					for ox := range d {
						d[ox] = max(r0[2*ox], r0[2*ox+1], r1[2*ox], r1[2*ox+1])
					}
					continue
				}
				for ox := range d {
					m := plane[oy*k*w+ox*k]
					for i := 0; i < k; i++ {
						for _, v := range plane[(oy*k+i)*w+ox*k:][:k] {
							m = max(m, v)
						}
					}
					d[ox] = m
				}
			}
		}
	})
	return out, nil
}

func (o *maxPoolOp) DiffWRT(int) []bool { return []bool{true} }

func (o *maxPoolOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(&maxPoolGradOp{base: newBase(OpMaxPool2DGrad, o.attrs, tt(4), tt(4), tt(4), tt(4)), k: o.k}, in[0], out, grad)
	return G.Nodes{dx}, err
}

// maxPoolGradOp routes each window's gradient to the first position that
// holds the window's maximum (as PyTorch does).
type maxPoolGradOp struct {
	base
	k int
}

func (o *maxPoolGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	return shapeOf(ds[0]).Clone(), nil
}

func (o *maxPoolGradOp) Do(in ...G.Value) (G.Value, error) {
	s := dims(in[0])
	nc, h, w := s[0]*s[1], s[2], s[3]
	oh, ow, k := h/o.k, w/o.k, o.k
	out := o.output(s...)
	x, y, dy, dx := f32(in[0]), f32(in[1]), f32(in[2]), f32(out)
	parallelFor(nc, 2*nc*h*w, func(p0, p1 int) {
		if k == 2 {
			kern.MaxPool2Grad(dx[p0*h*w:p1*h*w], x[p0*h*w:p1*h*w], y[p0*oh*ow:p1*oh*ow], dy[p0*oh*ow:p1*oh*ow], p1-p0, h, w)
			return
		}
		clear(dx[p0*h*w : p1*h*w])
		for p := p0; p < p1; p++ {
			plane, dplane := x[p*h*w:][:h*w], dx[p*h*w:][:h*w]
			yp, dyp := y[p*oh*ow:][:oh*ow], dy[p*oh*ow:][:oh*ow]
			for oy := 0; oy < oh; oy++ {
				for ox := 0; ox < ow; ox++ {
					m := yp[oy*ow+ox]
				search:
					for i := 0; i < k; i++ {
						base := (oy*k+i)*w + ox*k
						for j, v := range plane[base:][:k] {
							if v == m {
								dplane[base+j] = dyp[oy*ow+ox]
								break search
							}
						}
					}
				}
			}
		}
	})
	return out, nil
}

func (o *maxPoolGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *maxPoolGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("MaxPool2DGrad")
}
