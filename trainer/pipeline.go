package trainer

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/gpu/executor"
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
// The forward pass applies dropout with the masks that the recomputation
// draws again (the same random stream), so the gradient is that of the
// activations that were sent on. Every step the ranks add up the loss and
// the stages' sums of squared gradients: each rank then knows the global
// norm, clips by it as one process would, and takes the same decision when
// the step diverged.
//
// On a device (WithDevice) each stage's programs run there, with only the
// stage's parameters, its optimiser state and its summed gradients on the
// device; activations and input gradients travel through the host, and
// the replicas' sum of gradients too.

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
// perm[lo:hi]. It returns this rank's summed loss (the last stage's; 0
// elsewhere), and, the same on every rank, the global batch's mean loss
// and the global norm of the gradient (over every stage's parameters): so
// every rank decides alike whether the step diverged, and clipping is that
// of one process.
func (t *Trainer) pipelineStep(ctx context.Context, lo, hi int, pcg *rand.PCG, rng *rand.Rand) (lossSum, loss, norm float64, err error) {
	pp, s := t.pp, t.pp.stage
	k, n := s.Index, s.Of
	c := t.dp.comm
	prev, next := t.rank()-1, t.rank()+1 // the neighbouring stages of this replica
	B := hi - lo
	lo, hi = shard(lo, hi, pp.replica, pp.replicas) // this replica's share
	micro := max(t.cfg.MicroBatches, 1)
	if cap(pp.inputs) < micro {
		pp.inputs = make([][]float32, micro)
	}
	in := 1
	for _, d := range s.InShape {
		in *= d
	}
	// Dropout masks: a stream per micro-batch, the same in the forward
	// pass and in the backward pass's recomputation.
	seed := t.cfg.Seed ^ 0x5eedd70a ^ uint64(k)<<40
	stream := func(j int) uint64 { return uint64(t.pos.step)*uint64(micro) + uint64(j) }
	// Forward: every micro-batch through this stage.
	for j := 0; j < micro; j++ {
		ms, me := shard(lo, hi, j, micro)
		if me == ms {
			continue
		}
		x := slices.Grow(pp.inputs[j][:0], (me-ms)*in)[:(me-ms)*in]
		pp.inputs[j] = x
		var err error
		switch {
		case k == 0:
			err = t.fillTrain(x, nil, t.perm[ms:me], t.pos.epoch)
		case t.devDirect():
			err = t.devRecvInput(ctx, j, len(x), prev)
		default:
			err = t.collective(ctx, "pipeline receive of activations", func(ctx context.Context) error {
				return c.Recv(ctx, x, prev)
			})
		}
		if err != nil {
			return 0, 0, 0, err
		}
		if k == n-1 {
			continue // the last stage runs forward and backward together below
		}
		fp, err := s.ForwardProgram(me - ms)
		if err != nil {
			return 0, 0, 0, err
		}
		out, err := t.stageForward(fp, x, j, seed, stream(j), pcg, rng)
		if err != nil {
			return 0, 0, 0, err
		}
		if t.devDirect() {
			err = t.devSend(ctx, "pipeline send of activations", out, next)
		} else {
			err = t.collective(ctx, "pipeline send of activations", func(ctx context.Context) error {
				return c.Send(ctx, out.host, next)
			})
		}
		if err != nil {
			return 0, 0, 0, err
		}
	}
	// Backward, micro-batch by micro-batch, recomputing the forward.
	first := true
	for j := 0; j < micro; j++ {
		ms, me := shard(lo, hi, j, micro)
		if me == ms {
			continue
		}
		tp, err := s.Program(me-ms, true)
		if err != nil {
			return 0, 0, 0, err
		}
		switch {
		case k == n-1:
			err = t.fillTrain(nil, tp.Y, t.perm[ms:me], t.pos.epoch)
		case t.devDirect():
			err = t.devRecvUpstream(ctx, tp, next)
		default:
			err = t.collective(ctx, "pipeline receive of gradients", func(ctx context.Context) error {
				return c.Recv(ctx, tp.G, next)
			})
		}
		if err != nil {
			return 0, 0, 0, err
		}
		l, dx, err := t.stageBackward(tp, pp.inputs[j], j, seed, stream(j), float32(me-ms)/float32(B), first, pcg, rng)
		if err != nil {
			return 0, 0, 0, err
		}
		first = false
		lossSum += float64(l) * float64(me-ms)
		if k > 0 {
			if t.devDirect() {
				err = t.devSend(ctx, "pipeline send of gradients", dx, prev)
			} else {
				// Send returns once the bytes are written, so the buffer
				// can be sent without a copy.
				err = t.collective(ctx, "pipeline send of gradients", func(ctx context.Context) error {
					return c.Send(ctx, dx.host, prev)
				})
			}
			if err != nil {
				return 0, 0, 0, err
			}
		}
	}
	if err := t.stageGradsDone(first); err != nil {
		return 0, 0, 0, err
	}
	if pp.replicas > 1 {
		// Sum each stage's gradient over the replicas: every rank takes
		// part for every parameter, with zeros for those it does not own.
		if err := t.stageGradsToHost(); err != nil {
			return 0, 0, 0, err
		}
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
				return 0, 0, 0, err
			}
		}
		if err := t.stageGradsFromHost(); err != nil {
			return 0, 0, 0, err
		}
	}
	// The stages' sums of squares add up to the global one; every replica
	// holds the same gradients, so the sum over all ranks counts each
	// replicas times.
	sq, err := t.stageSumSquares()
	if err != nil {
		return 0, 0, 0, err
	}
	sums := []float64{lossSum, sq}
	if err := t.allSum(ctx, "pipeline loss and gradient norm", sums); err != nil {
		return 0, 0, 0, err
	}
	return lossSum, sums[0] / float64(B), math.Sqrt(sums[1] / float64(pp.replicas)), nil
}

