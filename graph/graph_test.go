package graph

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/graph/kern"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

func fill(r *rand.Rand, x []float32, scale float32) {
	for i := range x {
		x[i] = (2*r.Float32() - 1) * scale
	}
}

// gradCheck compares every analytic gradient of prog with central finite
// differences on a sample of parameter entries.
// labelledProgram is m's training program of batch samples, its inputs
// drawn from the PCG stream (s1, s2) and its labels 0, 1, ... mod classes.
func labelledProgram(t *testing.T, m *Model, batch int, s1, s2 uint64, classes int) *Program {
	t.Helper()
	prog, err := m.Program(batch, true)
	require.NoError(t, err)
	fill(rand.New(rand.NewPCG(s1, s2)), prog.X, 1)
	for i := range prog.Y {
		prog.Y[i] = float32(i % classes)
	}
	return prog
}

func gradCheck(t *testing.T, m *Model, prog *Program, seed uint64) {
	t.Helper()
	run := func() float64 {
		l, err := prog.Run(rand.New(rand.NewPCG(seed, 7))) // same dropout masks every run
		require.NoError(t, err)
		return float64(l)
	}
	run()
	grads := make([][]float32, len(m.Params))
	for i := range m.Params {
		grads[i] = slices.Clone(prog.Grad(i))
	}
	r := rand.New(rand.NewPCG(seed, 99))
	numeric := func(p *Param, j int, eps float32) float64 {
		orig := p.Data[j]
		p.Data[j] = orig + eps
		lp := run()
		p.Data[j] = orig - eps
		lm := run()
		p.Data[j] = orig
		return (lp - lm) / (2 * float64(eps))
	}
	checked, kinks := 0, 0
	for i, p := range m.Params {
		if p.Buffer {
			continue // no gradient: its slot holds the buffer
		}
		for trial := 0; trial < 6; trial++ {
			j := r.IntN(len(p.Data))
			// Two step sizes: where they disagree the difference crosses a
			// kink (ReLU at 0, a max-pool switch) and says nothing.
			n1, n2 := numeric(p, j, 2e-3), numeric(p, j, 1e-3)
			if math.Abs(n1-n2) > 5e-4+0.05*math.Abs(n2) {
				kinks++
				continue
			}
			checked++
			got := float64(grads[i][j])
			require.InDelta(t, n2, got, 5e-4+0.02*math.Abs(n2), "%s[%d]: numeric %g, analytic %g", p.Name, j, n2, got)
		}
	}
	require.Greater(t, checked, 4*kinks, "too many entries sit on kinks (%d of %d) for the check to mean much", kinks, checked+kinks)
}

func TestGradientsMatchFiniteDifferences(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
	}{
		{"mlp-relu", Spec{Kind: "mlp", Hidden: []int{12, 9}, InH: 6, InW: 5}},
		{"mlp-tanh-dropout", Spec{Kind: "mlp", Hidden: []int{10}, Activation: "tanh", Dropout: 0.3, InH: 4, InW: 4}},
		{"mlp-sigmoid", Spec{Kind: "mlp", Hidden: []int{7}, Activation: "sigmoid", InH: 3, InW: 5, Classes: 4}},
		{"cnn-relu", Spec{Kind: "cnn", Hidden: []int{8}, InH: 12, InW: 14}},
		{"cnn-tanh-3ch", Spec{Kind: "cnn", Hidden: []int{6}, Activation: "tanh", InC: 3, InH: 13, InW: 12, Classes: 3}},
		{"mlp-gelu-smoothed", Spec{Kind: "mlp", Hidden: []int{9}, Activation: "gelu", LabelSmoothing: 0.1, InH: 4, InW: 5}},
		{"cnn-silu", Spec{Kind: "cnn", Hidden: []int{6}, Activation: "silu", InH: 12, InW: 12, Classes: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(tc.spec, 3)
			require.NoError(t, err)
			prog := labelledProgram(t, m, 5, 1, 2, m.Spec.Classes)
			gradCheck(t, m, prog, 11)
		})
	}
}

