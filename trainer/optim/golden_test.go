package optim

import (
	"encoding/json"
	"math"
	"os"
	"strconv"
	"testing"
)

// golden is testdata/golden.json, written by testdata/gen_golden.py from
// PyTorch.
type golden struct {
	TorchVersion string `json:"torch_version"`
	Params       []struct {
		Name string    `json:"name"`
		Data []float32 `json:"data"`
	} `json:"params"`
	Grads      [][][]float32 `json:"grads"` // [step][param][i]
	Optimizers []struct {
		Name   string `json:"name"`
		Config struct {
			Name        string  `json:"name"`
			Momentum    float64 `json:"momentum"`
			Dampening   float64 `json:"dampening"`
			Nesterov    bool    `json:"nesterov"`
			WeightDecay float64 `json:"weight_decay"`
			Beta1       float64 `json:"beta1"`
			Beta2       float64 `json:"beta2"`
			Eps         float64 `json:"eps"`
		} `json:"config"`
		LRs      []float64            `json:"lrs"`
		Expected [][][]float32        `json:"expected"` // params after each step
		State    map[string][]float32 `json:"state"`
		Step     int64                `json:"step"`
	} `json:"optimizers"`
	Schedules []struct {
		Name     string `json:"name"`
		Schedule struct {
			Kind        string  `json:"kind"`
			BaseLR      float64 `json:"base_lr"`
			WarmupSteps int64   `json:"warmup_steps"`
			StepSize    int64   `json:"step_size"`
			Gamma       float64 `json:"gamma"`
			TotalSteps  int64   `json:"total_steps"`
			MinLR       float64 `json:"min_lr"`
		} `json:"schedule"`
		LRs []float64 `json:"lrs"`
	} `json:"schedules"`
	Clip []struct {
		Name      string      `json:"name"`
		MaxNorm   float64     `json:"max_norm"`
		Grads     [][]float32 `json:"grads"`
		TotalNorm float64     `json:"total_norm"`
		Clipped   [][]float32 `json:"clipped"`
	} `json:"clip"`
}

func loadGolden(t *testing.T) *golden {
	t.Helper()
	raw, err := os.ReadFile("testdata/golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatalf("testdata/golden.json: %v", err)
	}
	if len(g.Optimizers) == 0 || len(g.Schedules) == 0 || len(g.Clip) == 0 || len(g.Grads) == 0 {
		t.Fatal("testdata/golden.json: missing sections")
	}
	return &g
}

// closeTo reports whether got agrees with want within rel relative error.
func closeTo(got, want, rel float64) bool {
	if got == want {
		return true
	}
	return math.Abs(got-want) <= rel*math.Abs(want)
}

// checkSlice compares got with want (relative 1e-6) and returns how many
// values are bit-identical.
func checkSlice(t *testing.T, what string, got, want []float32) (exact int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: length %d, want %d", what, len(got), len(want))
	}
	bad := 0
	for i := range got {
		if got[i] == want[i] {
			exact++
			continue
		}
		if !closeTo(float64(got[i]), float64(want[i]), 1e-6) {
			if bad < 5 {
				t.Errorf("%s[%d] = %.9g, torch %.9g", what, i, got[i], want[i])
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values differ from torch by more than 1e-6 relative", what, bad, len(got))
	}
	return exact
}

func TestGoldenOptimizers(t *testing.T) {
	g := loadGolden(t)
	for _, c := range g.Optimizers {
		t.Run(c.Name, func(t *testing.T) {
			cfg := Config{
				Name: c.Config.Name, Momentum: c.Config.Momentum, Dampening: c.Config.Dampening,
				Nesterov: c.Config.Nesterov, WeightDecay: c.Config.WeightDecay,
				Beta1: c.Config.Beta1, Beta2: c.Config.Beta2, Eps: c.Config.Eps,
			}
			params := make([]Param, len(g.Params))
			for i, p := range g.Params {
				params[i] = Param{Name: p.Name, Data: append([]float32(nil), p.Data...), Grad: make([]float32, len(p.Data))}
			}
			opt, err := New(cfg, params)
			if err != nil {
				t.Fatal(err)
			}
			exact, total := 0, 0
			for s := range c.Expected {
				for i := range params {
					copy(params[i].Grad, g.Grads[s][i])
				}
				opt.Step(params, c.LRs[s])
				for i := range params {
					exact += checkSlice(t, params[i].Name+" after step "+strconv.Itoa(s+1), params[i].Data, c.Expected[s][i])
					total += len(params[i].Data)
				}
			}
			tensors, step := opt.State()
			if step != c.Step {
				t.Errorf("step count %d, torch %d", step, c.Step)
			}
			if len(tensors) != len(c.State) {
				t.Errorf("state has %d tensors %v, torch has %d", len(tensors), keys(tensors), len(c.State))
			}
			for name, want := range c.State {
				got, ok := tensors[name]
				if !ok {
					t.Errorf("state tensor %q missing; have %v", name, keys(tensors))
					continue
				}
				exact += checkSlice(t, "state "+name, got, want)
				total += len(want)
			}
			t.Logf("%d of %d values bit-identical to torch %s", exact, total, g.TorchVersion)
		})
	}
}

func TestGoldenSchedules(t *testing.T) {
	g := loadGolden(t)
	for _, c := range g.Schedules {
		t.Run(c.Name, func(t *testing.T) {
			s := Schedule{
				Kind: c.Schedule.Kind, BaseLR: c.Schedule.BaseLR, WarmupSteps: c.Schedule.WarmupSteps,
				StepSize: c.Schedule.StepSize, Gamma: c.Schedule.Gamma,
				TotalSteps: c.Schedule.TotalSteps, MinLR: c.Schedule.MinLR,
			}
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			for step, want := range c.LRs {
				// torch's schedulers update the lr recursively, so allow
				// float64 rounding noise.
				if got := s.LR(int64(step)); !closeTo(got, want, 1e-9) {
					t.Errorf("LR(%d) = %.17g, torch %.17g", step, got, want)
				}
			}
		})
	}
}

func TestGoldenClipGradNorm(t *testing.T) {
	g := loadGolden(t)
	for _, c := range g.Clip {
		t.Run(c.Name, func(t *testing.T) {
			params := make([]Param, len(c.Grads))
			for i, gr := range c.Grads {
				params[i] = Param{Name: g.Params[i].Name, Data: make([]float32, len(gr)), Grad: append([]float32(nil), gr...)}
			}
			norm := ClipGradNorm(params, c.MaxNorm)
			if !closeTo(norm, c.TotalNorm, 1e-6) {
				t.Errorf("norm %.9g, torch %.9g", norm, c.TotalNorm)
			}
			for i := range params {
				checkSlice(t, params[i].Name+".grad", params[i].Grad, c.Clipped[i])
			}
		})
	}
}

func keys(m map[string][]float32) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}
