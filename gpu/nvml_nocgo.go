//go:build !cgo

package gpu

import "fmt"

// NVML is the Monitor backed by NVIDIA's management library. This build
// has no cgo, so go-nvml (a cgo package) is left out and OpenNVML always
// fails; the methods behave as on a closed NVML.
type NVML struct{}

var _ Monitor = (*NVML)(nil)

// OpenNVML always fails in a build without cgo, with an error wrapping
// ErrNoDriver: loading libnvidia-ml.so.1 needs cgo (CGO_ENABLED=1 and a C
// compiler at build time, no NVIDIA files).
func OpenNVML() (*NVML, error) {
	return nil, fmt.Errorf("%w: this gotrain was built without cgo (CGO_ENABLED=0), so %s cannot be loaded", ErrNoDriver, nvmlLibraryName)
}

// Devices returns nil.
func (*NVML) Devices() []DeviceInfo { return nil }

// Sample returns ErrClosed.
func (*NVML) Sample() ([]DeviceStats, error) { return nil, ErrClosed }

// Close returns nil.
func (*NVML) Close() error { return nil }
