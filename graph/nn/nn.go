package nn

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	G "gorgonia.org/gorgonia"
)

// T is a tensor of the program being built: a Gorgonia node. Its first
// dimension is the batch.
type T = *G.Node

// Module is a part of a model: it declares its parameters when it is made
// (under a [Scope]) and adds its computation to a program in Forward.
// Forward runs once per compiled program (batch size and mode), never per
// step, so it may branch on c.Train() or on shapes freely.
type Module interface {
	Forward(c Ctx, x T) T
}

// Func makes a Module of a function.
type Func func(c Ctx, x T) T

// Forward calls f.
func (f Func) Forward(c Ctx, x T) T { return f(c, x) }

// Ctx is the program being built, as a module's Forward sees it. The graph
// package implements it; a user never does.
//
// Errors do not need checking at every call: the first error is kept (see
// Fail and Err), every later call returns nil and adds nothing, and the
// program's compilation reports that first error, naming the op.
type Ctx interface {
	// Train reports whether this is a training program (dropout active,
	// gradients computed) or an evaluation one. It is fixed per program.
	Train() bool
	// Batch is the program's batch size.
	Batch() int
	// Input is the per-sample shape of the model's input, as the data
	// gives it (e.g. [1 28 28] or [20]); the input node itself is
	// [Batch, size] with size the product of Input.
	Input() []int

	// Param is p's node in this program (the same node on every call).
	Param(p *Param) T

	// The op set (see package graph): each returns the op's output.
	Linear(x T, w, b *Param) T                  // x[N,in]·wᵀ + b, w [out,in]
	Conv2D(x T, w, b *Param, stride, pad int) T // x [N,C,H,W], w [K,C,kh,kw], b [K] (nil: no bias)
	MaxPool2D(x T, k int) T                     // k×k windows, stride k
	ReLU(x T) T                                 // max(x, 0)
	Tanh(x T) T                                 // tanh(x)
	Sigmoid(x T) T                              // 1/(1+e^-x)
	GELU(x T) T                                 // x·Φ(x), PyTorch's exact GELU
	SiLU(x T) T                                 // x·σ(x) (swish)
	Dropout(x T, p float64) T                   // training: zero with probability p, else ×1/(1-p); eval: x
	Reshape(x T, shape ...int) T                // same values, new shape (the batch included)
	Add(a, b T) T                               // a + b, equal shapes (Gorgonia\'s Add): residual connections
	GlobalAvgPool2D(x T) T                      // [N,C,H,W] -> [N,C], each plane's mean
	AvgPool2D(x T, k, stride int) T             // the mean of k×k windows, stride stride, no padding
	// BatchNorm normalises x ([N,C] or [N,C,H,W]) per channel: by the
	// batch's statistics in training, updating the buffers (see
	// BatchNorm), by the running ones in evaluation.
	BatchNorm(x T, bn *BatchNorm) T
	// LayerNorm normalises each row of x's last dimension (see LayerNorm).
	LayerNorm(x T, ln *LayerNorm) T

	// Fail records err as the program's error, unless one is recorded
	// already; Err returns the recorded error.
	Fail(err error)
	Err() error
}

// Param declares one named tensor of a model: a parameter (optimised,
// reduced across ranks, checkpointed) or a buffer (checkpointed, not
// optimised, e.g. BatchNorm's running statistics). Its values live in the
// compiled model (graph.Model.Params, under Name); Init sets them from a
// random stream seeded by the model's seed and Name alone, so adding or
// removing other parameters does not change this one's start.
type Param struct {
	Name   string // dotted, as PyTorch's state_dict: "layer1.0.conv1.weight"
	Shape  []int
	Init   Init
	Buffer bool
}

// Size is the number of elements.
func (p *Param) Size() int {
	n := 1
	for _, d := range p.Shape {
		n *= d
	}
	return n
}

// Init fills a new parameter's values from r.
type Init interface {
	Fill(dst []float32, r *rand.Rand)
	String() string
}

type initFunc struct {
	name string
	f    func(dst []float32, r *rand.Rand)
}

func (i initFunc) Fill(dst []float32, r *rand.Rand) { i.f(dst, r) }
func (i initFunc) String() string                   { return i.name }

// Uniform draws every value uniformly from [-bound, bound).
func Uniform(bound float64) Init {
	return initFunc{fmt.Sprintf("uniform(±%g)", bound), func(dst []float32, r *rand.Rand) {
		for i := range dst {
			dst[i] = float32((2*r.Float64() - 1) * bound)
		}
	}}
}

