package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWideGatherScatter: GatherWide lays each sample's rows where the
// doc says, with zeros between the samples, and ScatterWide brings them
// back; both give the Go fallback's values and write nothing outside
// their rows (NaN guards before and after each buffer stay, and so do
// the values dst held where it is not written), for plane widths below,
// at and above the kernels' vector of 8.
func TestWideGatherScatter(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const guard = 9
	nan := float32(math.NaN())
	for _, tc := range []struct{ c, h, w, ns int }{{3, 7, 7, 8}, {2, 5, 3, 1}, {1, 4, 8, 3}, {2, 3, 11, 5}, {4, 2, 1, 2}} {
		t.Run(fmt.Sprintf("%+v", tc), func(t *testing.T) {
			ww := WideW(tc.w, tc.ns)
			np, nw := tc.ns*tc.c*tc.h*tc.w, tc.c*tc.h*ww
			planes := make([]float32, np)
			for i := range planes {
				planes[i] = float32(r.NormFloat64())
			}
			guarded := func(n int) []float32 {
				b := make([]float32, n+2*guard)
				for i := range b {
					b[i] = nan
				}
				return b
			}
			wide, goWide := guarded(nw), guarded(nw)
			GatherWide(wide[guard:guard+nw], planes, tc.c, tc.h, tc.w, tc.ns)
			goGatherWide(goWide[guard:guard+nw], planes, tc.c, tc.h, tc.w, tc.ns)
			for i := range wide {
				require.Equal(t, math.Float32bits(goWide[i]), math.Float32bits(wide[i]), "gathered value %d", i-guard)
			}
			for c := 0; c < tc.c; c++ {
				for y := 0; y < tc.h; y++ {
					for x := 0; x < ww; x++ {
						s, col := x/(tc.w+1), x%(tc.w+1)
						want := float32(0)
						if col < tc.w {
							want = planes[((s*tc.c+c)*tc.h+y)*tc.w+col]
						}
						require.Equal(t, want, wide[guard+(c*tc.h+y)*ww+x], "channel %d row %d column %d", c, y, x)
					}
				}
			}
			for _, g := range [][]float32{wide[:guard], wide[guard+nw:]} {
				for _, v := range g {
					require.True(t, math.IsNaN(float64(v)), "GatherWide wrote outside dst")
				}
			}
			back, goBack := guarded(np), guarded(np)
			ScatterWide(back[guard:guard+np], wide[guard:guard+nw], tc.c, tc.h, tc.w, tc.ns)
			goScatterWide(goBack[guard:guard+np], wide[guard:guard+nw], tc.c, tc.h, tc.w, tc.ns)
			require.Equal(t, planes, back[guard:guard+np], "ScatterWide(GatherWide(x)) is x")
			for i := range back {
				require.Equal(t, math.Float32bits(goBack[i]), math.Float32bits(back[i]), "scattered value %d", i-guard)
			}
		})
	}
	require.Panics(t, func() { GatherWide(make([]float32, 9), make([]float32, 8), 1, 2, 2, 2) }, "dst too short")
	require.Panics(t, func() { GatherWide(make([]float32, 10), make([]float32, 7), 1, 2, 2, 2) }, "src too short")
	require.Panics(t, func() { ScatterWide(make([]float32, 7), make([]float32, 10), 1, 2, 2, 2) }, "too short")
}
