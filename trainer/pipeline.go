package trainer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"

	gpuexec "github.com/gotrain/gotrain/gpu/executor"
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

// pipeline is the pipeline-stages strategy.
type pipeline struct {
	base
	stage             *graph.Stage
	replica, replicas int             // data-parallel copies of the pipeline
	zeros             [][]float32     // per model parameter this stage does not own: zeros for the replica all-reduce
	opt               optim.Optimizer // the stage's
	inputs            [][]float32     // per micro-batch: this stage's input, kept for the backward
	link              stageLink
}

func (p *pipeline) start(ctx context.Context) error {
	t := p.t
	if err := p.joinJob(ctx); err != nil {
		return err
	}
	n := t.cfg.PipelineStages
	if t.comm == nil {
		return fmt.Errorf("%w: --pipeline-stages %d needs a job of %d ranks (see 'gotrain launch')", ErrConfig, n, n)
	}
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
	p.stage, p.replica, p.replicas = s, t.rank()/n, t.worldSize()/n
	params := make([]optim.Param, 0, len(s.Params))
	for _, i := range s.Params {
		mp := t.Model.Params[i]
		params = append(params, optim.Param{Name: mp.Name, Data: mp.Data, Grad: make([]float32, mp.Size()), Buffer: mp.Buffer})
	}
	if p.replicas > 1 {
		p.zeros = make([][]float32, len(t.Model.Params))
		for i, mp := range t.Model.Params {
			if !slices.Contains(s.Params, i) {
				p.zeros[i] = make([]float32, mp.Size())
			}
		}
	}
	if p.opt, err = optim.New(t.cfg.optimizer(), params); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if err := t.exec.start(p.opt, s.Params); err != nil {
		return err
	}
	p.link = t.exec.stage().link(t.comm)
	return nil
}

// settle brings the stage's state to the host; the stages hold different
// parameters, so there are no replicas to compare.
func (p *pipeline) settle(context.Context, string) error { return p.t.exec.sync() }

// pipelineStep computes this stage's gradient of the global batch
// perm[lo:hi]. Its result's lossSum is this rank's summed loss (the last
// stage's; 0 elsewhere); the global batch's mean loss and the sum of
// squares of the gradient over every stage's parameters are the same on
// every rank: so every rank decides alike whether the step diverged, and
// clipping is that of one process.
func (p *pipeline) step(ctx context.Context, _ bool, lo, hi int) (stepResult, error) {
	t, pp, s := p.t, p, p.stage
	st := t.exec.stage()
	k, n := s.Index, s.Of
	var lossSum float64
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
	seed := t.cfg.Seed ^ dropoutSalt ^ uint64(k)<<40
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
		if k == 0 {
			err = t.fillTrain(x, nil, t.perm[ms:me], t.pos.epoch)
		} else {
			err = p.link.recvInput(ctx, j, x, prev)
		}
		if err != nil {
			return stepResult{}, err
		}
		if k == n-1 {
			continue // the last stage runs forward and backward together below
		}
		fp, err := s.ForwardProgram(me - ms)
		if err != nil {
			return stepResult{}, err
		}
		out, err := st.forward(fp, x, j, k > 0, seed, stream(j))
		if err != nil {
			return stepResult{}, err
		}
		if err := p.link.send(ctx, "pipeline send of activations", out, next); err != nil {
			return stepResult{}, err
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
			return stepResult{}, err
		}
		if k == n-1 {
			err = t.fillTrain(nil, tp.Y, t.perm[ms:me], t.pos.epoch)
		} else {
			err = p.link.recvUpstream(ctx, tp, next)
		}
		if err != nil {
			return stepResult{}, err
		}
		l, dx, err := st.backward(tp, pp.inputs[j], j, k > 0, seed, stream(j), float32(me-ms)/float32(B), first)
		if err != nil {
			return stepResult{}, err
		}
		first = false
		lossSum += float64(l) * float64(me-ms)
		if k > 0 {
			if err := p.link.send(ctx, "pipeline send of gradients", dx, prev); err != nil {
				return stepResult{}, err
			}
		}
	}
	if first { // no micro-batch had samples
		if err := st.zeroGrads(); err != nil {
			return stepResult{}, err
		}
	}
	if pp.replicas > 1 {
		// Sum each stage's gradient over the replicas: every rank takes
		// part for every parameter, with zeros for those it does not own.
		grads, err := st.hostGrads()
		if err != nil {
			return stepResult{}, err
		}
		owned := 0
		for i := range t.Model.Params {
			buf := pp.zeros[i]
			if buf == nil {
				buf = grads[owned]
				owned++
			} else {
				clear(buf)
			}
			if err := t.collective(ctx, "replica gradient sum", func(ctx context.Context) error {
				return t.comm.AllReduce(ctx, buf, buf, dist.Sum)
			}); err != nil {
				return stepResult{}, err
			}
		}
		if err := st.putHostGrads(); err != nil {
			return stepResult{}, err
		}
	}
	// The stages' sums of squares add up to the global one; every replica
	// holds the same gradients, so the sum over all ranks counts each
	// replicas times.
	st.useGrads()
	sq, err := t.exec.sumSquares()
	if err != nil {
		return stepResult{}, err
	}
	sums := []float64{lossSum, sq}
	if err := p.allSum(ctx, "pipeline loss and gradient norm", sums); err != nil {
		return stepResult{}, err
	}
	return stepResult{lossSum: lossSum, loss: sums[0] / float64(B), sumSquares: sums[1] / float64(pp.replicas)}, nil
}

