package trainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gotrain/gotrain/gpu"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/metrics"
	"github.com/gotrain/gotrain/trainer/optim"
)

// ErrNonFinite is returned when the loss or a gradient becomes NaN or Inf.
// The parameters are left as they were before that step and the last good
// checkpoint is kept.
var ErrNonFinite = errors.New("training diverged")

// Progress is what the loop reports after every step, for a progress bar.
type Progress struct {
	Epoch, Epochs int   // 1-based epoch and the total
	Done, Total   int64 // samples done in this epoch and per epoch
	Loss          float64
	SamplesPerSec float64
}

// Result is what a finished run measured.
type Result struct {
	TestAccuracy, TestLoss   float64
	Steps                    int64
	TrainSamplesPerSec       float64
	RankComputeSamplesPerSec []float64 // see metrics.Summary
	WallSeconds              float64
	PeakRSSBytes             int64
	DataWaitFraction         float64 // see metrics.Summary
	Checkpoint               string  // the last checkpoint written, if any
}

// Trainer runs the training loop of one Config. Its clock, data, metrics
// sink and logger are injected (options), so tests can drive it exactly.
type Trainer struct {
	cfg         Config
	Model       *graph.Model
	opt         optim.Optimizer
	train, test data.Source
	sink        metrics.Sink
	progress    func(Progress)
	log         *slog.Logger
	now         func() time.Time
	ckpt        *checkpoint.Manager

	pos         position
	resumedFrom string
	// resumeShares: the balancer's shares of the batch in the checkpoint
	// resumed from (rank 0 reads them; syncStart gives them to every rank)
	resumeShares []float64
	lastCkpt     string
	savedStep    int64 // step of lastCkpt
	perm         []int
	comm         dist.Communicator // WithCommunicator; nil: one process
	exec         executor          // where the model trains (newExecutor)
	strat        strategy          // how this rank takes part (newStrategy)
	devices      func() []metrics.GPU
	headroom     func() gpu.Headroom
	slow         *straggler // --debug-slow-rank, made at first use
	// this rank's computation over the run (forward and backward, with
	// --debug-slow-rank's sleeps; first runs of programs left out):
	// seconds and samples
	computeSecs, computeSamples float64
	// dataWait is the time the steps waited for their batches (filled on
	// the CPU, or a device's prefetcher catching up).
	dataWait           time.Duration
	devr               *devRun // WithDevice's device executor; nil: the CPU
	async              *AsyncTransport
	dataOpt            string       // the option that gave the data (WithData, WithSource); "": New loads cfg.Dataset
	model              *graph.Model // given with WithModel
	modelGiven         bool
	inSize             int                    // input values per sample
	dataName           string                 // the training data's name (its Meta's data.name)
	dataMeta           map[string]string      // what checkpoints and weights record of the data and the model's shape
	scratchX, scratchY []float32              // fill: the side of a batch its caller does not want
	jsonl              *metrics.JSONL         // Config.MetricsFile, opened by New (rank 0)
	jsonlErr           error                  // closing it
	resumedOuter       *outerOpt              // the outer optimiser of the checkpoint resumed from (local SGD)
	localStates        []map[string][]float32 // resumed local SGD: ranks' optimiser states (rank 0)
}

// Option configures a Trainer.
type Option func(*Trainer)

// WithSink sends metrics records to s.
func WithSink(s metrics.Sink) Option { return func(t *Trainer) { t.sink = s } }

// WithProgress calls f after every training step.
func WithProgress(f func(Progress)) Option { return func(t *Trainer) { t.progress = f } }

// WithDeviceStats makes every train record carry f's device statistics
// (the latest NVML sample; see gpu.Sampler).
func WithDeviceStats(f func() []metrics.GPU) Option { return func(t *Trainer) { t.devices = f } }

// WithHeadroom tells the load balancer about the device this rank trains
// on: f is called at every re-plan (and, for a device with a clock, after
// every step) and its free memory bounds the rank's share, its clock
// corrects the measured speed and its slowdown reasons make a re-plan take
// the new speeds whole (see balance.Measurement). Without it the balancer
// uses the measured speeds alone.
func WithHeadroom(f func() gpu.Headroom) Option { return func(t *Trainer) { t.headroom = f } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(t *Trainer) { t.log = l } }

// WithClock sets the clock used for throughput and timing.
func WithClock(now func() time.Time) Option { return func(t *Trainer) { t.now = now } }

