package optim

import (
	"math"

	"github.com/gotrain/gotrain/graph/kern"
)

// adam implements torch.optim.Adam and torch.optim.AdamW (foreach=False,
// amsgrad=False, maximize=False, capturable=False).
type adam struct {
	name      string // Adam or AdamW
	cfg       Config // betas and eps already defaulted
	shapes    []shape
	bufs      []buffer // exp_avg, exp_avg_sq for param 0, then for param 1, ...
	step      int64
	decoupled bool
}

func newAdam(name string, cfg Config, params []Param) *adam {
	o := &adam{name: name, cfg: cfg, shapes: shapesOf(params), decoupled: name == AdamW}
	o.bufs = make([]buffer, 0, 2*len(params))
	for _, p := range params {
		o.bufs = append(o.bufs,
			buffer{p.Name + ".exp_avg", make([]float32, len(p.Data))},
			buffer{p.Name + ".exp_avg_sq", make([]float32, len(p.Data))})
	}
	return o
}

func (o *adam) Name() string { return o.name }

func (o *adam) State() (map[string][]float32, int64) { return stateOf(o.bufs), o.step }

func (o *adam) LoadState(tensors map[string][]float32, step int64) error {
	if err := loadState(o.name, o.bufs, tensors, step); err != nil {
		return err
	}
	o.step = step
	return nil
}

func (o *adam) Step(params []Param, lr float64) {
	checkStep(o.name, o.shapes, params, lr)
	o.step++
	// Scalar factors in float64, as PyTorch computes them in Python, then
	// converted to float32 as ATen does for float32 tensors.
	t := float64(o.step)
	bc1 := 1 - math.Pow(o.cfg.Beta1, t)
	bc2 := 1 - math.Pow(o.cfg.Beta2, t)
	negStep := float32(-(lr / bc1))
	bc2Sqrt := float32(math.Sqrt(bc2))
	b1 := float32(o.cfg.Beta1)
	b2 := float32(o.cfg.Beta2)
	c1 := float32(1 - o.cfg.Beta1)
	c2 := float32(1 - o.cfg.Beta2)
	eps := float32(o.cfg.Eps)
	var wd, decay float32 // coupled L2 factor; decoupled multiplier
	if o.decoupled {
		decay = float32(1 - lr*o.cfg.WeightDecay)
	} else {
		wd = float32(o.cfg.WeightDecay)
	}
	// The update itself: kern.AdamUpdate (ATen's operations in their
	// order, eight values at a time where the CPU has AVX2).
	k := kern.Adam{B1: b1, B2: b2, C1: c1, C2: c2, NegStep: negStep, Bc2Sqrt: bc2Sqrt, Eps: eps, WD: wd}
	for i := range params {
		if params[i].Buffer {
			setBuffer(params[i])
			continue
		}
		p := params[i].Data
		g := params[i].Grad[:len(p)]
		m := o.bufs[2*i].data[:len(p)]
		v := o.bufs[2*i+1].data[:len(p)]
		if o.decoupled && o.cfg.WeightDecay != 0 {
			for j := range p {
				p[j] *= decay
			}
		}
		kern.AdamUpdate(p, g, m, v, k)
	}
}