// stageData is what a stage sends to a neighbour: host values, or with
// direct device transfers a device tensor.
type stageData struct {
	host []float32
	dev  gpuexec.Tensor
}

// stageExec is an executor's side of a pipeline stage: the stage's
// programs, its summed gradients (the step's) and how data travels to its
// neighbours.
type stageExec interface {
	// forward runs the training forward pass of fp on micro-batch j's
	// input x (with fromPeer, received from the previous stage: over a
	// direct link, the copy the link received) and returns the output to
	// send on.
	forward(fp *graph.StageProgram, x []float32, j int, fromPeer bool, seed, stream uint64) (stageData, error)
	// backward runs tp on micro-batch j's input (as forward) with tp.Y on
	// the last stage, tp.G on the others (over a direct link already in
	// the program's upstream), adds scale times its parameter gradients
	// into the stage's (sets them when first) and returns the mean loss
	// (last stage) and, fromPeer, the gradient of the input to send back.
	backward(tp *graph.StageProgram, x []float32, j int, fromPeer bool, seed, stream uint64, scale float32, first bool) (float32, stageData, error)
	// zeroGrads zeroes the stage's gradients (no micro-batch had samples).
	zeroGrads() error
	// hostGrads returns the stage's gradients on the host, in Stage.Params
	// order; putHostGrads takes them back after they changed there.
	hostGrads() ([][]float32, error)
	putHostGrads() error
	// useGrads makes the stage's gradients the step's.
	useGrads()
	// eval runs fp's evaluation on fp.X (and fp.Y on the last stage) and
	// returns the mean loss (last stage) and the output.
	eval(fp *graph.StageProgram) (float32, []float32, error)
	// link is how the stage's data travels over c.
	link(c dist.Communicator) stageLink
}

// stageLink carries a stage's data to and from its neighbours.
type stageLink interface {
	// recvInput receives micro-batch j's input (x's length) from peer.
	recvInput(ctx context.Context, j int, x []float32, peer int) error
	// recvUpstream receives the gradient of tp's output from peer.
	recvUpstream(ctx context.Context, tp *graph.StageProgram, peer int) error
	// send sends v to peer.
	send(ctx context.Context, what string, v stageData, peer int) error
}

// hostLink passes host values with the communicator's Send and Recv.
type hostLink struct {
	t *Trainer
	c dist.Communicator
}

func (h hostLink) recvInput(ctx context.Context, _ int, x []float32, peer int) error {
	return h.t.collective(ctx, "pipeline receive of activations", func(ctx context.Context) error { return h.c.Recv(ctx, x, peer) })
}

