package trainer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/trainer/dist"
)

// deviceConfig is a run that the device path and the CPU follow alike
// (no dropout: the device draws its masks from its own RNG).
func deviceConfig(t *testing.T, opt string) Config {
	cfg := sgdConfig(t)
	cfg.Optimizer = opt
	cfg.Momentum = 0.9
	cfg.WeightDecay = 1e-4
	cfg.LR = 0.01
	cfg.MaxSteps = 25
	return cfg
}

// gridDevice is the host device with the kernels run over the grid a GPU
// launch gets, thread by thread in scattered orders; at the end of the
// test it checks that no launch's grid was smaller than its loop.
func gridDevice(t *testing.T) *device.HostGrid {
	d := &device.HostGrid{}
	t.Cleanup(func() {
		require.Empty(t, d.Underfilled(), "launches whose grid was smaller than their loop")
	})
	return d
}

// TestDeviceTrainingMatchesTheCPU: one process trains through the device
// executor (the host device: the same kernels a GPU runs, compiled for the
// CPU) and ends where the CPU path ends, for SGD with momentum and AdamW,
// with the epoch's evaluation and the final summary on the device's
// parameters.
func TestDeviceTrainingMatchesTheCPU(t *testing.T) {
	for _, opt := range []string{"sgd", "adamw"} {
		t.Run(opt, func(t *testing.T) {
			cfg := deviceConfig(t, opt)
			ref := newTrainer(t, cfg)
			want, err := ref.Run(context.Background())
			require.NoError(t, err)
			dev := newTrainer(t, cfg, WithDevice(device.Host{}))
			got, err := dev.Run(context.Background())
			require.NoError(t, err)
			require.Equal(t, int(cfg.MaxSteps), dev.devr.runs, "every step ran on the device")
			require.Equal(t, int(cfg.MaxSteps), dev.devr.steps)
			d := maxAbsDiff(params(ref), params(dev))
			t.Logf("%s: max |Δ| against the CPU after %d steps: %g", opt, cfg.MaxSteps, d)
			require.Less(t, d, 1e-5)
			require.InDelta(t, want.TestLoss, got.TestLoss, 1e-4)
			require.Equal(t, want.TestAccuracy, got.TestAccuracy)
			require.Equal(t, 2, dev.devr.evals, "the evaluations (200 samples, batches of 250: at the end of epoch 1 and at step 25) ran on the device")
			// The optimiser state came back to the host too.
			ws, wstep := ref.opt.State()
			gs, gstep := dev.opt.State()
			require.Equal(t, wstep, gstep)
			for k, v := range ws {
				require.Less(t, maxAbsDiff([][]float32{v}, [][]float32{gs[k]}), 1e-5, "state %s", k)
			}
		})
	}
}

// TestDeviceRanksMatchOneProcess: two ranks on devices, unequal shares;
// the gradients go through the host's all-reduce. They end where one CPU
// process ends, with identical replicas.
func TestDeviceRanksMatchOneProcess(t *testing.T) {
	base := deviceConfig(t, "sgd")
	ref := newTrainer(t, base)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)
	cfgs := []Config{base, base}
	for r := range cfgs {
		cfgs[r].Shares = []float64{0.7, 0.3}
		cfgs[r].AccumSteps = 2
	}
	trs := runRanks(t, cfgs, func(int) Option { return WithDevice(device.Host{}) })
	for _, tr := range trs {
		require.Equal(t, 2*int(base.MaxSteps), tr.devr.runs, "two micro-batches per step on the device")
		require.Equal(t, int(base.MaxSteps), tr.devr.steps)
	}
	d := maxAbsDiff(params(ref), params(trs[0]))
	t.Logf("2 ranks on devices: max |Δ| against one CPU process: %g", d)
	require.Less(t, d, 1e-5)
	require.Equal(t, params(trs[0]), params(trs[1]))
}

