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

// TestStagesMatchTheCPU: every stage of the MLP and the CNN cut into 2
// and 3 pipeline stages, compiled for the device with only its own
// parameters there, gives graph/'s CPU stage programs' outputs, loss,
// parameter gradients and input gradient (relative error at most 1e-4),
// for training and evaluation, on fresh random inputs and upstream
// gradients, with every result poisoned before each run.
func TestStagesMatchTheCPU(t *testing.T) {
	specs := []graph.Spec{
		{Kind: "mlp", InC: 1, InH: 8, InW: 8, Classes: 10, Hidden: []int{32, 24, 16}, Activation: "relu"},
		{Kind: "cnn", InC: 1, InH: 16, InW: 16, Classes: 10, Hidden: []int{24}},
	}
	const n = 6
	for _, mk := range devices {
		dev := mk(t)
		for _, spec := range specs {
			for _, of := range []int{2, 3} {
				m, err := graph.New(spec, 5)
				require.NoError(t, err)
				stages, err := m.Stages(of)
				require.NoError(t, err)
				rng := rand.New(rand.NewPCG(uint64(of), 7))
				for _, s := range stages {
					params, err := UploadParamsOf(dev, m, s.Params)
					require.NoError(t, err)
					for _, train := range []bool{true, false} {
						cp, err := s.Program(n, train)
						require.NoError(t, err)
						dp, err := CompileStage(dev, cp, params, device.FP32)
						require.NoError(t, err, "%s stage %d of %d", spec.Kind, s.Index, of)
						for rep := range 2 {
							fill := func(v []float32) []float32 {
								for i := range v {
									v[i] = float32(rng.NormFloat64())
								}
								return v
							}
							fill(cp.X)
							var y, g []float32
							if cp.Y != nil {
								for i := range cp.Y {
									cp.Y[i] = float32(rng.IntN(spec.Classes))
								}
								y = cp.Y
							}
							if cp.G != nil {
								g = fill(cp.G)
							}
							want, err := cp.Run(nil)
							require.NoError(t, err)
							poison(t, dev, dp.Out())
							for i := range s.Params {
								if train {
									poison(t, dev, dp.Grad(i))
								}
							}
							if dp.DX().Buf != nil {
								poison(t, dev, dp.DX())
							}
							got, err := dp.RunStage(cp.X, y, g, 1, uint64(rep))
							require.NoError(t, err)
							what := func(v string) string {
								return fmt.Sprintf("%s %s of stage %d of %d (training %v)", spec.Kind, v, s.Index, of, train)
							}
							require.InDelta(t, want, got, 1e-4*max(1, float64(want)), what("loss"))
							require.LessOrEqual(t, maxRelDiff(read(t, dev, dp.Out()), cp.Out()), 1e-4, what("output"))
							if !train {
								continue
							}
							for i := range s.Params {
								require.LessOrEqual(t, maxRelDiff(read(t, dev, dp.Grad(i)), cp.Grad(i)), 1e-4, what(m.Params[s.Params[i]].Name+"'s gradient"))
							}
							if s.Index > 0 {
								require.NotNil(t, dp.DX().Buf)
								require.LessOrEqual(t, maxRelDiff(read(t, dev, dp.DX()), cp.DX()), 1e-4, what("input gradient"))
							} else {
								require.Nil(t, dp.DX().Buf, "the first stage's input is data")
							}
						}
						dp.Free()
					}
					// The other stages' parameters are not here.
					for _, o := range stages {
						if o != s {
							op, err := o.Program(n, false)
							require.NoError(t, err)
							_, err = CompileStage(dev, op, params, device.FP32)
							require.ErrorContains(t, err, "not on the device")
						}
					}
					params.Free()
				}
			}
		}
	}
}

