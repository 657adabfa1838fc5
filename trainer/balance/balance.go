// Package balance sizes each rank's share of the global batch by its
// measured speed, so that in synchronous data parallelism a slow rank (an
// older GPU, a shared node, a throttled card) stops setting the pace.
//
// # How it works
//
// The global batch stays fixed. A [Planner] holds one weight per rank
// (equal at the start); [Sizes] turns the weights into whole sample counts
// that add up to the batch (largest remainder, deterministic). Every few
// steps each rank reports a [Measurement]: how many seconds its computation
// took for how many samples, and what its device says: the share of the
// batch that fits its free memory (MaxShare), its clock now against its
// mean over the period (ClockRatio), and its NVML slowdown reasons
// (Slowdown: power cap, thermal, hardware slowdown). All ranks see the
// same gathered list. [Planner.Plan] keeps a speed estimate per rank (the
// clock-corrected samples per second, averaged over the periods), makes
// the weights proportional to the estimates, and adopts them only when
// they pay: the step they predict (the slowest rank's weight over speed)
// must be shorter by more than the hysteresis, and the time saved over
// the next Horizon steps must exceed what switching costs (SwitchSeconds:
// a rank's first step at a new batch size allocates its buffers, several
// times a usual step). So measurement noise does not make shares
// oscillate. A change in a device's throttling starts its estimate afresh
// (the old speeds no longer hold). MaxShare caps a rank's share by
// water-filling: the capped rank keeps its cap and the others share the
// rest by their speeds; a share above its cap is always lowered.
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
//	p.Plan([]balance.Measurement{{Seconds: 1, Samples: 640}, {Seconds: 2, Samples: 640}}) // rank 1 is half as fast
//	balance.Sizes(128, p.Weights(), nil, sizes) // [85 43]
//
// # Errors
//
// New rejects unknown modes and fewer than one rank; Plan ignores ranks
// that report no samples or no time (their weight stays) and a list of
// the wrong length.
package balance

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/gotrain/gotrain/gpu"
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
	// Smoothing is the weight of a new measurement in each rank's speed
	// estimate (0..1]: the estimate is the mean of the measurements until
	// there are 1/Smoothing of them, then an exponential moving average
	// with this weight; default 0.1.
	Smoothing float64
	// Hysteresis: the weights change only if the new ones would shorten
	// the step, predicted from the speed estimates (and, with Batch, the
	// whole sample counts), by more than this fraction; default 0.02.
	Hysteresis float64
	// MinShare is the smallest share a rank keeps (so that it is still
	// measured); default 0.02.
	MinShare float64
	// Batch is the global batch in samples, and Horizon the steps over
	// which new shares must pay for themselves: adopting them costs the
	// largest SwitchSeconds the ranks report (a rank's first step at a new
	// batch size allocates its buffers), so they are adopted only when the
	// predicted step time saved over Horizon steps exceeds that cost. 0
	// (either): no cost test.
	Batch, Horizon int

	weights  []float64
	speed    []float64 // each rank's speed estimate (samples/s); NaN: none yet
	count    []int     // measurements in each rank's estimate
	frozen   bool      // static mode after its one plan
	slowdown []uint64  // each rank's Slowdown at the last plan
	sizes    []int     // stepTime's scratch
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
	sp := make([]float64, ranks)
	for i := range sp {
		sp[i] = math.NaN()
	}
	return &Planner{Mode: mode, Smoothing: 0.1, Hysteresis: 0.02, MinShare: 0.02, weights: w, speed: sp, count: make([]int, ranks), slowdown: make([]uint64, ranks)}, nil
}

// Weights are the current shares (they add up to 1).
func (p *Planner) Weights() []float64 { return p.weights }

// SetWeights replaces the weights (normalised), e.g. from a checkpoint.
// Weights that already add up to 1 within rounding are kept bit for bit,
// so that a resumed run splits its batches exactly as before.
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
	if math.Abs(sum-1) < 1e-12 {
		sum = 1
	}
	for i, v := range w {
		p.weights[i] = v / sum
	}
	return nil
}

// Freeze keeps the current weights: later Plan calls change nothing.
func (p *Planner) Freeze() { p.frozen = true }

// Measurement is one rank's report to a re-plan: what it computed over the
// last period and what its device says about the next one. Every rank
// contributes one; all ranks see the same gathered list.
type Measurement struct {
	// Seconds of computation (forward and backward, program compilation
	// and communication excluded) for Samples samples.
	Seconds, Samples float64
	// MaxShare bounds the rank's share of the global batch (the samples
	// that fit its free memory, as a fraction of the batch); 0: no bound.
	MaxShare float64
	// ClockRatio corrects the measured speed for a clock change: the
	// device's compute clock now over its mean during the period (a GPU
	// that began to throttle near the end of the period will be slower
	// than measured). 0 means no correction (CPUs, or unknown).
	ClockRatio float64
	// Slowdown is the device's active slowdown reasons, NVML throttle bits
	// within gpu.SlowdownReasons (power cap, thermal, hardware slowdown);
	// 0 on CPUs. When it changes the planner takes the new measurement
	// whole instead of smoothing it into the old speeds, since those no
	// longer hold.
	Slowdown uint64
	// SwitchSeconds is what the rank's last change of share cost beyond
	// its usual step (the first run at a new batch size); 0: unknown.
	SwitchSeconds float64
}

// Speed is the measurement's samples per second, corrected by the clock
// ratio; NaN when the rank reported no samples or no time.
func (m Measurement) Speed() float64 {
	if !(m.Seconds > 0) || !(m.Samples > 0) {
		return math.NaN()
	}
	s := m.Samples / m.Seconds
	if m.ClockRatio > 0 && !math.IsInf(m.ClockRatio, 0) {
		s *= m.ClockRatio
	}
	return s
}

