//go:build gpu

package cuda

// cuBLAS is loaded at run time (dlopen), as NVRTC (package gpu/nvrtc) and
// NCCL are: a gpu binary links only against libcuda.so.1, which every
// machine with the driver has, and finds the toolkit's libraries of
// whatever CUDA version is there (13, 12 or 11, by soname;
// GOTRAIN_CUBLAS_LIBRARY names another). The types come from the CUDA 11.8
// or 12 headers the build compiles against; the functions used have kept
// their signatures since.

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo LDFLAGS: -ldl
// Debian's nvidia-cuda-dev puts the headers in /usr/include; NVIDIA's
// images and installers in /usr/local/cuda (a directory that is not there
// is skipped). These flags hold for every file of the package.
#cgo linux CFLAGS: -I/usr/local/cuda/include
#cgo linux LDFLAGS: -L/usr/local/cuda/lib64 -L/usr/local/cuda/lib64/stubs
#include <dlfcn.h>
#include <stdlib.h>
#include <cublas_v2.h>

static void *cublas_lib;
static __typeof__(cublasCreate_v2) *p_cublasCreate;
static __typeof__(cublasDestroy_v2) *p_cublasDestroy;
static __typeof__(cublasSgemm_v2) *p_cublasSgemm;
static __typeof__(cublasGemmEx) *p_cublasGemmEx;

// open_lib tries each name; it returns the handle or NULL.
static void *open_lib(const char *names[], int n) {
	for (int i = 0; i < n; i++) {
		if (names[i] == NULL || names[i][0] == 0) continue;
		void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
		if (h != NULL) return h;
	}
	return NULL;
}

#define SYM(lib, var, name) do { *(void **)(&var) = dlsym(lib, name); if (var == NULL) return name; } while (0)

// load_cublas returns NULL, or what is missing.
static const char *load_cublas(const char *override) {
	const char *names[] = {override, "libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"};
	if (cublas_lib == NULL) cublas_lib = open_lib(names, 5);
	if (cublas_lib == NULL) return "libcublas";
	SYM(cublas_lib, p_cublasCreate, "cublasCreate_v2");
	SYM(cublas_lib, p_cublasDestroy, "cublasDestroy_v2");
	SYM(cublas_lib, p_cublasSgemm, "cublasSgemm_v2");
	SYM(cublas_lib, p_cublasGemmEx, "cublasGemmEx");
	return NULL;
}

static cublasStatus_t blas_create(cublasHandle_t *h) { return p_cublasCreate(h); }
static cublasStatus_t blas_destroy(cublasHandle_t h) { return p_cublasDestroy(h); }
static cublasStatus_t sgemm(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha,
                            unsigned long long a, int lda, unsigned long long b, int ldb, float beta,
                            unsigned long long c, int ldc) {
	return p_cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha,
	                     (const float *)a, lda, (const float *)b, ldb, &beta, (float *)c, ldc);
}


// gemm_ex: float32 C from A and B that are bfloat16 (bf16 != 0) or float32
// multiplied as TF32.
static cublasStatus_t gemm_ex(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha,
                              unsigned long long a, int lda, unsigned long long b, int ldb, float beta,
                              unsigned long long c, int ldc, int bf16) {
	cudaDataType in = bf16 ? CUDA_R_16BF : CUDA_R_32F;
	cublasComputeType_t compute = bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
	return p_cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha,
	                      (const void *)a, in, lda, (const void *)b, in, ldb, &beta, (void *)c, CUDA_R_32F, ldc,
	                      compute, CUBLAS_GEMM_DEFAULT);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/gotrain/gotrain/gpu/nvrtc"
)

var (
	libsOnce sync.Once
	libsErr  error
)

// loadLibs opens cuBLAS and NVRTC once.
func loadLibs() error {
	libsOnce.Do(func() {
		if libsErr = nvrtc.Load(); libsErr != nil {
			return
		}
		o := C.CString(os.Getenv("GOTRAIN_CUBLAS_LIBRARY"))
		defer C.free(unsafe.Pointer(o))
		if missing := C.load_cublas(o); missing != nil {
			if what := C.GoString(missing); what == "libcublas" {
				libsErr = errors.New("cuda: libcublas cannot be loaded (tried sonames 13, 12 and 11; GOTRAIN_CUBLAS_LIBRARY names a file): install it (pip: nvidia-cublas; Debian: libcublas11) or add its folder to LD_LIBRARY_PATH")
			} else {
				libsErr = fmt.Errorf("cuda: the loaded libcublas has no symbol %s: it is older than gotrain supports", what)
			}
		}
	})
	return libsErr
}

type blasHandle = C.cublasHandle_t

// blasCreate creates a handle into *h. It goes through a local: h points
// into a Device, whose other fields hold Go pointers, and cgo refuses a
// pointer to such memory (a panic that fakecuda found before any GPU did).
func blasCreate(h *blasHandle) int {
	var x C.cublasHandle_t
	r := C.blas_create(&x)
	*h = x
	return int(r)
}
func blasDestroy(h blasHandle) int { return int(C.blas_destroy(h)) }

func blasSgemm(h blasHandle, ta, tb bool, m, n, k int, alpha float32, a uintptr, lda int, b uintptr, ldb int, beta float32, c uintptr, ldc int) int {
	flag := func(t bool) C.int {
		if t {
			return 1
		}
		return 0
	}
	return int(C.sgemm(h, flag(ta), flag(tb), C.int(m), C.int(n), C.int(k), C.float(alpha),
		C.ulonglong(a), C.int(lda), C.ulonglong(b), C.int(ldb), C.float(beta), C.ulonglong(c), C.int(ldc)))
}

func blasGemmEx(h blasHandle, ta, tb bool, m, n, k int, alpha float32, a uintptr, lda int, b uintptr, ldb int, beta float32, c uintptr, ldc int, bf16 bool) int {
	flag := func(t bool) C.int {
		if t {
			return 1
		}
		return 0
	}
	return int(C.gemm_ex(h, flag(ta), flag(tb), C.int(m), C.int(n), C.int(k), C.float(alpha),
		C.ulonglong(a), C.int(lda), C.ulonglong(b), C.int(ldb), C.float(beta), C.ulonglong(c), C.int(ldc), flag(bf16)))
}
