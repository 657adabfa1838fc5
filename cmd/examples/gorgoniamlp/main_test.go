package main

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/cmd/examples/internal/extest"
)

// The example as a user runs it: a model of Gorgonia's operators trained
// by gotrain in one process on the CPU, on the host device (the GPU code
// path: the operators run as the op set's kernels) and as 2 data-parallel
// processes under gotrain launch, all ending with the same weights; and
// the program's gotrain eval. (make fake-gpu-test trains it on fakecuda.)
func TestMain(m *testing.M) { extest.Main(m, "gorgoniamlp") }

func TestExample(t *testing.T) {
	dir := t.TempDir()
	// Plain SGD: with momentum 0.9 this network sits near the edge of
	// stability, and the last bits of the host device's sums (in another
	// order than the CPU's) grow about 30 times every 20 steps after step
	// 60; without it the runs stay within 1e-6.
	common := []string{"train", "--model", "gorgoniamlp", "--dataset", "mnist", "--max-steps", "150", "--optimizer", "sgd", "--lr", "0.05", "--threads", "1"}
	run := func(name string, args ...string) (string, float64) {
		out := filepath.Join(dir, name+".safetensors")
		log := extest.Run(t, "gorgoniamlp", append(append(common, "--out", out), args...)...)
		return out, extest.Accuracy(t, log)
	}
	cpu, acc := run("cpu")
	require.Greater(t, acc, 85.0, "a residual MLP learns MNIST in 150 steps")

	host, hostAcc := run("host", "--device", "host")
	d := extest.MaxDiff(t, cpu, host)
	t.Logf("150 SGD steps: CPU %.2f%%, host device %.2f%%, max |Δ| of the weights %.3g", acc, hostAcc, d)
	require.Less(t, d, 1e-5)

	two := filepath.Join(dir, "two.safetensors")
	out := extest.Run(t, "gotrain", append([]string{"launch", "--standalone", "--nproc-per-node", "2", "--", extest.Path("gorgoniamlp")},
		append(common, "--out", two)...)...)
	require.Contains(t, out, "[rank1]")
	d = extest.MaxDiff(t, cpu, two)
	t.Logf("2 processes: %.2f%%, max |Δ| against 1 process %.3g", extest.Accuracy(t, out), d)
	require.Less(t, d, 1e-5)

	ev := extest.Run(t, "gorgoniamlp", "eval", "--checkpoint", cpu)
	require.Equal(t, acc, extest.Accuracy(t, ev))
}
