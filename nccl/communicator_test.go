package nccl_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/nccl"
	"github.com/gotrain/gotrain/nccl/ncclstandin"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/disttest"
)

// standinGroup builds size ranks in this process, one NCCL communicator
// each, through the stand-in libnccl.so.2 (host memory, shared between the
// ranks like NCCL's transports share GPU memory).
func standinGroup(lib *nccl.Library) disttest.NewGroup {
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
				comms[r], errs[r] = nccl.NewCommunicator(c)
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
