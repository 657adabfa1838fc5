package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// refConv3 is the float64 convolution, padding 1, and the sums of its
// terms' absolute values (float32 rounding is bounded by a multiple of it);
// refConv3DW its weight gradient.
func refConv3(x, w []float32, c, h, wd, k int) (y, abs []float64) {
	y, abs = make([]float64, k*h*wd), make([]float64, k*h*wd)
	for kk := 0; kk < k; kk++ {
		for yy := 0; yy < h; yy++ {
			for xx := 0; xx < wd; xx++ {
				var s, a float64
				for cc := 0; cc < c; cc++ {
					for i := 0; i < 3; i++ {
						for j := 0; j < 3; j++ {
							sy, sx := yy+i-1, xx+j-1
							if sy < 0 || sy >= h || sx < 0 || sx >= wd {
								continue
							}
							t := float64(w[((kk*c+cc)*3+i)*3+j]) * float64(x[(cc*h+sy)*wd+sx])
							s, a = s+t, a+math.Abs(t)
						}
					}
				}
				y[(kk*h+yy)*wd+xx], abs[(kk*h+yy)*wd+xx] = s, a
			}
		}
	}
	return y, abs
}

func refConv3DW(x, dy []float32, c, h, wd, k int) (dw, abs []float64) {
	dw, abs = make([]float64, k*c*9), make([]float64, k*c*9)
	for kk := 0; kk < k; kk++ {
		for cc := 0; cc < c; cc++ {
			for i := 0; i < 3; i++ {
				for j := 0; j < 3; j++ {
					var s, a float64
					for yy := 0; yy < h; yy++ {
						for xx := 0; xx < wd; xx++ {
							sy, sx := yy+i-1, xx+j-1
							if sy < 0 || sy >= h || sx < 0 || sx >= wd {
								continue
							}
							t := float64(dy[(kk*h+yy)*wd+xx]) * float64(x[(cc*h+sy)*wd+sx])
							s, a = s+t, a+math.Abs(t)
						}
					}
					dw[((kk*c+cc)*3+i)*3+j], abs[((kk*c+cc)*3+i)*3+j] = s, a
				}
			}
		}
	}
	return dw, abs
}

