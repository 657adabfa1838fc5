package kern

import "fmt"

// The elementwise kernels work on channel c of a tensor laid out as
// [N, C, P] (NCHW with P = H·W; [N, C] with P = 1): N planes of P values,
// plane n at (n·C + c)·P. Each gives the same bits whether the native code
// or its Go fallback (elem_generic.go) runs it.

func chanCheck(op string, n, c, p, ch int, xs ...[]float32) {
	if n < 0 || c < 1 || p < 0 || ch < 0 || ch >= c {
		panic(fmt.Sprintf("kern.%s: bad geometry N=%d C=%d P=%d channel %d", op, n, c, p, ch))
	}
	for _, x := range xs {
		if len(x) < n*c*p {
			panic(fmt.Sprintf("kern.%s: a tensor has %d values, want %d", op, len(x), n*c*p))
		}
	}
}

// ChanSum is Σ x over channel ch, in float64: eight running sums per
// plane, folded as ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)), then the planes'
// sums added in order.
func ChanSum(x []float32, n, c, p, ch int) float64 {
	chanCheck("ChanSum", n, c, p, ch, x)
	if native && n*p > 0 {
		return cChanSum(x, n, c, p, ch)
	}
	return goChanSum(x, n, c, p, ch)
}

// ChanSqDev is Σ (x-mu)² over channel ch, summed as ChanSum.
func ChanSqDev(x []float32, n, c, p, ch int, mu float64) float64 {
	chanCheck("ChanSqDev", n, c, p, ch, x)
	if native && n*p > 0 {
		return cChanSqDev(x, n, c, p, ch, mu)
	}
	return goChanSqDev(x, n, c, p, ch, mu)
}

// ChanMoments is Σ (x-k) and Σ (x-k)² over channel ch, in one pass,
// summed as ChanSum: a BatchNorm's statistics, with k a guess of the mean
// (the nearer, the less the variance Σ(x-k)²/M - (Σ(x-k)/M)² cancels).
func ChanMoments(x []float32, n, c, p, ch int, k float64) (s1, s2 float64) {
	chanCheck("ChanMoments", n, c, p, ch, x)
	if native && n*p > 0 {
		return cChanMoments(x, n, c, p, ch, k)
	}
	return goChanMoments(x, n, c, p, ch, k)
}

// PlaneMoments sets out[2c] and out[2c+1] to Σ (x-k[c]) and Σ (x-k[c])²
// over plane c of one sample's c planes of p values: the terms that
// ChanMoments adds up sample by sample, so that adding a batch's out in
// the order of its samples, from zero, gives ChanMoments' bits. It
// panics when a slice is too short.
func PlaneMoments(x []float32, c, p int, k []float32, out []float64) {
	if c < 1 || p < 1 || len(x) < c*p || len(k) < c || len(out) < 2*c {
		panic(fmt.Sprintf("kern.PlaneMoments: %d planes of %d values: x %d, k %d, out %d", c, p, len(x), len(k), len(out)))
	}
	if native {
		cPlaneMoments(x, c, p, k, out)
		return
	}
	goPlaneMomentsAll(x, c, p, k, out)
}

// ChanGradSums is Σ dy and Σ dy·(x-mu) over channel ch, summed as ChanSum.
func ChanGradSums(x, dy []float32, n, c, p, ch int, mu float64) (s1, s2 float64) {
	chanCheck("ChanGradSums", n, c, p, ch, x, dy)
	if native && n*p > 0 {
		return cChanGradSums(x, dy, n, c, p, ch, mu)
	}
	return goChanGradSums(x, dy, n, c, p, ch, mu)
}

// ChanReLUGradSums sets channel ch of dy to ReLU's gradient of dz at its
// output z (as ReLUGrad) and returns ChanGradSums(x, dy, ...) of it, in
// one pass: a BatchNorm's gradient sums when a ReLU reads its output.
func ChanReLUGradSums(dy, z, dz, x []float32, n, c, p, ch int, mu float64) (s1, s2 float64) {
	chanCheck("ChanReLUGradSums", n, c, p, ch, dy, z, dz, x)
	if native && n*p > 0 {
		return cChanReLUGradSums(dy, z, dz, x, n, c, p, ch, mu)
	}
	return goChanReLUGradSums(dy, z, dz, x, n, c, p, ch, mu)
}

