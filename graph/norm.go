package graph

import (
	"fmt"
	"math"
	"sync/atomic"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/kern"
)

// The BatchNorm family: PyTorch's BatchNorm1d ([N,C]) and BatchNorm2d
// ([N,C,H,W]) as one op over the channels of the second dimension.
//
// BatchNorm takes X, gamma (weight), beta (bias) and the buffers
// running_mean, running_var and num_batches_tracked. In a training program
// it normalises each channel by the statistics of its M = N·H·W values in
// the batch (the variance biased, divided by M) and updates the buffers in
// place, as PyTorch does: running = (1-momentum)·running + momentum·batch,
// with the variance unbiased (·M/(M-1)), and num_batches_tracked + 1. In
// an evaluation program it normalises by the running statistics and
// changes nothing. Statistics are summed in float64, in a fixed order.
//
// Its gradients are BatchNormGrad (dX), BatchNormGradGamma (dgamma) and
// the channel sum of dY (dbeta: Conv2DGradB over [N,C,H,W], SumRows over
// [N,C]). On the CPU the gradient ops reuse the forward's statistics; a
// device recomputes them from X.

func init() {
	registerOp(OpDef{Kind: OpBatchNorm, FLOPs: func(a Attrs, in [][]int, out []int) float64 {
		if a.Bool("train") {
			return 7 * prod(out) // the statistics' moments, then normalise
		}
		return 2 * prod(out)
	},
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			o := newBatchNorm(firstDims(in), a.Float("eps"), a.Float("momentum"), a.Bool("train"))
			if a.Bool("no_update") {
				o.frozen()
			}
			return o, nil
		}})
	registerOp(OpDef{Kind: OpBatchNormGrad, FLOPs: func(_ Attrs, _ [][]int, out []int) float64 { return 8 * prod(out) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			return newBatchNormGrad(firstDims(in), a.Float("eps"), nil), nil
		}})
	registerOp(OpDef{Kind: OpBatchNormGradGamma, FLOPs: func(_ Attrs, in [][]int, _ []int) float64 { return 4 * prod(in[0]) },
		Make: func(a Attrs, in [][]int, _ []int) (Op, error) {
			return newBatchNormGradGamma(firstDims(in), a.Float("eps"), nil), nil
		}})
}

// BatchSync makes a training program's BatchNorm layers normalise by
// the statistics of a batch split across ranks (SyncBatchNorm, as PyTorch's
// nn.SyncBatchNorm): Sum adds buf element-wise over the ranks, in place,
// with the same result on every rank. Each rank calls it in the same
// order: per BatchNorm, once in the forward pass (the channels' moments
// and value count; a second time, on every rank alike, when the moments
// cancel too much to give the variance) and once in the backward pass.
type BatchSync interface {
	Sum(buf []float64) error
}

// bnSync is a program's BatchSync and this run's share of the global
// batch, which its BatchNorm ops read.
type bnSync struct {
	s     BatchSync
	share float64
}

// SyncBatchNorm makes the program's BatchNorm layers use the statistics
// of the global batch, of which this program's batch is the fraction
// share, summed across ranks by s; nil s restores the batch's own
// statistics. An evaluation program, which uses the running statistics,
// ignores it. The gradients the program computes are then those of its
// ranks' share-weighted loss, as with local statistics: reducing them by
// the shares gives one process's gradient over the global batch.
func (p *Program) SyncBatchNorm(s BatchSync, share float64) error {
	if s != nil && !(share > 0 && share <= 1) {
		return fmt.Errorf("graph: SyncBatchNorm: share %v must be in (0, 1]", share)
	}
	p.sync.s, p.sync.share = s, share
	return nil
}

// BatchSync returns what SyncBatchNorm set: the ranks' sum (nil: each
// batch's own statistics) and this program's share of the global batch.
// A device's program of the same graph takes them (gpu/executor's
// Program.SyncBatchNorm).
func (p *Program) BatchSync() (BatchSync, float64) { return p.sync.s, p.sync.share }

// bnGeom is X's layout: N samples of C channels of P values each.
type bnGeom struct{ N, C, P int }