// TestDeviceCheckpointResumesOnTheCPU: a device run checkpoints its
// parameters and optimiser state (brought back from the device); a CPU
// run resumes from it and ends where an uninterrupted CPU run ends, and
// so does a device run resumed from a CPU checkpoint.
func TestDeviceCheckpointResumesOnTheCPU(t *testing.T) {
	cfg := deviceConfig(t, "adam")
	ref := newTrainer(t, cfg)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)

	first := cfg
	first.MaxSteps = 11
	first.CheckpointDir = t.TempDir()
	_, err = newTrainer(t, first, WithDevice(device.Host{})).Run(context.Background())
	require.NoError(t, err)
	second := cfg
	second.Resume = first.CheckpointDir
	tr := newTrainer(t, second)
	_, err = tr.Run(context.Background())
	require.NoError(t, err)
	require.Equal(t, ref.Step(), tr.Step())
	require.Less(t, maxAbsDiff(params(ref), params(tr)), 1e-5)

	// And the other way: a CPU checkpoint resumes on a device, the
	// optimiser state going up with the parameters.
	cpuFirst := first
	cpuFirst.CheckpointDir = t.TempDir()
	_, err = newTrainer(t, cpuFirst).Run(context.Background())
	require.NoError(t, err)
	second.Resume = cpuFirst.CheckpointDir
	onDev := newTrainer(t, second, WithDevice(device.Host{}))
	_, err = onDev.Run(context.Background())
	require.NoError(t, err)
	require.Equal(t, ref.Step(), onDev.Step())
	require.Less(t, maxAbsDiff(params(ref), params(onDev)), 1e-5)
}

func TestDeviceRefusesWhatItCannotRunYet(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Sync, c.ReducePrecision = "local-sgd", "bf16" }, "all-reduces none"},
	} {
		cfg := deviceConfig(t, "sgd")
		cfg.Device = "host"
		tc.mut(&cfg)
		require.ErrorContains(t, cfg.Validate(), tc.want)
	}
	cfg := deviceConfig(t, "sgd")
	cfg.Device = "tpu"
	require.ErrorContains(t, cfg.Validate(), `--device "tpu" is not a device (valid: cpu, gpu, auto)`)
	cfg.Device, cfg.ReducePrecision = "cpu", "bf16"
	require.ErrorContains(t, cfg.Validate(), "--reduce-precision bf16 all-reduces gradient buckets on a device")
	cfg.Device, cfg.ReducePrecision = "gpu", "fp16"
	require.ErrorContains(t, cfg.Validate(), `--reduce-precision "fp16" is not one of fp32, bf16`)
}

// TestDeviceClipsLikeTheCPU: --clip-grad-norm on the device (the norm
// summed there, the gradients scaled there) ends where the CPU ends, in one
// process and with two ranks whose reduced gradients come from the host's
// buckets (against two CPU ranks: the same sums in the same order); and
// the clipping bites (without it the run ends elsewhere).
func TestDeviceClipsLikeTheCPU(t *testing.T) {
	cfg := deviceConfig(t, "adamw")
	cfg.ClipGradNorm = 0.05
	ref, _ := clippedReference(t, cfg)
	dev := newTrainer(t, cfg, WithDevice(device.Host{}))
	_, err := dev.Run(context.Background())
	require.NoError(t, err)
	require.Equal(t, int(cfg.MaxSteps), dev.devr.steps)
	require.Less(t, maxAbsDiff(params(ref), params(dev)), 1e-5, "one process")

	cfgs := []Config{cfg, cfg}
	for r := range cfgs {
		cfgs[r].Shares = []float64{0.7, 0.3}
	}
	cpu := runRanks(t, cfgs)
	trs := runRanks(t, cfgs, func(int) Option { return WithDevice(device.Host{}) })
	require.Less(t, maxAbsDiff(params(cpu[0]), params(trs[0])), 1e-6, "two ranks")
	require.Equal(t, params(trs[0]), params(trs[1]))
}

