//go:build cgo

package cblas

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef void (*gt_sgemm_fn)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
typedef void (*gt_threads_fn)(int);

static gt_sgemm_fn gt_sgemm;
static gt_threads_fn gt_threads;

// gt_load opens name and resolves the symbols; returns 0 on success,
// 1 when the library does not open, 2 when cblas_sgemm is missing.
static int gt_load(const char* name) {
	void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!h) return 1;
	gt_sgemm_fn s = (gt_sgemm_fn)dlsym(h, "cblas_sgemm");
	if (!s) { dlclose(h); return 2; }
	gt_sgemm = s;
	gt_threads = (gt_threads_fn)dlsym(h, "openblas_set_num_threads");
	return 0;
}

static void gt_call_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
	// 101 = CblasRowMajor, 111 = CblasNoTrans, 112 = CblasTrans
	gt_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static int gt_set_threads(int n) {
	if (!gt_threads) return 0;
	gt_threads(n);
	return 1;
}
*/
import "C"

import (
	"fmt"
	"os"
	"strings"
	"unsafe"
)

// candidates are tried in order after GOTRAIN_BLAS_LIBRARY.
var candidates = []string{"libopenblas.so.0", "libopenblas.so", "libblas.so.3"}

type cLib struct{ path string }

func loadNative() (native, string) {
	names := candidates
	if p := os.Getenv("GOTRAIN_BLAS_LIBRARY"); p != "" {
		if p == "none" {
			return nil, "GOTRAIN_BLAS_LIBRARY=none"
		}
		names = []string{p}
	}
	var tried []string
	for _, n := range names {
		cs := C.CString(n)
		rc := C.gt_load(cs)
		C.free(unsafe.Pointer(cs))
		switch rc {
		case 0:
			return cLib{path: n}, ""
		case 2:
			tried = append(tried, n+" (no cblas_sgemm)")
		default:
			tried = append(tried, n+" (not found)")
		}
	}
	return nil, fmt.Sprintf("no OpenBLAS loaded, tried %s; install it with 'apt-get install libopenblas0-pthread' or set GOTRAIN_BLAS_LIBRARY", strings.Join(tried, ", "))
}

func (l cLib) name() string { return "openblas (" + l.path + ")" }

func (l cLib) setThreads(n int) { C.gt_set_threads(C.int(n)) }

func b2i(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

func (l cLib) sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	var pa, pb *C.float
	if len(a) > 0 {
		pa = (*C.float)(unsafe.Pointer(&a[0]))
	}
	if len(b) > 0 {
		pb = (*C.float)(unsafe.Pointer(&b[0]))
	}
	C.gt_call_sgemm(b2i(transA), b2i(transB), C.int(m), C.int(n), C.int(k), C.float(alpha),
		pa, C.int(lda), pb, C.int(ldb), C.float(beta), (*C.float)(unsafe.Pointer(&c[0])), C.int(ldc))
}
