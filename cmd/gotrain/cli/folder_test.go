package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/data"
)

// imageFolders writes the first nTrain training and nTest test images of
// Fashion-MNIST (or MNIST) as the PNG class folders train and test of a
// new directory, and returns it and the dataset's name; it skips the test
// when neither dataset is installed.
func imageFolders(t *testing.T, nTrain, nTest int) (dir, name string) {
	t.Helper()
	var errs []string
	for _, name := range []string{"fashion-mnist", "mnist"} {
		train, err := data.Load(name, "", "train")
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		test, err := data.Load(name, "", "test")
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		dir = t.TempDir()
		require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "train"), train.Slice(0, nTrain)))
		require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "test"), test.Slice(0, nTest)))
		return dir, name
	}
	t.Skipf("neither Fashion-MNIST nor MNIST is installed (make data installs MNIST), so image folders were not trained on: %s", strings.Join(errs, "; "))
	return "", ""
}

// TestTrainEvalFolderEndToEnd drives the binary: 'gotrain train
// --dataset folder --augment' learns PNG class folders written from
// Fashion-MNIST, and 'gotrain eval' of its weights, with the dataset
// named or taken from the weights, prints the accuracy training printed;
// weights that do not record the normalisation, and a test folder of
// other classes, are refused, naming what differs.
func TestTrainEvalFolderEndToEnd(t *testing.T) {
	dir, name := imageFolders(t, 2000, 500)
	t.Logf("image folders of %s", name)
	out := t.TempDir()
	weights := filepath.Join(out, "w.safetensors")
	stdout, stderr, err := gotrain(t, "train", "--dataset", "folder", "--data-dir", dir, "--model", "cnn",
		"--max-steps", "60", "--augment", "--batch-size", "64", "--threads", "2", "--data-workers", "2", "--out", weights)
	require.NoError(t, err, stderr)
	m := regexp.MustCompile(`test accuracy (\d+\.\d\d)%`).FindStringSubmatch(stdout)
	require.NotNil(t, m, stdout)
	t.Logf("trained: %s", strings.TrimSpace(stdout))
	acc, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	require.Greater(t, acc, 40.0, "chance is 10%")

	for _, args := range [][]string{
		{"eval", "--checkpoint", weights},
		{"eval", "--checkpoint", weights, "--dataset", "folder", "--data-dir", dir},
	} {
		stdout, stderr, err := gotrain(t, args...)
		require.NoError(t, err, stderr)
		require.Contains(t, stdout, "cnn on folder test (500 samples): accuracy "+m[1]+"%", args)
		require.Empty(t, stderr, "the data trained on: nothing to note")
	}

	// Weights without the training split's normalisation.
	model, cfg, _, err := trainer.LoadModel(weights)
	require.NoError(t, err)
	require.True(t, cfg.Augment)
	plain := filepath.Join(out, "plain.safetensors")
	require.NoError(t, trainer.SaveWeights(plain, model, cfg))
	_, stderr, err = gotrain(t, "eval", "--checkpoint", plain)
	require.Error(t, err)
	require.Contains(t, stderr, `no "data.mean" key`)

	// A test folder of other classes.
	require.NoError(t, os.Rename(filepath.Join(dir, "test", "9"), filepath.Join(dir, "test", "nine")))
	_, stderr, err = gotrain(t, "eval", "--checkpoint", weights, "--dataset", "folder")
	require.Error(t, err)
	require.Contains(t, stderr, `are not those the model was trained on`)
	require.Contains(t, stderr, `class 9 is "nine" here and "9" there`)
}
