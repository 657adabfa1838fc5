//go:build !linux

package gpu

import (
	"errors"
	"runtime"
)

// ReadProcStats is implemented on Linux only; elsewhere the CPU monitor's
// CPU and memory figures stay 0 and its Err says so.
func ReadProcStats() (ProcStats, error) {
	return ProcStats{}, errors.New("gpu: process statistics are read on Linux only, not on " + runtime.GOOS)
}
