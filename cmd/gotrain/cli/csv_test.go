package cli

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer"
)

// writeTable writes a CSV of n rows: 8 features and a "species" column
// in [0, 5), the argmax of a fixed random linear map of the features.
func writeTable(t *testing.T, path string, n int, seed uint64) {
	t.Helper()
	const f, k = 8, 5
	rw := rand.New(rand.NewPCG(1, 99))
	w := make([]float64, k*f)
	for i := range w {
		w[i] = rw.NormFloat64()
	}
	r := rand.New(rand.NewPCG(seed, 7))
	var b strings.Builder
	b.WriteString("a,b,c,d,species,e,f,g,h\n")
	x := make([]float64, f)
	for range n {
		best, bestV := 0, -1e300
		for j := range x {
			x[j] = r.NormFloat64()
		}
		for c := range k {
			v := 0.0
			for j := range x {
				v += w[c*f+j] * x[j]
			}
			if v > bestV {
				best, bestV = c, v
			}
		}
		vals := make([]string, 0, f+1)
		for j, v := range x {
			vals = append(vals, fmt.Sprintf("%.5g", 25*v-float64(3*j)))
		}
		vals = append(vals[:4], append([]string{fmt.Sprint(best)}, vals[4:]...)...)
		b.WriteString(strings.Join(vals, ",") + "\n")
	}
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
}

// TestTrainEvalCSVEndToEnd drives the binary: 'gotrain train --dataset
// csv' learns a table, and 'gotrain eval' of its weights, with the
// dataset named or taken from the weights, prints the accuracy training
// printed; weights that do not record the standardisation are refused,
// naming the key.
func TestTrainEvalCSVEndToEnd(t *testing.T) {
	dir, out := t.TempDir(), t.TempDir()
	writeTable(t, filepath.Join(dir, "train.csv"), 2000, 1)
	writeTable(t, filepath.Join(dir, "test.csv"), 300, 2)
	weights := filepath.Join(out, "w.safetensors")
	pct, acc := trainedAccuracy(t, "train", "--dataset", "csv", "--data-dir", dir, "--label", "species",
		"--hidden", "32", "--epochs", "8", "--batch-size", "50", "--threads", "1", "--out", weights)
	require.Greater(t, acc, 60.0, "chance is 20%")
	evalPrints(t, weights, "csv", dir, "mlp on csv test (300 samples): accuracy "+pct+"%")
	refusedWithoutNorm(t, weights, out)

	// Other data under the same name: refused, unless --dataset names it.
	writeTable(t, filepath.Join(dir, "test.csv"), 300, 3)
	_, stderr, err := gotrain(t, "eval", "--checkpoint", weights)
	require.Error(t, err)
	require.Contains(t, stderr, `trained on dataset "csv:train.csv" (8 features, 5 classes, 2000 training and 300 test samples), and the test split loaded for --dataset csv is 8 features with 5 classes and 300 samples`)
	stdout, stderr, err := gotrain(t, "eval", "--checkpoint", weights, "--dataset", "csv")
	require.NoError(t, err, stderr)
	require.Contains(t, stdout, "on csv test (300 samples)")
	require.Contains(t, stderr, "note: not the data the model was trained on")
}

// trainedAccuracy runs gotrain with args (a train command) and returns the
// test accuracy it printed, as printed and as a number.
func trainedAccuracy(t *testing.T, args ...string) (string, float64) {
	t.Helper()
	stdout, stderr, err := gotrain(t, args...)
	require.NoError(t, err, stderr)
	m := regexp.MustCompile(`test accuracy (\d+\.\d\d)%`).FindStringSubmatch(stdout)
	require.NotNil(t, m, stdout)
	t.Logf("trained: %s", strings.TrimSpace(stdout))
	acc, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return m[1], acc
}

// evalPrints checks that gotrain eval of weights prints want and notes
// nothing, both with the data they record and with --dataset dataset
// --data-dir dir.
func evalPrints(t *testing.T, weights, dataset, dir, want string) {
	t.Helper()
	for _, args := range [][]string{
		{"eval", "--checkpoint", weights},
		{"eval", "--checkpoint", weights, "--dataset", dataset, "--data-dir", dir},
	} {
		stdout, stderr, err := gotrain(t, args...)
		require.NoError(t, err, stderr)
		require.Contains(t, stdout, want, args)
		require.Empty(t, stderr, "the data trained on: nothing to note")
	}
}

// refusedWithoutNorm saves weights again without the training split's
// normalisation (in dir) and checks that gotrain eval refuses them,
// naming the key.
func refusedWithoutNorm(t *testing.T, weights, dir string) {
	t.Helper()
	model, cfg, _, err := trainer.LoadModel(weights)
	require.NoError(t, err)
	plain := filepath.Join(dir, "plain.safetensors")
	require.NoError(t, trainer.SaveWeights(plain, model, cfg))
	_, stderr, err := gotrain(t, "eval", "--checkpoint", plain)
	require.Error(t, err)
	require.Contains(t, stderr, `no "data.mean" key`)
}