// stageData is what a stage sends to a neighbour: host values, or with
// direct device transfers (devDirect) a device tensor.
type stageData struct {
	host []float32
	dev  executor.Tensor
}

// stageForward runs the training forward pass of a stage on micro-batch
// j's input (x on the host; with direct device transfers, after the first
// stage, the device copy devRecvInput received) and returns the output to
// send on.
func (t *Trainer) stageForward(fp *graph.StageProgram, x []float32, j int, seed, stream uint64, pcg *rand.PCG, rng *rand.Rand) (stageData, error) {
	if t.devr != nil {
		e, err := t.devStage(fp)
		if err != nil {
			return stageData{}, err
		}
		if err := t.devLoadInput(e, x, j); err != nil {
			return stageData{}, err
		}
		if _, err := e.RunStageLoaded(nil, seed, stream); err != nil {
			return stageData{}, t.devErr("running a stage program", err)
		}
		t.devr.runs++
		if t.devDirect() {
			return stageData{dev: e.Out()}, nil
		}
		out, err := t.devRead(e.Out())
		return stageData{host: out}, err
	}
	copy(fp.X, x)
	pcg.Seed(seed, stream)
	if _, err := fp.Run(rng); err != nil {
		return stageData{}, err
	}
	return stageData{host: fp.Out()}, nil
}

// stageBackward runs a stage's training program on micro-batch j's input
// (x, as stageForward) with tp.Y on the last stage, tp.G on the others
// (with direct device transfers already in the program's Upstream), adds
// scale times its parameter gradients into the stage's (sets them when
// first), and returns the mean loss (last stage) and the gradient of the
// input to send back (other stages).
func (t *Trainer) stageBackward(tp *graph.StageProgram, x []float32, j int, seed, stream uint64, scale float32, first bool, pcg *rand.PCG, rng *rand.Rand) (float32, stageData, error) {
	pp := t.pp
	if d := t.devr; d != nil {
		e, err := t.devStage(tp)
		if err != nil {
			return 0, stageData{}, err
		}
		if err := t.devLoadInput(e, x, j); err != nil {
			return 0, stageData{}, err
		}
		if tp.G != nil && !t.devDirect() {
			if err := device.WriteAsync(d.dev, e.Upstream().Buf, tp.G); err != nil {
				return 0, stageData{}, t.devErr("uploading an output gradient", err)
			}
		}
		l, err := e.RunStageLoaded(tp.Y, seed, stream)
		if err != nil {
			return 0, stageData{}, t.devErr("running a stage program", err)
		}
		d.runs++
		d.stale = true
		for i := range pp.stage.Params {
			n := e.Grad(i).Size()
			if err := d.dev.Launch("axpy_at", n, e.Grad(i).Buf, d.acc[i].Buf, n, 0, scale, !first); err != nil {
				return 0, stageData{}, t.devErr("summing the stage gradients", err)
			}
		}
		switch {
		case pp.stage.Index == 0:
			return l, stageData{}, nil
		case t.devDirect():
			return l, stageData{dev: e.DX()}, nil
		}
		dx, err := t.devRead(e.DX())
		return l, stageData{host: dx}, err
	}
	copy(tp.X, x)
	pcg.Seed(seed, stream)
	l, err := tp.Run(rng)
	if err != nil {
		return 0, stageData{}, err
	}
	for i, g := range pp.grads {
		for e, v := range tp.Grad(i) {
			if first {
				g[e] = scale * v
			} else {
				g[e] += scale * v
			}
		}
	}
	if pp.stage.Index == 0 {
		return l, stageData{}, nil
	}
	return l, stageData{host: tp.DX()}, nil
}

