package nccl_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/nccl"
	"github.com/gotrain/gotrain/nccl/ncclstandin"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/disttest"
)

// standinGroup builds size ranks in this process, one NCCL communicator
// each, through the stand-in libnccl.so.2 (host memory, shared between the
// ranks like NCCL's transports share GPU memory).
func standinGroup(lib *nccl.Library) disttest.NewGroup { return stagedGroup(lib, nil) }

// stagedGroup is standinGroup whose ranks stage their host buffers through
// stage(rank) (nil: no staging).
func stagedGroup(lib *nccl.Library, stage func(rank int) nccl.Staging) disttest.NewGroup {
	return func(t *testing.T, size int) []dist.Communicator {
		t.Helper()
		id, err := lib.GetUniqueID()
		require.NoError(t, err)
		comms := make([]dist.Communicator, size)
		errs := make([]error, size)
		var wg sync.WaitGroup
		for r := 0; r < size; r++ {
			wg.Add(1)
			go func(r int) {
				defer wg.Done()
				c, err := lib.InitRank(size, id, r)
				if err != nil {
					errs[r] = err
					return
				}
				nc, err := nccl.NewCommunicator(c)
				if err == nil && stage != nil {
					nc.UseStaging(stage(r))
				}
				comms[r], errs[r] = nc, err
			}(r)
		}
		wg.Wait()
		for r, err := range errs {
			require.NoError(t, err, "rank %d", r)
		}
		t.Cleanup(func() {
			for _, c := range comms {
				c.Abort(nil)
			}
		})
		return comms
	}
}

// TestConformanceThroughStandin runs the communicator conformance suite
// through the whole NCCL path: dlopen, the symbol table, the C
// trampolines, the unique ID, and the watchdog.
func TestConformanceThroughStandin(t *testing.T) {
	t.Setenv("NCCL_STANDIN_TIMEOUT_MS", "20000")
	lib, err := nccl.Load(ncclstandin.Build(t))
	require.NoError(t, err)
	disttest.Run(t, standinGroup(lib))
}

// countingStaging is device.Staging over the host device, counting the
// bytes that went through it.
type countingStaging struct {
	*device.Staging
	in, out atomic.Int64
}

func (s *countingStaging) Put(slot int, src unsafe.Pointer, bytes int) (uintptr, error) {
	s.in.Add(int64(bytes))
	return s.Staging.Put(slot, src, bytes)
}

func (s *countingStaging) Get(dst unsafe.Pointer, slot, bytes int) error {
	s.out.Add(int64(bytes))
	return s.Staging.Get(dst, slot, bytes)
}

// TestConformanceStaged runs the conformance suite with every host buffer
// staged through device memory (the host device's, which the stand-in
// reads as NCCL reads a GPU's): what a GPU rank does with the collectives
// on host buffers. Odd byte counts and unaligned slices go through a
// scratch copy.
func TestConformanceStaged(t *testing.T) {
	t.Setenv("NCCL_STANDIN_TIMEOUT_MS", "20000")
	lib, err := nccl.Load(ncclstandin.Build(t))
	require.NoError(t, err)
	var mu sync.Mutex
	var stages []*countingStaging
	disttest.Run(t, stagedGroup(lib, func(int) nccl.Staging {
		s := &countingStaging{Staging: device.NewStaging(device.Host{})}
		mu.Lock()
		stages = append(stages, s)
		mu.Unlock()
		return s
	}))
	var in, out int64
	for _, s := range stages {
		in += s.in.Load()
		out += s.out.Load()
	}
	t.Logf("%d ranks staged %d bytes in and %d out", len(stages), in, out)
	require.Positive(t, in)
	require.Positive(t, out)

	// Odd sizes and an unaligned slice, in place and not.
	comms := stagedGroup(lib, func(int) nccl.Staging { return device.NewStaging(device.Host{}) })(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	got := make([][]byte, 2)
	for r, c := range comms {
		wg.Go(func() {
			raw := make([]byte, 8)
			send := raw[1:4] // 3 bytes at an odd address
			for i := range send {
				send[i] = byte(10*r + i)
			}
			got[r] = make([]byte, 6)
			require.NoError(t, c.AllGather(ctx, send, got[r]))
		})
	}
	wg.Wait()
	for r := range got {
		require.Equal(t, []byte{0, 1, 2, 10, 11, 12}, got[r], "rank %d", r)
	}
}

func TestNCCLCommunicatorRejectsBadBuffers(t *testing.T) {
	lib, err := nccl.Load(ncclstandin.Build(t))
	require.NoError(t, err)
	comms := standinGroup(lib)(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.ErrorIs(t, comms[0].AllReduce(ctx, []int{1}, []int{1}, dist.Sum), dist.ErrBadBuffer)
	require.ErrorIs(t, comms[0].AllReduce(ctx, make([]float32, 2), make([]float64, 2), dist.Sum), dist.ErrBadBuffer)
	require.ErrorIs(t, comms[0].Broadcast(ctx, make([]float32, 2), 3), dist.ErrInvalidArg)
	x := []float32{1, 2}
	require.NoError(t, comms[0].AllReduce(ctx, x, x, dist.Sum))
	require.Equal(t, []float32{1, 2}, x)
}
