// gotrain's CUDA kernels: one per op of graph/'s op set that cuBLAS does not
// cover, plus the optimisers' fused updates and the dropout RNG.
//
// The same source is compiled twice:
//   - for the device by NVRTC at first use (gpu build, package gpu/cuda);
//   - for the host by the C compiler (package csrc), where every kernel
//     runs as one thread of one block, and again where it runs thread by
//     thread over a GPU's grid in a scattered order (emu.h). The per-op
//     tests run there against graph/'s CPU ops in every build, so the
//     kernels' arithmetic, indexing and independence from the threads'
//     order are tested without a GPU.
// That is why every kernel is a grid-stride loop over independent outputs:
// no shared memory, no synchronisation, no atomics, written in the C subset
// that both compilers accept. Reductions are one thread per output, summing
// in a fixed order, so results are deterministic run to run; where the
// outputs are few and the sums long (a convolution's bias gradient, Dot,
// the norm's sums of squares, a batch norm's statistics, a layer norm's
// weight gradient) they take two passes: fixed partial sums over many
// threads, then the parts added in order.

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KERNEL extern "C" __global__ void
#define DEVICE __device__ static inline
#else
#include "emu.h"
#endif

// FOR runs i over [0, n) across the grid (emu.h's grid mode brings its
// own, which counts the iterations).
#ifndef FOR
#define FOR(i, n) for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (long)(n); i += (long)blockDim.x * gridDim.x)
#endif

// sum_f64 is Σ p[0..n) in a fixed order: four interleaved sums, so that
// the one thread that takes it keeps four loads in flight.
DEVICE double sum_f64(const double *p, long n) {
	double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	long i = 0;
	for (; i + 4 <= n; i += 4) {
		s0 += p[i];
		s1 += p[i + 1];
		s2 += p[i + 2];
		s3 += p[i + 3];
	}
	for (; i < n; i++) s0 += p[i];
	return (s0 + s1) + (s2 + s3);
}

// fma32 rounds a*b+c as trainer/optim does: the float32 product is exact in
// float64, the sum is rounded to float64 and then to float32.
DEVICE float fma32(float a, float b, float c) { return (float)((double)a * (double)b + (double)c); }

KERNEL fill(float *y, float v, long n) {
	FOR(i, n) y[i] = v;
}

KERNEL copy_f32(const float *x, float *y, long n) {
	FOR(i, n) y[i] = x[i];
}

// ---- gradient buckets: parameters' gradients packed into one buffer ----
// y[yoff+i] = scale·x[i], or += when accumulate
KERNEL axpy_at(const float *x, float *y, long n, long yoff, float scale, int accumulate) {
	FOR(i, n) y[yoff + i] = accumulate ? y[yoff + i] + x[i] * scale : x[i] * scale;
}

// y[yoff+i] = x[xoff+i]
KERNEL copy_at(const float *x, long xoff, float *y, long yoff, long n) {
	FOR(i, n) y[yoff + i] = x[xoff + i];
}

// y[yoff+i] = v
KERNEL fill_at(float *y, long yoff, long n, float v) {
	FOR(i, n) y[yoff + i] = v;
}

// ---- Linear: y = b broadcast over the rows, then cuBLAS adds X·Wᵀ ----
KERNEL bias_rows(float *y, const float *b, long rows, long m) {
	FOR(i, rows * m) y[i] = b[i % m];
}

// y[c,j] = Σ_i x[i,j] over the rows of chunk c, [c·chunk, (c+1)·chunk) ∩
// [0, n), in order: with chunk ≥ n (and n ≥ 1), y[j] is the column sum.
// gpu/executor adds long columns up through a tree of such chunks, so that
// no thread's loop is long: a thread's loads wait on each other, and a GPU
// hides that only with many threads.
KERNEL sum_rows(const float *x, float *y, long n, long m, long chunk) {
	long chunks = n > 0 ? (n + chunk - 1) / chunk : 1;
	FOR(t, chunks * m) {
		long c = t / m, j = t % m, end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
		float s = 0;
		for (long i = c * chunk; i < end; i++) s += x[i * m + j];
		y[t] = s;
	}
}

// ---- activations ----
KERNEL relu(const float *x, float *y, long n) {
	FOR(i, n) y[i] = x[i] > 0 ? x[i] : 0;
}
KERNEL relu_grad(const float *y, const float *dy, float *dx, long n) {
	FOR(i, n) dx[i] = y[i] > 0 ? dy[i] : 0;
}
KERNEL tanh_fwd(const float *x, float *y, long n) {
	FOR(i, n) y[i] = (float)tanh((double)x[i]);
}
KERNEL tanh_grad(const float *y, const float *dy, float *dx, long n) {
	FOR(i, n) dx[i] = dy[i] * (1 - y[i] * y[i]);
}
KERNEL sigmoid_fwd(const float *x, float *y, long n) {
	FOR(i, n) y[i] = (float)(1 / (1 + exp(-(double)x[i])));
}
KERNEL sigmoid_grad(const float *y, const float *dy, float *dx, long n) {
	FOR(i, n) dx[i] = dy[i] * y[i] * (1 - y[i]);
}

