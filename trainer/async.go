package trainer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"time"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/metrics"
	"github.com/gotrain/gotrain/trainer/optim"
	"github.com/gotrain/gotrain/trainer/ps"
)

// Asynchronous training (--sync async)
//
// Rank 0 runs the parameter server (trainer/ps) beside its own worker;
// every rank is a worker. A worker is given the parameters and a batch of
// BatchSize/world samples of the epoch's permutation, computes its
// gradient and pushes it; the server applies it at once with the
// optimiser and answers with fresh parameters and the next batch. Fast
// workers take more batches, so a straggler delays only its own; the run
// ends when every batch of every epoch has been pushed. A worker that
// leaves is dropped and its batch goes to another; the others carry on.
// Rank 0 then evaluates the server's parameters and writes --out.
//
// A worker that stops without leaving (a stopped process, a hung device)
// is declared lost by the server once it has held a batch for --timeout
// without pushing it: its batch goes to another worker and the staleness
// bound stops waiting for it. If it runs again it is refused (ps.ErrLost)
// and exits with status 0 after logging why: its batches were done by the
// others, so the job's result is whole, and a non-zero status would make
// 'gotrain launch' (or a scheduler) stop the ranks that are finishing it.
// Rank 0 names it in the final async record (lost, timed_out).
//
// The job's communicator is used once, at the start (configuration check
// and rank 0's parameters); after that only the server's connections are,
// so a rank that dies does not stop the others.

// AsyncTransport connects the workers of an asynchronous job to the
// parameter server on rank 0.
type AsyncTransport struct {
	// Listener is where rank 0 accepts the other ranks' workers (rank 0
	// only); Upgrade authenticates each accepted connection.
	Listener net.Listener
	Upgrade  func(net.Conn) (net.Conn, error)
	// Dial connects a worker of rank > 0 to the server, authenticated.
	Dial func(ctx context.Context) (net.Conn, error)
}

// WithAsync gives an asynchronous job (Config.Sync "async") its transport.
func WithAsync(tr AsyncTransport) Option { return func(t *Trainer) { t.async = &tr } }

// asyncBatch is the samples of one async batch.
func (t *Trainer) asyncBatch() int { return max(1, t.cfg.BatchSize/t.worldSize()) }

// asyncPS is the asynchronous parameter-server strategy. Its worker does
// not step through the loop's epochs: the server hands out the batches
// (fast workers take more), applies each push at once and ends the run,
// and the job keeps no checkpoint, so asyncPS runs its own loop (run).
// The parts of the strategy interface that the loop alone calls are the
// no-ops of base.
type asyncPS struct{ base }

func (a *asyncPS) start(ctx context.Context) error {
	t := a.t
	if err := a.joinJob(ctx); err != nil {
		return err
	}
	if t.async == nil || t.worldSize() < 2 {
		return fmt.Errorf("%w: --sync async needs a job of at least 2 ranks (see 'gotrain launch')", ErrConfig)
	}
	// On a device each worker computes its gradients there; the server
	// keeps the parameters and the optimiser on rank 0's host.
	return t.exec.start(t.opt, nil)
}

func (a *asyncPS) step(context.Context, bool, int, int) (stepResult, error) {
	return stepResult{}, errors.New("async: the parameter server hands out the batches; its worker runs its own loop")
}