// stageGradsDone ends the micro-batches: when none had samples (first is
// still true), the stage's gradients are zero.
func (t *Trainer) stageGradsDone(first bool) error {
	if !first {
		return nil
	}
	if d := t.devr; d != nil {
		for _, a := range d.acc {
			if err := d.dev.Launch("fill", a.Size(), a.Buf, float32(0), a.Size()); err != nil {
				return t.devErr("zeroing the stage gradients", err)
			}
		}
		return nil
	}
	for _, g := range t.pp.grads {
		clear(g)
	}
	return nil
}

// stageGradsToHost brings a device stage's gradients into pp.grads (for
// the replicas' sum through the host); stageGradsFromHost takes them back.
func (t *Trainer) stageGradsToHost() error {
	if d := t.devr; d != nil {
		for i, a := range d.acc {
			if err := d.dev.Read(t.pp.grads[i], a.Buf); err != nil {
				return t.devErr("downloading the stage gradients", err)
			}
		}
	}
	return nil
}

func (t *Trainer) stageGradsFromHost() error {
	if d := t.devr; d != nil {
		for i, a := range d.acc {
			if err := d.dev.Write(a.Buf, t.pp.grads[i]); err != nil {
				return t.devErr("uploading the stage gradients", err)
			}
		}
	}
	return nil
}

// stageSumSquares is the sum of the squares of the stage's gradients.
func (t *Trainer) stageSumSquares() (float64, error) {
	d := t.devr
	if d == nil {
		return optim.SumSquares(t.pp.params), nil
	}
	if d.clip == nil {
		var err error
		if d.clip, err = executor.NewClipper(d.dev, len(d.acc)); err != nil {
			return 0, t.devErr("creating the gradient clipper", err)
		}
	}
	sq, err := d.clip.SumSquares(d.acc)
	if err != nil {
		return 0, t.devErr("summing the gradients' squares", err)
	}
	return sq, nil
}

// pipelineUpdate clips the stage's gradients by the global norm (see
// pipelineStep) and applies the stage's optimiser.
func (t *Trainer) pipelineUpdate(norm, lr float64) error {
	pp, d := t.pp, t.devr
	c, clip := optim.ClipCoef(norm, t.cfg.ClipGradNorm)
	if d == nil {
		if clip {
			optim.Scale(pp.params, c)
		}
		pp.opt.Step(pp.params, lr)
		return nil
	}
	if clip {
		if err := d.clip.Scale(d.acc, c); err != nil {
			return t.devErr("clipping the gradients", err)
		}
	}
	if err := d.opt.Step(d.stageParams, d.acc, lr); err != nil {
		return t.devErr("optimiser step", err)
	}
	d.stale = true
	d.steps++
	return nil
}

