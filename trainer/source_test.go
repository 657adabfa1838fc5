package trainer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
)

// writeCSV writes n rows of f gaussian features (scaled and shifted, so
// that standardisation matters) and a label column "label" in the
// middle: the class is the argmax of a fixed random linear map of the
// features (the map of mapSeed, the rows of seed), which a model can
// learn.
func writeCSV(t *testing.T, path string, n, f, k int, mapSeed, seed uint64) {
	t.Helper()
	rw := rand.New(rand.NewPCG(mapSeed, 99))
	w := make([]float64, k*f)
	for i := range w {
		w[i] = rw.NormFloat64()
	}
	r := rand.New(rand.NewPCG(seed, 7))
	var b strings.Builder
	cols := make([]string, 0, f+1)
	for j := range f {
		cols = append(cols, fmt.Sprintf("x%d", j))
	}
	mid := f / 2
	cols = append(cols[:mid], append([]string{"label"}, cols[mid:]...)...)
	b.WriteString(strings.Join(cols, ",") + "\n")
	x := make([]float64, f)
	for range n {
		for j := range x {
			x[j] = r.NormFloat64()
		}
		best, bestV := 0, -1e300
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
			vals = append(vals, fmt.Sprintf("%.5g", 40*v+float64(10*j)))
		}
		vals = append(vals[:mid], append([]string{fmt.Sprint(best)}, vals[mid:]...)...)
		b.WriteString(strings.Join(vals, ",") + "\n")
	}
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
}

// csvDir writes train.csv (4000 rows) and test.csv (400 rows) of 20
// features and 12 classes into a new directory.
func csvDir(t *testing.T) string {
	dir := t.TempDir()
	writeCSV(t, filepath.Join(dir, "train.csv"), 4000, 20, 12, 1, 1)
	writeCSV(t, filepath.Join(dir, "test.csv"), 400, 20, 12, 1, 2)
	return dir
}

func csvConfig(t *testing.T, dir string) Config {
	cfg := Default()
	cfg.Dataset, cfg.DataDir = "csv", dir
	cfg.Hidden = []int{64}
	cfg.BatchSize = 50
	cfg.Epochs = 10
	cfg.LogEvery = 0
	cfg.Threads = 1
	cfg.CheckpointDir = filepath.Join(t.TempDir(), "ckpt")
	return cfg
}

// TestTrainsOnCSV: the trainer reads a CSV table (--dataset csv), builds
// the model for its 20 features and 12 classes, and learns it well above
// chance (1/12); the weights record the shape, the standardisation and
// the data's identity, and evaluate the same from what they record.
func TestTrainsOnCSV(t *testing.T) {
	dir := csvDir(t)
	cfg := csvConfig(t, dir)
	cfg.Out = filepath.Join(t.TempDir(), "w.safetensors")
	tr, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	require.Equal(t, 20, tr.Model.InputSize())
	require.Equal(t, []int{1, 1, 20}, tr.Model.Spec.Input())
	require.Equal(t, 12, tr.Model.Spec.Classes)
	res, err := tr.Run(context.Background())
	require.NoError(t, err)
	t.Logf("test accuracy %.3f, loss %.3f", res.TestAccuracy, res.TestLoss)
	require.Greater(t, res.TestAccuracy, 0.75, "chance is 1/12")

	// The weights rebuild the model of 20 inputs and 12 outputs, and
	// evaluate on test.csv standardised by the recorded constants.
	m, stored, _, err := LoadModel(cfg.Out)
	require.NoError(t, err)
	require.Equal(t, 20, m.InputSize())
	require.Equal(t, 12, m.Spec.Classes)
	id, ok, err := TrainedOn(cfg.Out)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "csv:train.csv", id.Name)
	require.Equal(t, []int{20}, id.Shape)
	require.Equal(t, []int{12, 4000, 400}, []int{id.Classes, id.TrainSamples, id.TestSamples})
	require.Contains(t, id.String(), "20 features, 12 classes")
	test, err := LoadTestSource(stored, cfg.Out)
	require.NoError(t, err)
	require.NoError(t, CheckTestSource(id, stored, test))
	acc, loss, err := EvaluateSource(m, test, 128)
	require.NoError(t, err)
	require.Equal(t, res.TestAccuracy, acc)
	require.InDelta(t, res.TestLoss, loss, 1e-6)

	// Other rows under the same name: refused by their checksum.
	writeCSV(t, filepath.Join(dir, "test.csv"), 400, 20, 12, 1, 3)
	other, err := LoadTestSource(stored, cfg.Out)
	require.NoError(t, err)
	require.ErrorIs(t, CheckTestSource(id, stored, other), ErrOtherData)

	// --classes gives the model more outputs than the data has classes.
	cfg.Classes, cfg.Out, cfg.CheckpointDir = 15, "", ""
	tr, err = New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	require.Equal(t, 15, tr.Model.Spec.Classes)
}