// ChanAffine sets channel ch of dst to a·x + b (float32, rounded after
// the product).
func ChanAffine(dst, x []float32, n, c, p, ch int, a, b float32) {
	chanCheck("ChanAffine", n, c, p, ch, dst, x)
	if native && n*p > 0 {
		cChanAffine(dst, x, n, c, p, ch, a, b)
		return
	}
	goChanAffine(dst, x, n, c, p, ch, a, b)
}

// ChanAffineReLU sets channel ch of dst to max(a·x + b, 0): ChanAffine's
// value, then ReLU's.
func ChanAffineReLU(dst, x []float32, n, c, p, ch int, a, b float32) {
	chanCheck("ChanAffineReLU", n, c, p, ch, dst, x)
	if native && n*p > 0 {
		cChanAffineReLU(dst, x, n, c, p, ch, a, b)
		return
	}
	goChanAffineReLU(dst, x, n, c, p, ch, a, b)
}

// ChanAffine2 sets channel ch of dst to (a·x + b·y) + cc.
func ChanAffine2(dst, x, y []float32, n, c, p, ch int, a, b, cc float32) {
	chanCheck("ChanAffine2", n, c, p, ch, dst, x, y)
	if native && n*p > 0 {
		cChanAffine2(dst, x, y, n, c, p, ch, a, b, cc)
		return
	}
	goChanAffine2(dst, x, y, n, c, p, ch, a, b, cc)
}

// ReLU sets y[i] = max(x[i], 0), by the sign bit: -0 and negative NaNs
// become +0.
func ReLU(y, x []float32) {
	if len(y) < len(x) {
		panic(fmt.Sprintf("kern.ReLU: output has %d values, input %d", len(y), len(x)))
	}
	if native && len(x) > 0 {
		cReLU(y, x)
		return
	}
	goReLU(y, x)
}

// ReLUGrad sets dx[i] = dy[i] where y[i] > 0 (ReLU's output), else +0.
func ReLUGrad(dx, y, dy []float32) {
	if len(dx) < len(y) || len(dy) < len(y) {
		panic(fmt.Sprintf("kern.ReLUGrad: dX %d, Y %d, dY %d values", len(dx), len(y), len(dy)))
	}
	if native && len(y) > 0 {
		cReLUGrad(dx, y, dy)
		return
	}
	goReLUGrad(dx, y, dy)
}

// MaxPool2Grad sets dx, planes of h x w (h, w >= 2), to the input
// gradient of a 2x2 max pooling of stride 2 (its output y and output
// gradient dy planes of h/2 x w/2): each window's dy goes to the first of
// its four values, row by row, that equals the window's y (the last value
// when none does, as for a NaN maximum), and +0 to every other value.
func MaxPool2Grad(dx, x, y, dy []float32, planes, h, w int) {
	n, o := planes*h*w, planes*(h/2)*(w/2)
	if planes < 0 || h < 2 || w < 2 || len(dx) < n || len(x) < n || len(y) < o || len(dy) < o {
		panic(fmt.Sprintf("kern.MaxPool2Grad: %d planes of %dx%d: dX %d, X %d, Y %d, dY %d values", planes, h, w, len(dx), len(x), len(y), len(dy)))
	}
	if native && planes > 0 {
		cMaxPool2Grad(dx, x, y, dy, planes, h, w)
		return
	}
	goMaxPool2Grad(dx, x, y, dy, planes, h, w)
}

// Add sets y[i] = a[i] + b[i].
func Add(y, a, b []float32) {
	if len(y) < len(a) || len(b) < len(a) {
		panic(fmt.Sprintf("kern.Add: y %d, a %d, b %d values", len(y), len(a), len(b)))
	}
	if native && len(a) > 0 {
		cAdd(y, a, b)
		return
	}
	goAdd(y, a, b)
}
