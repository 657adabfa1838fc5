package optim

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
)

// Param is one named parameter: its values and its gradient, same length,
// owned by the caller. The optimiser updates Data in place and only reads Grad
// (ClipGradNorm scales Grad in place).
//
// A Buffer (a BatchNorm's running statistics) is not optimised: its Grad
// holds the value the buffer is to take (graph's programs put the buffer
// itself there, which a gradient reduction across ranks averages by their
// shares), and Step copies it into Data, with no learning rate, weight
// decay or momentum. The gradient norm (ClipGradNorm, SumSquares) leaves
// buffers out and Scale does not touch them.
type Param struct {
	Name   string
	Data   []float32
	Grad   []float32
	Buffer bool
}

// setBuffer is Step's update of a buffer: Data takes Grad's values.
func setBuffer(p Param) {
	if len(p.Data) > 0 && len(p.Grad) > 0 && &p.Data[0] != &p.Grad[0] {
		copy(p.Data, p.Grad)
	}
}

// Optimizer updates parameters from their gradients.
type Optimizer interface {
	// Step applies one update with learning rate lr to every param, in
	// place. params must be the same parameters, in the same order and with
	// the same names and lengths, as those given to New (the slices may be
	// different ones). Step does not allocate. It panics on a programming
	// error: lr negative or NaN, or params not matching New's.
	Step(params []Param, lr float64)
	// State returns copies of the optimiser's state tensors, named
	// "<param name>.<buffer>" (see the package documentation), and the
	// number of steps taken.
	State() (tensors map[string][]float32, step int64)
	// LoadState restores state saved by State. It returns an error naming
	// the tensor if one is missing, unexpected or of the wrong length, and
	// changes nothing in that case.
	LoadState(tensors map[string][]float32, step int64) error
	// Name returns "sgd", "adam" or "adamw".
	Name() string
}

// Config selects and configures an optimiser. Fields that the chosen
// optimiser does not use are ignored.
type Config struct {
	Name      string  // "sgd", "adam", "adamw" (case-insensitive)
	Momentum  float64 // SGD: momentum factor, 0 disables momentum
	Nesterov  bool    // SGD: Nesterov momentum (requires Momentum > 0 and Dampening == 0, like PyTorch)
	Dampening float64 // SGD: dampening for momentum, in [0, 1]
	// WeightDecay is coupled L2 regularisation (added to the gradient) for
	// sgd and adam, and decoupled weight decay for adamw. Zero disables it
	// (note: PyTorch's AdamW defaults to 0.01; here the default is 0).
	WeightDecay float64
	Beta1       float64 // Adam/AdamW: first-moment decay; 0 means the default 0.9
	Beta2       float64 // Adam/AdamW: second-moment decay; 0 means the default 0.999
	Eps         float64 // Adam/AdamW: denominator term; 0 means the default 1e-8
}

// Defaults for the Adam family, used when the Config field is zero.
const (
	DefaultBeta1 = 0.9
	DefaultBeta2 = 0.999
	DefaultEps   = 1e-8
)

// Optimiser names accepted by New.
const (
	SGD   = "sgd"
	Adam  = "adam"
	AdamW = "adamw"
)

var validNames = []string{SGD, Adam, AdamW}

// Names returns the optimiser names New accepts.
func Names() []string { return append([]string(nil), validNames...) }

// New returns the optimiser described by cfg for params. State buffers are
// allocated here from the parameter lengths, so Step never allocates.
//
// It returns an error for an unknown name (listing the valid ones), for
// invalid hyper-parameters (negative or NaN momentum, dampening or weight
// decay, Nesterov without momentum or with dampening, betas outside [0, 1),
// negative eps), for an empty parameter list, and for params with an empty or
// duplicate name or with len(Grad) != len(Data).
func New(cfg Config, params []Param) (Optimizer, error) {
	name := strings.ToLower(strings.TrimSpace(cfg.Name))
	switch name {
	case SGD, Adam, AdamW:
	default:
		return nil, fmt.Errorf("optim: unknown optimizer %q (valid: %s)", cfg.Name, strings.Join(validNames, ", "))
	}
	if err := checkParams(params); err != nil {
		return nil, err
	}
	if err := nonNegative("weight decay", cfg.WeightDecay); err != nil {
		return nil, err
	}
	switch name {
	case SGD:
		if err := nonNegative("momentum", cfg.Momentum); err != nil {
			return nil, err
		}
		if err := nonNegative("dampening", cfg.Dampening); err != nil {
			return nil, err
		}
		if cfg.Dampening > 1 {
			return nil, fmt.Errorf("optim: sgd: invalid dampening %v: must be in [0, 1]", cfg.Dampening)
		}
		if cfg.Nesterov && (cfg.Momentum <= 0 || cfg.Dampening != 0) {
			return nil, fmt.Errorf("optim: sgd: nesterov momentum requires momentum > 0 and zero dampening (got momentum %v, dampening %v)", cfg.Momentum, cfg.Dampening)
		}
		return newSGD(cfg, params), nil
	default:
		c := cfg
		if c.Beta1 == 0 {
			c.Beta1 = DefaultBeta1
		}
		if c.Beta2 == 0 {
			c.Beta2 = DefaultBeta2
		}
		if c.Eps == 0 {
			c.Eps = DefaultEps
		}
		for i, b := range []float64{c.Beta1, c.Beta2} {
			if !(b >= 0 && b < 1) {
				return nil, fmt.Errorf("optim: %s: invalid beta%d %v: must be in [0, 1)", name, i+1, b)
			}
		}
		if err := nonNegative("eps", c.Eps); err != nil {
			return nil, err
		}
		return newAdam(name, c, params), nil
	}
}