func TestOpSetIsClosed(t *testing.T) {
	known := map[Kind]bool{}
	for _, k := range []Kind{OpLinear, OpMatMul, OpSumRows, OpConv2D, OpConv2DGradInput, OpConv2DGradW, OpConv2DGradB,
		OpMaxPool2D, OpMaxPool2DGrad, OpReLU, OpReLUGrad, OpTanh, OpTanhGrad, OpSigmoid, OpSigmoidGrad, OpMul, OpReshape,
		OpSoftmaxCE, OpSoftmaxCEGrad, OpDot, OpDotGrad} {
		known[k] = true
	}
	for _, spec := range []Spec{{Kind: "mlp", Dropout: 0.5}, {Kind: "cnn", Activation: "sigmoid", Dropout: 0.1}} {
		m, err := New(spec, 1)
		require.NoError(t, err)
		for _, train := range []bool{true, false} {
			prog, err := m.Program(4, train)
			require.NoError(t, err)
			ops, err := prog.Ops()
			require.NoError(t, err)
			require.NotEmpty(t, ops)
			for _, k := range ops {
				require.True(t, known[k], "op %s is not in the documented op set", k)
			}
			if !train {
				require.NotContains(t, ops, OpMul, "eval programs apply no dropout")
				require.NotContains(t, ops, OpSoftmaxCEGrad)
			}
		}
	}
}

// directConv is the textbook convolution, the reference for im2col+GEMM.
func directConv(g convGeom, x, w, b []float32) []float32 {
	y := make([]float32, g.N*g.K*g.OH*g.OW)
	for n := 0; n < g.N; n++ {
		for k := 0; k < g.K; k++ {
			for oy := 0; oy < g.OH; oy++ {
				for ox := 0; ox < g.OW; ox++ {
					s := float64(b[k])
					for c := 0; c < g.C; c++ {
						for i := 0; i < g.KH; i++ {
							for j := 0; j < g.KW; j++ {
								iy, ix := oy*g.Stride-g.Pad+i, ox*g.Stride-g.Pad+j
								if iy >= 0 && iy < g.H && ix >= 0 && ix < g.W {
									s += float64(x[((n*g.C+c)*g.H+iy)*g.W+ix]) * float64(w[((k*g.C+c)*g.KH+i)*g.KW+j])
								}
							}
						}
					}
					y[((n*g.K+k)*g.OH+oy)*g.OW+ox] = float32(s)
				}
			}
		}
	}
	return y
}

func TestConv2DMatchesDirectConvolution(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, tc := range []struct{ n, c, h, w, k, kh, stride, pad int }{
		{2, 1, 7, 6, 3, 3, 1, 1}, {3, 2, 9, 9, 4, 5, 1, 2}, {1, 3, 8, 10, 2, 3, 2, 0}, {2, 2, 5, 5, 1, 5, 1, 0},
	} {
		xs, ws := tensor.Shape{tc.n, tc.c, tc.h, tc.w}, tensor.Shape{tc.k, tc.c, tc.kh, tc.kh}
		x, w, b := make([]float32, xs.TotalSize()), make([]float32, ws.TotalSize()), make([]float32, tc.k)
		fill(r, x, 1)
		fill(r, w, 1)
		fill(r, b, 1)
		op := newConv2D(tc.stride, tc.pad, true)
		out, err := op.Do(tensor.New(tensor.WithShape(xs...), tensor.WithBacking(x)),
			tensor.New(tensor.WithShape(ws...), tensor.WithBacking(w)), tensor.New(tensor.WithShape(tc.k), tensor.WithBacking(b)))
		require.NoError(t, err)
		g, err := newGeom(xs, ws, tc.stride, tc.pad)
		require.NoError(t, err)
		want := directConv(g, x, w, b)
		got := f32(out)
		require.Len(t, got, len(want))
		for i := range want {
			require.InDelta(t, want[i], got[i], 1e-4, "case %+v element %d", tc, i)
		}
	}
}

func TestMaxPoolForwardAndRouting(t *testing.T) {
	x := []float32{
		1, 5, 2, 2,
		3, 4, 9, 0,
		-1, -2, 7, 7,
		-3, -4, 7, 1,
	}
	xv := tensor.New(tensor.WithShape(1, 1, 4, 4), tensor.WithBacking(x))
	op := newMaxPool(2)
	y, err := op.Do(xv)
	require.NoError(t, err)
	require.Equal(t, []float32{5, 9, -1, 7}, f32(y))
	gop := &maxPoolGradOp{base: newBase(OpMaxPool2DGrad, nil, tt(4), tt(4), tt(4), tt(4)), k: 2}
	dy := tensor.New(tensor.WithShape(1, 1, 2, 2), tensor.WithBacking([]float32{10, 20, 30, 40}))
	dx, err := gop.Do(xv, y, dy)
	require.NoError(t, err)
	// Ties (the three 7s) route to the first maximum only, like PyTorch.
	require.Equal(t, []float32{
		0, 10, 0, 0,
		0, 0, 20, 0,
		30, 0, 40, 0,
		0, 0, 0, 0,
	}, f32(dx))
}

