package balance

import (
	"math"
	"testing"

	"github.com/gotrain/gotrain/gpu"

	"github.com/stretchr/testify/require"
)

func TestSizesAddUpAndFollowWeights(t *testing.T) {
	dst := make([]int, 3)
	for _, tc := range []struct {
		n    int
		w    []float64
		max  []int
		want []int
	}{
		{128, []float64{1, 1, 1}, nil, []int{43, 43, 42}},
		{128, []float64{2, 1, 1}, nil, []int{64, 32, 32}},
		{10, []float64{0.5, 0.3, 0.2}, nil, []int{5, 3, 2}},
		{7, []float64{1, 1, 1}, nil, []int{3, 2, 2}},
		{2, []float64{1, 1, 1}, nil, []int{1, 1, 0}},
		{100, []float64{8, 1, 1}, []int{50, 100, 100}, []int{50, 25, 25}},
	} {
		Sizes(tc.n, tc.w, tc.max, dst)
		if tc.max == nil {
			require.Equal(t, tc.want, dst, "%d by %v", tc.n, tc.w)
		}
		sum := 0
		for i, v := range dst {
			sum += v
			if tc.max != nil {
				require.LessOrEqual(t, v, tc.max[i])
			}
		}
		require.Equal(t, tc.n, sum)
	}
	require.Zero(t, testing.AllocsPerRun(10, func() { Sizes(128, []float64{1, 2, 3}, nil, dst) }))
}

func TestAdaptiveConvergesToSpeedsWithHysteresis(t *testing.T) {
	p, err := New(Adaptive, 2)
	require.NoError(t, err)
	// Rank 1 takes twice as long per sample.
	for i := 0; i < 10; i++ {
		w := p.Weights()
		samples := []float64{1000 * w[0], 1000 * w[1]}
		secs := []float64{samples[0] / 1000, samples[1] / 500}
		p.Plan(meas(secs, samples, nil))
	}
	require.InDelta(t, 2.0/3, p.Weights()[0], 0.025, "within the hysteresis of the speeds' ratio")
	// Converged: a further identical measurement changes nothing.
	w := p.Weights()
	changed, _ := p.Plan(meas([]float64{w[0]}, []float64{w[0] * 1000}, nil)) // wrong lengths: ignored
	require.False(t, changed)
	samples := []float64{1000 * w[0], 1000 * w[1]}
	changed, _ = p.Plan(meas([]float64{samples[0] / 1000, samples[1] / 500}, samples, nil))
	require.False(t, changed, "within the hysteresis the shares stay")
	// Noise below the hysteresis does not move them either.
	changed, _ = p.Plan(meas([]float64{samples[0] / 1010, samples[1] / 495}, samples, nil))
	require.False(t, changed)
}

func TestStaticPlansOnceAndOffNever(t *testing.T) {
	p, _ := New(Static, 2)
	changed, reason := p.Plan(meas([]float64{1, 3}, []float64{100, 100}, nil))
	require.True(t, changed)
	require.Contains(t, reason, "rank 1")
	w := append([]float64(nil), p.Weights()...)
	changed, _ = p.Plan(meas([]float64{3, 1}, []float64{100, 100}, nil))
	require.False(t, changed)
	require.Equal(t, w, p.Weights())

	off, _ := New(Off, 2)
	changed, _ = off.Plan(meas([]float64{1, 3}, []float64{100, 100}, nil))
	require.False(t, changed)
	require.True(t, Equal(off.Weights()))
}

func TestCapsAndMinShare(t *testing.T) {
	p, _ := New(Adaptive, 2)
	p.Smoothing = 1
	p.Plan(meas([]float64{1, 1000}, []float64{100, 100}, []float64{0.8, 1}))
	require.InDelta(t, 0.8, p.Weights()[0], 0.03, "rank 0 is capped")
	p.Plan(meas([]float64{1, 1e9}, []float64{100, 100}, nil))
	require.GreaterOrEqual(t, p.Weights()[1], p.MinShare*0.95, "a very slow rank keeps a minimum share")
}

