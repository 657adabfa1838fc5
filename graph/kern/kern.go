package kern

import "fmt"

// Conv3Scratch is the length of the scratch buffer that one call of
// [Conv3] or [Conv3DW] for a sample of c channels of h x w and k filters
// needs. Each goroutine needs its own.
func Conv3Scratch(c, h, w, k int) int {
	if !Available() {
		return 0
	}
	return conv3Scratch(c, h, w, k)
}

// Conv3 sets y[k][h][w] to the convolution of one sample x[c][h][w] with
// the filters wt[k][c][3][3], stride 1 and padding 1, as PyTorch's
// conv2d(x, wt, padding=1) without bias. It panics when the native kernels
// are not available (see [Available]) or when a slice is too short.
func Conv3(x, wt, y, scratch []float32, c, h, w, k int) {
	check("Conv3", x, wt, y, scratch, conv3Scratch, c, h, w, k)
	conv3(x, wt, y, scratch, c, h, w, k)
}

// Conv3DW adds to dw[k][c][3][3] the weight gradient of [Conv3] for one
// sample: dw[k][c][i][j] += Σ dy[k][y][x]·x[c][y+i-1][x+j-1] over the
// positions whose input is inside the image. It panics as Conv3 does.
func Conv3DW(x, dy, dw, scratch []float32, c, h, w, k int) {
	check("Conv3DW", x, dw, dy, scratch, conv3Scratch, c, h, w, k)
	conv3DW(x, dy, dw, scratch, c, h, w, k)
}

// Conv3BwdScratch is the length of the scratch buffer one call of
// [Conv3Bwd] needs.
func Conv3BwdScratch(c, h, w, k int) int {
	if !Available() {
		return 0
	}
	return conv3BwdScratch(c, h, w, k)
}

// Conv3Bwd is [Conv3DW] and, unless dx is nil, the input gradient
// dx[c][h][w]: the convolution of dy with wT[c][k][3][3], the filters
// flipped and transposed (wT[c][k][i][j] = wt[k][c][2-i][2-j]), from one
// padded copy of dy. Each result has the bits of the separate calls
// (Conv3DW, and Conv3 of dy with wT). It panics as Conv3 does.
func Conv3Bwd(x, dy, wT, dx, dw, scratch []float32, c, h, w, k int) {
	check("Conv3Bwd", x, dw, dy, scratch, conv3BwdScratch, c, h, w, k)
	switch {
	case len(wT) < k*c*9:
		panic(fmt.Sprintf("kern.Conv3Bwd: filters have %d values, want %d", len(wT), k*c*9))
	case dx != nil && len(dx) < c*h*w:
		panic(fmt.Sprintf("kern.Conv3Bwd: input gradient has %d values, want %d", len(dx), c*h*w))
	}
	conv3Bwd(x, dy, wT, dx, dw, scratch, c, h, w, k)
}

// check panics on programmer errors: no kernels, sizes that do not fit.
// wt is the filters or their gradient, y the output or its gradient;
// need is the scratch the call needs.
func check(op string, x, wt, y, scratch []float32, need func(c, h, w, k int) int, c, h, w, k int) {
	if !Available() {
		panic("kern." + op + ": the native kernels are not available: " + Why())
	}
	switch {
	case c < 1 || h < 1 || w < 1 || k < 1:
		panic(fmt.Sprintf("kern.%s: bad geometry c=%d h=%d w=%d k=%d", op, c, h, w, k))
	case len(x) < c*h*w:
		panic(fmt.Sprintf("kern.%s: input has %d values, want %d", op, len(x), c*h*w))
	case len(wt) < k*c*9:
		panic(fmt.Sprintf("kern.%s: filters have %d values, want %d", op, len(wt), k*c*9))
	case len(y) < k*h*w:
		panic(fmt.Sprintf("kern.%s: output has %d values, want %d", op, len(y), k*h*w))
	case len(scratch) < need(c, h, w, k):
		panic(fmt.Sprintf("kern.%s: scratch has %d values, want %d", op, len(scratch), need(c, h, w, k)))
	}
}
