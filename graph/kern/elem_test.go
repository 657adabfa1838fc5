package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The native elementwise kernels give the Go fallback's bits, and the
// fallback's sums are the float64 sums within rounding.
func TestElemNativeEqualsGeneric(t *testing.T) {
	if !Available() {
		t.Skip("native kernels not available: " + Why())
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, g := range []struct{ n, c, p int }{{1, 1, 1}, {3, 2, 7}, {2, 3, 8}, {5, 4, 49}, {4, 16, 196}, {2, 16, 784}, {3, 5, 13}, {128, 64, 1}} {
		t.Run(fmt.Sprintf("N%d_C%d_P%d", g.n, g.c, g.p), func(t *testing.T) {
			sz := g.n * g.c * g.p
			x, y := randn(r, sz), randn(r, sz)
			for i := range x {
				x[i] = x[i]*3 + 1.5 // an offset mean, as activations have
			}
			for ch := 0; ch < g.c; ch++ {
				mu := goChanSum(x, g.n, g.c, g.p, ch) / float64(g.n*g.p)
				var ref, refSq, refG1, refG2 float64
				for i := 0; i < g.n; i++ {
					for j := 0; j < g.p; j++ {
						v, d := float64(x[(i*g.c+ch)*g.p+j]), float64(y[(i*g.c+ch)*g.p+j])
						ref, refSq, refG1, refG2 = ref+v, refSq+(v-mu)*(v-mu), refG1+d, refG2+d*(v-mu)
					}
				}
				same := func(what string, got, want, exact float64) {
					t.Helper()
					if math.Float64bits(got) != math.Float64bits(want) {
						t.Fatalf("channel %d %s: native %v, generic %v", ch, what, got, want)
					}
					if math.Abs(got-exact) > 1e-12*(1+math.Abs(exact))*float64(g.n*g.p) {
						t.Fatalf("channel %d %s = %v, want %v", ch, what, got, exact)
					}
				}
				same("sum", ChanSum(x, g.n, g.c, g.p, ch), goChanSum(x, g.n, g.c, g.p, ch), ref)
				same("sqdev", ChanSqDev(x, g.n, g.c, g.p, ch, mu), goChanSqDev(x, g.n, g.c, g.p, ch, mu), refSq)
				s1, s2 := ChanGradSums(x, y, g.n, g.c, g.p, ch, mu)
				w1, w2 := goChanGradSums(x, y, g.n, g.c, g.p, ch, mu)
				same("grad sum", s1, w1, refG1)
				same("grad dot", s2, w2, refG2)
				// Moments about a guess k: Σ(x-k) = Σx - M·k, Σ(x-k)² = Σ(x-mu)² + M·(mu-k)².
				k, m := mu+0.25, float64(g.n*g.p)
				m1, m2 := ChanMoments(x, g.n, g.c, g.p, ch, k)
				v1, v2 := goChanMoments(x, g.n, g.c, g.p, ch, k)
				same("moment 1", m1, v1, ref-m*k)
				same("moment 2", m2, v2, refSq+m*(mu-k)*(mu-k))
			}
			bits := func(what string, a, b []float32) {
				t.Helper()
				for i := range a {
					if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
						t.Fatalf("%s[%d]: native %v, generic %v", what, i, a[i], b[i])
					}
				}
			}
			d1, d2 := make([]float32, sz), make([]float32, sz)
			for ch := 0; ch < g.c; ch++ {
				ChanAffine(d1, x, g.n, g.c, g.p, ch, 0.37, -1.25)
				goChanAffine(d2, x, g.n, g.c, g.p, ch, 0.37, -1.25)
			}
			bits("affine", d1, d2)
			for ch := 0; ch < g.c; ch++ {
				ChanAffine2(d1, x, y, g.n, g.c, g.p, ch, 0.37, -1.1, 0.3)
				goChanAffine2(d2, x, y, g.n, g.c, g.p, ch, 0.37, -1.1, 0.3)
			}
			bits("affine2", d1, d2)
			d3 := make([]float32, sz)
			for ch := 0; ch < g.c; ch++ {
				ChanAffineReLU(d1, x, g.n, g.c, g.p, ch, 0.37, -0.5)
				goChanAffineReLU(d2, x, g.n, g.c, g.p, ch, 0.37, -0.5)
				ChanAffine(d3, x, g.n, g.c, g.p, ch, 0.37, -0.5)
			}
			bits("affine relu", d1, d2)
			ReLU(d3, d3)
			bits("affine relu against affine then relu", d1, d3)
			Add(d1, x, y)
			goAdd(d2, x, y)
			bits("add", d1, d2)
			for i := range x {
				if d1[i] != x[i]+y[i] {
					t.Fatalf("add[%d] = %v, want %v", i, d1[i], x[i]+y[i])
				}
			}
			for i := 0; i < len(x) && i < 8; i++ {
				x[i] = []float32{float32(math.Copysign(0, -1)), 0, float32(math.NaN()), -float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 1e-45, -1e-45}[i]
			}
			ReLU(d1, x)
			goReLU(d2, x)
			bits("relu", d1, d2)
			for i, v := range x {
				if v > 0 && d1[i] != v || !(v > 0) && !math.IsNaN(float64(v)) && math.Float32bits(d1[i]) != 0 {
					t.Fatalf("relu(%v) = %v", v, d1[i])
				}
			}
			ReLUGrad(d1, x, y)
			goReLUGrad(d2, x, y)
			bits("relu grad", d1, d2)
			// ReLU's gradient with a BatchNorm's sums: ReLUGrad's bits and
			// ChanGradSums' sums of them, native and Go alike.
			for ch := 0; ch < g.c; ch++ {
				r1, r2 := ChanReLUGradSums(d3, x, y, y, g.n, g.c, g.p, ch, 0.25)
				q1, q2 := goChanReLUGradSums(d2, x, y, y, g.n, g.c, g.p, ch, 0.25)
				if r1 != q1 || r2 != q2 {
					t.Fatalf("channel %d relu grad sums: native %v %v, generic %v %v", ch, r1, r2, q1, q2)
				}
				if w1, w2 := ChanGradSums(y, d1, g.n, g.c, g.p, ch, 0.25); r1 != w1 || r2 != w2 {
					t.Fatalf("channel %d relu grad sums %v %v, ChanGradSums of ReLUGrad %v %v", ch, r1, r2, w1, w2)
				}
			}
			bits("relu grad of the sums", d3, d1)
			bits("relu grad of the sums, generic", d2, d1)
			for i, v := range x {
				if v > 0 && d1[i] != y[i] || v < 0 && d1[i] != 0 {
					t.Fatalf("relu grad at %v of %v = %v", v, y[i], d1[i])
				}
			}
		})
	}
}

