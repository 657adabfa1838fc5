package trainer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/gotrain/gotrain/gpu"
	"github.com/gotrain/gotrain/gpu/executor"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/metrics"
	"github.com/gotrain/gotrain/trainer/optim"
)

// ErrNonFinite is returned when the loss or a gradient becomes NaN or Inf.
// The parameters are left as they were before that step and the last good
// checkpoint is kept.
var ErrNonFinite = errors.New("training diverged")

// Progress is what the loop reports after every step, for a progress bar.
type Progress struct {
	Epoch, Epochs int   // 1-based epoch and the total
	Done, Total   int64 // samples done in this epoch and per epoch
	Loss          float64
	SamplesPerSec float64
}

// Result is what a finished run measured.
type Result struct {
	TestAccuracy, TestLoss   float64
	Steps                    int64
	TrainSamplesPerSec       float64
	RankComputeSamplesPerSec []float64 // see metrics.Summary
	WallSeconds              float64
	PeakRSSBytes             int64
	Checkpoint               string // the last checkpoint written, if any
}

// Trainer runs the training loop of one Config. Its clock, data, metrics
// sink and logger are injected (options), so tests can drive it exactly.
type Trainer struct {
	cfg         Config
	Model       *graph.Model
	opt         optim.Optimizer
	train, test *data.Dataset
	sink        metrics.Sink
	progress    func(Progress)
	log         *slog.Logger
	now         func() time.Time
	ckpt        *checkpoint.Manager

	pos         position
	resumedFrom string
	// resumeShares: the balancer's shares of the batch in the checkpoint
	// resumed from (rank 0 reads them; syncStart gives them to every rank)
	resumeShares []float64
	lastCkpt     string
	savedStep    int64 // step of lastCkpt
	params       map[*graph.Program][]optim.Param
	perm         []int
	dp           *ddp      // nil: one process
	pp           *pipeline // nil: no pipeline stages
	devices      func() []metrics.GPU
	headroom     func() gpu.Headroom
	slow         *straggler // --debug-slow-rank, made at first use
	// this rank's computation over the run (forward and backward, with
	// --debug-slow-rank's sleeps; first runs of programs left out):
	// seconds and samples
	computeSecs, computeSamples float64
	devr                        *devRun // nil: the model trains on the CPU
	async                       *AsyncTransport
	dataGiven                   bool                   // WithData was used
	jsonl                       *metrics.JSONL         // Config.MetricsFile, opened by New (rank 0)
	jsonlErr                    error                  // closing it
	dataID                      string                 // JSON of the DataIdentity trained on, for the metadata
	outer                       *outerOpt              // local SGD's outer optimiser; nil: plain averaging
	localStates                 []map[string][]float32 // resumed local SGD: ranks' optimiser states (rank 0)
}

// Option configures a Trainer.
type Option func(*Trainer)

// WithSink sends metrics records to s.
func WithSink(s metrics.Sink) Option { return func(t *Trainer) { t.sink = s } }

// WithProgress calls f after every training step.
func WithProgress(f func(Progress)) Option { return func(t *Trainer) { t.progress = f } }

// WithDeviceStats makes every train record carry f's device statistics
// (the latest NVML sample; see gpu.Sampler).
func WithDeviceStats(f func() []metrics.GPU) Option { return func(t *Trainer) { t.devices = f } }

// WithHeadroom tells the load balancer about the device this rank trains
// on: f is called at every re-plan (and, for a device with a clock, after
// every step) and its free memory bounds the rank's share, its clock
// corrects the measured speed and its slowdown reasons make a re-plan take
// the new speeds whole (see balance.Measurement). Without it the balancer
// uses the measured speeds alone.
func WithHeadroom(f func() gpu.Headroom) Option { return func(t *Trainer) { t.headroom = f } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(t *Trainer) { t.log = l } }

// WithClock sets the clock used for throughput and timing.
func WithClock(now func() time.Time) Option { return func(t *Trainer) { t.now = now } }

// WithData supplies the datasets instead of loading cfg.Dataset. New
// refuses a nil or invalid set (see data.Dataset.Validate), a test set of
// another shape or class count than the training set, and more classes
// than the model has outputs.
func WithData(train, test *data.Dataset) Option {
	return func(t *Trainer) { t.train, t.test, t.dataGiven = train, test, true }
}

