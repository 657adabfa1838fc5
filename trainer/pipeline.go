package trainer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Pipeline (model) parallelism
//
// With Config.PipelineStages = N (the world size), rank k runs stage k of
// the model (graph.Model.Stages: consecutive layers balanced by parameter
// count). Each global batch is cut into Config.MicroBatches micro-batches;
// GPipe's schedule runs every micro-batch forward through the stages
// (activations travel with Send/Recv), then backward: the last stage
// computes the loss and its gradients, sends the gradient of its input
// back, and each stage recomputes its forward from the input it kept and
// back-propagates. A micro-batch of m samples adds m/B times its mean
// gradient, so each stage's update is one process's with the global batch.

type pipeline struct {
	stage             *graph.Stage
	replica, replicas int           // data-parallel copies of the pipeline
	zeros             [][]float32   // per model parameter this stage does not own: zeros for the replica all-reduce
	grads             [][]float32   // accumulated gradients of the stage's parameters
	params            []optim.Param // the stage's parameters with grads
	opt               optim.Optimizer
	inputs            [][]float32 // per micro-batch: this stage's input, kept for the backward
}

func (t *Trainer) pipelined() bool { return t.cfg.PipelineStages > 1 }

func (t *Trainer) setupPipeline() error {
	n := t.cfg.PipelineStages
	if t.worldSize()%n != 0 {
		return fmt.Errorf("%w: --pipeline-stages %d needs a world size that is a multiple of %d (one stage per rank, world size / stages data-parallel replicas); this job has %d ranks", ErrConfig, n, n, t.worldSize())
	}
	if t.cfg.CheckpointDir != "" || t.cfg.AccumSteps > 1 || t.cfg.Balance != "off" || t.cfg.Sync != "allreduce" {
		return fmt.Errorf("%w: --pipeline-stages does not combine with --checkpoint-dir, --accum-steps, --balance or --sync yet", ErrConfig)
	}
	stages, err := t.Model.Stages(n)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	s := stages[t.rank()%n]
	pp := &pipeline{stage: s, replica: t.rank() / n, replicas: t.worldSize() / n}
	for _, i := range s.Params {
		p := t.Model.Params[i]
		g := make([]float32, p.Size())
		pp.grads = append(pp.grads, g)
		pp.params = append(pp.params, optim.Param{Name: p.Name, Data: p.Data, Grad: g})
	}
	if pp.replicas > 1 {
		pp.zeros = make([][]float32, len(t.Model.Params))
		for i, p := range t.Model.Params {
			if !slices.Contains(s.Params, i) {
				pp.zeros[i] = make([]float32, p.Size())
			}
		}
	}
	if pp.opt, err = optim.New(t.cfg.optimizer(), pp.params); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	t.pp = pp
	return nil
}

// pipelineStep computes this stage's gradient of the global batch
// perm[lo:hi] and returns the last stage's summed loss (0 elsewhere).
func (t *Trainer) pipelineStep(ctx context.Context, lo, hi int, pcg *rand.PCG, rng *rand.Rand) (float64, error) {
	pp, s := t.pp, t.pp.stage
	k, n := s.Index, s.Of
	c := t.dp.comm
	prev, next := t.rank()-1, t.rank()+1 // the neighbouring stages of this replica
	B := hi - lo
	lo, hi = shard(lo, hi, pp.replica, pp.replicas) // this replica's share
	micro := max(t.cfg.MicroBatches, 1)
	for _, g := range pp.grads {
		clear(g)
	}
	if cap(pp.inputs) < micro {
		pp.inputs = make([][]float32, micro)
	}
	var lossSum float64
	// Forward: every micro-batch through this stage.
	for j := 0; j < micro; j++ {
		ms, me := shard(lo, hi, j, micro)
		if me == ms {
			continue
		}
		fp, err := s.Program(me-ms, false)
		if err != nil {
			return 0, err
		}
		if k == 0 {
			t.train.Batch(t.perm[ms:me], fp.X, nil)
		} else if err := t.collective(ctx, "pipeline receive of activations", func(ctx context.Context) error {
			return c.Recv(ctx, fp.X, prev)
		}); err != nil {
			return 0, err
		}
		pp.inputs[j] = append(pp.inputs[j][:0], fp.X...)
		if k == n-1 {
			continue // the last stage runs forward and backward together below
		}
		if _, err := fp.Run(nil); err != nil {
			return 0, err
		}
		if err := t.collective(ctx, "pipeline send of activations", func(ctx context.Context) error {
			return c.Send(ctx, fp.Out(), next)
		}); err != nil {
			return 0, err
		}
	}
	// Backward, micro-batch by micro-batch, recomputing the forward.
	for j := 0; j < micro; j++ {
		ms, me := shard(lo, hi, j, micro)
		if me == ms {
			continue
		}
		tp, err := s.Program(me-ms, true)
		if err != nil {
			return 0, err
		}
		copy(tp.X, pp.inputs[j])
		if k == n-1 {
			t.train.Batch(t.perm[ms:me], nil, tp.Y)
		} else if err := t.collective(ctx, "pipeline receive of gradients", func(ctx context.Context) error {
			return c.Recv(ctx, tp.G, next)
		}); err != nil {
			return 0, err
		}
		pcg.Seed(t.cfg.Seed^0x5eedd70a^uint64(k)<<40, uint64(t.pos.step)*uint64(micro)+uint64(j))
		loss, err := tp.Run(rng)
		if err != nil {
			return 0, err
		}
		lossSum += float64(loss) * float64(me-ms)
		scale := float32(me-ms) / float32(B)
		for i := range pp.grads {
			for e, v := range tp.Grad(i) {
				pp.grads[i][e] += scale * v
			}
		}
		if k > 0 {
			// Send returns once the bytes are written, so the op's own
			// buffer can be sent without a copy.
			if err := t.collective(ctx, "pipeline send of gradients", func(ctx context.Context) error {
				return c.Send(ctx, tp.DX(), prev)
			}); err != nil {
				return 0, err
			}
		}
	}
	if pp.replicas > 1 {
		// Sum each stage's gradient over the replicas: every rank takes
		// part for every parameter, with zeros for those it does not own.
		owned := 0
		for i := range t.Model.Params {
			buf := pp.zeros[i]
			if buf == nil {
				buf = pp.grads[owned]
				owned++
			} else {
				clear(buf)
			}
			if err := t.collective(ctx, "replica gradient sum", func(ctx context.Context) error {
				return c.AllReduce(ctx, buf, buf, dist.Sum)
			}); err != nil {
				return 0, err
			}
		}
	}
	return lossSum, nil
}