func TestBadInput(t *testing.T) {
	_, err := New("fast", 2)
	require.ErrorContains(t, err, "valid: off, static, adaptive")
	_, err = New(Off, 0)
	require.Error(t, err)
	p, _ := New(Adaptive, 2)
	require.Error(t, p.SetWeights([]float64{1}))
	require.Error(t, p.SetWeights([]float64{1, 0}))
	require.NoError(t, p.SetWeights([]float64{3, 1}))
	require.Equal(t, []float64{0.75, 0.25}, p.Weights())
	changed, _ := p.Plan(meas([]float64{0, 0}, []float64{0, 0}, nil))
	require.False(t, changed, "no measurement, no change")
}

// meas makes the measurements of a plan from per-rank seconds, samples and
// (optionally) share caps.
func meas(secs, samples, caps []float64) []Measurement {
	if len(secs) != len(samples) {
		return nil
	}
	ms := make([]Measurement, len(secs))
	for i := range ms {
		ms[i] = Measurement{Seconds: secs[i], Samples: samples[i]}
		if caps != nil {
			ms[i].MaxShare = caps[i]
		}
	}
	return ms
}

func TestDocExample(t *testing.T) {
	p, _ := New(Adaptive, 2)
	sizes := make([]int, 2)
	Sizes(128, p.Weights(), nil, sizes)
	require.Equal(t, []int{64, 64}, sizes)
	changed, _ := p.Plan([]Measurement{{Seconds: 1, Samples: 640}, {Seconds: 2, Samples: 640}})
	require.True(t, changed)
	Sizes(128, p.Weights(), nil, sizes)
	require.Equal(t, []int{85, 43}, sizes)
}

func TestClockRatioCorrectsTheSpeed(t *testing.T) {
	// Equal measured speeds, but rank 1's clock dropped to half its mean at
	// the end of the period: it will run at half speed.
	p, _ := New(Adaptive, 2)
	changed, _ := p.Plan([]Measurement{{Seconds: 1, Samples: 100, ClockRatio: 1}, {Seconds: 1, Samples: 100, ClockRatio: 0.5}})
	require.True(t, changed)
	require.InDelta(t, 2.0/3, p.Weights()[0], 1e-9)
	require.True(t, math.IsNaN(Measurement{Samples: 5}.Speed()), "no time, no speed")
	require.Equal(t, 50.0, Measurement{Seconds: 2, Samples: 100, ClockRatio: 0}.Speed(), "0: no correction")
}

func TestThrottlingTakesTheMeasurementWhole(t *testing.T) {
	even := []Measurement{{Seconds: 1, Samples: 100}, {Seconds: 1, Samples: 100}}
	slow := []Measurement{{Seconds: 1, Samples: 100}, {Seconds: 3, Samples: 100}}
	// Without a throttling change the new speeds are smoothed in.
	p, _ := New(Adaptive, 2)
	p.Plan(even)
	p.Plan(slow)
	require.InDelta(t, 100/(100+(100+100.0/3)/2), p.Weights()[0], 1e-9, "rank 1's speed estimate is smoothed (0.5)")
	// Rank 1's GPU starts to throttle: the plan jumps to the new speeds.
	q, _ := New(Adaptive, 2)
	q.Plan(even)
	slow[1].Slowdown = gpu.ThrottleSWThermal | gpu.ThrottleSWPowerCap
	changed, reason := q.Plan(slow)
	require.True(t, changed)
	require.InDelta(t, 0.75, q.Weights()[0], 1e-9)
	require.Contains(t, reason, "rank 1 throttled (sw_power_cap, sw_thermal)")
	// The same throttling again is no news; its end is.
	_, reason = q.Plan(slow)
	require.NotContains(t, reason, "throttled")
	slow[1].Slowdown = 0
	_, reason = q.Plan(even)
	require.Contains(t, reason, "rank 1 no longer throttled")
	require.InDelta(t, 0.5, q.Weights()[0], 1e-9, "taken whole again")
}

func TestACapBelowTheShareAlwaysApplies(t *testing.T) {
	p, _ := New(Adaptive, 2)
	changed, _ := p.Plan([]Measurement{{Seconds: 1, Samples: 60}, {Seconds: 1, Samples: 40}})
	require.True(t, changed)
	require.InDelta(t, 0.6, p.Weights()[0], 1e-9)
	// Same speeds as the shares (no move wanted), but rank 0's free memory
	// now holds only 0.59 of the batch: a move of 0.01, below the
	// hysteresis, still happens.
	changed, reason := p.Plan([]Measurement{{Seconds: 1, Samples: 60, MaxShare: 0.59}, {Seconds: 1, Samples: 40}})
	require.True(t, changed)
	require.InDelta(t, 0.59, p.Weights()[0], 1e-9)
	require.Contains(t, reason, "rank 0 capped at 0.590 by free memory")
}