func nonNegative(what string, v float64) error {
	if !(v >= 0) || math.IsInf(v, 0) {
		return fmt.Errorf("optim: invalid %s %v: must be finite and >= 0", what, v)
	}
	return nil
}

func checkParams(params []Param) error {
	if len(params) == 0 {
		return errors.New("optim: empty parameter list")
	}
	seen := make(map[string]bool, len(params))
	for i, p := range params {
		if p.Name == "" {
			return fmt.Errorf("optim: parameter %d has an empty name", i)
		}
		if seen[p.Name] {
			return fmt.Errorf("optim: duplicate parameter name %q", p.Name)
		}
		seen[p.Name] = true
		if len(p.Grad) != len(p.Data) {
			return fmt.Errorf("optim: parameter %q: gradient length %d != data length %d", p.Name, len(p.Grad), len(p.Data))
		}
	}
	return nil
}

// shape records the name and length of one parameter, as given to New.
type shape struct {
	name string
	n    int
}

func shapesOf(params []Param) []shape {
	s := make([]shape, len(params))
	for i, p := range params {
		s[i] = shape{p.Name, len(p.Data)}
	}
	return s
}

// checkStep panics unless lr is valid and params match the shapes given to
// New. It does not allocate unless it panics.
func checkStep(opt string, shapes []shape, params []Param, lr float64) {
	if !(lr >= 0) || math.IsInf(lr, 0) {
		panic(fmt.Sprintf("optim: %s.Step: invalid learning rate %v", opt, lr))
	}
	if len(params) != len(shapes) {
		panic(fmt.Sprintf("optim: %s.Step: got %d params, optimizer was created with %d", opt, len(params), len(shapes)))
	}
	for i := range params {
		p := &params[i]
		if p.Name != shapes[i].name || len(p.Data) != shapes[i].n || len(p.Grad) != shapes[i].n {
			panic(fmt.Sprintf("optim: %s.Step: param %d is %q with %d values and %d grads, optimizer was created with %q of %d",
				opt, i, p.Name, len(p.Data), len(p.Grad), shapes[i].name, shapes[i].n))
		}
	}
}

// buffer is one named state tensor.
type buffer struct {
	name string
	data []float32
}

func stateOf(bufs []buffer) map[string][]float32 {
	m := make(map[string][]float32, len(bufs))
	for _, b := range bufs {
		m[b.name] = append([]float32(nil), b.data...)
	}
	return m
}

// loadState validates every tensor first, then copies; on error nothing is
// changed.
func loadState(opt string, bufs []buffer, tensors map[string][]float32, step int64) error {
	if step < 0 {
		return fmt.Errorf("optim: %s.LoadState: negative step count %d", opt, step)
	}
	want := make(map[string]bool, len(bufs))
	for _, b := range bufs {
		want[b.name] = true
		t, ok := tensors[b.name]
		if !ok {
			return fmt.Errorf("optim: %s.LoadState: missing state tensor %q", opt, b.name)
		}
		if len(t) != len(b.data) {
			return fmt.Errorf("optim: %s.LoadState: state tensor %q has length %d, want %d", opt, b.name, len(t), len(b.data))
		}
	}
	var extra []string
	for name := range tensors {
		if !want[name] {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return fmt.Errorf("optim: %s.LoadState: unexpected state tensor(s) %q", opt, extra)
	}
	for _, b := range bufs {
		copy(b.data, tensors[b.name])
	}
	return nil
}
