package cli

import (
	"os"
	"path/filepath"
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
	pct, acc := trainedAccuracy(t, "train", "--dataset", "folder", "--data-dir", dir, "--model", "cnn",
		"--max-steps", "60", "--augment", "--batch-size", "64", "--threads", "2", "--data-workers", "2", "--out", weights)
	require.Greater(t, acc, 40.0, "chance is 10%")
	evalPrints(t, weights, "folder", dir, "cnn on folder test (500 samples): accuracy "+pct+"%")
	_, cfg, _, err := trainer.LoadModel(weights)
	require.NoError(t, err)
	require.True(t, cfg.Augment)
	refusedWithoutNorm(t, weights, out)

	// A test folder of other classes.
	require.NoError(t, os.Rename(filepath.Join(dir, "test", "9"), filepath.Join(dir, "test", "nine")))
	_, stderr, err := gotrain(t, "eval", "--checkpoint", weights, "--dataset", "folder")
	require.Error(t, err)
	require.Contains(t, stderr, `are not those the model was trained on`)
	require.Contains(t, stderr, `class 9 is "nine" here and "9" there`)
}