// TestCSVResumeIsExact: a CSV run stopped and resumed from its checkpoint
// ends with the weights of the run straight through, bit for bit.
func TestCSVResumeIsExact(t *testing.T) {
	cfg := csvConfig(t, csvDir(t))
	cfg.Epochs, cfg.Dropout = 2, 0.2
	// Step 101 is in the second epoch (80 batches an epoch).
	resumedEqualsStraight(t, cfg, 101, "data.mean", "data.std", "data.columns", metaData, metaModelShape)
}

// resumedEqualsStraight runs cfg straight through, then again stopped
// after step stop and resumed from the checkpoint written there (which
// must record the metadata keys), and requires the resumed run to end
// bit for bit where the straight one did. It returns the straight run.
func resumedEqualsStraight(t *testing.T, cfg Config, stop int64, keys ...string) *Trainer {
	t.Helper()
	run := func(cfg Config) *Trainer {
		t.Helper()
		tr, err := New(cfg, WithLogger(quiet))
		require.NoError(t, err)
		_, err = tr.Run(context.Background())
		require.NoError(t, err)
		return tr
	}
	straightCfg := cfg
	straightCfg.CheckpointDir = filepath.Join(t.TempDir(), "straight")
	straight := run(straightCfg)

	cfg.CheckpointDir = filepath.Join(t.TempDir(), "stopped")
	cfg.MaxSteps = stop
	first := run(cfg)
	require.NotEqual(t, params(straight), params(first))
	latest, err := checkpoint.Latest(cfg.CheckpointDir)
	require.NoError(t, err)
	require.Equal(t, checkpoint.FileName(stop), filepath.Base(latest))
	f, err := checkpoint.ReadFile(latest)
	require.NoError(t, err)
	for _, k := range keys {
		require.Contains(t, f.Metadata, k, "the checkpoint records the data")
	}

	cfg.MaxSteps, cfg.Resume = 0, cfg.CheckpointDir
	second, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	require.Equal(t, stop, second.Step())
	_, err = second.Run(context.Background())
	require.NoError(t, err)
	require.Zero(t, maxAbsDiff(params(straight), params(second)), "max |Δ| of the resumed run's weights")
	require.Equal(t, params(straight), params(second))
	return straight
}

// fieldSource is a source with other fields than the one it wraps says.
type fieldSource struct {
	data.Source
	in, target *data.Field
	n          *int
}

func (s fieldSource) Input() data.Field {
	if s.in != nil {
		return *s.in
	}
	return s.Source.Input()
}

func (s fieldSource) Target() data.Field {
	if s.target != nil {
		return *s.target
	}
	return s.Source.Target()
}

func (s fieldSource) Len() int {
	if s.n != nil {
		return *s.n
	}
	return s.Source.Len()
}

