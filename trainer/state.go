package trainer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Checkpoint metadata keys. Weights are stored under their parameter names
// (fc1.weight, ...), exactly as PyTorch's state_dict names them; optimiser
// state under "optimizer." + the optimiser's own state name.
const (
	metaFormat     = "gotrain.format"
	metaStep       = "gotrain.step"
	metaEpoch      = "gotrain.epoch"
	metaBatch      = "gotrain.batch_in_epoch"
	metaConfig     = "gotrain.config"
	metaTrajectory = "gotrain.trajectory"
	metaOptimizer  = "gotrain.optimizer"
	metaOptStep    = "gotrain.optimizer_step"
	metaOuterStep  = "gotrain.outer_optimizer_step"
	metaLocalRanks = "gotrain.local_optimizer_ranks"
	metaShares     = "gotrain.balance_shares" // the ranks' shares of the batch, comma-separated
	metaRNG        = "gotrain.rng"
	metaVersion    = "gotrain.version"
	metaData       = "gotrain.data" // JSON of the DataIdentity trained on
	// JSON of the model's input shape and class count (modelShape), which
	// come from the data: LoadModel builds the model with them.
	metaModelShape = "gotrain.model_shape"
	optPrefix      = "optimizer."
	outerPrefix    = "outer_optimizer."
	localPrefix    = "local_optimizer." // + rank + "." + state name: local SGD's ranks >= 1
	formatVersion  = "1"
)

// Version is gotrain's version, set by the build.
var Version = "dev"

// ErrCheckpoint wraps errors about a checkpoint that cannot be used.
var ErrCheckpoint = errors.New("unusable checkpoint")

// position is where a run is: what a checkpoint must restore besides weights.
type position struct {
	epoch int   // epoch in progress, 0-based
	batch int   // batches of that epoch already done
	step  int64 // optimiser steps done
}

// rngNote documents the RNG state: gotrain's randomness is counter-based,
// so the seed and the position above are the whole state.
func rngNote(seed uint64) string {
	return fmt.Sprintf("pcg seed=%d; shuffle stream (seed, epoch); dropout stream (seed, step)", seed)
}

// snapshot builds the checkpoint of the trainer's current state: the
// weights, the optimiser's state and the run's metadata; the strategy
// adds its own part (see strategy.checkpoint).
func (t *Trainer) snapshot() (*checkpoint.File, error) {
	cfgJSON, err := json.Marshal(t.cfg)
	if err != nil {
		return nil, err
	}
	f := &checkpoint.File{Metadata: map[string]string{
		metaFormat:     formatVersion,
		metaVersion:    Version,
		metaStep:       strconv.FormatInt(t.pos.step, 10),
		metaEpoch:      strconv.Itoa(t.pos.epoch),
		metaBatch:      strconv.Itoa(t.pos.batch),
		metaConfig:     string(cfgJSON),
		metaTrajectory: t.cfg.trajectory(),
		metaRNG:        rngNote(t.cfg.Seed),
	}}
	for k, v := range t.dataMeta {
		f.Metadata[k] = v
	}
	f.Tensors = weightTensors(t.Model)
	if t.opt != nil {
		f.Metadata[metaOptimizer] = t.opt.Name()
		f.Metadata[metaOptStep] = appendState(f, optPrefix, t.opt)
	}
	return f, nil
}

// parseShares reads the balancer's shares from a checkpoint's metadata
// (nil when it has none).
func parseShares(s string) ([]float64, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > 1<<16 {
		return nil, fmt.Errorf("%d shares", len(parts))
	}
	w := make([]float64, len(parts))
	for i, p := range parts {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || !(v > 0) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("share %q is not a positive number", p)
		}
		w[i] = v
	}
	return w, nil
}

