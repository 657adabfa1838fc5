package trainer

import (
	"context"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
)

// folderDir writes learnable data (trainer_test.go's: 28×28 gray images
// of 10 classes) as the image folders train (nTrain images) and test
// (nTest) of a new directory, and returns the directory and the two
// datasets written.
func folderDir(t *testing.T, nTrain, nTest int) (dir string, train, test *data.Dataset) {
	t.Helper()
	dir = t.TempDir()
	train, test = learnable(nTrain, 1), learnable(nTest, 2)
	require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "train"), train))
	require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "test"), test))
	return dir, train, test
}

func folderConfig(t *testing.T, dir string) Config {
	cfg := Default()
	cfg.Dataset, cfg.DataDir = "folder", dir
	cfg.Hidden = []int{32}
	cfg.BatchSize = 50
	cfg.Epochs = 2
	cfg.LogEvery = 0
	cfg.Threads = 1
	cfg.DataWorkers = 2
	cfg.CheckpointDir = filepath.Join(t.TempDir(), "ckpt")
	return cfg
}

// TestTrainsOnFolder: the trainer reads image folders (--dataset folder),
// builds the model for their [C H W] and class count, learns them well
// above chance; the weights record the folder's class names and per
// channel normalisation, and evaluate the same from what they record.
// A colour folder gives the model three input channels.
func TestTrainsOnFolder(t *testing.T) {
	dir, _, _ := folderDir(t, 600, 150)
	cfg := folderConfig(t, dir)
	cfg.Out = filepath.Join(t.TempDir(), "w.safetensors")
	tr, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	require.Equal(t, []int{1, 28, 28}, tr.Model.Spec.Input())
	require.Equal(t, 10, tr.Model.Spec.Classes)
	res, err := tr.Run(context.Background())
	require.NoError(t, err)
	t.Logf("test accuracy %.3f, loss %.3f", res.TestAccuracy, res.TestLoss)
	require.Greater(t, res.TestAccuracy, 0.8, "chance is 1/10")

	m, stored, _, err := LoadModel(cfg.Out)
	require.NoError(t, err)
	require.Equal(t, 10, m.Spec.Classes)
	id, ok, err := TrainedOn(cfg.Out)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "folder:train", id.Name)
	require.Equal(t, []int{10, 600, 150}, []int{id.Classes, id.TrainSamples, id.TestSamples})
	f, err := checkpoint.ReadFile(cfg.Out)
	require.NoError(t, err)
	require.Equal(t, "0,1,2,3,4,5,6,7,8,9", f.Metadata["data.class_names"])
	require.NotContains(t, f.Metadata["data.mean"], ",", "one channel: one mean")
	test, err := LoadTestSource(stored, cfg.Out)
	require.NoError(t, err)
	require.NoError(t, CheckTestSource(id, stored, test))
	acc, loss, err := EvaluateSource(m, test, 128)
	require.NoError(t, err)
	require.Equal(t, res.TestAccuracy, acc)
	require.InDelta(t, res.TestLoss, loss, 1e-6)

	// Colour images: three channels, each standardised.
	rgb := t.TempDir()
	for _, split := range []string{"train", "test"} {
		for c, name := range []string{"cat", "dog"} {
			sub := filepath.Join(rgb, split, name)
			require.NoError(t, os.MkdirAll(sub, 0o755))
			for i := range 4 {
				img := image.NewNRGBA(image.Rect(0, 0, 6, 5))
				for p := range img.Pix {
					img.Pix[p] = byte(37*p + 11*i + 101*c)
				}
				fh, err := os.Create(filepath.Join(sub, fmt.Sprintf("%d.png", i)))
				require.NoError(t, err)
				require.NoError(t, png.Encode(fh, img))
				require.NoError(t, fh.Close())
			}
		}
	}
	cfg = folderConfig(t, rgb)
	cfg.BatchSize, cfg.Epochs, cfg.CheckpointDir = 4, 1, ""
	tr, err = New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	require.Equal(t, []int{3, 5, 6}, tr.Model.Spec.Input())
	require.Equal(t, 2, tr.Model.Spec.Classes)
	require.Len(t, strings.Split(tr.train.Meta()["data.std"], ","), 3)
	require.Equal(t, tr.train.Meta()["data.mean"], tr.test.Meta()["data.mean"], "the test split takes the training split's constants")
}

