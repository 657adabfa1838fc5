// Package cudacheck makes the gpu build say what is wrong when the CUDA
// driver cannot be used.
//
// gorgonia.org/cu calls cuInit when it initialises and exits the process
// with a terse message when that fails (no GPU, no driver, a driver too
// old). A gpu binary imports this package; Go initialises packages in
// import-path order where dependencies allow, so this one runs first. It
// calls cuInit itself, through dlopen, and on failure names the error and
// what to do, and exits with status 1. In a test binary it reports the
// package's tests as skipped instead, and exits 0: GPU tests skip, with a
// message, where there is no GPU.
//
// A machine without libcuda.so.1 at all does not get this far: the dynamic
// loader refuses to start a binary that links against it (error while
// loading shared libraries: libcuda.so.1), before any Go code runs.
package cudacheck
