// The host shims of kernels.cu: one per kernel, unpacking its arguments
// from the array of pointers that cuLaunchKernel also takes, and their
// table. Included after kernels.cu by shims.go (one thread) and grid.go (a
// GPU's launch geometry); TestShimsCoverTheKernels checks that none is
// missing or miscounted.

#define A(T, i) (*(T *)a[i])

static void call_fill(void **a) { fill(A(float *, 0), A(float, 1), A(long, 2)); }
static void call_copy_f32(void **a) { copy_f32(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_axpy_at(void **a) { axpy_at(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(float, 4), A(int, 5)); }
static void call_copy_at(void **a) { copy_at(A(const float *, 0), A(long, 1), A(float *, 2), A(long, 3), A(long, 4)); }
static void call_fill_at(void **a) { fill_at(A(float *, 0), A(long, 1), A(long, 2), A(float, 3)); }
static void call_bias_rows(void **a) { bias_rows(A(float *, 0), A(const float *, 1), A(long, 2), A(long, 3)); }
static void call_sum_rows(void **a) { sum_rows(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4)); }
static void call_relu(void **a) { relu(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_relu_grad(void **a) { relu_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_tanh_fwd(void **a) { tanh_fwd(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_tanh_grad(void **a) { tanh_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_sigmoid_fwd(void **a) { sigmoid_fwd(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_sigmoid_grad(void **a) { sigmoid_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_gelu_fwd(void **a) { gelu_fwd(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_gelu_grad(void **a) { gelu_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_silu_fwd(void **a) { silu_fwd(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_silu_grad(void **a) { silu_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_mul(void **a) { mul(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_add(void **a) { add(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_sub(void **a) { sub(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_div_f32(void **a) { div_f32(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_elem_scalar(void **a) { elem_scalar(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3), A(int, 4), A(int, 5)); }
static void call_elem_unary(void **a) { elem_unary(A(const float *, 0), A(float *, 1), A(long, 2), A(int, 3)); }
static void call_softmax_axis(void **a) { softmax_axis(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(int, 5)); }
static void call_softmax_grad_axis(void **a) { softmax_grad_axis(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3), A(long, 4), A(long, 5), A(int, 6)); }
static void call_transpose4(void **a) { transpose4(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7), A(long, 8), A(long, 9)); }
static void call_slice_axis(void **a) { slice_axis(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7)); }
static void call_slice_grad_axis(void **a) { slice_grad_axis(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7)); }
static void call_concat_part(void **a) { concat_part(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6)); }
static void call_bmm(void **a) { bmm(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(int, 7), A(int, 8)); }
static void call_avg_pool(void **a) { avg_pool(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7), A(long, 8)); }
static void call_avg_pool_grad(void **a) { avg_pool_grad(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7), A(long, 8)); }
static void call_repeat_axis(void **a) { repeat_axis(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4)); }
static void call_reduce_axis(void **a) { reduce_axis(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4)); }
static void call_reduce_axis_parts(void **a) { reduce_axis_parts(A(const float *, 0), A(double *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5)); }
static void call_f64_to_f32(void **a) { f64_to_f32(A(const double *, 0), A(float *, 1), A(long, 2)); }
static void call_softmax_ce_rows(void **a) { softmax_ce_rows(A(const float *, 0), A(const float *, 1), A(double *, 2), A(long, 3), A(long, 4), A(float, 5)); }
static void call_mean_f64(void **a) { mean_f64(A(const double *, 0), A(float *, 1), A(long, 2)); }
static void call_softmax_ce_grad(void **a) { softmax_ce_grad(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(float *, 3), A(long, 4), A(long, 5), A(float, 6)); }
static void call_dot_parts(void **a) { dot_parts(A(const float *, 0), A(const float *, 1), A(double *, 2), A(long, 3), A(long, 4)); }
static void call_sum_f64_to_f32(void **a) { sum_f64_to_f32(A(const double *, 0), A(float *, 1), A(long, 2)); }
static void call_scale_by(void **a) { scale_by(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_im2col(void **a) { im2col(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7), A(long, 8), A(long, 9), A(long, 10), A(long, 11)); }
static void call_col2im(void **a) { col2im(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7), A(long, 8), A(long, 9), A(long, 10), A(long, 11)); }
static void call_nchw_to_km(void **a) { nchw_to_km(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4)); }
static void call_km_to_nchw_bias(void **a) { km_to_nchw_bias(A(const float *, 0), A(float *, 1), A(const float *, 2), A(long, 3), A(long, 4), A(long, 5)); }
static void call_km_to_nchw(void **a) { km_to_nchw(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4)); }
static void call_conv_grad_b_parts(void **a) { conv_grad_b_parts(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5)); }
static void call_maxpool(void **a) { maxpool(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5)); }
static void call_maxpool_grad(void **a) { maxpool_grad(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(float *, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7)); }
static void call_global_avg_pool(void **a) { global_avg_pool(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3)); }
static void call_global_avg_pool_grad(void **a) { global_avg_pool_grad(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3)); }
static void call_bn_sum_parts(void **a) { bn_sum_parts(A(const float *, 0), A(const double *, 1), A(double *, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(int, 7), A(long, 8)); }
static void call_sum_rows_f64(void **a) { sum_rows_f64(A(const double *, 0), A(double *, 1), A(long, 2), A(long, 3), A(long, 4)); }
static void call_bn_stats(void **a) { bn_stats(A(const double *, 0), A(const double *, 1), A(double *, 2), A(long, 3), A(long, 4), A(float, 5)); }
static void call_bn_running(void **a) { bn_running(A(const double *, 0), A(const double *, 1), A(float *, 2), A(float *, 3), A(float *, 4), A(long, 5), A(long, 6), A(float, 7)); }
static void call_bn_apply(void **a) { bn_apply(A(const float *, 0), A(const double *, 1), A(const float *, 2), A(const float *, 3), A(float *, 4), A(long, 5), A(long, 6), A(long, 7)); }
static void call_bn_eval(void **a) { bn_eval(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(const float *, 3), A(const float *, 4), A(float *, 5), A(long, 6), A(long, 7), A(long, 8), A(float, 9)); }
static void call_bn_grad_parts(void **a) { bn_grad_parts(A(const float *, 0), A(const float *, 1), A(const double *, 2), A(double *, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7)); }
static void call_bn_grad_input(void **a) { bn_grad_input(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(const double *, 3), A(const double *, 4), A(float *, 5), A(long, 6), A(long, 7), A(long, 8), A(double, 9)); }
static void call_bn_grad_gamma(void **a) { bn_grad_gamma(A(const double *, 0), A(float *, 1), A(long, 2)); }
static void call_ln_stats(void **a) { ln_stats(A(const float *, 0), A(double *, 1), A(long, 2), A(long, 3), A(float, 4)); }
static void call_ln_apply(void **a) { ln_apply(A(const float *, 0), A(const double *, 1), A(const float *, 2), A(const float *, 3), A(float *, 4), A(long, 5), A(long, 6)); }
static void call_ln_grad_rows(void **a) { ln_grad_rows(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(const double *, 3), A(double *, 4), A(long, 5), A(long, 6)); }
static void call_ln_grad_input(void **a) { ln_grad_input(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(const double *, 3), A(const double *, 4), A(float *, 5), A(long, 6), A(long, 7)); }
static void call_ln_grad_w_parts(void **a) { ln_grad_w_parts(A(const float *, 0), A(const float *, 1), A(const double *, 2), A(double *, 3), A(long, 4), A(long, 5), A(long, 6)); }
static void call_dropout_mask(void **a) { dropout_mask(A(float *, 0), A(long, 1), A(float, 2), A(unsigned long long, 3), A(unsigned long long, 4)); }
static void call_round_mantissa(void **a) { round_mantissa(A(const float *, 0), A(float *, 1), A(long, 2), A(int, 3)); }
static void call_to_bf16(void **a) { to_bf16(A(const float *, 0), A(unsigned short *, 1), A(long, 2)); }
static void call_from_bf16(void **a) { from_bf16(A(const unsigned short *, 0), A(float *, 1), A(long, 2)); }
static void call_sgd(void **a) { sgd(A(float *, 0), A(const float *, 1), A(long, 2), A(float, 3), A(float, 4)); }
static void call_sgd_momentum(void **a) { sgd_momentum(A(float *, 0), A(const float *, 1), A(float *, 2), A(long, 3), A(float, 4), A(float, 5), A(float, 6), A(float, 7), A(int, 8), A(int, 9)); }
static void call_sum_squares_parts(void **a) { sum_squares_parts(A(const float *, 0), A(double *, 1), A(long, 2), A(long, 3)); }
static void call_sum_f64_at(void **a) { sum_f64_at(A(const double *, 0), A(double *, 1), A(long, 2), A(long, 3)); }
static void call_scale_f32(void **a) { scale_f32(A(float *, 0), A(long, 1), A(float, 2)); }
static void call_adam(void **a) { adam(A(float *, 0), A(const float *, 1), A(float *, 2), A(float *, 3), A(long, 4), A(float, 5), A(float, 6), A(float, 7), A(float, 8), A(float, 9), A(float, 10), A(float, 11), A(float, 12), A(float, 13)); }

typedef struct {
	const char *name;
	void (*call)(void **);
	int nargs;
} shim;

static const shim shims[] = {
	{"fill", call_fill, 3},
	{"copy_f32", call_copy_f32, 3},
	{"axpy_at", call_axpy_at, 6},
	{"copy_at", call_copy_at, 5},
	{"fill_at", call_fill_at, 4},
	{"bias_rows", call_bias_rows, 4},
	{"sum_rows", call_sum_rows, 5},
	{"relu", call_relu, 3},
	{"relu_grad", call_relu_grad, 4},
	{"tanh_fwd", call_tanh_fwd, 3},
	{"tanh_grad", call_tanh_grad, 4},
	{"sigmoid_fwd", call_sigmoid_fwd, 3},
	{"sigmoid_grad", call_sigmoid_grad, 4},
	{"gelu_fwd", call_gelu_fwd, 3},
	{"gelu_grad", call_gelu_grad, 4},
	{"silu_fwd", call_silu_fwd, 3},
	{"silu_grad", call_silu_grad, 4},
	{"mul", call_mul, 4},
	{"add", call_add, 4},
	{"sub", call_sub, 4},
	{"div_f32", call_div_f32, 4},
	{"elem_scalar", call_elem_scalar, 6},
	{"elem_unary", call_elem_unary, 4},
	{"repeat_axis", call_repeat_axis, 5},
	{"avg_pool", call_avg_pool, 9},
	{"avg_pool_grad", call_avg_pool_grad, 9},
	{"slice_axis", call_slice_axis, 8},
	{"slice_grad_axis", call_slice_grad_axis, 8},
	{"concat_part", call_concat_part, 7},
	{"bmm", call_bmm, 9},
	{"softmax_axis", call_softmax_axis, 6},
	{"softmax_grad_axis", call_softmax_grad_axis, 7},
	{"transpose4", call_transpose4, 10},
	{"reduce_axis", call_reduce_axis, 5},
	{"reduce_axis_parts", call_reduce_axis_parts, 6},
	{"f64_to_f32", call_f64_to_f32, 3},
	{"softmax_ce_rows", call_softmax_ce_rows, 6},
	{"mean_f64", call_mean_f64, 3},
	{"softmax_ce_grad", call_softmax_ce_grad, 7},
	{"dot_parts", call_dot_parts, 5},
	{"sum_f64_to_f32", call_sum_f64_to_f32, 3},
	{"scale_by", call_scale_by, 4},
	{"im2col", call_im2col, 12},
	{"col2im", call_col2im, 12},
	{"nchw_to_km", call_nchw_to_km, 5},
	{"km_to_nchw_bias", call_km_to_nchw_bias, 6},
	{"km_to_nchw", call_km_to_nchw, 5},
	{"conv_grad_b_parts", call_conv_grad_b_parts, 6},
	{"maxpool", call_maxpool, 6},
	{"maxpool_grad", call_maxpool_grad, 8},
	{"global_avg_pool", call_global_avg_pool, 4},
	{"global_avg_pool_grad", call_global_avg_pool_grad, 4},
	{"bn_sum_parts", call_bn_sum_parts, 9},
	{"sum_rows_f64", call_sum_rows_f64, 5},
	{"bn_stats", call_bn_stats, 6},
	{"bn_running", call_bn_running, 8},
	{"bn_apply", call_bn_apply, 8},
	{"bn_eval", call_bn_eval, 10},
	{"bn_grad_parts", call_bn_grad_parts, 8},
	{"bn_grad_input", call_bn_grad_input, 10},
	{"bn_grad_gamma", call_bn_grad_gamma, 3},
	{"ln_stats", call_ln_stats, 5},
	{"ln_apply", call_ln_apply, 7},
	{"ln_grad_rows", call_ln_grad_rows, 7},
	{"ln_grad_input", call_ln_grad_input, 8},
	{"ln_grad_w_parts", call_ln_grad_w_parts, 7},
	{"dropout_mask", call_dropout_mask, 5},
	{"round_mantissa", call_round_mantissa, 4},
	{"sum_squares_parts", call_sum_squares_parts, 4},
	{"sum_f64_at", call_sum_f64_at, 4},
	{"scale_f32", call_scale_f32, 3},
	{"to_bf16", call_to_bf16, 3},
	{"from_bf16", call_from_bf16, 3},
	{"sgd", call_sgd, 5},
	{"sgd_momentum", call_sgd_momentum, 10},
	{"adam", call_adam, 14},
};