func TestSoftmaxCrossEntropyIsStableForHugeLogits(t *testing.T) {
	logits := tensor.New(tensor.WithShape(2, 3), tensor.WithBacking([]float32{1e30, -1e30, 0, 5000, 5000, -5000}))
	labels := tensor.New(tensor.WithShape(2), tensor.WithBacking([]float32{1, 0}))
	loss, err := newSoftmaxCE().Do(logits, labels)
	require.NoError(t, err)
	l := float64(scalarOf(loss))
	require.False(t, math.IsNaN(l) || math.IsInf(l, 0), "loss %v", l)
	// Row 0 puts all mass on class 0 and the label is 1: loss 2e30 (in float32, ~2e30/2 averaged).
	require.InDelta(t, (2e30+math.Log(2))/2, l, 1e24)
	one := G.NewF32(1)
	d, err := newSoftmaxCEGrad().Do(logits, labels, one)
	require.NoError(t, err)
	for _, v := range f32(d) {
		require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0))
	}
	// Row 1: softmax = (.5,.5,0), label 0: grad = ((.5-1)/2, .5/2, 0).
	require.InDeltaSlice(t, []float32{-0.25, 0.25, 0}, f32(d)[3:], 1e-6)
}

func TestSoftmaxCrossEntropyRejectsBadLabels(t *testing.T) {
	logits := tensor.New(tensor.WithShape(1, 3), tensor.WithBacking([]float32{1, 2, 3}))
	_, err := newSoftmaxCE().Do(logits, tensor.New(tensor.WithShape(1), tensor.WithBacking([]float32{3})))
	require.ErrorContains(t, err, "outside [0,3)")
}

func TestInitIsDeterministicAndPyTorchScaled(t *testing.T) {
	a, err := New(Spec{Kind: "cnn"}, 42)
	require.NoError(t, err)
	b, err := New(Spec{Kind: "cnn"}, 42)
	require.NoError(t, err)
	c, err := New(Spec{Kind: "cnn"}, 43)
	require.NoError(t, err)
	names := []string{}
	for i, p := range a.Params {
		names = append(names, p.Name)
		require.Equal(t, p.Data, b.Params[i].Data, p.Name)
		require.NotEqual(t, p.Data, c.Params[i].Data, p.Name)
		fanIn := map[string]int{"conv1": 25, "conv2": 16 * 25, "fc1": 800, "fc2": 128}[strings.Split(p.Name, ".")[0]]
		require.Equal(t, fmt.Sprintf("uniform(±%g)", 1/math.Sqrt(float64(fanIn))), p.Init.String(), p.Name)
		bound := float32(1 / math.Sqrt(float64(fanIn)))
		for _, v := range p.Data {
			require.LessOrEqual(t, float32(math.Abs(float64(v))), bound)
		}
	}
	require.Equal(t, []string{"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}, names)
	require.Equal(t, []int{16, 1, 5, 5}, a.Param("conv1.weight").Shape)
	require.Equal(t, []int{128, 800}, a.Param("fc1.weight").Shape)
	m, err := New(Spec{Kind: "mlp"}, 1)
	require.NoError(t, err)
	require.Equal(t, 784*256+256+256*10+10, m.NumParams())
}

func TestBadSpecsAreErrors(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Kind: "densenet"}, "unknown model"},
		{Spec{Kind: "resnet", Depth: 21}, "6n+2"},
		{Spec{Kind: "resnet", Depth: 2}, "6n+2"},
		{Spec{Kind: "mlp", Activation: "swish2"}, "unknown activation"},
		{Spec{Kind: "mlp", LabelSmoothing: 1}, "label smoothing"},
		{Spec{Kind: "mlp", Dropout: 1}, "dropout"},
		{Spec{Kind: "mlp", Hidden: []int{0}}, "hidden width"},
		{Spec{Kind: "cnn", InH: 8, InW: 8}, "at least 12x12"},
	} {
		_, err := New(tc.spec, 1)
		require.ErrorContains(t, err, tc.want)
	}
	m, err := New(Spec{Kind: "mlp"}, 1)
	require.NoError(t, err)
	_, err = m.Program(0, true)
	require.Error(t, err)
}

