//go:build linux || darwin || ios || freebsd || netbsd || openbsd || dragonfly

package metrics

import (
	"runtime"
	"syscall"
)

func peakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	n := int64(ru.Maxrss)
	if runtime.GOOS != "darwin" && runtime.GOOS != "ios" {
		n *= 1024 // KiB
	}
	return n
}