func randn(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// near checks got against want within 1e-6 of the sum of the terms'
// absolute values (plus 1e-6 of the value, for what dw held before):
// float32 sums of a few hundred terms round by about 1e-7 of it, and one
// missing or misplaced term moves a value by far more.
func near(t *testing.T, what string, got []float32, want, abs []float64) {
	t.Helper()
	for i := range want {
		if d := math.Abs(float64(got[i]) - want[i]); d > 1e-6*(abs[i]+math.Abs(want[i])) {
			t.Fatalf("%s[%d] = %g, want %g (|Δ| %g)", what, i, got[i], want[i], d)
		}
	}
}

var geoms = []struct{ c, h, w, k int }{
	{1, 28, 28, 16}, {16, 28, 28, 16}, {16, 14, 14, 32}, {32, 14, 14, 32}, {64, 7, 7, 64},
	{3, 5, 9, 5}, {2, 1, 1, 3}, {5, 3, 17, 7}, {7, 13, 2, 1},
}

func TestConv3MatchesReference(t *testing.T) {
	if !Available() {
		t.Skip("native kernels not available: " + Why())
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, g := range geoms {
		t.Run(fmt.Sprintf("%dx%dx%d_k%d", g.c, g.h, g.w, g.k), func(t *testing.T) {
			x, w, dy := randn(r, g.c*g.h*g.w), randn(r, g.k*g.c*9), randn(r, g.k*g.h*g.w)
			// Garbage in the scratch and around the outputs must not leak.
			s := make([]float32, Conv3Scratch(g.c, g.h, g.w, g.k))
			for i := range s {
				s[i] = float32(math.NaN())
			}
			y := make([]float32, g.k*g.h*g.w+1)
			y[len(y)-1] = 42
			Conv3(x, w, y, s, g.c, g.h, g.w, g.k)
			want, abs := refConv3(x, w, g.c, g.h, g.w, g.k)
			near(t, "y", y, want, abs)
			if y[len(y)-1] != 42 {
				t.Fatal("Conv3 wrote past its output")
			}
			for i := range s {
				s[i] = float32(math.NaN())
			}
			base := randn(r, g.k*g.c*9)
			dw := append([]float32(nil), base...)
			Conv3DW(x, dy, dw, s, g.c, g.h, g.w, g.k)
			want, abs = refConv3DW(x, dy, g.c, g.h, g.w, g.k)
			for i := range want {
				want[i] += float64(base[i])
			}
			near(t, "dw", dw, want, abs)
			// The same inputs give the same bits.
			again := append([]float32(nil), base...)
			Conv3DW(x, dy, again, s, g.c, g.h, g.w, g.k)
			for i := range dw {
				if math.Float32bits(dw[i]) != math.Float32bits(again[i]) {
					t.Fatalf("dw[%d]: %g then %g", i, dw[i], again[i])
				}
			}
		})
	}
}

// Conv3Bwd gives the bits of Conv3DW and of Conv3 with the flipped,
// transposed filters.
func TestConv3BwdEqualsTheSeparateCalls(t *testing.T) {
	if !Available() {
		t.Skip("native kernels not available: " + Why())
	}
	r := rand.New(rand.NewPCG(9, 9))
	for _, g := range geoms {
		x, w, dy := randn(r, g.c*g.h*g.w), randn(r, g.k*g.c*9), randn(r, g.k*g.h*g.w)
		wT := make([]float32, len(w))
		for k := 0; k < g.k; k++ {
			for c := 0; c < g.c; c++ {
				for i := 0; i < 9; i++ {
					wT[(c*g.k+k)*9+i] = w[(k*g.c+c)*9+8-i]
				}
			}
		}
		base := randn(r, len(w))
		wantDW := append([]float32(nil), base...)
		Conv3DW(x, dy, wantDW, make([]float32, Conv3Scratch(g.c, g.h, g.w, g.k)), g.c, g.h, g.w, g.k)
		wantDX := make([]float32, g.c*g.h*g.w)
		Conv3(dy, wT, wantDX, make([]float32, Conv3Scratch(g.k, g.h, g.w, g.c)), g.k, g.h, g.w, g.c)
		s := make([]float32, Conv3BwdScratch(g.c, g.h, g.w, g.k))
		for i := range s {
			s[i] = float32(math.NaN())
		}
		dw, dx := append([]float32(nil), base...), make([]float32, len(wantDX))
		Conv3Bwd(x, dy, wT, dx, dw, s, g.c, g.h, g.w, g.k)
		for i := range dw {
			if math.Float32bits(dw[i]) != math.Float32bits(wantDW[i]) {
				t.Fatalf("%+v: dw[%d] = %v, separately %v", g, i, dw[i], wantDW[i])
			}
		}
		for i := range dx {
			if math.Float32bits(dx[i]) != math.Float32bits(wantDX[i]) {
				t.Fatalf("%+v: dx[%d] = %v, separately %v", g, i, dx[i], wantDX[i])
			}
		}
		dw2 := append([]float32(nil), base...)
		Conv3Bwd(x, dy, wT, nil, dw2, s, g.c, g.h, g.w, g.k)
		if !slices.Equal(dw2, dw) {
			t.Fatalf("%+v: dw without dx differs", g)
		}
	}
}

func TestConv3Misuse(t *testing.T) {
	if !Available() {
		t.Skip("native kernels not available: " + Why())
	}
	c, h, w, k := 2, 4, 4, 3
	x, wt, y := make([]float32, c*h*w), make([]float32, k*c*9), make([]float32, k*h*w)
	s := make([]float32, Conv3Scratch(c, h, w, k))
	for name, f := range map[string]func(){
		"short scratch": func() { Conv3(x, wt, y, s[:len(s)-1], c, h, w, k) },
		"short input":   func() { Conv3(x[:5], wt, y, s, c, h, w, k) },
		"short output":  func() { Conv3(x, wt, y[:5], s, c, h, w, k) },
		"short filters": func() { Conv3DW(x, y, wt[:5], s, c, h, w, k) },
		"bad geometry":  func() { Conv3(x, wt, y, s, 0, h, w, k) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func BenchmarkConv3(b *testing.B) {
	if !Available() {
		b.Skip("native kernels not available: " + Why())
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, g := range geoms[1:5] {
		x, w, y := randn(r, g.c*g.h*g.w), randn(r, g.k*g.c*9), make([]float32, g.k*g.h*g.w)
		s := make([]float32, Conv3Scratch(g.c, g.h, g.w, g.k))
		flops := float64(2 * g.k * g.c * 9 * g.h * g.w)
		b.Run(fmt.Sprintf("fwd_%dx%dx%d_k%d", g.c, g.h, g.w, g.k), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				Conv3(x, w, y, s, g.c, g.h, g.w, g.k)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		dw := make([]float32, g.k*g.c*9)
		b.Run(fmt.Sprintf("dw_%dx%dx%d_k%d", g.c, g.h, g.w, g.k), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				Conv3DW(x, y, dw, s, g.c, g.h, g.w, g.k)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