// TestDeviceLocalSGDMatchesTheCPU: two ranks of local SGD on devices
// (local steps there, the parameters averaged through the host every
// period, with DiLoCo's outer Nesterov step) end where two CPU ranks end,
// with identical replicas.
func TestDeviceLocalSGDMatchesTheCPU(t *testing.T) {
	cfg := deviceConfig(t, "adamw")
	cfg.Sync, cfg.SyncPeriod, cfg.OuterLR, cfg.OuterMomentum = "local-sgd", 4, 0.7, 0.9
	cfgs := []Config{cfg, cfg}
	cpu := runRanks(t, cfgs)
	trs := runRanks(t, cfgs, func(int) Option { return WithDevice(device.Host{}) })
	for _, tr := range trs {
		require.Equal(t, int(cfg.MaxSteps), tr.devr.steps, "every step on the device")
	}
	require.Less(t, maxAbsDiff(params(cpu[0]), params(trs[0])), 1e-6)
	require.Equal(t, params(trs[0]), params(trs[1]), "the last average makes the replicas equal")
	require.Greater(t, maxAbsDiff(params(cpu[0]), params(newTrainer(t, cfg))), 1e-3, "the run trained")
}

// TestDeviceAsyncWorkers: three asynchronous ranks compute their gradients
// on devices (the server's parameters go up for every batch, the gradients
// come down), every batch is applied once, and they learn the planted
// pattern as well as the same ranks on the CPU.
func TestDeviceAsyncWorkers(t *testing.T) {
	base := sgdConfig(t)
	base.MaxSteps, base.Epochs, base.Sync = 0, 3, "async"
	cfgs := []Config{base, base, base}
	cpu := runRanks(t, cfgs, asyncOptions(t))
	accCPU, _, err := Evaluate(cpu[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	rec := &balanceRecorder{}
	trs := runRanks(t, cfgs, asyncOptions(t), func(int) Option { return WithDevice(device.Host{}) }, rank0Sink(rec))
	acc, _, err := Evaluate(trs[0].Model, learnable(200, 2), 100)
	require.NoError(t, err)
	t.Logf("test accuracy: CPU workers %.3f, device workers %.3f", accCPU, acc)
	require.Greater(t, acc, accCPU-0.05)
	runs := 0
	for _, tr := range trs {
		runs += tr.devr.runs
	}
	require.Equal(t, 3*59, runs, "every batch of every epoch computed once on the devices")
	last := rec.async[len(rec.async)-1]
	require.Equal(t, uint64(3*59), last.Version, "and applied once")
}

// TestBF16TrainsLikeFP32: bf16 matrix products (inputs rounded to
// bfloat16, float32 sums, float32 master weights and optimiser state)
// learn as float32 does: the test accuracy is within 3 points after 2
// epochs, while the parameters show that the products were rounded.
func TestBF16TrainsLikeFP32(t *testing.T) {
	cfg := smallConfig(t)
	cfg.CheckpointDir = ""
	cfg.Dropout = 0
	fp32 := newTrainer(t, cfg, WithDevice(device.Host{}))
	a, err := fp32.Run(context.Background())
	require.NoError(t, err)
	cfg.Precision = "bf16"
	bf16 := newTrainer(t, cfg, WithDevice(device.Host{}))
	b, err := bf16.Run(context.Background())
	require.NoError(t, err)
	t.Logf("test accuracy: fp32 %.3f, bf16 %.3f; max |Δ| of the parameters %g", a.TestAccuracy, b.TestAccuracy, maxAbsDiff(params(fp32), params(bf16)))
	require.Greater(t, a.TestAccuracy, 0.5, "the task is learnable")
	require.InDelta(t, a.TestAccuracy, b.TestAccuracy, 0.03)
	require.Greater(t, maxAbsDiff(params(fp32), params(bf16)), 1e-4, "bf16 rounding changed the trajectory")

	cpu := smallConfig(t)
	cpu.Precision = "bf16"
	_, err = newTrainer(t, cpu).Run(context.Background())
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "--precision bf16 runs on a device, and rank 0 trains on the CPU")
	cpu.Device = "cpu"
	require.ErrorContains(t, cpu.Validate(), "--precision bf16 runs on a device: use --device gpu")
	cpu.Device, cpu.Precision = "gpu", "fp16"
	require.ErrorContains(t, cpu.Validate(), `precision "fp16" is not one of fp32, tf32, bf16`)
}

// hostPtrComm is a ring communicator that also all-reduces "device"
// memory: the host device's buffers are C memory at real addresses, which
// it reduces through the ring (NCCL does this with GPU memory; the CPU
// build's NCCL stand-in with host memory: go test ./cmd/gotrain -run
// NCCLDevice). It counts those calls.
type hostPtrComm struct {
	dist.Communicator
	calls, bf16, waits atomic.Int64
	sends, recvs       atomic.Int64  // device Send and Recv calls
	stream             atomic.Uint64 // of the last call
}

// hostFloats is the host device's C memory at ptr as count float32s.
func hostFloats(ptr uintptr, count int) []float32 {
	p := *(*unsafe.Pointer)(unsafe.Pointer(&ptr)) // the host device's C memory, not Go's
	return unsafe.Slice((*float32)(p), count)
}

func (c *hostPtrComm) SendDevice(ctx context.Context, ptr uintptr, count, peer int, _ uintptr) error {
	c.sends.Add(1)
	return c.Send(ctx, hostFloats(ptr, count), peer)
}

func (c *hostPtrComm) RecvDevice(ctx context.Context, ptr uintptr, count, peer int, _ uintptr) error {
	c.recvs.Add(1)
	return c.Recv(ctx, hostFloats(ptr, count), peer)
}

// WaitDevice returns at once: the host device's work is done when a call
// returns.
func (c *hostPtrComm) WaitDevice(_ context.Context, done func() (bool, error)) error {
	c.waits.Add(1)
	ok, err := done()
	if err == nil && !ok {
		err = errors.New("hostPtrComm: the host device is never busy")
	}
	return err
}

func (c *hostPtrComm) AllReduceDevice(ctx context.Context, ptr uintptr, count int, bf16 bool, op dist.Op, stream uintptr) error {
	c.calls.Add(1)
	c.stream.Store(uint64(stream))
	p := *(*unsafe.Pointer)(unsafe.Pointer(&ptr)) // the host device's C memory, not Go's
	if !bf16 {
		v := unsafe.Slice((*float32)(p), count)
		return c.AllReduce(ctx, v, v, op)
	}
	// bfloat16: summed in float32 through the ring, rounded back once.
	c.bf16.Add(1)
	h := unsafe.Slice((*uint16)(p), count)
	v := make([]float32, count)
	for i, x := range h {
		v[i] = math.Float32frombits(uint32(x) << 16)
	}
	if err := c.AllReduce(ctx, v, v, op); err != nil {
		return err
	}
	for i, x := range v {
		u := math.Float32bits(x)
		h[i] = uint16((u + 0x7fff + (u>>16)&1) >> 16)
	}
	return nil
}

// TestDeviceBucketsMatchOneProcess: with a backend that reduces device
// memory the gradient buckets stay on the device (2 ranks, unequal shares,
// 2 micro-batches): every step all-reduces every bucket there, as the
// backward pass fills them, and the result equals one CPU process's, the
// replicas bitwise equal.
func TestDeviceBucketsMatchOneProcess(t *testing.T) {
	base := deviceConfig(t, "sgd")
	ref := newTrainer(t, base)
	_, err := ref.Run(context.Background())
	require.NoError(t, err)
	for _, tc := range []struct {
		name     string
		bucketMB float64
		shares   []float64
		bf16     bool
		streams  bool // a device run as late as a GPU, with a communication stream (lazyHost)
		grid     bool // the kernels over a GPU's grid (gridDevice)
	}{
		{"one bucket", 25, []float64{0.7, 0.3}, false, false, false},
		// Buckets of 4 KiB: each is reduced while the backward pass fills
		// the next; rank 1's single sample leaves one micro-batch empty.
		// The packing kernels run over a GPU's grid.
		{"many buckets", 4.0 / 1024, []float64{0.98, 0.02}, false, false, true},
		// --reduce-precision bf16: the buckets travel as bfloat16.
		{"bf16", 4.0 / 1024, []float64{0.7, 0.3}, true, false, true},
		// The collectives on a communication stream, each behind its
		// bucket's packing only; the kernels run late.
		{"communication stream", 4.0 / 1024, []float64{0.7, 0.3}, false, true, false},
		{"communication stream, bf16", 4.0 / 1024, []float64{0.98, 0.02}, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rings := ring(t, 2)
			comms := []*hostPtrComm{{Communicator: rings[0]}, {Communicator: rings[1]}}
			trs := make([]*Trainer, 2)
			errs := make([]error, 2)
			devs := []device.Device{device.Host{}, device.Host{}}
			switch {
			case tc.streams:
				devs = []device.Device{&lazyHost{}, &lazyHost{}}
			case tc.grid:
				devs = []device.Device{gridDevice(t), gridDevice(t)}
			}
			var wg sync.WaitGroup
			for r := range trs {
				cfg := base
				cfg.Shares = tc.shares
				cfg.AccumSteps = 2
				cfg.BucketMB = tc.bucketMB
				if tc.bf16 {
					cfg.ReducePrecision = "bf16"
				}
				trs[r] = newTrainer(t, cfg, WithCommunicator(comms[r]), WithDevice(devs[r]))
				wg.Go(func() {
					if _, errs[r] = trs[r].Run(context.Background()); errs[r] != nil {
						rings[r].Abort(errs[r])
					}
				})
			}
			wg.Wait()
			buckets := int64(len(trs[0].strat.(*allReduce).bk.list))
			for r, err := range errs {
				require.NoError(t, err, "rank %d", r)
				require.Equal(t, base.MaxSteps*buckets, comms[r].calls.Load(), "rank %d: every bucket reduced on the device every step", r)
				if tc.bf16 {
					require.Equal(t, comms[r].calls.Load(), comms[r].bf16.Load(), "rank %d: every reduction in bfloat16", r)
				} else {
					require.Zero(t, comms[r].bf16.Load())
				}
				if lh, ok := devs[r].(*lazyHost); ok {
					require.Equal(t, comms[r].calls.Load(), int64(lh.comms), "rank %d: every collective on the communication stream", r)
					require.Equal(t, uint64(1), comms[r].stream.Load(), "rank %d: NCCL got the stream's handle", r)
					require.Equal(t, int(base.MaxSteps), lh.joins, "rank %d: the compute stream waited for the collectives every step", r)
					require.Equal(t, base.MaxSteps, comms[r].waits.Load(), "rank %d: the host waited under the watchdog every step", r)
					// A wait for the whole device would wait for the
					// collectives outside the watchdog: a dead peer would
					// hang it. Only the end of the run syncs.
					require.Less(t, lh.syncs, 3, "rank %d: whole-device waits", r)
					t.Logf("rank %d: %d of %d collectives started with later kernels still queued", r, lh.overlap, lh.comms)
				} else {
					require.Zero(t, comms[r].stream.Load(), "the default stream")
					require.Zero(t, comms[r].waits.Load())
				}
			}
			d := maxAbsDiff(params(ref), params(trs[0]))
			t.Logf("2 ranks, %d bucket(s) on the device, bf16 %v: max |Δ| against one CPU process: %g", buckets, tc.bf16, d)
			if tc.bf16 {
				require.Less(t, d, 2e-3, "bfloat16 gradients stay close")
				require.Greater(t, d, 1e-6, "and show their rounding")
			} else {
				require.Less(t, d, 1e-5)
			}
			require.Equal(t, params(trs[0]), params(trs[1]))
		})
	}
}

