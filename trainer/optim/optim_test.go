package optim

import (
	"math"
	"math/rand"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// testConfigs covers every optimiser code path.
var testConfigs = []Config{
	{Name: "sgd"},
	{Name: "sgd", WeightDecay: 1e-3},
	{Name: "sgd", Momentum: 0.9},
	{Name: "sgd", Momentum: 0.9, Dampening: 0.1, WeightDecay: 1e-4},
	{Name: "sgd", Momentum: 0.9, Nesterov: true, WeightDecay: 5e-4},
	{Name: "adam"},
	{Name: "adam", WeightDecay: 1e-2, Beta1: 0.8, Beta2: 0.99, Eps: 1e-6},
	{Name: "adamw", WeightDecay: 1e-2},
	{Name: "adamw"},
}

func cfgName(c Config) string {
	s := c.Name
	if c.Momentum != 0 {
		s += "_mom"
	}
	if c.Nesterov {
		s += "_nesterov"
	}
	if c.WeightDecay != 0 {
		s += "_wd"
	}
	return s
}

// makeParams returns params with the given lengths, random data and zero
// gradients.
func makeParams(rng *rand.Rand, sizes ...int) []Param {
	names := []string{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
	ps := make([]Param, len(sizes))
	for i, n := range sizes {
		ps[i] = Param{Name: names[i], Data: make([]float32, n), Grad: make([]float32, n)}
		for j := range ps[i].Data {
			ps[i].Data[j] = float32(rng.NormFloat64())
		}
	}
	return ps
}

func cloneParams(ps []Param) []Param {
	out := make([]Param, len(ps))
	for i, p := range ps {
		out[i] = Param{Name: p.Name, Data: append([]float32(nil), p.Data...), Grad: append([]float32(nil), p.Grad...)}
	}
	return out
}

func fillGrads(rng *rand.Rand, ps []Param) {
	for _, p := range ps {
		for j := range p.Grad {
			p.Grad[j] = float32(rng.NormFloat64() * 0.1)
		}
	}
}

func mustNew(t testing.TB, cfg Config, ps []Param) Optimizer {
	t.Helper()
	o, err := New(cfg, ps)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return o
}

// TestResumeExact checks that saving State after k steps, loading it into a
// fresh optimiser (over fresh parameter slices) and continuing gives
// bit-identical parameters to an uninterrupted run.
func TestResumeExact(t *testing.T) {
	const total = 10
	for _, cfg := range testConfigs {
		for _, k := range []int{0, 1, 4} {
			t.Run(cfgName(cfg)+"_after_"+string(rune('0'+k)), func(t *testing.T) {
				init := makeParams(rand.New(rand.NewSource(1)), 37, 5)
				lr := func(s int) float64 { return 0.01 * float64(s+1) / total }

				// Uninterrupted run.
				ref := cloneParams(init)
				o := mustNew(t, cfg, ref)
				rng := rand.New(rand.NewSource(2))
				for s := 0; s < total; s++ {
					fillGrads(rng, ref)
					o.Step(ref, lr(s))
				}

				// Interrupted run.
				a := cloneParams(init)
				o1 := mustNew(t, cfg, a)
				rng = rand.New(rand.NewSource(2))
				for s := 0; s < k; s++ {
					fillGrads(rng, a)
					o1.Step(a, lr(s))
				}
				tensors, step := o1.State()
				if step != int64(k) {
					t.Fatalf("step count %d after %d steps", step, k)
				}
				b := cloneParams(a) // new slices, as after loading a checkpoint
				o2 := mustNew(t, cfg, b)
				if err := o2.LoadState(tensors, step); err != nil {
					t.Fatal(err)
				}
				// State returned copies: scribbling on them must not matter.
				for _, v := range tensors {
					for j := range v {
						v[j] = 1e9
					}
				}
				for s := k; s < total; s++ {
					fillGrads(rng, b)
					o2.Step(b, lr(s))
				}
				for i := range ref {
					if !reflect.DeepEqual(ref[i].Data, b[i].Data) {
						t.Fatalf("%s differs after resume", ref[i].Name)
					}
				}
				t1, s1 := o.State()
				t2, s2 := o2.State()
				if s1 != s2 || !reflect.DeepEqual(t1, t2) {
					t.Fatal("state differs after resume")
				}
			})
		}
	}
}

func TestStateNames(t *testing.T) {
	ps := makeParams(rand.New(rand.NewSource(1)), 6, 2)
	cases := []struct {
		cfg  Config
		want []string
	}{
		{Config{Name: "sgd"}, nil},
		{Config{Name: "sgd", Momentum: 0.5}, []string{"fc1.bias.momentum_buffer", "fc1.weight.momentum_buffer"}},
		{Config{Name: "adam"}, []string{"fc1.bias.exp_avg", "fc1.bias.exp_avg_sq", "fc1.weight.exp_avg", "fc1.weight.exp_avg_sq"}},
		{Config{Name: "AdamW"}, []string{"fc1.bias.exp_avg", "fc1.bias.exp_avg_sq", "fc1.weight.exp_avg", "fc1.weight.exp_avg_sq"}},
	}
	for _, c := range cases {
		o := mustNew(t, c.cfg, ps)
		if got := strings.ToLower(c.cfg.Name); o.Name() != got {
			t.Errorf("Name() = %q, want %q", o.Name(), got)
		}
		tensors, step := o.State()
		if step != 0 {
			t.Errorf("%s: fresh step count %d", c.cfg.Name, step)
		}
		got := keys(tensors)
		sort.Strings(got)
		if !reflect.DeepEqual(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
			t.Errorf("%s: state names %v, want %v", c.cfg.Name, got, c.want)
		}
		for name, v := range tensors {
			want := len(ps[0].Data)
			if strings.HasPrefix(name, "fc1.bias.") {
				want = len(ps[1].Data)
			}
			if len(v) != want {
				t.Errorf("%s: len %d, want %d", name, len(v), want)
			}
		}
	}
}

func TestDefaults(t *testing.T) {
	// Zero Beta1/Beta2/Eps mean PyTorch's defaults.
	run := func(cfg Config) []float32 {
		ps := makeParams(rand.New(rand.NewSource(3)), 20)
		o := mustNew(t, cfg, ps)
		rng := rand.New(rand.NewSource(4))
		for s := 0; s < 3; s++ {
			fillGrads(rng, ps)
			o.Step(ps, 1e-3)
		}
		return ps[0].Data
	}
	for _, name := range []string{"adam", "adamw"} {
		a := run(Config{Name: name})
		b := run(Config{Name: name, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8})
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: zero betas/eps do not behave as 0.9/0.999/1e-8", name)
		}
	}
}

func TestZeroLRLeavesParams(t *testing.T) {
	for _, cfg := range testConfigs {
		ps := makeParams(rand.New(rand.NewSource(1)), 9)
		before := append([]float32(nil), ps[0].Data...)
		o := mustNew(t, cfg, ps)
		fillGrads(rand.New(rand.NewSource(2)), ps)
		o.Step(ps, 0)
		if !reflect.DeepEqual(before, ps[0].Data) {
			t.Errorf("%s: lr 0 changed the parameters", cfgName(cfg))
		}
	}
}

func TestStepNoAllocs(t *testing.T) {
	for _, cfg := range testConfigs {
		ps := makeParams(rand.New(rand.NewSource(1)), 1000, 10)
		fillGrads(rand.New(rand.NewSource(2)), ps)
		o := mustNew(t, cfg, ps)
		o.Step(ps, 1e-3)
		if n := testing.AllocsPerRun(20, func() { o.Step(ps, 1e-3) }); n != 0 {
			t.Errorf("%s: Step allocates %v times per call", cfgName(cfg), n)
		}
	}
	ps := makeParams(rand.New(rand.NewSource(1)), 1000, 10)
	fillGrads(rand.New(rand.NewSource(2)), ps)
	if n := testing.AllocsPerRun(20, func() { ClipGradNorm(ps, 1e-3); GradsFinite(ps) }); n != 0 {
		t.Errorf("ClipGradNorm/GradsFinite allocate %v times per call", n)
	}
}

func TestNewErrors(t *testing.T) {
	nan := math.NaN()
	ps := makeParams(rand.New(rand.NewSource(1)), 3, 2)
	cases := []struct {
		cfg    Config
		params []Param
		want   string // substring of the error
	}{
		{Config{Name: "rmsprop"}, ps, "valid: sgd, adam, adamw"},
		{Config{Name: ""}, ps, "unknown optimizer"},
		{Config{Name: "sgd", Momentum: -0.1}, ps, "momentum"},
		{Config{Name: "sgd", Momentum: nan}, ps, "momentum"},
		{Config{Name: "sgd", Momentum: math.Inf(1)}, ps, "momentum"},
		{Config{Name: "sgd", Dampening: -1}, ps, "dampening"},
		{Config{Name: "sgd", Momentum: 0.9, Dampening: 1.5}, ps, "dampening"},
		{Config{Name: "sgd", Nesterov: true}, ps, "nesterov"},
		{Config{Name: "sgd", Nesterov: true, Momentum: 0.9, Dampening: 0.1}, ps, "nesterov"},
		{Config{Name: "sgd", WeightDecay: -1e-4}, ps, "weight decay"},
		{Config{Name: "adam", WeightDecay: nan}, ps, "weight decay"},
		{Config{Name: "adam", Beta1: 1}, ps, "beta1"},
		{Config{Name: "adam", Beta1: -0.5}, ps, "beta1"},
		{Config{Name: "adamw", Beta2: 1.5}, ps, "beta2"},
		{Config{Name: "adamw", Beta2: nan}, ps, "beta2"},
		{Config{Name: "adam", Eps: -1e-8}, ps, "eps"},
		{Config{Name: "adam"}, nil, "empty parameter list"},
		{Config{Name: "sgd"}, []Param{{Name: "a", Data: make([]float32, 2), Grad: make([]float32, 2)}, {Name: "a"}}, "duplicate"},
		{Config{Name: "sgd"}, []Param{{Name: "", Data: make([]float32, 2), Grad: make([]float32, 2)}}, "empty name"},
		{Config{Name: "adam"}, []Param{{Name: "w", Data: make([]float32, 2), Grad: make([]float32, 3)}}, `"w"`},
	}
	for _, c := range cases {
		o, err := New(c.cfg, c.params)
		if err == nil {
			t.Errorf("New(%+v) succeeded (%v), want error containing %q", c.cfg, o.Name(), c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) error %q does not contain %q", c.cfg, err, c.want)
		}
	}
	// Valid edge cases.
	for _, cfg := range []Config{
		{Name: " SGD "},
		{Name: "sgd", Momentum: 0.9, Dampening: 1},
		{Name: "adam", Beta1: 0.999999, Eps: 1e-12},
		{Name: "sgd", Beta1: 7}, // ignored by sgd
	} {
		if _, err := New(cfg, ps); err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
		}
	}
}

