package executor

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/graph/nn"
	"github.com/gotrain/gotrain/trainer/optim"
)

func batch(rng *rand.Rand, n, features, classes int) (x, y []float32) {
	x = make([]float32, n*features)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	y = make([]float32, n)
	for i := range y {
		y[i] = float32(rng.IntN(classes))
	}
	return x, y
}

func maxRelDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i]))/math.Max(1, math.Abs(float64(b[i]))))
	}
	return d
}

// TestTrainingMatchesTheCPU: the MLP and the CNN train for 8 steps on each
// device (forward, backward and the fused optimiser on the device) and end
// where graph/'s CPU programs with trainer/optim end; losses agree at every
// step.
func TestTrainingMatchesTheCPU(t *testing.T) {
	specs := []graph.Spec{
		{Kind: "mlp", InC: 1, InH: 8, InW: 8, Classes: 10, Hidden: []int{32, 16}, Activation: "tanh"},
		{Kind: "cnn", InC: 1, InH: 16, InW: 16, Classes: 10, Hidden: []int{24}},
		{Kind: "test-resmlp", InC: 1, InH: 8, InW: 8, Classes: 10},
	}
	opts := []optim.Config{{Name: "sgd", Momentum: 0.9, Nesterov: true, WeightDecay: 1e-4}, {Name: "adamw", WeightDecay: 0.01}, {Name: "adam"}}
	for _, mk := range devices {
		dev := mk(t)
		for _, spec := range specs {
			for _, oc := range opts {
				t.Run(dev.Name()+"/"+spec.Kind+"/"+oc.Name, func(t *testing.T) {
					cpu, err := graph.New(spec, 3)
					require.NoError(t, err)
					gm, err := graph.New(spec, 3)
					require.NoError(t, err)
					params, err := UploadParams(dev, gm)
					require.NoError(t, err)
					defer params.Free()
					const n = 12
					cp, err := cpu.Program(n, true)
					require.NoError(t, err)
					prog, err := gm.Program(n, true)
					require.NoError(t, err)
					dp, err := Compile(dev, prog, params, device.FP32)
					require.NoError(t, err)
					defer dp.Free()
					ops := make([]optim.Param, len(cpu.Params))
					for i, p := range cpu.Params {
						ops[i] = optim.Param{Name: p.Name, Data: p.Data, Grad: make([]float32, len(p.Data))}
					}
					copt, err := optim.New(oc, ops)
					require.NoError(t, err)
					dopt, err := NewOptimizer(dev, oc, params.T)
					require.NoError(t, err)
					defer dopt.Free()
					rng := rand.New(rand.NewPCG(1, 2))
					for step := range 8 {
						x, y := batch(rng, n, cpu.InputSize(), spec.Classes)
						copy(cp.X, x)
						copy(cp.Y, y)
						want, err := cp.Run(nil)
						require.NoError(t, err)
						for i := range ops {
							ops[i].Grad = cp.Grad(i)
						}
						copt.Step(ops, 0.01)
						got, err := dp.Run(x, y, 1, uint64(step))
						require.NoError(t, err)
						require.InDelta(t, want, got, 1e-4*math.Max(1, math.Abs(float64(want))), "step %d loss", step)
						require.NoError(t, dopt.Step(params.T, dp.Grads(), 0.01))
					}
					require.NoError(t, params.Download(gm))
					for i, p := range cpu.Params {
						d := maxRelDiff(gm.Params[i].Data, p.Data)
						require.LessOrEqual(t, d, 1e-4, "%s after 8 steps", p.Name)
					}
				})
			}
		}
	}
}

// TestDropoutOnTheDevice: masks come from the device RNG: the same stream
// gives the same loss, another stream another one, and the masks drop
// about p of the units.
func TestDropoutOnTheDevice(t *testing.T) {
	for _, mk := range devices {
		dev := mk(t)
		spec := graph.Spec{Kind: "mlp", InC: 1, InH: 8, InW: 8, Classes: 10, Hidden: []int{256}, Dropout: 0.5}
		m, err := graph.New(spec, 1)
		require.NoError(t, err)
		params, err := UploadParams(dev, m)
		require.NoError(t, err)
		defer params.Free()
		prog, err := m.Program(16, true)
		require.NoError(t, err)
		dp, err := Compile(dev, prog, params, device.FP32)
		require.NoError(t, err)
		defer dp.Free()
		require.Len(t, dp.masks, 1)
		x, y := batch(rand.New(rand.NewPCG(3, 4)), 16, m.InputSize(), 10)
		a, err := dp.Run(x, y, 9, 1)
		require.NoError(t, err)
		b, err := dp.Run(x, y, 9, 1)
		require.NoError(t, err)
		c, err := dp.Run(x, y, 9, 2)
		require.NoError(t, err)
		require.Equal(t, a, b)
		require.NotEqual(t, a, c)
		// Launch queues the same run without reading back; Loss waits.
		require.NoError(t, dp.Launch(x, y, 9, 1))
		l, err := dp.Loss()
		require.NoError(t, err)
		require.Equal(t, a, l)
		mask := make([]float32, dp.vals[dp.masks[0]].Size())
		require.NoError(t, dev.Read(mask, dp.vals[dp.masks[0]].Buf))
		zeros := 0
		for _, v := range mask {
			if v == 0 {
				zeros++
			} else {
				require.Equal(t, float32(2), v)
			}
		}
		require.InDelta(t, 0.5, float64(zeros)/float64(len(mask)), 0.05)

		// Bad labels are refused by name before anything runs.
		y[3] = 10
		_, err = dp.Run(x, y, 9, 3)
		require.ErrorContains(t, err, "label 10 of sample 3 is not a class of this model (0 to 9)")
	}
}

