// Elementwise maps and per-channel sums of [N, C, P] tensors (P values a
// plane), vectorised by the compiler for AVX2. They run in exactly the
// order of elem_generic.go, whose results they must equal bit for bit:
// the package is built with -ffp-contract=off (no fused multiply-adds),
// and each sum keeps eight float64 lanes as generic's a[0..7] do.

#include <stdint.h>
#include <string.h>

typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define TARGET __attribute__((target("avx2,fma")))

static inline TARGET v4d load4(const float* p) {
	v4f f;
	memcpy(&f, p, sizeof f);
	return __builtin_convertvector(f, v4d);
}

static inline TARGET double fold(v4d lo, v4d hi) {
	return ((lo[0] + lo[1]) + (lo[2] + lo[3])) + ((hi[0] + hi[1]) + (hi[2] + hi[3]));
}

// Σ x over channel c.
TARGET double gt_kern_chan_sum(const float* x, long N, long C, long P, long c) {
	double s = 0;
	for (long n = 0; n < N; n++) {
		const float* p = x + (n * C + c) * P;
		v4d lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
		long i = 0;
		for (; i + 8 <= P; i += 8) {
			lo += load4(p + i);
			hi += load4(p + i + 4);
		}
		for (; i < P; i++) lo[0] += (double)p[i];
		s += fold(lo, hi);
	}
	return s;
}

// Σ (x-mu)² over channel c.
TARGET double gt_kern_chan_sqdev(const float* x, long N, long C, long P, long c, double mu) {
	double s = 0;
	v4d m = {mu, mu, mu, mu};
	for (long n = 0; n < N; n++) {
		const float* p = x + (n * C + c) * P;
		v4d lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
		long i = 0;
		for (; i + 8 <= P; i += 8) {
			v4d d0 = load4(p + i) - m, d1 = load4(p + i + 4) - m;
			lo += d0 * d0;
			hi += d1 * d1;
		}
		for (; i < P; i++) {
			double d = (double)p[i] - mu;
			lo[0] += d * d;
		}
		s += fold(lo, hi);
	}
	return s;
}

// plane_moments is one plane's Σ (x-k) and Σ (x-k)², in out[0], out[1].
static inline TARGET void plane_moments(const float* p, long P, double k, double* out) {
	v4d m = {k, k, k, k};
	v4d a0 = {0, 0, 0, 0}, a1 = {0, 0, 0, 0}, b0 = {0, 0, 0, 0}, b1 = {0, 0, 0, 0};
	long i = 0;
	for (; i + 8 <= P; i += 8) {
		v4d d0 = load4(p + i) - m, d1 = load4(p + i + 4) - m;
		a0 += d0;
		a1 += d1;
		b0 += d0 * d0;
		b1 += d1 * d1;
	}
	for (; i < P; i++) {
		double d = (double)p[i] - k;
		a0[0] += d;
		b0[0] += d * d;
	}
	out[0] = fold(a0, a1);
	out[1] = fold(b0, b1);
}

// Σ (x-k) and Σ (x-k)² over channel c, one pass: the planes' sums added
// in the order of the samples.
TARGET void gt_kern_chan_moments(const float* x, long N, long C, long P, long c, double k, double* out) {
	double s1 = 0, s2 = 0, q[2];
	for (long n = 0; n < N; n++) {
		plane_moments(x + (n * C + c) * P, P, k, q);
		s1 += q[0];
		s2 += q[1];
	}
	out[0] = s1;
	out[1] = s2;
}

// gt_kern_plane_moments sets out[2c], out[2c+1] to plane c's Σ (x-k[c])
// and Σ (x-k[c])², for the C planes of one sample.
TARGET void gt_kern_plane_moments(const float* x, long C, long P, const float* k, double* out) {
	for (long c = 0; c < C; c++) plane_moments(x + c * P, P, (double)k[c], out + 2 * c);
}

// plane_gradsums adds one plane's Σ dy and Σ dy·(x-mu) to s[0], s[1].
static inline TARGET void plane_gradsums(const float* xs, const float* gs, long P, double mu, double* s) {
	v4d m = {mu, mu, mu, mu};
	v4d a0 = {0, 0, 0, 0}, a1 = {0, 0, 0, 0}, b0 = {0, 0, 0, 0}, b1 = {0, 0, 0, 0};
	long i = 0;
	for (; i + 8 <= P; i += 8) {
		v4d g0 = load4(gs + i), g1 = load4(gs + i + 4);
		a0 += g0;
		a1 += g1;
		b0 += g0 * (load4(xs + i) - m);
		b1 += g1 * (load4(xs + i + 4) - m);
	}
	for (; i < P; i++) {
		a0[0] += (double)gs[i];
		b0[0] += (double)gs[i] * ((double)xs[i] - mu);
	}
	s[0] += fold(a0, a1);
	s[1] += fold(b0, b1);
}

// Σ dy and Σ dy·(x-mu) over channel c.
TARGET void gt_kern_chan_gradsums(const float* x, const float* dy, long N, long C, long P, long c, double mu, double* out) {
	double s[2] = {0, 0};
	for (long n = 0; n < N; n++) plane_gradsums(x + (n * C + c) * P, dy + (n * C + c) * P, P, mu, s);
	out[0] = s[0];
	out[1] = s[1];
}

