//go:build !gpu

package cuda

import (
	"errors"

	"github.com/gotrain/gotrain/gpu/device"
)

// ErrNotBuilt is returned by Open in a build without the gpu tag.
var ErrNotBuilt = errors.New("this gotrain was built without GPU support: build it with 'make build-gpu' (go build -tags gpu, needs the CUDA 11.8 or 12 headers) or use the gotrain GPU image")

// Open fails: this build has no CUDA.
func Open(ordinal int) (device.Device, error) { return nil, ErrNotBuilt }

// Count is 0 in a build without CUDA.
func Count() (int, error) { return 0, ErrNotBuilt }
