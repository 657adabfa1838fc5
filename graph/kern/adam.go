package kern

import (
	"fmt"
	"math"
)

// Adam holds the factors of one Adam step, computed by the optimiser
// (trainer/optim) as PyTorch computes them: B1 and B2 the betas, C1 and
// C2 one minus each, NegStep -lr/(1-β1ᵗ), Bc2Sqrt √(1-β2ᵗ), Eps, and WD
// the coupled (L2) weight decay, 0 for none.
type Adam struct{ B1, B2, C1, C2, NegStep, Bc2Sqrt, Eps, WD float32 }

// AdamUpdate applies one step of torch.optim.Adam's single-tensor update
// to parameter p with gradient g and moments m and v (all updated in
// place), in float32 as ATen's CPU kernels do:
//
//	g += WD·p                      (when WD != 0)
//	m = fma(g, C1, m·B1)
//	v = fma(C2·g, g, v·B2)
//	p += NegStep·m / (√v/Bc2Sqrt + Eps)
//
// where fma(a, b, c) is a·b + c with one rounding in float64 and one to
// float32. The native kernel, eight values at a time, gives the Go
// code's bits. It panics when a slice is shorter than p.
func AdamUpdate(p, g, m, v []float32, a Adam) {
	if len(g) < len(p) || len(m) < len(p) || len(v) < len(p) {
		panic(fmt.Sprintf("kern.AdamUpdate: p %d, g %d, m %d, v %d values", len(p), len(g), len(m), len(v)))
	}
	if native && len(p) > 0 {
		cAdam(p, g, m, v, a)
		return
	}
	goAdam(p, g, m, v, a)
}

func goAdam(p, g, m, v []float32, a Adam) {
	g, m, v = g[:len(p)], m[:len(p)], v[:len(p)]
	for j, gj := range g {
		pj := p[j]
		if a.WD != 0 {
			gj = FMA32(pj, a.WD, gj)
		}
		mj := FMA32(gj, a.C1, m[j]*a.B1)
		vj := FMA32(a.C2*gj, gj, v[j]*a.B2)
		m[j], v[j] = mj, vj
		den := float32(math.Sqrt(float64(vj)))/a.Bc2Sqrt + a.Eps
		p[j] = pj + a.NegStep*mj/den
	}
}

// FMA32 returns a·b + c computed as a fused multiply-add: the product of
// two float32 values is exact in float64, so only the sum is rounded (to
// float64, then to float32; the double rounding differs from a true
// float32 FMA only in vanishingly rare ties). It reproduces ATen's AVX2
// CPU kernels for add(alpha=...) and addcmul, which use vfmadd, bit for
// bit; the optimisers (trainer/optim) and AdamUpdate compute with it.
func FMA32(a, b, c float32) float32 { return float32(float64(a)*float64(b) + float64(c)) }
