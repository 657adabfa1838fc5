// Package cblas is gotrain's one door to a native BLAS: single-precision
// matrix products (Sgemm) for the CPU build, loaded at run time.
//
// # What it does
//
// The CPU kernels in graph call [Sgemm] for every matrix product (linear
// layers, convolutions through im2col). When the process starts using it, the
// package tries to dlopen an OpenBLAS library and resolve cblas_sgemm and
// openblas_set_num_threads from it:
//
//  1. the file named by GOTRAIN_BLAS_LIBRARY, if set;
//  2. libopenblas.so.0, libopenblas.so, libblas.so.3 (Debian: libopenblas0-pthread
//     or libopenblas-dev).
//
// On a CPU with AVX-512 the package sets OPENBLAS_CORETYPE=Haswell before
// OpenBLAS loads (unless it is set already): OpenBLAS's AVX-512 kernels
// round a row of a product differently with the number of rows, which
// breaks data parallelism's bit-for-bit agreement with one process; its
// AVX2 kernels do not, and are as fast for gotrain's products.
//
// Nothing is linked at build time, so the package builds on any machine with
// a C compiler (and without one: with CGO_ENABLED=0 only the fallback exists).
// When no library loads, Sgemm falls back to gonum's pure-Go implementation,
// which gives the same results (up to float rounding) at a fraction of the
// speed; [Backend] says which one is in use and why, and gotrain logs it at
// start.
//
// # Example
//
//	cblas.SetThreads(2)
//	// C[2x2] = A[2x3] · B[3x2]
//	cblas.Sgemm(false, false, 2, 2, 3, 1, a, 3, b, 2, 0, c, 2)
//
// # Errors
//
// Sgemm panics only on programmer errors (slices too short for the given
// dimensions), like gonum's BLAS. A missing library is not an error: it is
// reported by Backend and served by the fallback.
package cblas
