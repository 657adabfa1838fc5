package trainer

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Local SGD and DiLoCo (--sync local-sgd)
//
// Every rank steps on its own share of each global batch with its own
// optimiser (the data-parallel step, its buckets reduced by none), and
// every --sync-period steps, at epoch ends, checkpoints and the last step
// the ranks average their parameters. With --outer-lr/--outer-momentum
// (DiLoCo) an outer optimiser steps on the averaged change since the last
// synchronisation. A checkpoint holds the outer optimiser's state and
// every rank's inner optimiser state.

// localSGD wraps the strategy that computes the steps (single, or
// allReduce with local set) with the synchronisation.
type localSGD struct {
	strategy
	t     *Trainer
	outer *outerOpt // nil: plain averaging
}

func (l *localSGD) start(ctx context.Context) error {
	t := l.t
	l.outer = t.resumedOuter
	if l.outer == nil && t.cfg.outer() {
		var err error
		if l.outer, err = newOuter(t.cfg, t.Model); err != nil {
			return err
		}
	}
	return l.strategy.start(ctx)
}

// synced anchors the outer optimiser at rank 0's parameters.
func (l *localSGD) synced() {
	if l.outer != nil {
		l.outer.anchor(l.t.Model)
	}
}

// resumed gives every rank rank 0's outer optimiser state and its own
// inner optimiser state of the checkpoint.
func (l *localSGD) resumed(ctx context.Context, localRanks int) error {
	t := l.t
	if l.outer != nil {
		_, step := l.outer.opt.State()
		if err := t.broadcastOptState(ctx, l.outer.opt, step, "outer optimiser state "); err != nil {
			return err
		}
	}
	if localRanks > 1 && t.worldSize() > 1 {
		return l.scatterLocalStates(ctx, localRanks)
	}
	return nil
}

// stepped averages at the period, and wherever the ranks must agree:
// epoch ends (evaluation, checkpoints), the last step.
func (l *localSGD) stepped(ctx context.Context, stopRequested bool) (bool, error) {
	t, cfg := l.t, l.t.cfg
	if t.worldSize() < 2 {
		return false, nil
	}
	if t.pos.step%cfg.SyncPeriod == 0 || t.pos.batch == t.batchesPerEpoch() || t.pos.step == cfg.MaxSteps ||
		(cfg.CheckpointEvery > 0 && t.pos.step%cfg.CheckpointEvery == 0) {
		return l.averageParams(ctx, stopRequested)
	}
	return false, nil
}

// checkpoint gathers every rank's inner optimiser state on rank 0 and
// adds it, the outer optimiser's state and the inner strategy's part.
func (l *localSGD) checkpoint(ctx context.Context) (func(*checkpoint.File), error) {
	var ranks []map[string][]float32
	if l.t.worldSize() > 1 {
		var err error
		if ranks, err = l.gatherLocalStates(ctx); err != nil {
			return nil, err
		}
	}
	inner, err := l.strategy.checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	return func(f *checkpoint.File) {
		if l.outer != nil {
			f.Metadata[metaOuterStep] = appendState(f, outerPrefix, l.outer.opt)
		}
		if inner != nil {
			inner(f)
		}
		addLocalStates(f, ranks)
	}, nil
}

// averageParams is local SGD's synchronisation: every rank's parameters
// become their mean (bitwise the same on every rank). It also carries the
// ranks' stop requests, so that all stop at the same step.
func (l *localSGD) averageParams(ctx context.Context, stopRequested bool) (stop bool, err error) {
	t := l.t
	// On a device the parameters come to the host to be averaged and go
	// back after: a sync period's steps between two round trips.
	if err := t.exec.sync(); err != nil {
		return false, err
	}
	defer func() {
		if err == nil {
			err = t.exec.syncedParams()
		}
	}()
	for _, p := range t.Model.Params {
		if err := t.collective(ctx, "parameter averaging of "+p.Name, func(ctx context.Context) error {
			return t.comm.AllReduce(ctx, p.Data, p.Data, dist.Avg)
		}); err != nil {
			return false, err
		}
	}
	if o := l.outer; o != nil {
		// The outer gradient is the averaged change since the last
		// synchronisation; the outer step moves the anchor, which every
		// rank then starts from. The same numbers on every rank: replicas
		// stay bitwise identical.
		for i, p := range t.Model.Params {
			a, g := o.params[i].Data, o.params[i].Grad
			if p.Buffer { // a buffer takes the average itself
				copy(g, p.Data)
				continue
			}
			for j, v := range p.Data {
				g[j] = a[j] - v
			}
		}
		o.opt.Step(o.params, t.cfg.OuterLR)
		for i, p := range t.Model.Params {
			copy(p.Data, o.params[i].Data)
		}
	}
	flag := []float32{0}
	if stopRequested {
		flag[0] = 1
	}
	if err := t.collective(ctx, "stop flag", func(ctx context.Context) error {
		return t.comm.AllReduce(ctx, flag, flag, dist.Max)
	}); err != nil {
		return false, err
	}
	return flag[0] > 0, nil
}