// TestFolderResumeIsExact: an augmented folder run stopped and resumed
// from its checkpoint ends with the weights of the run straight through,
// bit for bit; augmentation changes what is learnt.
func TestFolderResumeIsExact(t *testing.T) {
	dir, _, _ := folderDir(t, 400, 100)
	plain, err := New(folderConfig(t, dir), WithLogger(quiet))
	require.NoError(t, err)
	_, err = plain.Run(context.Background())
	require.NoError(t, err)
	cfg := folderConfig(t, dir)
	cfg.Augment = true
	// Step 11 is in the second epoch (8 batches an epoch).
	straight := resumedEqualsStraight(t, cfg, 11, "data.mean", "data.std", "data.class_names", metaData)
	require.NotEqual(t, params(plain), params(straight), "--augment crops and flips")
}

// TestFolderRefusesOtherClasses: a test folder whose classes are not the
// training folder's is refused naming both folders, when training and
// when evaluating weights that record other class names; weights without
// the recorded normalisation are refused naming the key.
func TestFolderRefusesOtherClasses(t *testing.T) {
	dir, _, _ := folderDir(t, 200, 60)
	cfg := folderConfig(t, dir)
	cfg.Epochs, cfg.CheckpointDir = 1, ""
	cfg.Out = filepath.Join(t.TempDir(), "w.safetensors")
	tr, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	_, err = tr.Run(context.Background())
	require.NoError(t, err)

	plain := filepath.Join(t.TempDir(), "plain.safetensors")
	require.NoError(t, SaveWeights(plain, tr.Model, cfg))
	_, err = LoadTestSource(cfg, plain)
	require.ErrorIs(t, err, ErrCheckpoint)
	require.ErrorContains(t, err, `no "data.mean" key`)

	require.NoError(t, os.Rename(filepath.Join(dir, "test", "9"), filepath.Join(dir, "test", "nine")))
	_, _, err = LoadSources(cfg)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "the class folders of "+filepath.Join(dir, "test")+" (0,1,2,3,4,5,6,7, ... (10 in all)) are not those of "+filepath.Join(dir, "train"))
	require.ErrorContains(t, err, `class 9 is "nine" here and "9" there`)
	_, err = LoadTestSource(cfg, cfg.Out)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "are not those the model was trained on (0,1,2,3,4,5,6,7, ... (10 in all), recorded in "+cfg.Out)
	require.ErrorContains(t, err, `class 9 is "nine" here and "9" there`)

	_, err = New(folderConfig(t, t.TempDir()), WithLogger(quiet))
	require.ErrorIs(t, err, data.ErrImage, "an empty --data-dir")
	noDir := folderConfig(t, "")
	_, _, err = LoadSources(noDir)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "--data-dir DIR")
}

// TestFolderConfigLimits: --pad, --data-workers and --augment are
// validated.
func TestFolderConfigLimits(t *testing.T) {
	for _, tc := range []struct {
		set  func(*Config)
		want string
	}{
		{func(c *Config) { c.Pad = -1 }, "--pad -1 must be from 0 to 1024"},
		{func(c *Config) { c.Pad = MaxPad + 1 }, "--pad 1025 must be from 0 to 1024"},
		{func(c *Config) { c.DataWorkers = -1 }, "--data-workers -1 must be from 0"},
		{func(c *Config) { c.DataWorkers = MaxThreads() + 1 }, "--data-workers"},
		{func(c *Config) { c.Augment, c.Dataset, c.Label = true, "csv", "y" }, "--dataset csv holds none"},
		{func(c *Config) { c.Mean, c.Std, c.Dataset, c.Label = []float32{0.5}, []float32{0.2}, "csv", "y" }, "--dataset csv standardises its columns"},
		{func(c *Config) { c.Mean = []float32{0.5} }, "--mean has 1 values and --std 0"},
		{func(c *Config) { c.Mean, c.Std = []float32{0.5, 0.4}, []float32{0.2} }, "--mean has 2 values and --std 1"},
		{func(c *Config) { c.Mean, c.Std = []float32{0.5, 0.4}, []float32{0.2, 0} }, "channel 1 has mean 0.4 and deviation 0: every mean must be finite"},
		{func(c *Config) { c.Mean, c.Std = []float32{float32(math.NaN())}, []float32{0.2} }, "channel 0"},
		{func(c *Config) { c.Mean, c.Std = make([]float32, 4), make([]float32, 4) }, "--mean and --std have 4 and 4 values: images have at most 3 channels"},
		{func(c *Config) { c.Mean, c.Std = []float32{0}, []float32{float32(math.Inf(1))} }, "channel 0"},
	} {
		cfg := folderConfig(t, t.TempDir())
		tc.set(&cfg)
		err := cfg.Validate()
		require.ErrorIs(t, err, ErrConfig, tc.want)
		require.ErrorContains(t, err, tc.want)
	}
	cfg := folderConfig(t, t.TempDir())
	cfg.Augment, cfg.Pad, cfg.DataWorkers = true, MaxPad, MaxThreads()
	cfg.Mean, cfg.Std = []float32{0.49, 0.48, -2}, []float32{0.25, 0.24, 3}
	require.NoError(t, cfg.Validate())

	// The folder's channels decide how many constants it takes.
	dir, _, _ := folderDir(t, 200, 60)
	cfg = folderConfig(t, dir)
	cfg.Mean, cfg.Std = []float32{0.5, 0.5, 0.5}, []float32{0.2, 0.2, 0.2}
	_, _, err := LoadSources(cfg)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "3 means and 3 deviations for 1 channels")
	cfg.Mean, cfg.Std = []float32{0.5}, []float32{0.25}
	tr, te, err := LoadSources(cfg)
	require.NoError(t, err)
	for _, s := range []data.Source{tr, te} {
		f := s.(*data.Folder)
		require.Equal(t, []float32{0.5}, f.Mean)
		require.Equal(t, []float32{0.25}, f.Std)
	}
}

