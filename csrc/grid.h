// Running a kernel of kernels.cu as a GPU does, on the host: once for
// every thread of the grid, in a scattered order. Included, after
// kernels.cu (in emu.h's grid mode) and shims.h, by grid.go and by the fake
// CUDA driver (gpu/cuda/fakecuda).

static unsigned long long gcd_u64(unsigned long long a, unsigned long long b) {
	while (b != 0) {
		unsigned long long t = a % b;
		a = b;
		b = t;
	}
	return a;
}

// step_for returns a step that is coprime with n: adding it modulo n
// visits every residue once, in a scattered order.
static unsigned long long step_for(unsigned long long n) {
	static const unsigned long long primes[] = {1000003ULL, 999983ULL, 15485863ULL, 2147483647ULL};
	for (int k = 0; k < 4; k++)
		if (gcd_u64(primes[k], n) == 1) return primes[k] % n;
	return 1 % n;
}

// grid_blocks runs shim i once for every thread of blocks j0 to j1 (in
// the walk's order, not block indices) of a grid of grid blocks of block
// threads: the blocks in a scattered order, and within each block its
// threads in another, both picked by order (each a walk by a step coprime
// with the count, from a start that order gives). Any two threads run in
// an order that neither their indices nor their blocks' decide, and no
// division is made per thread. It returns the most iterations of FOR that
// one thread ran. The kernels share nothing between threads (no shared
// memory, no atomics), so disjoint ranges of one grid may run at once, on
// different host threads, as a GPU's blocks do.
static long grid_blocks(int i, void **a, unsigned grid, unsigned block, unsigned long long order,
                        unsigned long long j0, unsigned long long j1) {
	unsigned long long bstep = step_for(grid), tstep = step_for(block);
	blockDim = (struct emu_dim3){block, 1, 1};
	gridDim = (struct emu_dim3){grid, 1, 1};
	blockIdx = threadIdx = (struct emu_dim3){0, 0, 0};
	long most = 0;
	// b = (order + j0·bstep) mod grid, without overflow
	unsigned long long b = (order % grid + (unsigned long long)((unsigned __int128)j0 * bstep % grid)) % grid;
	for (unsigned long long j = j0; j < j1; j++) {
		blockIdx.x = (unsigned)b;
		unsigned long long t = (order >> 17) % block;
		for (unsigned long long k = 0; k < block; k++) {
			threadIdx.x = (unsigned)t;
			emu_iters = 0;
			shims[i].call(a);
			if (emu_iters > most) most = emu_iters;
			if ((t += tstep) >= block) t -= block;
		}
		if ((b += bstep) >= grid) b -= grid;
	}
	return most;
}

// grid_call runs every block of the grid (grid_blocks) on this thread.
static long grid_call(int i, void **a, unsigned grid, unsigned block, unsigned long long order) {
	return grid_blocks(i, a, grid, block, order, 0, grid);
}
