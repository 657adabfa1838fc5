//go:build !linux

package launch

import (
	"fmt"
	"os/exec"
	"runtime"
)

// allowedCPUs: without sched_getaffinity the launcher does not know which
// CPUs it may use, so --cpu-bind auto binds nothing and cores is refused.
func allowedCPUs() ([]int, error) {
	return nil, fmt.Errorf("CPU binding needs Linux (sched_setaffinity); this is %s", runtime.GOOS)
}

func startBound(cmd *exec.Cmd, cpus []int) error {
	return fmt.Errorf("CPU binding needs Linux (sched_setaffinity); this is %s", runtime.GOOS)
}