func TestTrainingStepAllocatesLittle(t *testing.T) {
	m, err := New(Spec{Kind: "cnn"}, 1)
	require.NoError(t, err)
	prog, err := m.Program(8, true)
	require.NoError(t, err)
	_, err = prog.Run(nil)
	require.NoError(t, err)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < 10; i++ {
		_, err = prog.Run(nil)
		require.NoError(t, err)
	}
	runtime.ReadMemStats(&after)
	// Gorgonia's tape machine allocates a little bookkeeping per run (input
	// lists, a goroutine, channels); no op allocates its output again, so a
	// step allocates far less than its activations (~1 MB here).
	perRun := (after.TotalAlloc - before.TotalAlloc) / 10
	require.Less(t, perRun, uint64(64<<10), "bytes allocated per training step")
}

func TestProgramCacheKeepsTheRecentOnes(t *testing.T) {
	m, err := New(Spec{Kind: "mlp", Hidden: []int{8}}, 1)
	require.NoError(t, err)
	first, err := m.Program(1, true)
	require.NoError(t, err)
	for b := 2; b <= MaxPrograms+3; b++ {
		_, err := m.Program(b, true)
		require.NoError(t, err)
		again, err := m.Program(1, true) // keep batch 1 in use
		require.NoError(t, err)
		require.Same(t, first, again)
	}
	require.Len(t, m.progs, MaxPrograms)
	p2, err := m.Program(2, true) // long unused: compiled anew
	require.NoError(t, err)
	require.Equal(t, 2, p2.Batch)
	require.Len(t, m.progs, MaxPrograms)
}

func TestProgramBytesGrowWithTheBatch(t *testing.T) {
	m, err := New(Spec{Kind: "cnn"}, 1)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(1, 2))
	var per []float64
	for _, b := range []int{16, 64} {
		p, err := m.Program(b, true)
		require.NoError(t, err)
		before := p.Bytes()
		_, err = p.Run(rng)
		require.NoError(t, err)
		after := p.Bytes()
		require.Greater(t, after, before, "the first run allocates activations and scratch buffers")
		// At least the input, the first convolution's output and its
		// gradient are held per sample.
		require.Greater(t, after, int64(b)*4*(28*28+2*16*28*28))
		per = append(per, p.BytesPerSample())
		require.Less(t, p.BytesPerSample()*float64(b), float64(after), "parameter gradients are not per sample")
	}
	require.InDelta(t, per[0], per[1], 0.01*per[1], "bytes per sample do not depend on the batch: %v", per)
}

func TestReleaseDropsOneProgram(t *testing.T) {
	m, err := New(Spec{Kind: "mlp", Hidden: []int{8}}, 1)
	require.NoError(t, err)
	a, err := m.Program(4, true)
	require.NoError(t, err)
	_, err = m.Program(5, true)
	require.NoError(t, err)
	e, err := m.Program(4, false)
	require.NoError(t, err)
	m.Release(4, true)
	m.Release(9, true) // not compiled: nothing happens
	require.Len(t, m.progs, 2)
	require.Len(t, m.used, 2)
	again, err := m.Program(4, true)
	require.NoError(t, err)
	require.NotSame(t, a, again, "compiled anew")
	same, err := m.Program(4, false)
	require.NoError(t, err)
	require.Same(t, e, same, "the eval program of that size stays")
}