func (h hostLink) recvUpstream(ctx context.Context, tp *graph.StageProgram, peer int) error {
	return h.t.collective(ctx, "pipeline receive of gradients", func(ctx context.Context) error { return h.c.Recv(ctx, tp.G, peer) })
}

// send: Send returns once the bytes are written, so the buffer can be
// sent without a copy.
func (h hostLink) send(ctx context.Context, what string, v stageData, peer int) error {
	return h.t.collective(ctx, what, func(ctx context.Context) error { return h.c.Send(ctx, v.host, peer) })
}

// cpuStage is the CPU executor's stage: graph's stage programs, the
// summed gradients on the host.
type cpuStage struct {
	c      *cpuExec
	grads  [][]float32   // accumulated gradients of the stage's parameters
	params []optim.Param // the stage's parameters with grads
	pcg    *rand.PCG
	rng    *rand.Rand
}

func newCPUStage(c *cpuExec, only []int) *cpuStage {
	s := &cpuStage{c: c, pcg: rand.NewPCG(0, 0)}
	s.rng = rand.New(s.pcg)
	for _, i := range only {
		p := c.t.Model.Params[i]
		g := make([]float32, p.Size())
		s.grads = append(s.grads, g)
		s.params = append(s.params, optim.Param{Name: p.Name, Data: p.Data, Grad: g, Buffer: p.Buffer})
	}
	return s
}

func (s *cpuStage) forward(fp *graph.StageProgram, x []float32, _ int, _ bool, seed, stream uint64) (stageData, error) {
	copy(fp.X, x)
	s.pcg.Seed(seed, stream)
	if _, err := fp.Run(s.rng); err != nil {
		return stageData{}, err
	}
	return stageData{host: fp.Out()}, nil
}

func (s *cpuStage) backward(tp *graph.StageProgram, x []float32, _ int, fromPeer bool, seed, stream uint64, scale float32, first bool) (float32, stageData, error) {
	copy(tp.X, x)
	s.pcg.Seed(seed, stream)
	l, err := tp.Run(s.rng)
	if err != nil {
		return 0, stageData{}, err
	}
	for i, g := range s.grads {
		for e, v := range tp.Grad(i) {
			if first {
				g[e] = scale * v
			} else {
				g[e] += scale * v
			}
		}
	}
	if !fromPeer {
		return l, stageData{}, nil
	}
	return l, stageData{host: tp.DX()}, nil
}

func (s *cpuStage) zeroGrads() error {
	for _, g := range s.grads {
		clear(g)
	}
	return nil
}

func (s *cpuStage) hostGrads() ([][]float32, error) { return s.grads, nil }
func (s *cpuStage) putHostGrads() error             { return nil }
func (s *cpuStage) useGrads()                       { s.c.cur = s.params }

func (s *cpuStage) eval(fp *graph.StageProgram) (float32, []float32, error) {
	l, err := fp.Run(nil)
	return l, fp.Out(), err
}

func (s *cpuStage) link(c dist.Communicator) stageLink { return hostLink{s.c.t, c} }

// evaluatePipeline runs the test set through the stages; the last stage
// counts, then broadcasts the accuracy and loss to every rank.
func (p *pipeline) evaluate(ctx context.Context) (acc, loss float64, err error) {
	t := p.t
	s, c := p.stage, t.comm
	k, n := s.Index, s.Of
	batch := t.cfg.EvalBatchSize
	var sums [2]float64
	idx := make([]int, 0, batch)
	total := t.test.Len()
	for lo := 0; lo < total && p.replica == 0; lo += batch {
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
		l, out, err := t.exec.stage().eval(fp)
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

func argmax(row []float32) int {
	best := 0
	for j, v := range row {
		if v > row[best] {
			best = j
		}
	}
	return best
}

// finish brings every stage's parameters to rank 0 (for --out), in stage
// order; the other ranks send theirs.
func (p *pipeline) finish(ctx context.Context) error {
	t := p.t
	c := t.comm
	stages, err := t.Model.Stages(p.stage.Of)
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
