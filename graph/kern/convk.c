// Direct convolutions of any kernel size, stride and padding, one sample
// at a time, vectorised over the filters (see doc.go, "Conv and ConvDW").

// The short rows' copies and clears (copyf, zerof) stay loops: GCC would
// otherwise make each a call of memcpy or memset, which costs more than a
// row of a few dozen values (5% of a ResNet-20 step went to those calls).
#pragma GCC optimize("no-tree-loop-distribute-patterns")

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma")))

// The geometry of one sample: C planes of H x W in, K of OH x OW out,
// KH x KW filters. The padded plane is Hp x Wp; output position p = (oy,
// ox) reads the window at base[p] = oy·s·Wp + ox·s of it, shifted by
// off[ij] = i·Wp + j. Positions run in blocks of 6 (np6); the last
// block's extra positions repeat the last one and are not stored.
// Filters run in blocks of 16 (Kp).
typedef struct {
	int C, H, W, K, KH, KW, s, P;
	int OH, OW, Hp, Wp, S, KK, Kp, np, np6;
} kgeom;

static kgeom mkk(int C, int H, int W, int K, int KH, int KW, int s, int P) {
	kgeom g;
	g.C = C; g.H = H; g.W = W; g.K = K; g.KH = KH; g.KW = KW; g.s = s; g.P = P;
	g.OH = (H + 2 * P - KH) / s + 1;
	g.OW = (W + 2 * P - KW) / s + 1;
	g.Hp = H + 2 * P;
	g.Wp = W + 2 * P;
	g.S = g.Hp * g.Wp;
	g.KK = KH * KW;
	g.Kp = (K + 15) / 16 * 16;
	g.np = g.OH * g.OW;
	g.np6 = (g.np + 5) / 6 * 6;
	return g;
}

// Scratch: the padded planes, the filters as [C][KK][Kp], the positions'
// bases (np6 int32), dY as [np][Kp].
long gt_kern_convk_scratch(int C, int H, int W, int K, int KH, int KW, int s, int P) {
	kgeom g = mkk(C, H, W, K, KH, KW, s, P);
	return (long)C * g.S + (long)C * g.KK * g.Kp + g.np6 + (long)g.np * g.Kp;
}

// kpad writes every value of xp: the planes' rows and the zeros around
// them (short rows: loops, not calls of memcpy).
TARGET static void kpad(const kgeom* g, const float* x, float* xp) {
	const int Wp = g->Wp, W = g->W, H = g->H, P = g->P;
	for (int c = 0; c < g->C; c++) {
		float* d = xp + (long)c * g->S;
		const float* s = x + (long)c * H * W;
		long head = (long)P * Wp + P;
		for (long i = 0; i < head; i++) d[i] = 0;
		for (int y = 0; y < H; y++) {
			float* r = d + (long)(y + P) * Wp + P;
			const float* sr = s + (long)y * W;
			for (int i = 0; i < W; i++) r[i] = sr[i];
			for (int i = W; i < W + 2 * P; i++) r[i] = 0;
		}
		for (long i = (long)(H + P) * Wp + P; i < g->S; i++) d[i] = 0;
	}
}

// store6x16 writes the 12 accumulators of a block, 6 rows of 16 lanes.
static inline TARGET void store6x16(float t[6][16], __m256 a00, __m256 a01, __m256 a10, __m256 a11, __m256 a20, __m256 a21,
                                    __m256 a30, __m256 a31, __m256 a40, __m256 a41, __m256 a50, __m256 a51) {
	_mm256_storeu_ps(t[0], a00); _mm256_storeu_ps(t[0] + 8, a01);
	_mm256_storeu_ps(t[1], a10); _mm256_storeu_ps(t[1] + 8, a11);
	_mm256_storeu_ps(t[2], a20); _mm256_storeu_ps(t[2] + 8, a21);
	_mm256_storeu_ps(t[3], a30); _mm256_storeu_ps(t[3] + 8, a31);
	_mm256_storeu_ps(t[4], a40); _mm256_storeu_ps(t[4] + 8, a41);
	_mm256_storeu_ps(t[5], a50); _mm256_storeu_ps(t[5] + 8, a51);
}

static void kbases(const kgeom* g, int32_t* base) {
	int p = 0;
	for (int oy = 0; oy < g->OH; oy++) {
		for (int ox = 0; ox < g->OW; ox++) base[p++] = oy * g->s * g->Wp + ox * g->s;
	}
	for (; p < g->np6; p++) base[p] = base[g->np - 1];
}