// appendState adds opt's state tensors to f under prefix, in name order,
// and returns its step count for the metadata.
func appendState(f *checkpoint.File, prefix string, opt optim.Optimizer) string {
	st, step := opt.State()
	names := slices.Sorted(maps.Keys(st))
	for _, k := range names {
		f.Tensors = append(f.Tensors, checkpoint.F32(prefix+k, []int{len(st[k])}, st[k]))
	}
	return strconv.FormatInt(step, 10)
}

// stateTensors collects the tensors saved under prefix, by name less prefix.
func stateTensors(f *checkpoint.File, prefix, path string) (map[string][]float32, error) {
	st := map[string][]float32{}
	for _, ts := range f.Tensors {
		if name, ok := strings.CutPrefix(ts.Name, prefix); ok {
			v, err := ts.Float32s()
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrCheckpoint, path, err)
			}
			st[name] = v
		}
	}
	return st, nil
}

func weightTensors(m *graph.Model) []checkpoint.Tensor {
	ts := make([]checkpoint.Tensor, 0, len(m.Params))
	for _, p := range m.Params {
		ts = append(ts, checkpoint.F32(p.Name, p.Shape, p.Data))
	}
	return ts
}

// loadWeights copies the checkpoint's weights into m, after checking that
// every parameter is present with the right shape and that nothing else
// (but optimiser state) is there. Nothing is written unless all checks pass.
func loadWeights(m *graph.Model, f *checkpoint.File, path string) error {
	byName := map[string]checkpoint.Tensor{}
	for _, ts := range f.Tensors {
		byName[ts.Name] = ts
	}
	for _, p := range m.Params {
		ts, ok := byName[p.Name]
		if !ok {
			return fmt.Errorf("%w: %s has no tensor %q: it was not saved from this model (%s); check --model and --hidden", ErrCheckpoint, path, p.Name, m.Spec.Kind)
		}
		if ts.DType != checkpoint.DTypeF32 || !slices.Equal(ts.Shape, p.Shape) {
			return fmt.Errorf("%w: %s: tensor %q is %s%v, this model needs F32%v; check --model and --hidden", ErrCheckpoint, path, p.Name, ts.DType, ts.Shape, p.Shape)
		}
		delete(byName, p.Name)
	}
	for name := range byName {
		if !strings.HasPrefix(name, optPrefix) && !strings.HasPrefix(name, outerPrefix) && !strings.HasPrefix(name, localPrefix) {
			return fmt.Errorf("%w: %s has tensor %q, which model %s does not have; check --model and --hidden", ErrCheckpoint, path, name, m.Spec.Kind)
		}
	}
	for _, p := range m.Params {
		ts, _ := f.Get(p.Name)
		if err := ts.Float32sInto(p.Data); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCheckpoint, path, err)
		}
	}
	return nil
}

// setupError is a checkpoint that is whole but was saved by another setup
// (format, flags, optimiser): an older checkpoint of the same run would
// not do either, so restore does not fall back from it.
type setupError struct{ error }

func (e setupError) Unwrap() error { return e.error }

// restore loads a full training checkpoint into t. Given a directory it
// takes the newest checkpoint there that can be used: one that cannot be
// read or is inconsistent is named in a warning and the one before it is
// tried, so that a crash or a bad disk in the middle of the newest write
// costs the steps since the one before, not the run. A file named
// explicitly must be usable, as must one saved by a different setup.
func (t *Trainer) restore(pathOrDir string) error {
	if fi, err := os.Stat(pathOrDir); err != nil || !fi.IsDir() {
		path, err := checkpoint.Resolve(pathOrDir)
		if err != nil {
			return fmt.Errorf("--resume: %w", err)
		}
		return t.restoreFile(path)
	}
	paths, err := (&checkpoint.Manager{Dir: pathOrDir}).List()
	if err != nil {
		return fmt.Errorf("--resume: %w", err)
	}
	if len(paths) == 0 {
		return fmt.Errorf("--resume: %w in %s", checkpoint.ErrNoCheckpoint, pathOrDir)
	}
	var skipped []error
	for i := len(paths) - 1; i >= 0; i-- {
		err := t.restoreFile(paths[i])
		if err == nil {
			if len(skipped) > 0 {
				t.log.Warn("--resume: resumed from an older checkpoint; the newer ones are unusable", "checkpoint", paths[i], "skipped", len(skipped))
			}
			return nil
		}
		if errors.As(err, &setupError{}) {
			return err
		}
		t.log.Warn("--resume: checkpoint unusable, trying the one before it", "checkpoint", paths[i], "err", err)
		skipped = append(skipped, err)
	}
	return fmt.Errorf("--resume: no checkpoint in %s can be used: %w", pathOrDir, errors.Join(skipped...))
}

