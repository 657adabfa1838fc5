package trainer

import (
	"math/rand/v2"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/optim"
)

// An executor runs the model's programs where its parameters live, and
// owns them there with their gradients and the optimiser's state: the CPU
// (cpuExec, graph's programs on the host model) or a device (devRun,
// gpu/executor's programs). Strategies drive it; the loop asks it nothing
// directly but through them. newExecutor chooses one.
//
// A step's gradients are those the executor last took up: a program's
// (useProgramGrads: one process), reduced ones on the host (useHostGrads:
// data parallelism through host buckets), a reducer's on the device, or a
// pipeline stage's sums (stage programs add into them). sumSquares,
// scale and step act on them.
type executor interface {
	// start puts the parameters and opt's state where they train: the
	// whole model's, or with only a pipeline stage's parameters (their
	// indices). opt is the optimiser whose state sync brings back.
	start(opt optim.Optimizer, only []int) error
	// close frees what start and the runs took.
	close()

	// startPrefetcher makes the prefetcher of batches of at most batch
	// samples, where the executor has one (a device).
	startPrefetcher(batch int) error
	// prefetch starts decoding the spans (rows of the permutation) of
	// this epoch ahead of the runs, where the executor has a prefetcher,
	// by fill; stopPrefetch ends it.
	prefetch(spans [][2]int, fill func(lo, hi int, x, y []float32) error)
	stopPrefetch()
	// input returns rows [lo, hi)'s input and targets for prog: a
	// prefetched batch, or prog's own buffers filled by fill. done gives a
	// prefetched slot back once the run has read its loss.
	input(prog *graph.Program, lo, hi int, fill func(x, y []float32) error) (x, y []float32, done func(), err error)

	// run runs prog (forward and backward) on x, y with the dropout masks
	// of key; watch, when not nil, hears of each gradient as it is issued.
	// On a failure after watch was armed the executor ends the reducer it
	// belongs to (see gradReducer).
	run(prog *graph.Program, x, y []float32, key runKey, watch func(param int) error) (float32, error)
	// runStream runs prog on its own buffers with the masks of the
	// stream (seed, stream): an asynchronous worker's batch.
	runStream(prog *graph.Program, seed, stream uint64, rng *rand.Rand, pcg *rand.PCG) (float32, error)
	// warm reports whether prog has run here before.
	warm(prog *graph.Program) bool
	// grad is parameter i's gradient of prog's last run, on the host
	// (valid until the next call).
	grad(prog *graph.Program, i int) ([]float32, error)
	// loadParams takes the host model's parameters (an asynchronous
	// worker's, from the server).
	loadParams() error

	// useProgramGrads makes prog's gradients the step's; useHostGrads
	// the host gradients grads (one per model parameter).
	useProgramGrads(prog *graph.Program) error
	useHostGrads(grads [][]float32) error
	// sumSquares is the sum of the squares of the step's gradients;
	// scale multiplies them by c; step applies the optimiser with lr.
	sumSquares() (float64, error)
	scale(c float32) error
	step(lr float64) error

	// sync brings the host's parameters and optimiser state up to date.
	sync() error
	// syncedParams says that the host's parameters changed (averaged):
	// the executor takes them up again.
	syncedParams() error
	// evaluate returns the accuracy and mean loss over test samples
	// [lo, hi).
	evaluate(lo, hi, batch int) (accuracy, loss float64, err error)
	// release drops the programs of this batch size and mode.
	release(batch int, train bool)

	// reducer makes the gradient reducer of a data-parallel step (see
	// gradReducer) for buckets; c nil: the buckets are summed here only
	// (local SGD, gradient accumulation in one process).
	reducer(b *buckets, c dist.Communicator) (gradReducer, error)

	// Pipeline stages (see pipeline.go): the stage's programs, its
	// summed gradients and how its neighbours' data travels.
	stage() stageExec
}

// runKey says which dropout masks a training run draws: those of its
// micro-batch (micro of micros) of rank's share of step's global batch,
// whose first sample is row of the global batch.
type runKey struct {
	step                int64
	row                 int
	rank, micro, micros int
}

// dropoutSalt is mixed into the seed of the training runs' masks.
const dropoutSalt = 0x5eedd70a

