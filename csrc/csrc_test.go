package csrc

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestShimsCoverTheKernels: every kernel of kernels.cu has a host shim
// taking as many arguments as its signature, and nothing else does.
func TestShimsCoverTheKernels(t *testing.T) {
	require.GreaterOrEqual(t, len(Kernels), 20)
	require.Len(t, shimIndex, len(Kernels))
	for _, k := range Kernels {
		i, ok := shimIndex[k]
		require.True(t, ok, "kernel %s has no shim", k)
		sig, err := Signature(k)
		require.NoError(t, err)
		require.Equal(t, len(sig), int(shimArgs(i)), "kernel %s", k)
	}
	_, err := Signature("nope")
	require.ErrorContains(t, err, `no kernel "nope"`)
}

func TestLaunchChecksArguments(t *testing.T) {
	m := Alloc(40)
	defer m.Free()
	require.NoError(t, Launch("fill", m, float32(2.5), 10))
	for _, v := range m.Float32s() {
		require.Equal(t, float32(2.5), v)
	}
	require.ErrorContains(t, Launch("fill", m, 2.5, 10), "argument 1 is a float64, want a float")
	require.ErrorContains(t, Launch("fill", m, float32(1)), "takes 3 arguments, got 2")
	require.ErrorContains(t, Launch("fill", []float32{1}, float32(1), 1), "argument 0 is a []float32, want a pointer")
	require.ErrorContains(t, Launch("fil", m, float32(1), 1), `no kernel "fil"`)
}

// TestDropoutMask: the counter-based RNG keeps about 1-p of the values,
// scaled by 1/(1-p), and gives the same mask for the same seed and stream
// and another one for another stream.
func TestDropoutMask(t *testing.T) {
	const n = 100000
	a, b, c := Alloc(4*n), Alloc(4*n), Alloc(4*n)
	defer a.Free()
	defer b.Free()
	defer c.Free()
	require.NoError(t, Launch("dropout_mask", a, n, float32(0.25), uint64(7), uint64(3)))
	require.NoError(t, Launch("dropout_mask", b, n, float32(0.25), uint64(7), uint64(3)))
	require.NoError(t, Launch("dropout_mask", c, n, float32(0.25), uint64(7), uint64(4)))
	require.Equal(t, a.Float32s(), b.Float32s())
	require.NotEqual(t, a.Float32s(), c.Float32s())
	kept := 0
	for _, v := range a.Float32s() {
		if v != 0 {
			require.InDelta(t, 1/0.75, v, 1e-6)
			kept++
		}
	}
	// Binomial: standard deviation sqrt(n·0.25·0.75) ≈ 137.
	require.InDelta(t, 0.75*n, float64(kept), 5*math.Sqrt(n*0.25*0.75))
}

// TestRoundMantissa: bfloat16 and TF32 rounding to nearest, ties to even,
// with NaN and infinity unchanged; to_bf16 stores the upper half of the
// rounded float.
func TestRoundMantissa(t *testing.T) {
	in := []float32{1, 1 + 1.0/256, 1 + 3.0/256, 1 + 1.0/2048, -2.5 - 1.0/256, 3.4e38, float32(math.Inf(-1)), float32(math.NaN()), 1e-40}
	bf16 := []float32{1, 1, 1 + 4.0/256, 1, -2.5, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 0}
	tf32 := []float32{1, 1 + 1.0/256, 1 + 3.0/256, 1, -2.5 - 1.0/256, 3.4e38, float32(math.Inf(-1)), float32(math.NaN()), 0}
	n := len(in)
	x, y, h := Alloc(4*n), Alloc(4*n), Alloc(2*n)
	defer x.Free()
	defer y.Free()
	defer h.Free()
	copy(x.Float32s(), in)
	for _, tc := range []struct {
		keep int32
		want []float32
	}{{7, bf16}, {10, tf32}} {
		require.NoError(t, Launch("round_mantissa", x, y, n, tc.keep))
		for i, w := range tc.want {
			got := y.Float32s()[i]
			switch {
			case math.IsNaN(float64(w)):
				require.True(t, math.IsNaN(float64(got)), "keep %d: %g", tc.keep, in[i])
			case tc.keep == 10 && i == 5:
				require.InEpsilon(t, w, got, 1e-3, "keep %d: %g", tc.keep, in[i])
			case in[i] == 1e-40: // subnormal: rounds within its own scale
				require.InDelta(t, 0, got, 1e-39)
			default:
				require.Equal(t, w, got, "keep %d: %g", tc.keep, in[i])
			}
		}
	}
	require.NoError(t, Launch("round_mantissa", x, y, n, int32(7)))
	require.NoError(t, Launch("to_bf16", x, h, n))
	halves := h.Uint16s()
	for i, v := range y.Float32s() {
		require.Equal(t, uint16(math.Float32bits(v)>>16), halves[i], "value %d", i)
	}
	// And back: widening is exact.
	back := Alloc(4 * n)
	defer back.Free()
	require.NoError(t, Launch("from_bf16", h, back, n))
	for i, v := range y.Float32s() {
		require.Equal(t, math.Float32bits(v), math.Float32bits(back.Float32s()[i]), "value %d", i)
	}
}
