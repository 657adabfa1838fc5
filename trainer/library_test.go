package trainer

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/metrics"
)

// TestNewRefusesDataItCannotUse: what WithData is given is checked by New,
// with an error naming what is wrong, instead of a panic in Run (a nil
// test set; one of another shape, after a whole epoch) or a failure
// inside the model (labels beyond its outputs).
func TestNewRefusesDataItCannotUse(t *testing.T) {
	badLabel := learnable(100, 3)
	badLabel.Labels[7] = 10 // Classes is 10
	short := learnable(100, 4)
	short.Pix = short.Pix[:len(short.Pix)-1]
	twelve := data.Synthetic(100, 28, 28, 12, 5)
	for _, tc := range []struct {
		name        string
		train, test *data.Dataset
		want        string
	}{
		{"nil test set", learnable(100, 1), nil, "WithData: the test set is nil"},
		{"nil training set", nil, learnable(100, 1), "WithData: the training set is nil"},
		{"empty training set", learnable(100, 1).Slice(0, 0), learnable(100, 2), "has no samples"},
		{"test set of another shape", learnable(100, 1), data.Synthetic(50, 14, 14, 10, 2),
			"the test set synthetic is 14x14 with 10 classes, the training set synthetic 28x28 with 10 classes: they must agree"},
		{"test set with other classes", learnable(100, 1), data.Synthetic(50, 28, 28, 3, 2), "they must agree"},
		{"label beyond the classes", badLabel, learnable(50, 2), "label 7 of 100 is 10, but there are only 10 classes"},
		{"short pixels", short, learnable(50, 2), "len(Pix)=78399"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := smallConfig(t)
			cfg.CheckpointDir = ""
			require.NotPanics(t, func() {
				_, err := New(cfg, WithData(tc.train, tc.test), WithLogger(quiet))
				require.ErrorIs(t, err, ErrConfig)
				require.ErrorContains(t, err, tc.want)
			})
		})
	}
	// More classes than the model's outputs: the model takes the data's
	// class count unless the config sets one (Config.Classes).
	cfg := smallConfig(t)
	cfg.CheckpointDir, cfg.Classes = "", 10
	_, err := New(cfg, WithData(twelve, data.Synthetic(50, 28, 28, 12, 6)), WithLogger(quiet))
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "dataset synthetic has 12 classes, model mlp has 10 outputs: its labels must be below 10")
	// Fewer classes than the model's outputs are fine.
	cfg = smallConfig(t)
	cfg.CheckpointDir, cfg.Epochs = "", 1
	_, err = New(cfg, WithData(data.Synthetic(100, 28, 28, 4, 1), data.Synthetic(50, 28, 28, 4, 2)), WithLogger(quiet))
	require.NoError(t, err)
}