func TestLoadStateErrors(t *testing.T) {
	ps := makeParams(rand.New(rand.NewSource(1)), 4, 2)
	o := mustNew(t, Config{Name: "adam"}, ps)
	fillGrads(rand.New(rand.NewSource(2)), ps)
	o.Step(ps, 1e-3)
	good, step := o.State()

	mod := func(f func(m map[string][]float32)) map[string][]float32 {
		m := map[string][]float32{}
		for k, v := range good {
			m[k] = append([]float32(nil), v...)
		}
		f(m)
		return m
	}
	cases := []struct {
		tensors map[string][]float32
		step    int64
		want    string
	}{
		{mod(func(m map[string][]float32) { delete(m, "fc1.bias.exp_avg_sq") }), step, `missing state tensor "fc1.bias.exp_avg_sq"`},
		{mod(func(m map[string][]float32) { m["fc1.weight.exp_avg"] = make([]float32, 5) }), step, `"fc1.weight.exp_avg" has length 5, want 4`},
		{mod(func(m map[string][]float32) { m["fc1.weight.momentum_buffer"] = make([]float32, 4) }), step, `unexpected state tensor(s) ["fc1.weight.momentum_buffer"]`},
		{mod(func(m map[string][]float32) { m["fc1.weight.exp_avg"][0] = 42 }), -1, "negative step"},
		{nil, 0, "missing state tensor"},
	}
	for _, c := range cases {
		err := o.LoadState(c.tensors, c.step)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadState error %v, want it to contain %q", err, c.want)
		}
		// A failed load changes nothing.
		now, nowStep := o.State()
		if nowStep != step || !reflect.DeepEqual(now, good) {
			t.Fatalf("failed LoadState modified the optimizer")
		}
	}

	// SGD without momentum has no tensors: an empty or nil map loads.
	s := mustNew(t, Config{Name: "sgd"}, ps)
	if err := s.LoadState(nil, 7); err != nil {
		t.Fatal(err)
	}
	if _, n := s.State(); n != 7 {
		t.Fatalf("step %d after LoadState(nil, 7)", n)
	}
	// Loading Adam state into momentum SGD fails, naming the tensor.
	m := mustNew(t, Config{Name: "sgd", Momentum: 0.9}, ps)
	if err := m.LoadState(good, step); err == nil || !strings.Contains(err.Error(), "momentum_buffer") {
		t.Errorf("loading adam state into sgd: %v", err)
	}
}

