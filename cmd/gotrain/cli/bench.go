package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/gpu/executor"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/graph/cblas"
	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/optim"
)

// cmdBench runs `gotrain bench train`: the training step (batch assembly
// from bytes, forward, backward, optimiser) on synthetic data, timed after
// a warm-up, printed as one JSON line in the same form as the PyTorch peer
// (cmd/gotrain/peer/torch_train.py) so that `make bench` can compare them.
// On a device the 16 batches are decoded once, as the peer keeps its 16 on
// the device, and each step uploads one from page-locked memory.
func cmdBench(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "allreduce" {
		return cmdBenchAllReduce(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "train" {
		return fmt.Errorf("%w: want 'gotrain bench train [flags]' or 'gotrain bench allreduce [flags]'", errUsage)
	}
	fs := flag.NewFlagSet("gotrain bench train", flag.ContinueOnError)
	fs.SetOutput(clipWriter{stderr})
	cfg := trainer.Default()
	cfg.BatchSize = 128
	fs.StringVar(&cfg.Model, "model", cfg.Model, "model: mlp, cnn or resnet")
	fs.Var(intList(&cfg.Hidden), "hidden", "hidden widths")
	fs.IntVar(&cfg.Depth, "depth", cfg.Depth, "resnet: layers, 6n+2 (0 = 20)")
	fs.IntVar(&cfg.BatchSize, "batch-size", cfg.BatchSize, "batch size")
	fs.StringVar(&cfg.Optimizer, "optimizer", cfg.Optimizer, "optimiser: sgd, adam or adamw")
	fs.Float64Var(&cfg.LR, "lr", cfg.LR, "learning rate")
	fs.IntVar(&cfg.Threads, "threads", 2, "threads for matrix products and kernels")
	fs.StringVar(&cfg.Device, "device", "cpu", "cpu, gpu (GPU LOCAL_RANK, the gpu build) or host (the GPU code path on the CPU)")
	precName := fs.String("precision", "fp32", "matrix products on a device: fp32, tf32 or bf16 (float32 sums, float32 weights)")
	peak := fs.Float64("peak-tflops", 0, "the device's peak TFLOP/s, to report model FLOP utilisation (e.g. 67 for an H100 SXM in FP32)")
	steps := fs.Int("steps", 200, "timed steps")
	warmup := fs.Int("warmup", 20, "untimed warm-up steps")
	profile := fs.Bool("profile", false, "on a device: time every op of the timed steps, waiting for the device after each, and print where the time goes (to stderr; the run is slower)")
	pin := fs.Bool("pin-memory", true, "on a GPU: the batches in page-locked memory, uploaded by queued copies (false: pageable memory, each copy waited for)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	prec, err := device.ParsePrecision(*precName)
	if err != nil {
		return fmt.Errorf("%w: --%v", errUsage, err)
	}
	if prec != device.FP32 && cfg.Device == "cpu" {
		return fmt.Errorf("%w: --precision %s runs on a device: add --device gpu (or host)", errUsage, prec)
	}
	if *profile && cfg.Device == "cpu" {
		return fmt.Errorf("%w: --profile times a device's ops: add --device gpu (or host)", errUsage)
	}
	if *steps <= 0 || *warmup < 0 {
		return fmt.Errorf("%w: --steps must be positive and --warmup not negative", errUsage)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := trainer.Preflight(cfg, trainer.PreflightEnv{}); err != nil {
		return err
	}
	setThreads(cfg.Threads)
	m, err := graph.New(cfg.ModelSpec(), 1)
	if err != nil {
		return err
	}
	prog, err := m.Program(cfg.BatchSize, true)
	if err != nil {
		return err
	}
	const nb = 16
	ds := data.Synthetic(nb*cfg.BatchSize, 28, 28, 10, 1)
	layout, err := prog.Layout()
	if err != nil {
		return err
	}
	flops := executor.FLOPs(layout)
	idx := make([]int, cfg.BatchSize)
	var loss float32
	var step func(i int) error
	var lossOf func() (float32, error) // waits for the device's last step
	devName := "cpu"
	var prof *executor.Profile // --profile: set on the timed steps
	startProfile, profiling := func() {}, false
	if *profile {
		prof = executor.NewProfile()
	}
	pinnedMem := false
	if cfg.Device != "cpu" {
		dev, err := openDevice(cfg, localRank(), slog.New(slog.NewTextHandler(stderr, nil)))
		if err != nil {
			return err
		}
		if dev == nil {
			return fmt.Errorf("%w: --device %s: no device (auto found none)", errUsage, cfg.Device)
		}
		defer dev.Close()
		devName = dev.Name()
		params, err := executor.UploadParams(dev, m)
		if err != nil {
			return err
		}
		defer params.Free()
		e, err := executor.Compile(dev, prog, params, prec)
		if err != nil {
			return err
		}
		defer e.Free()
		opt, err := executor.NewOptimizer(dev, optim.Config{Name: cfg.Optimizer, Momentum: 0.9}, params.T)
		if err != nil {
			return err
		}
		defer opt.Free()
		buffers := make([]bool, len(m.Params))
		for i, p := range m.Params {
			buffers[i] = p.Buffer
		}
		if err := opt.SetBuffers(buffers); err != nil {
			return err
		}
		// The peer keeps its 16 batches on the device; here they are
		// decoded once into page-locked memory (where the device has it),
		// and each step uploads one with a queued copy, as the trainer's
		// prefetcher does. A copy from pageable memory would wait for the
		// device's earlier work and keep the host from running ahead.
		xs, ys := make([][]float32, nb), make([][]float32, nb)
		alloc := device.AllocHost
		if !*pin {
			alloc = device.Pageable
		}
		for b := range nb {
			var pinned bool
			if xs[b], pinned, err = alloc(dev, len(prog.X)); err != nil {
				return err
			}
			if ys[b], _, err = alloc(dev, len(prog.Y)); err != nil {
				return err
			}
			pinnedMem = pinned
			if pinned {
				defer dev.(device.Pinner).FreeHost(xs[b])
				defer dev.(device.Pinner).FreeHost(ys[b])
			}
			for j := range idx {
				idx[j] = b*cfg.BatchSize + j
			}
			ds.Batch(idx, xs[b], ys[b])
		}
		grads := e.Grads()
		optName := fmt.Sprintf("optimizer %s, %d tensors", cfg.Optimizer, len(params.T))
		startProfile = func() { e.Profile(prof) }
		step = func(i int) error {
			// No read-back per step: the device runs ahead, as PyTorch's
			// does until the peer reads its loss after the last step.
			if err := e.Launch(xs[i%nb], ys[i%nb], 1, uint64(i)); err != nil {
				return err
			}
			if profiling {
				return prof.Time(dev, optName, 0, func() error { return opt.Step(params.T, grads, cfg.LR) })
			}
			return opt.Step(params.T, grads, cfg.LR)
		}
		lossOf = e.Loss
	} else {
		// The gradient buffers exist once the program has run.
		if _, err := prog.Run(rand.New(rand.NewPCG(1, 1))); err != nil {
			return err
		}
		ps := make([]optim.Param, len(m.Params))
		for i, p := range m.Params {
			ps[i] = optim.Param{Name: p.Name, Data: p.Data, Grad: prog.Grad(i), Buffer: p.Buffer}
		}
		opt, err := optim.New(optim.Config{Name: cfg.Optimizer, Momentum: 0.9}, ps)
		if err != nil {
			return err
		}
		rng := rand.New(rand.NewPCG(1, 2))
		step = func(i int) error {
			for j := range idx {
				idx[j] = (i%nb)*cfg.BatchSize + j
			}
			ds.Batch(idx, prog.X, prog.Y)
			if loss, err = prog.Run(rng); err != nil {
				return err
			}
			opt.Step(ps, cfg.LR)
			return nil
		}
	}
	for i := 0; i < *warmup; i++ {
		if err := step(i); err != nil {
			return err
		}
	}
	if prof != nil {
		startProfile()
		profiling = true
	}
	t0 := time.Now()
	for i := 0; i < *steps; i++ {
		if err := step(i); err != nil {
			return err
		}
	}
	if lossOf != nil {
		if loss, err = lossOf(); err != nil {
			return err
		}
	}
	dt := time.Since(t0).Seconds()
	tflops := float64(flops) * float64(*steps) / dt / 1e12
	rec := map[string]any{
		"impl": "gotrain", "version": trainer.Version, "blas": cblas.Backend(), "model": cfg.Model, "hidden": cfg.ModelSpec().Hidden, "depth": cfg.Depth,
		"batch_size": cfg.BatchSize, "optimizer": cfg.Optimizer, "threads": cfg.Threads, "steps": *steps, "device": devName,
		"seconds": dt, "samples_per_sec": float64(*steps*cfg.BatchSize) / dt, "loss": loss,
		"model_flops_per_step": flops, "tflops": tflops, "precision": prec.String(), "pinned_memory": pinnedMem,
	}
	if *peak > 0 {
		rec["mfu"] = tflops / *peak
	}
	if prof != nil {
		// A profiled run waits for the device after every op: its speed
		// is not the benchmark's.
		rec["profiled"] = true
		fmt.Fprintf(stderr, "where the time of %d steps went on %s (each op waited for):\n", *steps, devName)
		if err := prof.Write(stderr); err != nil {
			return err
		}
	}
	return json.NewEncoder(stdout).Encode(rec)
}

// localRank is LOCAL_RANK, 0 when unset.
func localRank() int {
	r, _ := strconv.Atoi(os.Getenv("LOCAL_RANK"))
	return max(r, 0)
}