// ---- GELU (PyTorch's exact form) and SiLU, in float64 as graph/ ----
// Their gradients are functions of the input: the grad kernels take x, dy.
// Φ(x) = ½(1 + erf(x/√2)), φ(x) = exp(−x²/2)/√(2π), σ(x) = 1/(1 + e^−x).
// y = x·Φ(x)
KERNEL gelu_fwd(const float *x, float *y, long n) {
	FOR(i, n) {
		double v = (double)x[i];
		y[i] = (float)(0.5 * v * (1 + erf(v / 1.4142135623730951)));
	}
}
// dx = dy·(Φ(x) + x·φ(x))
KERNEL gelu_grad(const float *x, const float *dy, float *dx, long n) {
	FOR(i, n) {
		double v = (double)x[i];
		double d = 0.5 * (1 + erf(v / 1.4142135623730951)) + v * exp(-0.5 * v * v) / 2.5066282746310002;
		dx[i] = (float)((double)dy[i] * d);
	}
}
// y = x·σ(x)
KERNEL silu_fwd(const float *x, float *y, long n) {
	FOR(i, n) {
		double v = (double)x[i];
		y[i] = (float)(v / (1 + exp(-v)));
	}
}
// dx = dy·σ(x)·(1 + x·(1 − σ(x)))
KERNEL silu_grad(const float *x, const float *dy, float *dx, long n) {
	FOR(i, n) {
		double v = (double)x[i];
		double s = 1 / (1 + exp(-v));
		dx[i] = (float)((double)dy[i] * (s * (1 + v * (1 - s))));
	}
}

// y = x·m elementwise (dropout: m holds 0 or 1/(1-p))
KERNEL mul(const float *x, const float *m, float *y, long n) {
	FOR(i, n) y[i] = x[i] * m[i];
}

// y = a + b elementwise (Gorgonia's Add: residual connections and the sum
// of a fan-out's gradients)
KERNEL add(const float *a, const float *b, float *y, long n) {
	FOR(i, n) y[i] = a[i] + b[i];
}

// ---- Gorgonia's own operators (graph/gorgonia.go) ----
// y = a − b and y = a / b elementwise, in float32
KERNEL sub(const float *a, const float *b, float *y, long n) {
	FOR(i, n) y[i] = a[i] - b[i];
}
KERNEL div_f32(const float *a, const float *b, float *y, long n) {
	FOR(i, n) y[i] = a[i] / b[i];
}

// a op b in float32, op's code as gpu/executor numbers graph/'s "op"
// attribute: 0 +, 1 −, 2 ⊙, 3 ÷, 4 <, 5 >, 6 <=, 7 >= (comparisons give
// 1 or 0)
DEVICE float scalar_op(float a, float b, int op) {
	switch (op) {
	case 0: return a + b;
	case 1: return a - b;
	case 2: return a * b;
	case 3: return a / b;
	case 4: return a < b ? 1.0f : 0.0f;
	case 5: return a > b ? 1.0f : 0.0f;
	case 6: return a <= b ? 1.0f : 0.0f;
	default: return a >= b ? 1.0f : 0.0f;
	}
}

// y = x op s, or s op x with scalar_first; s is one value in device
// memory (a graph's scalar node, known only on the device)
KERNEL elem_scalar(const float *x, const float *s, float *y, long n, int op, int scalar_first) {
	FOR(i, n) y[i] = scalar_first ? scalar_op(s[0], x[i], op) : scalar_op(x[i], s[0], op);
}

// fn(x) in float64, rounded to float32, fn's code as gpu/executor numbers
// graph/'s "fn" attribute: 0 neg, 1 exp, 2 ln, 3 sqrt, 4 square, 5 tanh,
// 6 sigmoid, 7 abs, 8 inv (1/x), 9 invSqrt (1/sqrt x), 10 cube
DEVICE double unary_fn(double x, int fn) {
	switch (fn) {
	case 0: return -x;
	case 1: return exp(x);
	case 2: return log(x);
	case 3: return sqrt(x);
	case 4: return x * x;
	case 5: return tanh(x);
	case 6: return 1 / (1 + exp(-x));
	case 7: return fabs(x);
	case 8: return 1 / x;
	case 9: return 1 / sqrt(x);
	default: return x * x * x;
	}
}
KERNEL elem_unary(const float *x, float *y, long n, int fn) {
	FOR(i, n) y[i] = (float)unary_fn((double)x[i], fn);
}

// ---- along one axis of a row-major tensor: [outer, n, inner] ----
// Repeat: y[o,k,i] = x[o,i] for k < n (x's axis has size 1)
KERNEL repeat_axis(const float *x, float *y, long outer, long n, long inner) {
	FOR(t, outer * n * inner) {
		long i = t % inner, o = t / (n * inner);
		y[t] = x[o * inner + i];
	}
}

// Softmax along the axis (Gorgonia's SoftMax; log: LogSoftMax), one
// thread per line: its maximum m, s = Σ exp(x−m) in float64, then
// exp(x−m)/s or x−m−ln s
KERNEL softmax_axis(const float *x, float *y, long outer, long n, long inner, int lg) {
	FOR(t, outer * inner) {
		long i = t % inner, o = t / inner;
		const float *p = x + o * n * inner + i;
		float *q = y + o * n * inner + i;
		double m = p[0];
		for (long k = 1; k < n; k++) m = fmax(m, (double)p[k * inner]);
		double s = 0;
		for (long k = 0; k < n; k++) s += exp((double)p[k * inner] - m);
		double ls = log(s);
		for (long k = 0; k < n; k++) {
			double v = (double)p[k * inner] - m;
			q[k * inner] = (float)(lg ? v - ls : exp(v) / s);
		}
	}
}

