package trainer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/balance"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Config is one training run. Its JSON/YAML field names are those of the
// `gotrain train` flags with dashes turned into underscores; a --config
// file holds a subset of them and flags override it.
type Config struct {
	Model      string  `json:"model" yaml:"model"`
	Hidden     []int   `json:"hidden,omitempty" yaml:"hidden,omitempty"`
	Activation string  `json:"activation" yaml:"activation"`
	Dropout    float64 `json:"dropout" yaml:"dropout"`
	// Depth is resnet's number of layers, 6n+2 (0: 20).
	Depth int `json:"depth,omitempty" yaml:"depth,omitempty"`
	// SyncBatchNorm normalises BatchNorm layers by the statistics of the
	// global batch, summed across the ranks in the forward and backward
	// passes (PyTorch's SyncBatchNorm): N ranks train as one process.
	// Without it each rank uses its own part of the batch, as DDP does.
	SyncBatchNorm bool `json:"sync_batchnorm,omitempty" yaml:"sync_batchnorm,omitempty"`
	// LabelSmoothing is the loss's label smoothing ε in [0, 1): the
	// cross-entropy against (1-ε)·onehot + ε/K (PyTorch's label_smoothing).
	LabelSmoothing float64 `json:"label_smoothing,omitempty" yaml:"label_smoothing,omitempty"`

	Dataset       string `json:"dataset" yaml:"dataset"`
	DataDir       string `json:"data_dir,omitempty" yaml:"data_dir,omitempty"`
	SyntheticSize int    `json:"synthetic_size,omitempty" yaml:"synthetic_size,omitempty"`
	// Label is the label column of --dataset csv.
	Label string `json:"label,omitempty" yaml:"label,omitempty"`
	// Classes is the model's number of outputs; 0 takes the training
	// data's class count (for csv: one more than its largest label).
	Classes int `json:"classes,omitempty" yaml:"classes,omitempty"`
	// Augment draws a random crop of the image padded by Pad zeros on
	// every side and a horizontal flip, per sample and epoch, from (seed,
	// epoch, index): the training split of an image dataset or folder (the
	// same draws for the same index).
	Augment bool `json:"augment,omitempty" yaml:"augment,omitempty"`
	Pad     int  `json:"pad" yaml:"pad"`
	// Mean and Std normalise each channel of an image's p/255 to
	// (p/255 - Mean)/Std, as torchvision's Normalize(mean, std), one value
	// per channel: they replace an IDX dataset's fixed constants (mnist
	// 0.1307 and 0.3081, fashion-mnist 0.2860 and 0.3530) and a folder's
	// training-split statistics. Both or neither; nil keeps those.
	Mean []float32 `json:"mean,omitempty" yaml:"mean,omitempty"`
	Std  []float32 `json:"std,omitempty" yaml:"std,omitempty"`
	// DataWorkers decode the image files of --dataset folder (0: one per
	// CPU).
	DataWorkers int `json:"data_workers,omitempty" yaml:"data_workers,omitempty"`

	Epochs        int   `json:"epochs" yaml:"epochs"`
	MaxSteps      int64 `json:"max_steps,omitempty" yaml:"max_steps,omitempty"`
	BatchSize     int   `json:"batch_size" yaml:"batch_size"`
	EvalBatchSize int   `json:"eval_batch_size" yaml:"eval_batch_size"`

	Optimizer    string  `json:"optimizer" yaml:"optimizer"`
	LR           float64 `json:"lr" yaml:"lr"`
	Momentum     float64 `json:"momentum" yaml:"momentum"`
	Nesterov     bool    `json:"nesterov" yaml:"nesterov"`
	WeightDecay  float64 `json:"weight_decay" yaml:"weight_decay"`
	Schedule     string  `json:"schedule" yaml:"schedule"`
	WarmupSteps  int64   `json:"warmup_steps" yaml:"warmup_steps"`
	StepSize     int64   `json:"step_size,omitempty" yaml:"step_size,omitempty"`
	Gamma        float64 `json:"gamma" yaml:"gamma"`
	MinLR        float64 `json:"min_lr" yaml:"min_lr"`
	ClipGradNorm float64 `json:"clip_grad_norm" yaml:"clip_grad_norm"`

	Seed uint64 `json:"seed" yaml:"seed"`

	CheckpointDir   string `json:"checkpoint_dir,omitempty" yaml:"checkpoint_dir,omitempty"`
	CheckpointEvery int64  `json:"checkpoint_every" yaml:"checkpoint_every"`
	KeepCheckpoints int    `json:"keep_checkpoints" yaml:"keep_checkpoints"`
	Resume          string `json:"resume,omitempty" yaml:"resume,omitempty"`
	MetricsFile     string `json:"metrics_file,omitempty" yaml:"metrics_file,omitempty"`
	Out             string `json:"out,omitempty" yaml:"out,omitempty"`
	LogEvery        int64  `json:"log_every" yaml:"log_every"`
	Threads         int    `json:"threads" yaml:"threads"`
	// Device is where the model trains: cpu, gpu (the gpu build, GPU
	// LOCAL_RANK), auto (gpu where the build and the machine have one) or
	// host (the device executor on the CPU: what gpu runs, with the kernels
	// compiled for the host; for tests).
	Device string `json:"device,omitempty" yaml:"device,omitempty"`
	// Precision of the matrix products on a device: fp32; tf32; bf16
	// (inputs rounded to bfloat16 on the tensor cores, float32 sums, float32
	// master weights and optimiser state). The CPU computes in fp32.
	Precision string `json:"precision,omitempty" yaml:"precision,omitempty"`
	// ReducePrecision is what gradients travel in between ranks: fp32, or
	// bf16 (half the bytes; the buckets on the device, --backend nccl).
	ReducePrecision string `json:"reduce_precision,omitempty" yaml:"reduce_precision,omitempty"`
	// Prefetch decodes the next batch while a device runs the current one
	// (see prefetch.go); PinMemory puts the batches in page-locked memory
	// where the device has some (a GPU), so that their uploads are queued
	// with the kernels instead of waited for: PyTorch's DataLoader
	// prefetching and pin_memory. Both are on by default and change
	// nothing but the speed; turning them off measures what they gain.
	Prefetch  bool `json:"prefetch" yaml:"prefetch"`
	PinMemory bool `json:"pin_memory" yaml:"pin_memory"`

	// Data parallelism (with several ranks).
	AccumSteps int     `json:"accum_steps" yaml:"accum_steps"`
	BucketMB   float64 `json:"bucket_mb" yaml:"bucket_mb"`
	// Timeout is the deadline of each collective. In a config file it is a
	// duration string ("30s", "10m"); JSON also takes an integer of
	// nanoseconds, which is how checkpoints store it.
	Timeout time.Duration `json:"timeout" yaml:"timeout"`
	// Sync is how ranks combine their work: "allreduce" (the mean gradient
	// every step), "local-sgd" (each rank steps on its own share; the
	// parameters are averaged every SyncPeriod steps) or "async" (rank 0
	// serves the parameters; every rank pushes gradients of batches of
	// BatchSize/world samples and never waits for the others, unless it is
	// more than MaxStaleness updates ahead of the slowest; see trainer/ps).
	Sync       string `json:"sync" yaml:"sync"`
	SyncPeriod int64  `json:"sync_period" yaml:"sync_period"`
	// OuterLR and OuterMomentum make local SGD's synchronisation an outer
	// optimiser step (DiLoCo): the change since the last synchronisation,
	// averaged over the ranks, is the outer gradient of a Nesterov SGD
	// with this learning rate and momentum. 1 and 0 (the defaults) are
	// plain averaging; DiLoCo uses 0.7 and 0.9.
	OuterLR       float64 `json:"outer_lr" yaml:"outer_lr"`
	OuterMomentum float64 `json:"outer_momentum" yaml:"outer_momentum"`
	// MaxStaleness bounds async staleness (negative: no bound);
	// DownWeightStale scales a gradient of staleness s by 1/(1+s).
	MaxStaleness    int64 `json:"max_staleness" yaml:"max_staleness"`
	DownWeightStale bool  `json:"downweight_stale,omitempty" yaml:"downweight_stale,omitempty"`
	// Pipeline (model) parallelism: one stage per rank, each global batch
	// cut into MicroBatches.
	PipelineStages int `json:"pipeline_stages" yaml:"pipeline_stages"`
	MicroBatches   int `json:"micro_batches" yaml:"micro_batches"`
	// Load balancing: off, static or adaptive; re-planned every BalanceEvery steps.
	Balance      string `json:"balance" yaml:"balance"`
	BalanceEvery int64  `json:"balance_every" yaml:"balance_every"`
	// Shares fixes each rank's share of the global batch (weights, one per
	// rank, normalised) instead of measuring: for clusters whose speeds
	// are known. It excludes Balance other than "off".
	Shares []float64 `json:"shares,omitempty" yaml:"shares,omitempty"`
	// DebugSlowRank "R:F" makes rank R F times slower (it sleeps (F-1)× its
	// compute time each step, the sleeps' overshoot taken off the next
	// ones): a reproducible straggler for tests and benchmarks.
	DebugSlowRank string `json:"debug_slow_rank,omitempty" yaml:"debug_slow_rank,omitempty"`

	// Joining a job of several ranks (see 'gotrain launch'), and what the
	// process serves and writes besides the training. None of these
	// changes what is trained; the fingerprint that ranks compare leaves
	// out those that may differ per machine.
	//
	// Backend is the communication backend: cpu (the TCP/Unix-socket
	// ring), nccl, or auto (cpu in a build without GPUs).
	Backend string `json:"backend,omitempty" yaml:"backend,omitempty"`
	// RdzvTimeout is the deadline for every rank to join (a duration
	// string in a config file, as Timeout).
	RdzvTimeout time.Duration `json:"rdzv_timeout" yaml:"rdzv_timeout"`
	// TLSCert, TLSKey and TLSCA are PEM files (paths, not their contents):
	// this process's certificate and key, which encrypt the job's
	// connections, and the CA that signs every rank's (mutual TLS).
	TLSCert string `json:"tls_cert,omitempty" yaml:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty" yaml:"tls_key,omitempty"`
	TLSCA   string `json:"tls_ca,omitempty" yaml:"tls_ca,omitempty"`
	// MetricsAddr serves Prometheus metrics at HOST:PORT/metrics (the CLI;
	// each rank at port + local rank).
	MetricsAddr string `json:"metrics_addr,omitempty" yaml:"metrics_addr,omitempty"`
	// CPUProfile writes a CPU profile of the run to this file (the CLI;
	// FILE.rankN for each rank of a job of several).
	CPUProfile string `json:"cpu_profile,omitempty" yaml:"cpu_profile,omitempty"`
}