// restoreFile loads the training checkpoint at path into t; on any error
// t is left as it was.
func (t *Trainer) restoreFile(path string) error {
	f, err := checkpoint.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--resume: %w", err)
	}
	md := f.Metadata
	if md[metaFormat] != formatVersion {
		return setupError{fmt.Errorf("%w: %s is not a gotrain training checkpoint (format %q, want %q); to start from its weights alone use it with 'gotrain eval' or convert it", ErrCheckpoint, path, md[metaFormat], formatVersion)}
	}
	if got, want := md[metaTrajectory], t.cfg.trajectory(); got != want {
		return setupError{fmt.Errorf("%w: %s was trained with a different setup:\n  checkpoint: %s\n  this run:   %s\nuse the same flags to resume, or start a new run without --resume", ErrCheckpoint, path, got, want)}
	}
	shares, err := parseShares(md[metaShares])
	if err != nil {
		return fmt.Errorf("%w: %s: bad %s: %v", ErrCheckpoint, path, metaShares, err)
	}
	var pos position
	if pos.step, err = strconv.ParseInt(md[metaStep], 10, 64); err != nil || pos.step < 0 {
		return fmt.Errorf("%w: %s: bad %s %q", ErrCheckpoint, path, metaStep, md[metaStep])
	}
	if pos.epoch, err = strconv.Atoi(md[metaEpoch]); err != nil || pos.epoch < 0 {
		return fmt.Errorf("%w: %s: bad %s %q", ErrCheckpoint, path, metaEpoch, md[metaEpoch])
	}
	if pos.batch, err = strconv.Atoi(md[metaBatch]); err != nil || pos.batch < 0 || pos.batch > t.batchesPerEpoch() {
		return fmt.Errorf("%w: %s: bad %s %q", ErrCheckpoint, path, metaBatch, md[metaBatch])
	}
	if md[metaOptimizer] != t.opt.Name() {
		return setupError{fmt.Errorf("%w: %s: optimiser state is for %q, this run uses %q", ErrCheckpoint, path, md[metaOptimizer], t.opt.Name())}
	}
	optStep, err := strconv.ParseInt(md[metaOptStep], 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s: bad %s %q", ErrCheckpoint, path, metaOptStep, md[metaOptStep])
	}
	st, err := stateTensors(f, optPrefix, path)
	if err != nil {
		return err
	}
	// Check the optimiser state before touching the weights, so that a bad
	// checkpoint leaves the model as it was.
	probe, err := newOptimizer(t.cfg, t.Model)
	if err != nil {
		return err
	}
	if err := probe.LoadState(st, optStep); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCheckpoint, path, err)
	}
	var outer *outerOpt
	if t.cfg.outer() {
		ost, err := stateTensors(f, outerPrefix, path)
		if err != nil {
			return err
		}
		ostep, err := strconv.ParseInt(md[metaOuterStep], 10, 64)
		if err != nil {
			return fmt.Errorf("%w: %s has no outer optimiser state (%s), which --outer-lr/--outer-momentum need: it was saved by a run without them", ErrCheckpoint, path, metaOuterStep)
		}
		if outer, err = newOuter(t.cfg, t.Model); err != nil {
			return err
		}
		if err := outer.opt.LoadState(ost, ostep); err != nil {
			return fmt.Errorf("%w: %s: outer optimiser: %v", ErrCheckpoint, path, err)
		}
	}
	var localStates []map[string][]float32
	if n, err := strconv.Atoi(md[metaLocalRanks]); err == nil && n > 1 {
		localStates = make([]map[string][]float32, n)
		for r := 1; r < n; r++ {
			if localStates[r], err = stateTensors(f, fmt.Sprintf("%s%d.", localPrefix, r), path); err != nil {
				return err
			}
		}
	}
	if err := loadWeights(t.Model, f, path); err != nil {
		return err
	}
	if outer != nil {
		outer.anchor(t.Model) // checkpoints are taken right after a synchronisation
		t.resumedOuter = outer
	}
	if localStates != nil {
		t.localStates = localStates
	}
	t.opt = probe
	t.pos = pos
	t.resumeShares = shares
	t.resumedFrom = path
	t.savedStep = pos.step
	return nil
}

