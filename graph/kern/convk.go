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
