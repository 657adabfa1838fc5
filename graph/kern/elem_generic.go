package kern

import "math"

// The Go fallbacks of elem.go, and the definition of their order.

func plane(x []float32, c, p, n, ch int) []float32 { return x[(n*c+ch)*p:][:p] }

func fold(a *[8]float64) float64 {
	return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

func goChanSum(x []float32, n, c, p, ch int) float64 {
	var s float64
	for i := 0; i < n; i++ {
		v := plane(x, c, p, i, ch)
		var a [8]float64
		j := 0
		for ; j+8 <= len(v); j += 8 {
			for l := range 8 {
				a[l] += float64(v[j+l])
			}
		}
		for ; j < len(v); j++ {
			a[0] += float64(v[j])
		}
		s += fold(&a)
	}
	return s
}

func goChanSqDev(x []float32, n, c, p, ch int, mu float64) float64 {
	var s float64
	for i := 0; i < n; i++ {
		v := plane(x, c, p, i, ch)
		var a [8]float64
		j := 0
		for ; j+8 <= len(v); j += 8 {
			for l := range 8 {
				d := float64(v[j+l]) - mu
				a[l] += d * d
			}
		}
		for ; j < len(v); j++ {
			d := float64(v[j]) - mu
			a[0] += d * d
		}
		s += fold(&a)
	}
	return s
}

func goChanMoments(x []float32, n, c, p, ch int, k float64) (s1, s2 float64) {
	for i := 0; i < n; i++ {
		a, b := goPlaneMoments(plane(x, c, p, i, ch), k)
		s1 += a
		s2 += b
	}
	return s1, s2
}

// goPlaneMoments is one plane's Σ (v-k) and Σ (v-k)², in eight running
// sums each.
func goPlaneMoments(v []float32, k float64) (s1, s2 float64) {
	var a, b [8]float64
	j := 0
	for ; j+8 <= len(v); j += 8 {
		for l := range 8 {
			d := float64(v[j+l]) - k
			a[l] += d
			b[l] += d * d
		}
	}
	for ; j < len(v); j++ {
		d := float64(v[j]) - k
		a[0] += d
		b[0] += d * d
	}
	return fold(&a), fold(&b)
}

func goPlaneMomentsAll(x []float32, c, p int, k []float32, out []float64) {
	for ch := 0; ch < c; ch++ {
		out[2*ch], out[2*ch+1] = goPlaneMoments(x[ch*p:][:p], float64(k[ch]))
	}
}

func goChanGradSums(x, dy []float32, n, c, p, ch int, mu float64) (s1, s2 float64) {
	for i := 0; i < n; i++ {
		xs, gs := plane(x, c, p, i, ch), plane(dy, c, p, i, ch)
		var a, b [8]float64
		j := 0
		for ; j+8 <= len(gs); j += 8 {
			for l := range 8 {
				g := float64(gs[j+l])
				a[l] += g
				b[l] += g * (float64(xs[j+l]) - mu)
			}
		}
		for ; j < len(gs); j++ {
			a[0] += float64(gs[j])
			b[0] += float64(gs[j]) * (float64(xs[j]) - mu)
		}
		s1 += fold(&a)
		s2 += fold(&b)
	}
	return s1, s2
}

func goChanAffine(dst, x []float32, n, c, p, ch int, a, b float32) {
	for i := 0; i < n; i++ {
		d, xs := plane(dst, c, p, i, ch), plane(x, c, p, i, ch)
		for j, v := range xs {
			d[j] = a*v + b
		}
	}
}

func goChanAffineReLU(dst, x []float32, n, c, p, ch int, a, b float32) {
	for i := 0; i < n; i++ {
		d, xs := plane(dst, c, p, i, ch), plane(x, c, p, i, ch)
		for j, v := range xs {
			bits := math.Float32bits(a*v + b)
			d[j] = math.Float32frombits(bits &^ uint32(int32(bits)>>31))
		}
	}
}

func goChanReLUGradSums(dy, z, dz, x []float32, n, c, p, ch int, mu float64) (s1, s2 float64) {
	for i := 0; i < n; i++ {
		d, zs, gs := plane(dy, c, p, i, ch), plane(z, c, p, i, ch), plane(dz, c, p, i, ch)
		goReLUGrad(d, zs, gs)
	}
	return goChanGradSums(x, dy, n, c, p, ch, mu)
}

func goAdd(y, a, b []float32) {
	y, b = y[:len(a)], b[:len(a)]
	for i, v := range a {
		y[i] = v + b[i]
	}
}

func goChanAffine2(dst, x, y []float32, n, c, p, ch int, a, b, cc float32) {
	for i := 0; i < n; i++ {
		d, xs, ys := plane(dst, c, p, i, ch), plane(x, c, p, i, ch), plane(y, c, p, i, ch)
		for j, v := range xs {
			d[j] = a*v + b*ys[j] + cc
		}
	}
}

func goReLU(y, x []float32) {
	y = y[:len(x)]
	for i, v := range x {
		b := math.Float32bits(v)
		y[i] = math.Float32frombits(b &^ uint32(int32(b)>>31))
	}
}

func goReLUGrad(dx, y, dy []float32) {
	dx, dy = dx[:len(y)], dy[:len(y)]
	for i, v := range y {
		m := uint32(-int32(math.Float32bits(v)) >> 31)
		dx[i] = math.Float32frombits(math.Float32bits(dy[i]) & m)
	}
}

func goMaxPool2Grad(dx, x, y, dy []float32, planes, h, w int) {
	oh, ow := h/2, w/2
	clear(dx[:planes*h*w])
	for p := 0; p < planes; p++ {
		plane, dplane := x[p*h*w:][:h*w], dx[p*h*w:][:h*w]
		yp, dyp := y[p*oh*ow:][:oh*ow], dy[p*oh*ow:][:oh*ow]
		for oy := 0; oy < oh; oy++ {
			r0, r1 := plane[2*oy*w:][:2*ow], plane[(2*oy+1)*w:][:2*ow]
			d0, d1 := dplane[2*oy*w:][:2*ow], dplane[(2*oy+1)*w:][:2*ow]
			for ox, m := range yp[oy*ow:][:ow] {
				switch g := dyp[oy*ow+ox]; m {
				case r0[2*ox]:
					d0[2*ox] = g
				case r0[2*ox+1]:
					d0[2*ox+1] = g
				case r1[2*ox]:
					d1[2*ox] = g
				default:
					d1[2*ox+1] = g
				}
			}
		}
	}
}
