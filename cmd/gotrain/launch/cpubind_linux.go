//go:build linux

package launch

import (
	"fmt"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// allowedCPUs lists the CPUs this process may run on, in increasing order.
func allowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("reading the launcher's CPU affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64; c++ { // CPUSet is an array of 64-bit masks
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// startBound starts cmd bound to cpus. A child inherits the affinity of the
// thread that forks it, so this goroutine, locked to its thread, narrows
// the thread's mask around the fork and restores it: the worker is bound
// before its first instruction, together with every thread it will have.
func startBound(cmd *exec.Cmd, cpus []int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return fmt.Errorf("reading the CPU affinity: %w", err)
	}
	for _, c := range cpus {
		set.Set(c)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("binding to CPUs %s: %w", formatCPUs(cpus), err)
	}
	err := cmd.Start()
	if rerr := unix.SchedSetaffinity(0, &old); rerr != nil && err == nil {
		err = fmt.Errorf("restoring the launcher's CPU affinity: %w", rerr)
	}
	return err
}