// checkData refuses datasets the run cannot use, before any work: what
// would otherwise panic or fail inside the model after an epoch.
func (t *Trainer) checkData(m *graph.Model) error {
	if t.dataGiven {
		for _, s := range []struct {
			what string
			d    *data.Dataset
		}{{"training", t.train}, {"test", t.test}} {
			if s.d == nil {
				return fmt.Errorf("%w: WithData: the %s set is nil; give both a training and a test set", ErrConfig, s.what)
			}
			if s.d.N == 0 {
				return fmt.Errorf("%w: WithData: the %s set %s has no samples", ErrConfig, s.what, s.d.Name)
			}
			if err := s.d.Validate(); err != nil {
				return fmt.Errorf("%w: WithData: the %s set: %w", ErrConfig, s.what, err)
			}
		}
	}
	tr, te := t.train, t.test
	if tr.Rows != te.Rows || tr.Cols != te.Cols || tr.Classes != te.Classes {
		return fmt.Errorf("%w: the test set %s is %dx%d with %d classes, the training set %s %dx%d with %d classes: they must agree",
			ErrConfig, te.Name, te.Rows, te.Cols, te.Classes, tr.Name, tr.Rows, tr.Cols, tr.Classes)
	}
	if got, want := tr.Rows*tr.Cols, m.InputSize(); got != want {
		return fmt.Errorf("%w: dataset %s has %dx%d inputs, model %s expects %d values", ErrConfig, tr.Name, tr.Rows, tr.Cols, t.cfg.Model, want)
	}
	if tr.Classes > m.Spec.Classes {
		return fmt.Errorf("%w: dataset %s has %d classes, model %s has %d outputs: its labels must be below %d",
			ErrConfig, tr.Name, tr.Classes, t.cfg.Model, m.Spec.Classes, m.Spec.Classes)
	}
	return nil
}

// New prepares a run: it validates cfg, loads the data, builds the model
// and optimiser and, with cfg.Resume, restores a checkpoint.
func New(cfg Config, opts ...Option) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Trainer{cfg: cfg, log: slog.Default(), now: time.Now, params: map[*graph.Program][]optim.Param{}}
	for _, o := range opts {
		o(t)
	}
	if t.sink == nil {
		t.sink = metrics.Multi()
	}
	if err := Preflight(cfg, PreflightEnv{Rank: t.rank(), DataLoaded: t.train != nil}); err != nil {
		return nil, err
	}
	if !t.dataGiven {
		var err error
		if t.train, t.test, err = LoadData(cfg); err != nil {
			return nil, err
		}
	}
	m, err := graph.New(cfg.ModelSpec(), cfg.Seed)
	if err != nil {
		return nil, err
	}
	if err := t.checkData(m); err != nil {
		return nil, err
	}
	if id, err := json.Marshal(IdentityOf(t.train, t.test)); err == nil {
		t.dataID = string(id)
	}
	t.Model = m
	if t.opt, err = newOptimizer(cfg, m); err != nil {
		return nil, err
	}
	if cfg.outer() {
		if t.outer, err = newOuter(cfg, m); err != nil {
			return nil, err
		}
	}
	if cfg.Resume != "" && t.rank() == 0 {
		// Other ranks receive rank 0's state when the run starts.
		if err := t.restore(cfg.Resume); err != nil {
			return nil, err
		}
		t.log.Info("resumed", "checkpoint", t.resumedFrom, "epoch", t.pos.epoch+1, "step", t.pos.step)
	}
	if cfg.CheckpointDir != "" && t.rank() == 0 {
		if t.ckpt, err = checkpoint.Open(cfg.CheckpointDir, cfg.KeepCheckpoints); err != nil {
			return nil, err
		}
	}
	if err := t.openMetricsFile(); err != nil {
		return nil, err
	}
	return t, nil
}

