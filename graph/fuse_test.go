package graph

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/kern"
	"github.com/gotrain/gotrain/graph/nn"
)

// sharedBN reads one BatchNorm's output twice (a ReLU and an Add), which
// stays apart, and feeds another BatchNorm to a ReLU alone, which fuses.
type sharedBN struct {
	conv     *nn.Conv2d
	bn1, bn2 *nn.BatchNorm
	fc       *nn.Linear
}

func (m *sharedBN) Forward(c nn.Ctx, x nn.T) nn.T {
	h := m.bn1.Forward(c, m.conv.Forward(c, x))
	h = c.Add(c.ReLU(h), h)
	h = c.ReLU(m.bn2.Forward(c, h))
	return m.fc.Forward(c, c.GlobalAvgPool2D(h))
}

func newSharedBN(s *nn.Scope, spec Spec) (nn.Module, error) {
	return &sharedBN{conv: nn.NewConv2dNoBias(s.Sub("conv"), spec.InC, 4, 3, 1, 1), bn1: nn.NewBatchNorm(s.Sub("bn1"), 4),
		bn2: nn.NewBatchNorm(s.Sub("bn2"), 4), fc: nn.NewLinear(s.Sub("fc"), 4, spec.Classes)}, nil
}

// countOps counts the program's nodes whose op is a T for which is holds.
func countOps[T G.Op](g *G.ExprGraph, is func(T) bool) int {
	n := 0
	for _, nd := range g.AllNodes() {
		if op, ok := nd.Op().(T); ok && is(op) {
			n++
		}
	}
	return n
}

// fusedReLUs counts the program's ReLUs that a BatchNorm computes.
func fusedReLUs(g *G.ExprGraph) int { return countOps(g, func(r *actOp) bool { return r.from != nil }) }

// A BatchNorm whose output only a ReLU reads computes the ReLU too
// (fuseBNReLU), and the ReLU's gradient takes the BatchNorm's gradient
// sums in its pass: the stem's and each basic block's first; the programs
// give the bits of the ops run apart, in training (loss, logits,
// gradients, running buffers) and in evaluation.
func TestBatchNormReLUFusion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func() (*Model, error)
		fused int
	}{
		{"resnet8", func() (*Model, error) { return New(Spec{Kind: "resnet", Depth: 8, InH: 12, InW: 12}, 1) }, 4},
		{"shared output", func() (*Model, error) {
			return Build(Spec{Kind: "sharedbn", InC: 1, InH: 6, InW: 6, Classes: 10}, newSharedBN, 1)
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type result struct {
				loss          []float32
				logits, grads [][]float32
				params        [][]float32
				fused         [2]int
			}
			run := func(fuse bool) result {
				fuseReLUs = fuse
				defer func() { fuseReLUs = true }()
				m, err := tc.build()
				require.NoError(t, err)
				tr := labelledProgram(t, m, 6, 3, 3, 10)
				ev, err := m.Program(6, false)
				require.NoError(t, err)
				copy(ev.X, tr.X)
				copy(ev.Y, tr.Y)
				var r result
				r.fused = [2]int{fusedReLUs(tr.g), fusedReLUs(ev.g)}
				for step := 0; step < 3; step++ {
					adds, sums := engineAdds.Load(), reluGradSumsTaken.Load()
					l, err := tr.Run(nil)
					require.NoError(t, err)
					require.Greater(t, engineAdds.Load(), adds, "Gorgonia's Adds ran on cpuEngine")
					require.Equal(t, int64(r.fused[0]), reluGradSumsTaken.Load()-sums, "each fused ReLU's gradient took its BatchNorm's sums")
					r.loss = append(r.loss, l)
					r.logits = append(r.logits, slices.Clone(tr.Logits()))
					for i := range m.Params {
						r.grads = append(r.grads, slices.Clone(tr.Grad(i)))
					}
					if l, err = ev.Run(nil); err != nil {
						t.Fatal(err)
					}
					r.loss = append(r.loss, l)
					r.logits = append(r.logits, slices.Clone(ev.Logits()))
				}
				for _, p := range m.Params {
					r.params = append(r.params, slices.Clone(p.Data))
				}
				return r
			}
			on, off := run(true), run(false)
			require.Equal(t, [2]int{tc.fused, tc.fused}, on.fused, "fused ReLUs in the training and evaluation programs")
			require.Equal(t, [2]int{0, 0}, off.fused)
			for _, l := range on.loss {
				require.False(t, math.IsNaN(float64(l)))
			}
			require.Equal(t, off.loss, on.loss, "losses")
			require.Equal(t, off.logits, on.logits, "logits")
			require.Equal(t, off.grads, on.grads, "gradients")
			require.Equal(t, off.params, on.params, "parameters and running buffers")
		})
	}
}