// A program compiled after Release reuses the released one's buffers (no
// fresh memory for a batch a little larger or smaller, as the load
// balancer asks), computes exactly what a program with fresh buffers
// computes, and the released program refuses to run.
func TestReleasedBuffersServeTheNextProgram(t *testing.T) {
	spec := Spec{Kind: "cnn", Dropout: 0.25}
	m, err := New(spec, 1)
	require.NoError(t, err)
	ref, err := New(spec, 1) // fresh buffers only
	require.NoError(t, err)
	run := func(m *Model, b int) (*Program, float32, [][]float32) {
		p, err := m.Program(b, true)
		require.NoError(t, err)
		r := rand.New(rand.NewPCG(uint64(b), 1))
		fill(r, p.X, 1)
		for i := range p.Y {
			p.Y[i] = float32(i % 10)
		}
		loss, err := p.Run(rand.New(rand.NewPCG(9, uint64(b))))
		require.NoError(t, err)
		grads := make([][]float32, len(m.Params))
		for i := range grads {
			grads[i] = slices.Clone(p.Grad(i))
		}
		return p, loss, grads
	}
	old, _, _ := run(m, 85)
	for _, b := range []int{86, 84, 43, 44} {
		before := m.pool.fresh
		m.Release(old.Batch, true)
		require.Positive(t, m.pool.freeBytes(), "the released buffers wait in the pool")
		var loss float32
		var grads [][]float32
		old, loss, grads = run(m, b)
		require.Equal(t, before, m.pool.fresh, "batch %d after release: no fresh buffers", b)
		require.Zero(t, m.pool.freeBytes(), "what the first run did not take is dropped")
		_, want, wantGrads := run(ref, b)
		require.Equal(t, want, loss, "batch %d: the loss with reused buffers", b)
		require.Equal(t, wantGrads, grads, "batch %d: the gradients with reused buffers", b)
	}
	gone := old
	m.Release(gone.Batch, true)
	_, err = gone.Run(nil)
	require.ErrorContains(t, err, "released")
}

// Reserve makes a program's buffers hold room for a larger batch: after
// Release, a program of up to that batch takes them and allocates
// nothing; without the reserve it allocates afresh.
func TestReserveMakesRoomForALargerShare(t *testing.T) {
	for _, reserve := range []float64{0, 1.5} {
		m, err := New(Spec{Kind: "cnn"}, 1)
		require.NoError(t, err)
		if reserve > 0 {
			m.Reserve(reserve)
		}
		p, err := m.Program(64, true)
		require.NoError(t, err)
		_, err = p.Run(nil)
		require.NoError(t, err)
		before := m.pool.fresh
		m.Release(64, true)
		p, err = m.Program(85, true)
		require.NoError(t, err)
		_, err = p.Run(nil)
		require.NoError(t, err)
		if reserve > 0 {
			require.Equal(t, before, m.pool.fresh, "64 -> 85 within the reserve: no fresh buffers")
		} else {
			require.Greater(t, m.pool.fresh, before, "64 -> 85 without a reserve outgrows the buffers")
		}
	}
}

// freeBytes is the memory the pool holds.
func (p *bufPool) freeBytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for _, b := range p.free {
		n += 4 * int64(cap(b))
	}
	return n
}

// The footprint estimated from the shapes is the model's parameter count
// exactly, and a lower bound of what a compiled training program holds per
// sample (within a factor: it is meant to refuse runs off by orders of
// magnitude, never a run that fits).
func TestEstimateMatchesBuiltModels(t *testing.T) {
	for _, spec := range []Spec{
		{Kind: "mlp"}, {Kind: "mlp", Hidden: []int{512, 128, 64}, Dropout: 0.2},
		{Kind: "cnn"}, {Kind: "cnn", Hidden: []int{64}, Dropout: 0.5, InC: 3, InH: 32, InW: 32},
	} {
		fp, err := spec.Estimate()
		require.NoError(t, err)
		m, err := New(spec, 1)
		require.NoError(t, err)
		require.Equal(t, float64(m.NumParams()), fp.Params, "%+v", spec)
		for _, train := range []bool{true, false} {
			p, err := m.Program(32, train)
			require.NoError(t, err)
			_, err = p.Run(rand.New(rand.NewPCG(1, 2)))
			require.NoError(t, err)
			per := fp.EvalFloatsPerSample
			if train {
				per = fp.TrainFloatsPerSample
			}
			got := p.BytesPerSample() / 4
			require.LessOrEqual(t, per, got, "%+v train=%v: the estimate must not exceed the program", spec, train)
			require.Greater(t, per, got/4, "%+v train=%v: the estimate is far below the program (%v vs %v)", spec, train, per, got)
		}
	}
	_, err := Spec{Kind: "resmlp"}.Estimate()
	require.ErrorIs(t, err, ErrUnknownModel)
	fp, err := Spec{Kind: "mlp", Hidden: []int{100000000}}.Estimate()
	require.NoError(t, err)
	require.Greater(t, fp.Params, 7.8e10)
}

