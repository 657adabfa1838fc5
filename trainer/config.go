package trainer

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/balance"
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

	Dataset       string `json:"dataset" yaml:"dataset"`
	DataDir       string `json:"data_dir,omitempty" yaml:"data_dir,omitempty"`
	SyntheticSize int    `json:"synthetic_size,omitempty" yaml:"synthetic_size,omitempty"`

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
	AccumSteps int           `json:"accum_steps" yaml:"accum_steps"`
	BucketMB   float64       `json:"bucket_mb" yaml:"bucket_mb"`
	Timeout    time.Duration `json:"timeout" yaml:"timeout"`
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
}

// Default returns the defaults of `gotrain train`: the MLP on MNIST, which
// reaches about 98% test accuracy in 2 epochs.
func Default() Config {
	return Config{
		Model: "mlp", Activation: "relu", Dataset: "mnist", SyntheticSize: 60000,
		Epochs: 2, BatchSize: 64, EvalBatchSize: 250,
		Optimizer: "adam", LR: 2e-3, Momentum: 0.9, Schedule: "cosine", Gamma: 0.1,
		Seed: 1, KeepCheckpoints: 3, LogEvery: 100, Threads: 0, Device: "auto", Precision: "fp32", Prefetch: true, PinMemory: true,
		AccumSteps: 1, BucketMB: 25, Timeout: 10 * time.Minute, Balance: "off", BalanceEvery: 20, MaxStaleness: 16, OuterLR: 1,
		Sync: "allreduce", SyncPeriod: 8, PipelineStages: 1, MicroBatches: 4,
	}
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid configuration")

func cfgErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
}

// Validate checks the configuration and says what is wrong.
func (c *Config) Validate() error {
	if !slices.Contains(graph.Models, c.Model) {
		return cfgErr("--model %q is not a model (valid: %s)", c.Model, strings.Join(graph.Models, ", "))
	}
	if !slices.Contains([]string{"mnist", "fashion-mnist", "synthetic"}, c.Dataset) {
		return cfgErr("--dataset %q is not a dataset (valid: mnist, fashion-mnist, synthetic)", c.Dataset)
	}
	if !slices.Contains(optim.Names(), c.Optimizer) {
		return cfgErr("--optimizer %q is not an optimiser (valid: %s)", c.Optimizer, strings.Join(optim.Names(), ", "))
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
	case c.CheckpointEvery < 0 || c.MaxSteps < 0 || c.LogEvery < 0 || c.Threads < 0:
		return cfgErr("--checkpoint-every, --max-steps, --log-every and --threads must not be negative")
	case c.AccumSteps < 1:
		return cfgErr("--accum-steps %d must be at least 1", c.AccumSteps)
	case !(c.BucketMB > 0):
		return cfgErr("--bucket-mb %v must be positive", c.BucketMB)
	case c.Timeout <= 0:
		return cfgErr("--timeout %v must be positive", c.Timeout)
	case c.Dataset == "synthetic" && c.SyntheticSize <= 0:
		return cfgErr("--synthetic-size %d must be at least 1", c.SyntheticSize)
	}
	for _, h := range c.Hidden {
		if h <= 0 {
			return cfgErr("--hidden widths must be positive, got %v", c.Hidden)
		}
	}
	switch c.Device {
	case "", "cpu", "gpu", "auto", "host":
	default:
		return cfgErr("--device %q is not a device (valid: cpu, gpu, auto)", c.Device)
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
		return cfgErr("--reduce-precision %q is not one of fp32, bf16", c.ReducePrecision)
	}
	if _, err := balance.ParseMode(c.Balance); err != nil {
		return cfgErr("%v", err)
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
		return cfgErr("--sync %q is not a mode (valid: allreduce, local-sgd, async)", c.Sync)
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

// ModelSpec is the graph.Spec of the configured model.
func (c *Config) ModelSpec() graph.Spec {
	return graph.Spec{Kind: c.Model, Hidden: c.Hidden, Activation: c.Activation, Dropout: c.Dropout}
}

// LoadFile reads a YAML or JSON config file (by extension; .json is JSON,
// anything else YAML, which also accepts JSON) over c. Unknown keys are
// errors, so that a typo does not silently train something else.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: reading --config: %v", ErrConfig, err)
	}
	if strings.EqualFold(filepath.Ext(path), ".json") {
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			return fmt.Errorf("%w: --config %s: %v", ErrConfig, path, err)
		}
		return nil
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && err.Error() != "EOF" {
		return fmt.Errorf("%w: --config %s: %v", ErrConfig, path, err)
	}
	return nil
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
		return 0, 0, fmt.Errorf("--debug-slow-rank %q: want RANK:FACTOR with FACTOR >= 1, e.g. 1:2.0", c.DebugSlowRank)
	}
	return rank, factor, nil
}