// convk_body is gt_kern_convk's loop; KH and KW are constants where it is
// inlined for 3x3, so that the window's loop unrolls.
static inline __attribute__((always_inline)) TARGET void convk_body(const kgeom* gp, const float* xp, const float* wr, const int32_t* base, float* y, const int KH, const int KW) {
	const kgeom* g = gp;
	const int K = g->K, C = g->C;
	for (int kb = 0; kb < g->Kp; kb += 16) {
		for (int p = 0; p < g->np6; p += 6) {
			__m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
			__m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
			__m256 a40 = _mm256_setzero_ps(), a41 = _mm256_setzero_ps(), a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
			const int32_t* b = base + p;
			for (int c = 0; c < C; c++) {
				const float* xc = xp + (long)c * g->S;
				const float* x0 = xc + b[0];
				const float* x1 = xc + b[1];
				const float* x2 = xc + b[2];
				const float* x3 = xc + b[3];
				const float* x4 = xc + b[4];
				const float* x5 = xc + b[5];
				const float* wc = wr + (long)c * KH * KW * g->Kp + kb;
				for (int i = 0; i < KH; i++)
				for (int j = 0; j < KW; j++, wc += g->Kp) {
					int o = i * g->Wp + j;
					__m256 w0 = _mm256_loadu_ps(wc), w1 = _mm256_loadu_ps(wc + 8);
					__m256 v = _mm256_broadcast_ss(x0 + o);
					a00 = _mm256_fmadd_ps(v, w0, a00); a01 = _mm256_fmadd_ps(v, w1, a01);
					v = _mm256_broadcast_ss(x1 + o);
					a10 = _mm256_fmadd_ps(v, w0, a10); a11 = _mm256_fmadd_ps(v, w1, a11);
					v = _mm256_broadcast_ss(x2 + o);
					a20 = _mm256_fmadd_ps(v, w0, a20); a21 = _mm256_fmadd_ps(v, w1, a21);
					v = _mm256_broadcast_ss(x3 + o);
					a30 = _mm256_fmadd_ps(v, w0, a30); a31 = _mm256_fmadd_ps(v, w1, a31);
					v = _mm256_broadcast_ss(x4 + o);
					a40 = _mm256_fmadd_ps(v, w0, a40); a41 = _mm256_fmadd_ps(v, w1, a41);
					v = _mm256_broadcast_ss(x5 + o);
					a50 = _mm256_fmadd_ps(v, w0, a50); a51 = _mm256_fmadd_ps(v, w1, a51);
				}
			}
			float t[6][16];
			store6x16(t, a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51);
			int nq = g->np - p < 6 ? g->np - p : 6;
			int nk = K - kb < 16 ? K - kb : 16;
			for (int k = 0; k < nk; k++) {
				float* yk = y + (long)(kb + k) * g->np + p;
				for (int q = 0; q < nq; q++) yk[q] = t[q][k];
			}
		}
	}
}

// gt_kern_convk sets y[K][OH][OW] = w[K][C][KH][KW] * x[C][H][W]. Each
// output is Σ over c, then i, then j, accumulated in float32 with FMA in
// that order.
TARGET void gt_kern_convk(const float* x, const float* w, float* y, float* scratch, int C, int H, int W, int K, int KH, int KW, int s, int P) {
	kgeom g = mkk(C, H, W, K, KH, KW, s, P);
	float* xp = scratch;
	float* wr = xp + (long)C * g.S;
	int32_t* base = (int32_t*)(wr + (long)C * g.KK * g.Kp);
	kpad(&g, x, xp);
	kbases(&g, base);
	for (int c = 0; c < C; c++) {
		for (int ij = 0; ij < g.KK; ij++) {
			float* d = wr + ((long)c * g.KK + ij) * g.Kp;
			for (int k = 0; k < g.Kp; k++) d[k] = k < K ? w[((long)k * C + c) * g.KK + ij] : 0.0f;
		}
	}
	if (KH == 3 && KW == 3) {
		convk_body(&g, xp, wr, base, y, 3, 3);
	} else {
		convk_body(&g, xp, wr, base, y, KH, KW);
	}
}