// TestSamePaddingIm2colMatchesTheGeneralOne: the one-run im2col and
// col2im of stride-1 "same" convolutions equal the row-by-row ones.
func TestSamePaddingIm2colMatchesTheGeneralOne(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct{ c, h, w, k, pad int }{
		{3, 7, 6, 3, 1}, {2, 9, 8, 5, 2}, {1, 28, 28, 3, 1}, {4, 1, 5, 3, 1}, {2, 3, 1, 3, 1},
	} {
		g, err := newGeom(tensor.Shape{1, tc.c, tc.h, tc.w}, tensor.Shape{2, tc.c, tc.k, tc.k}, 1, tc.pad)
		require.NoError(t, err)
		require.True(t, g.same(), "%+v", tc)
		x := make([]float32, g.xSize())
		fill(r, x, 1)
		want, got := make([]float32, g.ckk()*g.ohw()), make([]float32, g.ckk()*g.ohw())
		fill(r, got, 9) // garbage: every value must be written
		im2col(g, x, want)
		im2colSame(g, x, got)
		require.Equal(t, want, got, "im2col %+v", tc)
		cols := make([]float32, len(want))
		fill(r, cols, 1)
		wantDX, gotDX := make([]float32, len(x)), make([]float32, len(x))
		fill(r, gotDX, 9)
		col2im(g, slices.Clone(cols), wantDX)
		col2imSame(g, cols, gotDX)
		for i := range wantDX {
			require.InDelta(t, wantDX[i], gotDX[i], 1e-5, "col2im %+v [%d]", tc, i)
		}
	}
}

