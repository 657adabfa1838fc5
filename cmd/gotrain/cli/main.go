// Package cli is the gotrain command line, as a library: [Main] runs it.
// cmd/gotrain is this package and nothing else; a program that registers
// its own models with graph.Register and calls Main is gotrain with those
// models (train, launch, eval and bench take them by --model):
//
//	func main() {
//		if err := graph.Register("mynet", NewMyNet); err != nil {
//			log.Fatal(err)
//		}
//		os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
//	}
//
//	gotrain train [flags]              train a model (see 'gotrain train -h')
//	gotrain launch ... -- PROGRAM      run the workers of a job (any program)
//	gotrain eval --checkpoint PATH     evaluate saved weights on the test split
//	gotrain bench train [flags]        training throughput, as one JSON line
//	gotrain version                    print the version
//
// Exit status: 0 on success, 1 when the run fails, 2 on a usage error.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gotrain/gotrain/cmd/gotrain/launch"
	"github.com/gotrain/gotrain/cmd/gotrain/plot"
	"github.com/gotrain/gotrain/gpu"
	"github.com/gotrain/gotrain/gpu/cuda"
	"github.com/gotrain/gotrain/graph/cblas"
	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/dist/rendezvous"
	"github.com/gotrain/gotrain/trainer/metrics"
)

// errUsage marks usage errors (exit status 2).
var errUsage = errors.New("usage")

// Main runs the gotrain command line on args (without the program's
// name), writing to stdout and stderr, and returns the exit status: 0
// done, 1 failed, 2 a usage error. cmd/gotrain's main is this call; a
// program that registers its own models (graph.Register) and calls it is
// gotrain with those models: its train, launch and eval take them by
// --model, and its eval evaluates the weights they saved.
func Main(args []string, stdout, stderr io.Writer) int { return run(args, stdout, stderr) }

const usage = `gotrain: distributed deep-learning training in Go

Usage:
  gotrain train [flags]            train a model (gotrain train -h lists the flags)
  gotrain launch --nproc-per-node N [--nnodes M --node-rank K --rdzv-endpoint HOST:PORT | --standalone] -- train [flags]
                                   run N data-parallel workers on this node
  gotrain eval --checkpoint PATH   evaluate a checkpoint or weights file on the test split
  gotrain plot RUN.jsonl -o curves.png  draw loss, accuracy, throughput, GPU use and batch shares
  gotrain devices                  list the GPUs (NVML) and CPUs this machine has
  gotrain bench train [flags]      measure training throughput (one JSON line)
  gotrain bench allreduce [flags]  all-reduce bandwidth table (like nccl-tests)
  gotrain version                  print the version
`

// run is main without os.Exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if err := checkArgLengths(args); err != nil {
		fmt.Fprintf(stderr, "gotrain: %v\n", err)
		return 2
	}
	var err error
	switch args[0] {
	case "launch":
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "gotrain launch: %v\n", err)
			return 1
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return launch.Run(ctx, exe, args[1:], stdout, stderr, os.Getenv)
	case "train":
		err = cmdTrain(args[1:], stdout, stderr)
	case "plot":
		return plot.Run(args[1:], stdout, stderr)
	case "devices":
		if err = gpu.DescribeSystem(stdout); err == nil {
			_, err = fmt.Fprintln(stdout, cuda.Describe())
		}
	case "eval":
		err = cmdEval(args[1:], stdout, stderr)
	case "bench":
		err = cmdBench(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "gotrain %s (%s, %s/%s, BLAS: %s)\n", trainer.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH, cblas.Backend())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "gotrain: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage) || errors.Is(err, trainer.ErrConfig):
		fmt.Fprintf(stderr, "gotrain %s: %s\n", args[0], clipText(err.Error(), maxUsageLine))
		return 2
	default:
		fmt.Fprintf(stderr, "gotrain %s: error: %s\n", args[0], clipText(err.Error(), maxErrorLine))
		return 1
	}
}

// maxArgBytes bounds one command-line argument of gotrain's own (those
// after "--" belong to the program 'gotrain launch' starts): no flag value
// is longer than a path, and a longer one is refused by its start alone
// rather than echoed whole in an error.
const maxArgBytes = 8192