// normSource is a Dataset standardised by the given constants as a
// data.Folder standardises its pixels: the reference the folder is
// checked against.
type normSource struct {
	d         *data.Dataset
	mean, std float32
}

func (s normSource) Len() int { return s.d.N }
func (s normSource) Input() data.Field {
	return data.Field{Name: "image", Kind: data.Float, Shape: []int{1, s.d.Rows, s.d.Cols}}
}
func (s normSource) Target() data.Field {
	return data.Field{Name: "class", Kind: data.ClassIndex, Classes: s.d.Classes}
}
func (s normSource) Meta() map[string]string { return map[string]string{"data.name": "reference"} }
func (s normSource) Fill(x, y []float32, idx []int, _ uint64, _ int) error {
	f := s.d.Rows * s.d.Cols
	for k, i := range idx {
		y[k] = float32(s.d.Labels[i])
		for j, p := range s.d.Pix[i*f : (i+1)*f] {
			x[k*f+j] = float32((float64(p)/255 - float64(s.mean)) / float64(s.std))
		}
	}
	return nil
}

// byClass is d's samples in the order an image folder written by
// data.WriteImageFolder holds them: by class, then by index.
func byClass(d *data.Dataset) *data.Dataset {
	order := make([]int, d.N)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return int(d.Labels[a]) - int(d.Labels[b]) })
	f := d.Rows * d.Cols
	out := *d
	out.Pix, out.Labels = make([]byte, 0, len(d.Pix)), make([]byte, 0, d.N)
	for _, i := range order {
		out.Pix = append(out.Pix, d.Pix[i*f:(i+1)*f]...)
		out.Labels = append(out.Labels, d.Labels[i])
	}
	return &out
}

// TestFolderIsTheDataset: a folder written from a slice of a dataset and
// read without augmentation trains exactly as the same samples given
// with WithSource (in the folder's order, standardised by the folder's
// constants): the same weights and the same accuracy.
// TestIDXInFolderOrderIsTheFolder compares through the IDX loader.
func TestFolderIsTheDataset(t *testing.T) {
	trainD, testD := mnistOrLearnable(t, 400, 100)
	dir := t.TempDir()
	require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "train"), trainD))
	require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "test"), testD))

	cfg := folderConfig(t, dir)
	cfg.CheckpointDir = ""
	fromFolder, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	folderRes, err := fromFolder.Run(context.Background())
	require.NoError(t, err)
	ftr := fromFolder.train.(*data.Folder)

	ref, err := New(cfg, WithLogger(quiet), WithSource(
		normSource{byClass(trainD), ftr.Mean[0], ftr.Std[0]},
		normSource{byClass(testD), ftr.Mean[0], ftr.Std[0]}))
	require.NoError(t, err)
	refRes, err := ref.Run(context.Background())
	require.NoError(t, err)
	t.Logf("folder %.4f, dataset %.4f", folderRes.TestAccuracy, refRes.TestAccuracy)
	require.Equal(t, refRes.TestAccuracy, folderRes.TestAccuracy)
	require.Equal(t, params(ref), params(fromFolder))
}