func newBNGeom(x []int) (bnGeom, error) {
	switch len(x) {
	case 2:
		return bnGeom{x[0], x[1], 1}, nil
	case 4:
		return bnGeom{x[0], x[1], x[2] * x[3]}, nil
	}
	return bnGeom{}, fmt.Errorf("%s: input %v is neither [N,C] nor [N,C,H,W]", OpBatchNorm, x)
}

func (g bnGeom) m() int { return g.N * g.P }

// bnStats is the batch statistics of channels [c0, c1) of x: the mean and
// 1/sqrt(var+eps), and the biased variance. They are taken in one pass,
// as moments about a guess of each channel's mean (guess: the running
// mean, nil for zero), unless the moments cancel too much (see
// fromMoments): then the squared deviations are summed in a second pass.
// With part ([N][C][2], the terms of each sample and channel that the
// convolution before took, convMoments) the moments are those terms
// added up in the order of the samples: the same sums, without the pass.
func bnStats(g bnGeom, x []float32, c0, c1 int, eps float64, guess []float32, part []float64, mean, invstd, variance []float64) {
	m := float64(g.m())
	for c := c0; c < c1; c++ {
		k := 0.0
		if guess != nil {
			k = float64(guess[c])
		}
		var s1, s2 float64
		if part != nil {
			for n := 0; n < g.N; n++ {
				s1 += part[(n*g.C+c)*2]
				s2 += part[(n*g.C+c)*2+1]
			}
		} else {
			s1, s2 = kern.ChanMoments(x, g.N, g.C, g.P, c, k)
		}
		mu, v, ok := fromMoments(s1, s2, m, k)
		if !ok {
			v = g.channelSqDev(x, c, mu) / m
		}
		mean[c], variance[c] = mu, v
		invstd[c] = 1 / math.Sqrt(v+eps)
	}
}

// fromMoments is the mean and the biased variance of m values whose sum
// and sum of squares about k are s1 and s2: mu = k + d, var = s2/m - d²
// with d = s1/m. ok is false when d² exceeds 64 times the variance: the
// subtraction would then lose more than six of float64's bits to the
// guess's distance from the mean, and the variance is to be summed about
// mu instead (a constant channel away from k, a running mean far from a
// new batch's). Within it the variance keeps float32's precision by far.
func fromMoments(s1, s2, m, k float64) (mu, v float64, ok bool) {
	d := s1 / m
	v = s2/m - d*d
	return k + d, max(v, 0), d*d <= 64*v
}

// The sums over a channel are taken in float64, eight running sums at a
// time (kern.ChanMoments, kern.ChanSqDev). (float32 sums per plane are faster, but a channel
// of nearly equal values, as a batch of MNIST digits gives at the first
// BatchNorm, has a tiny variance that eps scarcely bounds, and its
// gradient then magnifies their rounding a hundredfold.)

// channelSqDev is Σ (x-mu)² over channel c.
func (g bnGeom) channelSqDev(x []float32, c int, mu float64) float64 {
	return kern.ChanSqDev(x, g.N, g.C, g.P, c, mu)
}

// gradSums is Σ dy and Σ dy·(x-mu) over channel c.
func (g bnGeom) gradSums(x, dy []float32, c int, mu float64) (s1, s2 float64) {
	return kern.ChanGradSums(x, dy, g.N, g.C, g.P, c, mu)
}

// affine sets dst = a·x + b·y + c over channel ch's planes (y may be nil:
// dst = a·x + c).
func (g bnGeom) affine(dst, x, y []float32, ch int, a, b, c float32) {
	if y == nil {
		kern.ChanAffine(dst, x, g.N, g.C, g.P, ch, a, c)
		return
	}
	kern.ChanAffine2(dst, x, y, g.N, g.C, g.P, ch, a, b, c)
}

