package main

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