func checkArgLengths(args []string) error {
	for i, a := range args {
		if a == "--" {
			return nil
		}
		if len(a) > maxArgBytes {
			const keep = 40
			return fmt.Errorf("argument %d is %d bytes long (it starts %q...); gotrain's arguments are at most %d bytes", i+1, len(a), strings.ToValidUTF8(a[:keep], ""), maxArgBytes)
		}
	}
	return nil
}

// Bounds on a line of what gotrain prints about a refused input: a
// refused value is quoted by its start, never echoed whole. A flag set
// prints the value it refuses before returning its error, so its output
// is clipped too (its help lines are shorter).
const (
	maxUsageLine = 320  // usage errors and flag sets' output
	maxErrorLine = 4096 // other errors
)

// clipText cuts each line of s that is longer than n bytes to its start
// and its end (where a flag error says why), saying how much it left out.
func clipText(s string, n int) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if len(l) > n {
			head, tail := l[:n*2/3], l[len(l)-n/3:]
			lines[i] = strings.ToValidUTF8(fmt.Sprintf("%s[... %d bytes left out ...]%s", head, len(l)-len(head)-len(tail), tail), "")
		}
	}
	return strings.Join(lines, "\n")
}

// clipWriter is w with every write's lines cut to maxUsageLine: the output
// of a flag set.
type clipWriter struct{ w io.Writer }

