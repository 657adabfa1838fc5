package optim

import "math"

// clipEps is added to the norm before dividing, as in
// torch.nn.utils.clip_grad_norm_.
const clipEps = 1e-6

// ClipGradNorm computes the global L2 norm of all gradients (as if they were
// concatenated into one vector; squares are accumulated in float64) and, when
// maxNorm > 0 and maxNorm/(norm+1e-6) < 1, scales every gradient in place by
// that factor (rounded to float32), like torch.nn.utils.clip_grad_norm_.
// maxNorm <= 0 (or NaN) only computes the norm.
//
// It returns the norm before clipping. The norm is NaN or +Inf exactly when
// some gradient is NaN or ±Inf; the gradients are then left untouched (unlike
// PyTorch, which would multiply them by NaN or 0), so that the caller can
// skip the step.
func ClipGradNorm(params []Param, maxNorm float64) (totalNorm float64) {
	totalNorm = math.Sqrt(SumSquares(params))
	if c, ok := ClipCoef(totalNorm, maxNorm); ok {
		Scale(params, c)
	}
	return totalNorm
}

// SumSquares is the sum of the squares of all gradients, in float64: the
// square of their global norm. Gradients split over processes (pipeline
// stages) add their sums before the root is taken.
func SumSquares(params []Param) float64 {
	var sum float64
	for i := range params {
		if !params[i].Buffer {
			sum += sumSquares(params[i].Grad)
		}
	}
	return sum
}

// Scale multiplies every gradient by c (ClipCoef's factor).
func Scale(params []Param, c float32) {
	for i := range params {
		if params[i].Buffer {
			continue
		}
		g := params[i].Grad
		for j := range g {
			g[j] *= c
		}
	}
}

// ClipCoef is the factor ClipGradNorm scales the gradients by, rounded
// to float32, for a global norm and maxNorm; ok is false when they stay as
// they are (maxNorm <= 0, a norm that is not finite, or within maxNorm).
// A device that clips computes the norm itself and takes the factor here.
func ClipCoef(norm, maxNorm float64) (c float32, ok bool) {
	if !(maxNorm > 0) || math.IsNaN(norm) || math.IsInf(norm, 0) {
		return 1, false
	}
	coef := maxNorm / (norm + clipEps)
	if coef >= 1 {
		return 1, false
	}
	return float32(coef), true
}

// sumSquares returns the sum of x[i]^2 in float64, with four accumulators.
func sumSquares(x []float32) float64 {
	var s0, s1, s2, s3 float64
	for len(x) >= 4 {
		a, b, c, d := float64(x[0]), float64(x[1]), float64(x[2]), float64(x[3])
		s0 += a * a
		s1 += b * b
		s2 += c * c
		s3 += d * d
		x = x[4:]
	}
	for _, v := range x {
		s0 += float64(v) * float64(v)
	}
	return (s0 + s1) + (s2 + s3)
}

// GradsFinite reports whether every gradient value is finite (no NaN or
// ±Inf).
func GradsFinite(params []Param) bool {
	for i := range params {
		for _, v := range params[i].Grad {
			if v-v != 0 { // NaN-NaN and Inf-Inf are NaN
				return false
			}
		}
	}
	return true
}
