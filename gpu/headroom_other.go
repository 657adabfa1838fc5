//go:build !linux

package gpu

import (
	"errors"
	"runtime"
)

// CPUHeadroom is implemented on Linux only; elsewhere the balancer bounds
// no CPU rank's share by memory.
func CPUHeadroom() (Headroom, error) {
	return Headroom{}, errors.New("gpu: free memory is read on Linux only, not on " + runtime.GOOS)
}