// WithData supplies image datasets instead of loading cfg.Dataset: it is
// WithSource(train.AsSource(), test.AsSource()), and New also refuses a
// set that data.Dataset.Validate refuses.
func WithData(train, test *data.Dataset) Option {
	return func(t *Trainer) { t.train, t.test, t.dataOpt = asSource(train), asSource(test), "WithData" }
}

func asSource(d *data.Dataset) data.Source {
	if d == nil {
		return nil
	}
	return d.AsSource()
}

// WithSource supplies the training and test data instead of loading
// cfg.Dataset. New refuses, with ErrConfig, a nil or empty source, a
// target that is not a class index (data.ClassIndex, one per sample), a
// test source whose fields differ from the training source's, and data
// the model cannot take (see WithModel). Without WithModel the model
// built from cfg takes its input shape and class count from train.
func WithSource(train, test data.Source) Option {
	return func(t *Trainer) { t.train, t.test, t.dataOpt = train, test, "WithSource" }
}

// WithModel trains m instead of the model cfg.Model names (cfg's model
// settings are then unused). Its input size must be the data's and it
// must have an output for every class of the data. Checkpoints and
// weights record cfg, so 'gotrain eval' and LoadModel rebuild the model
// cfg names: give m's settings in cfg too for them to load it.
func WithModel(m *graph.Model) Option {
	return func(t *Trainer) { t.model, t.modelGiven = m, true }
}

// checkSources refuses data the run cannot use, before any work: what
// would otherwise fail in Run or inside the model after an epoch.
func (t *Trainer) checkSources() error {
	prefix := ""
	if t.dataOpt != "" {
		prefix = t.dataOpt + ": "
	}
	for _, s := range []struct {
		what string
		s    data.Source
	}{{"training", t.train}, {"test", t.test}} {
		if s.s == nil {
			return fmt.Errorf("%w: %sthe %s set is nil; give both a training and a test set", ErrConfig, prefix, s.what)
		}
		if s.s.Len() <= 0 {
			return fmt.Errorf("%w: %sthe %s set %s has no samples", ErrConfig, prefix, s.what, sourceName(s.s))
		}
		if v, ok := s.s.(interface{ Validate() error }); ok {
			if err := v.Validate(); err != nil {
				return fmt.Errorf("%w: %sthe %s set: %w", ErrConfig, prefix, s.what, err)
			}
		}
	}
	trName, teName := sourceName(t.train), sourceName(t.test)
	in, target := t.train.Input(), t.train.Target()
	if in.Kind != data.Float || in.Size() <= 0 || slices.ContainsFunc(in.Shape, func(d int) bool { return d <= 0 }) {
		return fmt.Errorf("%w: %sthe training set %s's input %q is %s of shape %v: a model takes float values, at least one per sample",
			ErrConfig, prefix, trName, in.Name, in.Kind, in.Shape)
	}
	if target.Kind != data.ClassIndex || target.Size() != 1 {
		return fmt.Errorf("%w: %sthe training set %s's target %q is %s of shape %v: the trainer learns classification, one class index per sample (data.ClassIndex)",
			ErrConfig, prefix, trName, target.Name, target.Kind, target.Shape)
	}
	if target.Classes < 1 || target.Classes > MaxClasses {
		return fmt.Errorf("%w: %sthe training set %s has %d classes; a model has from 1 to %d outputs", ErrConfig, prefix, trName, target.Classes, MaxClasses)
	}
	tin, ttarget := t.test.Input(), t.test.Target()
	if tin.Kind != in.Kind || !slices.Equal(tin.Shape, in.Shape) || ttarget.Kind != target.Kind || !slices.Equal(ttarget.Shape, target.Shape) || ttarget.Classes != target.Classes {
		return fmt.Errorf("%w: %sthe test set %s is %s with %d classes, the training set %s %s with %d classes: they must agree",
			ErrConfig, prefix, teName, shapeText(tin.Shape), ttarget.Classes, trName, shapeText(in.Shape), target.Classes)
	}
	return nil
}

