//go:build gpu

package nccl_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/cuda"
	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/nccl"
	"github.com/gotrain/gotrain/trainer/dist"
)

// TestRealNCCLOnGPU runs the collectives through a real libnccl.so.2 (the
// file NCCL_LIBRARY names) on GPU 0, as a GPU rank runs them: a
// communicator of one rank made with the GPU's context current, host
// buffers staged through the GPU's memory. One rank is what one GPU
// allows (NCCL refuses two ranks on one GPU), so each collective's result
// is its input: what this checks is the library itself under gotrain's
// wrapper (its symbols and version, the unique ID, ncclCommInitRank, the
// launches on device memory, the stream waits and ncclCommDestroy), with
// sizes from one value to 64 MiB. It skips, saying why, without
// NCCL_LIBRARY or a GPU.
func TestRealNCCLOnGPU(t *testing.T) {
	path := os.Getenv("NCCL_LIBRARY")
	if path == "" {
		t.Skip("NCCL_LIBRARY is not set: set it to a real libnccl.so.2 to run the collectives on GPU 0")
	}
	dev, err := cuda.Open(0)
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	defer dev.Close()
	lib, err := nccl.Load(path)
	require.NoError(t, err)
	ma, mi, pa, _, err := lib.Version()
	require.NoError(t, err)
	t.Logf("%s: NCCL %d.%d.%d on %s", lib.Path(), ma, mi, pa, dev.Name())
	id, err := lib.GetUniqueID()
	require.NoError(t, err)
	var comm *nccl.Comm
	d, ok := dev.(interface{ Do(func() error) error })
	require.True(t, ok, "the GPU device runs functions with its context current")
	require.NoError(t, d.Do(func() error {
		var err error
		comm, err = lib.InitRank(1, id, 0)
		return err
	}))
	c, err := nccl.NewCommunicator(comm)
	require.NoError(t, err)
	c.UseStaging(device.NewStaging(dev))
	defer func() { require.NoError(t, c.Close()) }()
	require.Equal(t, 0, c.Rank())
	require.Equal(t, 1, c.Size())

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, n := range []int{1, 7, 4096, 1 << 24} {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(i%1013) - 506.25
		}
		for _, op := range []dist.Op{dist.Sum, dist.Max} {
			got := make([]float32, n)
			require.NoError(t, c.AllReduce(ctx, x, got, op))
			require.Equal(t, x, got, "AllReduce %v of %d floats over one rank", op, n)
		}
		inPlace := append([]float32(nil), x...)
		require.NoError(t, c.AllReduce(ctx, inPlace, inPlace, dist.Sum))
		require.Equal(t, x, inPlace, "in-place AllReduce of %d floats", n)
		gathered := make([]float32, n)
		require.NoError(t, c.AllGather(ctx, x, gathered))
		require.Equal(t, x, gathered, "AllGather of %d floats", n)
		scattered := make([]float32, n)
		require.NoError(t, c.ReduceScatter(ctx, x, scattered, dist.Sum))
		require.Equal(t, x, scattered, "ReduceScatter of %d floats", n)
		b := append([]float32(nil), x...)
		require.NoError(t, c.Broadcast(ctx, b, 0))
		require.Equal(t, x, b, "Broadcast of %d floats", n)
	}
	f64 := []float64{1e-300, -2.5, 3.25e10}
	got := make([]float64, len(f64))
	require.NoError(t, c.AllReduce(ctx, f64, got, dist.Sum))
	require.Equal(t, f64, got, "AllReduce of float64")
	require.NoError(t, c.Barrier(ctx))
}
