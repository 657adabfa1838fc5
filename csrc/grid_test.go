package csrc

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGeometry(t *testing.T) {
	for _, tc := range []struct{ n, blocks int }{{0, 1}, {1, 1}, {256, 1}, {257, 2}, {1 << 20, 4096}, {1 << 30, MaxBlocks}} {
		b, th := Geometry(tc.n)
		require.Equal(t, tc.blocks, b, "n=%d", tc.n)
		require.Equal(t, BlockThreads, th)
	}
}

// TestLaunchGridRunsEveryThread: over a GPU's grid every output is
// written once, each thread runs one iteration of its loop, and the
// result is Launch's; a grid too small for the loop shows in the
// iterations.
func TestLaunchGridRunsEveryThread(t *testing.T) {
	const n = 1000
	x, y, z := Alloc(4*n), Alloc(4*n), Alloc(4*n)
	defer x.Free()
	defer y.Free()
	defer z.Free()
	for i := range x.Float32s() {
		x.Float32s()[i] = float32(i) + 0.5
	}
	blocks, threads := Geometry(n)
	it, err := LaunchGrid("copy_f32", blocks, threads, 7, x, y, n)
	require.NoError(t, err)
	require.Equal(t, 1, it)
	require.NoError(t, Launch("copy_f32", x, z, n))
	require.Equal(t, z.Float32s(), y.Float32s())
	require.Equal(t, x.Float32s(), y.Float32s())

	clear(y.Float32s())
	it, err = LaunchGrid("copy_f32", 1, threads, 3, x, y, n)
	require.NoError(t, err)
	require.Equal(t, 4, it, "256 threads over 1000 outputs")
	require.Equal(t, x.Float32s(), y.Float32s())

	_, err = LaunchGrid("copy_f32", 0, threads, 3, x, y, n)
	require.ErrorContains(t, err, "a grid of 0 blocks")
	_, err = LaunchGrid("copy_f32", 1, 2048, 3, x, y, n)
	require.ErrorContains(t, err, "of 2048 threads")
	_, err = LaunchGrid("copy_f32", 1, 1, 3, x, y)
	require.ErrorContains(t, err, "takes 3 arguments, got 2")
}

// TestLaunchGridFindsOrderDependence: a copy onto itself shifted by one
// reads what other threads write, so its result depends on the threads'
// order. One thread gives one answer; a GPU's grid in two scattered
// orders gives two others. (Between separate buffers, the same copy gives
// Launch's answer: TestLaunchGridRunsEveryThread.)
func TestLaunchGridFindsOrderDependence(t *testing.T) {
	const n = 600
	m := Alloc(4 * (n + 1))
	defer m.Free()
	start := make([]float32, n+1)
	for i := range start {
		start[i] = float32(i)
	}
	run := func(order uint64) []float32 {
		copy(m.Float32s(), start)
		blocks, threads := Geometry(n)
		var err error
		if order == 0 {
			err = Launch("copy_at", m, 0, m, 1, n)
		} else {
			_, err = LaunchGrid("copy_at", blocks, threads, order, m, 0, m, 1, n)
		}
		require.NoError(t, err)
		return slices.Clone(m.Float32s())
	}
	one, a, b := run(0), run(1), run(2)
	require.NotEqual(t, one, a)
	require.NotEqual(t, a, b)
}