// checkModel refuses a model that cannot take the training data.
func (t *Trainer) checkModel(m *graph.Model) error {
	if m == nil {
		return fmt.Errorf("%w: WithModel: the model is nil", ErrConfig)
	}
	in, target := t.train.Input(), t.train.Target()
	if got, want := in.Size(), m.InputSize(); got != want {
		return fmt.Errorf("%w: dataset %s's inputs are %s (%d values), model %s takes %d (%s)",
			ErrConfig, t.dataName, shapeText(in.Shape), got, m.Spec.Kind, want, shapeText(m.Spec.Input()))
	}
	if target.Classes > m.Spec.Classes {
		return fmt.Errorf("%w: dataset %s has %d classes, model %s has %d outputs: its labels must be below %d",
			ErrConfig, t.dataName, target.Classes, m.Spec.Kind, m.Spec.Classes, m.Spec.Classes)
	}
	return nil
}

// modelSpec is cfg's model for data of the given input and target: the
// input shape ([C H W], [H W] as 1×H×W, [F] as 1×1×F) and, unless
// cfg.Classes sets it, the class count come from the data.
func modelSpec(cfg Config, in, target data.Field) (graph.Spec, error) {
	spec := cfg.ModelSpec()
	switch sh := in.Shape; len(sh) {
	case 0:
		spec.InC, spec.InH, spec.InW = 1, 1, 1
	case 1:
		spec.InC, spec.InH, spec.InW = 1, 1, sh[0]
	case 2:
		spec.InC, spec.InH, spec.InW = 1, sh[0], sh[1]
	case 3:
		spec.InC, spec.InH, spec.InW = sh[0], sh[1], sh[2]
	default:
		return spec, fmt.Errorf("%w: the training data's input %q is of shape %v: a model takes [C H W], [H W] or [F] per sample", ErrConfig, in.Name, in.Shape)
	}
	if spec.Classes == 0 {
		spec.Classes = target.Classes
	}
	return spec, nil
}

// sourceName is a source's name: its Meta's "data.name".
func sourceName(s data.Source) string {
	if n := s.Meta()["data.name"]; n != "" {
		return n
	}
	return "(unnamed)"
}

// shapeText writes a sample's shape for messages: 28x28 for a
// one-channel image [1 28 28], "20 features" for [20].
func shapeText(shape []int) string {
	if len(shape) == 3 && shape[0] == 1 {
		shape = shape[1:]
	}
	switch len(shape) {
	case 0:
		return "1 value"
	case 1:
		return fmt.Sprintf("%d features", shape[0])
	}
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.Itoa(d)
	}
	return strings.Join(parts, "x")
}

// New prepares a run: it validates cfg, loads the data, builds the model
// and optimiser and, with cfg.Resume, restores a checkpoint.
func New(cfg Config, opts ...Option) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Trainer{cfg: cfg, log: slog.Default(), now: time.Now}
	for _, o := range opts {
		o(t)
	}
	if t.sink == nil {
		t.sink = metrics.Multi()
	}
	if err := Preflight(cfg, PreflightEnv{Rank: t.rank(), DataLoaded: t.train != nil}); err != nil {
		return nil, err
	}
	if t.dataOpt == "" {
		var err error
		if t.train, t.test, err = LoadSources(cfg); err != nil {
			return nil, err
		}
	}
	if err := t.checkSources(); err != nil {
		return nil, err
	}
	t.dataName = sourceName(t.train)
	m := t.model
	if !t.modelGiven {
		spec, err := modelSpec(cfg, t.train.Input(), t.train.Target())
		if err != nil {
			return nil, err
		}
		if m, err = graph.New(spec, cfg.Seed); err != nil {
			return nil, fmt.Errorf("%w: model %s for %s inputs and %d classes: %w", ErrConfig, cfg.Model, shapeText(t.train.Input().Shape), spec.Classes, err)
		}
	}
	if err := t.checkModel(m); err != nil {
		return nil, err
	}
	t.inSize = m.InputSize()
	t.Model = m
	var err error
	if t.dataMeta, err = t.dataMetadata(); err != nil {
		return nil, err
	}
	if t.opt, err = newOptimizer(cfg, m); err != nil {
		return nil, err
	}
	if cfg.Resume != "" && t.rank() == 0 {
		// Other ranks receive rank 0's state when the run starts.
		if err := t.restore(cfg.Resume); err != nil {
			return nil, err
		}
		t.log.Info("resumed", "checkpoint", t.resumedFrom, "epoch", t.pos.epoch+1, "step", t.pos.step)
	}
	if cfg.CheckpointDir != "" && t.rank() == 0 {
		if t.ckpt, err = checkpoint.Open(cfg.CheckpointDir, cfg.KeepCheckpoints); err != nil {
			return nil, err
		}
	}
	if err := t.openMetricsFile(); err != nil {
		return nil, err
	}
	return t, nil
}

