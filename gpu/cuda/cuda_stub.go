//go:build !gpu

package cuda

import "github.com/gotrain/gotrain/gpu/device"

// Open fails: this build has no CUDA.
func Open(ordinal int) (device.Device, error) { return nil, ErrNotBuilt }

// Count is 0 in a build without CUDA.
func Count() (int, error) { return 0, ErrNotBuilt }

// IsGPU is false: this build has no CUDA devices.
func IsGPU(device.Device) bool { return false }

// Describe says that this build trains on the CPU only.
func Describe() string {
	return "compute: the CPU build (GPU support: 'make build-gpu', go build -tags gpu)"
}