// PlaneMoments gives, sample by sample, the terms of ChanMoments: added
// from zero in the order of the samples they are ChanMoments' bits, on
// the native kernels and on the Go fallback, which agree.
func TestPlaneMomentsAddUpToChanMoments(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 9))
	for _, g := range []struct{ n, c, p int }{{1, 1, 1}, {3, 2, 7}, {5, 4, 49}, {4, 16, 196}, {2, 3, 13}} {
		t.Run(fmt.Sprintf("N%d_C%d_P%d", g.n, g.c, g.p), func(t *testing.T) {
			x := randn(r, g.n*g.c*g.p)
			k := randn(r, g.c)
			sums := make([]float64, 2*g.c)
			out, goOut := make([]float64, 2*g.c+1), make([]float64, 2*g.c)
			for i := 0; i < g.n; i++ {
				out[2*g.c] = math.Pi // past the planes: left alone
				PlaneMoments(x[i*g.c*g.p:], g.c, g.p, k, out)
				goPlaneMomentsAll(x[i*g.c*g.p:], g.c, g.p, k, goOut)
				if out[2*g.c] != math.Pi {
					t.Fatal("PlaneMoments wrote past its planes")
				}
				for j := range goOut {
					if math.Float64bits(out[j]) != math.Float64bits(goOut[j]) {
						t.Fatalf("sample %d term %d: %v, the fallback %v", i, j, out[j], goOut[j])
					}
					sums[j] += out[j]
				}
			}
			for ch := 0; ch < g.c; ch++ {
				s1, s2 := ChanMoments(x, g.n, g.c, g.p, ch, float64(k[ch]))
				if math.Float64bits(s1) != math.Float64bits(sums[2*ch]) || math.Float64bits(s2) != math.Float64bits(sums[2*ch+1]) {
					t.Fatalf("channel %d: planes add up to %v %v, ChanMoments %v %v", ch, sums[2*ch], sums[2*ch+1], s1, s2)
				}
			}
		})
	}
	defer func() {
		if recover() == nil {
			t.Fatal("PlaneMoments of too short an out did not panic")
		}
	}()
	PlaneMoments(make([]float32, 6), 2, 3, make([]float32, 2), make([]float64, 3))
}

// TestMaxPool2GradRoutesToTheFirstMaximum: MaxPool2Grad sends each
// window's gradient to the first of its values (row by row) that equals
// the window's maximum, to the last when the maximum is NaN, and +0 to
// every other value (odd rows and columns included, whatever dX held);
// the native kernel gives the Go fallback's bits. Values are drawn from
// few levels, so that windows hold ties in every position.
func TestMaxPool2GradRoutesToTheFirstMaximum(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, g := range []struct{ planes, h, w int }{{1, 2, 2}, {3, 4, 6}, {2, 7, 5}, {16, 28, 28}, {5, 14, 15}} {
		t.Run(fmt.Sprintf("%dx%dx%d", g.planes, g.h, g.w), func(t *testing.T) {
			n, oh, ow := g.planes*g.h*g.w, g.h/2, g.w/2
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.IntN(3))
				if r.IntN(50) == 0 {
					x[i] = float32(math.NaN())
				}
			}
			y, dy := make([]float32, g.planes*oh*ow), make([]float32, g.planes*oh*ow)
			want := make([]float32, n)
			for p := 0; p < g.planes; p++ {
				for oy := 0; oy < oh; oy++ {
					for ox := 0; ox < ow; ox++ {
						at := func(k int) int { return (p*g.h+2*oy+k/2)*g.w + 2*ox + k%2 }
						m := x[at(0)]
						for k := 1; k < 4; k++ {
							m = max(m, x[at(k)])
						}
						o := (p*oh+oy)*ow + ox
						y[o], dy[o] = m, float32(r.NormFloat64())
						k := 0
						for k < 3 && x[at(k)] != m {
							k++
						}
						want[at(k)] = dy[o]
					}
				}
			}
			got, gogot := make([]float32, n), make([]float32, n)
			for i := range got {
				got[i], gogot[i] = float32(math.NaN()), 5
			}
			MaxPool2Grad(got, x, y, dy, g.planes, g.h, g.w)
			goMaxPool2Grad(gogot, x, y, dy, g.planes, g.h, g.w)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) || math.Float32bits(gogot[i]) != math.Float32bits(want[i]) {
					t.Fatalf("dx[%d] = %v (Go fallback %v), want %v", i, got[i], gogot[i], want[i])
				}
			}
		})
	}
}