// openMetricsFile opens Config.MetricsFile on rank 0 (appending when the
// run resumes) and adds it to the sinks, unless a sink given with WithSink
// writes that file already. Run closes it.
func (t *Trainer) openMetricsFile() error {
	path := t.cfg.MetricsFile
	if path == "" || t.rank() != 0 {
		return nil
	}
	for _, s := range metrics.Sinks(t.sink) {
		if j, ok := s.(*metrics.JSONL); ok && sameFile(j.Path(), path) {
			return nil
		}
	}
	j, err := metrics.OpenJSONL(path, t.cfg.Resume != "")
	if err != nil {
		return err
	}
	// A write that fails (a full disk) is said when it happens; the
	// records wait and are written when the file takes them again.
	j.OnError(func(err error, pending int) {
		if err != nil {
			t.log.Warn("--metrics-file cannot be written; training goes on and the records are kept to write later", "file", path, "err", err, "waiting", pending)
		} else {
			t.log.Info("--metrics-file is writable again; the waiting records were written", "file", path)
		}
	})
	t.jsonl = j
	t.sink = metrics.Multi(t.sink, j)
	return nil
}

// sameFile reports whether paths a and b name the same file.
func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(fa, fb)
	}
	absA, errA := filepath.Abs(a)
	absB, errB := filepath.Abs(b)
	return errA == nil && errB == nil && absA == absB
}

// closeMetricsFile writes what waits for the metrics file New opened and
// closes it; MetricsFile reports the outcome.
func (t *Trainer) closeMetricsFile() {
	if t.jsonl != nil && t.jsonlErr == nil {
		t.jsonlErr = t.jsonl.Close()
	}
}

// MetricsFile says, once Run has returned, how writing Config.MetricsFile
// went: its write statistics (failures, records written late or lost) and
// the error of closing it (nil when every record was written). ok is
// false when this trainer wrote no metrics file: none configured, a rank
// other than 0, or a sink given with WithSink that writes the file itself.
func (t *Trainer) MetricsFile() (stats metrics.WriteStats, ok bool, err error) {
	if t.jsonl == nil {
		return metrics.WriteStats{}, false, nil
	}
	return t.jsonl.Stats(), true, t.jsonlErr
}

