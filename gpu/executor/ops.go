package executor

import (
	"fmt"
	"math"
	"slices"

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
	keep    []int           // the sizes of memory of its own that outlives a run (kept)
	kept    []device.Buffer // allocated by the program (which frees them)
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
	n, m   int
	kernel string // sum_rows, or sum_rows_f64 over float64s
	tmp    [2]func() device.Buffer
}

// newRowSum reserves the scratch of a column sum of n rows of m values.
func newRowSum(alloc func(int) func() device.Buffer, n, m int) rowSum {
	return newRowSumOf(alloc, n, m, "sum_rows", 1)
}

// newRowSumF64 is newRowSum over float64s (x and y hold 2·n·m and 2·m
// float32s).
func newRowSumF64(alloc func(int) func() device.Buffer, n, m int) rowSum {
	return newRowSumOf(alloc, n, m, "sum_rows_f64", 2)
}

func newRowSumOf(alloc func(int) func() device.Buffer, n, m int, kernel string, width int) rowSum {
	r := rowSum{n: n, m: m, kernel: kernel}
	for lvl, rows := 0, n; rows > rowChunk && lvl < 2; lvl++ {
		rows = (rows + rowChunk - 1) / rowChunk
		r.tmp[lvl] = alloc(width * rows * m)
	}
	return r
}

func (r rowSum) run(dev device.Device, x, y device.Buffer) error {
	src, rows := x, r.n
	for lvl := 0; rows > rowChunk; lvl++ {
		chunks := (rows + rowChunk - 1) / rowChunk
		dst := r.tmp[lvl%2]()
		if err := dev.Launch(r.kernel, chunks*r.m, src, dst, rows, r.m, rowChunk); err != nil {
			return err
		}
		src, rows = dst, chunks
	}
	return dev.Launch(r.kernel, r.m, src, y, rows, r.m, max(rows, 1))
}

// chanStats are the per-channel statistics of a batch norm's input
// [N,C] or [N,C,H,W] (P = H·W, or 1): the sum and the sum of squared
// deviations of each channel's M = N·P values in float64, through
// partial sums (bn_sum_parts, parts per channel, rowChunk values each) and
// a tree of float64 column sums; then mean and 1/sqrt(var+eps) (bn_stats).
// With a program's synchronisation (sync.s set) the sums are the global
// batch's: each is summed across the ranks as it is made (bnSync.sum),
// the value count with the first.
type chanStats struct {
	N, C, P, M, parts int
	eps               float32
	part, sum, sq     func() device.Buffer // float64s: [parts,C], [C], [C]
	stats             func() device.Buffer // float64s: [C][mean, invstd]
	tree              rowSum
	sync              *bnSync
}

// chanShape reads a batch norm's input shape and eps; newChanStats also
// reserves the scratch of the statistics.
func chanShape(c *lowerCtx, x []int) (chanStats, error) {
	if len(x) != 2 && len(x) != 4 {
		return chanStats{}, fmt.Errorf("executor: %s of an input of shape %v (want [N,C] or [N,C,H,W])", c.kind, x)
	}
	s := chanStats{N: x[0], C: x[1], P: 1, eps: float32(c.floatAttr("eps")), sync: c.sync}
	if len(x) == 4 {
		s.P = x[2] * x[3]
	}
	s.M = s.N * s.P
	s.parts = max((s.M+rowChunk-1)/rowChunk, 1)
	return s, nil
}

func newChanStats(c *lowerCtx, x []int, partsOf int) (chanStats, error) {
	s, err := chanShape(c, x)
	if err != nil {
		return s, err
	}
	// part also holds the partial sums of partsOf values per channel (the
	// gradients' two sums).
	s.part = c.alloc(2 * s.parts * s.C * max(partsOf, 1))
	s.sum, s.sq, s.stats = c.alloc(2*s.C), c.alloc(2*s.C), c.alloc(4*s.C)
	s.tree = newRowSumF64(c.alloc, s.parts, s.C)
	return s, nil
}

// synced reports whether the statistics are the global batch's.
func (s chanStats) synced() bool { return s.sync != nil && s.sync.s != nil }

// run leaves the channels' sums, sums of squared deviations and stats,
// and returns the count of values they are over: M, or the global batch's.
func (s chanStats) run(dev device.Device, x device.Buffer) (int, error) {
	m := s.M
	for i, dst := range []device.Buffer{s.sum(), s.sq()} {
		if err := dev.Launch("bn_sum_parts", s.C*s.parts, x, s.sum(), s.part(), s.N, s.C, s.P, s.parts, int32(i), m); err != nil {
			return 0, err
		}
		if err := s.tree.run(dev, s.part(), dst); err != nil {
			return 0, err
		}
		if !s.synced() {
			continue
		}
		if i == 1 {
			if _, err := s.sync.sum(dev, dst, s.C, 1); err != nil {
				return 0, fmt.Errorf("executor: BatchNorm: synchronising the channels' squared deviations: %w", err)
			}
			continue
		}
		// The sums, and the value count with them.
		total, err := s.sync.sum(dev, dst, s.C, 1, float64(s.M))
		if err != nil {
			return 0, fmt.Errorf("executor: BatchNorm: synchronising the channels' sums: %w", err)
		}
		if !(total[0] >= 2 && total[0] < 1<<53) {
			return 0, fmt.Errorf("executor: BatchNorm: the global batch has %v values per channel; training needs at least 2", total[0])
		}
		m = int(total[0])
	}
	return m, dev.Launch("bn_stats", s.C, s.sum(), s.sq(), s.stats(), s.C, m, s.eps)
}