// bnSaved is a training forward's statistics, which its gradient ops
// reuse when they see the same X.
type bnSaved struct {
	x                      []float32 // the forward's X
	m                      float64   // the values per channel the statistics are of (all ranks')
	mean, invstd, variance []float64
	buf                    []float64 // synchronised sums
	// sums are the channels' Σ dY and Σ dY·(x-mean) of dY sumsOf, for
	// this run (the forward clears sumsOf): see channelGradSums.
	sums   [2][]float64
	sumsOf *float32
}

// channelGradSums is each channel's Σ dY and Σ dY·(x-mean): taken once a
// run, by whichever of BatchNormGrad and BatchNormGradGamma runs first,
// and kept with the forward's statistics for the other. Outside a
// program, or for an X the forward did not see, it is taken into scratch.
func (s *bnSaved) channelGradSums(g bnGeom, x, dy []float32, mean []float64, scratch *[2][]float64) (s1, s2 []float64) {
	own := s.valid(x)
	if own && s.sumsOf == &dy[0] {
		return s.sums[0], s.sums[1]
	}
	dst := scratch
	if own {
		dst = &s.sums
	}
	if len(dst[0]) != g.C {
		dst[0], dst[1] = make([]float64, g.C), make([]float64, g.C)
	}
	parallelFor(g.C, 2*len(x), func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			dst[0][c], dst[1][c] = g.gradSums(x, dy, c, mean[c])
		}
	})
	if own {
		s.sumsOf = &dy[0]
	}
	return dst[0], dst[1]
}

// reluGradSums computes, for the ReLU fused with this BatchNorm
// (fuseBNReLU), the ReLU's input gradient dy of dz at its output z, and
// in the same pass the channels' Σ dY and Σ dY·(x-mean) that the
// BatchNorm's gradient ops take of that dy (channelGradSums, which then
// finds them): a read of dY fewer, the same bits. It reports false,
// having done nothing, when the forward's statistics are not of a
// batch of this shape.
func (s *bnSaved) reluGradSums(shape []int, dy, z, dz []float32) bool {
	g, err := newBNGeom(shape)
	if err != nil || len(s.x) != len(z) || len(s.mean) != g.C || len(dy) == 0 {
		return false
	}
	x := s.x
	if len(s.sums[0]) != g.C {
		s.sums[0], s.sums[1] = make([]float64, g.C), make([]float64, g.C)
	}
	parallelFor(g.C, 3*len(z), func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			s.sums[0][c], s.sums[1][c] = kern.ChanReLUGradSums(dy, z, dz, x, g.N, g.C, g.P, c, s.mean[c])
		}
	})
	s.sumsOf = &dy[0]
	reluGradSumsTaken.Add(1)
	return true
}

// reluGradSumsTaken counts the BatchNorm gradient sums taken with a fused
// ReLU's gradient (for tests).
var reluGradSumsTaken atomic.Int64

func (s *bnSaved) valid(x []float32) bool {
	return s != nil && len(x) > 0 && len(s.x) == len(x) && &s.x[0] == &x[0]
}

// stats returns the statistics of x: saved's when they are of x, else
// computed into scratch.
func (s *bnSaved) stats(g bnGeom, x []float32, eps float64, scratch *bnSaved) (mean, invstd []float64) {
	if s.valid(x) {
		return s.mean, s.invstd
	}
	scratch.resize(g.C)
	parallelFor(g.C, 2*len(x), func(c0, c1 int) {
		bnStats(g, x, c0, c1, eps, nil, nil, scratch.mean, scratch.invstd, scratch.variance)
	})
	return scratch.mean, scratch.invstd
}

func (s *bnSaved) resize(c int) {
	if len(s.mean) != c {
		s.mean, s.invstd, s.variance = make([]float64, c), make([]float64, c), make([]float64, c)
	}
}

// ---- BatchNorm ----

type batchNormOp struct {
	base
	eps, momentum float64
	train         bool
	saved         bnSaved
	sync          *bnSync // the program's (nil outside a program)
	// noUpdate leaves the running buffers alone in training: a pipeline
	// stage's forward pass, which its training program runs again.
	noUpdate bool
	// relu is the ReLU that alone reads the output, fused (fuseBNReLU);
	// runs counts the runs that computed its output.
	relu *actOp
	runs uint64
	// conv is the convolution whose output this BatchNorm alone
	// normalises (fuseConvBN), which takes the output's moments about
	// guess, the running mean of this BatchNorm's last training run.
	conv  *conv2dOp
	guess []float32
}