// Its gradient from Y and dY: dX = Y⊙(dY − Σ dY⊙Y), or for log-softmax
// dX = dY − exp(Y)·Σ dY, the sums in float64 in order
KERNEL softmax_grad_axis(const float *y, const float *g, float *dx, long outer, long n, long inner, int lg) {
	FOR(t, outer * inner) {
		long i = t % inner, o = t / inner;
		const float *yp = y + o * n * inner + i, *gp = g + o * n * inner + i;
		float *dp = dx + o * n * inner + i;
		double s = 0;
		if (lg) {
			for (long k = 0; k < n; k++) s += (double)gp[k * inner];
			for (long k = 0; k < n; k++) dp[k * inner] = (float)((double)gp[k * inner] - exp((double)yp[k * inner]) * s);
		} else {
			for (long k = 0; k < n; k++) s += (double)gp[k * inner] * (double)yp[k * inner];
			for (long k = 0; k < n; k++) dp[k * inner] = (float)((double)yp[k * inner] * ((double)gp[k * inner] - s));
		}
	}
}

// Transpose of up to 4 axes: y of shape [d0,d1,d2,d3] (leading 1s for
// fewer), y[a,b,c,e] = x[a·s0 + b·s1 + c·s2 + e·s3], s the input's strides
// of the axes that y's are
KERNEL transpose4(const float *x, float *y, long d0, long d1, long d2, long d3, long s0, long s1, long s2, long s3) {
	FOR(t, d0 * d1 * d2 * d3) {
		long e = t % d3, r = t / d3;
		long c = r % d2;
		r /= d2;
		long b = r % d1, a = r / d1;
		y[t] = x[a * s0 + b * s1 + c * s2 + e * s3];
	}
}

// Slice along an axis: y[o,k,i] = x[o, start + k·step, i], k < n (x has
// nx along the axis)
KERNEL slice_axis(const float *x, float *y, long outer, long nx, long n, long inner, long start, long step) {
	FOR(t, outer * n * inner) {
		long i = t % inner, r = t / inner;
		long k = r % n, o = r / n;
		y[t] = x[(o * nx + start + k * step) * inner + i];
	}
}

// Its gradient: dx[o,j,i] = dy[o,k,i] where j = start + k·step, k < n,
// else 0 (one thread per value of dx)
KERNEL slice_grad_axis(const float *dy, float *dx, long outer, long nx, long n, long inner, long start, long step) {
	FOR(t, outer * nx * inner) {
		long i = t % inner, r = t / inner;
		long j = r % nx, o = r / nx;
		long d = j - start, k = d / step;
		dx[t] = (d >= 0 && d % step == 0 && k < n) ? dy[(o * n + k) * inner + i] : 0.0f;
	}
}

// One input of a Concat: y[o, off+k, i] = x[o,k,i], k < n (y has ny
// along the axis)
KERNEL concat_part(const float *x, float *y, long outer, long n, long inner, long ny, long off) {
	FOR(t, outer * n * inner) {
		long i = t % inner, r = t / inner;
		long k = r % n, o = r / n;
		y[(o * ny + off + k) * inner + i] = x[t];
	}
}

// BatchedMatMul: c[b] = op(a[b])·op(b[b]), [M,K]·[K,N] after the
// transposes (ta, tb), one thread per value of c, the sum in float64 in
// order over K
KERNEL bmm(const float *a, const float *b, float *c, long B, long M, long N, long K, int ta, int tb) {
	FOR(t, B * M * N) {
		long j = t % N, r = t / N;
		long i = r % M, q = r / M;
		const float *ap = a + q * M * K, *bp = b + q * K * N;
		double s = 0;
		for (long k = 0; k < K; k++) {
			double av = ta ? ap[k * M + i] : ap[i * K + k];
			double bv = tb ? bp[j * K + k] : bp[k * N + j];
			s += av * bv;
		}
		c[t] = (float)s;
	}
}

// ReduceSum: y[o,i] = Σ_k x[o,k,i], in float64 in order k = 0..n-1,
// rounded to float32
KERNEL reduce_axis(const float *x, float *y, long outer, long n, long inner) {
	FOR(t, outer * inner) {
		long i = t % inner, o = t / inner;
		const float *p = x + o * n * inner + i;
		double s = 0;
		for (long k = 0; k < n; k++) s += (double)p[k * inner];
		y[t] = (float)s;
	}
}

// A long ReduceSum in passes, as the convolution's bias gradient: first
// part[c,o,i] sums chunk c of the axis, k in [c·chunk, (c+1)·chunk) ∩
// [0, n), in float64; then sum_rows_f64 adds the chunks of each output up
// in a tree (gpu/executor) and f64_to_f32 rounds them. The chunks come
// from the shape, so the result does not depend on the launch.
KERNEL reduce_axis_parts(const float *x, double *part, long outer, long n, long inner, long chunk) {
	long chunks = n > 0 ? (n + chunk - 1) / chunk : 1;
	FOR(t, chunks * outer * inner) {
		long i = t % inner, o = (t / inner) % outer, c = t / (inner * outer);
		long end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
		const float *p = x + o * n * inner + i;
		double s = 0;
		for (long k = c * chunk; k < end; k++) s += (double)p[k * inner];
		part[t] = s;
	}
}