// TestNewRefusesSourcesItCannotUse: every source or model that cannot be
// trained is a configuration error, said before any work.
func TestNewRefusesSourcesItCannotUse(t *testing.T) {
	dir := csvDir(t)
	train, test, err := LoadSources(csvConfig(t, dir))
	require.NoError(t, err)
	writeCSV(t, filepath.Join(dir, "narrow.csv"), 50, 19, 12, 1, 4)
	narrow, err := data.LoadCSV(filepath.Join(dir, "narrow.csv"), data.CSVOptions{Label: "label", Classes: 12})
	require.NoError(t, err)
	writeCSV(t, filepath.Join(dir, "few.csv"), 50, 20, 3, 1, 4)
	fewClasses, err := data.LoadCSV(filepath.Join(dir, "few.csv"), data.CSVOptions{Label: "label", Classes: 3})
	require.NoError(t, err)
	zero := 0
	float := data.Field{Name: "score", Kind: data.Float}
	image4 := data.Field{Name: "volume", Kind: data.Float, Shape: []int{1, 2, 2, 5}}
	model := func(spec graph.Spec) *graph.Model {
		m, err := graph.New(spec, 1)
		require.NoError(t, err)
		return m
	}
	for _, tc := range []struct {
		name        string
		train, test data.Source
		model       *graph.Model // WithModel, when set
		classes     int          // Config.Classes
		want        string
	}{
		{"nil training set", nil, test, nil, 0, "WithSource: the training set is nil"},
		{"nil test set", train, nil, nil, 0, "WithSource: the test set is nil"},
		{"empty training set", fieldSource{Source: train, n: &zero}, test, nil, 0, "WithSource: the training set csv:train.csv has no samples"},
		{"empty test set", train, fieldSource{Source: test, n: &zero}, nil, 0, "the test set csv:test.csv has no samples"},
		{"target not a class", fieldSource{Source: train, target: &float}, test, nil, 0,
			`the training set csv:train.csv's target "score" is float of shape []: the trainer learns classification, one class index per sample`},
		{"test set of other features", train, narrow, nil, 0,
			"the test set csv:narrow.csv is 19 features with 12 classes, the training set csv:train.csv 20 features with 12 classes: they must agree"},
		{"test set of other classes", train, fewClasses, nil, 0, "csv:few.csv is 20 features with 3 classes"},
		{"input of four dimensions", fieldSource{Source: train, in: &image4}, fieldSource{Source: test, in: &image4}, nil, 0,
			"a model takes [C H W], [H W] or [F] per sample"},
		{"model of another input size", train, test, model(graph.Spec{Kind: "mlp", Hidden: []int{8}, Classes: 12}), 0,
			"dataset csv:train.csv's inputs are 20 features (20 values), model mlp takes 784 (28x28)"},
		{"model with fewer outputs", train, test, model(graph.Spec{Kind: "mlp", Hidden: []int{8}, InH: 1, InW: 20, Classes: 5}), 0,
			"dataset csv:train.csv has 12 classes, model mlp has 5 outputs: its labels must be below 5"},
		{"config with fewer classes", train, test, nil, 5, "dataset csv:train.csv has 12 classes, model mlp has 5 outputs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := csvConfig(t, dir)
			cfg.CheckpointDir, cfg.Classes = "", tc.classes
			opts := []Option{WithSource(tc.train, tc.test), WithLogger(quiet)}
			if tc.model != nil {
				opts = append(opts, WithModel(tc.model))
			}
			require.NotPanics(t, func() {
				_, err := New(cfg, opts...)
				require.ErrorIs(t, err, ErrConfig)
				require.ErrorContains(t, err, tc.want)
			})
		})
	}
	cfg := csvConfig(t, dir)
	cfg.CheckpointDir = ""
	_, err = New(cfg, WithSource(train, test), WithModel(nil), WithLogger(quiet))
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "WithModel: the model is nil")

	// A model of the right shape, given: trained as it is.
	m := model(graph.Spec{Kind: "mlp", Hidden: []int{8}, InH: 4, InW: 5, Classes: 12})
	cfg.Epochs, cfg.MaxSteps = 1, 3
	tr, err := New(cfg, WithSource(train, test), WithModel(m), WithLogger(quiet))
	require.NoError(t, err)
	require.Same(t, m, tr.Model)
	_, err = tr.Run(context.Background())
	require.NoError(t, err)

	// --dataset csv without --data-dir, and the columns of test.csv
	// other than train.csv's.
	cfg = csvConfig(t, "")
	_, _, err = LoadSources(cfg)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "--dataset csv reads train.csv and test.csv from --data-dir DIR")
	require.NoError(t, os.Rename(filepath.Join(dir, "narrow.csv"), filepath.Join(dir, "test.csv")))
	_, _, err = LoadSources(csvConfig(t, dir))
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "are not those of train.csv")
}

// TestEvalRefusesCSVWithoutNormalisation: weights that do not record the
// standardisation of their training split (SaveWeights; a table that was
// not standardised) cannot evaluate a CSV test split as they were
// trained: LoadTestSource says which key is missing.
func TestEvalRefusesCSVWithoutNormalisation(t *testing.T) {
	dir := csvDir(t)
	cfg := csvConfig(t, dir)
	cfg.Epochs, cfg.CheckpointDir = 1, ""
	cfg.Out = filepath.Join(t.TempDir(), "w.safetensors")
	tr, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	plain := filepath.Join(t.TempDir(), "plain.safetensors")
	require.NoError(t, SaveWeights(plain, tr.Model, cfg))
	_, stored, _, err := LoadModel(plain)
	require.NoError(t, err, "the shape is recorded by SaveWeights too")
	_, err = LoadTestSource(stored, plain)
	require.ErrorIs(t, err, ErrCheckpoint)
	require.ErrorIs(t, err, data.ErrNoNorm)
	require.ErrorContains(t, err, `no "data.mean" key`)
}

// TestFillDoesNotAllocate: the loop's batches are filled into buffers
// that are kept (the program's, or scratch for the side a pipeline stage
// does not want), from an image dataset and from a table alike.
func TestFillDoesNotAllocate(t *testing.T) {
	dir := csvDir(t)
	cfg := csvConfig(t, dir)
	cfg.CheckpointDir = ""
	tables, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	images := newTrainer(t, smallConfig(t))
	for _, tr := range []*Trainer{images, tables} {
		prog, err := tr.Model.Program(50, true)
		require.NoError(t, err)
		idx := make([]int, 50)
		for i := range idx {
			idx[i] = 3 * i
		}
		for _, f := range []func() error{
			func() error { return tr.fillTrain(prog.X, prog.Y, idx, 1) },
			func() error { return tr.fillTrain(prog.X, nil, idx, 1) },
			func() error { return tr.fillTrain(nil, prog.Y, idx, 1) },
			func() error { return tr.fillTest(prog.X, nil, idx) },
		} {
			require.NoError(t, f())
			require.Zero(t, testing.AllocsPerRun(20, func() { _ = f() }), tr.dataName)
		}
	}
}