// bnSync is a program's BatchNorm synchronisation, which its BatchNorm ops
// read as they run: the ranks' sum (graph.BatchSync) and this rank's share
// of the global batch (Program.SyncBatchNorm); nil s, each batch's own
// statistics. words and vals are sum's host buffers, kept between calls
// (a program's ops run one at a time).
type bnSync struct {
	s     graph.BatchSync
	share float64
	words []float32
	vals  []float64
	// runs counts the program's runs (exec); links are its training
	// BatchNorms' statistics, by the node of their input X, for the
	// gradient ops of the same X (see bnLink).
	runs  uint64
	links map[int]*bnLink
}

// bnLink is a training BatchNorm's statistics, kept for the gradient ops
// of its X in the same program: they read them instead of taking them
// again (two column sums, the ranks' synchronisation included, and
// bn_stats: 9 launches each for ResNet-20's first BatchNorms), the same
// values from the same X. run is the program run that took them; a
// gradient op that finds another (its forward did not run in this run)
// takes its own.
type bnLink struct {
	N, C, P int
	eps     float32
	stats   func() device.Buffer // [C][mean, invstd], float64s, in the op's kept memory
	m       int                  // the count of values they are over
	run     uint64
	// gsum is Σ dY and Σ dY·x̂ per channel ([2C] float64s, kept memory),
	// of node gsumOf's dY in run gsumRun (see bnGradSums).
	gsum    func() device.Buffer
	gsumOf  int
	gsumRun uint64
}

// linkBatchNorms lets a program's BatchNorm gradients read the forward's
// statistics (a test turns it off to compare).
var linkBatchNorms = true

// link records l as the statistics of node x's BatchNorm.
func (y *bnSync) link(x int, l *bnLink) {
	if y.links == nil {
		y.links = map[int]*bnLink{}
	}
	y.links[x] = l
}

// linked is the statistics of node x's BatchNorm for a gradient op of
// statistics s, or nil: none in this program, or of other shapes.
func (y *bnSync) linked(x int, s chanStats) *bnLink {
	if y == nil || x < 0 {
		return nil
	}
	l := y.links[x]
	if l == nil || l.N != s.N || l.C != s.C || l.P != s.P || l.eps != s.eps {
		return nil
	}
	return l
}

// sum replaces the first n float64s of b with their sums over the ranks,
// each scaled by scale first; the values of tail are summed in the same
// call, and their sums returned (valid until the next call). Every rank
// calls it in the same order.
func (y *bnSync) sum(dev device.Device, b device.Buffer, n int, scale float64, tail ...float64) ([]float64, error) {
	y.words = slices.Grow(y.words[:0], 2*n)[:2*n]
	y.vals = slices.Grow(y.vals[:0], n+len(tail))[:n+len(tail)]
	if err := dev.Read(y.words, b); err != nil {
		return nil, err
	}
	for i := range n {
		y.vals[i] = scale * f64At(y.words, i)
	}
	copy(y.vals[n:], tail)
	if err := y.s.Sum(y.vals); err != nil {
		return nil, err
	}
	for i := range n {
		setF64At(y.words, i, y.vals[i])
	}
	if err := dev.Write(b, y.words); err != nil {
		return nil, err
	}
	return y.vals[n:], nil
}

// f64At is float64 k of words read from device memory: two float32 words,
// low first (little-endian, as every CUDA device and the host device
// are); setF64At writes it.
func f64At(words []float32, k int) float64 {
	return math.Float64frombits(uint64(math.Float32bits(words[2*k])) | uint64(math.Float32bits(words[2*k+1]))<<32)
}

func setF64At(words []float32, k int, v float64) {
	bits := math.Float64bits(v)
	words[2*k], words[2*k+1] = math.Float32frombits(uint32(bits)), math.Float32frombits(uint32(bits>>32))
}

// bnGradSums lowers the sums of a batch norm's gradients. run returns the
// count of values the statistics are over (see chanStats.run), the
// statistics, and gsum, Σ dy and Σ dy·x̂ of each channel (float64s, [2C]).
// The statistics are the forward's of the same X when it ran in this run
// (bnLink), else taken from x into s's scratch. Linked, and not
// synchronised, the two gradient ops of an X share the sums of the same
// dY too: the first to run takes them into the link's memory, the other
// reads them there. (Synchronised, the input gradient sums them across
// the ranks in place, and the parameter gradient wants this rank's own.)
// dyIn is the op's input that is dY.
func bnGradSums(c *lowerCtx, x []int, dyIn int) (s chanStats, run func(dev device.Device, x, dy device.Buffer) (m int, stats, gsum device.Buffer, err error), err error) {
	s, err = newChanStats(c, x, 2)
	if err != nil {
		return s, nil, err
	}
	own := c.alloc(4 * s.C)
	tree := newRowSumF64(c.alloc, s.parts, 2*s.C)
	link, sync, dyNode := c.sync.linked(c.node(0), s), c.sync, c.node(dyIn)
	run = func(dev device.Device, x, dy device.Buffer) (int, device.Buffer, device.Buffer, error) {
		m, stats := 0, s.stats()
		fresh := link != nil && link.run == sync.runs
		if fresh {
			m, stats = link.m, link.stats()
		} else {
			var err error
			if m, err = s.run(dev, x); err != nil {
				return 0, nil, nil, err
			}
		}
		gsum := own()
		shared := fresh && dyNode >= 0 && !s.synced()
		if shared {
			gsum = link.gsum()
			if link.gsumRun == sync.runs && link.gsumOf == dyNode {
				return m, stats, gsum, nil
			}
		}
		if err := dev.Launch("bn_grad_parts", s.C*s.parts, x, dy, stats, s.part(), s.N, s.C, s.P, s.parts); err != nil {
			return 0, nil, nil, err
		}
		if err := tree.run(dev, s.part(), gsum); err != nil {
			return 0, nil, nil, err
		}
		if shared {
			link.gsumRun, link.gsumOf = sync.runs, dyNode
		}
		return m, stats, gsum, nil
	}
	return s, run, nil
}