// y = x rounded to float32
KERNEL f64_to_f32(const double *x, float *y, long n) {
	FOR(i, n) y[i] = (float)x[i];
}

// ---- softmax cross-entropy over rows of k logits ----
DEVICE double row_lse(const float *row, long k, float *mx) {
	float m = row[0];
	for (long j = 1; j < k; j++) if (row[j] > m) m = row[j];
	double s = 0;
	for (long j = 0; j < k; j++) s += exp((double)(row[j] - m));
	*mx = m;
	return log(s);
}

// loss[i] = log Σ exp(row) − row[label]; a label outside [0,k) gives NaN,
// which the caller reports. With label smoothing eps (PyTorch's
// label_smoothing, the target (1−eps)·onehot + eps/k) it is
// (1−eps)·(lse − row[label]) + eps·(lse − mean(row)), the mean a float64
// sum in order over k; eps = 0 leaves the unsmoothed loss as it was.
KERNEL softmax_ce_rows(const float *logits, const float *labels, double *loss, long n, long k, float eps) {
	FOR(i, n) {
		const float *row = logits + i * k;
		long c = (long)labels[i];
		if (c < 0 || c >= k || (float)c != labels[i]) {
			loss[i] = 0.0 / 0.0;
			continue;
		}
		float mx;
		double lse = row_lse(row, k, &mx);
		double l = lse + (double)mx - (double)row[c];
		if (eps != 0) {
			double e = (double)eps, mean = 0;
			for (long j = 0; j < k; j++) mean += (double)row[j];
			mean /= (double)k;
			l = (1 - e) * l + e * (lse + (double)mx - mean);
		}
		loss[i] = l;
	}
}

// out = mean of v[0..n) (float64 sum in order, as graph/ does)
KERNEL mean_f64(const double *v, float *out, long n) {
	FOR(t, 1) {
		double s = 0;
		for (long i = 0; i < n; i++) s += v[i];
		out[0] = (float)(s / (double)n);
	}
}

// dx = (softmax(logits) − target)·g/n, the target onehot(labels), or with
// label smoothing eps (1−eps)·onehot(labels) + eps/k, rounded as graph/
// does: eps/k and 1−eps in float64 to float32, then float32 steps
KERNEL softmax_ce_grad(const float *logits, const float *labels, const float *g, float *dx, long n, long k, float eps) {
	FOR(i, n) {
		const float *row = logits + i * k;
		float *d = dx + i * k;
		float scale = g[0] / (float)n;
		float mx;
		double lse = row_lse(row, k, &mx);
		for (long j = 0; j < k; j++) d[j] = (float)exp((double)(row[j] - mx) - lse) * scale;
		if (eps == 0) {
			d[(long)labels[i]] -= scale;
			continue;
		}
		float spread = (float)((double)eps / (double)k) * scale;
		for (long j = 0; j < k; j++) d[j] -= spread;
		d[(long)labels[i]] -= (float)(1 - (double)eps) * scale;
	}
}

// ---- Dot (a pipeline stage's cost): out = Σ x·g; its gradient dx = G·g ----
// In two passes, as the norm's sum of squares: partial[t] = Σ x[i]·g[i]
// over i ≡ t (mod parts) in float64, then sum_f64_to_f32 adds the parts in
// a fixed order. One thread over a stage's whole output would take
// milliseconds on a GPU.
KERNEL dot_parts(const float *x, const float *g, double *partial, long n, long parts) {
	FOR(t, parts) {
		double s = 0;
		for (long i = t; i < n; i += parts) s += (double)x[i] * (double)g[i];
		partial[t] = s;
	}
}
// out[0] = Σ partial[0..parts), rounded to float32
KERNEL sum_f64_to_f32(const double *partial, float *out, long parts) {
	FOR(t, 1) out[0] = (float)sum_f64(partial, parts);
}
KERNEL scale_by(const float *x, const float *g, float *y, long n) {
	FOR(i, n) y[i] = x[i] * g[0];
}

// ---- convolution as im2col + GEMM, graph/'s layouts ----
// cols is [C·KH·KW, N·OH·OW]: row (c,i,j), column (n,oy,ox). One thread
// per (c, column) writes that column's KH·KW rows: the index arithmetic
// (divisions) once per thread, not once per element, and consecutive
// threads write consecutive addresses of every row.
KERNEL im2col(const float *x, float *cols, long N, long C, long H, long W, long KH, long KW,
              long stride, long pad, long OH, long OW) {
	long ncols = N * OH * OW;
	FOR(idx, C * ncols) {
		long col = idx % ncols, c = idx / ncols;
		long ox = col % OW, oy = (col / OW) % OH, n = col / (OW * OH);
		const float *xp = x + (n * C + c) * H * W;
		float *out = cols + c * KH * KW * ncols + col;
		long iy0 = oy * stride - pad, ix0 = ox * stride - pad;
		for (long i = 0; i < KH; i++) {
			long iy = iy0 + i;
			for (long j = 0; j < KW; j++) {
				long ix = ix0 + j;
				*out = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xp[iy * W + ix] : 0;
				out += ncols;
			}
		}
	}
}