// Gorgonia's Add on the programs' values runs through cpuEngine: one
// pass into the buffer Gorgonia hands it (or into a, unsafe), with
// StdEng's values; what it does not cover is StdEng's.
func TestCPUEngineAdd(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	n := 3 * 1000
	a, b := make([]float32, n), make([]float32, n)
	fill(r, a, 1)
	fill(r, b, 1)
	want := make([]float32, n)
	for i := range want {
		want[i] = a[i] + b[i]
	}
	mk := func(x []float32, e tensor.Engine) *tensor.Dense {
		return tensor.New(tensor.WithShape(3, 1000), tensor.WithBacking(slices.Clone(x)), tensor.WithEngine(e))
	}
	// Into a reused buffer.
	ta, tb, reuse := mk(a, cpuEng), mk(b, cpuEng), mk(make([]float32, n), cpuEng)
	adds := engineAdds.Load()
	got, err := tensor.Add(ta, tb, tensor.WithReuse(reuse))
	require.NoError(t, err)
	require.Equal(t, adds+1, engineAdds.Load(), "cpuEngine's own")
	require.Same(t, reuse, got)
	require.Equal(t, want, reuse.Float32s())
	require.Equal(t, a, ta.Float32s(), "a unchanged")
	// Unsafe: into a.
	got, err = tensor.Add(ta, tb, tensor.UseUnsafe())
	require.NoError(t, err)
	require.Same(t, ta, got)
	require.Equal(t, want, ta.Float32s())
	// Safe without a buffer, an increment, broadcasting shapes, float64:
	// StdEng's.
	ta = mk(a, cpuEng)
	got, err = tensor.Add(ta, tb)
	require.NoError(t, err)
	require.NotSame(t, ta, got)
	require.Equal(t, want, got.Data())
	incr := mk(a, cpuEng)
	_, err = tensor.Add(mk(a, cpuEng), tb, tensor.WithIncr(incr))
	require.NoError(t, err)
	for i, v := range incr.Float32s() {
		require.Equal(t, a[i]+want[i], v, "incr [%d]", i)
	}
	_, err = tensor.Add(mk(a, cpuEng), tensor.New(tensor.WithShape(2, 1000), tensor.WithBacking(b[:2000])), tensor.WithReuse(reuse))
	require.Error(t, err, "shapes that differ are StdEng's error")
	f64 := tensor.New(tensor.WithShape(2), tensor.WithBacking([]float64{1, 2}), tensor.WithEngine(cpuEng))
	got, err = tensor.Add(f64, tensor.New(tensor.WithShape(2), tensor.WithBacking([]float64{3, 4})))
	require.NoError(t, err)
	require.Equal(t, []float64{4, 6}, got.Data())
}