// openMetricsFile opens Config.MetricsFile on rank 0 (appending when the
// run resumes) and adds it to the sinks, unless a sink given with WithSink
// writes that file already. Run closes it.
func (t *Trainer) openMetricsFile() error {
	path := t.cfg.MetricsFile
	if path == "" || t.rank() != 0 {
		return nil
	}
	for _, s := range metrics.Sinks(t.sink) {
		if j, ok := s.(*metrics.JSONL); ok && sameFile(j.Path(), path) {
			return nil
		}
	}
	j, err := metrics.OpenJSONL(path, t.cfg.Resume != "")
	if err != nil {
		return err
	}
	// A write that fails (a full disk) is said when it happens; the
	// records wait and are written when the file takes them again.
	j.OnError(func(err error, pending int) {
		if err != nil {
			t.log.Warn("--metrics-file cannot be written; training goes on and the records are kept to write later", "file", path, "err", err, "waiting", pending)
		} else {
			t.log.Info("--metrics-file is writable again; the waiting records were written", "file", path)
		}
	})
	t.jsonl = j
	t.sink = metrics.Multi(t.sink, j)
	return nil
}

// sameFile reports whether paths a and b name the same file.
func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(fa, fb)
	}
	absA, errA := filepath.Abs(a)
	absB, errB := filepath.Abs(b)
	return errA == nil && errB == nil && absA == absB
}

// closeMetricsFile writes what waits for the metrics file New opened and
// closes it; MetricsFile reports the outcome.
func (t *Trainer) closeMetricsFile() {
	if t.jsonl != nil && t.jsonlErr == nil {
		t.jsonlErr = t.jsonl.Close()
	}
}

// MetricsFile says, once Run has returned, how writing Config.MetricsFile
// went: its write statistics (failures, records written late or lost) and
// the error of closing it (nil when every record was written). ok is
// false when this trainer wrote no metrics file: none configured, a rank
// other than 0, or a sink given with WithSink that writes the file itself.
func (t *Trainer) MetricsFile() (stats metrics.WriteStats, ok bool, err error) {
	if t.jsonl == nil {
		return metrics.WriteStats{}, false, nil
	}
	return t.jsonl.Stats(), true, t.jsonlErr
}

