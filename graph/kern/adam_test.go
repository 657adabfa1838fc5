package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAdamNativeEqualsGo: the native Adam update gives the Go code's bits
// for parameters, gradients and moments across magnitudes (moments from
// zero on, as at the first step, and from earlier steps), with and without
// weight decay, over lengths that leave a scalar tail, and each value is
// the float64 formula's within float32 rounding (of its terms, for m).
func TestAdamNativeEqualsGo(t *testing.T) {
	if !Available() {
		t.Skip("native kernels not available: " + Why())
	}
	r := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{1, 7, 8, 9, 100, 1027} {
		for _, wd := range []float32{0, 5e-4} {
			t.Run(fmt.Sprintf("n%d_wd%g", n, wd), func(t *testing.T) {
				p, g, m, v := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
				for i := range p {
					p[i] = float32(r.NormFloat64())
					g[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(9)-6)))
					if i%3 != 0 {
						m[i] = float32(r.NormFloat64() * 1e-2)
						v[i] = float32(r.Float64() * 1e-3)
					}
				}
				a := Adam{B1: 0.9, B2: 0.999, C1: float32(1 - 0.9), C2: float32(1 - 0.999), NegStep: float32(-1e-3 / (1 - math.Pow(0.9, 3))),
					Bc2Sqrt: float32(math.Sqrt(1 - math.Pow(0.999, 3))), Eps: 1e-8, WD: wd}
				p0, g0, m0, v0 := slices.Clone(p), slices.Clone(g), slices.Clone(m), slices.Clone(v)
				gp, gm, gv := slices.Clone(p), slices.Clone(m), slices.Clone(v)
				AdamUpdate(p, g, m, v, a)
				goAdam(gp, g, gm, gv, a)
				for i := range p {
					if math.Float32bits(p[i]) != math.Float32bits(gp[i]) || math.Float32bits(m[i]) != math.Float32bits(gm[i]) || math.Float32bits(v[i]) != math.Float32bits(gv[i]) {
						t.Fatalf("[%d]: p %v m %v v %v, the Go code's p %v m %v v %v", i, p[i], m[i], v[i], gp[i], gm[i], gv[i])
					}
					gi := float64(g0[i]) + float64(wd)*float64(p0[i])
					mi := 0.9*float64(m0[i]) + 0.1*gi
					vi := 0.999*float64(v0[i]) + 0.001*gi*gi
					pi := float64(p0[i]) + float64(a.NegStep)*mi/(math.Sqrt(vi)/float64(a.Bc2Sqrt)+1e-8)
					if math.Abs(float64(p[i])-pi) > 1e-6*(1+math.Abs(pi)) || math.Abs(float64(m[i])-mi) > 1e-6*(0.9*math.Abs(float64(m0[i]))+0.1*math.Abs(gi))+1e-30 {
						t.Fatalf("[%d]: p %v m %v, the formula's %v %v", i, p[i], m[i], pi, mi)
					}
				}
			})
		}
	}
}