// frozen is a training BatchNorm that does not update its buffers (the
// attribute "no_update").
func (o *batchNormOp) frozen() *batchNormOp {
	o.noUpdate = true
	o.attrs["no_update"] = true
	return o
}

func newBatchNorm(d int, eps, momentum float64, train bool) *batchNormOp {
	return &batchNormOp{base: newBase(OpBatchNorm, map[string]any{"eps": eps, "momentum": momentum, "train": train},
		tt(d), tt(d), tt(1), tt(1), tt(1), tt(1), tt(1)), eps: eps, momentum: momentum, train: train}
}

func (o *batchNormOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x := shapeOf(ds[0])
	g, err := newBNGeom(x)
	if err != nil {
		return nil, err
	}
	for i, name := range []string{"weight", "bias", "running_mean", "running_var"} {
		if s := shapeOf(ds[i+1]); len(s) != 1 || s[0] != g.C {
			return nil, fmt.Errorf("%s: %s %v does not fit %d channels", OpBatchNorm, name, s, g.C)
		}
	}
	if s := shapeOf(ds[5]); s.TotalSize() != 1 {
		return nil, fmt.Errorf("%s: num_batches_tracked %v is not one value", OpBatchNorm, s)
	}
	if o.train && g.m() < 2 {
		return nil, fmt.Errorf("%s: training needs more than one value per channel, got input %v", OpBatchNorm, x)
	}
	return x.Clone(), nil
}

func (o *batchNormOp) Do(in ...G.Value) (G.Value, error) {
	g, err := newBNGeom(dims(in[0]))
	if err != nil {
		return nil, err
	}
	if o.train && g.m() < 2 {
		return nil, fmt.Errorf("%s: training needs more than one value per channel, got input %v", OpBatchNorm, dims(in[0]))
	}
	x, gamma, beta, rm, rv, nbt := f32(in[0]), f32(in[1]), f32(in[2]), f32(in[3]), f32(in[4]), f32(in[5])
	// With a ReLU fused (fuseBNReLU), the output is the ReLU's, which it
	// returns as its own: only that ReLU reads it.
	var out *tensor.Dense
	affine := g.affine
	if o.relu != nil {
		out = o.relu.output(dims(in[0])...)
		affine = func(dst, x, _ []float32, c int, a, _, b float32) {
			kern.ChanAffineReLU(dst, x, g.N, g.C, g.P, c, a, b)
		}
		o.runs++
		defer func() { o.relu.fused = o.runs }()
	} else {
		out = o.output(dims(in[0])...)
	}
	y := f32(out)
	if !o.train {
		parallelFor(g.C, len(x), func(c0, c1 int) {
			for c := c0; c < c1; c++ {
				is := 1 / math.Sqrt(float64(rv[c])+o.eps)
				scale := float32(float64(gamma[c]) * is)
				shift := float32(float64(beta[c]) - float64(rm[c])*float64(gamma[c])*is)
				affine(y, x, nil, c, scale, 0, shift)
			}
		})
		return out, nil
	}
	s := &o.saved
	s.resize(g.C)
	s.m = float64(g.m())
	if o.sync != nil && o.sync.s != nil {
		if err := o.syncStats(g, x, rm); err != nil {
			return nil, err
		}
	} else {
		var part []float64
		if o.conv != nil {
			part = o.conv.mom.momentsOf(x, rm)
		}
		if part != nil {
			momentsTaken.Add(1)
		}
		parallelFor(g.C, 2*len(x), func(c0, c1 int) {
			bnStats(g, x, c0, c1, o.eps, rm, part, s.mean, s.invstd, s.variance)
		})
	}
	o.guess = rm
	unbias := s.m / (s.m - 1)
	parallelFor(g.C, len(x), func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			scale := float32(float64(gamma[c]) * s.invstd[c])
			shift := float32(float64(beta[c]) - s.mean[c]*float64(gamma[c])*s.invstd[c])
			affine(y, x, nil, c, scale, 0, shift)
			if !o.noUpdate {
				rm[c] = float32((1-o.momentum)*float64(rm[c]) + o.momentum*s.mean[c])
				rv[c] = float32((1-o.momentum)*float64(rv[c]) + o.momentum*s.variance[c]*unbias)
			}
		}
	})
	if !o.noUpdate {
		nbt[0]++
	}
	s.x, s.sumsOf = x, nil
	return out, nil
}