// Default returns the defaults of `gotrain train`: the MLP on MNIST, which
// reaches about 98% test accuracy in 2 epochs.
func Default() Config {
	return Config{
		Model: "mlp", Activation: "relu", Dataset: "mnist", SyntheticSize: 60000, Label: "label", Pad: 4,
		Epochs: 2, BatchSize: 64, EvalBatchSize: 250,
		Optimizer: "adam", LR: 2e-3, Momentum: 0.9, Schedule: "cosine", Gamma: 0.1,
		Seed: 1, KeepCheckpoints: 3, LogEvery: 100, Threads: 0, Device: "auto", Precision: "fp32", Prefetch: true, PinMemory: true,
		AccumSteps: 1, BucketMB: 25, Timeout: 10 * time.Minute, Balance: "off", BalanceEvery: 20, MaxStaleness: 16, OuterLR: 1,
		Sync: "allreduce", SyncPeriod: 8, PipelineStages: 1, MicroBatches: 4,
		Backend: "auto", RdzvTimeout: 5 * time.Minute,
	}
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid configuration")

func cfgErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
}

// Limits on what a configuration may ask for: beyond them a run cannot be
// built on any machine (or would take the machine down before its first
// step), so Validate refuses them with the limit instead of letting the
// Go runtime run out of memory or threads. The memory a run needs is
// checked separately against the machine (see [Preflight]).
const (
	// MaxNameBytes bounds a name-like value (model, dataset, optimiser,
	// device, modes); longer ones are refused, quoted by their start only.
	MaxNameBytes = 64
	// MaxPathBytes bounds a path (PATH_MAX on Linux).
	MaxPathBytes = 4096
	// MaxHiddenLayers bounds --hidden's number of widths.
	MaxHiddenLayers = 256
	// MaxWidth bounds one hidden width.
	MaxWidth = 1 << 24
	// MaxBatch bounds --batch-size and --eval-batch-size.
	MaxBatch = 1 << 24
	// MaxSyntheticSize bounds --synthetic-size.
	MaxSyntheticSize = 1 << 31
	// MaxEpochs bounds --epochs.
	MaxEpochs = 1 << 20
	// MaxBucketMB bounds --bucket-mb (1 TiB).
	MaxBucketMB = 1 << 20
	// MaxShares bounds the number of --shares.
	MaxShares = 1 << 16
	// MaxPipelineStages bounds --pipeline-stages.
	MaxPipelineStages = 1024
	// MaxClasses bounds --classes and the class count of any data.
	MaxClasses = 1 << 20
	// MaxChannels bounds --mean and --std: images are read as gray (1
	// channel) or RGB (3).
	MaxChannels = 3
	// MaxPad bounds --pad, the zeros around an augmented image.
	MaxPad = 1024
)