// TestFLOPs: the MLP's training step is 3 products per layer (forward, the
// input's gradient except at the first layer, the weight's gradient).
func TestFLOPs(t *testing.T) {
	m, err := graph.New(graph.Spec{Kind: "mlp", InC: 1, InH: 28, InW: 28, Classes: 10, Hidden: []int{256}}, 1)
	require.NoError(t, err)
	p, err := m.Program(64, true)
	require.NoError(t, err)
	l, err := p.Layout()
	require.NoError(t, err)
	mac := int64(64) * (784*256 + 256*10)
	want := 2 * (2*mac + 64*256*10) // forward and weight gradients of both layers, input gradient of the second
	require.Equal(t, want, FLOPs(l))
	e, err := m.Program(64, false)
	require.NoError(t, err)
	el, err := e.Layout()
	require.NoError(t, err)
	require.Equal(t, 2*mac, FLOPs(el), "evaluation: the forward only")
}

// TestBuffersAreShared: values no longer read hand their buffers to later
// ones, and the ops share one workspace, so the CNN's training program
// holds much less than a buffer per value and per op's scratch
// (TrainingMatchesTheCPU shows the results are unchanged).
func TestBuffersAreShared(t *testing.T) {
	m, err := graph.New(graph.Spec{Kind: "cnn", InC: 1, InH: 28, InW: 28, Classes: 10}, 1)
	require.NoError(t, err)
	params, err := UploadParams(device.Host{}, m)
	require.NoError(t, err)
	defer params.Free()
	p, err := m.Program(32, true)
	require.NoError(t, err)
	e, err := Compile(device.Host{}, p, params, device.FP32)
	require.NoError(t, err)
	defer e.Free()
	var naive int64
	for i, n := range e.layout.Nodes {
		if n.Role != graph.RoleParam && (n.Role != graph.RoleOp || n.Op.Kind() != graph.OpReshape) {
			naive += 4 * int64(size(n.Shape))
		}
		if op := e.ops[i]; op != nil {
			for _, n := range op.need {
				naive += 4 * int64(n)
			}
		}
	}
	t.Logf("CNN, batch 32, training: %d bytes planned, %d with a buffer per value", e.Bytes(), naive)
	require.Less(t, e.Bytes(), naive*60/100)
	// The values read after a run keep buffers of their own.
	seen := map[device.Buffer]int{}
	for _, k := range append([]int{e.layout.Loss, e.layout.Out}, e.layout.Grads...) {
		seen[e.vals[k].Buf]++
	}
	for b, n := range seen {
		require.Equal(t, 1, n, "buffer %p holds two of the run's results", b)
	}
}

// TestGridRunsAreTheHostsBitForBit: training on the host device and on the
// host running every kernel over a GPU's grid in scattered thread orders
// ends with the same bits: the MLP with dropout and the CNN, with Adam,
// clipping and bf16 products. The kernels' results depend neither on the
// grid nor on the threads' order, so a GPU computes what the host device
// computes up to its GEMM.
func TestGridRunsAreTheHostsBitForBit(t *testing.T) {
	specs := []graph.Spec{
		{Kind: "mlp", InC: 1, InH: 8, InW: 8, Classes: 10, Hidden: []int{300, 40}, Dropout: 0.3},
		{Kind: "cnn", InC: 1, InH: 16, InW: 16, Classes: 10, Hidden: []int{24}},
	}
	train := func(dev device.Device, spec graph.Spec) ([]float32, [][]float32) {
		gm, err := graph.New(spec, 3)
		require.NoError(t, err)
		params, err := UploadParams(dev, gm)
		require.NoError(t, err)
		defer params.Free()
		const n = 40
		prog, err := gm.Program(n, true)
		require.NoError(t, err)
		dp, err := Compile(dev, prog, params, device.BF16)
		require.NoError(t, err)
		defer dp.Free()
		opt, err := NewOptimizer(dev, optim.Config{Name: "adamw", WeightDecay: 0.01}, params.T)
		require.NoError(t, err)
		defer opt.Free()
		clip, err := NewClipper(dev, len(params.T))
		require.NoError(t, err)
		rng := rand.New(rand.NewPCG(8, 9))
		var losses []float32
		for step := range 5 {
			x, y := batch(rng, n, gm.InputSize(), spec.Classes)
			loss, err := dp.Run(x, y, 11, uint64(step))
			require.NoError(t, err)
			losses = append(losses, loss)
			_, err = clip.Clip(dp.Grads(), 0.5)
			require.NoError(t, err)
			require.NoError(t, opt.Step(params.T, dp.Grads(), 0.01))
		}
		require.NoError(t, params.Download(gm))
		out := make([][]float32, len(gm.Params))
		for i, p := range gm.Params {
			out[i] = p.Data
		}
		return losses, out
	}
	for _, spec := range specs {
		t.Run(spec.Kind, func(t *testing.T) {
			grid := hostGrid(t)
			hl, hp := train(device.Host{}, spec)
			gl, gp := train(grid, spec)
			require.Equal(t, hl, gl, "losses")
			for i := range hp {
				require.Equal(t, hp[i], gp[i], "parameter %d", i)
			}
		})
	}
}

