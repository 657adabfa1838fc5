package graph_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/graph/nn"
)

// net is the package doc's example model.
type net struct {
	fc1, mid, fc2, out *nn.Linear
	drop               nn.Dropout
}

func newNet(withMid bool) graph.ModelFunc {
	return func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
		n := &net{fc1: nn.NewLinear(s.Sub("fc1"), spec.InC*spec.InH*spec.InW, 16), drop: nn.Dropout{P: 0.1}}
		if withMid {
			n.mid = nn.NewLinear(s.Sub("mid"), 16, 16)
		}
		n.fc2 = nn.NewLinear(s.Sub("fc2"), 16, 8)
		n.out = nn.NewLinear(s.Sub("out"), 8, spec.Classes)
		return n, nil
	}
}

func (n *net) Forward(c nn.Ctx, x nn.T) nn.T {
	h := c.Tanh(n.fc1.Forward(c, x))
	if n.mid != nil {
		h = c.Tanh(n.mid.Forward(c, h))
	}
	h = n.drop.Forward(c, h)
	h = c.Tanh(n.fc2.Forward(c, h))
	return n.out.Forward(c, h)
}

var tabular = graph.Spec{Kind: "net", InC: 1, InH: 1, InW: 20, Classes: 12}

func TestUserModelHasPyTorchNamesAndShapes(t *testing.T) {
	m, err := graph.Build(tabular, newNet(false), 7)
	require.NoError(t, err)
	var names []string
	for _, p := range m.Params {
		names = append(names, p.Name)
	}
	require.Equal(t, []string{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"}, names)
	require.Equal(t, []int{16, 20}, m.Param("fc1.weight").Shape)
	require.Equal(t, []int{12}, m.Param("out.bias").Shape)
	require.Equal(t, 20, m.InputSize())
	bound := 1 / math.Sqrt(20)
	for _, v := range m.Param("fc1.weight").Data {
		require.LessOrEqual(t, math.Abs(float64(v)), bound)
	}
	require.NotZero(t, m.Param("fc1.weight").Data[0])
}

// Inserting a layer must not reseed the others: every parameter's stream
// is seeded by the run's seed and its name.
func TestInitIsSeededByName(t *testing.T) {
	a, err := graph.Build(tabular, newNet(false), 3)
	require.NoError(t, err)
	b, err := graph.Build(tabular, newNet(true), 3)
	require.NoError(t, err)
	require.Len(t, b.Params, len(a.Params)+2)
	for _, p := range a.Params {
		require.Equal(t, p.Data, b.Param(p.Name).Data, p.Name)
	}
	c, err := graph.Build(tabular, newNet(false), 4)
	require.NoError(t, err)
	require.NotEqual(t, a.Params[0].Data, c.Params[0].Data)
}

// A user model trains: its loss falls on data its classes are a function
// of, and its evaluation program (dropout off) is deterministic.
func TestUserModelTrains(t *testing.T) {
	m, err := graph.Build(tabular, newNet(false), 1)
	require.NoError(t, err)
	const batch = 64
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, batch*20)
	y := make([]float32, batch)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for i := range y {
		best := 0
		for j := 1; j < 12; j++ {
			if x[i*20+j] > x[i*20+best] {
				best = j
			}
		}
		y[i] = float32(best)
	}
	prog, err := m.Program(batch, true)
	require.NoError(t, err)
	copy(prog.X, x)
	copy(prog.Y, y)
	var first, last float32
	for step := 0; step < 300; step++ {
		loss, err := prog.Run(r)
		require.NoError(t, err)
		if step == 0 {
			first = loss
		}
		last = loss
		for i, p := range m.Params {
			for j, g := range prog.Grad(i) {
				p.Data[j] -= 0.5 * g
			}
		}
	}
	require.Less(t, last, first/3, "loss %v -> %v", first, last)
	ev, err := m.Program(batch, false)
	require.NoError(t, err)
	copy(ev.X, x)
	copy(ev.Y, y)
	l1, err := ev.Run(nil)
	require.NoError(t, err)
	l2, err := ev.Run(nil)
	require.NoError(t, err)
	require.Equal(t, l1, l2)
	require.Greater(t, ev.Correct(), batch/2)
}

type unused struct{ a, b *nn.Linear }

func (u *unused) Forward(c nn.Ctx, x nn.T) nn.T { return u.a.Forward(c, x) }

type nilOut struct{}

func (nilOut) Forward(nn.Ctx, nn.T) nn.T { return nil }

func TestBadModelsAreErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    graph.ModelFunc
		want string
	}{
		{"twice", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			nn.NewLinear(s.Sub("fc"), 20, 12)
			return nn.NewLinear(s.Sub("fc"), 20, 12), nil
		}, `"fc.weight" is declared twice`},
		{"unused", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return &unused{nn.NewLinear(s.Sub("a"), 20, 12), nn.NewLinear(s.Sub("b"), 20, 12)}, nil
		}, `declares "b.weight" but its Forward does not use it`},
		{"classes", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return nn.NewLinear(s.Sub("fc"), 20, 5), nil
		}, "gives [5] per sample; the loss wants the 12 class scores"},
		{"shapes", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return nn.Seq(nn.NewLinear(s.Sub("a"), 20, 8), nn.NewLinear(s.Sub("b"), 9, 12)), nil
		}, "layer 1 (*nn.Linear): Linear"},
		{"nil output", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) { return nilOut{}, nil }, "Forward returned nil"},
		{"no module", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) { return nil, nil }, "returned no module"},
		{"own error", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) { return nil, errors.New("boom") }, "boom"},
		{"bad name", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return nn.NewLinear(s.Sub("a.b"), 20, 12), nil
		}, "holds no dot"},
		{"zero dim", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return nn.NewLinear(s.Sub("fc"), 20, 0), nil
		}, "every dimension must be in [1, 2^31]"},
		{"conv on flat", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return nn.NewConv2d(s.Sub("c"), 1, 4, 3, 1, 0), nil // 3x3 over 1x20
		}, "module *nn.Conv2d: Conv2D"},
		{"dropout", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return nn.Seq(nn.Dropout{P: 1}, nn.NewLinear(s.Sub("fc"), 20, 12)), nil
		}, "outside [0,1)"},
		{"foreign param", func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
			return nn.NewLinear(nn.NewScope().Sub("fc"), 20, 12), nil
		}, "was not declared under this model's scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := graph.Build(tabular, tc.f, 1)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestRegistry(t *testing.T) {
	require.Contains(t, graph.Models(), "mlp")
	require.Contains(t, graph.Models(), "cnn")
	require.NoError(t, graph.Register("test-net", newNet(false)))
	require.ErrorIs(t, graph.Register("test-net", newNet(false)), graph.ErrRegistered)
	require.ErrorIs(t, graph.Register("mlp", newNet(false)), graph.ErrRegistered)
	require.ErrorContains(t, graph.Register("bad name", newNet(false)), "letters, digits")
	require.ErrorContains(t, graph.Register("x", nil), "nil ModelFunc")
	require.True(t, graph.Registered("test-net"))
	spec := tabular
	spec.Kind = "test-net"
	m, err := graph.New(spec, 1)
	require.NoError(t, err)
	require.Equal(t, "test-net", m.Spec.Kind)
	fp, err := spec.Estimate()
	require.NoError(t, err)
	require.Equal(t, float64(m.NumParams()), fp.Params)
	require.Greater(t, fp.TrainFloatsPerSample, fp.EvalFloatsPerSample)
	_, err = graph.New(graph.Spec{Kind: "resmlp"}, 1)
	require.ErrorIs(t, err, graph.ErrUnknownModel)
	require.ErrorContains(t, err, "test-net")
}

