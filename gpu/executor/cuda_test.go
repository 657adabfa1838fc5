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