// LoadData loads the train and test splits of cfg.Dataset, one of the
// image datasets (mnist, fashion-mnist, synthetic); LoadSources loads
// every dataset.
func LoadData(cfg Config) (train, test *data.Dataset, err error) {
	if train, err = loadImages(cfg, "train"); err != nil {
		return nil, nil, err
	}
	if test, err = loadImages(cfg, "test"); err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

// loadImages loads one split of an image dataset.
func loadImages(cfg Config, split string) (*data.Dataset, error) {
	switch cfg.Dataset {
	case "synthetic":
		n := cfg.SyntheticSize
		if split == "test" {
			return data.Synthetic(max(n/6, 1), 28, 28, 10, cfg.Seed+1), nil
		}
		return data.Synthetic(n, 28, 28, 10, cfg.Seed), nil
	case "csv":
		return nil, fmt.Errorf("%w: --dataset csv is a table, not images: load it with LoadSources", ErrConfig)
	case "folder":
		return nil, fmt.Errorf("%w: --dataset folder is read as a source, not an IDX dataset: load it with LoadSources", ErrConfig)
	}
	d, err := data.Load(cfg.Dataset, cfg.DataDir, split)
	if err != nil {
		return nil, err
	}
	if err := setNorm(d, cfg.Mean, cfg.Std); err != nil {
		return nil, err
	}
	return d, nil
}

// setNorm gives an image dataset the normalisation of --mean and --std,
// if they are given: one value each, for its one channel.
func setNorm(d *data.Dataset, mean, std []float32) error {
	if mean == nil && std == nil {
		return nil
	}
	if len(mean) != 1 || len(std) != 1 {
		return fmt.Errorf("%w: --mean %v --std %v: the images of %s have 1 channel: give one value each", ErrConfig, mean, std, d.Name)
	}
	if err := d.SetNorm(mean[0], std[0]); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// The files of --dataset csv, in --data-dir.
const (
	csvTrainFile = "train.csv"
	csvTestFile  = "test.csv"
)

// The splits of --dataset folder, in --data-dir.
const (
	folderTrain = "train"
	folderTest  = "test"
)

// LoadSources loads the training and test splits of cfg.Dataset. The
// image datasets are LoadData's; "csv" is the tables train.csv and
// test.csv of cfg.DataDir (data.LoadCSV): the column cfg.Label holds the
// class, every other column is a float feature, the class count is
// cfg.Classes or else one more than train.csv's largest label, and the
// features are standardised by the training split's per-feature mean and
// deviation, the test split's by the same constants. "folder" is the
// image folders train and test of cfg.DataDir (data.LoadImageFolder),
// standardised per channel likewise. cfg.Mean and cfg.Std, if given,
// replace an image dataset's constants and a folder's statistics. The
// training split of the image datasets and folders is augmented
// (cfg.Augment, cfg.Pad: the same crop and flip for the same index), and
// the folders must have the same classes.
func LoadSources(cfg Config) (train, test data.Source, err error) {
	if cfg.Dataset == "folder" {
		tr, te, err := loadFolders(cfg)
		if err != nil {
			return nil, nil, err
		}
		return tr, te, nil
	}
	if cfg.Dataset != "csv" {
		tr, te, err := LoadData(cfg)
		if err != nil {
			return nil, nil, err
		}
		if cfg.Augment {
			return tr.AsAugmentedSource(cfg.Pad), te.AsSource(), nil
		}
		return tr.AsSource(), te.AsSource(), nil
	}
	if cfg.DataDir == "" {
		return nil, nil, fmt.Errorf("%w: --dataset csv reads %s and %s from --data-dir DIR: give it", ErrConfig, csvTrainFile, csvTestFile)
	}
	o := data.CSVOptions{Label: cfg.Label, Classes: cfg.Classes}
	tr, err := data.LoadCSV(filepath.Join(cfg.DataDir, csvTrainFile), o)
	if err != nil {
		return nil, nil, err
	}
	tr.Standardize()
	o.Classes = tr.Classes
	te, err := data.LoadCSV(filepath.Join(cfg.DataDir, csvTestFile), o)
	if err != nil {
		return nil, nil, err
	}
	if !slices.Equal(te.Columns, tr.Columns) {
		return nil, nil, fmt.Errorf("%w: the feature columns of %s (%s) are not those of %s (%s): they must be the same, in the same order",
			ErrConfig, filepath.Join(cfg.DataDir, csvTestFile), columnList(te.Columns), csvTrainFile, columnList(tr.Columns))
	}
	if err := te.SetNorm(tr.Mean, tr.Std); err != nil {
		return nil, nil, err
	}
	return tr, te, nil
}

// loadFolders loads the image folders of --dataset folder: DIR/train,
// augmented when cfg.Augment is set and standardised per channel (or
// normalised by cfg.Mean and cfg.Std), and DIR/test, normalised by the
// same constants, with the same class names in the same order.
func loadFolders(cfg Config) (train, test *data.Folder, err error) {
	if cfg.DataDir == "" {
		return nil, nil, fmt.Errorf("%w: --dataset folder reads the image folders %s and %s (one folder of images per class) from --data-dir DIR: give it", ErrConfig, folderTrain, folderTest)
	}
	trDir, teDir := filepath.Join(cfg.DataDir, folderTrain), filepath.Join(cfg.DataDir, folderTest)
	train, err = data.LoadImageFolder(trDir, data.FolderOptions{Augment: cfg.Augment, Pad: cfg.Pad, Workers: cfg.DataWorkers})
	if err != nil {
		return nil, nil, err
	}
	if cfg.Augment {
		train.Pad = cfg.Pad // LoadImageFolder takes 0 for its default of 4; --pad 0 flips only
	}
	if cfg.Mean != nil || cfg.Std != nil {
		if err := train.SetNorm(cfg.Mean, cfg.Std); err != nil {
			return nil, nil, fmt.Errorf("%w: --mean %v --std %v: %w", ErrConfig, cfg.Mean, cfg.Std, err)
		}
	} else {
		train.Standardize()
	}
	test, err = data.LoadImageFolder(teDir, data.FolderOptions{Workers: cfg.DataWorkers})
	if err != nil {
		return nil, nil, err
	}
	if !slices.Equal(test.Classes, train.Classes) {
		return nil, nil, fmt.Errorf("%w: the class folders of %s (%s) are not those of %s (%s): they must be the same, in the same order (%s)",
			ErrConfig, teDir, columnList(test.Classes), trDir, columnList(train.Classes), classDiff(test.Classes, train.Classes))
	}
	if err := test.SetNorm(train.Mean, train.Std); err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

// classDiff says where the class names got differ from want's: the
// first position where they differ, or which list is shorter.
func classDiff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("class %d is %s here and %s there", i, strconv.Quote(got[i]), strconv.Quote(want[i]))
		}
	}
	return fmt.Sprintf("%d classes here and %d there", len(got), len(want))
}