// MaxThreads is the most threads --threads may ask for: eight per CPU, and
// at least 64. Each thread is an OS thread with its own stack; a few per
// core already gain nothing, and tens of thousands exhaust the runtime.
func MaxThreads() int { return max(8*runtime.NumCPU(), 64) }

// quote quotes s for an error message, cut to its first 48 bytes (and its
// length) when it is longer: a refused value is named, not echoed whole.
func quote(s string) string {
	if p := prefix(s, 48); len(p) < len(s) {
		return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(p), len(s))
	}
	return strconv.Quote(s)
}

// prefix is s cut to at most n bytes, at the start of a character.
func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// checkSizes refuses values that no machine can build (see the Max
// constants) and strings longer than a name or a path can be.
func (c *Config) checkSizes() error {
	names := []struct{ flag, v string }{
		{"model", c.Model}, {"activation", c.Activation}, {"dataset", c.Dataset}, {"optimizer", c.Optimizer},
		{"schedule", c.Schedule}, {"device", c.Device}, {"precision", c.Precision}, {"reduce-precision", c.ReducePrecision},
		{"sync", c.Sync}, {"balance", c.Balance}, {"debug-slow-rank", c.DebugSlowRank}, {"backend", c.Backend},
		{"label", c.Label},
	}
	for _, n := range names {
		if len(n.v) > MaxNameBytes {
			return cfgErr("--%s %s is longer than any valid value (%d bytes at most)", n.flag, quote(n.v), MaxNameBytes)
		}
	}
	paths := []struct{ flag, v string }{
		{"data-dir", c.DataDir}, {"checkpoint-dir", c.CheckpointDir}, {"resume", c.Resume},
		{"metrics-file", c.MetricsFile}, {"out", c.Out}, {"tls-cert", c.TLSCert}, {"tls-key", c.TLSKey},
		{"tls-ca", c.TLSCA}, {"cpu-profile", c.CPUProfile}, {"metrics-addr", c.MetricsAddr},
	}
	for _, p := range paths {
		if len(p.v) > MaxPathBytes {
			return cfgErr("--%s %s is longer than a path can be (%d bytes)", p.flag, quote(p.v), MaxPathBytes)
		}
		if strings.IndexByte(p.v, 0) >= 0 {
			return cfgErr("--%s %s holds a NUL byte, which no path can", p.flag, quote(p.v))
		}
	}
	switch {
	case len(c.Hidden) > MaxHiddenLayers:
		return cfgErr("--hidden has %d widths; at most %d layers are supported", len(c.Hidden), MaxHiddenLayers)
	case c.Threads > MaxThreads():
		return cfgErr("--threads %d is more than %d (8 per CPU; this machine has %d): use --threads 0 for one per CPU", c.Threads, MaxThreads(), runtime.NumCPU())
	case c.BatchSize > MaxBatch || c.EvalBatchSize > MaxBatch:
		return cfgErr("--batch-size %d and --eval-batch-size %d must be at most %d", c.BatchSize, c.EvalBatchSize, MaxBatch)
	case c.SyntheticSize > MaxSyntheticSize:
		return cfgErr("--synthetic-size %d must be at most %d", c.SyntheticSize, MaxSyntheticSize)
	case c.Epochs > MaxEpochs:
		return cfgErr("--epochs %d must be at most %d", c.Epochs, MaxEpochs)
	case c.BucketMB > MaxBucketMB:
		return cfgErr("--bucket-mb %v must be at most %d", c.BucketMB, MaxBucketMB)
	case len(c.Shares) > MaxShares:
		return cfgErr("--shares has %d weights; at most %d ranks are supported", len(c.Shares), MaxShares)
	case c.PipelineStages > MaxPipelineStages:
		return cfgErr("--pipeline-stages %d must be at most %d", c.PipelineStages, MaxPipelineStages)
	case c.Classes > MaxClasses:
		return cfgErr("--classes %d must be at most %d", c.Classes, MaxClasses)
	case c.BatchSize > 0 && c.AccumSteps > c.BatchSize:
		return cfgErr("--accum-steps %d is more than --batch-size %d: every micro-batch needs a sample (at most %d)", c.AccumSteps, c.BatchSize, c.BatchSize)
	case c.BatchSize > 0 && c.MicroBatches > c.BatchSize:
		return cfgErr("--micro-batches %d is more than --batch-size %d: every micro-batch needs a sample (at most %d)", c.MicroBatches, c.BatchSize, c.BatchSize)
	case c.KeepCheckpoints < 0:
		return cfgErr("--keep-checkpoints %d must not be negative (0 keeps all)", c.KeepCheckpoints)
	case c.Pad < 0 || c.Pad > MaxPad:
		return cfgErr("--pad %d must be from 0 to %d", c.Pad, MaxPad)
	case len(c.Mean) > MaxChannels || len(c.Std) > MaxChannels:
		return cfgErr("--mean and --std have %d and %d values: images have at most %d channels", len(c.Mean), len(c.Std), MaxChannels)
	case c.DataWorkers < 0 || c.DataWorkers > MaxThreads():
		return cfgErr("--data-workers %d must be from 0 (one per CPU) to %d", c.DataWorkers, MaxThreads())
	}
	for _, h := range c.Hidden {
		if h > MaxWidth {
			return cfgErr("--hidden width %d must be at most %d", h, MaxWidth)
		}
	}
	return nil
}