// TestDeviceRanksAreBalanced: ranks on devices feed the balancer too (the
// device programs' first runs are left out as on the CPU): with a 4x
// straggler the fast rank ends with the larger share. Each rank's
// micro-batches come from its prefetcher, started anew at every re-plan
// (it would name the mismatch if it prefetched by old shares), through
// page-locked memory on devices that run late.
func TestDeviceRanksAreBalanced(t *testing.T) {
	base, ref := stragglerBase(t, 30)
	cfgs := []Config{base, base}
	recs := []*balanceRecorder{{}, {}}
	devs := []*lazyHost{{}, {}}
	trs := runRanks(t, cfgs, func(r int) Option { return WithSink(recs[r]) }, func(r int) Option { return WithDevice(devs[r]) })
	require.NotEmpty(t, recs[0].bal, "the balancer re-planned")
	for r, tr := range trs {
		require.GreaterOrEqual(t, devs[r].async, 2*tr.devr.runs, "rank %d: every micro-batch went up from the prefetcher's page-locked slots", r)
	}
	last := recs[0].bal[len(recs[0].bal)-1]
	require.Greater(t, last.Shares[0], last.Shares[1], "the fast rank takes the larger share: %v", last.Shares)
	require.Less(t, maxAbsDiff(params(ref), params(trs[0])), 1e-5)
	require.Equal(t, params(trs[0]), params(trs[1]))
}

