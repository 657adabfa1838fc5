package graph

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"gorgonia.org/tensor"

	"github.com/gotrain/gotrain/graph/nn"
)

// ModelFunc makes a model: it declares the parameters under s (modules
// made with s.Sub(name) get dotted names) and returns the root module. It
// reads what it needs of spec: the input shape (spec.Input()) and class
// count always, the built-in models also Hidden, Activation and Dropout.
// It runs once per model built, never per step.
type ModelFunc func(s *nn.Scope, spec Spec) (nn.Module, error)

// ErrRegistered is returned by Register for a name already taken.
var ErrRegistered = errors.New("graph: model name already registered")

var registry = struct {
	sync.RWMutex
	m map[string]ModelFunc
}{m: map[string]ModelFunc{}}

// Register makes f the model called name, for New and the CLI's --model.
// A program registers its models before it builds configurations (in
// init or at the top of main). Names are what --model accepts: letters,
// digits, '-', '_' and '.', at most 64 bytes.
func Register(name string, f ModelFunc) error {
	if f == nil {
		return fmt.Errorf("graph: Register(%q): nil ModelFunc", name)
	}
	if name == "" || len(name) > 64 || strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0 {
		return fmt.Errorf("graph: Register(%q): a model name is 1 to 64 letters, digits, '-', '_' or '.'", name)
	}
	registry.Lock()
	defer registry.Unlock()
	if _, ok := registry.m[name]; ok {
		return fmt.Errorf("%w: %q", ErrRegistered, name)
	}
	registry.m[name] = f
	return nil
}

// mustRegister registers the built-in models.
func mustRegister(name string, f ModelFunc) {
	if err := Register(name, f); err != nil {
		panic(err) // a programming error in this package, at init
	}
}

// Models lists the registered model names, sorted.
func Models() []string {
	registry.RLock()
	defer registry.RUnlock()
	names := make([]string, 0, len(registry.m))
	for n := range registry.m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Registered reports whether name is a registered model.
func Registered(name string) bool {
	registry.RLock()
	defer registry.RUnlock()
	_, ok := registry.m[name]
	return ok
}

// New builds the registered model spec.Kind and initialises its
// parameters from seed (see Model.Init).
func New(spec Spec, seed uint64) (*Model, error) {
	registry.RLock()
	f, ok := registry.m[spec.Kind]
	registry.RUnlock()
	if !ok {
		return nil, fmt.Errorf("graph: %w %q (valid: %s)", ErrUnknownModel, spec.Kind, strings.Join(Models(), ", "))
	}
	return Build(spec, f, seed)
}

// Build makes the model f declares, for spec's input shape and classes,
// checks that its modules fit together (one build at batch 1) and
// initialises its parameters from seed. spec.Kind names it in errors and
// checkpoints.
func Build(spec Spec, f ModelFunc, seed uint64) (*Model, error) {
	spec = spec.withDefaults()
	if spec.Kind == "" {
		spec.Kind = "model"
	}
	for _, d := range []int{spec.InC, spec.InH, spec.InW, spec.Classes} {
		if d < 1 || d > 1<<24 {
			return nil, fmt.Errorf("graph: model %s: input %v and %d classes: each must be in [1, 2^24]", spec.Kind, spec.Input(), spec.Classes)
		}
	}
	if f == nil {
		return nil, fmt.Errorf("graph: model %s: nil ModelFunc", spec.Kind)
	}
	if !(spec.LabelSmoothing >= 0 && spec.LabelSmoothing < 1) {
		return nil, fmt.Errorf("graph: model %s: label smoothing %v is outside [0, 1)", spec.Kind, spec.LabelSmoothing)
	}
	s := nn.NewScope()
	root, err := f(s, spec)
	if err == nil {
		err = s.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("graph: model %s: %w", spec.Kind, err)
	}
	if root == nil {
		return nil, fmt.Errorf("graph: model %s: the ModelFunc returned no module", spec.Kind)
	}
	m := &Model{Spec: spec, progs: map[progKey]*Program{}, byDecl: map[*nn.Param]*Param{}}
	for _, d := range s.Params() {
		p := &Param{Name: d.Name, Shape: slices.Clone(d.Shape), Data: make([]float32, d.Size()), Init: d.Init, Buffer: d.Buffer, decl: d}
		p.value = tensor.New(tensor.WithShape(p.Shape...), tensor.WithBacking(p.Data))
		m.Params = append(m.Params, p)
		m.byDecl[d] = p
	}
	if q, ok := root.(*nn.Sequential); ok && len(q.Layers) > 0 {
		m.blocks = q.Layers
	} else {
		m.blocks = []nn.Module{root}
	}
	if err := m.trace(); err != nil {
		return nil, err
	}
	m.Init(seed)
	return m, nil
}