// The statistics come from one pass of moments about a guess when the
// guess is near enough, and from a second pass when it is not: either
// way within float32's precision of the exact ones.
func TestBatchNormMomentsFallBack(t *testing.T) {
	g := bnGeom{N: 4, C: 2, P: 49}
	r := rand.New(rand.NewPCG(7, 8))
	x := make([]float32, g.N*g.C*g.P)
	for i := range x {
		c := (i / g.P) % g.C
		x[i] = float32([]float64{1e4, -0.5}[c] + r.NormFloat64()*[]float64{1e-2, 2}[c])
	}
	exact := func(c int) (mu, v float64) {
		var s float64
		for n := range g.N {
			for _, e := range x[(n*g.C+c)*g.P:][:g.P] {
				s += float64(e)
			}
		}
		mu = s / float64(g.m())
		for n := range g.N {
			for _, e := range x[(n*g.C+c)*g.P:][:g.P] {
				v += (float64(e) - mu) * (float64(e) - mu)
			}
		}
		return mu, v / float64(g.m())
	}
	for _, guess := range [][]float32{nil, {1e4, -0.5}, {9e3, 100}} {
		mean, invstd, variance := make([]float64, 2), make([]float64, 2), make([]float64, 2)
		bnStats(g, x, 0, 2, 1e-5, guess, nil, mean, invstd, variance)
		for c := range 2 {
			mu, v := exact(c)
			require.InDelta(t, mu, mean[c], 1e-12*math.Abs(mu)+1e-12, "guess %v channel %d mean", guess, c)
			require.InEpsilon(t, v, variance[c], 1e-9, "guess %v channel %d variance", guess, c)
		}
	}
	// Channel 0 (mean 1e4, variance 1e-4) about 0: its moments cancel.
	m := float64(g.m())
	s1, s2 := kern.ChanMoments(x, g.N, g.C, g.P, 0, 0)
	_, _, ok := fromMoments(s1, s2, m, 0)
	require.False(t, ok, "1e4 away from a mean with variance 1e-4")
	s1, s2 = kern.ChanMoments(x, g.N, g.C, g.P, 0, 1e4)
	_, _, ok = fromMoments(s1, s2, m, 1e4)
	require.True(t, ok, "about a near guess")
}

// linkedConvBNs counts the BatchNorms that a convolution takes the
// moments for (fuseConvBN).
func linkedConvBNs(g *G.ExprGraph) int {
	return countOps(g, func(bn *batchNormOp) bool { return bn.conv != nil })
}

// A training BatchNorm after a convolution takes its statistics from the
// moments the convolution took sample by sample (fuseConvBN), from its
// second run on (the first has no running mean to take them about): on
// the planes of every kernel route (direct 3x3 on 12x12, the wide 6x6
// and 3x3 images, strided) the losses, gradients, parameters and running
// buffers have the bits of the program without it, and the evaluation
// program links none.
func TestConvBatchNormMoments(t *testing.T) {
	type result struct {
		loss          []float32
		grads, params [][]float32
	}
	run := func(fuse bool) result {
		fuseConvMoments = fuse
		defer func() { fuseConvMoments = true }()
		m, err := New(Spec{Kind: "resnet", Depth: 8, InH: 12, InW: 12}, 1)
		require.NoError(t, err)
		tr := labelledProgram(t, m, 10, 5, 6, 10)
		ev, err := m.Program(10, false)
		require.NoError(t, err)
		require.Zero(t, linkedConvBNs(ev.g), "evaluation")
		linked := linkedConvBNs(tr.g)
		if fuse {
			require.Equal(t, 9, linked, "ResNet-8's BatchNorms (the stem's, 2 a block, 2 on the strided shortcuts), each after a convolution")
		} else {
			require.Zero(t, linked)
		}
		var r result
		for step := 0; step < 4; step++ {
			taken := momentsTaken.Load()
			l, err := tr.Run(nil)
			require.NoError(t, err)
			want := int64(linked)
			if step == 0 {
				want = 0
			}
			require.Equal(t, want, momentsTaken.Load()-taken, "step %d: statistics from the convolutions' moments", step)
			r.loss = append(r.loss, l)
			for i := range m.Params {
				r.grads = append(r.grads, slices.Clone(tr.Grad(i)))
			}
			_, err = ev.Run(nil)
			require.NoError(t, err)
		}
		for _, p := range m.Params {
			r.params = append(r.params, slices.Clone(p.Data))
		}
		return r
	}
	on, off := run(true), run(false)
	require.Equal(t, off.loss, on.loss, "losses")
	require.Equal(t, off.grads, on.grads, "gradients")
	require.Equal(t, off.params, on.params, "parameters and running buffers")
}