// gt_kern_convk_dw adds to dw[K][C][KH][KW] one sample's weight gradient
// of gt_kern_convk: Σ over the output positions, in order, of dy·x, in
// float32 with FMA; the sample's sum is then added to dw.
TARGET void gt_kern_convk_dw(const float* x, const float* dy, float* dw, float* scratch, int C, int H, int W, int K, int KH, int KW, int s, int P) {
	kgeom g = mkk(C, H, W, K, KH, KW, s, P);
	float* xp = scratch;
	int32_t* base = (int32_t*)(xp + (long)C * g.S + (long)C * g.KK * g.Kp);
	float* dt = (float*)(base + g.np6);
	kpad(&g, x, xp);
	kbases(&g, base);
	// dt[p][k] = dy[k][p], zero for k >= K.
	for (int p = 0; p < g.np; p++) {
		float* d = dt + (long)p * g.Kp;
		for (int k = K; k < g.Kp; k++) d[k] = 0;
	}
	for (int k = 0; k < K; k++) {
		const float* src = dy + (long)k * g.np;
		for (int p = 0; p < g.np; p++) dt[(long)p * g.Kp + k] = src[p];
	}
	int off[g.KK];
	for (int i = 0; i < KH; i++) {
		for (int j = 0; j < KW; j++) off[i * KW + j] = i * g.Wp + j;
	}
	// Blocks of 6 shifts (ij) by 16 filters: 12 sums in registers.
	for (int c = 0; c < C; c++) {
		const float* xc = xp + (long)c * g.S;
		for (int kb = 0; kb < g.Kp; kb += 16) {
			for (int ij0 = 0; ij0 < g.KK; ij0 += 6) {
				int nij = g.KK - ij0 < 6 ? g.KK - ij0 : 6;
				int o[6];
				for (int q = 0; q < 6; q++) o[q] = off[ij0 + (q < nij ? q : nij - 1)];
				__m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
				__m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
				__m256 a40 = _mm256_setzero_ps(), a41 = _mm256_setzero_ps(), a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
				const float* dk = dt + kb;
				for (int p = 0; p < g.np; p++, dk += g.Kp) {
					const float* xb = xc + base[p];
					__m256 d0 = _mm256_loadu_ps(dk), d1 = _mm256_loadu_ps(dk + 8);
					__m256 v = _mm256_broadcast_ss(xb + o[0]);
					a00 = _mm256_fmadd_ps(v, d0, a00); a01 = _mm256_fmadd_ps(v, d1, a01);
					v = _mm256_broadcast_ss(xb + o[1]);
					a10 = _mm256_fmadd_ps(v, d0, a10); a11 = _mm256_fmadd_ps(v, d1, a11);
					v = _mm256_broadcast_ss(xb + o[2]);
					a20 = _mm256_fmadd_ps(v, d0, a20); a21 = _mm256_fmadd_ps(v, d1, a21);
					v = _mm256_broadcast_ss(xb + o[3]);
					a30 = _mm256_fmadd_ps(v, d0, a30); a31 = _mm256_fmadd_ps(v, d1, a31);
					v = _mm256_broadcast_ss(xb + o[4]);
					a40 = _mm256_fmadd_ps(v, d0, a40); a41 = _mm256_fmadd_ps(v, d1, a41);
					v = _mm256_broadcast_ss(xb + o[5]);
					a50 = _mm256_fmadd_ps(v, d0, a50); a51 = _mm256_fmadd_ps(v, d1, a51);
				}
				float t[6][16];
				store6x16(t, a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51);
				int nk = K - kb < 16 ? K - kb : 16;
				for (int k = 0; k < nk; k++) {
					float* d = dw + ((long)(kb + k) * C + c) * g.KK + ij0;
					for (int q = 0; q < nij; q++) d[q] += t[q][k];
				}
			}
		}
	}
}

// in_row sets [*lo, *hi) to the outputs ox (of OW) whose window column
// j reads inside a row of W: 0 <= ox*s - P + j < W (lo <= hi).
static inline void in_row(int W, int OW, int s, int P, int j, int* lo, int* hi) {
	int l = P - j > 0 ? (P - j + s - 1) / s : 0;
	int h = (W + P - j + s - 1) / s;
	if (h > OW) h = OW;
	*lo = l < h ? l : h;
	*hi = h;
}