func (c clipWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(c.w, clipText(string(p), maxUsageLine)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// listFlag is a flag of comma-separated values ("256,128"): at most max
// of them (tooMany says why, given max), each read by parse, which says
// false for a value the flag refuses (want says what it takes).
type listFlag[T any] struct {
	v       *[]T
	max     int
	tooMany string
	want    string
	parse   func(string) (T, bool)
	format  func(T) string
}

// intList is a flag of positive integers: --hidden 256,128.
func intList(v *[]int) listFlag[int] {
	return listFlag[int]{v, trainer.MaxHiddenLayers, "at most %d layers are supported", "positive integers like 256,128",
		func(s string) (int, bool) { n, err := strconv.Atoi(s); return n, err == nil && n > 0 }, strconv.Itoa}
}

// channelList is a flag of finite float32s, one per image channel: --mean
// 0.4914,0.4822,0.4465.
func channelList(v *[]float32) listFlag[float32] {
	return listFlag[float32]{v, trainer.MaxChannels, "images have at most %d channels", "finite numbers like 0.4914,0.4822,0.4465",
		func(s string) (float32, bool) {
			x, err := strconv.ParseFloat(s, 32)
			return float32(x), err == nil && !math.IsNaN(x) && !math.IsInf(x, 0)
		},
		func(x float32) string { return strconv.FormatFloat(float64(x), 'g', -1, 32) }}
}

func (l listFlag[T]) String() string {
	if l.v == nil {
		return ""
	}
	s := make([]string, len(*l.v))
	for i, x := range *l.v {
		s[i] = l.format(x)
	}
	return strings.Join(s, ",")
}

func (l listFlag[T]) Set(s string) error {
	if n := strings.Count(s, ",") + 1; n > l.max {
		return fmt.Errorf("%d values; "+l.tooMany, n, l.max)
	}
	var out []T
	for _, f := range strings.Split(s, ",") {
		x, ok := l.parse(strings.TrimSpace(f))
		if !ok {
			return fmt.Errorf("%q is not a list of %s", s, l.want)
		}
		out = append(out, x)
	}
	*l.v = out
	return nil
}

// trainFlags binds the train flags to cfg (whose values are the defaults).
func trainFlags(fs *flag.FlagSet, cfg *trainer.Config) *string {
	configPath := fs.String("config", "", "YAML or JSON file of settings (flag names with _ for -); flags override it")
	fs.StringVar(&cfg.Model, "model", cfg.Model, "model: mlp, cnn, resnet (CIFAR-style, with BatchNorm; see --depth) or one a program registered")
	fs.IntVar(&cfg.Depth, "depth", cfg.Depth, "resnet: layers, 6n+2 (20, 32, 56, ...; 0 = 20)")
	fs.Float64Var(&cfg.LabelSmoothing, "label-smoothing", cfg.LabelSmoothing, "label smoothing ε of the cross-entropy, in [0, 1): the target (1-ε)·onehot + ε/classes, as PyTorch's label_smoothing")
	fs.BoolVar(&cfg.SyncBatchNorm, "sync-batchnorm", cfg.SyncBatchNorm, "normalise BatchNorm layers by the statistics of the global batch, summed across the ranks (PyTorch's SyncBatchNorm; default: each rank's own part of the batch, as DDP)")
	fs.Var(intList(&cfg.Hidden), "hidden", "hidden layer widths, comma-separated (mlp default 256; cnn: fc width, default 128)")
	fs.StringVar(&cfg.Activation, "activation", cfg.Activation, "activation: relu, tanh, sigmoid, gelu or silu")
	fs.Float64Var(&cfg.Dropout, "dropout", cfg.Dropout, "dropout probability after hidden activations (0 = off)")
	fs.StringVar(&cfg.Dataset, "dataset", cfg.Dataset, "dataset: mnist, fashion-mnist, synthetic, csv (train.csv and test.csv of --data-dir: float feature columns and a --label column), or folder (image folders train and test of --data-dir: a folder of PNG or JPEG images per class)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory with the IDX files (default: where the dataset's package puts them), with train.csv and test.csv for --dataset csv, or with the folders train and test for --dataset folder")
	fs.StringVar(&cfg.Label, "label", cfg.Label, "csv: the column holding the class, an integer from 0")
	fs.IntVar(&cfg.Classes, "classes", cfg.Classes, "the model's outputs (0 = the training data's class count; csv: its largest label + 1)")
	fs.BoolVar(&cfg.Augment, "augment", cfg.Augment, "random crop of the training images (image datasets and folders) padded by --pad zeros, and horizontal flip, per sample and epoch")
	fs.IntVar(&cfg.Pad, "pad", cfg.Pad, "zeros padded around an image before --augment's random crop")
	fs.Var(channelList(&cfg.Mean), "mean", "images: per-channel means of p/255, as torchvision's Normalize (default: the dataset's, a folder's training split's)")
	fs.Var(channelList(&cfg.Std), "std", "images: per-channel deviations of p/255, with --mean")
	fs.IntVar(&cfg.DataWorkers, "data-workers", cfg.DataWorkers, "folder: workers decoding the image files (0 = one per CPU)")
	fs.IntVar(&cfg.SyntheticSize, "synthetic-size", cfg.SyntheticSize, "training samples of the synthetic dataset")
	fs.IntVar(&cfg.Epochs, "epochs", cfg.Epochs, "epochs to train")
	fs.Int64Var(&cfg.MaxSteps, "max-steps", cfg.MaxSteps, "stop after this many optimiser steps in all (0 = no limit; the schedule still spans --epochs)")
	fs.IntVar(&cfg.BatchSize, "batch-size", cfg.BatchSize, "samples per optimiser step")
	fs.IntVar(&cfg.EvalBatchSize, "eval-batch-size", cfg.EvalBatchSize, "samples per evaluation batch")
	fs.StringVar(&cfg.Optimizer, "optimizer", cfg.Optimizer, "optimiser: sgd, adam or adamw")
	fs.Float64Var(&cfg.LR, "lr", cfg.LR, "learning rate")
	fs.Float64Var(&cfg.Momentum, "momentum", cfg.Momentum, "SGD momentum")
	fs.BoolVar(&cfg.Nesterov, "nesterov", cfg.Nesterov, "SGD with Nesterov momentum")
	fs.Float64Var(&cfg.WeightDecay, "weight-decay", cfg.WeightDecay, "weight decay (L2 for sgd and adam, decoupled for adamw)")
	fs.StringVar(&cfg.Schedule, "schedule", cfg.Schedule, "learning-rate schedule: constant, step or cosine")
	fs.Int64Var(&cfg.WarmupSteps, "warmup-steps", cfg.WarmupSteps, "linear warm-up steps before the schedule")
	fs.Int64Var(&cfg.StepSize, "step-size", cfg.StepSize, "steps between decays of the step schedule")
	fs.Float64Var(&cfg.Gamma, "gamma", cfg.Gamma, "decay factor of the step schedule")
	fs.Float64Var(&cfg.MinLR, "min-lr", cfg.MinLR, "final learning rate of the cosine schedule")
	fs.Float64Var(&cfg.ClipGradNorm, "clip-grad-norm", cfg.ClipGradNorm, "clip gradients to this global L2 norm (0 = off)")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed for initialisation, shuffling and dropout")
	fs.StringVar(&cfg.CheckpointDir, "checkpoint-dir", cfg.CheckpointDir, "directory for checkpoints (safetensors); written each epoch and on interrupt")
	fs.Int64Var(&cfg.CheckpointEvery, "checkpoint-every", cfg.CheckpointEvery, "also checkpoint every N steps (0 = only at epoch ends)")
	fs.IntVar(&cfg.KeepCheckpoints, "keep-checkpoints", cfg.KeepCheckpoints, "checkpoints to keep (0 = all)")
	fs.StringVar(&cfg.Resume, "resume", cfg.Resume, "resume from a checkpoint file, or the newest in a directory")
	fs.StringVar(&cfg.MetricsFile, "metrics-file", cfg.MetricsFile, "write metrics as JSON Lines to this file")
	fs.StringVar(&cfg.Out, "out", cfg.Out, "write the final weights (safetensors) to this file")
	fs.Int64Var(&cfg.LogEvery, "log-every", cfg.LogEvery, "steps between train records in the metrics file")
	fs.IntVar(&cfg.Threads, "threads", cfg.Threads, "threads for matrix products and kernels (0 = number of CPUs)")
	fs.StringVar(&cfg.Precision, "precision", cfg.Precision, "matrix products on a device: fp32, tf32, or bf16 (bfloat16 inputs on the tensor cores, float32 sums, float32 weights and optimiser state)")
	fs.StringVar(&cfg.ReducePrecision, "reduce-precision", cfg.ReducePrecision, "what gradients are all-reduced in: fp32, or bf16 (half the bytes; needs the gradient buckets on a device: --device gpu --backend nccl)")
	fs.BoolVar(&cfg.Prefetch, "prefetch", cfg.Prefetch, "on a device: decode the next batch while the device runs this one (--prefetch=false to measure what it gains)")
	fs.BoolVar(&cfg.PinMemory, "pin-memory", cfg.PinMemory, "on a GPU: batches in page-locked memory, uploaded by queued copies (--pin-memory=false: pageable memory, copies waited for)")
	fs.StringVar(&cfg.Device, "device", cfg.Device, "where the model trains: cpu; gpu (a build with GPU support; LOCAL_RANK picks the GPU); auto (gpu where the build, the machine and the run allow, else cpu); host (the GPU code path on the CPU, for testing)")
	// Data parallelism: the job comes from the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...; see 'gotrain launch').
	fs.IntVar(&cfg.AccumSteps, "accum-steps", cfg.AccumSteps, "micro-batches per optimiser step (gradients are accumulated; ranks communicate once per step)")
	fs.Float64Var(&cfg.BucketMB, "bucket-mb", cfg.BucketMB, "gradient all-reduce bucket size, MiB")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "deadline of each collective; a rank that dies or stalls ends the job within it")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, "serve Prometheus metrics at HOST:PORT/metrics (each rank: port + local rank)")
	fs.StringVar(&cfg.Sync, "sync", cfg.Sync, "how ranks combine work: allreduce (mean gradient every step), local-sgd (local steps, parameters averaged every --sync-period steps) or async (rank 0 serves the parameters; ranks push gradients without waiting for each other)")
	fs.Float64Var(&cfg.OuterLR, "outer-lr", cfg.OuterLR, "local-sgd: learning rate of the outer (Nesterov SGD) step on the averaged change; 1 with --outer-momentum 0 is plain averaging (DiLoCo: 0.7)")
	fs.Float64Var(&cfg.OuterMomentum, "outer-momentum", cfg.OuterMomentum, "local-sgd: momentum of the outer step (DiLoCo: 0.9)")
	fs.Int64Var(&cfg.MaxStaleness, "max-staleness", cfg.MaxStaleness, "async: a rank waits when it is more than this many updates ahead of the slowest (negative: never)")
	fs.BoolVar(&cfg.DownWeightStale, "downweight-stale", cfg.DownWeightStale, "async: scale a gradient that is s updates stale by 1/(1+s)")
	fs.Int64Var(&cfg.SyncPeriod, "sync-period", cfg.SyncPeriod, "local-sgd: steps between parameter averages")
	fs.IntVar(&cfg.PipelineStages, "pipeline-stages", cfg.PipelineStages, "model parallelism: split the model into this many stages, one per rank (the world size)")
	fs.IntVar(&cfg.MicroBatches, "micro-batches", cfg.MicroBatches, "pipeline: micro-batches per global batch")
	fs.StringVar(&cfg.Balance, "balance", cfg.Balance, "per-rank batch shares: off (equal), static (measured once) or adaptive (re-planned from measured speed)")
	fs.Int64Var(&cfg.BalanceEvery, "balance-every", cfg.BalanceEvery, "steps between re-plans of the batch shares")
	fs.Func("shares", "fixed per-rank shares of the global batch, one weight per rank (e.g. 0.7,0.3), instead of --balance", func(v string) error {
		cfg.Shares = nil
		for _, f := range strings.Split(v, ",") {
			w, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil {
				return fmt.Errorf("%q is not a number", f)
			}
			cfg.Shares = append(cfg.Shares, w)
		}
		return nil
	})
	fs.StringVar(&cfg.DebugSlowRank, "debug-slow-rank", cfg.DebugSlowRank, "testing: RANK:FACTOR makes that rank FACTOR times slower (it sleeps), a reproducible straggler")
	fs.StringVar(&cfg.Backend, "backend", cfg.Backend, "communication backend: cpu (TCP/Unix-socket ring), nccl (libnccl.so.2, loaded at run time; NCCL_LIBRARY names another file) or auto (cpu in this build)")
	fs.DurationVar(&cfg.RdzvTimeout, "rdzv-timeout", cfg.RdzvTimeout, "deadline for every rank to join")
	fs.StringVar(&cfg.TLSCert, "tls-cert", cfg.TLSCert, "PEM certificate of this process: encrypts the job's connections with TLS")
	fs.StringVar(&cfg.TLSKey, "tls-key", cfg.TLSKey, "PEM private key for --tls-cert")
	fs.StringVar(&cfg.TLSCA, "tls-ca", cfg.TLSCA, "PEM CA that signs every rank's certificate: mutual TLS")
	fs.StringVar(&cfg.CPUProfile, "cpu-profile", cfg.CPUProfile, "write a CPU profile of the run to this file (each rank of a job of several: FILE.rankN), for 'go tool pprof'")
	return configPath
}

