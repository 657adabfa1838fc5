// Package balance sizes each rank's share of the global batch by its
// measured speed, so that in synchronous data parallelism a slow rank (an
// older GPU, a shared node, a throttled card) stops setting the pace.
//
// # How it works
//
// The global batch stays fixed. A [Planner] holds one weight per rank
// (equal at the start); [Sizes] turns the weights into whole sample counts
// that add up to the batch (largest remainder, deterministic). Every few
// steps each rank reports how many seconds its computation took for how
// many samples (all ranks see the same gathered numbers); [Planner.Replan]
// moves the weights towards the ranks' speeds (samples per second) with
// exponential smoothing, and changes them only when some rank's share would
// move by more than the hysteresis, so that shares do not oscillate.
// Optional caps bound a rank's share (what fits its free memory).
//
// Because every rank runs the same deterministic planner on the same
// numbers, they all agree on the shares without further communication.
// The training loop weights each rank's gradient by its sample count, so
// the update is the same as one process's with the global batch whatever
// the shares.
//
// Modes: "off" (equal shares), "static" (measure during the first period,
// then keep the shares), "adaptive" (re-plan every period).
//
// # Example
//
//	p, _ := balance.New(balance.Adaptive, 2)
//	sizes := make([]int, 2)
//	balance.Sizes(128, p.Weights(), nil, sizes) // [64 64]
//	p.Replan([]float64{1.0, 2.0}, []float64{640, 640}, nil) // rank 1 is half as fast
//	balance.Sizes(128, p.Weights(), nil, sizes) // moves towards [85 43]
//
// # Errors
//
// New rejects unknown modes and fewer than one rank; Replan ignores ranks
// that report no samples or no time (their weight stays).
package balance

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Mode selects the balancing policy.
type Mode string

// The modes.
const (
	Off      Mode = "off"
	Static   Mode = "static"
	Adaptive Mode = "adaptive"
)

// Modes lists the valid modes.
var Modes = []Mode{Off, Static, Adaptive}

// ParseMode checks a --balance value.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("--balance %q is not a mode (valid: off, static, adaptive)", s)
}

// Planner decides the ranks' weights.
type Planner struct {
	Mode Mode
	// Smoothing is the weight of the new measurement (0..1]; default 0.5.
	Smoothing float64
	// Hysteresis: the weights change only if some rank's share would move by
	// more than this fraction of the batch; default 0.02.
	Hysteresis float64
	// MinShare is the smallest share a rank keeps (so that it is still
	// measured); default 0.02.
	MinShare float64

	weights []float64
	frozen  bool // static mode after its one plan
	planned bool // a measurement has been taken
}

// New returns a planner for ranks ranks, with equal weights.
func New(mode Mode, ranks int) (*Planner, error) {
	if _, err := ParseMode(string(mode)); err != nil {
		return nil, err
	}
	if ranks < 1 {
		return nil, fmt.Errorf("balance: %d ranks", ranks)
	}
	w := make([]float64, ranks)
	for i := range w {
		w[i] = 1 / float64(ranks)
	}
	return &Planner{Mode: mode, Smoothing: 0.5, Hysteresis: 0.02, MinShare: 0.02, weights: w}, nil
}

// Weights are the current shares (they add up to 1).
func (p *Planner) Weights() []float64 { return p.weights }

// SetWeights replaces the weights (normalised), e.g. from a checkpoint.
func (p *Planner) SetWeights(w []float64) error {
	if len(w) != len(p.weights) {
		return fmt.Errorf("balance: %d weights for %d ranks", len(w), len(p.weights))
	}
	var sum float64
	for _, v := range w {
		if !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("balance: weight %v is not positive", v)
		}
		sum += v
	}
	for i, v := range w {
		p.weights[i] = v / sum
	}
	return nil
}

// Freeze keeps the current weights: later Replan calls change nothing.
func (p *Planner) Freeze() { p.frozen = true }

