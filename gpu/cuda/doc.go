// Package cuda is the CUDA implementation of gpu/device's Device, in the
// gpu build (go build -tags gpu).
//
// [Open] takes a GPU by ordinal (LOCAL_RANK picks it in a job), retains
// its primary context, compiles csrc's kernels with NVRTC (package
// gpu/nvrtc) for the device's compute capability (once per process and
// architecture) and creates a cuBLAS handle. Buffers are device memory
// (cuMemAlloc); kernels launch as grid-stride loops of 256-thread blocks;
// GEMM is cublasSgemm through this package's own cgo (gorgonia.org/cu's
// wrapper sets no stream and has no mixed-precision GEMM), row-major by
// computing the transposed product. Every call makes the context current
// on its OS thread first, so the device can be used from any goroutine.
// Kernels, GEMMs and copies go to the default stream, in call order.
//
// Beyond device.Device it is a device.Pinner (page-locked host memory from
// cuMemHostAlloc, from which WriteAsync queues cuMemcpyHtoDAsync on the
// default stream and returns), a device.Streamer (a non-blocking stream
// for collectives, ordered with the default stream by events only:
// streams.go), and a device.Idler (cuStreamQuery on the default stream,
// the NCCL watchdog's completion check for staged collectives). Do runs a
// function with the context current, for ncclCommInitRank.
//
// The driver API and the module loader come from gorgonia.org/cu v0.9.6,
// which compiles against CUDA 11.8 or 12 headers and links libcuda.so.1.
// cuBLAS and NVRTC are loaded at run time (sonames 13, 12, 11), so one
// gpu binary runs with whichever CUDA toolkit libraries a machine has.
// cu's package init calls cuInit and exits the process when that fails;
// package gpu/cudacheck, which a gpu binary imports and which initialises
// first, checks beforehand and says what is wrong instead.
//
// Without a GPU, make fake-gpu-test runs this package, and everything the
// gpu build puts on top of it, against fakecuda (fakecuda/fakecuda.c): a
// libcuda.so.1 and cuBLAS built from the same kernels that run on the host,
// with guarded device memory and streams that run as late as a GPU's.
//
// Without the gpu tag, Open returns an error that says how to build with
// it.
package cuda