// kern's direct kernels (where the CPU has them) compute 3x3 convolutions
// of stride 1 and padding 1 on planes 12 and more wide (kern.Conv3) and
// strided ones and those of 5x5 windows and more over several channels
// (kern.Conv): forward, input gradient and weight gradient
// agree with the im2col route within float32 rounding, and a batch of
// more samples than a group of the weight gradient's partial sums gives
// the same bits on one CPU as on several.
func TestNativeConvMatchesIm2col(t *testing.T) {
	if !nativeConv {
		t.Skip("kern's native kernels are not available here: " + kern.Why())
	}
	r := rand.New(rand.NewPCG(7, 7))
	for _, tc := range []struct{ k, stride, pad, h, w int }{{3, 1, 1, 13, 14}, {3, 2, 1, 13, 14}, {1, 2, 0, 13, 14}, {3, 1, 1, 7, 7}, {3, 1, 1, 5, 3}, {5, 1, 0, 14, 14}, {5, 1, 2, 9, 11}} {
		xs, ws := tensor.Shape{11, 6, tc.h, tc.w}, tensor.Shape{5, 6, tc.k, tc.k}
		g, err := newGeom(xs, ws, tc.stride, tc.pad)
		require.NoError(t, err)
		require.True(t, g.native3() || g.nativeK() || g.wide() > 0, "%+v takes a native kernel", tc)
		ys := tensor.Shape{11, 5, g.OH, g.OW}
		x, w, dy := make([]float32, xs.TotalSize()), make([]float32, ws.TotalSize()), make([]float32, ys.TotalSize())
		fill(r, x, 1)
		fill(r, w, 1)
		fill(r, dy, 1)
		run := func() (y, dx, dw []float32) {
			fwd := newConv2DNoBias(tc.stride, tc.pad, true)
			xv, wv := tensor.New(tensor.WithShape(xs...), tensor.WithBacking(x)), tensor.New(tensor.WithShape(ws...), tensor.WithBacking(w))
			out, err := fwd.Do(xv, wv)
			require.NoError(t, err)
			dyv := tensor.New(tensor.WithShape(ys...), tensor.WithBacking(dy))
			gi := &conv2dGradInputOp{base: newBase(OpConv2DGradInput, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, xShape: xs}
			dxv, err := gi.Do(dyv, wv)
			require.NoError(t, err)
			gw := &conv2dGradWOp{base: newBase(OpConv2DGradW, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, wShape: ws}
			dwv, err := gw.Do(xv, dyv)
			require.NoError(t, err)
			return slices.Clone(f32(out)), slices.Clone(f32(dxv)), slices.Clone(f32(dwv))
		}
		y, dx, dw := run()
		if g.native3() || g.wide() > 0 {
			// The two gradient ops of one convolution, linked as SymDiff
			// links them: whichever runs first computes both in one pass,
			// with the bits of the separate passes.
			for _, wFirst := range []bool{false, true} {
				fwd := newConv2DNoBias(tc.stride, tc.pad, true)
				xv, wv := tensor.New(tensor.WithShape(xs...), tensor.WithBacking(x)), tensor.New(tensor.WithShape(ws...), tensor.WithBacking(w))
				dyv := tensor.New(tensor.WithShape(ys...), tensor.WithBacking(dy))
				gi := &conv2dGradInputOp{base: newBase(OpConv2DGradInput, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, xShape: xs}
				gw := &conv2dGradWOp{base: newBase(OpConv2DGradW, fwd.attrs, tt(4), tt(4), tt(4)), fwd: fwd, wShape: ws, gi: gi}
				gi.gw = gw
				for step := 0; step < 2; step++ {
					_, err := fwd.Do(xv, wv)
					require.NoError(t, err)
					require.False(t, gw.fusable(g, x[:1], dy, w), "another X is not the forward's")
					var dxv, dwv G.Value
					if wFirst {
						dwv, err = gw.Do(xv, dyv)
						require.NoError(t, err)
						require.Equal(t, fwd.runs, gi.done, "the weight gradient computed dX too")
						dxv, err = gi.Do(dyv, wv)
					} else {
						dxv, err = gi.Do(dyv, wv)
						require.NoError(t, err)
						require.Equal(t, fwd.runs, gw.done, "the input gradient computed dW too")
						dwv, err = gw.Do(xv, dyv)
					}
					require.NoError(t, err)
					require.Equal(t, dx, f32(dxv), "%+v: fused input gradient, step %d", tc, step)
					require.Equal(t, dw, f32(dwv), "%+v: fused weight gradient, step %d", tc, step)
				}
			}
		}
		prev := runtime.GOMAXPROCS(1)
		y1, dx1, dw1 := run()
		runtime.GOMAXPROCS(prev)
		require.Equal(t, y, y1, "%+v: forward on one CPU", tc)
		require.Equal(t, dx, dx1, "%+v: input gradient on one CPU", tc)
		require.Equal(t, dw, dw1, "%+v: weight gradient on one CPU", tc)
		nativeConv = false
		wy, wdx, wdw := run()
		nativeConv = true
		for _, c := range []struct {
			name      string
			got, want []float32
			tol       float64
		}{{"forward", y, wy, 1e-5}, {"input gradient", dx, wdx, 1e-5}, {"weight gradient", dw, wdw, 1e-4}} {
			for i := range c.want {
				require.InDelta(t, c.want[i], c.got[i], c.tol*(1+math.Abs(float64(c.want[i]))), "%+v: %s [%d]", tc, c.name, i)
			}
		}
	}
}

// A BatchNorm's bias gradient is the channels' Σ dY that its other
// gradient ops took (when they ran first): the same bits as summing dY
// again.
func TestBatchNormBiasGradientReusesTheSums(t *testing.T) {
	m, err := New(Spec{Kind: "resnet", Depth: 8, InH: 12, InW: 12}, 1)
	require.NoError(t, err)
	prog := labelledProgram(t, m, 6, 3, 3, 10)
	grads := func() [][]float32 {
		_, err := prog.Run(nil)
		require.NoError(t, err)
		var gs [][]float32
		for i, p := range m.Params {
			if !p.Buffer { // a buffer's slot is the buffer, which moves every run
				gs = append(gs, slices.Clone(prog.Grad(i)))
			}
		}
		return gs
	}
	before := betaFromSums.Load()
	with := grads()
	hits := betaFromSums.Load() - before
	t.Logf("%d bias gradients taken from BatchNorm's sums", hits)
	require.Positive(t, hits)
	reuseBNSums = false
	defer func() { reuseBNSums = true }()
	without := grads()
	require.Equal(t, hits, betaFromSums.Load()-before, "none taken with the reuse off")
	require.Equal(t, without, with, "the same gradients, bit for bit")
}