// resMLP is a residual MLP written with nn: h has two consumers in each
// block, so Gorgonia's Grad sums their gradients with its own Add, which
// the device runs as the set's Add.
type resMLP struct{ in, b1, b2, out *nn.Linear }

func (m *resMLP) Forward(c nn.Ctx, x nn.T) nn.T {
	h := c.ReLU(m.in.Forward(c, x))
	h = c.Add(h, c.Tanh(m.b1.Forward(c, h)))
	h = c.Add(h, c.ReLU(m.b2.Forward(c, h)))
	return m.out.Forward(c, h)
}

func init() {
	err := graph.Register("test-resmlp", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
		in := spec.InC * spec.InH * spec.InW
		return &resMLP{nn.NewLinear(s.Sub("in"), in, 24), nn.NewLinear(s.Sub("b1"), 24, 24), nn.NewLinear(s.Sub("b2"), 24, 24), nn.NewLinear(s.Sub("out"), 24, spec.Classes)}, nil
	})
	if err != nil {
		panic(err)
	}
}

// countingDevice counts the kernels launched on it, by name.
type countingDevice struct {
	device.Device
	n map[string]int
}

func (d *countingDevice) Launch(kernel string, n int, args ...any) error {
	d.n[kernel]++
	return d.Device.Launch(kernel, n, args...)
}

// TestBatchNormGradientsReuseTheForwardStatistics: in a training program
// a BatchNorm's gradient ops read the statistics its forward took of the
// same X (bnLink) instead of taking them again, and the sums of dY once
// for both: ResNet-8 gives the same loss and gradients, bit for bit, as
// a program whose gradient ops take their own, with a third of the
// statistics' launches (the forward's only) and half of the gradient
// sums'.
func TestBatchNormGradientsReuseTheForwardStatistics(t *testing.T) {
	for _, mk := range devices {
		base := mk(t)
		t.Run(base.Name(), func(t *testing.T) {
			spec := graph.Spec{Kind: "resnet", Depth: 8, InC: 1, InH: 8, InW: 8, Classes: 10}
			m, err := graph.New(spec, 5)
			require.NoError(t, err)
			bns := 0
			for _, p := range m.Params {
				if len(p.Name) > 12 && p.Name[len(p.Name)-12:] == "running_mean" {
					bns++
				}
			}
			require.Equal(t, 9, bns, "ResNet-8's BatchNorms: 7, and 2 in the strided shortcuts")
			dev := &countingDevice{Device: base, n: map[string]int{}}
			params, err := UploadParams(dev, m)
			require.NoError(t, err)
			defer params.Free()
			const n = 6
			compile := func(link bool) *Program {
				defer func(v bool) { linkBatchNorms = v }(linkBatchNorms)
				linkBatchNorms = link
				prog, err := m.Program(n, true)
				require.NoError(t, err)
				dp, err := Compile(dev, prog, params, device.FP32)
				require.NoError(t, err)
				t.Cleanup(dp.Free)
				return dp
			}
			linked, own := compile(true), compile(false)
			read := func(p *Program) [][]float32 {
				var out [][]float32
				for i, g := range p.Grads() {
					if m.Params[i].Buffer { // the running statistics: each run updates them
						continue
					}
					h := make([]float32, g.Size())
					require.NoError(t, dev.Read(h, g.Buf))
					out = append(out, h)
				}
				return out
			}
			rng := rand.New(rand.NewPCG(3, 4))
			for step := range 3 {
				x, y := batch(rng, n, 64, 10)
				dev.n = map[string]int{}
				want, err := own.Run(x, y, 1, uint64(step))
				require.NoError(t, err)
				ownLaunches, ownGrad := dev.n["bn_sum_parts"], dev.n["bn_grad_parts"]
				wantG := read(own)
				dev.n = map[string]int{}
				got, err := linked.Run(x, y, 1, uint64(step))
				require.NoError(t, err)
				require.Equal(t, want, got, "step %d: loss", step)
				require.Equal(t, wantG, read(linked), "step %d: gradients", step)
				require.Equal(t, 2*3*bns, ownLaunches, "step %d: two column sums in the forward and in each of two gradient ops", step)
				require.Equal(t, 2*bns, dev.n["bn_sum_parts"], "step %d: the forward's two column sums only", step)
				require.Equal(t, 2*bns, ownGrad, "step %d: the gradient's sums in each of two gradient ops", step)
				require.Equal(t, bns, dev.n["bn_grad_parts"], "step %d: the gradient's sums once, for both ops", step)
			}
		})
	}
}