// cpuExec runs the host model's programs (graph.Program) on the CPU.
type cpuExec struct {
	t      *Trainer
	opt    optim.Optimizer
	params map[*graph.Program][]optim.Param // the optimiser's view of each program's gradients
	host   []optim.Param                    // the optimiser's view of host gradients (useHostGrads)
	cur    []optim.Param                    // the step's gradients
	st     *cpuStage
}

func newCPUExec(t *Trainer) *cpuExec {
	return &cpuExec{t: t, params: map[*graph.Program][]optim.Param{}}
}

func (c *cpuExec) start(opt optim.Optimizer, only []int) error {
	c.opt = opt
	if only != nil {
		c.st = newCPUStage(c, only)
	}
	return nil
}

func (c *cpuExec) close() {}

func (c *cpuExec) startPrefetcher(int) error                                 { return nil }
func (c *cpuExec) prefetch([][2]int, func(lo, hi int, x, y []float32) error) {}
func (c *cpuExec) stopPrefetch()                                             {}

func (c *cpuExec) input(prog *graph.Program, lo, hi int, fill func(x, y []float32) error) ([]float32, []float32, func(), error) {
	return prog.X, prog.Y, nil, fill(prog.X, prog.Y)
}

// run draws each sample's dropout masks from its own stream, keyed by its
// place in the global batch: any split across ranks and micro-batches
// draws the masks of one process.
func (c *cpuExec) run(prog *graph.Program, x, y []float32, k runKey, _ func(int) error) (float32, error) {
	return prog.RunAt(c.t.cfg.Seed^dropoutSalt, uint64(k.step), k.row)
}

func (c *cpuExec) runStream(prog *graph.Program, seed, stream uint64, rng *rand.Rand, pcg *rand.PCG) (float32, error) {
	pcg.Seed(seed, stream)
	return prog.Run(rng)
}

func (c *cpuExec) warm(prog *graph.Program) bool { return prog.Warm() }

func (c *cpuExec) grad(prog *graph.Program, i int) ([]float32, error) { return prog.Grad(i), nil }

func (c *cpuExec) loadParams() error { return nil }

func (c *cpuExec) useProgramGrads(p *graph.Program) error {
	ps, ok := c.params[p]
	if !ok {
		if len(c.params) >= graph.MaxPrograms {
			clear(c.params) // programs the model dropped must not stay alive here
		}
		m := c.t.Model
		ps = make([]optim.Param, len(m.Params))
		for i, mp := range m.Params {
			ps[i] = optim.Param{Name: mp.Name, Data: mp.Data, Grad: p.Grad(i), Buffer: mp.Buffer}
		}
		c.params[p] = ps
	}
	c.cur = ps
	return nil
}

func (c *cpuExec) useHostGrads(grads [][]float32) error {
	if c.host == nil { // the buckets' views, the same for the whole run
		m := c.t.Model
		c.host = make([]optim.Param, len(m.Params))
		for i, p := range m.Params {
			c.host[i] = optim.Param{Name: p.Name, Data: p.Data, Grad: grads[i], Buffer: p.Buffer}
		}
	}
	c.cur = c.host
	return nil
}

func (c *cpuExec) sumSquares() (float64, error) { return optim.SumSquares(c.cur), nil }

func (c *cpuExec) scale(f float32) error {
	optim.Scale(c.cur, f)
	return nil
}

func (c *cpuExec) step(lr float64) error {
	c.opt.Step(c.cur, lr)
	return nil
}

func (c *cpuExec) sync() error         { return nil }
func (c *cpuExec) syncedParams() error { return nil }

func (c *cpuExec) evaluate(lo, hi, batch int) (float64, float64, error) {
	return evaluate(c.t.Model, c.t.test, lo, hi, batch, func(p *graph.Program) (float32, int, error) {
		l, err := p.Run(nil)
		if err != nil {
			return 0, 0, err
		}
		return l, p.Correct(), nil
	})
}

func (c *cpuExec) release(int, bool) {}

func (c *cpuExec) reducer(b *buckets, rc dist.Communicator) (gradReducer, error) {
	return newHostReducer(c.t, c, b, rc), nil
}

func (c *cpuExec) stage() stageExec { return c.st }