// configPathArg finds --config in args before the flags are parsed, so
// that the file sets the defaults the flags then override.
func configPathArg(args []string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		for _, p := range []string{"--config", "-config"} {
			if a == p && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v
			}
		}
	}
	return ""
}

func parseTrain(name string, args []string, stderr io.Writer) (trainer.Config, error) {
	cfg := trainer.Default()
	if p := configPathArg(args); p != "" {
		if err := cfg.LoadFile(p); err != nil {
			return cfg, err
		}
	}
	fs := flag.NewFlagSet("gotrain "+name, flag.ContinueOnError)
	fs.SetOutput(clipWriter{stderr})
	trainFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, fmt.Errorf("%w: %v (see 'gotrain %s -h')", errUsage, err, name)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("%w: unexpected argument %q (see 'gotrain %s -h')", errUsage, fs.Arg(0), name)
	}
	return cfg, cfg.Validate()
}

// setThreads makes --threads the number of threads doing gotrain's work:
// matrix products are split n ways and the other kernels run on at most n
// OS threads (GOMAXPROCS). 0 means one per CPU.
func setThreads(n int) {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	runtime.GOMAXPROCS(n)
	cblas.SetThreads(n)
}

// startCPUProfile profiles the process into path (path.rankN for rank N
// of a job of several ranks, from the torchrun environment) until the
// returned function is called.
func startCPUProfile(path string) (func(), error) {
	if ws, _ := strconv.Atoi(os.Getenv("WORLD_SIZE")); ws > 1 {
		path += ".rank" + os.Getenv("RANK")
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func cmdTrain(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseTrain("train", args, stderr)
	if err != nil {
		return err
	}
	// Before anything is loaded or joined: outputs that cannot be written
	// and runs that cannot fit are refused now, not after the training.
	env, envErr := rendezvous.FromEnv(os.Getenv)
	pre := trainer.PreflightEnv{}
	if envErr == nil {
		pre.Rank, pre.LocalRanks = env.Rank, env.LocalWorldSize
	}
	if err := trainer.Preflight(cfg, pre); err != nil {
		return err
	}
	setThreads(cfg.Threads)
	if cfg.CPUProfile != "" {
		stopProfile, err := startCPUProfile(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	train, test, err := trainer.LoadSources(cfg)
	if err != nil {
		return err
	}
	// On a terminal: a live progress bar, with log lines printed above it.
	// Elsewhere: plain periodic log lines.
	total := int64(cfg.Epochs) * int64(train.Len())
	errFile, _ := stderr.(*os.File)
	var bar *metrics.Progress
	var logger *slog.Logger
	// The status line shows this rank's GPU once the job is joined (its
	// LOCAL_RANK picks the device).
	var gpuStatus atomic.Pointer[func() string]
	status := metrics.WithStatus(func() string {
		if f := gpuStatus.Load(); f != nil {
			return (*f)()
		}
		return ""
	})
	if errFile != nil && metrics.IsTerminal(errFile) {
		bar = metrics.NewProgress(errFile, total, metrics.WithEpochs(cfg.Epochs), metrics.WithUnit("samples"), status)
		logger = slog.New(slog.NewTextHandler(bar, nil))
	} else {
		logger = slog.New(slog.NewTextHandler(stderr, nil))
		bar = metrics.NewProgress(stderr, total, metrics.WithLogger(logger), metrics.WithEpochs(cfg.Epochs), metrics.WithUnit("samples"), status)
	}
	logger.Info("gotrain", "version", trainer.Version, "blas", cblas.Backend())
	// Restarted by 'gotrain launch --max-restarts' (or torchrun): carry on
	// from the newest checkpoint, if one was written before the failure.
	if n, _ := strconv.Atoi(os.Getenv(launch.EnvRestartCount)); n > 0 && cfg.Resume == "" && cfg.CheckpointDir != "" {
		if path, err := checkpoint.Resolve(cfg.CheckpointDir); err == nil {
			cfg.Resume = cfg.CheckpointDir
			logger.Info("restarted; resuming", "restart", n, "checkpoint", path)
		} else {
			logger.Info("restarted; no checkpoint to resume from yet, starting afresh", "restart", n, "checkpoint_dir", cfg.CheckpointDir)
		}
	}

	// The device first: NCCL's communicator is made on it.
	local := 0
	if envErr == nil {
		local = env.LocalRank
	}
	dev, err := openDevice(cfg, local, logger)
	if err != nil {
		return err
	}
	if dev != nil {
		defer dev.Close()
	}
	j, err := join(ctx, cfg, logger, dev)
	if err != nil {
		return err
	}
	defer j.Close()
	rank := j.Rank()
	// The job's options: its communicator, the parameter server's
	// transport (--sync async), the device.
	jobOpts, err := j.TrainerOptions(ctx)
	if err != nil {
		return err
	}
	opts := append([]trainer.Option{trainer.WithSource(train, test), trainer.WithLogger(logger)}, jobOpts...)
	sampler, stopDevices := devices(2*time.Second, logger)
	defer stopDevices()
	// The balancer bounds a rank's share by its free memory: its GPU's
	// (NVML) when it trains on one, else the machine's.
	if cuda.IsGPU(dev) && sampler != nil {
		opts = append(opts, trainer.WithHeadroom(gpuHeadroom(func() []gpu.DeviceStats { s, _ := sampler.Latest(); return s }, local)))
	} else {
		opts = append(opts, trainer.WithHeadroom(rankHeadroom(logger)))
	}
	if sampler != nil {
		opts = append(opts, trainer.WithDeviceStats(func() []metrics.GPU {
			stats, _ := sampler.Latest()
			return gpuRecords(stats)
		}))
		f := func() string {
			stats, _ := sampler.Latest()
			return gpuLine(stats, local)
		}
		gpuStatus.Store(&f)
	}
	sinks := []metrics.Sink{metrics.NewSlogSink(logger)}
	if cfg.MetricsAddr != "" {
		exp, addr, err := j.ServeMetrics(cfg.MetricsAddr)
		if err != nil {
			return usageError(err)
		}
		defer exp.Close()
		defer startMonitor(exp, sampler, 5*time.Second)()
		logger.Info("prometheus", "url", "http://"+addr+"/metrics")
		sinks = append(sinks, exp)
	}
	// Rank 0 writes --metrics-file (trainer.New opens it); its records
	// carry rank and world_size.
	opts = append(opts, trainer.WithSink(metrics.Multi(sinks...)), trainer.WithProgress(func(p trainer.Progress) {
		bar.Update(p.Epoch, p.Epochs, int64(p.Epoch-1)*p.Total+p.Done, p.Loss, p.SamplesPerSec)
	}))
	t, err := trainer.New(cfg, opts...)
	if err != nil {
		return err
	}
	res, err := t.Run(ctx)
	bar.Finish()
	if err != nil {
		j.Abort(err)
		return err
	}
	var metricsErr error
	metricsNote := ""
	if st, ok, err := t.MetricsFile(); ok {
		if err != nil {
			metricsErr = fmt.Errorf("--metrics-file: %w", err)
		}
		if st.Failures > 0 {
			metricsNote = fmt.Sprintf("; metrics file: %d write failures, %d records written late, %d lost", st.Failures, st.Late, st.Lost)
		}
	}
	if cfg.Sync == "async" && rank != 0 {
		fmt.Fprintf(stdout, "async worker %d: %d batches; %.0f samples/s; %.1fs; rank 0 reports the test accuracy\n",
			rank, res.Steps, res.TrainSamplesPerSec, res.WallSeconds)
		return nil
	}
	fmt.Fprintf(stdout, "test accuracy %.2f%% (test loss %.4f) after %d steps; %.0f samples/s; %.1fs; peak RSS %d MB; data wait %.1f%% of training%s\n",
		100*res.TestAccuracy, res.TestLoss, res.Steps, res.TrainSamplesPerSec, res.WallSeconds, res.PeakRSSBytes>>20, 100*res.DataWaitFraction, metricsNote)
	return metricsErr
}

func cmdEval(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gotrain eval", flag.ContinueOnError)
	fs.SetOutput(clipWriter{stderr})
	ckpt := fs.String("checkpoint", "", "checkpoint or weights file, or a checkpoint directory (newest)")
	dataset := fs.String("dataset", "", "dataset: mnist, fashion-mnist, synthetic, csv or folder (default: the one the model was trained on)")
	dataDir := fs.String("data-dir", "", "directory with the IDX files, test.csv for csv, or the folder test for folder (default: the one the model was trained with)")
	batch := fs.Int("eval-batch-size", 250, "samples per batch")
	threads := fs.Int("threads", 0, "threads (0 = number of CPUs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *ckpt == "" || fs.NArg() > 0 || *batch <= 0 || *batch > trainer.MaxBatch {
		return fmt.Errorf("%w: want --checkpoint PATH and an --eval-batch-size from 1 to %d (see 'gotrain eval -h')", errUsage, trainer.MaxBatch)
	}
	if *threads < 0 || *threads > trainer.MaxThreads() {
		return fmt.Errorf("%w: --threads %d must be from 0 (one per CPU) to %d", errUsage, *threads, trainer.MaxThreads())
	}
	setThreads(*threads)
	m, cfg, path, err := trainer.LoadModel(*ckpt)
	if err != nil {
		return err
	}
	// Weights that say what data they were trained on are evaluated on
	// that data only, unless --dataset names the data to use: a dataset a
	// program supplied is not one this command can load.
	id, checkData, err := trainer.TrainedOn(path)
	if err != nil {
		return err
	}
	named := *dataset != ""
	if named {
		cfg.Dataset = *dataset
		if cfg.Dataset != "folder" {
			cfg.Augment = false // training's augmentation; evaluation reads the test split as it is
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if checkData && !named {
		if err := trainer.CheckTestSource(id, cfg, nil); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	// The test split, normalised as the training data was (for csv and
	// folder, by the constants the file records).
	test, err := trainer.LoadTestSource(cfg, path)
	if err != nil {
		return err
	}
	if checkData {
		err := trainer.CheckTestSource(id, cfg, test)
		switch {
		case err != nil && !named:
			return fmt.Errorf("%s: %w", path, err)
		case err != nil:
			// --dataset names the data to evaluate on: said, not refused.
			fmt.Fprintf(stderr, "gotrain eval: note: %v\n", err)
		}
	}
	acc, loss, err := trainer.EvaluateSource(m, test, *batch)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s on %s test (%d samples): accuracy %.2f%%, loss %.4f\n", path, cfg.Model, cfg.Dataset, test.Len(), 100*acc, loss)
	return nil
}