// TestIDXInFolderOrderIsTheFolder: the IDX files of a dataset, written in
// its image folder's order and normalised by the folder's constants
// (--mean, --std), train with --augment exactly as the folder does: the
// same crops and flips for the same index, the same weights, the same
// accuracy, through the command line's loaders. With the IDX dataset's own
// constants the runs part (the constants matter), and the test split is
// evaluated with the recorded constants.
func TestIDXInFolderOrderIsTheFolder(t *testing.T) {
	trainD, testD := mnistOrLearnable(t, 300, 100)
	dir, idxDir := t.TempDir(), t.TempDir()
	require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "train"), trainD))
	require.NoError(t, data.WriteImageFolder(filepath.Join(dir, "test"), testD))
	writeIDX(t, idxDir, "train", byClass(trainD))
	writeIDX(t, idxDir, "t10k", testD)

	cfg := folderConfig(t, dir)
	cfg.Augment, cfg.Epochs = true, 1
	fromFolder, err := New(cfg, WithLogger(quiet))
	require.NoError(t, err)
	folderRes, err := fromFolder.Run(context.Background())
	require.NoError(t, err)
	ftr := fromFolder.train.(*data.Folder)

	out := filepath.Join(t.TempDir(), "idx.safetensors")
	run := func(mean, std []float32) (*Trainer, Result) {
		c := folderConfig(t, idxDir)
		c.Dataset, c.Augment, c.Epochs, c.Out = "mnist", true, 1, out
		c.Mean, c.Std = mean, std
		require.NoError(t, c.Validate())
		tr, err := New(c, WithLogger(quiet))
		require.NoError(t, err)
		res, err := tr.Run(context.Background())
		require.NoError(t, err)
		return tr, res
	}
	fromIDX, idxRes := run(ftr.Mean, ftr.Std)
	t.Logf("folder %.4f, IDX in folder order %.4f (mean %v, std %v)", folderRes.TestAccuracy, idxRes.TestAccuracy, ftr.Mean, ftr.Std)
	require.Equal(t, folderRes.TestAccuracy, idxRes.TestAccuracy)
	require.True(t, slices.EqualFunc(params(fromFolder), params(fromIDX), slices.Equal), "the folder and the IDX files trained other weights")

	// The weights record the constants, and evaluate with them.
	_, stored, _, err := LoadModel(out)
	require.NoError(t, err)
	test, err := LoadTestSource(stored, out)
	require.NoError(t, err)
	x, y := make([]float32, 2*784), make([]float32, 2)
	require.NoError(t, test.Fill(x, y, []int{0, 1}, 0, 0))
	want := make([]float32, 2*784)
	require.NoError(t, normSource{testD, ftr.Mean[0], ftr.Std[0]}.Fill(want, y, []int{0, 1}, 0, 0))
	require.Equal(t, want, x)

	builtin, _ := run(nil, nil)
	require.False(t, slices.EqualFunc(params(fromFolder), params(builtin), slices.Equal), "mnist's own constants should train other weights")

	// Constants for channels the images do not have are refused.
	c := folderConfig(t, idxDir)
	c.Dataset, c.Mean, c.Std = "mnist", []float32{0.5, 0.5, 0.5}, []float32{0.2, 0.2, 0.2}
	_, err = New(c, WithLogger(quiet))
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "1 channel")
}

// mnistOrLearnable is the first nTrain and nTest images of MNIST's
// splits, or learnable data where MNIST is not installed.
func mnistOrLearnable(t *testing.T, nTrain, nTest int) (train, test *data.Dataset) {
	train, test = learnable(nTrain, 3), learnable(nTest, 4)
	d, err := data.Load("mnist", "", "train")
	if err != nil {
		t.Logf("mnist is not installed (%v): the learnable synthetic data stands in", err)
		return train, test
	}
	if e, err := data.Load("mnist", "", "test"); err == nil {
		train, test = d.Slice(0, nTrain), e.Slice(0, nTest)
	}
	return train, test
}

// writeIDX writes d as the IDX files prefix-images-idx3-ubyte and
// prefix-labels-idx1-ubyte of dir.
func writeIDX(t *testing.T, dir, prefix string, d *data.Dataset) {
	t.Helper()
	be := func(v ...uint32) []byte {
		var b []byte
		for _, x := range v {
			b = append(b, byte(x>>24), byte(x>>16), byte(x>>8), byte(x))
		}
		return b
	}
	img := append(be(0x803, uint32(d.N), uint32(d.Rows), uint32(d.Cols)), d.Pix...)
	lbl := append(be(0x801, uint32(d.N)), d.Labels...)
	require.NoError(t, os.WriteFile(filepath.Join(dir, prefix+"-images-idx3-ubyte"), img, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, prefix+"-labels-idx1-ubyte"), lbl, 0o644))
}
