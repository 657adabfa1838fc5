package balance

import (
	"testing"

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
		p.Replan(secs, samples, nil)
	}
	require.InDelta(t, 2.0/3, p.Weights()[0], 0.025, "within the hysteresis of the speeds' ratio")
	// Converged: a further identical measurement changes nothing.
	w := p.Weights()
	changed, _ := p.Replan([]float64{w[0]}, []float64{w[0] * 1000}, nil) // wrong lengths: ignored
	require.False(t, changed)
	samples := []float64{1000 * w[0], 1000 * w[1]}
	changed, _ = p.Replan([]float64{samples[0] / 1000, samples[1] / 500}, samples, nil)
	require.False(t, changed, "within the hysteresis the shares stay")
	// Noise below the hysteresis does not move them either.
	changed, _ = p.Replan([]float64{samples[0] / 1010, samples[1] / 495}, samples, nil)
	require.False(t, changed)
}

func TestStaticPlansOnceAndOffNever(t *testing.T) {
	p, _ := New(Static, 2)
	changed, reason := p.Replan([]float64{1, 3}, []float64{100, 100}, nil)
	require.True(t, changed)
	require.Contains(t, reason, "rank 1")
	w := append([]float64(nil), p.Weights()...)
	changed, _ = p.Replan([]float64{3, 1}, []float64{100, 100}, nil)
	require.False(t, changed)
	require.Equal(t, w, p.Weights())

	off, _ := New(Off, 2)
	changed, _ = off.Replan([]float64{1, 3}, []float64{100, 100}, nil)
	require.False(t, changed)
	require.True(t, Equal(off.Weights()))
}

func TestCapsAndMinShare(t *testing.T) {
	p, _ := New(Adaptive, 2)
	p.Smoothing = 1
	p.Replan([]float64{1, 1000}, []float64{100, 100}, []float64{0.8, 1})
	require.InDelta(t, 0.8, p.Weights()[0], 0.03, "rank 0 is capped")
	p.Replan([]float64{1, 1e9}, []float64{100, 100}, nil)
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
	changed, _ := p.Replan([]float64{0, 0}, []float64{0, 0}, nil)
	require.False(t, changed, "no measurement, no change")
}

func TestQuantizedSizes(t *testing.T) {
	dst := make([]int, 2)
	for _, tc := range []struct {
		n, q int
		w    []float64
		want []int
	}{
		{128, 8, []float64{0.7, 0.3}, []int{88, 40}},
		{130, 8, []float64{0.3, 0.7}, []int{40, 90}},
		{128, 8, []float64{0.99, 0.01}, []int{120, 8}},
		{10, 8, []float64{0.5, 0.5}, []int{5, 5}},
	} {
		QuantizedSizes(tc.n, tc.q, tc.w, dst)
		require.Equal(t, tc.want, dst, "%+v", tc)
	}
}
