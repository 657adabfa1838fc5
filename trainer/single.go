package trainer

import (
	"context"
	"time"
)

// single is the strategy of one process: each step is one run of the
// training program on the whole batch.
type single struct{ base }

func (s *single) start(ctx context.Context) error {
	t := s.t
	// A job of one rank (a communicator of size 1) is still started as a
	// job: the configuration check and rank 0's state are trivial.
	if err := s.joinJob(ctx); err != nil {
		return err
	}
	if err := t.exec.start(t.opt, nil); err != nil {
		return err
	}
	if t.cfg.Prefetch {
		return t.exec.startPrefetcher(t.cfg.BatchSize)
	}
	return nil
}

// stopNow: one process stops between steps when its context ends.
func (s *single) stopNow(ctx context.Context) bool { return ctx.Err() != nil }

// beginEpoch starts prefetching the epoch's batches from t.pos.batch on.
func (s *single) beginEpoch() {
	t := s.t
	nb, n := t.batchesPerEpoch(), t.train.Len()
	spans := make([][2]int, 0, nb-t.pos.batch)
	for b := t.pos.batch; b < nb; b++ {
		lo := b * t.cfg.BatchSize
		spans = append(spans, [2]int{lo, min(lo+t.cfg.BatchSize, n)})
	}
	t.prefetch(spans)
}

func (s *single) endEpoch() { s.t.exec.stopPrefetch() }

func (s *single) step(_ context.Context, _ bool, lo, hi int) (stepResult, error) {
	t := s.t
	prog, err := t.Model.Program(hi-lo, true)
	if err != nil {
		return stepResult{}, err
	}
	t0 := time.Now()
	warm := t.exec.warm(prog)
	tw := time.Now()
	x, y, done, err := t.exec.input(prog, lo, hi, func(x, y []float32) error { return t.fillTrain(x, y, t.perm[lo:hi], t.pos.epoch) })
	t.dataWait += time.Since(tw)
	if err != nil {
		return stepResult{}, err
	}
	l, err := t.exec.run(prog, x, y, runKey{step: t.pos.step, micros: 1}, nil)
	if done != nil {
		done() // the loss is read: the device is done with the slot
	}
	if err != nil {
		return stepResult{}, err
	}
	d := time.Since(t0)
	d += t.straggler().delay(d)
	if warm {
		t.computeSecs += d.Seconds()
		t.computeSamples += float64(hi - lo)
	}
	if err := t.exec.useProgramGrads(prog); err != nil {
		return stepResult{}, err
	}
	sq, err := t.exec.sumSquares()
	if err != nil {
		return stepResult{}, err
	}
	loss := float64(l)
	return stepResult{lossSum: loss * float64(hi-lo), loss: loss, sumSquares: sq}, nil
}
