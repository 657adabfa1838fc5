package csrc

// The kernels run as a GPU runs them: the same source compiled a second
// time, with emu.h's grid mode, so that the launch geometry is state the
// launcher sets for each thread.

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo CFLAGS: -O2 -std=gnu11 -Wno-unused-function
#define EMU_GRID 1
#include "kernels.cu"
#include "shims.h"

#include "grid.h"
*/
import "C"

import "fmt"

// Launch geometry of the kernels on a GPU: blocks of BlockThreads threads,
// at most MaxBlocks of them.
const (
	BlockThreads = 256
	MaxBlocks    = 65535
)

// Geometry is the grid a launcher gives a kernel over n outputs: as many
// blocks as cover n, at least one and at most MaxBlocks (the grid-stride
// loops take the rest).
func Geometry(n int) (blocks, threads int) {
	return min(max((n+BlockThreads-1)/BlockThreads, 1), MaxBlocks), BlockThreads
}

// LaunchGrid runs kernel name on the host as a GPU would: once for each
// thread of a grid of blocks blocks of threads threads, every thread with
// its own blockIdx and threadIdx, in a scattered order that order picks
// (the threads of a GPU run in no order at all, so a kernel whose result
// depends on it has a race). Arguments are as for Launch. It returns the
// most iterations of its grid-stride loop that one thread ran: more than
// one while the grid is below MaxBlocks means the launch asked for fewer
// threads than the loop has outputs, and on a GPU those threads would do
// the work of many.
func LaunchGrid(name string, blocks, threads int, order uint64, args ...any) (iterations int, err error) {
	if blocks < 1 || blocks > MaxBlocks || threads < 1 || threads > 1024 {
		return 0, fmt.Errorf("csrc: kernel %s: a grid of %d blocks of %d threads (want 1 to %d blocks of 1 to 1024)", name, blocks, threads, MaxBlocks)
	}
	i, params, free, err := hostParams(name, args)
	if err != nil {
		return 0, err
	}
	defer free()
	return int(C.grid_call(C.int(i), params, C.unsigned(blocks), C.unsigned(threads), C.ulonglong(order))), nil
}