// syncStats computes the statistics of the global batch: each channel's
// moments about its running mean (the same on every rank) and the value
// count, summed across ranks in one call; when some channel's moments
// cancel too much (fromMoments), its squared deviations from the global
// mean in a second call, which every rank then makes, having the same
// sums.
func (o *batchNormOp) syncStats(g bnGeom, x, rm []float32) error {
	s := &o.saved
	if len(s.buf) < 2*g.C+1 {
		s.buf = make([]float64, 2*g.C+1)
	}
	buf := s.buf[:2*g.C+1]
	parallelFor(g.C, len(x), func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			buf[c], buf[g.C+c] = kern.ChanMoments(x, g.N, g.C, g.P, c, float64(rm[c]))
		}
	})
	buf[2*g.C] = float64(g.m())
	if err := o.sync.s.Sum(buf); err != nil {
		return fmt.Errorf("%s: synchronising the batch statistics: %w", OpBatchNorm, err)
	}
	s.m = buf[2*g.C]
	if !(s.m >= 2) {
		return fmt.Errorf("%s: the global batch has %v values per channel; training needs at least 2", OpBatchNorm, s.m)
	}
	exact := true
	for c := range g.C {
		var ok bool
		s.mean[c], s.variance[c], ok = fromMoments(buf[c], buf[g.C+c], s.m, float64(rm[c]))
		exact = exact && ok
	}
	if !exact {
		buf = buf[:g.C]
		parallelFor(g.C, len(x), func(c0, c1 int) {
			for c := c0; c < c1; c++ {
				buf[c] = g.channelSqDev(x, c, s.mean[c])
			}
		})
		if err := o.sync.s.Sum(buf); err != nil {
			return fmt.Errorf("%s: synchronising the batch statistics: %w", OpBatchNorm, err)
		}
		for c := range g.C {
			s.variance[c] = buf[c] / s.m
		}
	}
	for c := range g.C {
		s.invstd[c] = 1 / math.Sqrt(s.variance[c]+o.eps)
	}
	return nil
}

func (o *batchNormOp) DiffWRT(int) []bool {
	return []bool{o.train, o.train, o.train, false, false, false}
}

func (o *batchNormOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	if !o.train {
		return nil, noGrad("BatchNorm in evaluation")
	}
	d := in[0].Dims()
	bg := newBatchNormGrad(d, o.eps, &o.saved)
	bg.sync = o.sync
	dx, err := G.ApplyOp(bg, in[0], in[1], grad)
	if err != nil {
		return nil, err
	}
	dg, err := G.ApplyOp(newBatchNormGradGamma(d, o.eps, &o.saved), in[0], grad)
	if err != nil {
		return nil, err
	}
	var db *G.Node
	if d == 4 {
		db, err = G.ApplyOp(&conv2dGradBOp{base: newBase(OpConv2DGradB, nil, tt(1), tt(4)), bn: &o.saved}, grad)
	} else {
		db, err = G.ApplyOp(newSumRows(), grad)
	}
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dg, db, nil, nil, nil}, nil
}

// fuseReLUs turns fuseBNReLU on (tests turn it off to compare).
var fuseReLUs = true