// run is the worker's loop, and on rank 0 the server's.
func (a *asyncPS) run(ctx context.Context, start time.Time) (Result, error) {
	t := a.t
	var res Result
	cfg := t.cfg
	r, w := t.rank(), t.worldSize()
	lb, n := t.asyncBatch(), t.train.Len()
	if len(t.perm) != n {
		t.perm = make([]int, n)
	}
	nb := (n + lb - 1) / lb
	sched := cfg.schedule(int64(cfg.Epochs) * int64(nb))
	var srv *ps.Server
	trainStart := t.now()
	var conn net.Conn
	t.log.Info("training", "model", t.Model.Spec.Kind, "params", t.Model.NumParams(), "dataset", t.dataName,
		"train_samples", n, "epochs", cfg.Epochs, "sync", "async", "batch_per_push", lb, "batches_per_epoch", nb,
		"max_staleness", cfg.MaxStaleness, "rank", r, "world_size", w)
	if r == 0 {
		// The server answers the other ranks while this rank's worker
		// computes: it gets a thread of its own beyond --threads.
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
		var err error
		if srv, err = t.newParamServer(nb, sched.LR); err != nil {
			return res, err
		}
		defer srv.Close()
		go srv.Serve(t.async.Listener)
		mine, theirs := net.Pipe()
		go srv.ServeConn(theirs)
		conn = mine
	} else {
		var err error
		if conn, err = t.async.Dial(ctx); err != nil {
			return res, fmt.Errorf("rank %d: connecting to the parameter server on rank 0: %w", r, err)
		}
	}
	steps, samples, err := t.asyncWorker(ctx, conn, lb, nb, sched.LR)
	if err != nil {
		if !errors.Is(err, ps.ErrLost) {
			return res, err
		}
		// Declared lost: the others did this rank's batches. Rank 0's
		// server still has the run to finish.
		t.log.Warn("async: this rank was declared lost by the parameter server; its batches were given to the other ranks, and it leaves without failing the job",
			"rank", r, "err", err)
	}
	res.Steps = steps
	t.pos.step = steps // this rank's batches
	trainTime := t.now().Sub(trainStart)
	if r != 0 {
		res.TrainSamplesPerSec = float64(samples) / trainTime.Seconds()
		res.TestAccuracy, res.TestLoss = -1, -1
		t.log.Info("worker done; rank 0 evaluates the model", "rank", r, "batches", steps)
		res.WallSeconds = t.now().Sub(start).Seconds()
		res.PeakRSSBytes = metrics.PeakRSSBytes()
		return res, nil
	}
	// Rank 0: wait for the other workers' last batches.
	if err := srv.Wait(ctx); err != nil {
		if errors.Is(err, ps.ErrNoWorkers) {
			return res, fmt.Errorf("async: every worker left before the run's batches were done: %w", err)
		}
		return res, err
	}
	trainTime = t.now().Sub(trainStart)
	dst := make([][]float32, len(t.Model.Params))
	for i, p := range t.Model.Params {
		dst[i] = p.Data
	}
	version := srv.Params(dst)
	st := srv.Stats()
	t.emitAsync(st, w)
	if len(st.Lost) > 0 {
		t.log.Warn("async: ranks left before the end or were declared lost after --timeout without a push; their batches were done by the others",
			"lost", st.Lost, "timed_out", st.TimedOut, "timeout", cfg.Timeout)
	}
	acc, loss, err := EvaluateSource(t.Model, t.test, cfg.EvalBatchSize)
	if err != nil {
		return res, err
	}
	res.TestAccuracy, res.TestLoss = acc, loss
	t.sink.Eval(metrics.Eval{Epoch: cfg.Epochs, TestLoss: loss, TestAccuracy: acc, Rank: r, WorldSize: w})
	if cfg.Out != "" {
		if err := t.saveOut(); err != nil {
			return res, err
		}
	}
	res.Steps = int64(version)
	res.TrainSamplesPerSec = float64(int64(cfg.Epochs)*int64(n)) / trainTime.Seconds()
	res.WallSeconds = t.now().Sub(start).Seconds()
	res.PeakRSSBytes = metrics.PeakRSSBytes()
	t.sink.Summary(metrics.Summary{TestAccuracy: acc, TrainSamplesPerSec: res.TrainSamplesPerSec,
		WallSeconds: res.WallSeconds, PeakRSSBytes: res.PeakRSSBytes, Rank: r, WorldSize: w})
	return res, nil
}