// dx[n,c,iy,ix] = Σ of the columns that read it (a gather: no atomics).
KERNEL col2im(const float *cols, float *dx, long N, long C, long H, long W, long KH, long KW,
              long stride, long pad, long OH, long OW) {
	long ncols = N * OH * OW;
	FOR(idx, N * C * H * W) {
		long ix = idx % W, iy = (idx / W) % H, c = (idx / (W * H)) % C, n = idx / (W * H * C);
		float s = 0;
		for (long i = 0; i < KH; i++) {
			long ty = iy + pad - i;
			if (ty < 0 || ty % stride != 0 || ty / stride >= OH) continue;
			for (long j = 0; j < KW; j++) {
				long tx = ix + pad - j;
				if (tx < 0 || tx % stride != 0 || tx / stride >= OW) continue;
				s += cols[((c * KH + i) * KW + j) * ncols + n * OH * OW + (ty / stride) * OW + tx / stride];
			}
		}
		dx[idx] = s;
	}
}

// t[k,n,p] = y[n,k,p]
KERNEL nchw_to_km(const float *y, float *t, long N, long K, long P) {
	FOR(idx, N * K * P) {
		long p = idx % P, n = (idx / P) % N, k = idx / (P * N);
		t[idx] = y[(n * K + k) * P + p];
	}
}

// y[n,k,p] = t[k,n,p] + b[k]
KERNEL km_to_nchw_bias(const float *t, float *y, const float *b, long N, long K, long P) {
	FOR(idx, N * K * P) {
		long p = idx % P, k = (idx / P) % K, n = idx / (P * K);
		y[idx] = t[(k * N + n) * P + p] + b[k];
	}
}

// y[n,k,p] = t[k,n,p]: a convolution without bias
KERNEL km_to_nchw(const float *t, float *y, long N, long K, long P) {
	FOR(idx, N * K * P) {
		long p = idx % P, k = (idx / P) % K, n = idx / (P * K);
		y[idx] = t[(k * N + n) * P + p];
	}
}

// db[k] = Σ_{n,p} dy[n,k,p] takes several passes, so that K·parts threads
// share the work (K alone, a few dozen channels, would leave a GPU idle
// while each thread summed N·P values). First part[c,k] sums the positions
// j = n·P+p with j ≡ c (mod parts), adjacent threads reading adjacent
// values; then sum_rows adds the parts of each channel up, in a tree of
// chunks (gpu/executor). parts comes from the shape, so the order of the
// sums, and the result, do not depend on the launch.
KERNEL conv_grad_b_parts(const float *dy, float *part, long N, long K, long P, long parts) {
	FOR(t, K * parts) {
		long k = t / parts, c = t % parts;
		float s = 0;
		for (long j = c; j < N * P; j += parts) s += dy[((j / P) * K + k) * P + j % P];
		part[c * K + k] = s;
	}
}

// ---- max pooling over k×k windows, stride k, planes of H×W ----
KERNEL maxpool(const float *x, float *y, long planes, long H, long W, long k) {
	long OH = H / k, OW = W / k;
	FOR(idx, planes * OH * OW) {
		long ox = idx % OW, oy = (idx / OW) % OH, p = idx / (OW * OH);
		const float *w = x + (p * H + oy * k) * W + ox * k;
		float m = w[0];
		for (long i = 0; i < k; i++)
			for (long j = 0; j < k; j++) if (w[i * W + j] > m) m = w[i * W + j];
		y[idx] = m;
	}
}

// Each window's gradient goes to the first position (row-major) holding
// its maximum, as graph/ and PyTorch do.
KERNEL maxpool_grad(const float *x, const float *y, const float *dy, float *dx, long planes, long H, long W, long k) {
	long OH = H / k, OW = W / k;
	FOR(idx, planes * H * W) {
		long ix = idx % W, iy = (idx / W) % H, p = idx / (W * H);
		long oy = iy / k, ox = ix / k;
		float g = 0;
		if (oy < OH && ox < OW) {
			long o = (p * OH + oy) * OW + ox;
			const float *w = x + (p * H + oy * k) * W + ox * k;
			long first = -1;
			for (long i = 0; i < k && first < 0; i++)
				for (long j = 0; j < k; j++)
					if (w[i * W + j] == y[o]) { first = i * k + j; break; }
			if (first == (iy - oy * k) * k + (ix - ox * k)) g = dy[o];
		}
		dx[idx] = g;
	}
}

// ---- global average pooling: planes of P = H·W values ----
// y[i] = the mean of plane i (summed in float64, in order)
KERNEL global_avg_pool(const float *x, float *y, long planes, long P) {
	FOR(i, planes) {
		const float *p = x + i * P;
		double s = 0;
		for (long j = 0; j < P; j++) s += (double)p[j];
		y[i] = (float)(s / (double)P);
	}
}
// dx[i] = dy of its plane / P
KERNEL global_avg_pool_grad(const float *dy, float *dx, long planes, long P) {
	FOR(i, planes * P) dx[i] = dy[i / P] / (float)P;
}

