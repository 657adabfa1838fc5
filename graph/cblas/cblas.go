package cblas

import (
	"fmt"
	"sync"

	gonumblas "gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// native is implemented by the cgo loader (cblas_cgo.go); nil means the
// pure-Go fallback serves every call.
type native interface {
	sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)
	setThreads(n int)
	name() string
}

var (
	once     sync.Once
	lib      native
	loadNote string
	fallback gonum.Implementation
)

func load() {
	once.Do(func() {
		lib, loadNote = loadNative()
	})
}

// Backend describes the BLAS in use: the library path for a native BLAS,
// or "gonum (pure Go)" with the reason no native library was loaded.
func Backend() string {
	load()
	if lib != nil {
		return lib.name()
	}
	return "gonum (pure Go): " + loadNote
}

// Native reports whether a native BLAS library is in use.
func Native() bool {
	load()
	return lib != nil
}

// SetThreads sets the number of threads the native BLAS uses (n >= 1). It is
// a no-op for the fallback, which is single-threaded.
func SetThreads(n int) {
	load()
	if lib != nil && n > 0 {
		lib.setThreads(n)
	}
}

// Sgemm computes C = alpha * op(A) * op(B) + beta * C for row-major
// matrices, where op(X) is X or its transpose. op(A) is m x k, op(B) is
// k x n and C is m x n; lda, ldb and ldc are the row strides of A, B and C
// as stored.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	checkLen("A", a, transA, m, k, lda)
	checkLen("B", b, transB, k, n, ldb)
	checkLen("C", c, false, m, n, ldc)
	load()
	if lib != nil {
		lib.sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	ta, tb := gonumblas.NoTrans, gonumblas.NoTrans
	if transA {
		ta = gonumblas.Trans
	}
	if transB {
		tb = gonumblas.Trans
	}
	fallback.Sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// checkLen panics when x cannot hold a rows x cols matrix (as stored, i.e.
// transposed when trans) with row stride ld: calling C with a short slice
// would read or write out of bounds.
func checkLen(what string, x []float32, trans bool, rows, cols, ld int) {
	if trans {
		rows, cols = cols, rows
	}
	if rows == 0 || cols == 0 {
		return
	}
	if ld < cols {
		panic(fmt.Sprintf("cblas: %s row stride %d < %d columns", what, ld, cols))
	}
	if need := (rows-1)*ld + cols; len(x) < need {
		panic(fmt.Sprintf("cblas: %s has %d elements, needs %d", what, len(x), need))
	}
}