// modelShape is what metadata metaModelShape records of a model: its
// per-sample input shape [C H W] and its class count.
type modelShape struct {
	Input   []int `json:"input"`
	Classes int   `json:"classes"`
}

func shapeOf(m *graph.Model) string {
	b, _ := json.Marshal(modelShape{Input: m.Spec.Input(), Classes: m.Spec.Classes})
	return string(b)
}

// Bounds on the model shape a file may ask LoadModel to build.
const maxInputValues = 1 << 28

// applyShape sets spec's input shape and classes from metadata
// metaModelShape; a file without it (written before it was recorded)
// leaves the defaults (28x28 images, the config's classes or 10).
func applyShape(spec *graph.Spec, md map[string]string, path string) error {
	raw, ok := md[metaModelShape]
	if !ok {
		return nil
	}
	var sh modelShape
	if err := json.Unmarshal([]byte(raw), &sh); err != nil {
		return fmt.Errorf("%w: %s: %s metadata: %v", ErrCheckpoint, path, metaModelShape, err)
	}
	n := 1
	for _, d := range sh.Input {
		if d < 1 || d > maxInputValues {
			n = 0
			break
		}
		n *= d
		if n > maxInputValues {
			break
		}
	}
	if len(sh.Input) != 3 || n < 1 || n > maxInputValues || sh.Classes < 1 || sh.Classes > MaxClasses {
		return fmt.Errorf("%w: %s: %s metadata %s: want an input shape [C H W] of at most %d values and 1 to %d classes",
			ErrCheckpoint, path, metaModelShape, shorten(raw), maxInputValues, MaxClasses)
	}
	spec.InC, spec.InH, spec.InW, spec.Classes = sh.Input[0], sh.Input[1], sh.Input[2], sh.Classes
	return nil
}

// LoadModel builds the model a checkpoint (or final weights file) was
// saved from, using the config in its metadata and the input shape and
// class count it records, and loads its weights.
func LoadModel(pathOrDir string) (*graph.Model, Config, string, error) {
	path, err := checkpoint.Resolve(pathOrDir)
	if err != nil {
		return nil, Config{}, "", err
	}
	f, err := checkpoint.ReadFile(path)
	if err != nil {
		return nil, Config{}, "", err
	}
	cfg := Default()
	raw, ok := f.Metadata[metaConfig]
	if !ok {
		return nil, Config{}, "", fmt.Errorf("%w: %s has no %s metadata: it was not written by gotrain", ErrCheckpoint, path, metaConfig)
	}
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return nil, Config{}, "", fmt.Errorf("%w: %s: config metadata: %v", ErrCheckpoint, path, err)
	}
	if !graph.Registered(cfg.Model) {
		return nil, Config{}, "", fmt.Errorf("%w: %s holds a %s model, which this program does not have (it has %s): a program that registered %s (graph.Register) wrote it; evaluate it with that program, whose eval is gotrain's (cli.Main)",
			ErrCheckpoint, path, quote(cfg.Model), strings.Join(graph.Models(), ", "), quote(cfg.Model))
	}
	if err := cfg.Validate(); err != nil {
		return nil, Config{}, "", fmt.Errorf("%w: %s: %v", ErrCheckpoint, path, err)
	}
	spec := cfg.ModelSpec()
	if err := applyShape(&spec, f.Metadata, path); err != nil {
		return nil, Config{}, "", err
	}
	m, err := graph.New(spec, cfg.Seed)
	if err != nil {
		return nil, Config{}, "", err
	}
	if err := loadWeights(m, f, path); err != nil {
		return nil, Config{}, "", err
	}
	return m, cfg, path, nil
}