// gt_kern_col2im sets dx[C][H][W] to the sum of the im2col columns (rows
// (c,i,j) of ncols columns, this sample's OH*OW from col0) that read each
// value, adding in the order of c, i, j, oy, ox, in float32.
TARGET void gt_kern_col2im(const float* cols, float* dx, long ncols, long col0, int C, int H, int W, int KH, int KW, int s, int P) {
	const int OH = (H + 2 * P - KH) / s + 1, OW = (W + 2 * P - KW) / s + 1;
	for (long i = 0; i < (long)C * H * W; i++) dx[i] = 0;
	for (int c = 0; c < C; c++) {
		float* plane = dx + (long)c * H * W;
		for (int i = 0; i < KH; i++) {
			for (int j = 0; j < KW; j++) {
				const float* src = cols + ((long)(c * KH + i) * KW + j) * ncols + col0;
				int lo, hi;
				in_row(W, OW, s, P, j, &lo, &hi);
				for (int oy = 0; oy < OH; oy++) {
					int iy = oy * s - P + i;
					if (iy < 0 || iy >= H) continue;
					float* dst = plane + (long)iy * W;
					const float* r = src + (long)oy * OW;
					for (int ox = lo; ox < hi; ox++) dst[ox * s - P + j] += r[ox];
				}
			}
		}
	}
}

// lanes_in is the mask of the lanes x + l (l = 0..7) with lo <= x + l < hi.
TARGET static inline __m256i lanes_in(int x, int lo, int hi) {
	__m256i l = _mm256_add_epi32(_mm256_set1_epi32(x), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
	return _mm256_and_si256(_mm256_cmpgt_epi32(l, _mm256_set1_epi32(lo - 1)), _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), l));
}

// gt_kern_im2col writes this sample's OH*OW columns, from col0, of the
// im2col rows (c,i,j) of ncols columns each: cols[(c,i,j)][col0 + oy*OW
// + ox] = x[c][oy*s-P+i][ox*s-P+j], zero where that falls outside the
// plane. It only copies, so it has the Go fallback's bits. With stride 1
// each output row whose vectors end within its (c,i,j)'s rows (all but
// the last, for rows of 8 and more) is a run of its input row and goes
// in whole vectors of 8, loaded under a mask of the positions inside the
// plane (reading nothing outside it), so that rows of a few values (the
// 10 of a LeNet's second convolution) cost a vector or two, not a loop.
// (Masked stores, which would keep the last row to its own columns too,
// are slow on AMD's Zen: rows of 10 went no faster than the scalar loop.)
TARGET void gt_kern_im2col(const float* x, float* cols, long ncols, long col0, int C, int H, int W, int KH, int KW, int s, int P) {
	const int OH = (H + 2 * P - KH) / s + 1, OW = (W + 2 * P - KW) / s + 1;
	const int nv = (OW + 7) / 8;
	for (int c = 0; c < C; c++) {
		const float* plane = x + (long)c * H * W;
		for (int i = 0; i < KH; i++) {
			for (int j = 0; j < KW; j++) {
				float* dst = cols + ((long)(c * KH + i) * KW + j) * ncols + col0;
				int lo, hi;
				in_row(W, OW, s, P, j, &lo, &hi);
				const int off = j - P;
				for (int oy = 0; oy < OH; oy++) {
					float* d = dst + (long)oy * OW;
					const int iy = oy * s - P + i;
					const int pad = iy < 0 || iy >= H;
					// Whole vectors: the values past the row's end land
					// in the next rows of the same (c,i,j), written
					// after it.
					const int whole = s == 1 && (long)oy * OW + 8 * nv <= (long)OH * OW;
					if (whole && pad) {
						for (int v = 0; v < nv; v++) _mm256_storeu_ps(d + 8 * v, _mm256_setzero_ps());
					} else if (whole) {
						// The row's source, row + off + x, is read only
						// for lo <= x < hi: inside the plane.
						const float* row = plane + (long)iy * W;
						for (int v = 0; v < nv; v++) _mm256_storeu_ps(d + 8 * v, _mm256_maskload_ps(row + off + 8 * v, lanes_in(8 * v, lo, hi)));
					} else if (pad) {
						for (int ox = 0; ox < OW; ox++) d[ox] = 0;
					} else {
						const float* row = plane + (long)iy * W;
						for (int ox = 0; ox < lo; ox++) d[ox] = 0;
						for (int ox = lo; ox < hi; ox++) d[ox] = row[ox * s + off];
						for (int ox = hi; ox < OW; ox++) d[ox] = 0;
					}
				}
			}
		}
	}
}
