package trainer

import (
	"context"
	"fmt"
	"time"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/dist"
)

// A strategy is how this rank takes part in the run: one process
// (single), all-reduce data parallelism with balanced shares and gradient
// accumulation (allReduce), local SGD and DiLoCo (localSGD), pipeline
// stages (pipeline) or an asynchronous parameter server's worker
// (asyncPS). It drives the executor; the loop (loop.go) drives it and
// never asks which it is. newStrategy chooses one.
type strategy interface {
	// start checks what the strategy cannot do with this configuration
	// (ErrConfig), makes the ranks one job (rank 0's configuration,
	// parameters, optimiser state and position: joinJob) and sets up
	// the executor.
	start(ctx context.Context) error
	// run trains: the loop (Trainer.loop), or a strategy's own (asyncPS:
	// the server hands the batches out).
	run(ctx context.Context, start time.Time) (Result, error)
	// close frees what start set up.
	close()

	// stopNow reports whether this rank stops before the next step, on
	// its own (ctx cancelled in one process; ranks that step together
	// carry the request with their step instead).
	stopNow(ctx context.Context) bool
	// beginEpoch and endEpoch bracket an epoch's batches from t.pos.batch
	// on (a device's prefetcher decodes this rank's part of them ahead).
	beginEpoch()
	endEpoch()
	// step computes this rank's part of the gradient of the global batch
	// perm[lo:hi] and combines it with the other ranks' (reduction, stage
	// sends). stopRequested is this rank's wish to stop; the result says
	// whether any rank asked.
	step(ctx context.Context, stopRequested bool, lo, hi int) (stepResult, error)
	// scale multiplies the step's gradients by c (clipping).
	scale(c float32) error
	// update takes the optimiser step with lr.
	update(lr float64) error
	// stepped runs once the step is counted (t.pos advanced): local SGD's
	// synchronisation. It returns whether any rank asked to stop.
	stepped(ctx context.Context, stopRequested bool) (bool, error)
	// endStep runs after the step's records: the balancer's re-plan.
	endStep(ctx context.Context) error

	// allSum adds v over the ranks that compute the loss (in place).
	allSum(ctx context.Context, what string, v []float64) error
	// settle makes the host hold the one model of the job (parameters and
	// optimiser state on the host, replicas verified; when names the
	// moment in an error).
	settle(ctx context.Context, when string) error
	// evaluate returns the test split's accuracy and mean loss, the same
	// on every rank.
	evaluate(ctx context.Context) (acc, loss float64, err error)
	// checkpoint runs a checkpoint's collective part on every rank and
	// returns what the strategy adds to rank 0's file.
	checkpoint(ctx context.Context) (func(*checkpoint.File), error)
	// finish brings the whole model to rank 0 for --out.
	finish(ctx context.Context) error
	// computeSpeeds is every rank's computation speed (metrics.Summary),
	// or this rank's alone (mine).
	computeSpeeds(ctx context.Context, mine []float64) ([]float64, error)
}

// stepResult is what a step computed.
type stepResult struct {
	lossSum    float64 // this rank's loss summed over its samples (the loss window)
	loss       float64 // the mean loss shown and checked for divergence
	sumSquares float64 // the step's gradients' sum of squares, the same on every rank
	stop       bool    // a rank asked to stop
}

// newExecutor chooses where the model trains: the device WithDevice gave,
// or the CPU, which refuses --precision (a device's).
func newExecutor(t *Trainer) (executor, error) {
	if t.devr != nil {
		t.devr.t = t
		return t.devr, nil
	}
	if p := t.cfg.Precision; p != "" && p != "fp32" && t.cfg.Sync != "async" {
		return nil, fmt.Errorf("%w: --precision %s runs on a device, and rank %d trains on the CPU (--device %s): use --device gpu on a machine with one", ErrConfig, p, t.rank(), t.cfg.Device)
	}
	return newCPUExec(t), nil
}

// newStrategy chooses how this rank takes part in the run; what a
// strategy cannot do with the configuration it refuses in start.
func newStrategy(t *Trainer) strategy {
	cfg := t.cfg
	switch {
	case cfg.Sync == "async":
		return &asyncPS{base: base{t: t}}
	case cfg.PipelineStages > 1:
		return &pipeline{base: base{t: t}}
	}
	b := base{t: t}
	var l *localSGD
	if cfg.Sync == "local-sgd" {
		l = &localSGD{t: t}
		b.own = l
	}
	var s strategy = &single{base: b}
	if t.worldSize() > 1 || cfg.AccumSteps > 1 {
		s = &allReduce{base: b, local: l != nil}
	}
	if l != nil {
		l.strategy = s
		return l
	}
	return s
}

// base is what strategies share: the trainer, the job's start, the loop
// as their run, and no-ops.
type base struct {
	t   *Trainer
	own jobState // the strategy's state the job's start carries (local SGD's); nil: none
}

func (b *base) run(ctx context.Context, start time.Time) (Result, error) { return b.t.loop(ctx, start) }

// joinJob makes the ranks of a communicator one job (syncStart), with
// the hooks of the strategy's own state; without a communicator there is
// nothing to join.
func (b *base) joinJob(ctx context.Context) error {
	if b.t.comm == nil {
		return nil
	}
	return b.t.syncStart(ctx, b.t.comm, b.own)
}

func (b *base) stopNow(context.Context) bool                               { return false }
func (b *base) close()                                                     {}
func (b *base) beginEpoch()                                                {}
func (b *base) endEpoch()                                                  {}
func (b *base) stepped(context.Context, bool) (bool, error)                { return false, nil }
func (b *base) endStep(context.Context) error                              { return nil }
func (b *base) finish(context.Context) error                               { return nil }
func (b *base) scale(c float32) error                                      { return b.t.exec.scale(c) }
func (b *base) update(lr float64) error                                    { return b.t.exec.step(lr) }
func (b *base) checkpoint(context.Context) (func(*checkpoint.File), error) { return nil, nil }
func (b *base) computeSpeeds(_ context.Context, mine []float64) ([]float64, error) {
	return mine, nil
}

// allSum adds v over the job's ranks (float64, in place).
func (b *base) allSum(ctx context.Context, what string, v []float64) error {
	t := b.t
	if t.comm == nil || t.worldSize() == 1 {
		return nil
	}
	return t.collective(ctx, what, func(ctx context.Context) error { return t.comm.AllReduce(ctx, v, v, dist.Sum) })
}

// settle brings the executor's state to the host and verifies that every
// replica holds the same parameters.
func (b *base) settle(ctx context.Context, when string) error {
	if err := b.t.exec.sync(); err != nil {
		return err
	}
	return b.t.verifyReplicas(ctx, when)
}

// evaluate evaluates this rank's share of the test set and combines the
// ranks' counts, so that every rank returns the whole set's numbers.
func (b *base) evaluate(ctx context.Context) (acc, loss float64, err error) {
	t := b.t
	lo, hi := shard(0, t.test.Len(), t.rank(), t.worldSize())
	var sums [2]float64
	if hi > lo {
		a, l, err := t.exec.evaluate(lo, hi, t.cfg.EvalBatchSize)
		if err != nil {
			return 0, 0, err
		}
		sums = [2]float64{a * float64(hi-lo), l * float64(hi-lo)}
	}
	if err := b.allSum(ctx, "evaluation", sums[:]); err != nil {
		return 0, 0, err
	}
	n := float64(t.test.Len())
	return sums[0] / n, sums[1] / n, nil
}
