package executor

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/optim"
)

// The device clips as trainer/optim.ClipGradNorm does on the host: the
// same norm (to float64 rounding: the sums run in another order), the
// same factor and so the same gradients, for gradients above and within
// the limit, longer and shorter than the partial sums; a NaN leaves them
// alone and shows in the norm.
func TestClipMatchesTheHost(t *testing.T) {
	for _, mk := range devices {
		dev := mk(t)
		r := rand.New(rand.NewPCG(5, 6))
		sizes := []int{3, 10_000, 1, 7_919}
		for _, maxNorm := range []float64{0.5, 1e9, 0} {
			host := make([]optim.Param, len(sizes))
			grads := make([]Tensor, len(sizes))
			for i, n := range sizes {
				g := make([]float32, n)
				for j := range g {
					g[j] = float32(r.NormFloat64() * 0.01)
				}
				host[i] = optim.Param{Data: make([]float32, n), Grad: g}
				b, err := dev.Alloc(n)
				require.NoError(t, err)
				require.NoError(t, dev.Write(b, g))
				grads[i] = Tensor{Buf: b, Shape: []int{n}}
			}
			c, err := NewClipper(dev, len(grads))
			require.NoError(t, err)
			want := optim.ClipGradNorm(host, maxNorm)
			got, err := c.Clip(grads, maxNorm)
			require.NoError(t, err)
			require.InDelta(t, want, got, 1e-12*want, "%s: the norm", dev.Name())
			for i, g := range grads {
				out := make([]float32, sizes[i])
				require.NoError(t, dev.Read(out, g.Buf))
				require.Equal(t, host[i].Grad, out, "%s, max norm %g: gradient %d", dev.Name(), maxNorm, i)
			}
			if maxNorm == 0.5 {
				require.Greater(t, want, 0.5, "the case clips")
			}

			// A NaN: the norm says so and nothing is scaled.
			before := make([]float32, sizes[1])
			require.NoError(t, dev.Read(before, grads[1].Buf))
			bad := slices.Clone(before)
			bad[17] = float32(math.NaN())
			require.NoError(t, dev.Write(grads[1].Buf, bad))
			norm, err := c.Clip(grads, 1e-9)
			require.NoError(t, err)
			require.True(t, math.IsNaN(norm))
			out := make([]float32, sizes[0])
			require.NoError(t, dev.Read(out, grads[0].Buf))
			require.Equal(t, host[0].Grad, out, "not scaled")

			_, err = c.Norm(append(grads, grads...))
			require.ErrorContains(t, err, "gradients for a clipper of")
			c.Free()
			for _, g := range grads {
				dev.Free(g.Buf)
			}
		}
	}
}