// AvgPool2D: y[p,i,j] = Σ of the k×k window at (i·s, j·s) of plane p, in
// float64 row by row, / k² (no padding)
KERNEL avg_pool(const float *x, float *y, long planes, long H, long W, long OH, long OW, long k, long s) {
	FOR(t, planes * OH * OW) {
		long j = t % OW, r = t / OW;
		long i = r % OH, p = r / OH;
		const float *src = x + p * H * W + i * s * W + j * s;
		double sum = 0;
		for (long a = 0; a < k; a++)
			for (long b = 0; b < k; b++) sum += (double)src[a * W + b];
		y[t] = (float)(sum / (double)(k * k));
	}
}
// Its gradient: dx[p,y,x] = Σ over the windows holding (y,x), row by row,
// of dy/k², in float32 (as graph/ does)
KERNEL avg_pool_grad(const float *dy, float *dx, long planes, long H, long W, long OH, long OW, long k, long s) {
	FOR(t, planes * H * W) {
		long x = t % W, r = t / W;
		long y = r % H, p = r / H;
		long i0 = y >= k ? (y - k) / s + 1 : 0, i1 = y / s + 1 < OH ? y / s + 1 : OH;
		long j0 = x >= k ? (x - k) / s + 1 : 0, j1 = x / s + 1 < OW ? x / s + 1 : OW;
		const float *g = dy + p * OH * OW;
		float area = (float)(k * k), sum = 0;
		for (long i = i0; i < i1; i++)
			for (long j = j0; j < j1; j++) sum += g[i * OW + j] / area;
		dx[t] = sum;
	}
}

// ---- batch normalisation: x is [N,C,P] (P = H·W, or 1 for [N,C]) ----
// Channel k's statistics sum its M = N·P values x[n,k,p], in float64, in
// passes as the convolution's bias gradient: part[q,k] sums the positions
// j = n·P+p ≡ q (mod parts), adjacent threads reading adjacent values;
// then sum_rows_f64 adds the parts of each channel up, in a tree of chunks
// (gpu/executor). parts comes from the shape, so the result does not
// depend on the launch. The mean and the variance take a pass each (the
// variance sums squared deviations from the mean, as graph/ does).

// the index of channel k's j-th value
DEVICE long chan_at(long j, long k, long C, long P) { return ((j / P) * C + k) * P + j % P; }

// part[q,k] = Σ x, or with centred Σ (x − sum[k]/M)²
KERNEL bn_sum_parts(const float *x, const double *sum, double *part, long N, long C, long P, long parts, int centred,
                    long M) {
	long NP = N * P;
	FOR(t, C * parts) {
		long k = t / parts, q = t % parts;
		double mean = centred ? sum[k] / (double)M : 0, s = 0;
		for (long j = q; j < NP; j += parts) {
			double v = (double)x[chan_at(j, k, C, P)] - mean;
			s += centred ? v * v : v;
		}
		part[q * C + k] = s;
	}
}

// sum_rows in float64: y[c,j] = Σ_i x[i,j] over the rows of chunk c
KERNEL sum_rows_f64(const double *x, double *y, long n, long m, long chunk) {
	long chunks = n > 0 ? (n + chunk - 1) / chunk : 1;
	FOR(t, chunks * m) {
		long c = t / m, j = t % m, end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
		double s = 0;
		for (long i = c * chunk; i < end; i++) s += x[i * m + j];
		y[t] = s;
	}
}

// stats[2k] = mean, stats[2k+1] = 1/sqrt(var + eps), from channel k's sum
// and sum of squared deviations (the biased variance)
KERNEL bn_stats(const double *sum, const double *sq, double *stats, long C, long M, float eps) {
	FOR(k, C) {
		double var = sq[k] / (double)M;
		stats[2 * k] = sum[k] / (double)M;
		stats[2 * k + 1] = 1 / sqrt(var + (double)eps);
	}
}

// The running statistics, in place, as PyTorch updates them in training:
// with the unbiased variance, and count[0] += 1 (by channel 0's thread).
KERNEL bn_running(const double *sum, const double *sq, float *rmean, float *rvar, float *count, long C, long M,
                  float momentum) {
	FOR(k, C) {
		double m = (double)momentum, var = sq[k] / (double)M;
		rmean[k] = (float)((1 - m) * (double)rmean[k] + m * (sum[k] / (double)M));
		rvar[k] = (float)((1 - m) * (double)rvar[k] + m * (var * (double)M / (double)(M - 1)));
		if (k == 0) count[0] += 1;
	}
}

// y = (x − mean)·invstd·gamma + beta with the batch's statistics (training)
KERNEL bn_apply(const float *x, const double *stats, const float *gamma, const float *beta, float *y, long N, long C,
                long P) {
	FOR(i, N * C * P) {
		long k = (i / P) % C;
		y[i] = (float)(((double)x[i] - stats[2 * k]) * stats[2 * k + 1] * (double)gamma[k] + (double)beta[k]);
	}
}

// y = (x − rmean)/sqrt(rvar + eps)·gamma + beta (evaluation)
KERNEL bn_eval(const float *x, const float *gamma, const float *beta, const float *rmean, const float *rvar, float *y,
               long N, long C, long P, float eps) {
	FOR(i, N * C * P) {
		long k = (i / P) % C;
		double xhat = ((double)x[i] - (double)rmean[k]) / sqrt((double)rvar[k] + (double)eps);
		y[i] = (float)(xhat * (double)gamma[k] + (double)beta[k]);
	}
}

