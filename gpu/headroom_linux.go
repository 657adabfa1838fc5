package gpu

import (
	"fmt"
	"os"
	"path/filepath"
)

// CPUHeadroom is the headroom of a rank training on the CPU: FreeBytes is
// the system's available memory (MemAvailable in /proc/meminfo), lowered
// to what the process's cgroup memory limit still allows when it has one,
// as in a container: memory.max less memory.current under cgroup v2, or
// memory.limit_in_bytes less memory.usage_in_bytes of the (namespaced)
// cgroup v1 memory controller. CPUs report no clock or slowdown.
func CPUHeadroom() (Headroom, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return Headroom{}, fmt.Errorf("gpu: free memory: %w", err)
	}
	free, err := parseMemAvailable(b)
	if err != nil {
		return Headroom{}, err
	}
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		if p, ok := parseCgroupPath(b); ok {
			dir := filepath.Join("/sys/fs/cgroup", p)
			free = cgroupFree(free, filepath.Join(dir, "memory.max"), filepath.Join(dir, "memory.current"))
		}
	}
	v1 := "/sys/fs/cgroup/memory"
	free = cgroupFree(free, filepath.Join(v1, "memory.limit_in_bytes"), filepath.Join(v1, "memory.usage_in_bytes"))
	return Headroom{FreeBytes: free}, nil
}

// cgroupFree lowers free to the room left under the limit in file lim,
// given the usage in file cur; files that are absent or unreadable, and
// no limit, leave it as it is.
func cgroupFree(free uint64, lim, cur string) uint64 {
	limB, err1 := os.ReadFile(lim)
	curB, err2 := os.ReadFile(cur)
	if err1 != nil || err2 != nil {
		return free
	}
	l, limited, err1 := parseCgroupBytes(limB)
	c, _, err2 := parseCgroupBytes(curB)
	if err1 != nil || err2 != nil || !limited {
		return free
	}
	return min(free, l-min(c, l))
}