// fuseBNReLU fuses each BatchNorm whose output only a ReLU reads with
// that ReLU, in a program's graph on the CPU: the BatchNorm writes
// max(a·x+b, 0) into the ReLU's output in its one pass over x, and the
// ReLU, finding its output computed for this run, returns it. That saves
// a write and a read of the activation (a ResNet basic block's first
// BatchNorm and ReLU; the stem's), with the bits of the two ops run
// apart (kern.ChanAffineReLU). A BatchNorm whose output is read by
// another node, or is one of keep (the program's outputs), stays apart.
// Devices run the graph's ops one by one, as ever.
func fuseBNReLU(g *G.ExprGraph, keep ...*G.Node) {
	if !fuseReLUs {
		return
	}
	kept := make(map[*G.Node]bool, len(keep))
	for _, n := range keep {
		kept[n] = true
	}
	for _, n := range g.AllNodes() {
		r, ok := n.Op().(*actOp)
		if !ok || r.kind != OpReLU || r.from != nil {
			continue
		}
		ins := g.From(n.ID())
		if ins.Len() != 1 || !ins.Next() {
			continue
		}
		in, ok := ins.Node().(*G.Node)
		if !ok || kept[in] || g.To(in.ID()).Len() != 1 {
			continue
		}
		if bn, ok := in.Op().(*batchNormOp); ok && bn.relu == nil {
			bn.relu, r.from = r, bn
		}
	}
}

// fuseConvMoments turns fuseConvBN on (tests turn it off to compare).
var fuseConvMoments = true

// momentsTaken counts the BatchNorm statistics taken from their
// convolution's moments (for tests).
var momentsTaken atomic.Int64

// fuseConvBN links each training BatchNorm whose input is a
// convolution's output with that convolution, in a program's graph on
// the CPU: the convolution takes each sample's moments about the
// BatchNorm's running mean as it computes the sample (convMoments), while
// the sample's planes are in cache, and the BatchNorm adds them up
// instead of reading its whole input once more, with the same bits. A
// convolution read by several BatchNorms is linked with one.
func fuseConvBN(g *G.ExprGraph) {
	if !fuseConvMoments {
		return
	}
	for _, n := range g.AllNodes() {
		bn, ok := n.Op().(*batchNormOp)
		if !ok || !bn.train || bn.conv != nil {
			continue
		}
		for ins := g.From(n.ID()); ins.Next(); {
			in, ok := ins.Node().(*G.Node)
			if !ok {
				continue
			}
			if c, ok := in.Op().(*conv2dOp); ok && c.bn == nil {
				bn.conv, c.bn = c, bn
				break
			}
		}
	}
}

// ---- BatchNormGrad: dX = gamma·invstd·(dY - mean(dY) - x̂·mean(dY·x̂)) ----

type batchNormGradOp struct {
	base
	eps     float64
	fwd     *bnSaved // the forward's statistics (nil outside a graph)
	scratch bnSaved
	sums    [2][]float64 // channelGradSums' scratch
	sync    *bnSync
	buf     []float64
}

func newBatchNormGrad(d int, eps float64, fwd *bnSaved) *batchNormGradOp {
	return &batchNormGradOp{base: newBase(OpBatchNormGrad, map[string]any{"eps": eps}, tt(d), tt(d), tt(1), tt(d)), eps: eps, fwd: fwd}
}

func (o *batchNormGradOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x, dy := shapeOf(ds[0]), shapeOf(ds[2])
	if !x.Eq(dy) {
		return nil, fmt.Errorf("%s: X %v and dY %v differ", OpBatchNormGrad, x, dy)
	}
	return x.Clone(), nil
}

func (o *batchNormGradOp) Do(in ...G.Value) (G.Value, error) {
	g, err := newBNGeom(dims(in[0]))
	if err != nil {
		return nil, err
	}
	x, gamma, dy := f32(in[0]), f32(in[1]), f32(in[2])
	out := o.output(dims(in[0])...)
	dx := f32(out)
	if o.sync != nil && o.sync.s != nil {
		if !o.fwd.valid(x) {
			return nil, fmt.Errorf("%s: synchronised statistics need the forward pass of the same batch", OpBatchNormGrad)
		}
		return out, o.syncGrad(g, x, f32(in[1]), f32(in[2]), dx)
	}
	mean, invstd := o.fwd.stats(g, x, o.eps, &o.scratch)
	s1, s2 := o.fwd.channelGradSums(g, x, dy, mean, &o.sums)
	m := float64(g.m())
	parallelFor(g.C, len(x), func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			bnGradApply(g, dx, dy, x, c, float64(gamma[c]), mean[c], invstd[c], s1[c]/m, s2[c]*invstd[c]/m)
		}
	})
	return out, nil
}