// evaluatePipeline runs the test set through the stages; the last stage
// counts, then broadcasts the accuracy and loss to every rank.
func (t *Trainer) evaluatePipeline(ctx context.Context) (acc, loss float64, err error) {
	s, c := t.pp.stage, t.dp.comm
	k, n := s.Index, s.Of
	batch := t.cfg.EvalBatchSize
	var sums [2]float64
	idx := make([]int, 0, batch)
	for lo := 0; lo < t.test.N && t.pp.replica == 0; lo += batch {
		hi := min(lo+batch, t.test.N)
		fp, err := s.Program(hi-lo, false)
		if err != nil {
			return 0, 0, err
		}
		idx = idx[:0]
		for i := lo; i < hi; i++ {
			idx = append(idx, i)
		}
		if k == 0 {
			t.test.Batch(idx, fp.X, nil)
		} else if err := t.collective(ctx, "pipeline evaluation", func(ctx context.Context) error { return c.Recv(ctx, fp.X, t.rank()-1) }); err != nil {
			return 0, 0, err
		}
		if k == n-1 {
			t.test.Batch(idx, nil, fp.Y)
		}
		l, err := fp.Run(nil)
		if err != nil {
			return 0, 0, err
		}
		if k < n-1 {
			if err := t.collective(ctx, "pipeline evaluation", func(ctx context.Context) error { return c.Send(ctx, fp.Out(), t.rank()+1) }); err != nil {
				return 0, 0, err
			}
			continue
		}
		out := fp.Out()
		classes := len(out) / (hi - lo)
		for i := 0; i < hi-lo; i++ {
			row := out[i*classes : (i+1)*classes]
			if argmax(row) == int(fp.Y[i]) {
				sums[0]++
			}
		}
		sums[1] += float64(l) * float64(hi-lo)
	}
	if err := t.collective(ctx, "pipeline evaluation result", func(ctx context.Context) error {
		return c.Broadcast(ctx, sums[:], n-1)
	}); err != nil {
		return 0, 0, err
	}
	return sums[0] / float64(t.test.N), sums[1] / float64(t.test.N), nil
}

func argmax(row []float32) int {
	best := 0
	for j, v := range row {
		if v > row[best] {
			best = j
		}
	}
	return best
}

// gatherStages brings every stage's parameters to rank 0 (for --out), in
// stage order; the other ranks send theirs.
func (t *Trainer) gatherStages(ctx context.Context) error {
	c := t.dp.comm
	stages, err := t.Model.Stages(t.pp.stage.Of)
	if err != nil {
		return err
	}
	for k := 1; k < len(stages); k++ {
		for _, i := range stages[k].Params {
			p := t.Model.Params[i]
			switch t.rank() {
			case 0:
				err = t.collective(ctx, "gathering "+p.Name, func(ctx context.Context) error { return c.Recv(ctx, p.Data, k) })
			case k:
				err = t.collective(ctx, "gathering "+p.Name, func(ctx context.Context) error { return c.Send(ctx, p.Data, 0) })
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}
