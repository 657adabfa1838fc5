package graph

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// pipelineStep computes the gradient of one global batch through the
// stages, micro-batch by micro-batch (GPipe: all forwards, then all
// backwards, each stage recomputing its forward from its stored input),
// and returns it per model parameter.
func pipelineStep(t *testing.T, m *Model, stages []*Stage, x, y []float32, batch, micro int) [][]float32 {
	t.Helper()
	grads := make([][]float32, len(m.Params))
	for i, p := range m.Params {
		grads[i] = make([]float32, p.Size())
	}
	in := m.InputSize()
	for lo := 0; lo < batch; lo += micro {
		mb := min(micro, batch-lo)
		scale := float32(mb) / float32(batch)
		inputs := make([][]float32, len(stages))
		prev := x[lo*in : (lo+mb)*in]
		for k, s := range stages { // forward
			inputs[k] = slices.Clone(prev)
			if k == len(stages)-1 {
				break
			}
			fp, err := s.Program(mb, false)
			require.NoError(t, err)
			copy(fp.X, prev)
			_, err = fp.Run(nil)
			require.NoError(t, err)
			prev = slices.Clone(fp.Out())
		}
		var upstream []float32
		for k := len(stages) - 1; k >= 0; k-- { // backward
			s := stages[k]
			tp, err := s.Program(mb, true)
			require.NoError(t, err)
			copy(tp.X, inputs[k])
			if tp.Y != nil {
				copy(tp.Y, y[lo:lo+mb])
			} else {
				copy(tp.G, upstream)
			}
			_, err = tp.Run(nil)
			require.NoError(t, err)
			for j, pi := range s.Params {
				for e, v := range tp.Grad(j) {
					grads[pi][e] += scale * v
				}
			}
			if k > 0 {
				upstream = slices.Clone(tp.DX())
			}
		}
	}
	return grads
}

// TestPipelineEqualsOneProcess: 2 and 4 stages with micro-batches give the
// parameters of one process after 50 SGD steps.
func TestPipelineEqualsOneProcess(t *testing.T) {
	for _, tc := range []struct {
		spec          Spec
		stages, micro int
	}{
		{Spec{Kind: "mlp", Hidden: []int{32, 24, 16}, InH: 8, InW: 8}, 2, 4},
		{Spec{Kind: "mlp", Hidden: []int{32, 24, 16}, InH: 8, InW: 8}, 4, 3},
		{Spec{Kind: "cnn", Hidden: []int{16}, InH: 12, InW: 12}, 2, 5},
		{Spec{Kind: "cnn", Hidden: []int{16}, InH: 12, InW: 12}, 4, 8},
	} {
		t.Run(fmt.Sprintf("%s-%dstages", tc.spec.Kind, tc.stages), func(t *testing.T) {
			const batch, steps, lr = 16, 50, 0.05
			ref, err := New(tc.spec, 7)
			require.NoError(t, err)
			pipe, err := New(tc.spec, 7)
			require.NoError(t, err)
			stages, err := pipe.Stages(tc.stages)
			require.NoError(t, err)
			require.Len(t, stages, tc.stages)
			owned := 0
			for _, s := range stages {
				require.NotEmpty(t, s.Params)
				owned += len(s.Params)
			}
			require.Equal(t, len(pipe.Params), owned, "every parameter belongs to exactly one stage")
			r := rand.New(rand.NewPCG(3, 4))
			x := make([]float32, batch*ref.InputSize())
			y := make([]float32, batch)
			prog, err := ref.Program(batch, true)
			require.NoError(t, err)
			for step := 0; step < steps; step++ {
				fill(r, x, 1)
				for i := range y {
					y[i] = float32(r.IntN(ref.Spec.Classes))
				}
				copy(prog.X, x)
				copy(prog.Y, y)
				_, err := prog.Run(nil)
				require.NoError(t, err)
				for i, p := range ref.Params {
					for e, g := range prog.Grad(i) {
						p.Data[e] -= lr * g
					}
				}
				grads := pipelineStep(t, pipe, stages, x, y, batch, tc.micro)
				for i, p := range pipe.Params {
					for e, g := range grads[i] {
						p.Data[e] -= lr * g
					}
				}
			}
			d := 0.0
			for i, p := range ref.Params {
				for e, v := range p.Data {
					d = math.Max(d, math.Abs(float64(v-pipe.Params[i].Data[e])))
				}
			}
			t.Logf("max |Δ| after %d steps: %g", steps, d)
			require.Less(t, d, 1e-5)
		})
	}
}

func TestStagesRefuseTooMany(t *testing.T) {
	m, err := New(Spec{Kind: "mlp"}, 1)
	require.NoError(t, err)
	_, err = m.Stages(3)
	require.ErrorIs(t, err, ErrTooFewLayers)
	_, err = m.Stages(0)
	require.Error(t, err)
}

// TestStageForwardKeepsTheMasks: a stage's training forward pass
// (ForwardProgram) applies dropout, and its masks, drawn from the same
// random state as the training program's, are the training program's: the
// activations a pipeline sends on are those it back-propagates through.
// Programs are compiled once per batch size and mode.
func TestStageForwardKeepsTheMasks(t *testing.T) {
	m, err := New(Spec{Kind: "mlp", Hidden: []int{64, 32}, InH: 4, InW: 4, Dropout: 0.5}, 3)
	require.NoError(t, err)
	stages, err := m.Stages(2)
	require.NoError(t, err)
	s := stages[0]
	fp, err := s.ForwardProgram(8)
	require.NoError(t, err)
	tp, err := s.Program(8, true)
	require.NoError(t, err)
	ep, err := s.Program(8, false)
	require.NoError(t, err)
	again, err := s.ForwardProgram(8)
	require.NoError(t, err)
	require.Same(t, fp, again, "compiled once")
	require.NotSame(t, fp, ep)
	r := rand.New(rand.NewPCG(1, 2))
	fill(r, fp.X, 1)
	copy(tp.X, fp.X)
	copy(ep.X, fp.X)
	pcg := rand.NewPCG(0, 0)
	rng := rand.New(pcg)
	pcg.Seed(9, 4)
	_, err = fp.Run(rng)
	require.NoError(t, err)
	pcg.Seed(9, 4)
	_, err = tp.Run(rng)
	require.NoError(t, err)
	_, err = ep.Run(nil)
	require.NoError(t, err)
	require.Equal(t, tp.Out(), fp.Out(), "the same masks")
	require.NotEqual(t, ep.Out(), fp.Out(), "dropout is active in the forward pass")
	zeros := 0
	for _, v := range fp.Out() {
		if v == 0 {
			zeros++
		}
	}
	require.Greater(t, zeros, len(fp.Out())/4, "about half of the units dropped")
}
