package launch

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCPUBlocks(t *testing.T) {
	cpus := []int{0, 1, 2, 3, 4, 5, 8, 9, 10, 11}
	b, err := cpuBlocks(BindCores, cpus, 3)
	require.NoError(t, err)
	require.Equal(t, [][]int{{0, 1, 2, 3}, {4, 5, 8}, {9, 10, 11}}, b)
	require.Equal(t, "0-3", formatCPUs(b[0]))
	require.Equal(t, "4-5,8", formatCPUs(b[1]))
	require.Equal(t, "0-5,8-11", formatCPUs(cpus))
	// A block must not be able to grow into its neighbour.
	b[0] = append(b[0], 99)
	require.Equal(t, 4, b[1][0])

	b, err = cpuBlocks(BindAuto, cpus, 2)
	require.NoError(t, err)
	require.Len(t, b, 2)
	for _, tc := range []struct {
		policy string
		cpus   []int
		n      int
	}{
		{BindAuto, cpus, 1},     // one worker: nothing to separate
		{BindAuto, []int{0}, 2}, // fewer CPUs than workers
		{BindNone, cpus, 4},     // asked not to
		{BindAuto, cpus[:3], 4}, // fewer CPUs than workers
	} {
		b, err := cpuBlocks(tc.policy, tc.cpus, tc.n)
		require.NoError(t, err)
		require.Nil(t, b, "%s with %d CPUs and %d workers binds nothing", tc.policy, len(tc.cpus), tc.n)
	}
	_, err = cpuBlocks(BindCores, []int{0, 1}, 3)
	require.ErrorIs(t, err, errUsage)
	require.ErrorContains(t, err, "needs a CPU for each of the 3 workers, and this launcher may use 2 (0-1)")
	_, err = cpuBlocks("socket", cpus, 2)
	require.ErrorContains(t, err, `"socket" is not a policy`)
}

func parseCPUList(t *testing.T, s string) []int {
	t.Helper()
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		require.NoError(t, err, "CPU list %q", s)
		b := a
		if isRange {
			b, err = strconv.Atoi(hi)
			require.NoError(t, err, "CPU list %q", s)
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// TestCPUBindGivesEachWorkerItsOwnCPUs: real worker processes report the
// CPUs the kernel lets them use: with cores, disjoint blocks that cover the
// launcher's CPUs; with none, all of them.
func TestCPUBindGivesEachWorkerItsOwnCPUs(t *testing.T) {
	all, err := allowedCPUs()
	if err != nil {
		t.Skipf("no CPU affinity here: %v", err)
	}
	if len(all) < 2 {
		t.Skipf("this test needs at least 2 CPUs to bind 2 workers apart; this process may use %d", len(all))
	}
	for _, policy := range []string{BindCores, BindAuto, BindNone} {
		t.Run(policy, func(t *testing.T) {
			r := launch(t, context.Background(), []string{"--nproc-per-node", "2", "--cpu-bind", policy}, nil, nil, nil, "affinity")
			require.Equal(t, 0, r.code, "stderr: %s", r.stderr.String())
			var union []int
			for rank := range 2 {
				got := parseCPUList(t, envOf(t, r.stdout.String(), rank)["cpus"])
				if policy == BindNone {
					require.Equal(t, all, got, "rank %d unbound", rank)
					continue
				}
				require.NotEmpty(t, got)
				for _, c := range got {
					require.NotContains(t, union, c, "CPU %d given to two workers", c)
				}
				union = append(union, got...)
			}
			if policy == BindNone {
				require.NotContains(t, r.stderr.String(), "binding the workers")
				return
			}
			slices.Sort(union)
			require.Equal(t, all, union, "the blocks cover the launcher's CPUs")
			require.Contains(t, r.stderr.String(), fmt.Sprintf("binding the workers (--cpu-bind %s): local rank 0 on CPU", policy))
		})
	}
	// More workers than CPUs: cores refuses before starting any.
	n := strconv.Itoa(len(all) + 1)
	r := launch(t, context.Background(), []string{"--nproc-per-node", n, "--cpu-bind", BindCores}, nil, nil, nil, "affinity")
	require.Equal(t, 2, r.code)
	require.Contains(t, r.stderr.String(), "needs a CPU for each of the "+n+" workers")
	require.Empty(t, r.stdout.String())
}
