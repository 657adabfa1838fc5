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
// built-ins, twice:
//
//   - [Launch] runs a kernel as the only thread of a one-block grid, so
//     its loop visits every index in order: the host device (package
//     gpu/device), fast enough to train on.
//   - [LaunchGrid] runs it as a GPU does: once for every thread of the
//     grid a launch gets ([Geometry], which gpu/cuda uses too), each with
//     its own blockIdx and threadIdx, in a scattered order. It counts the
//     iterations of each thread's loop, so a launch whose grid is smaller
//     than its loop shows.
//
// Because the grid-stride loops have no cross-thread effects, a kernel
// gives the same results either way, bit for bit, and so on a device:
// gpu/executor's conformance suite runs every op and training step on
// both (gpu/device's Host and HostGrid) against graph/'s CPU ops, and
// checks that the two agree to the bit. This is how the kernels are tested
// in CI, which has no GPU.
package csrc

import _ "embed"

// Source is the CUDA source of the kernels (kernels.cu).
//
//go:embed kernels.cu
var Source string

// Kernels are the names of the kernels in Source, in source order.
var Kernels = kernels.names
