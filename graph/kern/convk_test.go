package kern

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// refConv is the float64 convolution of geometry g, its weight gradient,
// and the sums of their terms' absolute values.
func refConv(g Geom, x, w, dy []float32) (y, yabs, dw, dwabs []float64) {
	oh, ow := g.out()
	y, yabs = make([]float64, g.K*oh*ow), make([]float64, g.K*oh*ow)
	dw, dwabs = make([]float64, g.K*g.C*g.KH*g.KW), make([]float64, g.K*g.C*g.KH*g.KW)
	for k := 0; k < g.K; k++ {
		for oy := 0; oy < oh; oy++ {
			for ox := 0; ox < ow; ox++ {
				o := (k*oh+oy)*ow + ox
				for c := 0; c < g.C; c++ {
					for i := 0; i < g.KH; i++ {
						for j := 0; j < g.KW; j++ {
							sy, sx := oy*g.S+i-g.P, ox*g.S+j-g.P
							if sy < 0 || sy >= g.H || sx < 0 || sx >= g.W {
								continue
							}
							xv := float64(x[(c*g.H+sy)*g.W+sx])
							wi := ((k*g.C+c)*g.KH+i)*g.KW + j
							t := float64(w[wi]) * xv
							y[o], yabs[o] = y[o]+t, yabs[o]+math.Abs(t)
							t = float64(dy[o]) * xv
							dw[wi], dwabs[wi] = dw[wi]+t, dwabs[wi]+math.Abs(t)
						}
					}
				}
			}
		}
	}
	return y, yabs, dw, dwabs
}

func TestConvMatchesReference(t *testing.T) {
	if !Available() {
		t.Skip("native kernels not available: " + Why())
	}
	r := rand.New(rand.NewPCG(5, 6))
	for _, g := range []Geom{
		{64, 7, 7, 64, 3, 3, 1, 1}, {16, 28, 28, 32, 3, 3, 2, 1}, {16, 28, 28, 32, 1, 1, 2, 0}, {32, 14, 14, 64, 3, 3, 2, 1},
		{3, 9, 8, 5, 3, 3, 1, 1}, {4, 9, 8, 5, 5, 5, 1, 2}, {2, 5, 5, 20, 3, 3, 2, 0}, {1, 12, 12, 16, 3, 3, 1, 1},
		{5, 1, 1, 1, 1, 1, 1, 0}, {3, 4, 6, 17, 2, 3, 3, 1}, {2, 3, 3, 33, 3, 3, 1, 0},
	} {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			oh, ow := g.out()
			x, w, dy := randn(r, g.C*g.H*g.W), randn(r, g.K*g.C*g.KH*g.KW), randn(r, g.K*oh*ow)
			s := make([]float32, ConvScratch(g))
			for i := range s {
				s[i] = float32(math.NaN())
			}
			y := make([]float32, g.K*oh*ow+1)
			y[len(y)-1] = 42
			Conv(g, x, w, y, s)
			want, abs, wantDW, absDW := refConv(g, x, w, dy)
			near(t, "y", y, want, abs)
			if y[len(y)-1] != 42 {
				t.Fatal("Conv wrote past its output")
			}
			for i := range s {
				s[i] = float32(math.NaN())
			}
			base := randn(r, len(w))
			dw := append([]float32(nil), base...)
			ConvDW(g, x, dy, dw, s)
			for i := range wantDW {
				wantDW[i] += float64(base[i])
			}
			near(t, "dw", dw, wantDW, absDW)
		})
	}
}

