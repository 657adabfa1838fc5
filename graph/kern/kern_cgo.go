//go:build cgo && amd64

package kern

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo CFLAGS: -O3 -std=c11 -fno-strict-aliasing
long gt_kern_conv3_scratch(int C, int H, int W, int K);
void gt_kern_conv3(const float* x, const float* w, float* y, float* scratch, int C, int H, int W, int K);
void gt_kern_conv3_dw(const float* x, const float* dy, float* dw, float* scratch, int C, int H, int W, int K);
int gt_kern_avx2(void);
long gt_kern_conv3_bwd_scratch(int C, int H, int W, int K);
void gt_kern_conv3_bwd(const float* x, const float* dy, const float* wT, float* dx, float* dw, float* scratch, int C, int H, int W, int K);
long gt_kern_convk_scratch(int C, int H, int W, int K, int KH, int KW, int s, int P);
void gt_kern_convk(const float* x, const float* w, float* y, float* scratch, int C, int H, int W, int K, int KH, int KW, int s, int P);
void gt_kern_convk_dw(const float* x, const float* dy, float* dw, float* scratch, int C, int H, int W, int K, int KH, int KW, int s, int P);
void gt_kern_gather_wide(float* dst, const float* src, int C, int H, int W, int ns);
void gt_kern_scatter_wide(float* dst, const float* src, int C, int H, int W, int ns);
void gt_kern_col2im(const float* cols, float* dx, long ncols, long col0, int C, int H, int W, int KH, int KW, int s, int P);
void gt_kern_im2col(const float* x, float* cols, long ncols, long col0, int C, int H, int W, int KH, int KW, int s, int P);
double gt_kern_chan_sum(const float* x, long N, long C, long P, long c);
double gt_kern_chan_sqdev(const float* x, long N, long C, long P, long c, double mu);
void gt_kern_chan_gradsums(const float* x, const float* dy, long N, long C, long P, long c, double mu, double* out);
void gt_kern_chan_affine(float* dst, const float* x, long N, long C, long P, long c, float a, float b);
void gt_kern_chan_affine2(float* dst, const float* x, const float* y, long N, long C, long P, long ch, float a, float b, float c);
void gt_kern_relu(float* y, const float* x, long n);
void gt_kern_chan_moments(const float* x, long N, long C, long P, long c, double k, double* out);
void gt_kern_plane_moments(const float* x, long C, long P, const float* k, double* out);
void gt_kern_chan_affine_relu(float* dst, const float* x, long N, long C, long P, long c, float a, float b);
void gt_kern_add(float* y, const float* a, const float* b, long n);
void gt_kern_chan_relu_grad_sums(float* dy, const float* z, const float* dz, const float* x, long N, long C, long P, long c, double mu, double* out);
void gt_kern_relu_grad(float* dx, const float* y, const float* dy, long n);
void gt_kern_adam(float* p, const float* g, float* m, float* v, long n, float b1, float b2, float c1, float c2, float negStep, float bc2s, float eps, float wd);
void gt_kern_maxpool2_grad(float* dx, const float* x, const float* y, const float* dy, long planes, int h, int w);
*/
import "C"

import "os"

var (
	native = C.gt_kern_avx2() != 0 && os.Getenv("GOTRAIN_CPU_KERNELS") != "off"
	why    = map[bool]string{
		true:  "",
		false: "this CPU lacks AVX2 and FMA, or GOTRAIN_CPU_KERNELS=off",
	}[native]
)

func conv3Scratch(c, h, w, k int) int {
	return int(C.gt_kern_conv3_scratch(C.int(c), C.int(h), C.int(w), C.int(k)))
}

func conv3(x, wt, y, scratch []float32, c, h, w, k int) {
	C.gt_kern_conv3((*C.float)(&x[0]), (*C.float)(&wt[0]), (*C.float)(&y[0]), (*C.float)(&scratch[0]), C.int(c), C.int(h), C.int(w), C.int(k))
}

func conv3DW(x, dy, dw, scratch []float32, c, h, w, k int) {
	C.gt_kern_conv3_dw((*C.float)(&x[0]), (*C.float)(&dy[0]), (*C.float)(&dw[0]), (*C.float)(&scratch[0]), C.int(c), C.int(h), C.int(w), C.int(k))
}

func fp(x []float32) *C.float { return (*C.float)(&x[0]) }

func cChanSum(x []float32, n, c, p, ch int) float64 {
	return float64(C.gt_kern_chan_sum(fp(x), C.long(n), C.long(c), C.long(p), C.long(ch)))
}

func cChanSqDev(x []float32, n, c, p, ch int, mu float64) float64 {
	return float64(C.gt_kern_chan_sqdev(fp(x), C.long(n), C.long(c), C.long(p), C.long(ch), C.double(mu)))
}

func cChanGradSums(x, dy []float32, n, c, p, ch int, mu float64) (s1, s2 float64) {
	var out [2]C.double
	C.gt_kern_chan_gradsums(fp(x), fp(dy), C.long(n), C.long(c), C.long(p), C.long(ch), C.double(mu), &out[0])
	return float64(out[0]), float64(out[1])
}

