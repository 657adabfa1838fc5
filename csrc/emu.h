// Host emulation of the CUDA built-ins that kernels.cu uses, in two modes.
//
// By default every kernel runs as thread 0 of block 0 of a grid of one
// block of one thread, so its grid-stride loop visits every index in order
// (shims.go: fast, the host device).
//
// With EMU_GRID defined (grid.go) the launch geometry is per-thread state
// that the launcher sets before it calls the kernel once for each thread
// of the grid, and FOR counts the iterations each thread runs, so that a
// launcher can tell a grid that was too small for the loop it ran.
#include <math.h>

struct emu_dim3 {
	unsigned x, y, z;
};
#ifdef EMU_GRID
static __thread struct emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
static __thread long emu_iters;
#define FOR(i, n) for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (long)(n) && (++emu_iters, 1); i += (long)blockDim.x * gridDim.x)
#else
static const struct emu_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#endif

#define KERNEL static void
#define DEVICE static inline