// SaveWeights writes the model's weights (and its config and shape, so
// that `gotrain eval` can rebuild it) to path atomically.
//
// It stores no DataIdentity: 'gotrain eval' evaluates such a file on the
// dataset its config names. The weights a Trainer saves (Config.Out)
// carry the identity of the data they were trained on.
func SaveWeights(path string, m *graph.Model, cfg Config) error {
	return saveWeights(path, m, cfg, nil)
}

// saveWeights is SaveWeights with metadata of the data trained on
// (Trainer.dataMeta).
func saveWeights(path string, m *graph.Model, cfg Config, dataMeta map[string]string) error {
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	md := map[string]string{}
	for k, v := range dataMeta {
		md[k] = v
	}
	md[metaConfig], md[metaVersion], md[metaModelShape] = string(cfgJSON), Version, shapeOf(m)
	return checkpoint.WriteFileAtomic(path, &checkpoint.File{Tensors: weightTensors(m), Metadata: md})
}

// dataMetadata is what checkpoints and weights record of the run's data
// and model: the data's identity (metaData), the training source's Meta
// (its name, normalisation constants; a key of gotrain's own is not
// taken from it) and the model's input shape and classes.
func (t *Trainer) dataMetadata() (map[string]string, error) {
	md := map[string]string{}
	for k, v := range t.train.Meta() {
		if !strings.HasPrefix(k, "gotrain.") {
			md[k] = v
		}
	}
	id, err := SourceIdentity(t.train, t.test)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(id)
	if err != nil {
		return nil, err
	}
	md[metaData] = string(b)
	md[metaModelShape] = shapeOf(t.Model)
	return md, nil
}

// DataIdentity is which data a model was trained on. Trainers store it in
// their checkpoints and weights files (metadata "gotrain.data", JSON), so
// that 'gotrain eval' can tell whether the data it would load is that
// data: a caller's own data given with WithData or WithSource is not,
// even when the config names a built-in dataset. Files written before it
// existed have none.
type DataIdentity struct {
	Name string `json:"name"` // the training source's Meta()["data.name"]: a Dataset's Name, csv:train.csv
	// Shape is the input's shape per sample ([1 28 28] for MNIST, [20]
	// for 20 features); Rows and Cols are those of a one-channel image
	// ([1 Rows Cols]), which is all that identities written before Shape
	// say.
	Shape   []int `json:"shape,omitempty"`
	Rows    int   `json:"rows"`
	Cols    int   `json:"cols"`
	Classes int   `json:"classes"`
	// TrainSamples and TestSamples are the sizes of the two splits;
	// TestCRC32C is the CRC-32C of the test split: a data.Checksummer's
	// own (for an image dataset, its pixels then its labels), else that of
	// its samples as Fill writes them for evaluation, each one's input
	// then its target values as little-endian float32s, in index order.
	TrainSamples int    `json:"train_samples"`
	TestSamples  int    `json:"test_samples"`
	TestCRC32C   uint32 `json:"test_crc32c"`
}