func BenchmarkConv(b *testing.B) {
	if !Available() {
		b.Skip("native kernels not available: " + Why())
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, g := range []Geom{{16, 28, 28, 16, 3, 3, 1, 1}, {32, 14, 14, 32, 3, 3, 1, 1}, {64, 7, 7, 64, 3, 3, 1, 1}, {16, 28, 28, 32, 3, 3, 2, 1}, {32, 14, 14, 64, 3, 3, 2, 1}} {
		oh, ow := g.out()
		x, w, y := randn(r, g.C*g.H*g.W), randn(r, g.K*g.C*g.KH*g.KW), make([]float32, g.K*oh*ow)
		s := make([]float32, ConvScratch(g))
		flops := float64(2 * g.K * g.C * g.KH * g.KW * oh * ow)
		b.Run(fmt.Sprintf("fwd_%dx%dx%d_k%d_s%d", g.C, g.H, g.W, g.K, g.S), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				Conv(g, x, w, y, s)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		dw := make([]float32, len(w))
		b.Run(fmt.Sprintf("dw_%dx%dx%d_k%d_s%d", g.C, g.H, g.W, g.K, g.S), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ConvDW(g, x, y, dw, s)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// colsGeoms are the im2col tests' geometries: strides 1 to 3, paddings 0
// to 3, square and oblong windows, rows of outputs shorter than a vector
// and longer, a LeNet's two convolutions.
var colsGeoms = []Geom{
	{C: 3, H: 14, W: 14, KH: 3, KW: 3, S: 2, P: 1},
	{C: 4, H: 7, W: 9, KH: 1, KW: 1, S: 2, P: 0},
	{C: 2, H: 11, W: 8, KH: 5, KW: 3, S: 3, P: 2},
	{C: 2, H: 6, W: 6, KH: 3, KW: 3, S: 1, P: 1},
	{C: 16, H: 14, W: 14, KH: 5, KW: 5, S: 1, P: 0},
	{C: 1, H: 28, W: 28, KH: 5, KW: 5, S: 1, P: 2},
	{C: 1, H: 5, W: 5, KH: 2, KW: 4, S: 1, P: 0},
	{C: 2, H: 3, W: 19, KH: 3, KW: 7, S: 1, P: 3},
}

// TestIm2ColMatchesGather: Im2Col writes each of the sample's columns
// with the input value its window reads (zero in the padding), bit for
// bit the Go fallback's, and leaves the other samples' columns alone.
func TestIm2ColMatchesGather(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, g := range colsGeoms {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			oh, ow := g.out()
			ncols, col0 := 3*oh*ow, oh*ow
			x := randn(r, g.C*g.H*g.W)
			got, gogot := make([]float32, g.C*g.KH*g.KW*ncols), make([]float32, g.C*g.KH*g.KW*ncols)
			for i := range got {
				got[i], gogot[i] = float32(math.NaN()), float32(math.NaN())
			}
			Im2Col(g, x, got, ncols, col0)
			goIm2Col(g, x, gogot, ncols, col0)
			for row := 0; row < g.C*g.KH*g.KW; row++ {
				c, i, j := row/(g.KH*g.KW), row/g.KW%g.KH, row%g.KW
				for col := 0; col < ncols; col++ {
					k := row*ncols + col
					if math.Float32bits(got[k]) != math.Float32bits(gogot[k]) {
						t.Fatalf("cols[%d][%d] = %v, the Go fallback's %v", row, col, got[k], gogot[k])
					}
					if col < col0 || col >= col0+oh*ow {
						if !math.IsNaN(float64(got[k])) {
							t.Fatalf("cols[%d][%d] = %v: another sample's column was written", row, col, got[k])
						}
						continue
					}
					oy, ox := (col-col0)/ow, (col-col0)%ow
					iy, ix := oy*g.S-g.P+i, ox*g.S-g.P+j
					want := float32(0)
					if iy >= 0 && iy < g.H && ix >= 0 && ix < g.W {
						want = x[(c*g.H+iy)*g.W+ix]
					}
					if math.Float32bits(got[k]) != math.Float32bits(want) {
						t.Fatalf("cols[%d][%d] (c %d, i %d, j %d, oy %d, ox %d) = %v, want %v", row, col, c, i, j, oy, ox, got[k], want)
					}
				}
			}
		})
	}
}

// TestCol2ImMatchesScatter: Col2Im of random columns is, bit for bit, the
// Go fallback's, and within float32 rounding the float64 scatter of each
// column value onto the input position its window reads, for a sample in
// the middle of a batch's columns.
func TestCol2ImMatchesScatter(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, g := range colsGeoms {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			oh, ow := g.out()
			ncols, col0 := 3*oh*ow, oh*ow
			cols := randn(r, g.C*g.KH*g.KW*ncols)
			want := make([]float64, g.C*g.H*g.W)
			for c := 0; c < g.C; c++ {
				for i := 0; i < g.KH; i++ {
					for j := 0; j < g.KW; j++ {
						for oy := 0; oy < oh; oy++ {
							for ox := 0; ox < ow; ox++ {
								iy, ix := oy*g.S-g.P+i, ox*g.S-g.P+j
								if iy >= 0 && iy < g.H && ix >= 0 && ix < g.W {
									want[(c*g.H+iy)*g.W+ix] += float64(cols[((c*g.KH+i)*g.KW+j)*ncols+col0+oy*ow+ox])
								}
							}
						}
					}
				}
			}
			got, gogot := make([]float32, len(want)), make([]float32, len(want))
			for i := range got {
				got[i], gogot[i] = float32(math.NaN()), 7 // overwritten, not added to
			}
			Col2Im(g, cols, ncols, col0, got)
			goCol2Im(g, cols, ncols, col0, gogot)
			for i, w := range want {
				if math.Float32bits(got[i]) != math.Float32bits(gogot[i]) {
					t.Fatalf("dx[%d] = %v, the Go fallback's %v", i, got[i], gogot[i])
				}
				if math.Abs(float64(got[i])-w) > 1e-5*(1+math.Abs(w)) {
					t.Fatalf("dx[%d] = %v, want %v", i, got[i], w)
				}
			}
		})
	}
}
