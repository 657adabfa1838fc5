package gpu

import (
	"bytes"
	"fmt"
	"strconv"
)

// Headroom is what the load balancer learns from the device a rank trains
// on: how much memory is still free for a larger share of the batch, the
// compute clock (to correct a speed measured before the clock changed) and
// whether the device is being slowed down. GPU ranks take it from NVML
// (DeviceHeadroom); CPU ranks from the operating system (CPUHeadroom).
type Headroom struct {
	// FreeBytes is the memory the rank could still allocate; 0: unknown.
	FreeBytes uint64
	// ClockMHz is the compute clock now (a GPU's SM clock); 0: unknown.
	ClockMHz float64
	// Slowdown is the active throttle reasons within SlowdownReasons.
	Slowdown uint64
}

// SlowdownReasons are the NVML throttle reasons that mean a GPU runs
// slower than it could for reasons outside the job (its power cap, heat,
// a hardware slowdown, a power brake), as opposed to idling or the
// application's own clock setting. A change in them tells the balancer
// that earlier speed measurements no longer hold.
const SlowdownReasons = ThrottleSWPowerCap | ThrottleHWSlowdown | ThrottleSWThermal | ThrottleHWThermal | ThrottlePowerBrake

// DeviceHeadroom is a GPU's headroom from one NVML sample. Fields the
// driver could not report (see DeviceStats.Missing) stay 0, which the
// balancer reads as unknown.
func DeviceHeadroom(s DeviceStats) Headroom {
	h := Headroom{FreeBytes: s.MemFreeBytes, ClockMHz: float64(s.SMClockMHz), Slowdown: s.ThrottleReasons & SlowdownReasons}
	for _, m := range s.Missing {
		switch m {
		case FieldMemFree:
			h.FreeBytes = 0
		case FieldSMClock:
			h.ClockMHz = 0
		case FieldThrottle:
			h.Slowdown = 0
		}
	}
	return h
}

// parseMemAvailable returns MemAvailable from the text of /proc/meminfo,
// in bytes.
func parseMemAvailable(b []byte) (uint64, error) {
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		rest, ok := bytes.CutPrefix(line, []byte("MemAvailable:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("gpu: /proc/meminfo: MemAvailable line %q is not \"N kB\"", line)
		}
		kb, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil || kb > 1<<50 {
			return 0, fmt.Errorf("gpu: /proc/meminfo: MemAvailable %q is not a size in kB", f[0])
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("gpu: /proc/meminfo has no MemAvailable line (Linux 3.14 or later has one)")
}

// parseCgroupPath returns the cgroup v2 path of the process ("0::/path")
// from the text of /proc/self/cgroup; ok false without a v2 entry.
func parseCgroupPath(b []byte) (string, bool) {
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if p, ok := bytes.CutPrefix(line, []byte("0::")); ok && len(p) > 0 && p[0] == '/' && !bytes.Contains(p, []byte("..")) {
			return string(p), true
		}
	}
	return "", false
}

// parseCgroupBytes reads a cgroup memory file (v2 memory.max and
// memory.current, v1 memory.limit_in_bytes and memory.usage_in_bytes): a
// byte count, with ok false for no limit ("max" in v2, 2^62 or more in v1).
func parseCgroupBytes(b []byte) (v uint64, ok bool, err error) {
	s := string(bytes.TrimSpace(b))
	if s == "max" {
		return 0, false, nil
	}
	v, err = strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("gpu: cgroup memory file holds %q, not a byte count or \"max\"", s)
	}
	return v, v < 1<<62, nil
}