// TestStageRunChecksItsInputs: a stage's program names what is missing or
// the wrong size instead of reading past a buffer.
func TestStageRunChecksItsInputs(t *testing.T) {
	m, err := graph.New(graph.Spec{Kind: "mlp", InC: 1, InH: 4, InW: 4, Classes: 3, Hidden: []int{8, 8}}, 1)
	require.NoError(t, err)
	stages, err := m.Stages(2)
	require.NoError(t, err)
	params, err := UploadParams(device.Host{}, m)
	require.NoError(t, err)
	defer params.Free()
	first, err := stages[0].Program(2, true)
	require.NoError(t, err)
	dp, err := CompileStage(device.Host{}, first, params, device.FP32)
	require.NoError(t, err)
	defer dp.Free()
	_, err = dp.RunStage(first.X, nil, nil, 0, 0)
	require.ErrorContains(t, err, "an output gradient of 0 values for a program that takes 16")
	_, err = dp.RunStage(first.X, []float32{0, 1}, first.G, 0, 0)
	require.ErrorContains(t, err, "2 labels for a program of batch 2 that takes 0")
	last, err := stages[1].Program(2, true)
	require.NoError(t, err)
	lp, err := CompileStage(device.Host{}, last, params, device.FP32)
	require.NoError(t, err)
	defer lp.Free()
	_, err = lp.RunStage(last.X, []float32{0, 3}, nil, 0, 0)
	require.ErrorContains(t, err, "label 3 of sample 1 is not a class of this model (0 to 2)")
	_, err = lp.RunStage(last.X, []float32{0, 2}, nil, 0, 0)
	require.NoError(t, err)
}

// poison fills a device tensor with NaN.
func poison(t *testing.T, dev device.Device, v Tensor) {
	t.Helper()
	nan := make([]float32, v.Size())
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	require.NoError(t, dev.Write(v.Buf, nan))
}

// read downloads a device tensor.
func read(t *testing.T, dev device.Device, v Tensor) []float32 {
	t.Helper()
	out := make([]float32, v.Size())
	require.NoError(t, dev.Read(out, v.Buf))
	return out
}

// TestStageForwardKeepsTheMasks: on a device, a stage's training forward
// pass (graph.Stage.ForwardProgram) and its training program draw the same
// dropout masks from the same seed and stream, so the output sent on is
// the one back-propagated through; another stream drops other units.
func TestStageForwardKeepsTheMasks(t *testing.T) {
	for _, mk := range devices {
		dev := mk(t)
		m, err := graph.New(graph.Spec{Kind: "mlp", InC: 1, InH: 4, InW: 4, Classes: 4, Hidden: []int{64, 32}, Dropout: 0.5}, 2)
		require.NoError(t, err)
		stages, err := m.Stages(2)
		require.NoError(t, err)
		params, err := UploadParamsOf(dev, m, stages[0].Params)
		require.NoError(t, err)
		defer params.Free()
		fp, err := stages[0].ForwardProgram(8)
		require.NoError(t, err)
		tp, err := stages[0].Program(8, true)
		require.NoError(t, err)
		fe, err := CompileStage(dev, fp, params, device.FP32)
		require.NoError(t, err)
		defer fe.Free()
		te, err := CompileStage(dev, tp, params, device.FP32)
		require.NoError(t, err)
		defer te.Free()
		require.NotEmpty(t, fe.masks, "the stage has dropout")
		x := make([]float32, len(fp.X))
		for i := range x {
			x[i] = float32(i%7) - 3
		}
		g := make([]float32, len(tp.G))
		_, err = fe.RunStage(x, nil, nil, 5, 11)
		require.NoError(t, err)
		fwd := read(t, dev, fe.Out())
		_, err = te.RunStage(x, nil, g, 5, 11)
		require.NoError(t, err)
		require.Equal(t, fwd, read(t, dev, te.Out()), "the same masks")
		_, err = fe.RunStage(x, nil, nil, 5, 12)
		require.NoError(t, err)
		require.NotEqual(t, fwd, read(t, dev, fe.Out()), "another stream, other masks")
	}
}