// LoadData loads the train and test splits of cfg.Dataset.
func LoadData(cfg Config) (train, test *data.Dataset, err error) {
	if cfg.Dataset == "synthetic" {
		n := cfg.SyntheticSize
		return data.Synthetic(n, 28, 28, 10, cfg.Seed), data.Synthetic(max(n/6, 1), 28, 28, 10, cfg.Seed+1), nil
	}
	if train, err = data.Load(cfg.Dataset, cfg.DataDir, "train"); err != nil {
		return nil, nil, err
	}
	if test, err = data.Load(cfg.Dataset, cfg.DataDir, "test"); err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

func newOptimizer(cfg Config, m *graph.Model) (optim.Optimizer, error) {
	ps := make([]optim.Param, len(m.Params))
	for i, p := range m.Params {
		ps[i] = optim.Param{Name: p.Name, Data: p.Data, Grad: make([]float32, len(p.Data))}
	}
	o, err := optim.New(cfg.optimizer(), ps)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return o, nil
}

func (t *Trainer) batchesPerEpoch() int {
	return (t.train.N + t.cfg.BatchSize - 1) / t.cfg.BatchSize
}

// TotalSteps is the number of optimiser steps of the whole run (the
// schedule's horizon), whatever MaxSteps stops it at.
func (t *Trainer) TotalSteps() int64 { return int64(t.cfg.Epochs) * int64(t.batchesPerEpoch()) }

// Step is the number of optimiser steps done.
func (t *Trainer) Step() int64 { return t.pos.step }

// optParams returns the optimiser's view of p's parameters and gradients.
func (t *Trainer) optParams(p *graph.Program) []optim.Param {
	if ps, ok := t.params[p]; ok {
		return ps
	}
	if len(t.params) >= graph.MaxPrograms {
		clear(t.params) // programs the model dropped must not stay alive here
	}
	ps := make([]optim.Param, len(t.Model.Params))
	for i, mp := range t.Model.Params {
		ps[i] = optim.Param{Name: mp.Name, Data: mp.Data, Grad: p.Grad(i)}
	}
	t.params[p] = ps
	return ps
}

// Run trains until cfg.Epochs are done (or cfg.MaxSteps, or ctx is
// cancelled, which saves a checkpoint first when a checkpoint directory is
// set), evaluating on the test split after each epoch.
func (t *Trainer) Run(ctx context.Context) (Result, error) {
	start := t.now()
	cfg := t.cfg
	var res Result
	// Collectives run on a context that the caller's cancellation does not
	// end: a stop request travels with the gradients so that every rank
	// stops after the same step (see ddpStep).
	cctx := context.WithoutCancel(ctx)
	defer t.closeMetricsFile()
	if t.dp != nil && t.dp.comm != nil {
		if err := t.syncStart(cctx); err != nil {
			return res, err
		}
	}
	if cfg.Sync == "async" {
		return t.runAsync(ctx, start)
	}
	if t.pipelined() {
		if t.dp == nil || t.dp.comm == nil {
			return res, fmt.Errorf("%w: --pipeline-stages %d needs a job of %d ranks (see 'gotrain launch')", ErrConfig, cfg.PipelineStages, cfg.PipelineStages)
		}
		if err := t.setupPipeline(); err != nil {
			return res, err
		}
	} else if t.distributed() {
		t.setupBuckets()
		if err := t.setupBalance(); err != nil {
			return res, err
		}
	}
	if t.devr == nil && cfg.Precision != "" && cfg.Precision != "fp32" {
		return res, fmt.Errorf("%w: --precision %s runs on a device, and rank %d trains on the CPU (--device %s): use --device gpu on a machine with one", ErrConfig, cfg.Precision, t.rank(), cfg.Device)
	}
	if err := t.devStart(); err != nil {
		return res, err
	}
	defer t.devClose()
	sched := cfg.schedule(t.TotalSteps())
	nb, n := t.batchesPerEpoch(), t.train.N
	if len(t.perm) != n {
		t.perm = make([]int, n)
	}
	pcg := rand.NewPCG(0, 0)
	rng := rand.New(pcg)
	// evalNow evaluates the test split (on the device, when the model
	// trains on one) into res and the metrics, once per step reached.
	evalStep := int64(-1)
	evalNow := func(epoch int) error {
		if evalStep == t.pos.step {
			return nil
		}
		evaluate := t.evaluateShard
		if t.pipelined() {
			evaluate = t.evaluatePipeline
		}
		acc, loss, err := evaluate(cctx)
		if err != nil {
			return err
		}
		evalStep = t.pos.step
		res.TestAccuracy, res.TestLoss = acc, loss
		t.sink.Eval(metrics.Eval{Epoch: epoch + 1, TestLoss: loss, TestAccuracy: acc, Rank: t.rank(), WorldSize: t.worldSize()})
		return nil
	}
	var trainSamples int64
	var trainTime time.Duration
	var winLoss float64
	var winSteps, winSamples int64
	winStart := t.now()
	rate := 0.0

	t.log.Info("training", "model", cfg.Model, "params", t.Model.NumParams(), "dataset", t.train.Name,
		"train_samples", n, "test_samples", t.test.N, "epochs", cfg.Epochs, "batch_size", cfg.BatchSize,
		"optimizer", cfg.Optimizer, "lr", cfg.LR, "schedule", cfg.Schedule, "steps", t.TotalSteps(),
		"rank", t.rank(), "world_size", t.worldSize(), "accum_steps", cfg.AccumSteps)

	for t.pos.epoch < cfg.Epochs {
		epoch := t.pos.epoch
		data.PermutationInto(t.perm, cfg.Seed, epoch)
		pf := t.startPrefetch(nb, n)
		epochStart := t.now()
		for t.pos.batch < nb {
			if !t.distributed() && ctx.Err() != nil {
				return res, t.interrupted(cctx, ctx.Err())
			}
			if cfg.MaxSteps > 0 && t.pos.step >= cfg.MaxSteps {
				trainTime += t.now().Sub(epochStart)
				if pf != nil {
					pf.stop()
				}
				// Stopped inside an epoch: the result is the test set on
				// the parameters trained, not on those of the last epoch's
				// end (or none).
				if err := evalNow(epoch); err != nil {
					return res, err
				}
				return t.finish(cctx, res, start, trainSamples, trainTime)
			}
			lo := t.pos.batch * cfg.BatchSize
			hi := min(lo+cfg.BatchSize, n)
			var ps []optim.Param
			var devProg *executor.Program // the step's program on the device (one process)
			var loss float64              // this rank's mean loss, for display
			var norm float64              // pipeline stages: the global gradient norm
			stop := false
			if t.pipelined() {
				var lossSum float64
				var err error
				if lossSum, loss, norm, err = t.pipelineStep(cctx, lo, hi, pcg, rng); err != nil {
					return res, err
				}
				if !finite(norm) {
					return res, t.diverged(loss)
				}
				winLoss += lossSum
			} else if t.distributed() {
				lossSum, st, err := t.ddpStep(cctx, ctx.Err() != nil, lo, hi, pcg, rng)
				if err != nil {
					return res, err
				}
				stop = st
				ps = t.dp.params
				if t.devr != nil && t.devr.reduce != nil {
					ps = nil // the reduced gradients never came to the host
				}
				rs, re := t.shareOf(lo, hi, t.rank())
				if re > rs {
					loss = lossSum / float64(re-rs)
				}
				winLoss += lossSum
			} else {
				prog, err := t.Model.Program(hi-lo, true)
				if err != nil {
					return res, err
				}
				t0 := time.Now()
				warm := prog.Warm()
				var l float32
				switch {
				case pf != nil: // one process on a device
					var b batchSlot
					if b, err = pf.next(lo, hi); err != nil {
						return res, err
					}
					devProg, l, err = t.devRunProgram(prog, b.x, b.y, cfg.Seed^0x5eedd70a, uint64(t.pos.step), nil)
					pf.release(b) // the loss is read: the device is done with the slot
				case t.devr != nil: // --prefetch=false: the batch is decoded here
					t.train.Batch(t.perm[lo:hi], prog.X, prog.Y)
					devProg, l, err = t.devRunProgram(prog, prog.X, prog.Y, cfg.Seed^0x5eedd70a, uint64(t.pos.step), nil)
				default:
					t.train.Batch(t.perm[lo:hi], prog.X, prog.Y)
					pcg.Seed(cfg.Seed^0x5eedd70a, uint64(t.pos.step))
					l, err = prog.Run(rng)
					ps = t.optParams(prog)
				}
				if err != nil {
					return res, err
				}
				d := time.Since(t0)
				d += t.straggler().delay(d)
				if warm {
					t.computeSecs += d.Seconds()
					t.computeSamples += float64(hi - lo)
				}
				loss = float64(l)
				winLoss += loss * float64(hi-lo)
			}
			// The reduced gradients are the same on every rank, so every
			// rank takes the same decision here.
			if !finite(loss) || !optim.GradsFinite(ps) {
				return res, t.diverged(loss)
			}
			if cfg.ClipGradNorm > 0 && t.devr == nil { // a device clips in devStep
				optim.ClipGradNorm(ps, cfg.ClipGradNorm)
			}
			lr := sched.LR(t.pos.step)
			switch {
			case t.pipelined():
				if err := t.pipelineUpdate(norm, lr); err != nil {
					return res, err
				}
			case t.devr != nil:
				if err := t.devStep(devProg, lr, loss); err != nil {
					return res, err
				}
			default:
				t.opt.Step(ps, lr)
			}
			t.pos.step++
			t.pos.batch++
			if t.localSGD() && (t.pos.step%cfg.SyncPeriod == 0 || t.pos.batch == nb || t.pos.step == cfg.MaxSteps ||
				(cfg.CheckpointEvery > 0 && t.pos.step%cfg.CheckpointEvery == 0)) {
				// Average at the period, and wherever the ranks must agree:
				// epoch ends (evaluation, checkpoints), the last step.
				st, err := t.averageParams(cctx, ctx.Err() != nil)
				if err != nil {
					return res, err
				}
				stop = stop || st
			}
			trainSamples += int64(hi - lo)
			winSteps++
			winSamples += int64(hi - lo)
			if dt := t.now().Sub(winStart).Seconds(); dt > 0 && winSamples > 0 {
				rate = float64(winSamples) / dt
			}
			if t.progress != nil {
				t.progress(Progress{Epoch: epoch + 1, Epochs: cfg.Epochs, Done: int64(hi), Total: int64(n), Loss: loss, SamplesPerSec: rate})
			}
			if cfg.LogEvery > 0 && t.pos.step%cfg.LogEvery == 0 {
				sum := []float64{winLoss}
				if err := t.allSum(cctx, "loss", sum); err != nil {
					return res, err
				}
				rec := metrics.Train{Epoch: epoch + 1, Step: t.pos.step, Loss: sum[0] / float64(winSamples), LR: lr, SamplesPerSec: rate,
					Rank: t.rank(), WorldSize: t.worldSize()}
				if t.devices != nil {
					rec.GPU = t.devices()
				}
				t.sink.Train(rec)
				winLoss, winSteps, winSamples, winStart = 0, 0, 0, t.now()
			}
			if stop {
				return res, t.interrupted(cctx, context.Canceled)
			}
			if t.dp != nil && t.dp.bal != nil && (t.pos.step%cfg.BalanceEvery == 0 || t.pos.step == min(4, cfg.BalanceEvery)) {
				if err := t.rebalance(cctx); err != nil {
					return res, err
				}
				if pf != nil { // the shares may have moved: prefetch by the new ones
					pf.stop()
					pf = t.startPrefetch(nb, n)
				}
			}
			if cfg.CheckpointEvery > 0 && t.pos.step%cfg.CheckpointEvery == 0 {
				if err := t.save(cctx); err != nil {
					return res, err
				}
			}
		}
		trainTime += t.now().Sub(epochStart)
		if pf != nil {
			pf.stop()
		}
		t.pos.epoch++
		t.pos.batch = 0
		if err := evalNow(epoch); err != nil {
			return res, err
		}
		if cfg.CheckpointDir != "" {
			if err := t.save(cctx); err != nil {
				return res, err
			}
		}
		winLoss, winSteps, winSamples, winStart = 0, 0, 0, t.now()
	}
	return t.finish(cctx, res, start, trainSamples, trainTime)
}

func (t *Trainer) finish(ctx context.Context, res Result, start time.Time, samples int64, trainTime time.Duration) (Result, error) {
	if err := t.hostSync(); err != nil {
		return res, err
	}
	if err := t.verifyReplicas(ctx, "at the end of the run"); err != nil {
		return res, err
	}
	if t.cfg.CheckpointDir != "" && t.savedStep != t.pos.step {
		if err := t.save(ctx); err != nil {
			return res, err
		}
	}
	if t.cfg.Out != "" && t.pipelined() {
		if err := t.gatherStages(ctx); err != nil {
			return res, err
		}
	}
	if t.cfg.Out != "" && t.rank() == 0 {
		if err := t.saveOut(); err != nil {
			return res, err
		}
	}
	res.Steps = t.pos.step
	if trainTime > 0 {
		res.TrainSamplesPerSec = float64(samples) / trainTime.Seconds()
	}
	var err error
	if res.RankComputeSamplesPerSec, err = t.computeSpeeds(ctx); err != nil {
		return res, err
	}
	res.WallSeconds = t.now().Sub(start).Seconds()
	res.PeakRSSBytes = metrics.PeakRSSBytes()
	res.Checkpoint = t.lastCkpt
	t.sink.Summary(metrics.Summary{TestAccuracy: res.TestAccuracy, TrainSamplesPerSec: res.TrainSamplesPerSec,
		WallSeconds: res.WallSeconds, PeakRSSBytes: res.PeakRSSBytes, RankComputeSamplesPerSec: res.RankComputeSamplesPerSec,
		Rank: t.rank(), WorldSize: t.worldSize()})
	return res, nil
}

// computeSpeeds gathers every rank's computation speed over the run (see
// metrics.Summary); this rank's alone where the ranks do not all compute
// the same model on shares of one batch (one process, pipeline stages,
// asynchronous workers).
func (t *Trainer) computeSpeeds(ctx context.Context) ([]float64, error) {
	mine := []float64{0}
	if t.computeSecs > 0 {
		mine[0] = t.computeSamples / t.computeSecs
	}
	if !t.distributed() || t.worldSize() < 2 || t.pipelined() || t.cfg.Sync == "async" {
		return mine, nil
	}
	all := make([]float64, t.worldSize())
	err := t.collective(ctx, "the ranks' speeds", func(ctx context.Context) error { return t.dp.comm.AllGather(ctx, mine, all) })
	return all, err
}

// save checkpoints the run: every rank first verifies that the replicas
// are identical, then rank 0 writes.
func (t *Trainer) save(ctx context.Context) error {
	if err := t.hostSync(); err != nil {
		return err
	}
	if err := t.verifyReplicas(ctx, fmt.Sprintf("at the checkpoint of step %d", t.pos.step)); err != nil {
		return err
	}
	t.savedStep = t.pos.step
	// Local SGD: every rank's inner optimiser state is its own; rank 0
	// gathers them all for the checkpoint.
	var ranks []map[string][]float32
	if t.localSGD() {
		var err error
		if ranks, err = t.gatherLocalStates(ctx); err != nil {
			return err
		}
	}
	if t.ckpt == nil {
		return nil
	}
	f, err := t.snapshot()
	if err != nil {
		return err
	}
	addLocalStates(f, ranks)
	path, err := t.ckpt.Save(t.pos.step, f)
	if err != nil {
		return fmt.Errorf("saving checkpoint: %w", err)
	}
	t.lastCkpt = path
	t.savedStep = t.pos.step
	t.log.Debug("checkpoint", "path", path, "step", t.pos.step)
	return nil
}

// interrupted saves where the run is, so that --resume continues it.
func (t *Trainer) interrupted(ctx context.Context, cause error) error {
	if t.cfg.CheckpointDir == "" {
		return fmt.Errorf("training stopped at step %d: %w (no --checkpoint-dir, so this progress is not saved)", t.pos.step, cause)
	}
	if err := t.save(ctx); err != nil {
		return errors.Join(cause, err)
	}
	return fmt.Errorf("training stopped at step %d: %w; resume with --resume %s", t.pos.step, cause, t.cfg.CheckpointDir)
}

func (t *Trainer) diverged(loss float64) error {
	where := fmt.Sprintf("epoch %d, step %d", t.pos.epoch+1, t.pos.step+1)
	keep := "no checkpoint was written (set --checkpoint-dir to keep one)"
	if t.lastCkpt != "" {
		keep = "the last good checkpoint is " + t.lastCkpt
	} else if t.resumedFrom != "" {
		keep = "the last good checkpoint is " + t.resumedFrom
	}
	return fmt.Errorf("%w: loss %v or a gradient is not finite at %s; the parameters were not updated and %s; lower --lr, or set --clip-grad-norm", ErrNonFinite, loss, where, keep)
}

// Evaluate returns the accuracy and mean loss of m on every sample of ds,
// in batches of at most batch samples.
func Evaluate(m *graph.Model, ds *data.Dataset, batch int) (accuracy, loss float64, err error) {
	return evaluate(m, ds, batch, func(p *graph.Program) (float32, int, error) {
		l, err := p.Run(nil)
		if err != nil {
			return 0, 0, err
		}
		return l, p.Correct(), nil
	})
}

// evaluate runs m's evaluation programs over ds in batches with run, which
// returns a batch's mean loss and its correct predictions.
func evaluate(m *graph.Model, ds *data.Dataset, batch int, run func(*graph.Program) (float32, int, error)) (accuracy, loss float64, err error) {
	if ds.N == 0 {
		return 0, 0, errors.New("evaluate: empty dataset")
	}
	idx := make([]int, 0, batch)
	var correct int
	var total float64
	for lo := 0; lo < ds.N; lo += batch {
		hi := min(lo+batch, ds.N)
		prog, err := m.Program(hi-lo, false)
		if err != nil {
			return 0, 0, err
		}
		idx = idx[:0]
		for i := lo; i < hi; i++ {
			idx = append(idx, i)
		}
		ds.Batch(idx, prog.X, prog.Y)
		l, c, err := run(prog)
		if err != nil {
			return 0, 0, err
		}
		total += float64(l) * float64(hi-lo)
		correct += c
	}
	return float64(correct) / float64(ds.N), total / float64(ds.N), nil
}