// TestDevicePipelineMatchesTheCPU: pipeline stages on devices (2 ranks of
// one stage each, and 2 replicas of 2 stages), with micro-batches, SGD
// with momentum and weight decay, and gradient clipping by the global
// norm, end where one CPU process ends; so do the same stages on the CPU,
// whose clipping took the norm over every stage (a norm per stage would
// end elsewhere). Each stage's programs ran on its device, and the
// evaluation too.
func TestDevicePipelineMatchesTheCPU(t *testing.T) {
	base := pipelineDeviceConfig(t)
	ref, want := clippedReference(t, base)
	for _, tc := range []struct {
		world, stages int
		dev           bool
	}{{2, 2, true}, {4, 2, true}, {2, 2, false}} {
		cfgs := make([]Config, tc.world)
		for r := range cfgs {
			cfgs[r] = base
			cfgs[r].PipelineStages = tc.stages
			cfgs[r].MicroBatches = 3
		}
		var opts []func(int) Option
		switch {
		case tc.dev && tc.world == 4: // the stages' kernels over a GPU's grid
			opts = append(opts, func(int) Option { return WithDevice(gridDevice(t)) })
		case tc.dev:
			opts = append(opts, func(int) Option { return WithDevice(device.Host{}) })
		}
		trs, res := runRanksResults(t, cfgs, opts...)
		d := 0.0
		for r, tr := range trs {
			for _, i := range tr.strat.(*pipeline).stage.Params {
				d = math.Max(d, maxAbsDiff([][]float32{ref.Model.Params[i].Data}, [][]float32{tr.Model.Params[i].Data}))
			}
			if tc.dev {
				require.Equal(t, int(base.MaxSteps), tr.devr.steps, "every update on the device")
				require.GreaterOrEqual(t, tr.devr.runs, int(base.MaxSteps)*3, "every micro-batch's backward pass on the device")
				if tr.strat.(*pipeline).replica == 0 { // the first replica evaluates
					require.Positive(t, tr.devr.evals, "the evaluation ran on the device")
				}
			}
			require.Equal(t, res[0].TestAccuracy, res[r].TestAccuracy, "every rank has the pipeline's evaluation")
		}
		t.Logf("%d ranks, %d stages, devices %v: max |Δ| against one CPU process %g; test accuracy %.3f, loss %.5f (one process %.3f, %.5f)",
			tc.world, tc.stages, tc.dev, d, res[0].TestAccuracy, res[0].TestLoss, want.TestAccuracy, want.TestLoss)
		require.Less(t, d, 1e-5)
		require.Equal(t, want.TestAccuracy, res[0].TestAccuracy)
		require.InDelta(t, want.TestLoss, res[0].TestLoss, 1e-4)
	}
}

