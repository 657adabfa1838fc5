package trainer

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/metrics"
	"github.com/gotrain/gotrain/trainer/optim"
)

// loop is the training loop of every synchronous strategy: epochs, the
// schedule, the clipping decision, divergence, the evaluation cadence,
// checkpoints, metrics and progress. What differs between modes is the
// strategy's (t.strat), and where the model trains the executor's
// (t.exec); the loop asks neither which it is.
func (t *Trainer) loop(ctx context.Context, start time.Time) (Result, error) {
	cfg := t.cfg
	var res Result
	// Collectives run on a context that the caller's cancellation does not
	// end: a stop request travels with the step so that every rank stops
	// after the same step (see strategy.step).
	cctx := context.WithoutCancel(ctx)
	sched := cfg.schedule(t.TotalSteps())
	nb, n := t.batchesPerEpoch(), t.train.Len()
	if len(t.perm) != n {
		t.perm = make([]int, n)
	}
	// evalNow evaluates the test split into res and the metrics, once per
	// step reached.
	evalStep := int64(-1)
	evalNow := func(epoch int) error {
		if evalStep == t.pos.step {
			return nil
		}
		acc, loss, err := t.strat.evaluate(cctx)
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
	winStart, winWait := t.now(), t.dataWait
	rate := 0.0

	t.log.Info("training", "model", t.Model.Spec.Kind, "params", t.Model.NumParams(), "dataset", t.dataName,
		"train_samples", n, "test_samples", t.test.Len(), "epochs", cfg.Epochs, "batch_size", cfg.BatchSize,
		"optimizer", cfg.Optimizer, "lr", cfg.LR, "schedule", cfg.Schedule, "steps", t.TotalSteps(),
		"rank", t.rank(), "world_size", t.worldSize(), "accum_steps", cfg.AccumSteps)

	for t.pos.epoch < cfg.Epochs {
		epoch := t.pos.epoch
		data.PermutationInto(t.perm, cfg.Seed, epoch)
		t.strat.beginEpoch()
		epochStart := t.now()
		for t.pos.batch < nb {
			if t.strat.stopNow(ctx) {
				return res, t.interrupted(cctx, ctx.Err())
			}
			if cfg.MaxSteps > 0 && t.pos.step >= cfg.MaxSteps {
				trainTime += t.now().Sub(epochStart)
				t.strat.endEpoch()
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
			st, err := t.strat.step(cctx, ctx.Err() != nil, lo, hi)
			if err != nil {
				return res, err
			}
			winLoss += st.lossSum
			// The step's gradients (reduced, or summed over the stages)
			// are the same on every rank, so every rank takes the same
			// decisions here, before the parameters are touched.
			norm := math.Sqrt(st.sumSquares)
			if !finite(norm) || !finite(st.loss) {
				return res, t.diverged(st.loss)
			}
			if c, clip := optim.ClipCoef(norm, cfg.ClipGradNorm); clip {
				if err := t.strat.scale(c); err != nil {
					return res, err
				}
			}
			lr := sched.LR(t.pos.step)
			if err := t.strat.update(lr); err != nil {
				return res, err
			}
			t.pos.step++
			t.pos.batch++
			stop, err := t.strat.stepped(cctx, ctx.Err() != nil)
			if err != nil {
				return res, err
			}
			stop = stop || st.stop
			trainSamples += int64(hi - lo)
			winSteps++
			winSamples += int64(hi - lo)
			if dt := t.now().Sub(winStart).Seconds(); dt > 0 && winSamples > 0 {
				rate = float64(winSamples) / dt
			}
			if t.progress != nil {
				t.progress(Progress{Epoch: epoch + 1, Epochs: cfg.Epochs, Done: int64(hi), Total: int64(n), Loss: st.loss, SamplesPerSec: rate})
			}
			if cfg.LogEvery > 0 && t.pos.step%cfg.LogEvery == 0 {
				sum := []float64{winLoss}
				if err := t.strat.allSum(cctx, "loss", sum); err != nil {
					return res, err
				}
				rec := metrics.Train{Epoch: epoch + 1, Step: t.pos.step, Loss: sum[0] / float64(winSamples), LR: lr, SamplesPerSec: rate,
					Rank: t.rank(), WorldSize: t.worldSize()}
				if dt := t.now().Sub(winStart); dt > 0 {
					rec.DataWaitFraction = min((t.dataWait-winWait).Seconds()/dt.Seconds(), 1)
				}
				if t.devices != nil {
					rec.GPU = t.devices()
				}
				t.sink.Train(rec)
				winLoss, winSteps, winSamples, winStart, winWait = 0, 0, 0, t.now(), t.dataWait
			}
			if stop {
				return res, t.interrupted(cctx, context.Canceled)
			}
			if err := t.strat.endStep(cctx); err != nil {
				return res, err
			}
			if cfg.CheckpointEvery > 0 && t.pos.step%cfg.CheckpointEvery == 0 {
				if err := t.save(cctx); err != nil {
					return res, err
				}
			}
		}
		trainTime += t.now().Sub(epochStart)
		t.strat.endEpoch()
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
		winLoss, winSteps, winSamples, winStart, winWait = 0, 0, 0, t.now(), t.dataWait
	}
	return t.finish(cctx, res, start, trainSamples, trainTime)
}

// finish settles the model, writes the last checkpoint and --out, and
// reports the run.
func (t *Trainer) finish(ctx context.Context, res Result, start time.Time, samples int64, trainTime time.Duration) (Result, error) {
	if err := t.strat.settle(ctx, "at the end of the run"); err != nil {
		return res, err
	}
	if t.cfg.CheckpointDir != "" && t.savedStep != t.pos.step {
		if err := t.save(ctx); err != nil {
			return res, err
		}
	}
	if t.cfg.Out != "" {
		if err := t.strat.finish(ctx); err != nil {
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
		res.DataWaitFraction = min(t.dataWait.Seconds()/trainTime.Seconds(), 1)
	}
	mine := []float64{0}
	if t.computeSecs > 0 {
		mine[0] = t.computeSamples / t.computeSecs
	}
	var err error
	if res.RankComputeSamplesPerSec, err = t.strat.computeSpeeds(ctx, mine); err != nil {
		return res, err
	}
	res.WallSeconds = t.now().Sub(start).Seconds()
	res.PeakRSSBytes = metrics.PeakRSSBytes()
	res.Checkpoint = t.lastCkpt
	t.sink.Summary(metrics.Summary{TestAccuracy: res.TestAccuracy, TrainSamplesPerSec: res.TrainSamplesPerSec,
		WallSeconds: res.WallSeconds, PeakRSSBytes: res.PeakRSSBytes, RankComputeSamplesPerSec: res.RankComputeSamplesPerSec,
		DataWaitFraction: res.DataWaitFraction, Rank: t.rank(), WorldSize: t.worldSize()})
	return res, nil
}

// save checkpoints the run: every rank first settles (the replicas
// verified identical) and takes part in the strategy's collective part,
// then rank 0 writes.
func (t *Trainer) save(ctx context.Context) error {
	if err := t.strat.settle(ctx, fmt.Sprintf("at the checkpoint of step %d", t.pos.step)); err != nil {
		return err
	}
	t.savedStep = t.pos.step
	add, err := t.strat.checkpoint(ctx)
	if err != nil {
		return err
	}
	if t.ckpt == nil {
		return nil
	}
	f, err := t.snapshot()
	if err != nil {
		return err
	}
	if add != nil {
		add(f)
	}
	path, err := t.ckpt.Save(t.pos.step, f)
	if err != nil {
		return fmt.Errorf("saving checkpoint: %w", err)
	}
	t.lastCkpt = path
	t.savedStep = t.pos.step
	t.log.Debug("checkpoint", "path", path, "step", t.pos.step)
	return nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