// part[q,k] = Σ dy and part[q,C+k] = Σ dy·x̂ over channel k's positions
// ≡ q (mod parts), x̂ = (x − mean)·invstd (stats as bn_stats leaves them)
KERNEL bn_grad_parts(const float *x, const float *dy, const double *stats, double *part, long N, long C, long P,
                     long parts) {
	long M = N * P;
	FOR(t, C * parts) {
		long k = t / parts, q = t % parts;
		double mean = stats[2 * k], invstd = stats[2 * k + 1], s1 = 0, s2 = 0;
		for (long j = q; j < M; j += parts) {
			long i = chan_at(j, k, C, P);
			double g = (double)dy[i];
			s1 += g;
			s2 += g * (((double)x[i] - mean) * invstd);
		}
		part[q * 2 * C + k] = s1;
		part[q * 2 * C + C + k] = s2;
	}
}

// dx = gamma·invstd·(dy − S1/M − x̂·S2/M), S1 = gsum[k], S2 = gsum[C+k]
// (M: N·P, or with synchronised statistics the global count times this
// rank's share, its sums being the ranks' share-weighted ones)
KERNEL bn_grad_input(const float *x, const float *gamma, const float *dy, const double *stats, const double *gsum,
                     float *dx, long N, long C, long P, double M) {
	FOR(i, N * C * P) {
		long k = (i / P) % C;
		double invstd = stats[2 * k + 1], xhat = ((double)x[i] - stats[2 * k]) * invstd;
		dx[i] = (float)((double)gamma[k] * invstd * ((double)dy[i] - gsum[k] / M - xhat * gsum[C + k] / M));
	}
}

// dgamma[k] = Σ dy·x̂ = gsum[C+k]
KERNEL bn_grad_gamma(const double *gsum, float *dgamma, long C) {
	FOR(k, C) dgamma[k] = (float)gsum[C + k];
}

// ---- layer normalisation over the last dimension: rows of D values ----
// A row's statistics are one thread's (a row is a model's width, short):
// the mean and the biased variance (squared deviations from the mean), in
// float64 in order, as graph/ computes them. stats[2r] = mean,
// stats[2r+1] = 1/sqrt(var + eps); the gradients recompute them from X.
KERNEL ln_stats(const float *x, double *stats, long rows, long D, float eps) {
	FOR(r, rows) {
		const float *p = x + r * D;
		double s = 0, q = 0;
		for (long j = 0; j < D; j++) s += (double)p[j];
		double mean = s / (double)D;
		for (long j = 0; j < D; j++) {
			double e = (double)p[j] - mean;
			q += e * e;
		}
		stats[2 * r] = mean;
		stats[2 * r + 1] = 1 / sqrt(q / (double)D + (double)eps);
	}
}

// y = (x − mean)·invstd·w + b, the statistics rounded to float32 and the
// rest in float32, as graph/ does
KERNEL ln_apply(const float *x, const double *stats, const float *w, const float *b, float *y, long rows, long D) {
	FOR(i, rows * D) {
		long r = i / D, j = i % D;
		float mean = (float)stats[2 * r], invstd = (float)stats[2 * r + 1];
		y[i] = (x[i] - mean) * invstd * w[j] + b[j];
	}
}

// Row r's sums of the input gradient, in float64 in order: with g = dy·w
// and x̂ = (x − mean)·invstd, gsum[2r] = Σ g and gsum[2r+1] = Σ g·x̂
KERNEL ln_grad_rows(const float *x, const float *w, const float *dy, const double *stats, double *gsum, long rows,
                    long D) {
	FOR(r, rows) {
		double mean = stats[2 * r], invstd = stats[2 * r + 1], s1 = 0, s2 = 0;
		for (long j = 0; j < D; j++) {
			long i = r * D + j;
			double g = (double)dy[i] * (double)w[j];
			s1 += g;
			s2 += g * ((double)x[i] - mean) * invstd;
		}
		gsum[2 * r] = s1;
		gsum[2 * r + 1] = s2;
	}
}

// dx = invstd·(g − S1/D − x̂·S2/D), S1 = gsum[2r], S2 = gsum[2r+1]
KERNEL ln_grad_input(const float *x, const float *w, const float *dy, const double *stats, const double *gsum, float *dx,
                     long rows, long D) {
	FOR(i, rows * D) {
		long r = i / D, j = i % D;
		double mean = stats[2 * r], invstd = stats[2 * r + 1];
		double g = (double)dy[i] * (double)w[j], a = gsum[2 * r] / (double)D, b = gsum[2 * r + 1] / (double)D;
		dx[i] = (float)(invstd * (g - a - ((double)x[i] - mean) * invstd * b));
	}
}

// dw[j] = Σ_r dy[r,j]·x̂[r,j] in passes, as reduce_axis_parts: part[c,j]
// sums the rows of chunk c, r in [c·chunk, (c+1)·chunk) ∩ [0, rows), in
// float64 in order; then sum_rows_f64 adds the chunks of each column up in
// a tree (gpu/executor, where there is more than one) and f64_to_f32
// rounds them. The chunks come from the shape, not the launch.
KERNEL ln_grad_w_parts(const float *x, const float *dy, const double *stats, double *part, long rows, long D,
                       long chunk) {
	long chunks = rows > 0 ? (rows + chunk - 1) / chunk : 1;
	FOR(t, chunks * D) {
		long j = t % D, c = t / D, end = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
		double s = 0;
		for (long r = c * chunk; r < end; r++) {
			long i = r * D + j;
			s += (double)dy[i] * ((double)x[i] - stats[2 * r]) * stats[2 * r + 1];
		}
		part[t] = s;
	}
}

