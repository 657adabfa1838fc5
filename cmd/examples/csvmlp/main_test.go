package main

import (
	"encoding/json"
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
)

// The example as a user runs it: its own binary, gotrain's launcher,
// its checkpoints, gotrain eval (through the binary, which has the model
// registered), and the PyTorch peer on the same files.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "csvmlp-test")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for _, b := range []struct{ out, pkg string }{{"csvmlp", "."}, {"gotrain", "github.com/gotrain/gotrain/cmd/gotrain"}} {
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

var accRE = regexp.MustCompile(`accuracy ([0-9.]+)%`)

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
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	run1(t, "csvmlp", "gendata", data)
	one := filepath.Join(dir, "one.safetensors")
	out := run1(t, "csvmlp", "train", "--data", data, "--out", one, "--threads", "1")
	acc1 := accuracy(t, out)
	t.Logf("one process: %s", strings.TrimSpace(out))

	// The state_dict names of the user's model, PyTorch's.
	f, err := checkpoint.ReadFile(one)
	require.NoError(t, err)
	var names []string
	for _, x := range f.Tensors {
		names = append(names, x.Name)
	}
	require.ElementsMatch(t, []string{"hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias", "head.weight", "head.bias"}, names)

	t.Run("two processes equal one", func(t *testing.T) {
		two := filepath.Join(dir, "two.safetensors")
		out := run1(t, "gotrain", "launch", "--standalone", "--nproc-per-node", "2", "--", filepath.Join(binDir, "csvmlp"), "train", "--data", data, "--out", two, "--threads", "1")
		d := maxDiff(t, one, two)
		t.Logf("2 processes: %s; max |Δ| against one process %.3g", strings.TrimSpace(out[strings.LastIndex(out, "\n[rank0]")+1:]), d)
		require.Less(t, d, 1e-5)
		require.Contains(t, out, "rank 0 of 2")
	})

	t.Run("checkpoint and resume", func(t *testing.T) {
		ck := filepath.Join(dir, "ckpt")
		run1(t, "csvmlp", "train", "--data", data, "--max-steps", "1500", "--checkpoint-dir", ck, "--threads", "1")
		resumed := filepath.Join(dir, "resumed.safetensors")
		out := run1(t, "csvmlp", "train", "--data", data, "--resume", ck, "--out", resumed, "--threads", "1")
		require.Equal(t, acc1, accuracy(t, out))
		require.Zero(t, maxDiff(t, one, resumed), "a resumed run must end bit for bit where a straight one does")
	})

	t.Run("gotrain eval", func(t *testing.T) {
		out := run1(t, "csvmlp", "eval", "--checkpoint", one, "--data-dir", data)
		require.Equal(t, acc1, accuracy(t, out), out)
		require.Contains(t, out, "csvmlp on csv test (12000 samples)")
	})

	t.Run("PyTorch peer", func(t *testing.T) {
		if err := exec.Command("/usr/bin/python3", "-c", "import torch, numpy").Run(); err != nil {
			t.Skip("PyTorch is not installed (/usr/bin/python3 with python3-torch and python3-numpy): the peer comparison is skipped")
		}
		peer := func(args ...string) float64 {
			out, err := exec.Command("/usr/bin/python3", append([]string{"peer_torch.py", data}, args...)...).Output()
			require.NoError(t, err)
			var r struct {
				TestAccuracy float64 `json:"test_accuracy"`
			}
			require.NoError(t, json.Unmarshal(out, &r), "%s", out)
			return 100 * r.TestAccuracy
		}
		// PyTorch loads the weights with strict=True and agrees on them.
		loaded := peer("--eval-weights", one)
		require.InDelta(t, acc1, loaded, 0.01)
		// PyTorch trains the same model with the same recipe to within
		// half a point.
		torchAcc := peer()
		t.Logf("test accuracy: gotrain %.2f%%, PyTorch %.2f%% (same model, data and recipe); PyTorch on gotrain's weights %.2f%%", acc1, torchAcc, loaded)
		require.InDelta(t, torchAcc, acc1, 0.5)
	})
}