// Plan takes every rank's measurement over the last period and, by the
// mode, moves the weights to the ranks' estimated speeds, bounded by their
// MaxShare. Each rank's speed estimate is smoothed over the periods (see
// Smoothing; it starts afresh when the device's throttling changes); the
// new weights are proportional to the estimates, and
// are adopted when they would shorten the step by more than the
// hysteresis (the step takes as long as its slowest rank: the largest
// weight over speed) and the time saved over Horizon steps exceeds the
// cost of switching, or when a rank's share no longer fits its MaxShare.
// It returns whether the weights changed and why (for the log and the
// metrics file); when they did not change the reason is empty, unless a
// device's throttling changed, which is always worth reporting.
func (p *Planner) Plan(ms []Measurement) (bool, string) {
	n := len(p.weights)
	if p.Mode == Off || p.frozen || len(ms) != n {
		return false, ""
	}
	var caps []float64
	var notes []string
	measured := false
	switchCost := 0.0
	for i, m := range ms {
		if m.SwitchSeconds > switchCost && !math.IsInf(m.SwitchSeconds, 0) {
			switchCost = m.SwitchSeconds
		}
		if m.MaxShare > 0 && m.MaxShare < 1 {
			if caps == nil {
				caps = make([]float64, n)
			}
			caps[i] = m.MaxShare
		}
		if m.Slowdown != p.slowdown[i] {
			p.count[i] = 0 // a new regime: start the estimate afresh
			if m.Slowdown == 0 {
				notes = append(notes, fmt.Sprintf("rank %d no longer throttled", i))
			} else {
				notes = append(notes, fmt.Sprintf("rank %d throttled (%s)", i, strings.Join(gpu.DecodeThrottle(m.Slowdown), ", ")))
			}
			p.slowdown[i] = m.Slowdown
		}
		s := m.Speed()
		if math.IsNaN(s) || math.IsInf(s, 0) {
			continue // keeps its estimate (and, without one, its weight)
		}
		measured = true
		// The mean of the measurements so far, until there are 1/Smoothing
		// of them; an exponential moving average from then on.
		p.count[i]++
		alpha := math.Max(1/float64(p.count[i]), p.Smoothing)
		if alpha >= 1 || math.IsNaN(p.speed[i]) {
			p.speed[i] = s
		} else {
			p.speed[i] = (1-alpha)*p.speed[i] + alpha*s
		}
	}
	throttling := len(notes) > 0
	if !measured && !throttling {
		return false, ""
	}
	// Ranks without an estimate keep their weight; the others share the
	// rest of the batch in proportion to their speeds.
	var known, knownW float64
	for i, s := range p.speed {
		if !math.IsNaN(s) {
			known += s
			knownW += p.weights[i]
		}
	}
	next := make([]float64, n)
	for i, s := range p.speed {
		if math.IsNaN(s) || known == 0 {
			next[i] = p.weights[i]
		} else {
			next[i] = s / known * knownW
		}
	}
	p.clamp(next, caps)
	overCap := false
	for i := range next {
		if caps != nil && caps[i] > 0 {
			overCap = overCap || p.weights[i] > caps[i]+1e-12 // the current share no longer fits
			if next[i] >= caps[i]-1e-9 {
				notes = append(notes, fmt.Sprintf("rank %d capped at %.3f by free memory", i, caps[i]))
			}
		}
	}
	if p.Mode == Static {
		p.frozen = true
	}
	cur, nt := p.stepTime(p.weights), p.stepTime(next)
	gain := cur/nt - 1
	pays := p.Batch <= 0 || p.Horizon <= 0 || (cur-nt)*float64(p.Batch)*float64(p.Horizon) > switchCost
	if !(gain > p.Hysteresis && pays) && !overCap {
		if throttling { // worth a log line even though the shares stay
			return false, strings.Join(notes, "; ") + "; shares unchanged"
		}
		return false, ""
	}
	parts := make([]string, n)
	for i := range ms {
		parts[i] = fmt.Sprintf("rank %d %.0f samples/s", i, ms[i].Speed())
	}
	copy(p.weights, next)
	// A rank's speed depends somewhat on its share (batch-size efficiency,
	// what it shares with the others): measurements at the old shares
	// count for less from now on.
	for i := range p.count {
		p.count[i] = min(p.count[i], 2)
	}
	reason := "measured " + strings.Join(parts, ", ")
	if gain > 0 && !math.IsInf(gain, 0) {
		reason += fmt.Sprintf("; predicted step %.1f%% shorter", 100*(1-nt/cur))
	}
	return true, strings.Join(append([]string{reason}, notes...), "; ")
}

// stepTime predicts the time of a step with weights w from the speed
// estimates, in seconds per sample of the global batch: the slowest rank's
// share over its speed. With Batch set the shares are the whole sample
// counts the ranks will run (Sizes), so that a move of one sample, which
// can shorten the slowest rank's step by a few percent, is predicted as
// such, and weights that round to the same counts predict no gain. Ranks
// without an estimate are left out.
func (p *Planner) stepTime(w []float64) float64 {
	if p.Batch > 0 {
		if len(p.sizes) != len(w) {
			p.sizes = make([]int, len(w))
		}
		Sizes(p.Batch, w, nil, p.sizes)
	}
	t := 0.0
	for i, s := range p.speed {
		share := w[i]
		if p.Batch > 0 {
			share = float64(p.sizes[i]) / float64(p.Batch)
		}
		if s > 0 {
			t = math.Max(t, share/s)
		}
	}
	return t
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

// Equal reports whether the weights are all the same.
func Equal(w []float64) bool {
	return !slices.ContainsFunc(w, func(v float64) bool { return math.Abs(v-w[0]) > 1e-12 })
}
