package optim

import "github.com/gotrain/gotrain/graph/kern"

// sgd implements torch.optim.SGD (foreach=False, maximize=False).
type sgd struct {
	cfg    Config
	shapes []shape
	bufs   []buffer // one momentum buffer per param; nil when Momentum == 0
	step   int64
}

func newSGD(cfg Config, params []Param) *sgd {
	o := &sgd{cfg: cfg, shapes: shapesOf(params)}
	if cfg.Momentum != 0 {
		o.bufs = make([]buffer, len(params))
		for i, p := range params {
			o.bufs[i] = buffer{p.Name + ".momentum_buffer", make([]float32, len(p.Data))}
		}
	}
	return o
}

func (o *sgd) Name() string { return SGD }

func (o *sgd) State() (map[string][]float32, int64) { return stateOf(o.bufs), o.step }

func (o *sgd) LoadState(tensors map[string][]float32, step int64) error {
	if err := loadState(SGD, o.bufs, tensors, step); err != nil {
		return err
	}
	o.step = step
	return nil
}

func (o *sgd) Step(params []Param, lr float64) {
	checkStep(SGD, o.shapes, params, lr)
	// Scalars are converted to float32 as ATen does for float32 tensors.
	negLR := float32(-lr)
	wd := float32(o.cfg.WeightDecay)
	mom := float32(o.cfg.Momentum)
	damp := float32(1 - o.cfg.Dampening)
	nesterov := o.cfg.Nesterov
	first := o.step == 0
	for i := range params {
		if params[i].Buffer {
			setBuffer(params[i])
			continue
		}
		p, g := params[i].Data, params[i].Grad
		g = g[:len(p)]
		switch {
		case o.cfg.Momentum == 0:
			if wd == 0 {
				for j, gj := range g {
					p[j] = kern.FMA32(gj, negLR, p[j])
				}
			} else {
				for j, gj := range g {
					d := kern.FMA32(p[j], wd, gj)
					p[j] = kern.FMA32(d, negLR, p[j])
				}
			}
		case first:
			// The buffer starts as a copy of the (decayed) gradient, with no
			// dampening, like PyTorch.
			buf := o.bufs[i].data[:len(p)]
			for j, gj := range g {
				d := gj
				if wd != 0 {
					d = kern.FMA32(p[j], wd, gj)
				}
				buf[j] = d
				if nesterov {
					d = kern.FMA32(d, mom, d)
				}
				p[j] = kern.FMA32(d, negLR, p[j])
			}
		default:
			buf := o.bufs[i].data[:len(p)]
			for j, gj := range g {
				d := gj
				if wd != 0 {
					d = kern.FMA32(p[j], wd, gj)
				}
				b := kern.FMA32(d, damp, buf[j]*mom)
				buf[j] = b
				if nesterov {
					d = kern.FMA32(b, mom, d)
				} else {
					d = b
				}
				p[j] = kern.FMA32(d, negLR, p[j])
			}
		}
	}
	o.step++
}