// lnStats are the row statistics of a layer norm's input X [..., D]:
// rows = size/D rows of D values, their mean and 1/sqrt(var+eps) in
// float64 (ln_stats, a thread per row) into stats, [rows][mean, invstd].
type lnStats struct {
	rows, D int
	eps     float32
	stats   func() device.Buffer
}

// newLNStats reads X's shape and eps, checks that each vector of vecs
// (weight, bias) has D values, and reserves the statistics' scratch.
func newLNStats(c *lowerCtx, x []int, vecs ...[]int) (lnStats, error) {
	if len(x) < 2 || x[len(x)-1] < 1 {
		return lnStats{}, fmt.Errorf("executor: %s of an input of shape %v (want [..., D], rows of D values)", c.kind, x)
	}
	l := lnStats{D: x[len(x)-1], eps: float32(c.floatAttr("eps"))}
	l.rows = size(x) / l.D
	for _, v := range vecs {
		if len(v) != 1 || v[0] != l.D {
			return lnStats{}, fmt.Errorf("executor: %s of X %v with a vector of shape %v (want [%d])", c.kind, x, v, l.D)
		}
	}
	l.stats = c.alloc(4 * l.rows)
	return l, nil
}

func (l lnStats) run(dev device.Device, x device.Buffer) error {
	return dev.Launch("ln_stats", l.rows, x, l.stats(), l.rows, l.D, l.eps)
}

// scalarOps and unaryFns number the "op" attribute of an ElemScalar and
// the "fn" of an ElemUnary as elem_scalar and elem_unary take them (see
// csrc/kernels.cu).
var (
	scalarOps = map[string]int32{"+": 0, "-": 1, "⊙": 2, "÷": 3, "<": 4, ">": 5, "<=": 6, ">=": 7}
	unaryFns  = map[string]int32{"neg": 0, "exp": 1, "ln": 2, "sqrt": 3, "square": 4, "tanh": 5, "sigmoid": 6,
		"abs": 7, "inv": 8, "invSqrt": 9, "cube": 10}
)

