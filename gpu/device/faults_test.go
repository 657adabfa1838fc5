package device

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseFaults(t *testing.T) {
	f, err := ParseFaults("")
	require.NoError(t, err)
	require.Nil(t, f)
	f, err = ParseFaults("alloc:3, launch:relu:2,sticky:7,mem:4096,launch:1,sticky:fill:2")
	require.NoError(t, err)
	require.Len(t, f.rules, 6)
	for _, bad := range []string{"alloc", "alloc:0", "alloc:x", "launch::2", "launch:relu:2:3", "oom:1", "mem:-1", "sticky:relu"} {
		_, err := ParseFaults(bad)
		require.Error(t, err, bad)
	}
}

// TestHostFaults: each fault of a host device, and what the calls after
// it see.
func TestHostFaults(t *testing.T) {
	hostWith := func(spec string) Host {
		f, err := ParseFaults(spec)
		require.NoError(t, err)
		return Host{Faults: f}
	}
	t.Run("alloc", func(t *testing.T) {
		h := hostWith("alloc:2")
		a, err := h.Alloc(4)
		require.NoError(t, err)
		defer h.Free(a)
		_, err = h.Alloc(256)
		require.ErrorIs(t, err, ErrOutOfMemory)
		require.EqualError(t, err, "allocating 1024 bytes: injected out of memory (fault alloc:2)")
		b, err := h.Alloc(4) // only the 2nd
		require.NoError(t, err)
		h.Free(b)
	})
	t.Run("mem", func(t *testing.T) {
		h := hostWith("mem:64")
		a, err := h.Alloc(10)
		require.NoError(t, err)
		_, err = h.Alloc(7)
		require.ErrorIs(t, err, ErrOutOfMemory, "40+28 bytes > 64")
		b, err := h.Alloc(6)
		require.NoError(t, err, "40+24 bytes")
		h.Free(a)
		c, err := h.Alloc(10)
		require.NoError(t, err, "freed memory counts no more")
		h.Free(b)
		h.Free(c)
	})
	t.Run("launch", func(t *testing.T) {
		h := hostWith("launch:fill:2")
		b, err := h.Alloc(3)
		require.NoError(t, err)
		defer h.Free(b)
		require.NoError(t, h.Launch("copy_f32", 3, b, b, 3))
		require.NoError(t, h.Launch("fill", 3, b, float32(1), 3))
		err = h.Launch("fill", 3, b, float32(2), 3)
		require.ErrorIs(t, err, ErrLaunchFailed)
		require.EqualError(t, err, "launching kernel fill: injected launch failure (fault launch:fill:2)")
		got := make([]float32, 3)
		require.NoError(t, h.Read(got, b))
		require.Equal(t, []float32{1, 1, 1}, got, "the failed launch did not run")
		require.NoError(t, h.Launch("fill", 3, b, float32(3), 3))
	})
	t.Run("sticky", func(t *testing.T) {
		h := hostWith("sticky:2")
		b, err := h.Alloc(3)
		require.NoError(t, err)
		defer h.Free(b)
		require.NoError(t, h.Launch("fill", 3, b, float32(1), 3))
		require.NoError(t, h.Launch("fill", 3, b, float32(2), 3), "the fault is asynchronous")
		require.NoError(t, h.Launch("fill", 3, b, float32(3), 3), "and not seen before a wait")
		got := []float32{9, 9, 9}
		err = h.Read(got, b)
		require.ErrorIs(t, err, ErrIllegalAddress)
		require.EqualError(t, err, "reading 3 values: injected illegal memory access in launch 2 (kernel fill), reported by every call since (fault sticky:2)")
		require.Equal(t, []float32{9, 9, 9}, got)
		// Every call after it fails.
		require.ErrorIs(t, h.Launch("fill", 3, b, float32(4), 3), ErrIllegalAddress)
		require.ErrorIs(t, h.Sync(), ErrIllegalAddress)
		require.ErrorIs(t, h.Write(b, got), ErrIllegalAddress)
		require.ErrorIs(t, h.Gemm(FP32, false, false, 1, 1, 1, 1, b, 1, b, 1, 0, b, 1), ErrIllegalAddress)
		_, err = h.Alloc(1)
		require.ErrorIs(t, err, ErrIllegalAddress)
		// The work after the fault never ran: a sound device sees 1s.
		require.NoError(t, Host{}.Read(got, b))
		require.Equal(t, []float32{1, 1, 1}, got)
	})
	t.Run("grid", func(t *testing.T) {
		f, err := ParseFaults("launch:1")
		require.NoError(t, err)
		h := &HostGrid{Host: Host{Faults: f}}
		b, err := h.Alloc(3)
		require.NoError(t, err)
		defer h.Free(b)
		require.ErrorIs(t, h.Launch("fill", 3, b, float32(1), 3), ErrLaunchFailed)
	})
}

func TestHostFromEnv(t *testing.T) {
	t.Setenv(FaultEnv, "")
	h, err := HostFromEnv()
	require.NoError(t, err)
	require.Nil(t, h.Faults)
	t.Setenv(FaultEnv, "launch:relu:x")
	_, err = HostFromEnv()
	require.ErrorContains(t, err, "GOTRAIN_HOST_FAULT: device: fault \"launch:relu:x\"")
	t.Setenv(FaultEnv, "alloc:1")
	h, err = HostFromEnv()
	require.NoError(t, err)
	_, err = h.Alloc(1)
	require.ErrorIs(t, err, ErrOutOfMemory)
}