// workerGrad is a worker's computation: the server's parameters (in the
// host model) go to the executor, prog runs there with the masks of
// (seed, stream), and its gradients come into grad, concatenated in
// parameter order.
func (t *Trainer) workerGrad(prog *graph.Program, seed, stream uint64, grad []float32, rng *rand.Rand, pcg *rand.PCG) (float32, error) {
	if err := t.exec.loadParams(); err != nil {
		return 0, err
	}
	loss, err := t.exec.runStream(prog, seed, stream, rng, pcg)
	if err != nil {
		return 0, err
	}
	off := 0
	for i := range t.Model.Params {
		g, err := t.exec.grad(prog, i)
		if err != nil {
			return 0, err
		}
		off += copy(grad[off:], g)
	}
	return loss, nil
}

// newParamServer makes rank 0's server over a copy of the model's
// parameters, with the run's optimiser and schedule.
func (t *Trainer) newParamServer(nb int, lr func(int64) float64) (*ps.Server, error) {
	params := make([]optim.Param, len(t.Model.Params))
	for i, p := range t.Model.Params {
		params[i] = optim.Param{Name: p.Name, Data: p.Data, Buffer: p.Buffer}
	}
	w := t.worldSize()
	var window struct {
		n          int64
		sum, maxSt uint64
	}
	return ps.NewServer(ps.Config{
		Params:       params,
		NewOptimizer: func(ps []optim.Param) (optim.Optimizer, error) { return optim.New(t.cfg.optimizer(), ps) },
		LR:           func(v uint64) float64 { return lr(int64(v)) },
		Epochs:       t.cfg.Epochs,
		Batches:      func(int) int { return nb },
		MaxStaleness: t.cfg.MaxStaleness,
		DownWeight:   t.cfg.DownWeightStale,
		Timeout:      t.cfg.Timeout,
		Upgrade:      t.async.Upgrade,
		Log:          t.log,
		OnPush: func(p ps.PushInfo) {
			window.n++
			window.sum += p.Staleness
			window.maxSt = max(window.maxSt, p.Staleness)
			if t.cfg.LogEvery > 0 && int64(p.Version)%t.cfg.LogEvery == 0 {
				t.emitAsyncWindow(p.Version, w, p.Workers, window.sum, window.maxSt, window.n)
				window.n, window.sum, window.maxSt = 0, 0, 0
			}
		},
	})
}

// emitAsyncWindow writes an async record for the pushes of a window (its
// waits are filled in from the server's totals at the end only: the
// server's lock is held here).
func (t *Trainer) emitAsyncWindow(version uint64, w, workers int, sum, maxSt uint64, n int64) {
	as, ok := t.sink.(interface{ Async(metrics.Async) })
	if !ok || n == 0 {
		return
	}
	as.Async(metrics.Async{Version: version, StalenessMean: float64(sum) / float64(n), StalenessMax: maxSt, Workers: workers, Rank: t.rank(), WorldSize: w})
}

// emitAsync writes the final async record: staleness over the whole run
// and every worker's wait.
func (t *Trainer) emitAsync(st ps.Stats, w int) {
	as, ok := t.sink.(interface{ Async(metrics.Async) })
	if !ok {
		return
	}
	waits := make([]float64, w)
	for k, v := range st.WaitSeconds {
		if k >= 0 && k < w {
			waits[k] = v
		}
	}
	mean := 0.0
	if st.Pushes > 0 {
		mean = float64(st.StalenessSum) / float64(st.Pushes)
	}
	as.Async(metrics.Async{Version: st.Version, StalenessMean: mean, StalenessMax: st.StalenessMax, WaitSeconds: waits,
		Workers: st.Workers, Lost: st.Lost, TimedOut: st.TimedOut, Rank: t.rank(), WorldSize: w})
	t.log.Info("async", "updates", st.Version, "staleness_mean", mean, "staleness_max", st.StalenessMax, "wait_seconds", waits,
		"lost", st.Lost, "timed_out", st.TimedOut)
}