// axisSplit views a row-major shape as [outer, n, inner] around axis:
// outer = Π s[:axis], n = s[axis], inner = Π s[axis+1:].
func axisSplit(kind graph.Kind, s []int, axis int) (outer, n, inner int, err error) {
	if axis < 0 || axis >= len(s) {
		return 0, 0, 0, fmt.Errorf("executor: %s along axis %d of shape %v", kind, axis, s)
	}
	return size(s[:axis]), s[axis], size(s[axis+1:]), nil
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
	o, err := newOp(kind, attrs, in, out, prec, nil, nil)
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
// takes), by the lowering registered for its kind; a BatchNorm op reads
// sync (nil: its batch's own statistics) as it runs.
func newOp(kind graph.Kind, attrs map[string]any, in [][]int, out []int, prec device.Precision, sync *bnSync, nodes []int) (*Op, error) {
	if _, ok := graph.LookupOp(kind); !ok {
		return nil, fmt.Errorf("executor: %q is not an op of graph/'s set (%v)", kind, graph.OpKinds())
	}
	lower, ok := lowerings[kind]
	if !ok {
		return nil, fmt.Errorf("executor: %q has no device lowering", kind)
	}
	o := &Op{Kind: kind, in: in, out: out}
	c := &lowerCtx{kind: kind, attrs: attrs, in: in, prec: prec, o: o, sync: sync, nodes: nodes}
	if err := lower(c, o, in, out); err != nil {
		return nil, err
	}
	return o, nil
}

// lowering makes op o of in's shapes and out's run on a device: it sets
// o.run and reserves o's scratch through c.alloc.
type lowering func(c *lowerCtx, o *Op, in [][]int, out []int) error

// lowerings holds one lowering per op kind of graph/'s registry; a test
// fails when a registered op has none.
var lowerings = map[graph.Kind]lowering{}

// lower registers kind's lowering, once.
func lower(kind graph.Kind, f lowering) {
	if _, dup := lowerings[kind]; dup {
		panic("executor: two lowerings of " + string(kind)) // a programming error, at init
	}
	lowerings[kind] = f
}

// lowerCtx is what a lowering reads: the op's attributes, shapes and the
// precision of its matrix products.
type lowerCtx struct {
	kind  graph.Kind
	attrs map[string]any
	in    [][]int
	prec  device.Precision
	o     *Op
	sync  *bnSync // the program's BatchNorm synchronisation (nil: an op of its own)
	nodes []int   // the program's nodes of the inputs (nil: an op of its own)
}

// node is the program's node of input i, or -1 (an op of its own).
func (c *lowerCtx) node(i int) int {
	if i < len(c.nodes) {
		return c.nodes[i]
	}
	return -1
}

func (c *lowerCtx) intAttr(k string) int       { return graph.Attrs(c.attrs).Int(k) }
func (c *lowerCtx) boolAttr(k string) bool     { return graph.Attrs(c.attrs).Bool(k) }
func (c *lowerCtx) stringAttr(k string) string { return graph.Attrs(c.attrs).String(k) }
func (c *lowerCtx) floatAttr(k string) float64 { return graph.Attrs(c.attrs).Float(k) }

// alloc reserves scratch of n values: slot k of o.scratch, which is the
// op's own (NewOp) or a workspace shared by a program's ops.
func (c *lowerCtx) alloc(n int) func() device.Buffer {
	o := c.o
	k := len(o.need)
	o.need = append(o.need, n)
	return func() device.Buffer { return o.scratch[k] }
}

// keepAlloc reserves n values of the op's own that keep their contents
// from one op to the next (the program allocates them; an op of its own
// has none, so only a program's ops call it).
func (c *lowerCtx) keepAlloc(n int) func() device.Buffer {
	o := c.o
	k := len(o.keep)
	o.keep = append(o.keep, n)
	return func() device.Buffer { return o.kept[k] }
}

func (c *lowerCtx) need(n int) error {
	if len(c.in) != n {
		return fmt.Errorf("executor: %s takes %d inputs, got shapes %v", c.kind, n, c.in)
	}
	return nil
}

// elementwise runs kernel over the output's values with the inputs'
// buffers, the output's and its size as arguments.
func (c *lowerCtx) elementwise(kernel string, inputs int) error {
	if err := c.need(inputs); err != nil {
		return err
	}
	c.o.run = func(dev device.Device, in []Tensor, out Tensor) error {
		args := make([]any, 0, inputs+2)
		for _, t := range in {
			args = append(args, t.Buf)
		}
		n := out.Size()
		return dev.Launch(kernel, n, append(args, out.Buf, n)...)
	}
	return nil
}

func init() {
	lower(graph.OpLinear, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(3); err != nil {
			return err
		}
		n, k, m := in[0][0], in[0][1], in[1][0]
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("bias_rows", n*m, out.Buf, in[2].Buf, n, m); err != nil {
				return err
			}
			return dev.Gemm(c.prec, false, true, n, m, k, 1, in[0].Buf, k, in[1].Buf, k, 1, out.Buf, m)
		}
		return nil
	})
	lower(graph.OpMatMul, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(2); err != nil {
			return err
		}
		ta, tb := c.boolAttr("trans_a"), c.boolAttr("trans_b")
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
			return dev.Gemm(c.prec, ta, tb, m, n, k, 1, in[0].Buf, lda, in[1].Buf, ldb, 0, out.Buf, n)
		}
		return nil
	})
	lower(graph.OpSumRows, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		sum := newRowSum(c.alloc, in[0][0], in[0][1])
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return sum.run(dev, in[0].Buf, out.Buf)
		}
		return nil
	})
	lower(graph.OpConv2D, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, W[, b]
		noBias, inputs := c.boolAttr("no_bias"), 3
		if noBias {
			inputs = 2
		}
		if err := c.need(inputs); err != nil {
			return err
		}
		g, err := newConvGeom(in[0], in[1], c.intAttr("stride"), c.intAttr("pad"))
		if err != nil {
			return err
		}
		cols, tmp := c.alloc(g.ckk()*g.ncols()), c.alloc(g.K*g.ncols())
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("im2col", g.C*g.ncols(), append([]any{in[0].Buf, cols()}, g.args()...)...); err != nil {
				return err
			}
			if err := dev.Gemm(c.prec, false, false, g.K, g.ncols(), g.ckk(), 1, in[1].Buf, g.ckk(), cols(), g.ncols(), 0, tmp(), g.ncols()); err != nil {
				return err
			}
			if noBias {
				return dev.Launch("km_to_nchw", out.Size(), tmp(), out.Buf, g.N, g.K, g.OH*g.OW)
			}
			return dev.Launch("km_to_nchw_bias", out.Size(), tmp(), out.Buf, in[2].Buf, g.N, g.K, g.OH*g.OW)
		}
		return nil
	})
	lower(graph.OpConv2DGradInput, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // dY, W -> dX of shape out
		if err := c.need(2); err != nil {
			return err
		}
		g, err := newConvGeom(out, in[1], c.intAttr("stride"), c.intAttr("pad"))
		if err != nil {
			return err
		}
		dyKM, dcols := c.alloc(g.K*g.ncols()), c.alloc(g.ckk()*g.ncols())
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("nchw_to_km", g.K*g.ncols(), in[0].Buf, dyKM(), g.N, g.K, g.OH*g.OW); err != nil {
				return err
			}
			if err := dev.Gemm(c.prec, true, false, g.ckk(), g.ncols(), g.K, 1, in[1].Buf, g.ckk(), dyKM(), g.ncols(), 0, dcols(), g.ncols()); err != nil {
				return err
			}
			return dev.Launch("col2im", out.Size(), append([]any{dcols(), out.Buf}, g.args()...)...)
		}
		return nil
	})
	lower(graph.OpConv2DGradW, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, dY -> dW of shape out
		if err := c.need(2); err != nil {
			return err
		}
		g, err := newConvGeom(in[0], out, c.intAttr("stride"), c.intAttr("pad"))
		if err != nil {
			return err
		}
		cols, dyKM := c.alloc(g.ckk()*g.ncols()), c.alloc(g.K*g.ncols())
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("im2col", g.C*g.ncols(), append([]any{in[0].Buf, cols()}, g.args()...)...); err != nil {
				return err
			}
			if err := dev.Launch("nchw_to_km", g.K*g.ncols(), in[1].Buf, dyKM(), g.N, g.K, g.OH*g.OW); err != nil {
				return err
			}
			return dev.Gemm(c.prec, false, true, g.K, g.ckk(), g.ncols(), 1, dyKM(), g.ncols(), cols(), g.ncols(), 0, out.Buf, g.ckk())
		}
		return nil
	})
	lower(graph.OpConv2DGradB, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		s := in[0]
		n, k, p := s[0], s[1], s[2]*s[3]
		parts := max((n*p+rowChunk-1)/rowChunk, 1)
		part := c.alloc(parts * k)
		sum := newRowSum(c.alloc, parts, k)
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("conv_grad_b_parts", k*parts, in[0].Buf, part(), n, k, p, parts); err != nil {
				return err
			}
			return sum.run(dev, part(), out.Buf)
		}
		return nil
	})
	lower(graph.OpMaxPool2D, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		s, k := in[0], c.intAttr("kernel")
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("maxpool", out.Size(), in[0].Buf, out.Buf, s[0]*s[1], s[2], s[3], k)
		}
		return nil
	})
	lower(graph.OpMaxPool2DGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, Y, dY -> dX
		if err := c.need(3); err != nil {
			return err
		}
		s, k := in[0], c.intAttr("kernel")
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("maxpool_grad", out.Size(), in[0].Buf, in[1].Buf, in[2].Buf, out.Buf, s[0]*s[1], s[2], s[3], k)
		}
		return nil
	})
	lower(graph.OpGlobalAvgPool, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // [N,C,H,W] -> [N,C]
		if err := c.need(1); err != nil {
			return err
		}
		s := in[0]
		if len(s) != 4 {
			return fmt.Errorf("executor: %s of an input of shape %v (want [N,C,H,W])", c.kind, s)
		}
		planes, p := s[0]*s[1], s[2]*s[3]
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("global_avg_pool", planes, in[0].Buf, out.Buf, planes, p)
		}
		return nil
	})
	lower(graph.OpAvgPool2D, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // [N,C,H,W] -> [N,C,OH,OW]
		if err := c.need(1); err != nil {
			return err
		}
		k, st := c.intAttr("kernel"), c.intAttr("stride")
		s := in[0]
		if len(s) != 4 || k < 1 || st < 1 || s[2] < k || s[3] < k {
			return fmt.Errorf("executor: %s by %d, stride %d, of an input of shape %v (want [N,C,H,W], H and W at least the kernel)", c.kind, k, st, s)
		}
		oh, ow := (s[2]-k)/st+1, (s[3]-k)/st+1
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("avg_pool", s[0]*s[1]*oh*ow, in[0].Buf, out.Buf, s[0]*s[1], s[2], s[3], oh, ow, k, st)
		}
		return nil
	})
	lower(graph.OpAvgPool2DGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // dY -> dX [N,C,h,w]
		if err := c.need(1); err != nil {
			return err
		}
		k, st, h, w := c.intAttr("kernel"), c.intAttr("stride"), c.intAttr("h"), c.intAttr("w")
		s := in[0]
		if len(s) != 4 || k < 1 || st < 1 || h < k || w < k || s[2] != (h-k)/st+1 || s[3] != (w-k)/st+1 {
			return fmt.Errorf("executor: %s: dY %v does not pool a %dx%d plane by %d, stride %d", c.kind, s, h, w, k, st)
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("avg_pool_grad", s[0]*s[1]*h*w, in[0].Buf, out.Buf, s[0]*s[1], h, w, s[2], s[3], k, st)
		}
		return nil
	})
	lower(graph.OpGlobalAvgPoolGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // dY [N,C] -> dX [N,C,h,w]
		if err := c.need(1); err != nil {
			return err
		}
		planes, p := size(in[0]), c.intAttr("h")*c.intAttr("w")
		if p < 1 {
			return fmt.Errorf("executor: %s needs attributes h and w ≥ 1, got %v", c.kind, c.attrs)
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("global_avg_pool_grad", planes*p, in[0].Buf, out.Buf, planes, p)
		}
		return nil
	})
	// BatchNorm: X, gamma, beta, running mean, running var, batches
	// tracked -> Y. Training normalises by the batch's statistics and then
	// updates the last three inputs in place (bn_running, once a run, after
	// the statistics), unless its attribute no_update leaves them alone (a
	// pipeline stage's forward pass, which its training program repeats);
	// evaluation normalises by the running ones.
	lower(graph.OpBatchNorm, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(6); err != nil {
			return err
		}
		s, err := chanShape(c, in[0])
		if err != nil {
			return err
		}
		if !c.boolAttr("train") {
			o.run = func(dev device.Device, in []Tensor, out Tensor) error {
				return dev.Launch("bn_eval", out.Size(), in[0].Buf, in[1].Buf, in[2].Buf, in[3].Buf, in[4].Buf, out.Buf, s.N, s.C, s.P, s.eps)
			}
			return nil
		}
		if s.M < 2 { // the running variance is unbiased: PyTorch refuses too
			return fmt.Errorf("executor: %s in training needs more than one value per channel, got shape %v", c.kind, in[0])
		}
		if s, err = newChanStats(c, in[0], 1); err != nil {
			return err
		}
		momentum, noUpdate := float32(c.floatAttr("momentum")), c.boolAttr("no_update")
		// In a program the statistics go to memory of the op's own, kept
		// for the gradient ops of the same X (bnLink).
		var link *bnLink
		if linkBatchNorms && c.sync != nil && c.node(0) >= 0 {
			link = &bnLink{N: s.N, C: s.C, P: s.P, eps: s.eps, stats: c.keepAlloc(4 * s.C), gsum: c.keepAlloc(4 * s.C)}
			s.stats = link.stats
			c.sync.link(c.node(0), link)
		}
		sync := c.sync
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			m, err := s.run(dev, in[0].Buf)
			if err != nil {
				return err
			}
			if link != nil {
				link.m, link.run = m, sync.runs
			}
			if err := dev.Launch("bn_apply", out.Size(), in[0].Buf, s.stats(), in[1].Buf, in[2].Buf, out.Buf, s.N, s.C, s.P); err != nil {
				return err
			}
			if noUpdate {
				return nil
			}
			return dev.Launch("bn_running", s.C, s.sum(), s.sq(), in[3].Buf, in[4].Buf, in[5].Buf, s.C, m, momentum)
		}
		return nil
	})
	lower(graph.OpBatchNormGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, gamma, dY -> dX
		if err := c.need(3); err != nil {
			return err
		}
		s, sums, err := bnGradSums(c, in[0], 2)
		if err != nil {
			return err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			m, stats, gsum, err := sums(dev, in[0].Buf, in[2].Buf)
			if err != nil {
				return err
			}
			// Synchronised, the sums are of the ranks' dY weighted by
			// their shares (each dY is of its rank's own mean loss):
			// dX = gamma·invstd·(dY − (G1 + x̂·G2)/(share·M)), as
			// graph/'s syncGrad.
			div := float64(m)
			if s.synced() {
				if _, err := s.sync.sum(dev, gsum, 2*s.C, s.sync.share); err != nil {
					return fmt.Errorf("executor: %s: synchronising the gradient's sums: %w", c.kind, err)
				}
				div *= s.sync.share
			}
			return dev.Launch("bn_grad_input", out.Size(), in[0].Buf, in[1].Buf, in[2].Buf, stats, gsum, out.Buf, s.N, s.C, s.P, div)
		}
		return nil
	})
	lower(graph.OpBatchNormGradGamma, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, dY -> dgamma
		if err := c.need(2); err != nil {
			return err
		}
		s, sums, err := bnGradSums(c, in[0], 1)
		if err != nil {
			return err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			// x̂ by the global statistics when synchronised; the sum is
			// this rank's (the gradients' reduction adds the ranks').
			_, _, gsum, err := sums(dev, in[0].Buf, in[1].Buf)
			if err != nil {
				return err
			}
			return dev.Launch("bn_grad_gamma", s.C, gsum, out.Buf, s.C)
		}
		return nil
	})
	// LayerNorm (graph/layernorm.go) over the last dimension D of X: rows
	// of D values, each row's statistics a thread's (ln_stats, float64,
	// into 2 float64s per row), then one thread per value. The gradients
	// recompute the statistics from X.
	lower(graph.OpLayerNorm, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, weight, bias -> Y
		if err := c.need(3); err != nil {
			return err
		}
		l, err := newLNStats(c, in[0], in[1], in[2])
		if err != nil {
			return err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := l.run(dev, in[0].Buf); err != nil {
				return err
			}
			return dev.Launch("ln_apply", l.rows*l.D, in[0].Buf, l.stats(), in[1].Buf, in[2].Buf, out.Buf, l.rows, l.D)
		}
		return nil
	})
	lower(graph.OpLayerNormGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, weight, dY -> dX
		if err := c.need(3); err != nil {
			return err
		}
		l, err := newLNStats(c, in[0], in[1])
		if err != nil {
			return err
		}
		if !slices.Equal(in[2], in[0]) {
			return fmt.Errorf("executor: %s of X %v and dY %v", c.kind, in[0], in[2])
		}
		gsum := c.alloc(4 * l.rows) // float64s: [rows][Σ g, Σ g·x̂]
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := l.run(dev, in[0].Buf); err != nil {
				return err
			}
			if err := dev.Launch("ln_grad_rows", l.rows, in[0].Buf, in[1].Buf, in[2].Buf, l.stats(), gsum(), l.rows, l.D); err != nil {
				return err
			}
			return dev.Launch("ln_grad_input", l.rows*l.D, in[0].Buf, in[1].Buf, in[2].Buf, l.stats(), gsum(), out.Buf, l.rows, l.D)
		}
		return nil
	})
	// LayerNormGradW: dweight[j] = Σ_rows dY·x̂, in float64: chunks of
	// rowChunk rows per thread (ln_grad_w_parts), a float64 tree of the
	// chunks where there are several, and a rounding.
	lower(graph.OpLayerNormGradW, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // X, dY -> dweight [D]
		if err := c.need(2); err != nil {
			return err
		}
		l, err := newLNStats(c, in[0])
		if err != nil {
			return err
		}
		if !slices.Equal(in[1], in[0]) {
			return fmt.Errorf("executor: %s of X %v and dY %v", c.kind, in[0], in[1])
		}
		chunks := max((l.rows+rowChunk-1)/rowChunk, 1)
		part := c.alloc(2 * chunks * l.D) // float64s: [chunks, D]
		var sums func() device.Buffer
		var tree rowSum
		if chunks > 1 {
			sums, tree = c.alloc(2*l.D), newRowSumF64(c.alloc, chunks, l.D)
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := l.run(dev, in[0].Buf); err != nil {
				return err
			}
			if err := dev.Launch("ln_grad_w_parts", chunks*l.D, in[0].Buf, in[1].Buf, l.stats(), part(), l.rows, l.D, rowChunk); err != nil {
				return err
			}
			total := part()
			if chunks > 1 {
				if err := tree.run(dev, part(), sums()); err != nil {
					return err
				}
				total = sums()
			}
			return dev.Launch("f64_to_f32", l.D, total, out.Buf, l.D)
		}
		return nil
	})
	lower(graph.OpReLU, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("relu", 1)
	})
	lower(graph.OpTanh, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("tanh_fwd", 1)
	})
	lower(graph.OpSigmoid, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("sigmoid_fwd", 1)
	})
	lower(graph.OpReLUGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("relu_grad", 2)
	})
	lower(graph.OpTanhGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("tanh_grad", 2)
	})
	lower(graph.OpSigmoidGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("sigmoid_grad", 2)
	})
	// GELU and SiLU (graph/smooth.go); their gradients take X and dY.
	lower(graph.OpGELU, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("gelu_fwd", 1)
	})
	lower(graph.OpGELUGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("gelu_grad", 2)
	})
	lower(graph.OpSiLU, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("silu_fwd", 1)
	})
	lower(graph.OpSiLUGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("silu_grad", 2)
	})
	lower(graph.OpMul, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("mul", 2)
	})
	lower(graph.OpReshape, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		// Executors alias the output to the input; a copy when they do not.
		if err := c.need(1); err != nil {
			return err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if in[0].Buf == out.Buf {
				return nil
			}
			return dev.Launch("copy_f32", out.Size(), in[0].Buf, out.Buf, out.Size())
		}
		return nil
	})
	lower(graph.OpSoftmaxCE, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // logits, labels -> mean loss
		if err := c.need(2); err != nil {
			return err
		}
		n, k := in[0][0], in[0][1]
		eps := float32(c.floatAttr("smoothing")) // label smoothing; 0 when absent
		rows := c.alloc(2 * n)                   // float64 per row
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("softmax_ce_rows", n, in[0].Buf, in[1].Buf, rows(), n, k, eps); err != nil {
				return err
			}
			return dev.Launch("mean_f64", 1, rows(), out.Buf, n)
		}
		return nil
	})
	lower(graph.OpSoftmaxCEGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error { // logits, labels, g -> dLogits
		if err := c.need(3); err != nil {
			return err
		}
		n, k := in[0][0], in[0][1]
		eps := float32(c.floatAttr("smoothing"))
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("softmax_ce_grad", n, in[0].Buf, in[1].Buf, in[2].Buf, out.Buf, n, k, eps)
		}
		return nil
	})
	lower(graph.OpDot, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(2); err != nil {
			return err
		}
		n := size(in[0])
		parts := max(min(n, dotParts), 1)
		partial := c.alloc(2 * parts) // float64s
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("dot_parts", parts, in[0].Buf, in[1].Buf, partial(), n, parts); err != nil {
				return err
			}
			return dev.Launch("sum_f64_to_f32", 1, partial(), out.Buf, parts)
		}
		return nil
	})
	lower(graph.OpAdd, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("add", 2)
	})
	lower(graph.OpDotGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("scale_by", 2)
	})

	// Gorgonia's own operators (graph/gorgonia.go).
	lower(graph.OpSub, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("sub", 2)
	})
	lower(graph.OpDiv, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		return c.elementwise("div_f32", 2)
	})
	// ElemScalar: x op s, or s op x with scalar_first (inputs s, x); the
	// scalar is a one-value buffer, read by the kernel.
	lower(graph.OpElemScalar, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(2); err != nil {
			return err
		}
		op, ok := scalarOps[c.stringAttr("op")]
		if !ok {
			return fmt.Errorf("executor: %s of op %q (want one of + - ⊙ ÷ < > <= >=)", c.kind, c.attrs["op"])
		}
		first := c.boolAttr("scalar_first")
		x, sc := 0, 1
		if first {
			x, sc = 1, 0
		}
		if size(in[sc]) != 1 {
			return fmt.Errorf("executor: %s's scalar input has shape %v", c.kind, in[sc])
		}
		var flag int32
		if first {
			flag = 1
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			n := out.Size()
			return dev.Launch("elem_scalar", n, in[x].Buf, in[sc].Buf, out.Buf, n, op, flag)
		}
		return nil
	})
	lower(graph.OpElemUnary, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		fn, ok := unaryFns[c.stringAttr("fn")]
		if !ok {
			return fmt.Errorf("executor: %s of fn %q (want one of neg exp ln sqrt square tanh sigmoid abs inv invSqrt cube)", c.kind, c.attrs["fn"])
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			n := out.Size()
			return dev.Launch("elem_unary", n, in[0].Buf, out.Buf, n, fn)
		}
		return nil
	})
	// Repeat: x, whose size along axis is 1, and the count (a scalar the
	// output's shape already says) -> out, x repeated out[axis] times.
	lower(graph.OpRepeat, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(2); err != nil {
			return err
		}
		axis := c.intAttr("axis")
		outer, n, inner, err := axisSplit(c.kind, out, axis)
		if err != nil {
			return err
		}
		x, fits := in[0], len(in[0]) == len(out)
		for d := 0; fits && d < len(x); d++ {
			fits = x[d] == out[d] || d == axis && x[d] == 1
		}
		if !fits {
			return fmt.Errorf("executor: %s of shape %v along axis %d to shape %v (want size 1 along the axis, the rest equal)", c.kind, x, axis, out)
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("repeat_axis", outer*n*inner, in[0].Buf, out.Buf, outer, n, inner)
		}
		return nil
	})
	// Softmax (Gorgonia's SoftMax, LogSoftMax) along axis: one thread per
	// line (softmax_axis).
	lower(graph.OpSoftmax, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		outer, n, inner, err := axisSplit(c.kind, in[0], c.intAttr("axis"))
		if err != nil {
			return err
		}
		lg := b2i(c.boolAttr("log"))
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("softmax_axis", outer*inner, in[0].Buf, out.Buf, outer, n, inner, lg)
		}
		return nil
	})
	// SoftmaxGrad from (X, Y, dY); X is not read.
	lower(graph.OpSoftmaxGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(3); err != nil {
			return err
		}
		outer, n, inner, err := axisSplit(c.kind, in[1], c.intAttr("axis"))
		if err != nil {
			return err
		}
		lg := b2i(c.boolAttr("log"))
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("softmax_grad_axis", outer*inner, in[1].Buf, in[2].Buf, out.Buf, outer, n, inner, lg)
		}
		return nil
	})
	// Transpose of up to 4 axes (transpose4).
	lower(graph.OpTranspose, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		perm, err := graph.ParsePerm(c.stringAttr("perm"))
		x := in[0]
		if err != nil || len(perm) != len(x) {
			return fmt.Errorf("executor: %s %q of shape %v", c.kind, c.stringAttr("perm"), x)
		}
		if len(x) > 4 {
			return fmt.Errorf("executor: %s of %d axes (shape %v): the device kernel permutes at most 4", c.kind, len(x), x)
		}
		stride := make([]int, len(x))
		for d, st := len(x)-1, 1; d >= 0; d-- {
			stride[d], st = st, st*x[d]
		}
		// Leading axes of size 1 fill the kernel's four.
		d4, s4 := []int{1, 1, 1, 1}, []int{0, 0, 0, 0}
		for d, p := range perm {
			d4[4-len(x)+d], s4[4-len(x)+d] = x[p], stride[p]
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("transpose4", size(d4), in[0].Buf, out.Buf, d4[0], d4[1], d4[2], d4[3], s4[0], s4[1], s4[2], s4[3])
		}
		return nil
	})
	// Slice along axis, from start by step: the output's shape says how
	// many values (and whether the axis goes: a single index).
	lower(graph.OpSlice, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		sl, err := newSliceGeom(c, in, out, in[0], out)
		if err != nil {
			return err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("slice_axis", sl.outer*sl.n*sl.inner, in[0].Buf, out.Buf, sl.outer, sl.nx, sl.n, sl.inner, sl.start, sl.step)
		}
		return nil
	})
	// SliceGrad from (X, dY): zeros of X's shape with dY at the slice.
	lower(graph.OpSliceGrad, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(2); err != nil {
			return err
		}
		sl, err := newSliceGeom(c, in, out, in[0], in[1])
		if err != nil {
			return err
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("slice_grad_axis", sl.outer*sl.nx*sl.inner, in[1].Buf, out.Buf, sl.outer, sl.nx, sl.n, sl.inner, sl.start, sl.step)
		}
		return nil
	})
	// Concat along axis: one concat_part per input.
	lower(graph.OpConcat, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if _, err := graph.NewOp(graph.OpConcat, c.attrs, in, out); err != nil {
			return err
		}
		outer, ny, inner, err := axisSplit(c.kind, out, c.intAttr("axis"))
		if err != nil {
			return err
		}
		ns := make([]int, len(in))
		for i, s := range in {
			ns[i] = s[c.intAttr("axis")]
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			off := 0
			for i, n := range ns {
				if err := dev.Launch("concat_part", outer*n*inner, in[i].Buf, out.Buf, outer, n, inner, ny, off); err != nil {
					return err
				}
				off += n
			}
			return nil
		}
		return nil
	})
	// BatchedMatMul: one thread per output value (bmm), the sums in
	// float64. (A strided batched GEMM would be faster on a GPU; the device
	// interface has none yet.)
	lower(graph.OpBatchedMatMul, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(2); err != nil {
			return err
		}
		if _, err := graph.NewOp(graph.OpBatchedMatMul, c.attrs, in, out); err != nil {
			return err
		}
		ta, tb := c.boolAttr("trans_a"), c.boolAttr("trans_b")
		b, m, n := out[0], out[1], out[2]
		k := in[0][2]
		if ta {
			k = in[0][1]
		}
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			return dev.Launch("bmm", b*m*n, in[0].Buf, in[1].Buf, out.Buf, b, m, n, k, b2i(ta), b2i(tb))
		}
		return nil
	})
	// ReduceSum along axis, in float64: one thread per output over at most
	// rowChunk values (reduce_axis), else chunks of rowChunk values
	// (reduce_axis_parts), a float64 tree of the chunks and a rounding.
	lower(graph.OpReduceSum, func(c *lowerCtx, o *Op, in [][]int, out []int) error {
		if err := c.need(1); err != nil {
			return err
		}
		shape := in[0]
		if c.boolAttr("all") { // every axis: the input as one
			shape = []int{size(in[0])}
		}
		outer, n, inner, err := axisSplit(c.kind, shape, c.intAttr("axis"))
		if err != nil {
			return err
		}
		m := outer * inner
		if n <= rowChunk {
			o.run = func(dev device.Device, in []Tensor, out Tensor) error {
				return dev.Launch("reduce_axis", m, in[0].Buf, out.Buf, outer, n, inner)
			}
			return nil
		}
		chunks := (n + rowChunk - 1) / rowChunk
		part, sums := c.alloc(2*chunks*m), c.alloc(2*m) // float64s
		tree := newRowSumF64(c.alloc, chunks, m)
		o.run = func(dev device.Device, in []Tensor, out Tensor) error {
			if err := dev.Launch("reduce_axis_parts", chunks*m, in[0].Buf, part(), outer, n, inner, rowChunk); err != nil {
				return err
			}
			if err := tree.run(dev, part(), sums()); err != nil {
				return err
			}
			return dev.Launch("f64_to_f32", m, sums(), out.Buf, m)
		}
		return nil
	})
}

// sliceGeom is a slice of x (nx along the axis) to y (n along it, or 1
// where the axis goes), from start by step: [outer, ·, inner] around it.
type sliceGeom struct{ outer, nx, n, inner, start, step int }

// newSliceGeom checks the op as graph/ makes it (Slice of x to y, or
// SliceGrad of x and y) and splits x at its axis.
func newSliceGeom(c *lowerCtx, in [][]int, out, x, y []int) (sliceGeom, error) {
	if _, err := graph.NewOp(c.kind, c.attrs, in, out); err != nil {
		return sliceGeom{}, err
	}
	axis := c.intAttr("axis")
	outer, nx, inner, err := axisSplit(c.kind, x, axis)
	if err != nil {
		return sliceGeom{}, err
	}
	n := 1
	if len(y) == len(x) {
		n = y[axis]
	}
	return sliceGeom{outer, nx, n, inner, c.intAttr("start"), c.intAttr("step")}, nil
}

// b2i is a flag argument of a kernel (an int): 1 for true.
func b2i(b bool) int32 {
	if b {
		return 1
	}
	return 0
}
