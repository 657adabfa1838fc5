package graph

import (
	"fmt"
)

// Footprint is what a model of a Spec holds in memory, computed from the
// shapes alone, before anything is allocated: so that a run too large for
// the machine is refused with the figures instead of crashing the runtime.
// Counts are float64 because a refused spec may overflow any integer.
type Footprint struct {
	// Params is the number of parameter elements (float32 each).
	Params float64
	// TrainFloatsPerSample is the float32 values one sample of a training
	// batch holds: the input, every layer's output and its gradient,
	// dropout masks and a convolution's share of its weight gradient's
	// partial sums (one per 8 samples). It is a lower bound of the
	// programs' BytesPerSample()/4, not an upper one.
	TrainFloatsPerSample float64
	// EvalFloatsPerSample is the same for an evaluation batch (forward only).
	EvalFloatsPerSample float64
}

// Footprint is the model's footprint, from the shapes of one sample
// through its modules (see Footprint: a lower bound of what its programs
// hold).
func (m *Model) Footprint() Footprint { return m.fp }

// Estimate returns the footprint of spec's model. The built-in models'
// is computed from the shapes alone, without building them (so that a
// spec too large to allocate is refused with its figures); any other
// registered model is built once and measured (Model.Footprint). It fails
// as New does on a spec New refuses.
func (s Spec) Estimate() (Footprint, error) {
	s = s.withDefaults()
	if s.Kind != "mlp" && s.Kind != "cnn" {
		m, err := New(s, 0)
		if err != nil {
			return Footprint{}, err
		}
		return m.Footprint(), nil
	}
	for _, h := range s.Hidden {
		if h <= 0 {
			return Footprint{}, fmt.Errorf("graph: hidden width %d must be positive", h)
		}
	}
	var fp Footprint
	in := float64(s.InC) * float64(s.InH) * float64(s.InW)
	classes := float64(s.Classes)
	drop := 0.0
	if s.Dropout > 0 {
		drop = 1 // one mask value per activation
	}
	// A layer's output and its gradient in training, the output alone in
	// evaluation (programs keep every node's value), and its scratch in
	// training (a convolution's partial weight gradients).
	layer := func(outputs, scratch float64) {
		fp.TrainFloatsPerSample += 2*outputs + scratch
		fp.EvalFloatsPerSample += outputs
	}
	dropLayer := func(outputs float64) { // dropout's mask and output, in training only
		fp.TrainFloatsPerSample += 2 * drop * outputs
	}
	fp.TrainFloatsPerSample, fp.EvalFloatsPerSample = in, in
	switch s.Kind {
	case "mlp":
		prev := in
		for _, h := range s.Hidden {
			w := float64(h)
			fp.Params += prev*w + w
			layer(w, 0) // linear
			layer(w, 0) // activation
			dropLayer(w)
			prev = w
		}
		fp.Params += prev*classes + classes
		layer(classes, 0)
	case "cnn":
		c1, c2 := 16.0, 32.0
		h1, w1 := s.InH/2, s.InW/2
		h2, w2 := (h1-4)/2, (w1-4)/2
		if h2 <= 0 || w2 <= 0 {
			return Footprint{}, fmt.Errorf("graph: cnn needs inputs of at least 12x12, got %dx%d", s.InH, s.InW)
		}
		hw := float64(s.InH) * float64(s.InW)
		c := float64(s.InC)
		fc := float64(s.Hidden[0])
		fp.Params = c1*c*25 + c1 + c2*c1*25 + c2 + c2*float64(h2*w2)*fc + fc + fc*classes + classes
		layer(c1*hw, c1*c*25/convGroup) // conv1 and its partial weight gradients
		layer(c1*hw, 0)                 // activation
		layer(c1*float64(h1*w1), 0)
		o2 := float64((h1 - 4) * (w1 - 4))
		layer(c2*o2, c2*c1*25/convGroup) // conv2
		layer(c2*o2, 0)
		layer(c2*float64(h2*w2), 0)
		layer(fc, 0)
		layer(fc, 0)
		dropLayer(fc)
		layer(classes, 0)
	}
	return fp, nil
}