// Validate checks the configuration and says what is wrong.
func (c *Config) Validate() error {
	if err := c.checkSizes(); err != nil {
		return err
	}
	if !graph.Registered(c.Model) {
		return cfgErr("--model %s is not a model (valid: %s)", quote(c.Model), strings.Join(graph.Models(), ", "))
	}
	if !slices.Contains([]string{"mnist", "fashion-mnist", "synthetic", "csv", "folder"}, c.Dataset) {
		return cfgErr("--dataset %s is not a dataset (valid: mnist, fashion-mnist, synthetic, csv, folder)", quote(c.Dataset))
	}
	if !slices.Contains(optim.Names(), c.Optimizer) {
		return cfgErr("--optimizer %s is not an optimiser (valid: %s)", quote(c.Optimizer), strings.Join(optim.Names(), ", "))
	}
	switch {
	case c.Epochs <= 0:
		return cfgErr("--epochs %d must be at least 1", c.Epochs)
	case c.BatchSize <= 0:
		return cfgErr("--batch-size %d must be at least 1", c.BatchSize)
	case c.EvalBatchSize <= 0:
		return cfgErr("--eval-batch-size %d must be at least 1", c.EvalBatchSize)
	case !(c.LR > 0):
		return cfgErr("--lr %v must be positive", c.LR)
	case c.Momentum < 0 || c.WeightDecay < 0 || c.ClipGradNorm < 0:
		return cfgErr("--momentum, --weight-decay and --clip-grad-norm must not be negative")
	case c.Dropout < 0 || c.Dropout >= 1:
		return cfgErr("--dropout %v must be in [0,1)", c.Dropout)
	case !(c.LabelSmoothing >= 0 && c.LabelSmoothing < 1):
		return cfgErr("--label-smoothing %v must be in [0, 1)", c.LabelSmoothing)
	case c.Depth != 0 && (c.Depth < 8 || c.Depth > 1000 || (c.Depth-2)%6 != 0):
		return cfgErr("--depth %d must be 6n+2 (20, 32, 44, 56, 110), at most 1000", c.Depth)
	case c.CheckpointEvery < 0 || c.MaxSteps < 0 || c.LogEvery < 0 || c.Threads < 0:
		return cfgErr("--checkpoint-every, --max-steps, --log-every and --threads must not be negative")
	case c.AccumSteps < 1:
		return cfgErr("--accum-steps %d must be at least 1", c.AccumSteps)
	case !(c.BucketMB > 0):
		return cfgErr("--bucket-mb %v must be positive", c.BucketMB)
	case c.Timeout <= 0:
		return cfgErr("--timeout %v must be positive", c.Timeout)
	case c.RdzvTimeout <= 0:
		return cfgErr("--rdzv-timeout %v must be positive", c.RdzvTimeout)
	case c.Dataset == "synthetic" && c.SyntheticSize <= 0:
		return cfgErr("--synthetic-size %d must be at least 1", c.SyntheticSize)
	case c.Classes < 0:
		return cfgErr("--classes %d must not be negative (0 takes the data's class count)", c.Classes)
	case c.Dataset == "csv" && strings.TrimSpace(c.Label) == "":
		return cfgErr("--dataset csv needs --label, the name of the label column")
	case c.Augment && c.Dataset == "csv":
		return cfgErr("--augment crops and flips images; --dataset csv holds none (drop --augment)")
	case (c.Mean != nil || c.Std != nil) && c.Dataset == "csv":
		return cfgErr("--mean and --std normalise images; --dataset csv standardises its columns by the training table's statistics (drop them)")
	case len(c.Mean) != len(c.Std):
		return cfgErr("--mean has %d values and --std %d: give one of each per channel of the images", len(c.Mean), len(c.Std))
	}
	for i := range c.Mean {
		if !data.ValidNorm(c.Mean[i], c.Std[i]) {
			return cfgErr("--mean and --std: channel %d has mean %v and deviation %v: every mean must be finite and every deviation positive and finite", i, c.Mean[i], c.Std[i])
		}
	}
	for _, h := range c.Hidden {
		if h <= 0 {
			return cfgErr("--hidden widths must be positive, got %v", c.Hidden)
		}
	}
	switch c.Backend {
	case "", "auto", "cpu", "nccl":
	default:
		return cfgErr("--backend %s is not a backend (valid: cpu, nccl, auto)", quote(c.Backend))
	}
	switch c.Device {
	case "", "cpu", "gpu", "auto", "host":
	default:
		return cfgErr("--device %s is not a device (valid: cpu, gpu, auto)", quote(c.Device))
	}
	if c.Precision != "" && c.Precision != "fp32" {
		if _, err := device.ParsePrecision(c.Precision); err != nil {
			return cfgErr("--%v", err)
		}
		if c.Device == "cpu" {
			return cfgErr("--precision %s runs on a device: use --device gpu (the CPU computes in fp32)", c.Precision)
		}
	}
	switch c.ReducePrecision {
	case "", "fp32":
	case "bf16":
		if c.Device == "cpu" {
			return cfgErr("--reduce-precision bf16 all-reduces gradient buckets on a device: use --device gpu with --backend nccl")
		}
		if c.Sync != "allreduce" {
			return cfgErr("--reduce-precision bf16 is for all-reduced gradients, and --sync %s all-reduces none: drop it", c.Sync)
		}
	default:
		return cfgErr("--reduce-precision %s is not one of fp32, bf16", quote(c.ReducePrecision))
	}
	if _, err := balance.ParseMode(c.Balance); err != nil {
		return cfgErr("%v", err)
	}
	if c.SyncBatchNorm {
		switch {
		case c.Sync != "allreduce":
			return cfgErr("--sync-batchnorm sums BatchNorm's statistics across the ranks of each step, and --sync %s has no common step: use --sync allreduce", c.Sync)
		case c.AccumSteps > 1:
			return cfgErr("--sync-batchnorm and --accum-steps: the ranks' micro-batches would each be normalised by their own statistics; use a larger --batch-size instead")
		case c.PipelineStages > 1:
			return cfgErr("--sync-batchnorm with --pipeline-stages is not supported yet: pipeline stages normalise by each micro-batch's statistics")
		}
	}
	switch c.Sync {
	case "allreduce", "local-sgd":
	case "async":
		switch {
		case c.PipelineStages > 1:
			return cfgErr("--sync async and --pipeline-stages: pipeline stages run synchronously; use one of them")
		case c.AccumSteps > 1:
			return cfgErr("--sync async and --accum-steps: an async worker pushes every batch; use one of them")
		case c.Balance != "off" || len(c.Shares) > 0:
			return cfgErr("--sync async balances by itself (fast workers take more batches): drop --balance and --shares")
		case c.CheckpointDir != "" || c.Resume != "" || c.CheckpointEvery > 0:
			return cfgErr("--sync async does not write or resume checkpoints yet: drop --checkpoint-dir, --checkpoint-every and --resume (rank 0 saves the final weights with --out)")
		}
	default:
		return cfgErr("--sync %s is not a mode (valid: allreduce, local-sgd, async)", quote(c.Sync))
	}
	if !(c.OuterLR > 0) || math.IsInf(c.OuterLR, 0) || !(c.OuterMomentum >= 0 && c.OuterMomentum < 1) {
		return cfgErr("--outer-lr %v must be positive and --outer-momentum %v in [0, 1)", c.OuterLR, c.OuterMomentum)
	}
	if c.outer() && c.Sync != "local-sgd" {
		return cfgErr("--outer-lr and --outer-momentum shape local SGD's synchronisation: add --sync local-sgd")
	}
	if c.PipelineStages < 1 || c.MicroBatches < 1 {
		return cfgErr("--pipeline-stages and --micro-batches must be at least 1")
	}
	if c.SyncPeriod < 1 {
		return cfgErr("--sync-period %d must be at least 1", c.SyncPeriod)
	}
	for _, w := range c.Shares {
		if !(w > 0) || math.IsInf(w, 0) {
			return cfgErr("--shares %v: every share must be a positive number", c.Shares)
		}
	}
	if len(c.Shares) > 0 && c.Balance != "off" {
		return cfgErr("--shares fixes the shares and --balance %s measures them: use one of them", c.Balance)
	}
	if c.BalanceEvery < 1 {
		return cfgErr("--balance-every %d must be at least 1", c.BalanceEvery)
	}
	if _, _, err := c.slowRank(); err != nil {
		return cfgErr("%v", err)
	}
	if err := c.schedule(1000).Validate(); err != nil {
		return cfgErr("--schedule: %v", err)
	}
	return nil
}