// columnList names a table's columns in a message, the first few of many.
func columnList(cols []string) string {
	if len(cols) > 8 {
		return fmt.Sprintf("%s, ... (%d in all)", strings.Join(cols[:8], ","), len(cols))
	}
	return strings.Join(cols, ",")
}

// trainName is the name the training split of cfg.Dataset has when
// LoadSources loads it: the dataset's name, csv:train.csv or
// folder:train.
func trainName(cfg Config) string {
	switch cfg.Dataset {
	case "csv":
		return "csv:" + csvTrainFile
	case "folder":
		return "folder:" + folderTrain
	}
	return cfg.Dataset
}

// LoadTestSource loads the test split of cfg.Dataset to evaluate the
// weights saved at path (a checkpoint or weights file, whose metadata it
// reads): that of LoadSources (an image dataset normalised by the
// config's --mean and --std, which the file records), and for "csv"
// test.csv of cfg.DataDir standardised by the constants the file records
// of the training split
// (data.NormFromMeta); for "folder" likewise the image folder test of
// cfg.DataDir, normalised per channel by the recorded constants. A file
// that records none is refused (ErrCheckpoint), naming the missing key;
// other columns or class names, with ErrConfig.
func LoadTestSource(cfg Config, path string) (data.Source, error) {
	if cfg.Dataset == "folder" {
		return loadTestFolder(cfg, path)
	}
	if cfg.Dataset != "csv" {
		test, err := loadImages(cfg, "test")
		if err != nil {
			return nil, err
		}
		return test.AsSource(), nil
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: --dataset csv reads %s from --data-dir DIR: give it", ErrConfig, csvTestFile)
	}
	f, err := checkpoint.ReadFile(path)
	if err != nil {
		return nil, err
	}
	md := f.Metadata
	mean, std, err := data.NormFromMeta(md)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w: the standardisation of the training split is not recorded, so %s cannot be standardised as the model was trained; evaluate weights saved by a trainer that read CSV (gotrain train --dataset csv)",
			ErrCheckpoint, path, err, csvTestFile)
	}
	o := data.CSVOptions{Label: cfg.Label, Classes: cfg.Classes}
	if n, err := strconv.Atoi(md["data.classes"]); err == nil && n > 0 && n <= MaxClasses {
		o.Classes = n
	}
	test, err := data.LoadCSV(filepath.Join(cfg.DataDir, csvTestFile), o)
	if err != nil {
		return nil, err
	}
	if cols, ok := md["data.columns"]; ok && cols != strings.Join(test.Columns, ",") {
		return nil, fmt.Errorf("%w: the feature columns of %s (%s) are not those the model was trained on (%s, recorded in %s)",
			ErrConfig, filepath.Join(cfg.DataDir, csvTestFile), columnList(test.Columns), columnList(strings.Split(cols, ",")), path)
	}
	if err := test.SetNorm(mean, std); err != nil {
		return nil, fmt.Errorf("%w: %s: data.mean and data.std: %w", ErrCheckpoint, path, err)
	}
	return test, nil
}

// loadTestFolder is LoadTestSource of --dataset folder.
func loadTestFolder(cfg Config, path string) (data.Source, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: --dataset folder reads the image folder %s from --data-dir DIR: give it", ErrConfig, folderTest)
	}
	f, err := checkpoint.ReadFile(path)
	if err != nil {
		return nil, err
	}
	md := f.Metadata
	dir := filepath.Join(cfg.DataDir, folderTest)
	mean, std, err := data.NormFromMeta(md)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w: the normalisation of the training split is not recorded, so %s cannot be normalised as the model was trained; evaluate weights saved by a trainer that read the folder (gotrain train --dataset folder)",
			ErrCheckpoint, path, err, dir)
	}
	names, ok := md["data.class_names"]
	if !ok {
		return nil, fmt.Errorf("%w: %s: no %q key: the class folders the model was trained on are not recorded, so the labels of %s cannot be matched to its outputs",
			ErrCheckpoint, path, "data.class_names", dir)
	}
	test, err := data.LoadImageFolder(dir, data.FolderOptions{Workers: cfg.DataWorkers})
	if err != nil {
		return nil, err
	}
	if names != strings.Join(test.Classes, ",") {
		trained := strings.Split(names, ",")
		return nil, fmt.Errorf("%w: the class folders of %s (%s) are not those the model was trained on (%s, recorded in %s; %s)",
			ErrConfig, dir, columnList(test.Classes), columnList(trained), path, classDiff(test.Classes, trained))
	}
	if err := test.SetNorm(mean, std); err != nil {
		return nil, fmt.Errorf("%w: %s: data.mean and data.std: %w", ErrCheckpoint, path, err)
	}
	return test, nil
}

