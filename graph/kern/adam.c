// Adam's update of one parameter (see AdamUpdate in adam.go), eight
// values at a time. Each operation is the Go fallback's, in its order and
// precision: float32 products and quotients rounded as float32; the
// fused multiply-adds (FMA32) as a float64 product of two float32
// values (exact) plus a float64 value, rounded to float64 and then to
// float32; float32 square roots (correctly rounded, as the Go code's
// float64 root rounded to float32 is). So its bits are the fallback's.

#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma")))

// fma32x8 is a*b + c for eight float32 lanes, as FMA32: in float64, then
// rounded to float32.
TARGET static inline __m256 fma32x8(__m256 a, __m256 b, __m256 c) {
	__m256d lo = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_castps256_ps128(b))),
				   _mm256_cvtps_pd(_mm256_castps256_ps128(c)));
	__m256d hi = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1))),
				   _mm256_cvtps_pd(_mm256_extractf128_ps(c, 1)));
	return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}

TARGET static inline float fma32(float a, float b, float c) { return (float)((double)a * (double)b + (double)c); }

// gt_kern_adam applies one step to n values: g += wd·p when wd != 0;
// m = fma(g, c1, m·b1); v = fma(c2·g, g, v·b2); p += negStep·m /
// (sqrt(v)/bc2s + eps).
TARGET void gt_kern_adam(float* p, const float* g, float* m, float* v, long n, float b1, float b2, float c1, float c2, float negStep, float bc2s, float eps, float wd) {
	const __m256 B1 = _mm256_set1_ps(b1), B2 = _mm256_set1_ps(b2), C1 = _mm256_set1_ps(c1), C2 = _mm256_set1_ps(c2);
	const __m256 NS = _mm256_set1_ps(negStep), BC = _mm256_set1_ps(bc2s), EPS = _mm256_set1_ps(eps), WD = _mm256_set1_ps(wd);
	long j = 0;
	for (; j + 8 <= n; j += 8) {
		__m256 pj = _mm256_loadu_ps(p + j), gj = _mm256_loadu_ps(g + j);
		if (wd != 0) gj = fma32x8(pj, WD, gj);
		__m256 mj = fma32x8(gj, C1, _mm256_mul_ps(_mm256_loadu_ps(m + j), B1));
		__m256 vj = fma32x8(_mm256_mul_ps(C2, gj), gj, _mm256_mul_ps(_mm256_loadu_ps(v + j), B2));
		_mm256_storeu_ps(m + j, mj);
		_mm256_storeu_ps(v + j, vj);
		__m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vj), BC), EPS);
		_mm256_storeu_ps(p + j, _mm256_add_ps(pj, _mm256_div_ps(_mm256_mul_ps(NS, mj), den)));
	}
	for (; j < n; j++) {
		float pj = p[j], gj = g[j];
		if (wd != 0) gj = fma32(pj, wd, gj);
		float mj = fma32(gj, c1, m[j] * b1);
		float vj = fma32(c2 * gj, gj, v[j] * b2);
		m[j] = mj;
		v[j] = vj;
		float den = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(vj))) / bc2s + eps;
		p[j] = pj + negStep * mj / den;
	}
}