// countRecords counts the JSON lines of a metrics file by their "kind".
func countRecords(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	n := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec struct {
			Kind string `json:"kind"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		n[rec.Kind]++
	}
	return n
}

// TestNewWritesTheMetricsFile: Config.MetricsFile is written by the
// trainer itself (a library user needs no sink of their own), closed when
// Run returns, appended to on resume, and written once when a sink given
// with WithSink writes it already.
func TestNewWritesTheMetricsFile(t *testing.T) {
	cfg := smallConfig(t)
	cfg.MetricsFile = filepath.Join(t.TempDir(), "m.jsonl")
	cfg.MaxSteps = 10
	tr := newTrainer(t, cfg)
	_, ok, _ := tr.MetricsFile()
	require.True(t, ok)
	_, err := tr.Run(context.Background())
	require.NoError(t, err)
	st, ok, err := tr.MetricsFile()
	require.True(t, ok)
	require.NoError(t, err)
	require.Zero(t, st.Failures)
	want := map[string]int{"train": 2, "eval": 1, "summary": 1} // steps 5 and 10
	require.Equal(t, want, countRecords(t, cfg.MetricsFile))

	// Resumed: the records of the rest of the run are appended.
	cfg.MaxSteps, cfg.Resume = 15, cfg.CheckpointDir
	_, err = newTrainer(t, cfg).Run(context.Background())
	require.NoError(t, err)
	require.Equal(t, map[string]int{"train": 3, "eval": 2, "summary": 2}, countRecords(t, cfg.MetricsFile))

	// A sink of the caller's that writes the file: one writer, no duplicates.
	cfg = smallConfig(t)
	cfg.MetricsFile = filepath.Join(t.TempDir(), "m.jsonl")
	cfg.MaxSteps = 10
	own, err := metrics.CreateJSONL(cfg.MetricsFile)
	require.NoError(t, err)
	tr = newTrainer(t, cfg, WithSink(metrics.Multi(&recorder{}, own)))
	_, ok, _ = tr.MetricsFile()
	require.False(t, ok, "the caller's sink writes the file")
	_, err = tr.Run(context.Background())
	require.NoError(t, err)
	require.NoError(t, own.Close())
	require.Equal(t, want, countRecords(t, cfg.MetricsFile))
}

// TestWeightsSayWhatDataTheyWereTrainedOn: a trainer's checkpoints and
// weights store the identity of its data; CheckTestData refuses a test
// split that is not that data's, naming it, and files without the
// identity (SaveWeights, older files) have none to check.
func TestWeightsSayWhatDataTheyWereTrainedOn(t *testing.T) {
	cfg := smallConfig(t)
	cfg.Epochs, cfg.SyntheticSize = 1, 930
	cfg.Out = filepath.Join(t.TempDir(), "w.safetensors")
	planted := learnable(930, 1)
	planted.Name = "planted"
	tr, err := New(cfg, WithData(planted, learnable(200, 2)), WithLogger(quiet))
	require.NoError(t, err)
	_, err = tr.Run(context.Background())
	require.NoError(t, err)
	for _, path := range []string{cfg.Out, tr.lastCkpt} {
		id, ok, err := TrainedOn(path)
		require.NoError(t, err)
		require.True(t, ok, path)
		require.Equal(t, "planted", id.Name)
		require.Equal(t, []int{28, 28, 10, 930, 200}, []int{id.Rows, id.Cols, id.Classes, id.TrainSamples, id.TestSamples})
		_, stored, _, err := LoadModel(path)
		require.NoError(t, err)
		err = CheckTestData(id, stored, nil)
		require.ErrorIs(t, err, ErrOtherData)
		require.ErrorContains(t, err, `trained on dataset "planted" (28x28, 10 classes, 930 training and 200 test samples)`)
	}

	// Named like a built-in dataset, but other data: the test split
	// that dataset loads is refused by its content.
	tr, err = New(cfg, WithData(learnable(930, 1), learnable(200, 2)), WithLogger(quiet))
	require.NoError(t, err)
	_, err = tr.Run(context.Background())
	require.NoError(t, err)
	id, ok, err := TrainedOn(cfg.Out)
	require.NoError(t, err)
	require.True(t, ok)
	m, stored, _, err := LoadModel(cfg.Out)
	require.NoError(t, err)
	require.NoError(t, CheckTestData(id, stored, nil), "the name is synthetic")
	_, test, err := LoadData(stored)
	require.NoError(t, err)
	require.ErrorIs(t, CheckTestData(id, stored, test), ErrOtherData)
	require.NoError(t, CheckTestData(id, stored, learnable(200, 2)), "the data trained on")

	// The data the config names, loaded by New: what eval loads matches.
	tr, err = New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	_, err = tr.Run(context.Background())
	require.NoError(t, err)
	id, ok, err = TrainedOn(cfg.Out)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, CheckTestData(id, stored, test))

	// SaveWeights stores no identity: nothing to check, as before.
	plain := filepath.Join(t.TempDir(), "plain.safetensors")
	require.NoError(t, SaveWeights(plain, m, stored))
	_, ok, err = TrainedOn(plain)
	require.NoError(t, err)
	require.False(t, ok)
}

// TestOldConfigMetadataLoads: the config stored in checkpoints has its
// durations in nanoseconds (json.Marshal of a time.Duration), as older
// files do; a duration string loads too.
func TestOldConfigMetadataLoads(t *testing.T) {
	cfg := smallConfig(t)
	m := newTrainer(t, cfg)
	for _, raw := range []string{
		`{"model":"mlp","hidden":[32],"activation":"relu","dataset":"synthetic","synthetic_size":930,"epochs":2,"batch_size":50,"eval_batch_size":250,"optimizer":"adam","lr":0.002,"seed":1,"timeout":600000000000}`,
		`{"model":"mlp","hidden":[32],"activation":"relu","dataset":"synthetic","synthetic_size":930,"epochs":2,"batch_size":50,"eval_batch_size":250,"optimizer":"adam","lr":0.002,"seed":1,"timeout":"10m","rdzv_timeout":"1m"}`,
	} {
		path := filepath.Join(t.TempDir(), "old.safetensors")
		require.NoError(t, checkpoint.WriteFileAtomic(path, &checkpoint.File{
			Tensors: weightTensors(m.Model), Metadata: map[string]string{metaConfig: raw}}))
		_, got, _, err := LoadModel(path)
		require.NoError(t, err, raw)
		require.Equal(t, 10*time.Minute, got.Timeout)
	}
	b, err := json.Marshal(Default())
	require.NoError(t, err)
	require.Contains(t, string(b), `"timeout":600000000000`, "checkpoints keep nanoseconds, which older gotrains read")
}