func newOptimizer(cfg Config, m *graph.Model) (optim.Optimizer, error) {
	ps := make([]optim.Param, len(m.Params))
	for i, p := range m.Params {
		ps[i] = optim.Param{Name: p.Name, Data: p.Data, Grad: make([]float32, len(p.Data)), Buffer: p.Buffer}
	}
	o, err := optim.New(cfg.optimizer(), ps)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return o, nil
}

func (t *Trainer) batchesPerEpoch() int {
	return (t.train.Len() + t.cfg.BatchSize - 1) / t.cfg.BatchSize
}

// TotalSteps is the number of optimiser steps of the whole run (the
// schedule's horizon), whatever MaxSteps stops it at.
func (t *Trainer) TotalSteps() int64 { return int64(t.cfg.Epochs) * int64(t.batchesPerEpoch()) }

// Step is the number of optimiser steps done.
func (t *Trainer) Step() int64 { return t.pos.step }

// Run trains until cfg.Epochs are done (or cfg.MaxSteps, or ctx is
// cancelled, which saves a checkpoint first when a checkpoint directory is
// set), evaluating on the test split after each epoch.
func (t *Trainer) Run(ctx context.Context) (Result, error) {
	start := t.now()
	defer t.closeMetricsFile()
	var err error
	if t.exec, err = newExecutor(t); err != nil {
		return Result{}, err
	}
	defer t.exec.close()
	t.strat = newStrategy(t)
	defer t.strat.close()
	// The job's start runs on a context that the caller's cancellation
	// does not end (see loop).
	if err := t.strat.start(context.WithoutCancel(ctx)); err != nil {
		return Result{}, err
	}
	return t.strat.run(ctx, start)
}

// interrupted saves where the run is, so that --resume continues it.
func (t *Trainer) interrupted(ctx context.Context, cause error) error {
	if t.cfg.CheckpointDir == "" {
		return fmt.Errorf("training stopped at step %d: %w (no --checkpoint-dir, so this progress is not saved)", t.pos.step, cause)
	}
	if err := t.save(ctx); err != nil {
		return errors.Join(cause, err)
	}
	return fmt.Errorf("training stopped at step %d: %w; resume with --resume %s", t.pos.step, cause, t.cfg.CheckpointDir)
}

func (t *Trainer) diverged(loss float64) error {
	where := fmt.Sprintf("epoch %d, step %d", t.pos.epoch+1, t.pos.step+1)
	keep := "no checkpoint was written (set --checkpoint-dir to keep one)"
	if t.lastCkpt != "" {
		keep = "the last good checkpoint is " + t.lastCkpt
	} else if t.resumedFrom != "" {
		keep = "the last good checkpoint is " + t.resumedFrom
	}
	return fmt.Errorf("%w: loss %v or a gradient is not finite at %s; the parameters were not updated and %s; lower --lr, or set --clip-grad-norm", ErrNonFinite, loss, where, keep)
}

// The test split is filled as epoch evalEpoch of a run seeded with
// evalSeed wherever it is read: in every evaluation of a run, by
// EvaluateSource ('gotrain eval') and for the CRC of DataIdentity. A
// source that draws anything at random so shows each of them the same
// samples.
const (
	evalSeed  = 0
	evalEpoch = 0
)

// fill writes the samples idx of s, as they are in the given epoch of a
// run seeded with seed, into x and y. A nil x or y is filled into scratch
// memory and dropped (a pipeline's first stage needs only the inputs, its
// last only the targets): only the loop's goroutine may pass one. The
// scratch is kept, so that the loop does not allocate.
func (t *Trainer) fill(s data.Source, x, y []float32, idx []int, seed uint64, epoch int) error {
	if x == nil {
		x = scratch(&t.scratchX, len(idx)*t.inSize)
	}
	if y == nil {
		y = scratch(&t.scratchY, len(idx))
	}
	if err := s.Fill(x, y, idx, seed, epoch); err != nil {
		return fmt.Errorf("data %s: a batch of %d samples of epoch %d: %w", sourceName(s), len(idx), epoch+1, err)
	}
	return nil
}