// clippedReference runs cfg (with --clip-grad-norm) in one CPU process,
// checks that the clipping bites (the run without it ends elsewhere), and
// returns the trainer and its result.
func clippedReference(t *testing.T, cfg Config) (*Trainer, Result) {
	t.Helper()
	ref := newTrainer(t, cfg)
	res, err := ref.Run(context.Background())
	require.NoError(t, err)
	unclipped := cfg
	unclipped.ClipGradNorm = 0
	free := newTrainer(t, unclipped)
	_, err = free.Run(context.Background())
	require.NoError(t, err)
	require.Greater(t, maxAbsDiff(params(ref), params(free)), 1e-3, "the limit clips these gradients")
	return ref, res
}

// nanHost is the host device that, from its after-th launch of kernel on,
// leaves a NaN in that launch's output argument (argument out): a gradient
// that is not finite while the loss is.
type nanHost struct {
	device.Host
	kernel     string
	out, after int
	seen       int
}

func (h *nanHost) Launch(kernel string, n int, args ...any) error {
	if err := h.Host.Launch(kernel, n, args...); err != nil || kernel != h.kernel {
		return err
	}
	if h.seen++; h.seen < h.after {
		return nil
	}
	return h.Host.Write(args[h.out].(device.Buffer), []float32{float32(math.NaN())})
}