// shape is the input shape id records.
func (id DataIdentity) shape() []int {
	if id.Shape != nil {
		return id.Shape
	}
	return []int{1, id.Rows, id.Cols}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// IdentityOf is the identity of a training and a test split of images.
func IdentityOf(train, test *data.Dataset) DataIdentity {
	id, _ := SourceIdentity(train.AsSource(), test.AsSource()) // an image dataset fills no batch here
	return id
}

// SourceIdentity is the identity of a training and a test source. The
// CRC of a test source that is not a data.Checksummer is that of all its
// samples, filled as evaluation fills them; their Fill's error is
// returned.
func SourceIdentity(train, test data.Source) (DataIdentity, error) {
	in := train.Input()
	id := DataIdentity{Name: sourceName(train), Shape: slices.Clone(in.Shape), Classes: train.Target().Classes,
		TrainSamples: train.Len(), TestSamples: test.Len()}
	if len(in.Shape) == 3 && in.Shape[0] == 1 {
		id.Rows, id.Cols = in.Shape[1], in.Shape[2]
	}
	var err error
	id.TestCRC32C, err = testCRC(test)
	return id, err
}

// testCRC is DataIdentity.TestCRC32C of a test source.
func testCRC(test data.Source) (uint32, error) {
	if c, ok := test.(data.Checksummer); ok {
		return c.CRC32C(), nil
	}
	in, out, n := test.Input().Size(), test.Target().Size(), test.Len()
	batch := max(1, min(256, (1<<20)/max(in, 1)))
	x, y := make([]float32, batch*in), make([]float32, batch*out)
	idx := make([]int, 0, batch)
	buf := make([]byte, 0, 4*(in+out))
	var crc uint32
	for lo := 0; lo < n; lo += batch {
		hi := min(lo+batch, n)
		idx = idx[:0]
		for i := lo; i < hi; i++ {
			idx = append(idx, i)
		}
		k := hi - lo
		if err := test.Fill(x[:k*in], y[:k*out], idx, evalSeed, evalEpoch); err != nil {
			return 0, fmt.Errorf("data %s: checksumming the test split: %w", sourceName(test), err)
		}
		for i := range k {
			buf = buf[:0]
			for _, v := range x[i*in : (i+1)*in] {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			}
			for _, v := range y[i*out : (i+1)*out] {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			}
			crc = crc32.Update(crc, castagnoli, buf)
		}
	}
	return crc, nil
}

func (id DataIdentity) String() string {
	return fmt.Sprintf("%s (%s, %d classes, %d training and %d test samples)", strconv.Quote(id.Name), shapeText(id.shape()), id.Classes, id.TrainSamples, id.TestSamples)
}

// ErrOtherData is returned by CheckTestData when the test split to
// evaluate on is not that of the data the model was trained on.
var ErrOtherData = errors.New("not the data the model was trained on")

// TrainedOn reads the DataIdentity stored in a checkpoint or weights file;
// ok is false for a file that has none (written before it was stored, or
// by SaveWeights).
func TrainedOn(path string) (id DataIdentity, ok bool, err error) {
	f, err := checkpoint.ReadFile(path)
	if err != nil {
		return id, false, err
	}
	raw, ok := f.Metadata[metaData]
	if !ok {
		return id, false, nil
	}
	if err := json.Unmarshal([]byte(raw), &id); err != nil {
		return id, false, fmt.Errorf("%w: %s: %s metadata: %v", ErrCheckpoint, path, metaData, err)
	}
	if len(id.Shape) > 8 {
		return id, false, fmt.Errorf("%w: %s: %s metadata: an input shape of %d dimensions", ErrCheckpoint, path, metaData, len(id.Shape))
	}
	return id, true, nil
}

// CheckTestData is CheckTestSource of an image dataset's test split.
func CheckTestData(id DataIdentity, cfg Config, test *data.Dataset) error {
	if test == nil {
		return CheckTestSource(id, cfg, nil)
	}
	return CheckTestSource(id, cfg, test.AsSource())
}

// CheckTestSource returns nil when test (loaded for cfg, the config
// stored with the model: LoadTestSource) is the test split of the data id
// names, and otherwise an ErrOtherData error that names the data the
// model was trained on. Give test nil to check, before loading anything,
// only that cfg.Dataset is id's dataset.
func CheckTestSource(id DataIdentity, cfg Config, test data.Source) error {
	if id.Name != trainName(cfg) {
		return fmt.Errorf("%w: the model was trained on dataset %s, which its program supplied (its config says --dataset %s); evaluate it in that program, or name the dataset to evaluate on with --dataset",
			ErrOtherData, id, cfg.Dataset)
	}
	if test == nil {
		return nil
	}
	shape, classes, n := test.Input().Shape, test.Target().Classes, test.Len()
	crc, err := testCRC(test)
	if err != nil {
		return err
	}
	if !slices.Equal(shape, id.shape()) || classes != id.Classes || n != id.TestSamples || crc != id.TestCRC32C {
		return fmt.Errorf("%w: the model was trained on dataset %s, and the test split loaded for --dataset %s is %s with %d classes and %d samples (CRC-32C %08x, want %08x): the data was supplied by its program or differs; evaluate it there, or name the dataset to evaluate on with --dataset",
			ErrOtherData, id, cfg.Dataset, shapeText(shape), classes, n, crc, id.TestCRC32C)
	}
	return nil
}

// saveOut writes the final weights to --out. Should that fail although
// Preflight found the place writable (the disk filled up, the directory
// went away), the weights are written to the first place that takes them
// (the checkpoint directory, the working directory, the temporary
// directory) and the error says where they are: trained weights are
// never dropped.
func (t *Trainer) saveOut() error {
	err := saveWeights(t.cfg.Out, t.Model, t.cfg, t.dataMeta)
	if err == nil {
		t.log.Info("saved weights", "path", t.cfg.Out)
		return nil
	}
	base := filepath.Base(t.cfg.Out)
	var places []string
	if t.cfg.CheckpointDir != "" {
		places = append(places, filepath.Join(t.cfg.CheckpointDir, base))
	}
	if wd, werr := os.Getwd(); werr == nil {
		places = append(places, filepath.Join(wd, "gotrain-rescued-"+base))
	}
	places = append(places, filepath.Join(os.TempDir(), fmt.Sprintf("gotrain-rescued-%d-%s", os.Getpid(), base)))
	var errs []error
	for _, p := range places {
		if _, serr := os.Stat(p); serr == nil && p != filepath.Join(t.cfg.CheckpointDir, base) {
			continue // never overwrite a file of someone else's
		}
		ferr := saveWeights(p, t.Model, t.cfg, t.dataMeta)
		if ferr == nil {
			t.log.Error("--out could not be written; the weights were saved elsewhere", "out", t.cfg.Out, "err", err, "saved", p)
			return fmt.Errorf("--out %s: %w; the trained weights were saved to %s instead", t.cfg.Out, err, p)
		}
		errs = append(errs, ferr)
	}
	return fmt.Errorf("--out %s: %w; no other place took the weights either: %w", t.cfg.Out, err, errors.Join(errs...))
}

// sharesMeta writes the balancer's shares for metadata metaShares.
func sharesMeta(shares []float64) string {
	parts := make([]string, 0, len(shares))
	for _, w := range shares {
		parts = append(parts, strconv.FormatFloat(w, 'g', -1, 64))
	}
	return strings.Join(parts, ",")
}

// addLocalStates adds local SGD's inner optimiser states of ranks 1.. to f
// (rank 0's is the optimiser state already there).
func addLocalStates(f *checkpoint.File, ranks []map[string][]float32) {
	if len(ranks) < 2 {
		return
	}
	f.Metadata[metaLocalRanks] = strconv.Itoa(len(ranks))
	for r := 1; r < len(ranks); r++ {
		names := slices.Sorted(maps.Keys(ranks[r]))
		for _, k := range names {
			v := ranks[r][k]
			f.Tensors = append(f.Tensors, checkpoint.F32(fmt.Sprintf("%s%d.%s", localPrefix, r, k), []int{len(v)}, v))
		}
	}
}