// schedule returns the learning-rate schedule for a run of totalSteps.
func (c *Config) schedule(totalSteps int64) optim.Schedule {
	return optim.Schedule{Kind: c.Schedule, BaseLR: c.LR, WarmupSteps: c.WarmupSteps, StepSize: c.StepSize,
		Gamma: c.Gamma, TotalSteps: totalSteps, MinLR: c.MinLR}
}

func (c *Config) optimizer() optim.Config {
	return optim.Config{Name: c.Optimizer, Momentum: c.Momentum, Nesterov: c.Nesterov, WeightDecay: c.WeightDecay}
}

// ModelSpec is the graph.Spec of the configured model. Its input shape
// is unset (graph's default, 28x28), and so are its classes unless
// Classes is set: New takes them from the training data.
func (c *Config) ModelSpec() graph.Spec {
	return graph.Spec{Kind: c.Model, Hidden: c.Hidden, Activation: c.Activation, Dropout: c.Dropout, Classes: c.Classes, Depth: c.Depth,
		LabelSmoothing: c.LabelSmoothing}
}

// LoadFile reads a YAML or JSON config file (by extension; .json is JSON,
// anything else YAML, which also accepts JSON) over c. Unknown keys are
// errors, so that a typo does not silently train something else.
//
// A file larger than MaxConfigBytes is refused before it is parsed, and a
// parser's message is cut to its start: a hostile file cannot make the
// process hold or print more than that.
func (c *Config) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: reading --config: %v", ErrConfig, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return fmt.Errorf("%w: reading --config: %v", ErrConfig, err)
	}
	if len(b) > MaxConfigBytes {
		return fmt.Errorf("%w: --config %s is larger than %d bytes: a configuration is a few lines of settings", ErrConfig, quote(path), MaxConfigBytes)
	}
	return c.parse(b, strings.EqualFold(filepath.Ext(path), ".json"), path)
}

