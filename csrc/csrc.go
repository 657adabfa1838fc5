// Package csrc holds gotrain's CUDA kernels (kernels.cu) and runs them on
// the host.
//
// # The kernels
//
// [Source] is kernels.cu, embedded in every binary. The gpu build
// compiles it with NVRTC the first time a device is opened (package
// gpu/cuda), for that device's architecture: no nvcc at build time, one
// binary for every GPU generation the driver knows, and the PTX it would
// ship is what NVRTC makes at run time anyway. The cost is the compile at
// start (well under a second for this file). [Kernels] lists the kernels'
// names, in source order.
//
// Every kernel is a grid-stride loop over independent outputs, written in
// the C subset that NVRTC and the C compiler both accept: no shared memory,
// synchronisation or atomics. Reductions (bias gradients, the loss) run one
// thread per output, summing in a fixed order, so results are the same from
// run to run.
//
// # On the host
//
// The same source also compiles here, with emu.h standing for CUDA's
// built-ins: each kernel runs as the only thread of a one-block grid, so
// its loop visits every index in order. [Launch] runs a kernel that way,
// on memory from [Alloc]. Because the grid-stride loops have no
// cross-thread effects, a kernel gives the same results on the host as on
// a device (the per-op conformance tests in gpu/executor compare both with
// graph/'s CPU ops). This is how the kernels are tested in CI, which has
// no GPU.
package csrc

import _ "embed"

// Source is the CUDA source of the kernels (kernels.cu).
//
//go:embed kernels.cu
var Source string

// Kernels are the names of the kernels in Source, in source order.
var Kernels = kernels.names
