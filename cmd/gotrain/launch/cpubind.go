package launch

import (
	"fmt"
	"strconv"
	"strings"
)

// CPU binding
//
// A synchronous job runs at the pace of its slowest rank at every step, so
// the spread of step times costs as much as their mean. Unbound, the
// scheduler moves workers between CPUs and lets two of them share one while
// another idles; on a small host that widened the spread of a 2-rank CPU
// job's step times about twofold and made it 15% slower (see
// cmd/gotrain/peer/bench_balance.py). --cpu-bind cores gives every local
// worker its own contiguous block of the CPUs the launcher may use (its
// affinity mask: taskset, a cgroup cpuset or Slurm's binding are
// respected), as Open MPI's --bind-to core and Slurm's --cpu-bind=cores do.
// A worker's default --threads is then its block's size. The binding is
// inherited by everything the worker starts.
//
// auto (the default) binds when there are at least two workers and at
// least one CPU for each; none leaves placement to the scheduler.

// CPU binding policies of --cpu-bind.
const (
	BindAuto  = "auto"
	BindNone  = "none"
	BindCores = "cores"
)

// cpuBlocks splits cpus into n contiguous blocks whose sizes differ by at
// most one (the first ones larger). policy is --cpu-bind; nil means the
// workers are not bound.
func cpuBlocks(policy string, cpus []int, n int) ([][]int, error) {
	switch policy {
	case BindNone:
		return nil, nil
	case BindAuto:
		if n < 2 || len(cpus) < n {
			return nil, nil
		}
	case BindCores:
		if len(cpus) < n {
			return nil, fmt.Errorf("%w: --cpu-bind cores needs a CPU for each of the %d workers, and this launcher may use %d (%s): start fewer workers or use --cpu-bind none",
				errUsage, n, len(cpus), formatCPUs(cpus))
		}
	default:
		return nil, fmt.Errorf("%w: --cpu-bind %q is not a policy (valid: auto, none, cores)", errUsage, policy)
	}
	blocks := make([][]int, n)
	q, rem := len(cpus)/n, len(cpus)%n
	off := 0
	for i := range blocks {
		size := q
		if i < rem {
			size++
		}
		blocks[i] = cpus[off : off+size : off+size]
		off += size
	}
	return blocks, nil
}

// formatCPUs writes a CPU list the way the kernel does ("0-3,8,10-11").
func formatCPUs(cpus []int) string {
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(cpus[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(cpus[j]))
		}
		i = j + 1
	}
	return b.String()
}

// resolveBinding returns each of n local workers' CPUs under policy, nil
// when they are not bound.
func resolveBinding(policy string, n int) ([][]int, error) {
	if policy == BindNone {
		return nil, nil
	}
	cpus, err := allowedCPUs()
	if err != nil {
		if policy == BindAuto {
			return nil, nil
		}
		return nil, fmt.Errorf("--cpu-bind %s: %w", policy, err)
	}
	return cpuBlocks(policy, cpus, n)
}