func TestStepPanics(t *testing.T) {
	ps := makeParams(rand.New(rand.NewSource(1)), 4, 2)
	o := mustNew(t, Config{Name: "adam"}, ps)
	other := makeParams(rand.New(rand.NewSource(1)), 4, 3)
	renamed := cloneParams(ps)
	renamed[1].Name = "x"
	shortGrad := cloneParams(ps)
	shortGrad[0].Grad = shortGrad[0].Grad[:3]
	cases := []struct {
		name   string
		params []Param
		lr     float64
	}{
		{"negative lr", ps, -1e-3},
		{"NaN lr", ps, math.NaN()},
		{"Inf lr", ps, math.Inf(1)},
		{"fewer params", ps[:1], 1e-3},
		{"other length", other, 1e-3},
		{"other name", renamed, 1e-3},
		{"short grad", shortGrad, 1e-3},
	}
	for _, c := range cases {
		func() {
			defer func() {
				if r := recover(); r == nil {
					t.Errorf("%s: Step did not panic", c.name)
				}
			}()
			o.Step(c.params, c.lr)
		}()
	}
	if _, step := o.State(); step != 0 {
		t.Errorf("panicking Steps counted: step %d", step)
	}
}

func TestScheduleFormulas(t *testing.T) {
	step := Schedule{Kind: "step", BaseLR: 0.1, WarmupSteps: 3, StepSize: 5, Gamma: 0.5}
	wantStep := []float64{0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025}
	for i, w := range wantStep {
		if got := step.LR(int64(i)); !closeTo(got, w, 1e-12) {
			t.Errorf("step+warmup LR(%d) = %v, want %v", i, got, w)
		}
	}
	cos := Schedule{Kind: "Cosine", BaseLR: 1, TotalSteps: 4, MinLR: 0.2}
	for i, w := range []float64{1, 0.2 + 0.8*(1+math.Sqrt2/2)/2, 0.6, 0.2 + 0.8*(1-math.Sqrt2/2)/2, 0.2, 0.2, 0.2} {
		if got := cos.LR(int64(i)); !closeTo(got, w, 1e-12) {
			t.Errorf("cosine LR(%d) = %v, want %v", i, got, w)
		}
	}
	if got := cos.LR(-5); got != 1 {
		t.Errorf("LR(-5) = %v, want LR(0) = 1", got)
	}
	c := Schedule{Kind: "constant", BaseLR: 0.3}
	if c.LR(0) != 0.3 || c.LR(1e9) != 0.3 {
		t.Error("constant schedule not constant")
	}
	// LR never panics or divides by zero on unvalidated schedules.
	for _, s := range []Schedule{{Kind: "step", BaseLR: 1}, {Kind: "cosine", BaseLR: 1, WarmupSteps: 5, TotalSteps: 5}, {Kind: "bogus", BaseLR: 1}} {
		for _, st := range []int64{0, 4, 5, 6} {
			if v := s.LR(st); math.IsNaN(v) || math.IsInf(v, 0) {
				t.Errorf("%+v.LR(%d) = %v", s, st, v)
			}
		}
	}
}

