// Host emulation of the CUDA built-ins that kernels.cu uses: every kernel
// runs as thread 0 of block 0 of a grid of one block of one thread, so its
// grid-stride loop visits every index in order. See kernels.cu.
#include <math.h>

struct emu_dim3 {
	unsigned x, y, z;
};
static const struct emu_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

#define KERNEL static void
#define DEVICE static inline