// MaxConfigBytes bounds a --config file.
const MaxConfigBytes = 1 << 20

// parse decodes a config file's bytes over c (JSON or YAML).
func (c *Config) parse(b []byte, isJSON bool, path string) error {
	var err error
	if isJSON {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		w := c.wire()
		if err = dec.Decode(w); err == nil {
			w.apply(c)
		}
	} else {
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err = dec.Decode(c); errors.Is(err, io.EOF) {
			err = nil // an empty file sets nothing
		}
	}
	if err != nil {
		return fmt.Errorf("%w: --config %s: %s", ErrConfig, quote(path), shorten(err.Error()))
	}
	return nil
}

// configWire is Config as JSON reads it: the durations as strings
// ("30s", "10m") or integers of nanoseconds (how json.Marshal writes a
// time.Duration, and so how checkpoints store the config).
type configWire struct {
	*configFields
	Timeout     jsonDuration `json:"timeout"`
	RdzvTimeout jsonDuration `json:"rdzv_timeout"`
}

// configFields is Config without its methods (UnmarshalJSON).
type configFields Config

func (c *Config) wire() *configWire {
	return &configWire{configFields: (*configFields)(c), Timeout: jsonDuration(c.Timeout), RdzvTimeout: jsonDuration(c.RdzvTimeout)}
}

