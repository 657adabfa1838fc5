package kern

import "fmt"

// Geom is a convolution of one sample: C planes of H x W, K filters of
// KH x KW, stride S, padding P on every side (PyTorch's conv2d with
// stride=S, padding=P, no bias, NCHW).
type Geom struct{ C, H, W, K, KH, KW, S, P int }

// out is the output's height and width.
func (g Geom) out() (int, int) { return (g.H+2*g.P-g.KH)/g.S + 1, (g.W+2*g.P-g.KW)/g.S + 1 }

func (g Geom) valid() error {
	if g.C < 1 || g.H < 1 || g.W < 1 || g.K < 1 || g.KH < 1 || g.KW < 1 || g.S < 1 || g.P < 0 || g.H+2*g.P < g.KH || g.W+2*g.P < g.KW {
		return fmt.Errorf("bad geometry %+v", g)
	}
	return nil
}

// ConvScratch is the length of the scratch buffer that one call of [Conv]
// or [ConvDW] needs (0 when the kernels are not available).
func ConvScratch(g Geom) int {
	if !Available() || g.valid() != nil {
		return 0
	}
	return convkScratch(g)
}

// Conv sets y[K][OH][OW] to the convolution of one sample x[C][H][W] with
// the filters wt[K][C][KH][KW]. It panics when the native kernels are not
// available (see [Available]), on a bad geometry, or when a slice is too
// short.
func Conv(g Geom, x, wt, y, scratch []float32) {
	checkk("Conv", g, x, wt, y, scratch)
	convk(g, x, wt, y, scratch)
}

// ConvDW adds to dw[K][C][KH][KW] the weight gradient of [Conv] for one
// sample with output gradient dy[K][OH][OW]. It panics as Conv does.
func ConvDW(g Geom, x, dy, dw, scratch []float32) {
	checkk("ConvDW", g, x, dw, dy, scratch)
	convkDW(g, x, dy, dw, scratch)
}

func checkk(op string, g Geom, x, wt, y, scratch []float32) {
	if !Available() {
		panic("kern." + op + ": the native kernels are not available: " + Why())
	}
	if err := g.valid(); err != nil {
		panic("kern." + op + ": " + err.Error())
	}
	oh, ow := g.out()
	switch {
	case len(x) < g.C*g.H*g.W:
		panic(fmt.Sprintf("kern.%s: input has %d values, want %d", op, len(x), g.C*g.H*g.W))
	case len(wt) < g.K*g.C*g.KH*g.KW:
		panic(fmt.Sprintf("kern.%s: filters have %d values, want %d", op, len(wt), g.K*g.C*g.KH*g.KW))
	case len(y) < g.K*oh*ow:
		panic(fmt.Sprintf("kern.%s: output has %d values, want %d", op, len(y), g.K*oh*ow))
	case len(scratch) < convkScratch(g):
		panic(fmt.Sprintf("kern.%s: scratch has %d values, want %d", op, len(scratch), convkScratch(g)))
	}
}

// Im2Col writes one sample's im2col columns: for each row (c, i, j) of
// g's windows (ncols columns each), the sample's OH·OW columns from col0
// on get x[c][oy·S-P+i][ox·S-P+j], zero where the window reads padding.
// It only copies (the Go fallback's bits). g.K is not used. It panics
// when a slice is too short.
func Im2Col(g Geom, x, cols []float32, ncols, col0 int) {
	g = checkCols("Im2Col", g, x, cols, ncols, col0)
	if native {
		cIm2Col(g, x, cols, ncols, col0)
		return
	}
	goIm2Col(g, x, cols, ncols, col0)
}

func goIm2Col(g Geom, x, cols []float32, ncols, col0 int) {
	oh, ow := g.out()
	for c := 0; c < g.C; c++ {
		plane := x[c*g.H*g.W:][:g.H*g.W]
		for i := 0; i < g.KH; i++ {
			for j := 0; j < g.KW; j++ {
				dst := cols[((c*g.KH+i)*g.KW+j)*ncols+col0:][:oh*ow]
				for oy := 0; oy < oh; oy++ {
					iy := oy*g.S - g.P + i
					d := dst[oy*ow:][:ow]
					if iy < 0 || iy >= g.H {
						clear(d)
						continue
					}
					src := plane[iy*g.W:][:g.W]
					for ox := range d {
						if ix := ox*g.S - g.P + j; ix >= 0 && ix < g.W {
							d[ox] = src[ix]
						} else {
							d[ox] = 0
						}
					}
				}
			}
		}
	}
}

// Col2Im sets dx[C][H][W], one sample's input gradient, to the sum of the
// im2col columns that read each of its values: cols holds the rows
// (c, i, j) of g's windows, ncols columns each, the sample's OH·OW
// columns from col0 on. Each value's terms are added in the order of c,
// i, j, oy, ox (the Go fallback's, bit for bit). g.K is not used. It
// panics when a slice is too short.
func Col2Im(g Geom, cols []float32, ncols, col0 int, dx []float32) {
	g = checkCols("Col2Im", g, dx, cols, ncols, col0)
	if native {
		cCol2Im(g, cols, ncols, col0, dx)
		return
	}
	goCol2Im(g, cols, ncols, col0, dx)
}

// checkCols panics unless g (its K not used, set to 1) is a geometry, x
// holds a sample and cols its columns from col0 of ncols, as Im2Col and
// Col2Im need.
func checkCols(op string, g Geom, x, cols []float32, ncols, col0 int) Geom {
	g.K = 1
	if err := g.valid(); err != nil {
		panic("kern." + op + ": " + err.Error())
	}
	oh, ow := g.out()
	if len(x) < g.C*g.H*g.W || col0 < 0 || col0+oh*ow > ncols || len(cols) < g.C*g.KH*g.KW*ncols {
		panic(fmt.Sprintf("kern.%s: sample %d values (want %d), cols %d (want %d), columns %d+%d of %d",
			op, len(x), g.C*g.H*g.W, len(cols), g.C*g.KH*g.KW*ncols, col0, oh*ow, ncols))
	}
	return g
}

func goCol2Im(g Geom, cols []float32, ncols, col0 int, dx []float32) {
	oh, ow := g.out()
	clear(dx[:g.C*g.H*g.W])
	for c := 0; c < g.C; c++ {
		plane := dx[c*g.H*g.W:][:g.H*g.W]
		for i := 0; i < g.KH; i++ {
			for j := 0; j < g.KW; j++ {
				src := cols[((c*g.KH+i)*g.KW+j)*ncols+col0:][:oh*ow]
				for oy := 0; oy < oh; oy++ {
					iy := oy*g.S - g.P + i
					if iy < 0 || iy >= g.H {
						continue
					}
					dst := plane[iy*g.W:][:g.W]
					for ox, v := range src[oy*ow:][:ow] {
						if ix := ox*g.S - g.P + j; ix >= 0 && ix < g.W {
							dst[ix] += v
						}
					}
				}
			}
		}
	}
}