// evaluatePipeline runs the test set through the stages; the last stage
// counts, then broadcasts the accuracy and loss to every rank.
func (t *Trainer) evaluatePipeline(ctx context.Context) (acc, loss float64, err error) {
	s, c := t.pp.stage, t.dp.comm
	k, n := s.Index, s.Of
	batch := t.cfg.EvalBatchSize
	var sums [2]float64
	idx := make([]int, 0, batch)
	total := t.test.Len()
	for lo := 0; lo < total && t.pp.replica == 0; lo += batch {
		hi := min(lo+batch, total)
		fp, err := s.Program(hi-lo, false)
		if err != nil {
			return 0, 0, err
		}
		idx = idx[:0]
		for i := lo; i < hi; i++ {
			idx = append(idx, i)
		}
		if k == 0 {
			if err := t.fillTest(fp.X, nil, idx); err != nil {
				return 0, 0, err
			}
		} else if err := t.collective(ctx, "pipeline evaluation", func(ctx context.Context) error { return c.Recv(ctx, fp.X, t.rank()-1) }); err != nil {
			return 0, 0, err
		}
		if k == n-1 {
			if err := t.fillTest(nil, fp.Y, idx); err != nil {
				return 0, 0, err
			}
		}
		l, out, err := t.stageEval(fp)
		if err != nil {
			return 0, 0, err
		}
		if k < n-1 {
			if err := t.collective(ctx, "pipeline evaluation", func(ctx context.Context) error { return c.Send(ctx, out, t.rank()+1) }); err != nil {
				return 0, 0, err
			}
			continue
		}
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
	return sums[0] / float64(total), sums[1] / float64(total), nil
}

// stageEval runs a stage's evaluation program on fp.X (and fp.Y on the
// last stage) and returns the mean loss (last stage) and the output.
func (t *Trainer) stageEval(fp *graph.StageProgram) (float32, []float32, error) {
	if t.devr == nil {
		l, err := fp.Run(nil)
		return l, fp.Out(), err
	}
	e, err := t.devStage(fp)
	if err != nil {
		return 0, nil, err
	}
	l, err := e.RunStage(fp.X, fp.Y, nil, 0, 0)
	if err != nil {
		return 0, nil, t.devErr("evaluation", err)
	}
	t.devr.evals++
	out, err := t.devRead(e.Out())
	return l, out, err
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

// devDirect reports whether this stage passes its activations and input
// gradients device to device (see devRun.p2p).
func (t *Trainer) devDirect() bool { return t.devr != nil && t.devr.p2p != nil }

// devP2P runs a device Send or Recv (f) under the job's deadline and then
// waits for the device, under NCCL's watchdog, so that a neighbour that
// never comes is an error naming what, not a hang.
func (t *Trainer) devP2P(ctx context.Context, what string, f func(ctx context.Context) error) error {
	d := t.devr
	return t.collective(ctx, what, func(ctx context.Context) error {
		if err := f(ctx); err != nil {
			return err
		}
		return d.p2p.WaitDevice(ctx, func() (bool, error) { return device.IdleOf(d.dev) })
	})
}

// devRecvInput receives micro-batch j's input (n values) from peer into
// the stage's device buffer for it.
func (t *Trainer) devRecvInput(ctx context.Context, j, n, peer int) error {
	d := t.devr
	for len(d.stageIn) <= j {
		d.stageIn = append(d.stageIn, nil)
	}
	if err := device.Grow(d.dev, &d.stageIn[j], n); err != nil {
		return t.devErr("allocating a received input", err)
	}
	addr := d.stageIn[j].(device.Addresser).Addr()
	return t.devP2P(ctx, "pipeline receive of activations", func(ctx context.Context) error {
		return d.p2p.RecvDevice(ctx, addr, n, peer, 0)
	})
}

// devRecvUpstream receives the gradient of tp's output from peer into its
// device program's Upstream buffer.
func (t *Trainer) devRecvUpstream(ctx context.Context, tp *graph.StageProgram, peer int) error {
	e, err := t.devStage(tp)
	if err != nil {
		return err
	}
	up := e.Upstream()
	addr := up.Buf.(device.Addresser).Addr()
	return t.devP2P(ctx, "pipeline receive of gradients", func(ctx context.Context) error {
		return t.devr.p2p.RecvDevice(ctx, addr, up.Size(), peer, 0)
	})
}

// devSend sends a device tensor to peer.
func (t *Trainer) devSend(ctx context.Context, what string, v stageData, peer int) error {
	addr := v.dev.Buf.(device.Addresser).Addr()
	return t.devP2P(ctx, what, func(ctx context.Context) error {
		return t.devr.p2p.SendDevice(ctx, addr, v.dev.Size(), peer, 0)
	})
}

// devLoadInput puts micro-batch j's input into e's input buffer: x from
// the host on the first stage or without direct transfers, else the
// device copy devRecvInput received.
func (t *Trainer) devLoadInput(e *executor.Program, x []float32, j int) error {
	d := t.devr
	if !t.devDirect() || t.pp.stage.Index == 0 {
		if err := device.WriteAsync(d.dev, e.Input().Buf, x); err != nil {
			return t.devErr("uploading a stage input", err)
		}
		return nil
	}
	n := e.Input().Size()
	if err := d.dev.Launch("copy_f32", n, d.stageIn[j], e.Input().Buf, n); err != nil {
		return t.devErr("copying a received input", err)
	}
	return nil
}
