// Direct 3x3 convolutions of stride 1 and padding 1 ("same"), one sample
// at a time, with AVX2 and FMA. See doc.go for the layout and the order of
// the sums.

// The short rows' copies and clears (copyf, zerof) stay loops: GCC would
// otherwise make each a call of memcpy or memset, which costs more than a
// row of a few dozen values (5% of a ResNet-20 step went to those calls).
#pragma GCC optimize("no-tree-loop-distribute-patterns")

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma")))

int gt_kern_avx2(void) {
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// The geometry of one sample: C input channels of H x W, K filters.
// Wp = W+1 is the padded row: W values and one zero, which is both the
// right padding of its row and the left padding of the next (column -1
// of row y lies at the end of row y-1). The output is computed at the
// L = H*Wp positions of the padded-width grid (1 of each row's Wp is not
// an output), rounded up to Lb, a multiple of 24 (3 vectors). A padded
// input plane holds S floats: row y+1, column x+1 is x[y][x]; everything
// else is zero, including the tail that the last blocks read past the
// last row.
typedef struct {
	int C, H, W, K;
	int Wp, L, Lb, S;
} geom;

static geom mkgeom(int C, int H, int W, int K) {
	geom g;
	g.C = C; g.H = H; g.W = W; g.K = K;
	g.Wp = W + 1;
	g.L = H * g.Wp;
	g.Lb = (g.L + 23) / 24 * 24;
	g.S = (g.Lb + 2 * g.Wp + 2 + 8 + 7) / 8 * 8;
	return g;
}

// gt_kern_conv3_scratch is the floats of scratch one sample's forward or
// weight-gradient call needs.
long gt_kern_conv3_scratch(int C, int H, int W, int K) {
	geom g = mkgeom(C, H, W, K);
	int K4 = (K + 3) / 4 * 4;
	long xp = (long)C * g.S;
	long yq = (long)K4 * g.Lb;
	long wr = (long)K4 * C * 9;
	return xp + yq + wr;
}

// copyf copies n floats: the rows here are short (a few dozen values),
// where a call of memcpy costs more than the copy.
static inline void copyf(float* restrict d, const float* restrict s, int n) {
	for (int i = 0; i < n; i++) d[i] = s[i];
}

static inline void zerof(float* d, long n) {
	for (long i = 0; i < n; i++) d[i] = 0;
}

// first_lanes is the mask of the first n lanes (all 8 for n >= 8, none
// for n <= 0).
TARGET static inline __m256i first_lanes(int n) {
	return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// row_zero copies a row of W values to d and zeroes d[W], in whole
// vectors: the last one loads the row's remaining values under a mask
// (reading nothing past the row) and stores 8 values, zeros after the
// row's end. It writes up to d[8*(W/8)+7]: past d[W], values that the
// caller writes later (the next row) or zeroes (the plane's tail).
TARGET static inline void row_zero(float* d, const float* s, int W) {
	int x = 0;
	for (; x + 8 <= W; x += 8) _mm256_storeu_ps(d + x, _mm256_loadu_ps(s + x));
	_mm256_storeu_ps(d + x, _mm256_maskload_ps(s + x, first_lanes(W - x)));
}

// pad_input writes every value of xp: the planes' rows and the zeros
// around them.
TARGET static void pad_input(const geom* g, const float* x, float* xp) {
	const int Wp = g->Wp, W = g->W, H = g->H;
	for (int c = 0; c < g->C; c++) {
		float* d = xp + (long)c * g->S;
		const float* s = x + (long)c * H * W;
		zerof(d, Wp + 1); // the top row and the first row's left column
		// each row, and the zero after it: its right column, the next
		// row's left
		for (int y = 0; y < H; y++) row_zero(d + (long)(y + 1) * Wp + 1, s + (long)y * W, W);
		zerof(d + (long)(H + 1) * Wp + 1, g->S - ((long)(H + 1) * Wp + 1));
	}
}

// gt_kern_conv3 sets y[K][H][W] = w[K][C][3][3] * x[C][H][W] (one sample,
// padding 1, stride 1). Each output is Σ over c, then i, then j of
// w·x, accumulated in float32 with FMA in that order.
__attribute__((target("avx2,fma")))
static void conv3_core(const geom* gp, const float* xp, const float* w, float* y, float* yq, float* wr) {
	const geom g = *gp;
	const int C = g.C, H = g.H, W = g.W, K = g.K;
	int nkb = (K + 3) / 4;
	// wr[kb][c][ij][4]: the weights of filters 4kb..4kb+3, zero past K.
	for (int kb = 0; kb < nkb; kb++) {
		for (int c = 0; c < C; c++) {
			for (int ij = 0; ij < 9; ij++) {
				for (int q = 0; q < 4; q++) {
					int k = kb * 4 + q;
					wr[((long)(kb * C + c) * 9 + ij) * 4 + q] = k < K ? w[((long)k * C + c) * 9 + ij] : 0.0f;
				}
			}
		}
	}
	const int Wp = g.Wp;
	const int off[9] = {0, 1, 2, Wp, Wp + 1, Wp + 2, 2 * Wp, 2 * Wp + 1, 2 * Wp + 2};
	for (int kb = 0; kb < nkb; kb++) {
		float* yk = yq + (long)kb * 4 * g.Lb;
		for (int p = 0; p < g.Lb; p += 24) {
			__m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a02 = _mm256_setzero_ps();
			__m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(), a12 = _mm256_setzero_ps();
			__m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a22 = _mm256_setzero_ps();
			__m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(), a32 = _mm256_setzero_ps();
			const float* wc = wr + (long)kb * C * 36;
			for (int c = 0; c < C; c++) {
				const float* xc = xp + (long)c * g.S + p;
#pragma GCC unroll 9
				for (int ij = 0; ij < 9; ij++, wc += 4) {
					const float* s = xc + off[ij];
					__m256 x0 = _mm256_loadu_ps(s), x1 = _mm256_loadu_ps(s + 8), x2 = _mm256_loadu_ps(s + 16);
					__m256 b = _mm256_broadcast_ss(wc);
					a00 = _mm256_fmadd_ps(b, x0, a00); a01 = _mm256_fmadd_ps(b, x1, a01); a02 = _mm256_fmadd_ps(b, x2, a02);
					b = _mm256_broadcast_ss(wc + 1);
					a10 = _mm256_fmadd_ps(b, x0, a10); a11 = _mm256_fmadd_ps(b, x1, a11); a12 = _mm256_fmadd_ps(b, x2, a12);
					b = _mm256_broadcast_ss(wc + 2);
					a20 = _mm256_fmadd_ps(b, x0, a20); a21 = _mm256_fmadd_ps(b, x1, a21); a22 = _mm256_fmadd_ps(b, x2, a22);
					b = _mm256_broadcast_ss(wc + 3);
					a30 = _mm256_fmadd_ps(b, x0, a30); a31 = _mm256_fmadd_ps(b, x1, a31); a32 = _mm256_fmadd_ps(b, x2, a32);
				}
			}
			float* d = yk + p;
			_mm256_storeu_ps(d, a00); _mm256_storeu_ps(d + 8, a01); _mm256_storeu_ps(d + 16, a02);
			d += g.Lb;
			_mm256_storeu_ps(d, a10); _mm256_storeu_ps(d + 8, a11); _mm256_storeu_ps(d + 16, a12);
			d += g.Lb;
			_mm256_storeu_ps(d, a20); _mm256_storeu_ps(d + 8, a21); _mm256_storeu_ps(d + 16, a22);
			d += g.Lb;
			_mm256_storeu_ps(d, a30); _mm256_storeu_ps(d + 8, a31); _mm256_storeu_ps(d + 16, a32);
		}
	}
	// Keep the W outputs of each row of Wp.
	for (int k = 0; k < K; k++) {
		for (int r = 0; r < H; r++) copyf(y + ((long)k * H + r) * W, yq + (long)k * g.Lb + r * Wp, W);
	}
}

__attribute__((target("avx2,fma")))
void gt_kern_conv3(const float* x, const float* w, float* y, float* scratch, int C, int H, int W, int K) {
	geom g = mkgeom(C, H, W, K);
	int nkb = (K + 3) / 4;
	float* xp = scratch;
	float* yq = xp + (long)C * g.S;
	float* wr = yq + (long)nkb * 4 * g.Lb;
	pad_input(&g, x, xp);
	conv3_core(&g, xp, w, y, yq, wr);
}

static float hsum(__m256 v) __attribute__((target("avx2,fma")));
static float hsum(__m256 v) {
	__m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
	lo = _mm_add_ps(lo, hi);
	__m128 sh = _mm_movehl_ps(lo, lo);
	lo = _mm_add_ps(lo, sh);
	sh = _mm_shuffle_ps(lo, lo, 1);
	return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}

// gt_kern_conv3_dw adds to dw[K][C][3][3] one sample's weight gradient:
// dw[k][c][i][j] += Σ_{y,x} dy[k][y][x] · x[c][y+i-1][x+j-1]. Each sum is
// taken over the sample's positions in eight lanes (position p in lane
// p mod 8 of the padded-width grid), then the lanes summed in a fixed
// order, then added to dw.
// dw_core adds the weight gradient to dw from the padded planes xp and
// dY on the padded-width grid, dq, its planes ds apart (zero in the
// extra column of each row, past L, and for the filters from K to the
// next multiple of 4).
__attribute__((target("avx2,fma")))
static void dw_core(const geom* gp, const float* xp, const float* dq, long ds, float* dw) {
	const geom g = *gp;
	const int C = g.C, K = g.K;
	const int Wp = g.Wp, Lv = (g.L + 7) / 8 * 8;
	// Filters in blocks of 4 (dq of a missing filter reads zeros: its
	// sums are dropped), shifts (i, j) in rows of 3: 12 dot products at
	// once, each in eight lanes, from 4 vectors of dY and 3 of the plane
	// per 8 positions. A block's 4 planes of dY stay in the L1 cache while
	// the C planes of X pass, each once a block (the other way round, with
	// the blocks inside the channels, all of dY streams from L2 for every
	// channel and row: ResNet-20's step took 1.5-2% longer, runs of 240
	// steps alternating the two: 0.977, 0.992, 0.982). The sums and their
	// order do not depend on it.
	const int nkb = (K + 3) / 4;
	for (int kb = 0; kb < nkb; kb++) {
		const float* d0 = dq + (long)kb * 4 * ds;
		const float* d1 = d0 + ds;
		const float* d2 = d1 + ds;
		const float* d3 = d2 + ds;
		for (int c = 0; c < C; c++) {
			const float* xc = xp + (long)c * g.S;
			for (int i = 0; i < 3; i++) {
				const float* xi = xc + i * Wp;
				__m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a02 = _mm256_setzero_ps();
				__m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(), a12 = _mm256_setzero_ps();
				__m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a22 = _mm256_setzero_ps();
				__m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(), a32 = _mm256_setzero_ps();
				for (int p = 0; p < Lv; p += 8) {
					__m256 x0 = _mm256_loadu_ps(xi + p), x1 = _mm256_loadu_ps(xi + p + 1), x2 = _mm256_loadu_ps(xi + p + 2);
					__m256 d = _mm256_loadu_ps(d0 + p);
					a00 = _mm256_fmadd_ps(d, x0, a00); a01 = _mm256_fmadd_ps(d, x1, a01); a02 = _mm256_fmadd_ps(d, x2, a02);
					d = _mm256_loadu_ps(d1 + p);
					a10 = _mm256_fmadd_ps(d, x0, a10); a11 = _mm256_fmadd_ps(d, x1, a11); a12 = _mm256_fmadd_ps(d, x2, a12);
					d = _mm256_loadu_ps(d2 + p);
					a20 = _mm256_fmadd_ps(d, x0, a20); a21 = _mm256_fmadd_ps(d, x1, a21); a22 = _mm256_fmadd_ps(d, x2, a22);
					d = _mm256_loadu_ps(d3 + p);
					a30 = _mm256_fmadd_ps(d, x0, a30); a31 = _mm256_fmadd_ps(d, x1, a31); a32 = _mm256_fmadd_ps(d, x2, a32);
				}
				__m256 acc[4][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
				for (int q = 0; q < 4 && kb * 4 + q < K; q++) {
					float* o = dw + ((long)(kb * 4 + q) * C + c) * 9 + i * 3;
					o[0] += hsum(acc[q][0]);
					o[1] += hsum(acc[q][1]);
					o[2] += hsum(acc[q][2]);
				}
			}
		}
	}
}

__attribute__((target("avx2,fma")))
void gt_kern_conv3_dw(const float* x, const float* dy, float* dw, float* scratch, int C, int H, int W, int K) {
	geom g = mkgeom(C, H, W, K);
	float* xp = scratch;
	float* dq = xp + (long)C * g.S;
	pad_input(&g, x, xp);
	// dq[k]: dy[k] on the padded-width grid, zero in the extra column of
	// each row and past L.
	const int Wp = g.Wp;
	for (int k = 0; k < K; k++) {
		float* d = dq + (long)k * g.Lb;
		for (int r = 0; r < H; r++) {
			copyf(d + r * Wp, dy + ((long)k * H + r) * W, W);
			d[r * Wp + W] = 0;
		}
		zerof(d + (long)H * Wp, g.Lb - (long)H * Wp);
	}
	const int nkb = (K + 3) / 4;
	zerof(dq + (long)K * g.Lb, (long)(nkb * 4 - K) * g.Lb);
	dw_core(&g, xp, dq, g.Lb, dw);
}

// gt_kern_conv3_bwd_scratch is the floats of scratch gt_kern_conv3_bwd
// needs.
long gt_kern_conv3_bwd_scratch(int C, int H, int W, int K) {
	geom g = mkgeom(C, H, W, K);
	long K4 = (K + 3) / 4 * 4, C4 = (C + 3) / 4 * 4;
	return (K4 + C) * g.S + C4 * g.Lb + C4 * K * 9;
}

// gt_kern_conv3_bwd is gt_kern_conv3_dw and, when dx is not NULL, the
// input gradient dx[C][H][W] (the convolution of dY with wT[C][K][3][3],
// the filters flipped and transposed), from one padding of dY: its padded
// plane is also its padded-width grid, Wp+1 values on. Each result has
// the bits of the separate calls.
__attribute__((target("avx2,fma")))
void gt_kern_conv3_bwd(const float* x, const float* dy, const float* wT, float* dx, float* dw, float* scratch, int C, int H, int W, int K) {
	geom g = mkgeom(C, H, W, K), t = mkgeom(K, H, W, C);
	long K4 = (K + 3) / 4 * 4, C4 = (C + 3) / 4 * 4;
	float* dp = scratch;
	float* xp = dp + K4 * g.S;
	float* yq = xp + (long)C * g.S;
	float* wr = yq + C4 * g.Lb;
	pad_input(&t, dy, dp);
	zerof(dp + (long)K * g.S, (K4 - K) * g.S);
	pad_input(&g, x, xp);
	if (dx) conv3_core(&t, dp, wT, dx, yq, wr);
	dw_core(&g, xp, dp + g.Wp + 1, g.S, dw);
}

// copy_row copies W floats from s to d in whole vectors, the last under
// a mask: nothing is read or written past the W values.
TARGET static inline void copy_row(float* d, const float* s, int W) {
	int x = 0;
	for (; x + 8 <= W; x += 8) _mm256_storeu_ps(d + x, _mm256_loadu_ps(s + x));
	if (x < W) {
		__m256i m = first_lanes(W - x);
		_mm256_maskstore_ps(d + x, m, _mm256_maskload_ps(s + x, m));
	}
}

// gt_kern_gather_wide lays the C planes (H x W) of ns samples of src
// (sample-major, C·H·W each) side by side into dst, C planes of H rows
// of ns·(W+1)-1: sample s's row in columns s·(W+1) on, a zero column
// between two samples.
TARGET void gt_kern_gather_wide(float* dst, const float* src, int C, int H, int W, int ns) {
	const long ww = (long)ns * (W + 1) - 1, hw = (long)H * W;
	for (int c = 0; c < C; c++) {
		for (int y = 0; y < H; y++) {
			float* row = dst + ((long)c * H + y) * ww;
			for (int s = 0; s < ns; s++) {
				copy_row(row + (long)s * (W + 1), src + ((long)s * C + c) * hw + (long)y * W, W);
				if (s + 1 < ns) row[(long)s * (W + 1) + W] = 0;
			}
		}
	}
}

// gt_kern_scatter_wide is gt_kern_gather_wide's inverse: the samples'
// rows of src back to their planes in dst, the zero columns dropped.
TARGET void gt_kern_scatter_wide(float* dst, const float* src, int C, int H, int W, int ns) {
	const long ww = (long)ns * (W + 1) - 1, hw = (long)H * W;
	for (int c = 0; c < C; c++) {
		for (int y = 0; y < H; y++) {
			const float* row = src + ((long)c * H + y) * ww;
			for (int s = 0; s < ns; s++) copy_row(dst + ((long)s * C + c) * hw + (long)y * W, row + (long)s * (W + 1), W);
		}
	}
}