// bnGradApply sets channel c of dx = k·(dy - a - x̂·b), k = gamma·invstd,
// x̂ = (x-mu)·invstd, as one affine map of dy and x in float32.
func bnGradApply(g bnGeom, dx, dy, x []float32, c int, gamma, mu, invstd, a, b float64) {
	k := gamma * invstd
	kb := k * invstd * b
	g.affine(dx, dy, x, c, float32(k), float32(-kb), float32(-k*a+kb*mu))
}

// syncGrad is dX with the global batch's statistics: the channels' sums
// of dY and dY·x̂, weighted by this rank's share (its dY is of its own
// mean loss), are summed across ranks: with G1, G2 their totals and M
// the global count, dX = gamma·invstd·(dY - (G1 + x̂·G2)/(share·M)).
func (o *batchNormGradOp) syncGrad(g bnGeom, x, gamma, dy, dx []float32) error {
	s, share := o.fwd, o.sync.share
	if len(o.buf) < 2*g.C {
		o.buf = make([]float64, 2*g.C)
	}
	buf := o.buf[:2*g.C]
	parallelFor(g.C, 2*len(x), func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			s1, s2 := g.gradSums(x, dy, c, s.mean[c])
			buf[c], buf[g.C+c] = share*s1, share*s2*s.invstd[c]
		}
	})
	if err := o.sync.s.Sum(buf); err != nil {
		return fmt.Errorf("%s: synchronising the gradient's sums: %w", OpBatchNormGrad, err)
	}
	parallelFor(g.C, len(x), func(c0, c1 int) {
		for c := c0; c < c1; c++ {
			bnGradApply(g, dx, dy, x, c, float64(gamma[c]), s.mean[c], s.invstd[c], buf[c]/(share*s.m), buf[g.C+c]/(share*s.m))
		}
	})
	return nil
}

func (o *batchNormGradOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *batchNormGradOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("BatchNormGrad")
}

// ---- BatchNormGradGamma: dgamma[c] = Σ dY·x̂ ----

type batchNormGradGammaOp struct {
	base
	eps     float64
	fwd     *bnSaved
	scratch bnSaved
	sums    [2][]float64 // channelGradSums' scratch
}

func newBatchNormGradGamma(d int, eps float64, fwd *bnSaved) *batchNormGradGammaOp {
	return &batchNormGradGammaOp{base: newBase(OpBatchNormGradGamma, map[string]any{"eps": eps}, tt(1), tt(d), tt(d)), eps: eps, fwd: fwd}
}

func (o *batchNormGradGammaOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	x, dy := shapeOf(ds[0]), shapeOf(ds[1])
	if !x.Eq(dy) || len(x) < 2 {
		return nil, fmt.Errorf("%s: X %v and dY %v differ", OpBatchNormGradGamma, x, dy)
	}
	return tensor.Shape{x[1]}, nil
}

func (o *batchNormGradGammaOp) Do(in ...G.Value) (G.Value, error) {
	g, err := newBNGeom(dims(in[0]))
	if err != nil {
		return nil, err
	}
	x, dy := f32(in[0]), f32(in[1])
	mean, invstd := o.fwd.stats(g, x, o.eps, &o.scratch)
	_, s2 := o.fwd.channelGradSums(g, x, dy, mean, &o.sums)
	out := o.output(g.C)
	dg := f32(out)
	for c := range dg {
		dg[c] = float32(s2[c] * invstd[c])
	}
	return out, nil
}

func (o *batchNormGradGammaOp) DiffWRT(n int) []bool { return make([]bool, n) }
func (o *batchNormGradGammaOp) SymDiff(G.Nodes, *G.Node, *G.Node) (G.Nodes, error) {
	return nil, noGrad("BatchNormGradGamma")
}
