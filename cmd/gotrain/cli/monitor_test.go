package cli

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu"
)

func TestGPULine(t *testing.T) {
	stats := []gpu.DeviceStats{
		{Index: 0, UtilGPUPercent: 87, MemUsedBytes: 12 << 30, MemTotalBytes: 80 << 30, TemperatureC: 61},
		{Index: 1, UtilGPUPercent: 5, MemUsedBytes: 1 << 30, MemTotalBytes: 80 << 30, TemperatureC: 88,
			ThrottleReasons: gpu.ThrottleSWThermal | gpu.ThrottleIdle},
		{Index: 2, UtilGPUPercent: 50, Missing: []string{gpu.FieldMemUsed, gpu.FieldTemperature}},
	}
	require.Equal(t, "gpu0 87% 12.0/80.0GiB 61C", gpuLine(stats, 0))
	require.Equal(t, "gpu1 5% 1.0/80.0GiB 88C throttled:sw_thermal", gpuLine(stats, 1))
	require.Equal(t, "gpu2 50%", gpuLine(stats, 2), "what NVML could not read is left out")
	require.Equal(t, "", gpuLine(stats, 3), "a LOCAL_RANK without a GPU")
	require.Equal(t, "", gpuLine(nil, 0))
}

// TestGPUHeadroomIsTheRanksGPU: a rank on GPU 1 is bounded by GPU 1's free
// memory, clock and slowdown, not another's; a GPU missing from the sample
// gives no bound.
func TestGPUHeadroomIsTheRanksGPU(t *testing.T) {
	stats := []gpu.DeviceStats{
		{Index: 0, MemFreeBytes: 10 << 30, SMClockMHz: 1980},
		{Index: 1, MemFreeBytes: 3 << 30, SMClockMHz: 1500, ThrottleReasons: gpu.ThrottleSWThermal | gpu.ThrottleIdle},
	}
	h := gpuHeadroom(func() []gpu.DeviceStats { return stats }, 1)()
	require.Equal(t, uint64(3<<30), h.FreeBytes)
	require.Equal(t, 1500.0, h.ClockMHz)
	require.Equal(t, gpu.ThrottleSWThermal, h.Slowdown, "idle is not a slowdown")
	require.Zero(t, gpuHeadroom(func() []gpu.DeviceStats { return stats }, 5)())
}