// FanIn is PyTorch's default for Linear and Conv2d weights and biases:
// uniform in ±1/sqrt(fanIn).
func FanIn(fanIn int) Init { return Uniform(1 / math.Sqrt(float64(max(fanIn, 1)))) }

// Normal draws every value from N(mean, std²).
func Normal(mean, std float64) Init {
	return initFunc{fmt.Sprintf("normal(%g, %g)", mean, std), func(dst []float32, r *rand.Rand) {
		for i := range dst {
			dst[i] = float32(mean + std*r.NormFloat64())
		}
	}}
}

// Const sets every value to v.
func Const(v float32) Init {
	return initFunc{fmt.Sprintf("const(%g)", v), func(dst []float32, _ *rand.Rand) {
		for i := range dst {
			dst[i] = v
		}
	}}
}

// Zeros and Ones are Const(0) and Const(1).
func Zeros() Init { return Const(0) }

// Ones is Const(1).
func Ones() Init { return Const(1) }

// ErrDeclare is wrapped by the errors of declaring parameters: a bad or
// repeated name, a shape with a dimension below 1, a missing initialiser.
var ErrDeclare = errors.New("nn: bad declaration")

// Scope names the parameters a module declares: a module made under
// s.Sub("fc1") declares "fc1.weight". The root scope (NewScope) has no
// name; every scope made from it shares its list of declarations.
type Scope struct {
	prefix string
	set    *declared
}

type declared struct {
	params []*Param
	names  map[string]bool
	err    error
}

// NewScope returns a root scope.
func NewScope() *Scope { return &Scope{set: &declared{names: map[string]bool{}}} }

// Sub returns the scope of a child module named name (PyTorch's attribute
// name, or a Sequential's index).
func (s *Scope) Sub(name string) *Scope {
	if err := checkName(name); err != nil {
		s.fail(fmt.Errorf("%w: child %q of %q: %v", ErrDeclare, name, s.prefix, err))
	}
	return &Scope{prefix: s.join(name), set: s.set}
}

// Index is Sub of the decimal i, as PyTorch names a Sequential's children.
func (s *Scope) Index(i int) *Scope { return s.Sub(strconv.Itoa(i)) }

// Name is the scope's dotted name ("" at the root).
func (s *Scope) Name() string { return s.prefix }

func (s *Scope) join(name string) string {
	if s.prefix == "" {
		return name
	}
	return s.prefix + "." + name
}

// Param declares a parameter of the given shape, named name under s.
func (s *Scope) Param(name string, init Init, shape ...int) *Param {
	return s.declare(name, init, false, shape)
}

// Buffer declares a buffer: checkpointed, not optimised.
func (s *Scope) Buffer(name string, init Init, shape ...int) *Param {
	return s.declare(name, init, true, shape)
}

func (s *Scope) declare(name string, init Init, buffer bool, shape []int) *Param {
	p := &Param{Name: s.join(name), Shape: append([]int(nil), shape...), Init: init, Buffer: buffer}
	if err := checkName(name); err != nil {
		s.fail(fmt.Errorf("%w: %q: %v", ErrDeclare, p.Name, err))
		return p
	}
	if s.set.names[p.Name] {
		s.fail(fmt.Errorf("%w: %q is declared twice", ErrDeclare, p.Name))
		return p
	}
	if len(shape) == 0 {
		s.fail(fmt.Errorf("%w: %q has no shape", ErrDeclare, p.Name))
		return p
	}
	total := 1
	for _, d := range shape {
		if d < 1 || d > 1<<31 || total > (1<<40)/d {
			s.fail(fmt.Errorf("%w: %q has shape %v: every dimension must be in [1, 2^31] and the size at most 2^40", ErrDeclare, p.Name, shape))
			return p
		}
		total *= d
	}
	if init == nil {
		s.fail(fmt.Errorf("%w: %q has no initialiser", ErrDeclare, p.Name))
		return p
	}
	s.set.names[p.Name] = true
	s.set.params = append(s.set.params, p)
	return p
}

func (s *Scope) fail(err error) {
	if s.set.err == nil {
		s.set.err = err
	}
}

// Params lists everything declared in the scope's tree so far, parameters
// and buffers, in the order of declaration (which is the order of a
// checkpoint, of gradient buckets and of Model.Params).
func (s *Scope) Params() []*Param { return s.set.params }

// Err is the first declaration error of the scope's tree.
func (s *Scope) Err() error { return s.set.err }

func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if strings.ContainsAny(name, ". \t\n\"") {
		return errors.New("a name holds no dot, space or quote")
	}
	if len(name) > 128 {
		return errors.New("name longer than 128 bytes")
	}
	return nil
}
