package gpu

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

// ReadProcStats reads the process's CPU time and peak RSS with getrusage
// and its current RSS from /proc/self/statm.
func ReadProcStats() (ProcStats, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return ProcStats{}, fmt.Errorf("gpu: getrusage: %w", err)
	}
	ps := ProcStats{
		CPUTime:      time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		PeakRSSBytes: int64(ru.Maxrss) * 1024, // KiB on Linux
	}
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return ps, fmt.Errorf("gpu: reading RSS: %w", err)
	}
	rss, err := parseStatmRSS(b, os.Getpagesize())
	if err != nil {
		return ps, err
	}
	ps.RSSBytes = rss
	return ps, nil
}