func (w *configWire) apply(c *Config) {
	c.Timeout, c.RdzvTimeout = time.Duration(w.Timeout), time.Duration(w.RdzvTimeout)
}

// UnmarshalJSON reads c's JSON, whose durations may be strings ("30s") or
// integers of nanoseconds (the checkpoints' config metadata). Keys that
// are absent leave c's fields as they were; unknown keys are ignored, as
// by json.Unmarshal (LoadFile refuses them).
func (c *Config) UnmarshalJSON(b []byte) error {
	w := c.wire()
	if err := json.Unmarshal(b, w); err != nil {
		return err
	}
	w.apply(c)
	return nil
}

// jsonDuration is a time.Duration in JSON: a string time.ParseDuration
// reads, or an integer of nanoseconds.
type jsonDuration time.Duration

func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s is not a duration like \"30s\" or \"10m\"", quote(s))
		}
		*d = jsonDuration(v)
		return nil
	}
	var ns int64
	if err := json.Unmarshal(b, &ns); err != nil {
		return fmt.Errorf("%s is not a duration: write a string like \"30s\" or \"10m\"", shorten(string(b)))
	}
	*d = jsonDuration(ns)
	return nil
}

// shorten cuts a message to its first 200 bytes.
func shorten(msg string) string {
	if p := prefix(msg, 200); len(p) < len(msg) {
		return fmt.Sprintf("%s... (%d bytes in all)", p, len(msg))
	}
	return msg
}

