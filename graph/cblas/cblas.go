package cblas

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

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

// threads is how many goroutines one large Sgemm is split across.
var threads atomic.Int32

func init() { threads.Store(1) }

// SetThreads sets how many threads a large matrix product uses (n >= 1).
// gotrain parallelises in Go: it splits a product's output into n blocks
// computed on n goroutines by a single-threaded BLAS. OpenBLAS's own
// thread pool busy-waits between calls, which on a small machine steals
// the cores that gotrain's other kernels (im2col, activations, pooling)
// run on between matrix products; one scheduler for everything avoids that.
func SetThreads(n int) {
	load()
	if n < 1 {
		n = 1
	}
	if os.Getenv("GOTRAIN_BLAS_THREADING") == "openblas" {
		// OpenBLAS's own thread pool instead (for comparison).
		threads.Store(1)
		if lib != nil {
			lib.setThreads(n)
		}
		return
	}
	threads.Store(int32(n))
	if lib != nil {
		lib.setThreads(1)
	}
}

// Threads is the current SetThreads value.
func Threads() int { return int(threads.Load()) }

// minSplitFlops is the smallest product (m·n·k) worth splitting.
const minSplitFlops = 1 << 18

// Sgemm computes C = alpha * op(A) * op(B) + beta * C for row-major
// matrices, where op(X) is X or its transpose. op(A) is m x k, op(B) is
// k x n and C is m x n; lda, ldb and ldc are the row strides of A, B and C
// as stored.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if !ready(transA, transB, m, n, k, a, lda, b, ldb, c, ldc) {
		return
	}
	if p := int(threads.Load()); p > 1 && m*n*k >= minSplitFlops && max(m, n) >= 2*p {
		splitSgemm(p, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	sgemm1(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// splitSgemm computes the product as p blocks of C's rows (or columns,
// whichever dimension is larger), one goroutine each.
func splitSgemm(p int, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	var wg sync.WaitGroup
	byRows := m >= n
	size := n
	if byRows {
		size = m
	}
	chunk := (size + p - 1) / p
	for lo := 0; lo < size; lo += chunk {
		hi := min(lo+chunk, size)
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			if byRows {
				aoff := lo * lda // op(A) rows lo..hi
				if transA {
					aoff = lo
				}
				sgemm1(transA, transB, hi-lo, n, k, alpha, a[aoff:], lda, b, ldb, beta, c[lo*ldc:], ldc)
				return
			}
			boff := lo // op(B) columns lo..hi
			if transB {
				boff = lo * ldb
			}
			sgemm1(transA, transB, m, hi-lo, k, alpha, a, lda, b[boff:], ldb, beta, c[lo:], ldc)
		}(lo, hi)
	}
	wg.Wait()
}

// SgemmSerial is Sgemm on the calling goroutine alone, whatever
// SetThreads says: for callers that split their work across goroutines
// themselves (a convolution's samples).
func SgemmSerial(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if ready(transA, transB, m, n, k, a, lda, b, ldb, c, ldc) {
		sgemm1(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	}
}

// ready checks a product's operands (panicking on slices too short for
// their matrices) and loads the library; false for an empty product.
func ready(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) bool {
	if m == 0 || n == 0 {
		return false
	}
	checkLen("A", a, transA, m, k, lda)
	checkLen("B", b, transB, k, n, ldb)
	checkLen("C", c, false, m, n, ldc)
	load()
	return true
}

// sgemm1 is one single-threaded product.
func sgemm1(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
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