// A user's Sequential is cut into pipeline stages between its layers; a
// model of one module cannot be.
func TestUserSequentialStages(t *testing.T) {
	seq := func(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
		return nn.Seq(nn.NewLinear(s.Index(0), 20, 16), nn.ReLU{}, nn.NewLinear(s.Index(2), 16, 16), nn.Tanh{}, nn.NewLinear(s.Index(4), 16, 12)), nil
	}
	m, err := graph.Build(tabular, seq, 1)
	require.NoError(t, err)
	require.Equal(t, "0.weight", m.Params[0].Name)
	st, err := m.Stages(3)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, st[0].Params)
	require.Equal(t, []int{16}, st[1].InShape)
	require.Equal(t, []int{4, 5}, st[2].Params)
	one, err := graph.Build(tabular, newNet(false), 1)
	require.NoError(t, err)
	_, err = one.Stages(2)
	require.ErrorIs(t, err, graph.ErrTooFewLayers)
}

// RunAt draws each sample's dropout mask from its own stream: a batch run
// in two parts (ranks, micro-batches) gives the gradients of the whole.
func TestRunAtSplitsLikeOneBatch(t *testing.T) {
	spec := tabular
	spec.Kind, spec.Dropout, spec.Hidden = "mlp", 0.5, []int{32, 16}
	m, err := graph.New(spec, 5)
	require.NoError(t, err)
	r := rand.New(rand.NewPCG(9, 9))
	const n = 10
	x := make([]float32, n*20)
	y := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for i := range y {
		y[i] = float32(i % 12)
	}
	whole, err := m.Program(n, true)
	require.NoError(t, err)
	copy(whole.X, x)
	copy(whole.Y, y)
	lw, err := whole.RunAt(1, 7, 0)
	require.NoError(t, err)
	want := make([][]float32, len(m.Params))
	for i := range m.Params {
		want[i] = append([]float32(nil), whole.Grad(i)...)
	}
	got := make([][]float64, len(m.Params))
	var loss float64
	for _, part := range [][2]int{{0, 4}, {4, n}} {
		lo, hi := part[0], part[1]
		p, err := m.Program(hi-lo, true)
		require.NoError(t, err)
		copy(p.X, x[lo*20:hi*20])
		copy(p.Y, y[lo:hi])
		l, err := p.RunAt(1, 7, lo)
		require.NoError(t, err)
		loss += float64(l) * float64(hi-lo) / n
		for i := range m.Params {
			if got[i] == nil {
				got[i] = make([]float64, len(want[i]))
			}
			for j, g := range p.Grad(i) {
				got[i][j] += float64(g) * float64(hi-lo) / n
			}
		}
	}
	require.InDelta(t, lw, loss, 1e-5)
	for i := range want {
		for j := range want[i] {
			require.InDelta(t, want[i][j], got[i][j], 1e-5, m.Params[i].Name)
		}
	}
	// Another step draws other masks.
	l2, err := whole.RunAt(1, 8, 0)
	require.NoError(t, err)
	require.NotEqual(t, lw, l2)
}