// hashFields are the fields that define the model and its training
// trajectory; a checkpoint whose config differs in them is refused on
// resume unless the difference is deliberate (epochs may grow).
func (c *Config) trajectory() string {
	return fmt.Sprintf("model=%s hidden=%v activation=%s dropout=%v dataset=%s batch=%d optimizer=%s seed=%d",
		c.Model, c.ModelSpec().Hidden, c.Activation, c.Dropout, c.Dataset, c.BatchSize, c.Optimizer, c.Seed)
}

// outer reports whether local SGD synchronises with an outer optimiser
// rather than plain averaging.
func (c *Config) outer() bool { return c.OuterLR != 1 || c.OuterMomentum != 0 }

// slowRank parses DebugSlowRank ("R:F"); rank -1 when unset.
func (c *Config) slowRank() (int, float64, error) {
	if c.DebugSlowRank == "" {
		return -1, 1, nil
	}
	r, f, ok := strings.Cut(c.DebugSlowRank, ":")
	rank, err1 := strconv.Atoi(r)
	factor, err2 := strconv.ParseFloat(f, 64)
	if !ok || err1 != nil || err2 != nil || rank < 0 || !(factor >= 1) {
		return 0, 0, fmt.Errorf("--debug-slow-rank %s: want RANK:FACTOR with FACTOR >= 1, e.g. 1:2.0", quote(c.DebugSlowRank))
	}
	return rank, factor, nil
}
