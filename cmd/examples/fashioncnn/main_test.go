package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
)

// The example as a user runs it: gotrain with its own CNN registered, 3
// ranks under gotrain launch with adaptive balancing, against the
// built-in cnn trained by gotrain itself; a resume from the job's
// checkpoint and the program's gotrain eval.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fashioncnn-test")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for _, b := range []struct{ out, pkg string }{{"fashioncnn", "."}, {"gotrain", "github.com/gotrain/gotrain/cmd/gotrain"}} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run1(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	for _, kv := range os.Environ() { // not a rank of some outer job
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "MASTER_") && k != "RANK" && k != "WORLD_SIZE" && !strings.HasPrefix(k, "LOCAL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out)
}

var accRE = regexp.MustCompile(`(?m)^(?:\[rank0\] )?(?:test accuracy|.*: accuracy) ([0-9.]+)%`)

func accuracy(t *testing.T, out string) float64 {
	t.Helper()
	m := accRE.FindStringSubmatch(out)
	require.NotNil(t, m, "no accuracy in %q", out)
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

func maxDiff(t *testing.T, a, b string) float64 {
	t.Helper()
	fa, err := checkpoint.ReadFile(a)
	require.NoError(t, err)
	fb, err := checkpoint.ReadFile(b)
	require.NoError(t, err)
	require.Equal(t, len(fa.Tensors), len(fb.Tensors))
	d := 0.0
	for i := range fa.Tensors {
		require.Equal(t, fa.Tensors[i].Name, fb.Tensors[i].Name)
		x, err := fa.Tensors[i].Float32s()
		require.NoError(t, err)
		y, err := fb.Tensors[i].Float32s()
		require.NoError(t, err)
		for j := range x {
			d = math.Max(d, math.Abs(float64(x[j])-float64(y[j])))
		}
	}
	return d
}

func TestExample(t *testing.T) {
	if dir, err := data.DefaultDir("fashion-mnist"); err != nil {
		t.Skipf("Fashion-MNIST is not installed (Debian's dataset-fashion-mnist): %v", err)
	} else if _, err := os.Stat(dir); err != nil {
		t.Skipf("Fashion-MNIST is not installed (Debian's dataset-fashion-mnist): %v", err)
	}
	dir := t.TempDir()
	common := []string{"--dataset", "fashion-mnist", "--max-steps", "200", "--threads", "1"}
	builtin := filepath.Join(dir, "builtin.safetensors")
	ref := accuracy(t, run1(t, "gotrain", append([]string{"train", "--model", "cnn", "--out", builtin}, common...)...))

	ck := filepath.Join(dir, "ckpt")
	own := filepath.Join(dir, "own.safetensors")
	out := run1(t, "gotrain", append([]string{"launch", "--standalone", "--nproc-per-node", "3", "--", filepath.Join(binDir, "fashioncnn"),
		"train", "--model", "fashioncnn", "--balance", "adaptive", "--balance-every", "20", "--checkpoint-dir", ck, "--checkpoint-every", "100", "--out", own}, common...)...)
	acc := accuracy(t, out)
	d := maxDiff(t, builtin, own)
	t.Logf("test accuracy after 200 steps: built-in cnn, 1 process %.2f%%; fashioncnn, 3 ranks, --balance adaptive %.2f%%; max |Δ| of the weights %.3g", ref, acc, d)
	require.InDelta(t, ref, acc, 0.5)
	require.Contains(t, out, "[rank2]")
	replans := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "[rank0] ") && strings.Contains(l, "msg=rebalanced") {
			replans++
		}
	}
	t.Logf("the balancer re-planned the shares %d times", replans)
	// The same shape and parameter names give the same start (each
	// parameter's initialisation is seeded by its name); Adam then
	// magnifies the rounding of the ranks' sums over 200 steps, so the
	// weights are compared by their accuracy, not bit for bit.

	t.Run("resume", func(t *testing.T) {
		resumed := filepath.Join(dir, "resumed.safetensors")
		out := run1(t, "fashioncnn", append([]string{"train", "--model", "fashioncnn", "--resume", filepath.Join(ck, "ckpt-0000000100.safetensors"), "--out", resumed}, common...)...)
		require.Contains(t, out, "after 200 steps")
		require.Contains(t, out, "ckpt-0000000100.safetensors")
		d := maxDiff(t, own, resumed)
		ra := accuracy(t, out)
		t.Logf("resumed on 1 process from the 3-rank job's step-100 checkpoint: %.2f%%, max |Δ| against the job %.3g", ra, d)
		require.InDelta(t, acc, ra, 0.5)
	})

	t.Run("gotrain eval", func(t *testing.T) {
		out := run1(t, "fashioncnn", "eval", "--checkpoint", own)
		require.Contains(t, out, "fashioncnn on fashion-mnist test (10000 samples)")
		require.Equal(t, acc, accuracy(t, out))
	})
}
