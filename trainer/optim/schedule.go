package optim

import (
	"fmt"
	"math"
	"strings"
)

// Schedule is a learning-rate schedule: LR(step) gives the learning rate to
// pass to Optimizer.Step for a 0-based step number.
type Schedule struct {
	// Kind is "constant", "step" or "cosine" (case-insensitive).
	Kind string
	// BaseLR is the peak learning rate, reached at the end of warm-up.
	BaseLR float64
	// WarmupSteps, if > 0, prepends a linear warm-up for any kind:
	// LR(step) = BaseLR*(step+1)/WarmupSteps for step < WarmupSteps.
	WarmupSteps int64
	// StepSize and Gamma configure "step": LR = BaseLR*Gamma^floor(step/StepSize).
	StepSize int64
	Gamma    float64
	// TotalSteps and MinLR configure "cosine": anneal from BaseLR at step
	// WarmupSteps to MinLR at step TotalSteps, then stay at MinLR.
	TotalSteps int64
	MinLR      float64
}

// Schedule kinds.
const (
	Constant  = "constant"
	StepDecay = "step"
	Cosine    = "cosine"
)

var validKinds = []string{Constant, StepDecay, Cosine}

// Kinds returns the schedule kinds Validate accepts.
func Kinds() []string { return append([]string(nil), validKinds...) }

func (s Schedule) kind() string { return strings.ToLower(strings.TrimSpace(s.Kind)) }

// Validate reports whether the schedule is usable: a known Kind (the error
// lists the valid ones), BaseLR finite and >= 0, WarmupSteps >= 0; for "step"
// StepSize > 0 and 0 < Gamma <= 1; for "cosine" TotalSteps > WarmupSteps and
// 0 <= MinLR <= BaseLR. Fields the kind does not use are not checked.
func (s Schedule) Validate() error {
	k := s.kind()
	switch k {
	case Constant, StepDecay, Cosine:
	default:
		return fmt.Errorf("optim: unknown schedule kind %q (valid: %s)", s.Kind, strings.Join(validKinds, ", "))
	}
	if !(s.BaseLR >= 0) || math.IsInf(s.BaseLR, 0) {
		return fmt.Errorf("optim: %s schedule: invalid base learning rate %v: must be finite and >= 0", k, s.BaseLR)
	}
	if s.WarmupSteps < 0 {
		return fmt.Errorf("optim: %s schedule: invalid warm-up steps %d: must be >= 0", k, s.WarmupSteps)
	}
	switch k {
	case StepDecay:
		if s.StepSize <= 0 {
			return fmt.Errorf("optim: step schedule: step size must be > 0, got %d", s.StepSize)
		}
		if !(s.Gamma > 0 && s.Gamma <= 1) {
			return fmt.Errorf("optim: step schedule: gamma must be in (0, 1], got %v", s.Gamma)
		}
	case Cosine:
		if s.TotalSteps <= s.WarmupSteps {
			return fmt.Errorf("optim: cosine schedule: total steps (%d) must exceed warm-up steps (%d)", s.TotalSteps, s.WarmupSteps)
		}
		if !(s.MinLR >= 0 && s.MinLR <= s.BaseLR) {
			return fmt.Errorf("optim: cosine schedule: min learning rate %v must be in [0, base learning rate %v]", s.MinLR, s.BaseLR)
		}
	}
	return nil
}

// LR returns the learning rate for step (counting from 0; negative steps are
// treated as 0). See the package documentation for the formulas. LR does not
// validate: for a schedule that fails Validate it returns some value without
// panicking (an unknown kind behaves as "constant").
func (s Schedule) LR(step int64) float64 {
	if step < 0 {
		step = 0
	}
	if step < s.WarmupSteps {
		return s.BaseLR * float64(step+1) / float64(s.WarmupSteps)
	}
	switch s.kind() {
	case StepDecay:
		if s.StepSize <= 0 {
			return s.BaseLR
		}
		return s.BaseLR * math.Pow(s.Gamma, float64(step/s.StepSize))
	case Cosine:
		t, T := step-s.WarmupSteps, s.TotalSteps-s.WarmupSteps
		if T <= 0 || t >= T {
			return s.MinLR
		}
		return s.MinLR + (s.BaseLR-s.MinLR)*(1+math.Cos(math.Pi*float64(t)/float64(T)))/2
	default:
		return s.BaseLR
	}
}