// ---- dropout: a counter-based RNG (SplitMix64 of seed, step and index) ----
DEVICE unsigned long long mix64(unsigned long long z) {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

// m[i] = 1/(1-p) with probability 1-p, else 0: the same mask for the same
// (seed, stream, i) on every device and launch configuration.
KERNEL dropout_mask(float *m, long n, float p, unsigned long long seed, unsigned long long stream) {
	FOR(i, n) {
		unsigned long long r = mix64(seed ^ mix64(stream + 0x9e3779b97f4a7c15ULL * (unsigned long long)(i + 1)));
		double u = (double)(r >> 11) * (1.0 / 9007199254740992.0); // [0,1) from 53 bits
		m[i] = u < (double)p ? 0 : (float)(1.0 / (1.0 - (double)p));
	}
}

// ---- reduced precision for matrix products (--precision) ----
// The bits of x rounded to its nearest value with `keep` mantissa bits
// (ties to even); NaN and infinity pass unchanged.
DEVICE unsigned int round_bits(float x, int keep) {
	union { float f; unsigned int u; } v;
	v.f = x;
	if ((v.u & 0x7f800000u) == 0x7f800000u) return v.u;
	int drop = 23 - keep;
	unsigned int half = (1u << (drop - 1)) - 1 + ((v.u >> drop) & 1u);
	return ((v.u + half) >> drop) << drop;
}

// y = x rounded to bfloat16 (keep = 7 stored mantissa bits) or TF32 (10), kept as float:
// what the tensor cores multiply, for the host device's emulation.
KERNEL round_mantissa(const float *x, float *y, long n, int keep) {
	FOR(i, n) {
		union { float f; unsigned int u; } v;
		v.u = round_bits(x[i], keep);
		y[i] = v.f;
	}
}

// y = x as bfloat16 (the upper half of the rounded float32), for cuBLAS.
KERNEL to_bf16(const float *x, unsigned short *y, long n) {
	FOR(i, n) y[i] = (unsigned short)(round_bits(x[i], 7) >> 16);
}

// y = x widened from bfloat16 to float32 (exact)
KERNEL from_bf16(const unsigned short *x, float *y, long n) {
	FOR(i, n) {
		union { float f; unsigned int u; } v;
		v.u = (unsigned int)x[i] << 16;
		y[i] = v.f;
	}
}

// ---- optimisers, fused, as trainer/optim computes them ----
// SGD without momentum; wd = 0 skips the decay.
KERNEL sgd(float *p, const float *g, long n, float neg_lr, float wd) {
	FOR(i, n) {
		float d = wd != 0 ? fma32(p[i], wd, g[i]) : g[i];
		p[i] = fma32(d, neg_lr, p[i]);
	}
}

// SGD with momentum (dampening as 1−dampening); first: the buffer starts as
// the gradient, undamped, as in PyTorch.
KERNEL sgd_momentum(float *p, const float *g, float *buf, long n, float neg_lr, float wd, float mom, float damp,
                    int nesterov, int first) {
	FOR(i, n) {
		float d = wd != 0 ? fma32(p[i], wd, g[i]) : g[i];
		float b = first ? d : fma32(d, damp, buf[i] * mom);
		buf[i] = b;
		d = nesterov ? fma32(b, mom, d) : b;
		p[i] = fma32(d, neg_lr, p[i]);
	}
}

// ---- gradient clipping by the global L2 norm (trainer/optim.ClipGradNorm) ----
// partial[t] = Σ x[i]² over i ≡ t (mod parts), in float64: parts threads
// read adjacent elements, and the sum's order does not depend on the grid.
KERNEL sum_squares_parts(const float *x, double *partial, long n, long parts) {
	FOR(t, parts) {
		double s = 0;
		for (long i = t; i < n; i += parts) s += (double)x[i] * (double)x[i];
		partial[t] = s;
	}
}
// out[k] = Σ partial[0..parts)
KERNEL sum_f64_at(const double *partial, double *out, long parts, long k) {
	FOR(t, 1) out[k] = sum_f64(partial, parts);
}
KERNEL scale_f32(float *x, long n, float c) {
	FOR(i, n) x[i] *= c;
}

// Adam and AdamW: decay != 1 is AdamW's decoupled decay, wd != 0 Adam's L2.
KERNEL adam(float *p, const float *g, float *m, float *v, long n, float neg_step, float bc2_sqrt, float b1, float b2,
            float c1, float c2, float eps, float wd, float decay) {
	FOR(i, n) {
		float pi = p[i];
		if (decay != 1) pi *= decay;
		float gi = wd != 0 ? fma32(pi, wd, g[i]) : g[i];
		float mi = fma32(gi, c1, m[i] * b1);
		float vi = fma32(c2 * gi, gi, v[i] * b2);
		m[i] = mi;
		v[i] = vi;
		float den = (float)sqrt((double)vi) / bc2_sqrt + eps;
		p[i] = pi + neg_step * mi / den;
	}
}