func TestScheduleValidate(t *testing.T) {
	bad := []struct {
		s    Schedule
		want string
	}{
		{Schedule{Kind: "linear", BaseLR: 1}, "valid: constant, step, cosine"},
		{Schedule{Kind: "", BaseLR: 1}, "unknown schedule kind"},
		{Schedule{Kind: "constant", BaseLR: -1}, "base learning rate"},
		{Schedule{Kind: "constant", BaseLR: math.NaN()}, "base learning rate"},
		{Schedule{Kind: "constant", BaseLR: math.Inf(1)}, "base learning rate"},
		{Schedule{Kind: "constant", BaseLR: 1, WarmupSteps: -1}, "warm-up"},
		{Schedule{Kind: "step", BaseLR: 1, Gamma: 0.5}, "step size"},
		{Schedule{Kind: "step", BaseLR: 1, StepSize: 10}, "gamma"},
		{Schedule{Kind: "step", BaseLR: 1, StepSize: 10, Gamma: 1.5}, "gamma"},
		{Schedule{Kind: "cosine", BaseLR: 1}, "total steps"},
		{Schedule{Kind: "cosine", BaseLR: 1, TotalSteps: 10, WarmupSteps: 10}, "total steps"},
		{Schedule{Kind: "cosine", BaseLR: 1, TotalSteps: 10, MinLR: 2}, "min learning rate"},
		{Schedule{Kind: "cosine", BaseLR: 1, TotalSteps: 10, MinLR: -1}, "min learning rate"},
	}
	for _, c := range bad {
		err := c.s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v.Validate() = %v, want error containing %q", c.s, err, c.want)
		}
	}
	for _, s := range []Schedule{
		{Kind: "constant", BaseLR: 0.1},
		{Kind: "constant", BaseLR: 0.1, WarmupSteps: 10},
		{Kind: "STEP", BaseLR: 0.1, StepSize: 1, Gamma: 1},
		{Kind: "cosine", BaseLR: 0.1, TotalSteps: 1},
		{Kind: "cosine", BaseLR: 0.1, TotalSteps: 100, WarmupSteps: 99, MinLR: 0.1},
	} {
		if err := s.Validate(); err != nil {
			t.Errorf("%+v.Validate(): %v", s, err)
		}
	}
}