// TestSmallImbalancesAreCorrected: the hysteresis is on the predicted step
// time, so a 7% longer step on one rank (a share move of under 2% of the
// batch) is still corrected, while measurement noise of a fraction of a
// percent is not.
func TestSmallImbalancesAreCorrected(t *testing.T) {
	p, _ := New(Adaptive, 2)
	p.Smoothing = 1
	require.NoError(t, p.SetWeights([]float64{2.0 / 3, 1.0 / 3}))
	// At these shares rank 1's step takes 7% longer than rank 0's.
	w := p.Weights()
	ms := []Measurement{{Seconds: w[0] / 1000, Samples: w[0]}, {Seconds: 1.07 * w[0] / 1000, Samples: w[1]}}
	changed, reason := p.Plan(ms)
	require.True(t, changed, "a 7%% imbalance is worth a re-plan")
	require.Contains(t, reason, "predicted step 4.5% shorter") // 1 - 1/1.047
	// Now balanced: predicted step times equal. Noise of 0.5% changes nothing.
	w = p.Weights()
	ms = []Measurement{{Seconds: w[0] / 1000, Samples: w[0]}, {Seconds: 1.005 * w[0] / 1000, Samples: w[1]}}
	changed, _ = p.Plan(ms)
	require.False(t, changed)
}

// TestSwitchingMustPayForItself: new shares are adopted only when the step
// time they save over the horizon exceeds what the switch costs.
func TestSwitchingMustPayForItself(t *testing.T) {
	// Rank 1 is 10% slower per sample: with equal shares its 50 samples take
	// 55 ms, against 52.4 ms for the 52.4 it should have. Over 100 steps the
	// new shares save 0.26 s.
	ms := []Measurement{{Seconds: 1, Samples: 1000}, {Seconds: 1.1, Samples: 1000}}
	for _, tc := range []struct {
		cost float64
		want bool
	}{{0, true}, {0.2, true}, {0.3, false}} {
		p, _ := New(Adaptive, 2)
		p.Batch, p.Horizon = 100, 100
		require.NoError(t, p.SetWeights([]float64{1, 1}))
		for i := range ms {
			ms[i].SwitchSeconds = 0
		}
		ms[1].SwitchSeconds = tc.cost
		changed, _ := p.Plan(ms)
		require.Equal(t, tc.want, changed, "switch cost %v s", tc.cost)
	}
}

// With Batch set the planner predicts the step from the whole sample
// counts the ranks will run: weights that round to the same counts are no
// gain, however far the weights move, and a one-sample move that shortens
// the slowest rank's step beyond the hysteresis is taken.
func TestPredictionUsesWholeSamples(t *testing.T) {
	p, _ := New(Adaptive, 2)
	p.Smoothing = 1
	p.Batch, p.Horizon = 8, 100
	// Rank 0 is 15% faster: weights 0.535/0.465, still 4 and 4 samples.
	changed, reason := p.Plan(meas([]float64{4 / 1.15, 4}, []float64{4, 4}, nil))
	require.False(t, changed, "same counts, no change: %s", reason)
	require.Equal(t, []float64{0.5, 0.5}, p.Weights())
	p.Batch = 0 // without the counts the weights' 7% gain would be taken
	changed, _ = p.Plan(meas([]float64{4 / 1.15, 4}, []float64{4, 4}, nil))
	require.True(t, changed)

	q, _ := New(Adaptive, 2)
	q.Smoothing = 1
	q.Batch = 128
	require.NoError(t, q.SetWeights([]float64{83.1, 44.9}))
	sizes := make([]int, 2)
	Sizes(128, q.Weights(), nil, sizes)
	require.Equal(t, []int{83, 45}, sizes)
	// Rank 1's 45 samples take 34.9 s, rank 0's 83 take 33.2 s: 84 and 44
	// make the step 2.2% shorter.
	changed, reason = q.Plan(meas([]float64{33.2, 34.9}, []float64{83, 45}, nil))
	require.True(t, changed)
	require.Contains(t, reason, "predicted step 2.2% shorter")
	Sizes(128, q.Weights(), nil, sizes)
	require.Equal(t, []int{84, 44}, sizes)
}