// TestDeviceStopsOnANaNGradient: a gradient that turns NaN while the loss
// stays finite stops the run on a device with the divergence error, before
// the parameters move (they stay finite), without --clip-grad-norm; two
// ranks with their buckets on the devices stop alike.
func TestDeviceStopsOnANaNGradient(t *testing.T) {
	cfg := deviceConfig(t, "sgd")
	// sum_rows computes the bias gradients: the 7th is in step 4.
	tr := newTrainer(t, cfg, WithDevice(&nanHost{kernel: "sum_rows", out: 1, after: 7}))
	_, err := tr.Run(context.Background())
	require.ErrorIs(t, err, ErrNonFinite)
	require.Less(t, tr.Step(), cfg.MaxSteps)
	t.Logf("one process: %v", err)
	require.Regexp(t, `loss [0-9.]+ or a gradient is not finite`, err.Error(), "the loss itself is finite")
	for _, p := range tr.Model.Params {
		for _, v := range p.Data {
			require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0), "%s stays finite", p.Name)
		}
	}

	rings := ring(t, 2)
	comms := []*hostPtrComm{{Communicator: rings[0]}, {Communicator: rings[1]}}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		c := cfg
		c.BucketMB = 4.0 / 1024
		rt := newTrainer(t, c, WithCommunicator(comms[r]), WithDevice(&nanHost{kernel: "sum_rows", out: 1, after: 7 + 5*r}))
		wg.Go(func() { _, errs[r] = rt.Run(context.Background()) })
	}
	wg.Wait()
	for r, err := range errs {
		require.ErrorIs(t, err, ErrNonFinite, "rank %d", r)
	}
}

// TestDevicePipelineDeviceToDevice: with a backend that sends device
// memory, pipeline stages on devices pass their activations and input
// gradients device to device (2 stages, and 4 ranks of 2 stages × 2
// replicas) and end where one CPU process ends, as through the host.
func TestDevicePipelineDeviceToDevice(t *testing.T) {
	base := pipelineDeviceConfig(t)
	ref, want := clippedReference(t, base)
	for _, world := range []int{2, 4} {
		rings := ring(t, world)
		comms := make([]*hostPtrComm, world)
		trs := make([]*Trainer, world)
		res := make([]Result, world)
		errs := make([]error, world)
		var wg sync.WaitGroup
		for r := range world {
			comms[r] = &hostPtrComm{Communicator: rings[r]}
			cfg := base
			cfg.PipelineStages, cfg.MicroBatches = 2, 3
			trs[r] = newTrainer(t, cfg, WithCommunicator(comms[r]), WithDevice(device.Host{}))
			wg.Go(func() {
				if res[r], errs[r] = trs[r].Run(context.Background()); errs[r] != nil {
					rings[r].Abort(errs[r])
				}
			})
		}
		wg.Wait()
		d := 0.0
		for r, tr := range trs {
			require.NoError(t, errs[r], "rank %d", r)
			// Per step, 3 micro-batches: stage 0 sends 3 activations and
			// receives 3 gradients, stage 1 the other way round.
			require.Equal(t, 3*base.MaxSteps, comms[r].sends.Load(), "rank %d: device sends", r)
			require.Equal(t, 3*base.MaxSteps, comms[r].recvs.Load(), "rank %d: device receives", r)
			for _, i := range tr.strat.(*pipeline).stage.Params {
				d = math.Max(d, maxAbsDiff([][]float32{ref.Model.Params[i].Data}, [][]float32{tr.Model.Params[i].Data}))
			}
			require.Equal(t, res[0].TestAccuracy, res[r].TestAccuracy)
		}
		t.Logf("%d ranks, 2 stages, device to device: max |Δ| against one CPU process %g", world, d)
		require.Less(t, d, 1e-5)
		require.Equal(t, want.TestAccuracy, res[0].TestAccuracy)
	}
}

