package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/cmd/examples/internal/extest"
	"github.com/gotrain/gotrain/trainer/checkpoint"
)

// The example as a user runs it: its own binary, gotrain's launcher,
// its checkpoints, gotrain eval (through the binary, which has the model
// registered), and the PyTorch peer on the same files.
func TestMain(m *testing.M) { extest.Main(m, "csvmlp") }

func TestExample(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	extest.Run(t, "csvmlp", "gendata", data)
	one := filepath.Join(dir, "one.safetensors")
	out := extest.Run(t, "csvmlp", "train", "--data", data, "--out", one, "--threads", "1")
	acc1 := extest.Accuracy(t, out)
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
		out := extest.Run(t, "gotrain", "launch", "--standalone", "--nproc-per-node", "2", "--", extest.Path("csvmlp"), "train", "--data", data, "--out", two, "--threads", "1")
		d := extest.MaxDiff(t, one, two)
		t.Logf("2 processes: %s; max |Δ| against one process %.3g", strings.TrimSpace(out[strings.LastIndex(out, "\n[rank0]")+1:]), d)
		require.Less(t, d, 1e-5)
		require.Contains(t, out, "rank 0 of 2")
	})

	t.Run("checkpoint and resume", func(t *testing.T) {
		ck := filepath.Join(dir, "ckpt")
		extest.Run(t, "csvmlp", "train", "--data", data, "--max-steps", "1500", "--checkpoint-dir", ck, "--threads", "1")
		resumed := filepath.Join(dir, "resumed.safetensors")
		out := extest.Run(t, "csvmlp", "train", "--data", data, "--resume", ck, "--out", resumed, "--threads", "1")
		require.Equal(t, acc1, extest.Accuracy(t, out))
		require.Zero(t, extest.MaxDiff(t, one, resumed), "a resumed run must end bit for bit where a straight one does")
	})

	t.Run("gotrain eval", func(t *testing.T) {
		out := extest.Run(t, "csvmlp", "eval", "--checkpoint", one, "--data-dir", data)
		require.Equal(t, acc1, extest.Accuracy(t, out), out)
		require.Contains(t, out, "csvmlp on csv test (12000 samples)")
		// gotrain itself has no csvmlp: it says which program to ask.
		plain, err := exec.Command(extest.Path("gotrain"), "eval", "--checkpoint", one, "--data-dir", data).CombinedOutput()
		require.Error(t, err)
		require.Contains(t, string(plain), `holds a "csvmlp" model, which this program does not have (it has cnn, mlp, resnet)`)
	})

	t.Run("PyTorch peer", func(t *testing.T) {
		if err := exec.Command("/usr/bin/python3", "-c", "import torch, numpy").Run(); err != nil {
			t.Skip("PyTorch is not installed (/usr/bin/python3 with python3-torch and python3-numpy): the peer comparison is skipped")
		}
		peer := func(args ...string) float64 {
			cmd := exec.Command("/usr/bin/python3", append([]string{"peer_torch.py", data}, args...)...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			require.NoError(t, err, "peer_torch.py %s:\n%s", strings.Join(args, " "), stderr.String())
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