// Over channel c: dy = ReLU's gradient of dz at ReLU's output z (dz where
// z > 0, as gt_kern_relu_grad), and the sums gt_kern_chan_gradsums takes
// of that dy and x (Σ dy, Σ dy·(x-mu)), in one pass over each plane.
TARGET void gt_kern_chan_relu_grad_sums(float* dy, const float* z, const float* dz, const float* x, long N, long C, long P, long c, double mu, double* out) {
	double s[2] = {0, 0};
	for (long n = 0; n < N; n++) {
		long o = (n * C + c) * P;
		const int32_t* zi = (const int32_t*)(z + o);
		const int32_t* gi = (const int32_t*)(dz + o);
		int32_t* di = (int32_t*)(dy + o);
		for (long i = 0; i < P; i++) di[i] = gi[i] & ((int32_t)(0u - (uint32_t)zi[i]) >> 31);
		plane_gradsums(x + o, dy + o, P, mu, s);
	}
	out[0] = s[0];
	out[1] = s[1];
}

// dst = a·x + b over channel c.
TARGET void gt_kern_chan_affine(float* dst, const float* x, long N, long C, long P, long c, float a, float b) {
	for (long n = 0; n < N; n++) {
		float* d = dst + (n * C + c) * P;
		const float* s = x + (n * C + c) * P;
		for (long i = 0; i < P; i++) d[i] = a * s[i] + b;
	}
}

// dst = max(a·x + b, 0) over channel c, the maximum by the sign bit as
// gt_kern_relu takes it.
TARGET void gt_kern_chan_affine_relu(float* dst, const float* x, long N, long C, long P, long c, float a, float b) {
	for (long n = 0; n < N; n++) {
		int32_t* d = (int32_t*)(dst + (n * C + c) * P);
		const float* s = x + (n * C + c) * P;
		for (long i = 0; i < P; i++) {
			float v = a * s[i] + b;
			int32_t bits;
			memcpy(&bits, &v, sizeof bits);
			d[i] = bits & ~(bits >> 31);
		}
	}
}

// dst = a·x + b·y + c over channel ch.
TARGET void gt_kern_chan_affine2(float* dst, const float* x, const float* y, long N, long C, long P, long ch, float a, float b, float c) {
	for (long n = 0; n < N; n++) {
		long o = (n * C + ch) * P;
		float* d = dst + o;
		const float* xs = x + o;
		const float* ys = y + o;
		for (long i = 0; i < P; i++) d[i] = a * xs[i] + b * ys[i] + c;
	}
}

// y = max(x, 0) by the sign bit: a value whose sign bit is set becomes +0.
TARGET void gt_kern_relu(float* y, const float* x, long n) {
	const int32_t* xi = (const int32_t*)x;
	int32_t* yi = (int32_t*)y;
	for (long i = 0; i < n; i++) yi[i] = xi[i] & ~(xi[i] >> 31);
}

// dx = dy where y's bits, negated as a signed integer, are negative (y > 0,
// and -0, which ReLU never outputs), else +0.
TARGET void gt_kern_relu_grad(float* dx, const float* y, const float* dy, long n) {
	const int32_t* yi = (const int32_t*)y;
	const int32_t* gi = (const int32_t*)dy;
	int32_t* di = (int32_t*)dx;
	for (long i = 0; i < n; i++) di[i] = gi[i] & ((int32_t)(0u - (uint32_t)yi[i]) >> 31);
}

// y = a + b.
TARGET void gt_kern_add(float* y, const float* a, const float* b, long n) {
	for (long i = 0; i < n; i++) y[i] = a[i] + b[i];
}

// gt_kern_maxpool2_grad sets dx, planes of h x w, to MaxPool2D(2)'s input
// gradient: each 2x2 window's dy goes to the first of its values (row by
// row) that equals the window's maximum y, or to its last value when none
// does (a NaN maximum), and +0 everywhere else, the rows and columns no
// window covers included. The selection is by masks, not branches: which
// value holds the maximum follows the data, and a branch on it is
// mispredicted about half the time.
TARGET void gt_kern_maxpool2_grad(float* dx, const float* x, const float* y, const float* dy, long planes, int h, int w) {
	const int oh = h / 2, ow = w / 2;
	for (long p = 0; p < planes; p++) {
		const float* xp = x + p * h * w;
		float* dp = dx + p * h * w;
		const float* yp = y + p * oh * ow;
		const float* gp = dy + p * oh * ow;
		if ((h | w) & 1) {
			for (long i = 0; i < (long)h * w; i++) dp[i] = 0;
		}
		for (int oy = 0; oy < oh; oy++) {
			const int32_t* g = (const int32_t*)(gp + oy * ow);
			const float* m = yp + oy * ow;
			const float* r0 = xp + 2 * oy * w;
			const float* r1 = r0 + w;
			int32_t* d0 = (int32_t*)(dp + 2 * oy * w);
			int32_t* d1 = (int32_t*)(dp + (2 * oy + 1) * w);
			for (int ox = 0; ox < ow; ox++) {
				int32_t e0 = -(int32_t)(r0[2 * ox] == m[ox]);
				int32_t e1 = ~e0 & -(int32_t)(r0[2 * ox + 1] == m[ox]);
				int32_t e2 = ~(e0 | e1) & -(int32_t)(r1[2 * ox] == m[ox]);
				int32_t e3 = ~(e0 | e1 | e2);
				d0[2 * ox] = g[ox] & e0;
				d0[2 * ox + 1] = g[ox] & e1;
				d1[2 * ox] = g[ox] & e2;
				d1[2 * ox + 1] = g[ox] & e3;
			}
		}
	}
}
