//go:build gpu

package executor

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/cuda"
	_ "github.com/gotrain/gotrain/gpu/cudacheck" // before gorgonia.org/cu: skip with a reason where there is no GPU
	"github.com/gotrain/gotrain/gpu/device"
)

var (
	gpuOnce sync.Once
	gpu     device.Device
	gpuErr  error
)

// The gpu build runs the conformance suite on GPU 0 too.
func init() {
	devices = append(devices, func(t *testing.T) device.Device {
		gpuOnce.Do(func() { gpu, gpuErr = cuda.Open(0) })
		require.NoError(t, gpuErr)
		return gpu
	})
}

// TestCUDAPinnedAndStreams: on GPU 0, a batch goes up from page-locked
// memory asynchronously and arrives; a kernel's result is handed to the
// communication stream through an event, whose handle is a real stream;
// the stream drains, and the default stream joins it.
func TestCUDAPinnedAndStreams(t *testing.T) {
	gpuOnce.Do(func() { gpu, gpuErr = cuda.Open(0) })
	require.NoError(t, gpuErr)
	p, ok := gpu.(device.Pinner)
	require.True(t, ok, "a CUDA device has page-locked memory")
	st, ok := gpu.(device.Streamer)
	require.True(t, ok, "a CUDA device has a communication stream")
	const n = 1 << 20
	host, err := p.AllocHost(n)
	require.NoError(t, err)
	defer p.FreeHost(host)
	for i := range host {
		host[i] = float32(i % 1000)
	}
	buf, err := gpu.Alloc(n)
	require.NoError(t, err)
	defer gpu.Free(buf)
	require.NoError(t, p.WriteAsync(buf, host))
	require.NoError(t, gpu.Launch("scale_f32", n, buf, n, float32(2)))
	ev, err := st.Mark()
	require.NoError(t, err)
	var handle uintptr
	require.NoError(t, st.OnComm(ev, func(s uintptr) error { handle = s; return nil }))
	require.NotZero(t, handle, "the communication stream is not the default stream")
	require.NoError(t, st.JoinComm())
	got := make([]float32, n)
	require.NoError(t, gpu.Read(got, buf))
	for i, v := range got {
		if v != 2*float32(i%1000) {
			t.Fatalf("value %d is %v, want %v", i, v, 2*float32(i%1000))
		}
	}
	done, err := st.CommDone()
	require.NoError(t, err)
	require.True(t, done)
	// Pageable memory goes up too (synchronously).
	plain := make([]float32, 4)
	plain[3] = 7
	require.NoError(t, p.WriteAsync(buf, plain))
	require.NoError(t, gpu.Read(got[:4], buf))
	require.Equal(t, plain, got[:4])
}