// pipelineDeviceConfig is the pipeline device tests' run: 3 layers to cut
// into stages, SGD with momentum and weight decay, clipping that bites.
func pipelineDeviceConfig(t *testing.T) Config {
	cfg := deviceConfig(t, "sgd")
	cfg.Hidden = []int{32, 24, 16}
	cfg.LR = 0.05
	cfg.ClipGradNorm = 0.3
	return cfg
}

// TestDeviceFaultsStopTheRunWithTheirDevice: a device that fails as a GPU
// fails (an allocation out of memory, a failing launch, a sticky
// asynchronous fault reported at the next wait) stops the run with an
// error naming the device and the op, wrapping the device's error, and
// leaves the checkpoints written before it intact: the newest loads, and
// a run resumed from it on a sound device ends where an uninterrupted run
// ends.
func TestDeviceFaultsStopTheRunWithTheirDevice(t *testing.T) {
	cfg := deviceConfig(t, "sgd")
	cfg.CheckpointEvery = 5
	ref := newTrainer(t, cfg, WithDevice(device.Host{}))
	_, err := ref.Run(context.Background())
	require.NoError(t, err)

	// The last allocations are those of the evaluation program at the end
	// of the first epoch (step 19): count them in a run without faults.
	count := &device.Faults{}
	run := cfg
	run.CheckpointDir = t.TempDir()
	_, err = newTrainer(t, run, WithDevice(device.Host{Faults: count})).Run(context.Background())
	require.NoError(t, err)
	allocs, _ := count.Counts()

	for _, tc := range []struct {
		fault string
		want  []string // in the error, in order
		is    error
		step  int64 // of the newest checkpoint
	}{
		// relu runs once a training step (one hidden layer): the 8th is step 8's
		{"launch:relu:8", []string{"device host: running a program: ", "launching kernel relu: injected launch failure (fault launch:relu:8)"}, device.ErrLaunchFailed, 5},
		{"sticky:relu:8", []string{"device host: running a program: ", "reading 1 values: injected illegal memory access in launch ", "(kernel relu)", "(fault sticky:relu:8)"}, device.ErrIllegalAddress, 5},
		{fmt.Sprintf("alloc:%d", allocs), []string{"device host: compiling a program: ", "bytes: injected out of memory (fault alloc:"}, device.ErrOutOfMemory, 15},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			f, err := device.ParseFaults(tc.fault)
			require.NoError(t, err)
			run := cfg
			run.CheckpointDir = t.TempDir()
			_, err = newTrainer(t, run, WithDevice(device.Host{Faults: f})).Run(context.Background())
			require.Error(t, err)
			t.Logf("%s: %v", tc.fault, err)
			require.ErrorIs(t, err, tc.is)
			var fe *device.FaultError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, tc.fault, fe.Rule)
			msg := err.Error()
			for _, w := range tc.want {
				i := strings.Index(msg, w)
				require.GreaterOrEqual(t, i, 0, "want %q in %q", w, msg)
				msg = msg[i+len(w):]
			}

			_, loaded, path, err := LoadModel(run.CheckpointDir)
			require.NoError(t, err, "the newest checkpoint loads")
			require.Equal(t, fmt.Sprintf("ckpt-%010d.safetensors", tc.step), filepath.Base(path))
			require.Equal(t, cfg.Hidden, loaded.Hidden)
			resumed := cfg
			resumed.CheckpointDir = t.TempDir()
			resumed.Resume = run.CheckpointDir
			tr := newTrainer(t, resumed, WithDevice(device.Host{}))
			_, err = tr.Run(context.Background())
			require.NoError(t, err)
			require.Equal(t, ref.Step(), tr.Step())
			require.Less(t, maxAbsDiff(params(ref), params(tr)), 1e-5, "resumed from step %d", tc.step)
		})
	}
}