// fillTrain fills samples idx of the training data as they are in epoch.
func (t *Trainer) fillTrain(x, y []float32, idx []int, epoch int) error {
	return t.fill(t.train, x, y, idx, t.cfg.Seed, epoch)
}

// fillTest fills samples idx of the test data.
func (t *Trainer) fillTest(x, y []float32, idx []int) error {
	return t.fill(t.test, x, y, idx, evalSeed, evalEpoch)
}

// scratch is *buf with length n, grown when it is shorter.
func scratch(buf *[]float32, n int) []float32 {
	if cap(*buf) < n {
		*buf = make([]float32, n)
	}
	return (*buf)[:n]
}

// Evaluate returns the accuracy and mean loss of m on every sample of ds,
// in batches of at most batch samples: EvaluateSource of ds.AsSource().
func Evaluate(m *graph.Model, ds *data.Dataset, batch int) (accuracy, loss float64, err error) {
	if ds == nil {
		return 0, 0, errors.New("evaluate: no dataset (nil)")
	}
	return EvaluateSource(m, ds.AsSource(), batch)
}

// EvaluateSource returns the accuracy and mean loss of m on every sample
// of s, in batches of at most batch samples, filled as the trainer fills
// its test split (the same samples in every evaluation). Data that m
// cannot take (another input size, a target that is not a class index,
// more classes than m has outputs) is an ErrConfig error.
func EvaluateSource(m *graph.Model, s data.Source, batch int) (accuracy, loss float64, err error) {
	if s == nil || m == nil || batch <= 0 {
		return 0, 0, fmt.Errorf("%w: evaluate: need a model, data and a positive batch size", ErrConfig)
	}
	in, target := s.Input(), s.Target()
	name := sourceName(s)
	switch {
	case in.Size() != m.InputSize():
		return 0, 0, fmt.Errorf("%w: evaluate: data %s's inputs are %s (%d values), model %s takes %d (%s)",
			ErrConfig, name, shapeText(in.Shape), in.Size(), m.Spec.Kind, m.InputSize(), shapeText(m.Spec.Input()))
	case target.Kind != data.ClassIndex || target.Size() != 1:
		return 0, 0, fmt.Errorf("%w: evaluate: data %s's target %q is %s of shape %v: models are evaluated on one class index per sample",
			ErrConfig, name, target.Name, target.Kind, target.Shape)
	case target.Classes > m.Spec.Classes:
		return 0, 0, fmt.Errorf("%w: evaluate: data %s has %d classes, model %s has %d outputs", ErrConfig, name, target.Classes, m.Spec.Kind, m.Spec.Classes)
	}
	return evaluate(m, s, 0, s.Len(), batch, func(p *graph.Program) (float32, int, error) {
		l, err := p.Run(nil)
		if err != nil {
			return 0, 0, err
		}
		return l, p.Correct(), nil
	})
}

// evaluate runs m's evaluation programs over samples [lo, hi) of s in
// batches with run, which returns a batch's mean loss and its correct
// predictions.
func evaluate(m *graph.Model, s data.Source, lo, hi, batch int, run func(*graph.Program) (float32, int, error)) (accuracy, loss float64, err error) {
	if hi <= lo {
		return 0, 0, errors.New("evaluate: empty dataset")
	}
	idx := make([]int, 0, batch)
	var correct int
	var total float64
	for b := lo; b < hi; b += batch {
		e := min(b+batch, hi)
		prog, err := m.Program(e-b, false)
		if err != nil {
			return 0, 0, err
		}
		idx = idx[:0]
		for i := b; i < e; i++ {
			idx = append(idx, i)
		}
		if err := s.Fill(prog.X, prog.Y, idx, evalSeed, evalEpoch); err != nil {
			return 0, 0, fmt.Errorf("evaluate: data %s: %w", sourceName(s), err)
		}
		l, c, err := run(prog)
		if err != nil {
			return 0, 0, err
		}
		total += float64(l) * float64(e-b)
		correct += c
	}
	n := float64(hi - lo)
	return float64(correct) / n, total / n, nil
}