func TestClipGradNorm(t *testing.T) {
	ps := []Param{
		{Name: "a", Data: make([]float32, 2), Grad: []float32{3, 0}},
		{Name: "b", Data: make([]float32, 3), Grad: []float32{0, 4, 0}},
	}
	// maxNorm <= 0: norm only.
	for _, maxNorm := range []float64{0, -1, math.NaN()} {
		if n := ClipGradNorm(ps, maxNorm); n != 5 {
			t.Errorf("norm %v, want 5", n)
		}
		if ps[0].Grad[0] != 3 || ps[1].Grad[1] != 4 {
			t.Fatalf("maxNorm %v modified gradients", maxNorm)
		}
	}
	// Not above maxNorm: unchanged.
	if n := ClipGradNorm(ps, 10); n != 5 || ps[0].Grad[0] != 3 {
		t.Fatalf("no-clip case: norm %v grads %v", n, ps[0].Grad)
	}
	// Above: scaled to maxNorm (up to the 1e-6 in the denominator).
	if n := ClipGradNorm(ps, 1); n != 5 {
		t.Fatalf("norm %v, want 5", n)
	}
	if n := ClipGradNorm(ps, 0); !closeTo(n, 1, 1e-6) {
		t.Errorf("norm after clipping %v, want ~1", n)
	}
	if !closeTo(float64(ps[0].Grad[0]), 0.6, 1e-6) || !closeTo(float64(ps[1].Grad[1]), 0.8, 1e-6) {
		t.Errorf("clipped grads %v %v", ps[0].Grad, ps[1].Grad)
	}
	// Empty: zero norm.
	if n := ClipGradNorm(nil, 1); n != 0 {
		t.Errorf("empty norm %v", n)
	}
}