// outerOpt is local SGD's outer optimiser: Data holds the anchor (the
// parameters after the last synchronisation), Grad the outer gradient.
type outerOpt struct {
	opt    optim.Optimizer
	params []optim.Param
}

// newOuter makes the outer optimiser anchored at the model's parameters.
func newOuter(cfg Config, m *graph.Model) (*outerOpt, error) {
	o := &outerOpt{params: make([]optim.Param, len(m.Params))}
	for i, p := range m.Params {
		o.params[i] = optim.Param{Name: p.Name, Data: slices.Clone(p.Data), Grad: make([]float32, len(p.Data)), Buffer: p.Buffer}
	}
	var err error
	o.opt, err = optim.New(optim.Config{Name: "sgd", Momentum: cfg.OuterMomentum, Nesterov: cfg.OuterMomentum > 0}, o.params)
	if err != nil {
		return nil, fmt.Errorf("%w: outer optimiser: %v", ErrConfig, err)
	}
	return o, nil
}

// anchor sets the outer optimiser's anchor to the model's parameters.
func (o *outerOpt) anchor(m *graph.Model) {
	for i, p := range m.Params {
		copy(o.params[i].Data, p.Data)
	}
}

// gatherLocalStates collects every rank's optimiser state on rank 0 (local
// SGD, where they differ); nil on the other ranks.
func (l *localSGD) gatherLocalStates(ctx context.Context) ([]map[string][]float32, error) {
	t := l.t
	c, w := t.comm, t.worldSize()
	st, _ := t.opt.State()
	names := slices.Sorted(maps.Keys(st))
	var out []map[string][]float32
	if c.Rank() == 0 {
		out = make([]map[string][]float32, w)
		for r := range out {
			out[r] = map[string][]float32{}
		}
	}
	for _, k := range names {
		all := make([]float32, w*len(st[k]))
		if err := t.collective(ctx, "gathering optimiser state "+k, func(ctx context.Context) error {
			return c.AllGather(ctx, st[k], all)
		}); err != nil {
			return nil, err
		}
		for r := range out {
			out[r][k] = all[r*len(st[k]) : (r+1)*len(st[k])]
		}
	}
	return out, nil
}

// scatterLocalStates gives ranks 1.. their own optimiser state from the
// checkpoint rank 0 resumed (local SGD); every rank calls it with the
// number of ranks the checkpoint holds states for.
func (l *localSGD) scatterLocalStates(ctx context.Context, saved int) error {
	t := l.t
	c, w, r := t.comm, t.worldSize(), t.rank()
	if saved != w {
		if r == 0 {
			t.log.Warn("the checkpoint holds local SGD optimiser states of another world size; every rank starts from rank 0's", "saved", saved, "world_size", w)
		}
		return nil
	}
	st, step := t.opt.State()
	names := slices.Sorted(maps.Keys(st))
	for src := 1; src < w; src++ {
		for _, k := range names {
			buf := st[k]
			if r == 0 {
				buf = t.localStates[src][k]
				if len(buf) != len(st[k]) {
					return fmt.Errorf("%w: %s: rank %d's optimiser state %q has %d values, want %d", ErrCheckpoint, t.resumedFrom, src, k, len(buf), len(st[k]))
				}
			} else if r != src {
				buf = make([]float32, len(st[k]))
			}
			if err := t.collective(ctx, "broadcast of rank "+fmt.Sprint(src)+"'s optimiser state "+k, func(ctx context.Context) error {
				return c.Broadcast(ctx, buf, 0)
			}); err != nil {
				return err
			}
		}
	}
	if r != 0 {
		return t.opt.LoadState(st, step)
	}
	return nil
}