// asyncWorker computes and pushes gradients until the server says the
// work is done. It returns the batches and samples this rank computed. A
// worker refused as lost returns an error wrapping ps.ErrLost; so does
// one whose push fails after it took longer than --timeout to start it
// (stopped, say), as the server then has declared it lost, and may since
// have finished the run and gone.
func (t *Trainer) asyncWorker(ctx context.Context, conn net.Conn, lb, nb int, lr func(int64) float64) (steps, samples int64, err error) {
	cfg := t.cfg
	r := t.rank()
	nparams := t.Model.NumParams()
	cl, wk, err := ps.Join(ctx, conn, r, nparams)
	if err != nil {
		conn.Close()
		return 0, 0, fmt.Errorf("rank %d: joining the parameter server: %w", r, err)
	}
	defer cl.Close()
	got := time.Now() // when this worker was given its batch
	grad := make([]float32, nparams)
	permEpoch := -1
	n := t.train.Len()
	pcg := rand.NewPCG(0, 0)
	rng := rand.New(pcg)
	var winLoss float64
	var winSamples int64
	var waited time.Duration
	winStart, runStart := t.now(), t.now()
	for !wk.End {
		if err := ctx.Err(); err != nil {
			return steps, samples, fmt.Errorf("rank %d: async training stopped: %w (async runs keep no checkpoint; rank 0's --out is written only at the end)", r, err)
		}
		off := 0
		for _, p := range t.Model.Params {
			copy(p.Data, wk.Params[off:off+len(p.Data)])
			off += len(p.Data)
		}
		if wk.Epoch != permEpoch {
			data.PermutationInto(t.perm, cfg.Seed, wk.Epoch)
			permEpoch = wk.Epoch
		}
		lo := wk.Batch * lb
		hi := min(lo+lb, n)
		prog, err := t.Model.Program(hi-lo, true)
		if err != nil {
			return steps, samples, err
		}
		t0 := time.Now()
		if err := t.fillTrain(prog.X, prog.Y, t.perm[lo:hi], wk.Epoch); err != nil {
			return steps, samples, err
		}
		stream := uint64(wk.Epoch)*uint64(nb) + uint64(wk.Batch)
		loss, err := t.workerGrad(prog, cfg.Seed^0xa5c, stream, grad, rng, pcg)
		if err != nil {
			return steps, samples, err
		}
		t.straggler().delay(time.Since(t0))
		if !finite(float64(loss)) {
			return steps, samples, t.diverged(float64(loss))
		}
		epoch, version := wk.Epoch, wk.Version
		// The server counts this worker silent from the batch it handed
		// out to the push's arrival: at least got to now.
		silent := time.Since(got)
		if wk, err = cl.Push(ctx, wk, hi-lo, grad); err != nil {
			if !errors.Is(err, ps.ErrLost) && silent > cfg.Timeout && ctx.Err() == nil {
				return steps, samples, fmt.Errorf("rank %d: %.1fs from its batch to its push, more than --timeout %v (%w: its batches were given to the others; this push then failed: %v)",
					r, silent.Seconds(), cfg.Timeout, ps.ErrLost, err)
			}
			return steps, samples, fmt.Errorf("rank %d: %w", r, err)
		}
		got = time.Now()
		waited += wk.Waited
		steps++
		samples += int64(hi - lo)
		winLoss += float64(loss) * float64(hi-lo)
		winSamples += int64(hi - lo)
		rate := float64(samples) / t.now().Sub(runStart).Seconds()
		if t.progress != nil {
			t.progress(Progress{Epoch: epoch + 1, Epochs: cfg.Epochs, Done: int64(hi), Total: int64(n), Loss: float64(loss), SamplesPerSec: rate})
		}
		if cfg.LogEvery > 0 && steps%cfg.LogEvery == 0 {
			rec := metrics.Train{Epoch: epoch + 1, Step: steps, Loss: winLoss / float64(winSamples), LR: lr(int64(version)),
				SamplesPerSec: float64(winSamples) / t.now().Sub(winStart).Seconds(), Rank: r, WorldSize: t.worldSize()}
			if t.devices != nil {
				rec.GPU = t.devices()
			}
			t.sink.Train(rec)
			winLoss, winSamples, winStart = 0, 0, t.now()
		}
	}
	t.log.Info("async worker", "rank", r, "batches", steps, "samples", samples, "held_by_staleness_bound_seconds", waited.Seconds())
	return steps, samples, nil
}