func TestNonFiniteGrads(t *testing.T) {
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		ps := makeParams(rand.New(rand.NewSource(1)), 50, 3)
		fillGrads(rand.New(rand.NewSource(2)), ps)
		if !GradsFinite(ps) {
			t.Fatal("finite grads reported non-finite")
		}
		ps[1].Grad[2] = bad
		if GradsFinite(ps) {
			t.Errorf("GradsFinite missed %v", bad)
		}
		before := cloneParams(ps)
		n := ClipGradNorm(ps, 1e-3)
		if !math.IsNaN(n) && !math.IsInf(n, 1) {
			t.Errorf("grad %v: norm %v, want NaN or +Inf", bad, n)
		}
		if math.IsNaN(float64(bad)) != math.IsNaN(n) {
			t.Errorf("grad %v: norm %v", bad, n)
		}
		for i := range ps {
			for j := range ps[i].Grad {
				if g, w := ps[i].Grad[j], before[i].Grad[j]; g != w && !(g != g && w != w) {
					t.Fatalf("non-finite norm: gradients were modified")
				}
			}
		}
	}
	// A large but finite float32 gradient does not overflow the float64 sum.
	ps := []Param{{Name: "a", Data: make([]float32, 2), Grad: []float32{math.MaxFloat32, math.MaxFloat32}}}
	if n := ClipGradNorm(ps, 1); math.IsInf(n, 0) || !closeTo(n, math.MaxFloat32*math.Sqrt2, 1e-12) {
		t.Errorf("norm %v", n)
	}
}

// mlpParams returns the 784-256-10 MLP's parameters: 203530 values.
func mlpParams() []Param {
	rng := rand.New(rand.NewSource(1))
	ps := makeParams(rng, 784*256, 256, 256*10, 10)
	fillGrads(rng, ps)
	return ps
}

func benchmarkStep(b *testing.B, cfg Config) {
	ps := mlpParams()
	o, err := New(cfg, ps)
	if err != nil {
		b.Fatal(err)
	}
	o.Step(ps, 1e-3)
	b.SetBytes(int64(4 * 203530))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o.Step(ps, 1e-3)
	}
}

func BenchmarkAdamStep203530(b *testing.B) { benchmarkStep(b, Config{Name: "adam"}) }
func BenchmarkAdamWStep203530(b *testing.B) {
	benchmarkStep(b, Config{Name: "adamw", WeightDecay: 0.01})
}
func BenchmarkSGDMomentumStep203530(b *testing.B) {
	benchmarkStep(b, Config{Name: "sgd", Momentum: 0.9})
}

func BenchmarkClipGradNorm203530(b *testing.B) {
	ps := mlpParams()
	b.SetBytes(int64(4 * 203530))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ClipGradNorm(ps, 1e9) // computes the norm, does not scale
	}
}

// TestBuffersAreSetNotOptimised: a buffer takes its slot's values, with no
// learning rate, weight decay or momentum, and stays out of the gradient
// norm and clipping.
func TestBuffersAreSetNotOptimised(t *testing.T) {
	for _, cfg := range []Config{
		{Name: "sgd", Momentum: 0.9, WeightDecay: 0.1},
		{Name: "adam", WeightDecay: 0.1},
		{Name: "adamw", WeightDecay: 0.1},
	} {
		w, gw := []float32{1, 2}, []float32{0.5, -0.5}
		rm, avg := []float32{3, 4}, []float32{7, 8}
		ps := []Param{{Name: "w", Data: w, Grad: gw}, {Name: "bn.running_mean", Data: rm, Grad: avg, Buffer: true}}
		o, err := New(cfg, ps)
		if err != nil {
			t.Fatal(err)
		}
		if s := SumSquares(ps); s != 0.5 {
			t.Fatalf("SumSquares %v, want 0.5: the buffer's slot is not a gradient", s)
		}
		Scale(ps, 0.5)
		if !reflect.DeepEqual(avg, []float32{7, 8}) {
			t.Fatalf("clipping scaled the buffer's slot: %v", avg)
		}
		for range 2 {
			o.Step(ps, 0.1)
			if !reflect.DeepEqual(rm, []float32{7, 8}) {
				t.Fatalf("%s: buffer %v, want its slot's values [7 8]", cfg.Name, rm)
			}
		}
		if reflect.DeepEqual(w, []float32{1, 2}) {
			t.Fatalf("%s: the parameter did not move", cfg.Name)
		}
		// The slot may be the buffer itself (one process): nothing changes.
		ps[1].Grad = rm
		o.Step(ps, 0.1)
		if !reflect.DeepEqual(rm, []float32{7, 8}) {
			t.Fatalf("%s: buffer %v after a step with itself as its slot", cfg.Name, rm)
		}
	}
}