// Replan takes each rank's compute seconds and samples over the last
// period and, by the mode, moves the weights towards the ranks' speeds.
// caps, if not nil, bounds each rank's weight (a fraction of the batch).
// It returns whether the weights changed and why (for the log).
func (p *Planner) Replan(seconds, samples, caps []float64) (bool, string) {
	if p.Mode == Off || p.frozen || len(seconds) != len(p.weights) || len(samples) != len(p.weights) {
		return false, ""
	}
	n := len(p.weights)
	speed := make([]float64, n)
	var total float64
	for i := range speed {
		if seconds[i] > 0 && samples[i] > 0 {
			speed[i] = samples[i] / seconds[i]
		} else {
			speed[i] = math.NaN()
		}
	}
	// Ranks without a measurement keep their share of the speed total.
	var known, knownW float64
	for i, s := range speed {
		if !math.IsNaN(s) {
			known += s
			knownW += p.weights[i]
		}
	}
	if known == 0 {
		return false, ""
	}
	target := make([]float64, n)
	for i, s := range speed {
		if math.IsNaN(s) {
			target[i] = p.weights[i]
		} else {
			target[i] = s / known * knownW
		}
		total += target[i]
	}
	// The first plan takes the measurement as it is: the equal start is a
	// guess, not an estimate worth averaging with.
	alpha := p.Smoothing
	if !p.planned {
		alpha = 1
	}
	p.planned = true
	next := make([]float64, n)
	for i := range next {
		next[i] = (1-alpha)*p.weights[i] + alpha*target[i]/total
	}
	p.clamp(next, caps)
	moved := 0.0
	for i := range next {
		moved = math.Max(moved, math.Abs(next[i]-p.weights[i]))
	}
	if p.Mode == Static {
		p.frozen = true
	}
	if moved <= p.Hysteresis {
		return false, ""
	}
	parts := make([]string, n)
	for i := range speed {
		parts[i] = fmt.Sprintf("rank %d %.0f samples/s", i, speed[i])
	}
	copy(p.weights, next)
	return true, "measured " + strings.Join(parts, ", ")
}

// clamp applies MinShare, then the caps by water-filling: capped ranks
// keep their cap and the rest of the batch is shared among the others in
// proportion to their weights.
func (p *Planner) clamp(w, caps []float64) {
	var sum float64
	for i := range w {
		w[i] = math.Max(w[i], p.MinShare)
		sum += w[i]
	}
	for i := range w {
		w[i] /= sum
	}
	if caps == nil {
		return
	}
	capped := make([]bool, len(w))
	for iter := 0; iter < len(w); iter++ {
		free, rest := 1.0, 0.0
		for i := range w {
			if capped[i] {
				free -= w[i]
			} else {
				rest += w[i]
			}
		}
		changed := false
		for i := range w {
			if capped[i] || rest == 0 {
				continue
			}
			w[i] = w[i] / rest * free
			if caps[i] > 0 && w[i] > caps[i] {
				w[i], capped[i], changed = caps[i], true, true
			}
		}
		if !changed {
			return
		}
	}
}

// Sizes splits n samples into len(weights) whole shares proportional to
// the weights (largest remainder; ties to the lower rank), bounded by
// maxSizes when given; the result adds up to n (unless the bounds make
// that impossible). dst must have len(weights) elements; no allocation.
func Sizes(n int, weights []float64, maxSizes []int, dst []int) {
	var sum float64
	for _, w := range weights {
		sum += w
	}
	given := 0
	for i, w := range weights {
		dst[i] = int(math.Floor(float64(n) * w / sum))
		if maxSizes != nil && dst[i] > maxSizes[i] {
			dst[i] = maxSizes[i]
		}
		given += dst[i]
	}
	// Hand out the rest one by one to the largest remainders (stable order).
	for given < n {
		best, bestRem := -1, math.Inf(-1)
		for i, w := range weights {
			if maxSizes != nil && dst[i] >= maxSizes[i] {
				continue
			}
			rem := float64(n)*w/sum - float64(dst[i])
			if rem > bestRem {
				best, bestRem = i, rem
			}
		}
		if best < 0 {
			return
		}
		dst[best]++
		given++
	}
}

// QuantizedSizes is Sizes in multiples of q samples (the remainder of n
// goes to the rank with the largest weight), so that shares take few
// distinct values; every rank gets at least one sample when n allows.
func QuantizedSizes(n, q int, weights []float64, dst []int) {
	if q <= 1 || n < q*len(weights) {
		Sizes(n, weights, nil, dst)
		return
	}
	Sizes(n/q, weights, nil, dst)
	big, given := 0, 0
	for i := range dst {
		dst[i] *= q
		given += dst[i]
		if weights[i] > weights[big] {
			big = i
		}
	}
	dst[big] += n - given
	for i := range dst { // nobody is starved by the rounding
		if dst[i] == 0 && dst[big] > q {
			dst[i], dst[big] = q, dst[big]-q
		}
	}
}

// Equal reports whether the weights are all the same.
func Equal(w []float64) bool {
	return !slices.ContainsFunc(w, func(v float64) bool { return math.Abs(v-w[0]) > 1e-12 })
}