func cChanAffine(dst, x []float32, n, c, p, ch int, a, b float32) {
	C.gt_kern_chan_affine(fp(dst), fp(x), C.long(n), C.long(c), C.long(p), C.long(ch), C.float(a), C.float(b))
}

func cChanAffine2(dst, x, y []float32, n, c, p, ch int, a, b, cc float32) {
	C.gt_kern_chan_affine2(fp(dst), fp(x), fp(y), C.long(n), C.long(c), C.long(p), C.long(ch), C.float(a), C.float(b), C.float(cc))
}

func cPlaneMoments(x []float32, c, p int, k []float32, out []float64) {
	C.gt_kern_plane_moments(fp(x), C.long(c), C.long(p), fp(k), (*C.double)(&out[0]))
}

func cChanMoments(x []float32, n, c, p, ch int, k float64) (s1, s2 float64) {
	var out [2]C.double
	C.gt_kern_chan_moments(fp(x), C.long(n), C.long(c), C.long(p), C.long(ch), C.double(k), &out[0])
	return float64(out[0]), float64(out[1])
}

func cChanAffineReLU(dst, x []float32, n, c, p, ch int, a, b float32) {
	C.gt_kern_chan_affine_relu(fp(dst), fp(x), C.long(n), C.long(c), C.long(p), C.long(ch), C.float(a), C.float(b))
}

func cChanReLUGradSums(dy, z, dz, x []float32, n, c, p, ch int, mu float64) (s1, s2 float64) {
	var out [2]C.double
	C.gt_kern_chan_relu_grad_sums(fp(dy), fp(z), fp(dz), fp(x), C.long(n), C.long(c), C.long(p), C.long(ch), C.double(mu), &out[0])
	return float64(out[0]), float64(out[1])
}

func cAdd(y, a, b []float32) { C.gt_kern_add(fp(y), fp(a), fp(b), C.long(len(a))) }

func cReLU(y, x []float32) { C.gt_kern_relu(fp(y), fp(x), C.long(len(x))) }

func cAdam(p, g, m, v []float32, a Adam) {
	C.gt_kern_adam(fp(p), fp(g), fp(m), fp(v), C.long(len(p)), C.float(a.B1), C.float(a.B2), C.float(a.C1), C.float(a.C2),
		C.float(a.NegStep), C.float(a.Bc2Sqrt), C.float(a.Eps), C.float(a.WD))
}

func cMaxPool2Grad(dx, x, y, dy []float32, planes, h, w int) {
	C.gt_kern_maxpool2_grad(fp(dx), fp(x), fp(y), fp(dy), C.long(planes), C.int(h), C.int(w))
}

func cReLUGrad(dx, y, dy []float32) { C.gt_kern_relu_grad(fp(dx), fp(y), fp(dy), C.long(len(y))) }

func convkScratch(g Geom) int {
	return int(C.gt_kern_convk_scratch(C.int(g.C), C.int(g.H), C.int(g.W), C.int(g.K), C.int(g.KH), C.int(g.KW), C.int(g.S), C.int(g.P)))
}

func convk(g Geom, x, wt, y, scratch []float32) {
	C.gt_kern_convk(fp(x), fp(wt), fp(y), fp(scratch), C.int(g.C), C.int(g.H), C.int(g.W), C.int(g.K), C.int(g.KH), C.int(g.KW), C.int(g.S), C.int(g.P))
}

func convkDW(g Geom, x, dy, dw, scratch []float32) {
	C.gt_kern_convk_dw(fp(x), fp(dy), fp(dw), fp(scratch), C.int(g.C), C.int(g.H), C.int(g.W), C.int(g.K), C.int(g.KH), C.int(g.KW), C.int(g.S), C.int(g.P))
}

func conv3BwdScratch(c, h, w, k int) int {
	return int(C.gt_kern_conv3_bwd_scratch(C.int(c), C.int(h), C.int(w), C.int(k)))
}

func conv3Bwd(x, dy, wT, dx, dw, scratch []float32, c, h, w, k int) {
	var dxp *C.float
	if dx != nil {
		dxp = fp(dx)
	}
	C.gt_kern_conv3_bwd(fp(x), fp(dy), fp(wT), dxp, fp(dw), fp(scratch), C.int(c), C.int(h), C.int(w), C.int(k))
}

func cGatherWide(dst, src []float32, c, h, w, ns int) {
	C.gt_kern_gather_wide(fp(dst), fp(src), C.int(c), C.int(h), C.int(w), C.int(ns))
}

func cScatterWide(dst, src []float32, c, h, w, ns int) {
	C.gt_kern_scatter_wide(fp(dst), fp(src), C.int(c), C.int(h), C.int(w), C.int(ns))
}

func cIm2Col(g Geom, x, cols []float32, ncols, col0 int) {
	C.gt_kern_im2col(fp(x), fp(cols), C.long(ncols), C.long(col0), C.int(g.C), C.int(g.H), C.int(g.W), C.int(g.KH), C.int(g.KW), C.int(g.S), C.int(g.P))
}

func cCol2Im(g Geom, cols []float32, ncols, col0 int, dx []float32) {
	C.gt_kern_col2im(fp(cols), fp(dx), C.long(ncols), C.long(col0), C.int(g.C), C.int(g.H), C.int(g.W), C.int(g.KH), C.int(g.KW), C.int(g.S), C.int(g.P))
}
