package cli

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/data"
)

// TestEvalRefusesWeightsOfOtherData: weights trained on a program's own
// data (trainer.WithData) are not evaluated on the dataset their config
// names, which is other data: 'gotrain eval' refuses, naming the data,
// unless --dataset says what to evaluate on. Weights without the data's
// identity are evaluated as before.
func TestEvalRefusesWeightsOfOtherData(t *testing.T) {
	dir := t.TempDir()
	cfg := trainer.Default()
	cfg.Dataset, cfg.SyntheticSize, cfg.Hidden, cfg.Epochs, cfg.Threads = "synthetic", 300, []int{16}, 1, 1
	train := func(out string, train, test *data.Dataset) {
		t.Helper()
		c := cfg
		c.Out = out
		tr, err := trainer.New(c, trainer.WithData(train, test))
		require.NoError(t, err)
		_, err = tr.Run(context.Background())
		require.NoError(t, err)
	}
	tabular := data.Synthetic(300, 28, 28, 10, 7)
	tabular.Name = "tabular"
	own := filepath.Join(dir, "own.safetensors")
	train(own, tabular, data.Synthetic(50, 28, 28, 10, 8))
	_, stderr, err := gotrain(t, "eval", "--checkpoint", own)
	require.Error(t, err)
	require.Contains(t, stderr, `trained on dataset "tabular" (28x28, 10 classes, 300 training and 50 test samples), which its program supplied`)
	out, stderr, err := gotrain(t, "eval", "--checkpoint", own, "--dataset", "synthetic")
	require.NoError(t, err, stderr)
	require.Contains(t, out, "on synthetic test")

	// Named synthetic, but not the synthetic data of its config.
	other := filepath.Join(dir, "other.safetensors")
	train(other, data.Synthetic(300, 28, 28, 10, 99), data.Synthetic(50, 28, 28, 10, 100))
	_, stderr, err = gotrain(t, "eval", "--checkpoint", other)
	require.Error(t, err)
	require.Contains(t, stderr, `trained on dataset "synthetic" (28x28, 10 classes, 300 training and 50 test samples), and the test split loaded for --dataset synthetic is 28x28 with 10 classes and 50 samples`)

	// The data its config names: evaluated.
	same, test := filepath.Join(dir, "same.safetensors"), data.Synthetic(50, 28, 28, 10, cfg.Seed+1)
	train(same, data.Synthetic(300, 28, 28, 10, cfg.Seed), test)
	out, stderr, err = gotrain(t, "eval", "--checkpoint", same)
	require.NoError(t, err, stderr)
	require.Contains(t, out, "on synthetic test (50 samples)")

	// Without the identity (trainer.SaveWeights, older files): as before.
	m, stored, _, err := trainer.LoadModel(own)
	require.NoError(t, err)
	plain := filepath.Join(dir, "plain.safetensors")
	require.NoError(t, trainer.SaveWeights(plain, m, stored))
	_, stderr, err = gotrain(t, "eval", "--checkpoint", plain)
	require.NoError(t, err, stderr)
}