// A Model assembled by hand is refused with an error that says how to make
// one, not a panic or Gorgonia's "not the same graph".
func TestHandMadeModelIsRefused(t *testing.T) {
	m := &graph.Model{Spec: tabular}
	_, err := m.Program(8, true)
	require.ErrorIs(t, err, graph.ErrNotBuilt)
	_, err = m.Stages(2)
	require.ErrorIs(t, err, graph.ErrNotBuilt)
}

// Every op a built-in model's programs hold is registered, can be made
// outside a graph, and has a cost.
func TestProgramsUseRegisteredOps(t *testing.T) {
	for _, kind := range []string{"mlp", "cnn"} {
		m, err := graph.New(graph.Spec{Kind: kind, Dropout: 0.2}, 1)
		require.NoError(t, err)
		for _, train := range []bool{true, false} {
			p, err := m.Program(4, train)
			require.NoError(t, err)
			ops, err := p.Ops()
			require.NoError(t, err)
			for _, k := range ops {
				_, ok := graph.LookupOp(k)
				require.True(t, ok, "%s: %s is not registered", kind, k)
			}
		}
	}
	f, err := graph.OpFLOPs(graph.OpLinear, nil, [][]int{{8, 784}, {256, 784}, {256}}, []int{8, 256})
	require.NoError(t, err)
	require.Equal(t, float64(2*8*784*256+8*256), f)
	f, err = graph.OpFLOPs(graph.OpMatMul, map[string]any{"trans_a": true}, [][]int{{8, 256}, {8, 784}}, []int{256, 784})
	require.NoError(t, err)
	require.Equal(t, float64(2*256*784*8), f)
	_, err = graph.NewOp("NoSuchOp", nil, nil, nil)
	require.ErrorContains(t, err, "not an op of the set")
}

// resBlock is a residual connection written with Ctx.Add, Gorgonia's own
// operator: x has two consumers, so Grad sums their gradients with Add too.
type resBlock struct{ in, fc, out *nn.Linear }

func (r *resBlock) Forward(c nn.Ctx, x nn.T) nn.T {
	h := c.Tanh(r.in.Forward(c, x))
	h = c.Add(h, c.Tanh(r.fc.Forward(c, h)))
	return r.out.Forward(c, h)
}

func newRes(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
	return &resBlock{nn.NewLinear(s.Sub("in"), 20, 8), nn.NewLinear(s.Sub("fc"), 8, 8), nn.NewLinear(s.Sub("out"), 8, spec.Classes)}, nil
}

// A residual model compiles, runs Gorgonia's Add, and its gradients are
// those of finite differences.
func TestResidualAddAndItsGradients(t *testing.T) {
	m, err := graph.Build(tabular, newRes, 2)
	require.NoError(t, err)
	const n = 3
	p, err := m.Program(n, true)
	require.NoError(t, err)
	ops, err := p.Ops()
	require.NoError(t, err)
	adds := 0
	for _, k := range ops {
		if k == graph.OpAdd {
			adds++
		}
	}
	require.GreaterOrEqual(t, adds, 2, "the forward Add and Grad's sum of h's two gradients: %v", ops)
	r := rand.New(rand.NewPCG(4, 4))
	for i := range p.X {
		p.X[i] = float32(r.NormFloat64())
	}
	for i := range p.Y {
		p.Y[i] = float32(i % 12)
	}
	_, err = p.Run(nil)
	require.NoError(t, err)
	ev, err := m.Program(n, false)
	require.NoError(t, err)
	copy(ev.X, p.X)
	copy(ev.Y, p.Y)
	loss := func() float64 {
		l, err := ev.Run(nil)
		require.NoError(t, err)
		return float64(l)
	}
	for i, prm := range m.Params {
		g := append([]float32(nil), p.Grad(i)...)
		for _, j := range []int{0, len(prm.Data) / 2, len(prm.Data) - 1} {
			v := prm.Data[j]
			const h = 1e-2
			prm.Data[j] = v + h
			up := loss()
			prm.Data[j] = v - h
			down := loss()
			prm.Data[j] = v
			fd := (up - down) / (2 * h)
			require.InDelta(t, fd, float64(g[j]), 2e-3+0.02*math.Abs(fd), "%s[%d]", prm.Name, j)
		}
	}
	l, err := p.Layout()
	require.NoError(t, err)
	found := false
	for _, nd := range l.Nodes {
		found = found || (nd.Role == graph.RoleOp && nd.Op.Kind() == graph.OpAdd)
	}
	require.True(t, found, "the layout gives executors Gorgonia's Add as the set's Add")
}
