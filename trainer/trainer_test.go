package trainer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/metrics"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// learnable makes a small dataset whose label is a function of the
// pixels, so that a model can learn it.
func learnable(n int, seed uint64) *data.Dataset {
	d := data.Synthetic(n, 28, 28, 10, seed)
	for i := 0; i < n; i++ {
		c := int(d.Labels[i])
		for j := 0; j < 20; j++ {
			d.Pix[i*784+c*70+j] = 255
		}
	}
	return d
}

func smallConfig(t *testing.T) Config {
	cfg := Default()
	cfg.Dataset = "synthetic"
	cfg.Hidden = []int{32}
	cfg.Dropout = 0.2
	cfg.BatchSize = 50
	cfg.Epochs = 2
	cfg.LogEvery = 5
	cfg.CheckpointDir = filepath.Join(t.TempDir(), "ckpt")
	return cfg
}

func newTrainer(t *testing.T, cfg Config, opts ...Option) *Trainer {
	t.Helper()
	opts = append([]Option{WithData(learnable(930, 1), learnable(200, 2)), WithLogger(quiet)}, opts...)
	tr, err := New(cfg, opts...)
	require.NoError(t, err)
	return tr
}

func params(tr *Trainer) [][]float32 {
	var out [][]float32
	for _, p := range tr.Model.Params {
		out = append(out, slices.Clone(p.Data))
	}
	return out
}

// recorder is a metrics sink that keeps every record.
type recorder struct {
	train []metrics.Train
	eval  []metrics.Eval
	sum   []metrics.Summary
}

func (r *recorder) Train(x metrics.Train)     { r.train = append(r.train, x) }
func (r *recorder) Eval(x metrics.Eval)       { r.eval = append(r.eval, x) }
func (r *recorder) Summary(x metrics.Summary) { r.sum = append(r.sum, x) }

func TestTrainsAndReports(t *testing.T) {
	rec := &recorder{}
	cfg := smallConfig(t)
	cfg.Dropout = 0
	tr := newTrainer(t, cfg, WithSink(rec))
	res, err := tr.Run(context.Background())
	require.NoError(t, err)
	require.Greater(t, res.TestAccuracy, 0.7, "the model should learn the planted pattern (chance is 0.1)")
	require.Equal(t, int64(2*19), res.Steps) // 930/50 rounds up to 19 batches, the last of 30
	require.Len(t, rec.eval, 2)
	require.Equal(t, 1, rec.eval[0].Epoch)
	require.Len(t, rec.sum, 1)
	require.Equal(t, res.TestAccuracy, rec.sum[0].TestAccuracy)
	require.Greater(t, rec.sum[0].PeakRSSBytes, int64(0))
	// One process computes faster than it trains: the optimiser step and
	// the first runs of the programs are not part of its computation.
	require.Len(t, rec.sum[0].RankComputeSamplesPerSec, 1)
	require.Greater(t, rec.sum[0].RankComputeSamplesPerSec[0], res.TrainSamplesPerSec)
	require.Len(t, rec.train, 7) // every 5 of 38 steps
	require.Less(t, rec.train[len(rec.train)-1].Loss, rec.train[0].Loss)
	// One checkpoint per epoch, the newest loadable.
	latest, err := checkpoint.Latest(cfg.CheckpointDir)
	require.NoError(t, err)
	require.Equal(t, res.Checkpoint, latest)
}

// TestResumeIsExact: 2 epochs straight equal 1 epoch, stop, resume, 1 epoch
// (and a stop in the middle of an epoch), bit for bit, with dropout and Adam.
func TestResumeIsExact(t *testing.T) {
	for _, stopAt := range []int64{19, 7, 25} {
		straightCfg := smallConfig(t)
		straight := newTrainer(t, straightCfg)
		_, err := straight.Run(context.Background())
		require.NoError(t, err)

		cfg := smallConfig(t)
		cfg.MaxSteps = stopAt
		first := newTrainer(t, cfg)
		_, err = first.Run(context.Background())
		require.NoError(t, err)
		require.Equal(t, stopAt, first.Step())
		require.NotEqual(t, params(straight), params(first))
		// The run ended at MaxSteps, so its last state is checkpointed.
		latest, err := checkpoint.Latest(cfg.CheckpointDir)
		require.NoError(t, err)
		require.Equal(t, checkpoint.FileName(stopAt), filepath.Base(latest))

		cfg.MaxSteps = 0
		cfg.Resume = cfg.CheckpointDir
		second := newTrainer(t, cfg)
		require.Equal(t, stopAt, second.Step())
		_, err = second.Run(context.Background())
		require.NoError(t, err)
		require.Equal(t, params(straight), params(second), "stopped at step %d", stopAt)
	}
}

func TestInterruptSavesAndResumes(t *testing.T) {
	cfg := smallConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	steps := 0
	tr := newTrainer(t, cfg, WithProgress(func(Progress) {
		if steps++; steps == 11 {
			cancel()
		}
	}))
	_, err := tr.Run(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "--resume")
	cfg.Resume = cfg.CheckpointDir
	resumed := newTrainer(t, cfg)
	require.Equal(t, int64(11), resumed.Step())
}

func TestDivergenceStopsWithErrorAndKeepsCheckpoint(t *testing.T) {
	cfg := smallConfig(t)
	cfg.Optimizer = "sgd"
	cfg.Momentum = 0
	cfg.Schedule = "constant"
	cfg.LR = 1e12
	cfg.CheckpointEvery = 1
	tr := newTrainer(t, cfg)
	_, err := tr.Run(context.Background())
	require.ErrorIs(t, err, ErrNonFinite)
	require.ErrorContains(t, err, "last good checkpoint")
	for _, p := range tr.Model.Params {
		for _, v := range p.Data {
			require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0), "parameters must stay finite")
		}
	}
	latest, err := checkpoint.Latest(cfg.CheckpointDir)
	require.NoError(t, err)
	require.Contains(t, err2str(err, tr), filepath.Base(latest))
	// The kept checkpoint is loadable and finite.
	_, _, _, err = LoadModel(latest)
	require.NoError(t, err)
}

func err2str(_ error, tr *Trainer) string { return tr.lastCkpt }

func TestBadCheckpointsAreRefusedAndChangeNothing(t *testing.T) {
	cfg := smallConfig(t)
	cfg.Epochs = 1
	tr := newTrainer(t, cfg)
	_, err := tr.Run(context.Background())
	require.NoError(t, err)
	good, err := checkpoint.Latest(cfg.CheckpointDir)
	require.NoError(t, err)
	raw, err := os.ReadFile(good)
	require.NoError(t, err)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		return p
	}
	truncated := write("truncated.safetensors", raw[:len(raw)/2])
	garbage := write("garbage.safetensors", []byte("definitely not a checkpoint"))
	flipped := slices.Clone(raw)
	flipped[10] ^= 0xff // inside the JSON header
	corrupt := write("corrupt.safetensors", flipped)

	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		path   string
		want   error
		text   string
	}{
		{"truncated", nil, truncated, checkpoint.ErrCorrupt, "truncated"},
		{"garbage", nil, garbage, checkpoint.ErrCorrupt, ""},
		{"corrupt header", nil, corrupt, checkpoint.ErrCorrupt, ""},
		{"missing", nil, filepath.Join(dir, "nope"), nil, "nope"},
		{"other model width", func(c *Config) { c.Hidden = []int{16} }, good, ErrCheckpoint, "different setup"},
		{"other batch size", func(c *Config) { c.BatchSize = 10 }, good, ErrCheckpoint, "batch=10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := smallConfig(t)
			c.Resume = tc.path
			if tc.mutate != nil {
				tc.mutate(&c)
			}
			_, err := New(c, WithData(learnable(930, 1), learnable(200, 2)), WithLogger(quiet))
			require.Error(t, err)
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want)
			}
			require.ErrorContains(t, err, tc.text)
		})
	}

	// Shapes that do not fit are refused by name, and the model is untouched.
	f, err := checkpoint.ReadFile(good)
	require.NoError(t, err)
	for i, ts := range f.Tensors {
		if ts.Name == "fc1.weight" {
			f.Tensors[i] = checkpoint.F32("fc1.weight", []int{16, 784}, make([]float32, 16*784))
		}
	}
	bad := filepath.Join(dir, "shape.safetensors")
	require.NoError(t, checkpoint.WriteFileAtomic(bad, f))
	fresh := newTrainer(t, smallConfig(t))
	before := params(fresh)
	err = fresh.restore(bad)
	require.ErrorIs(t, err, ErrCheckpoint)
	require.ErrorContains(t, err, `"fc1.weight" is F32[16 784]`)
	require.Equal(t, before, params(fresh))

	// The balancer's shares must be positive numbers.
	for _, v := range []string{"0.7,x", "0.7,-0.3", "0.5,NaN", "0.5,,0.5"} {
		f, err := checkpoint.ReadFile(good)
		require.NoError(t, err)
		f.Metadata[metaShares] = v
		require.NoError(t, checkpoint.WriteFileAtomic(bad, f))
		err = fresh.restore(bad)
		require.ErrorIs(t, err, ErrCheckpoint, "shares %q", v)
		require.ErrorContains(t, err, "bad gotrain.balance_shares")
		require.Equal(t, before, params(fresh))
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Model = "vgg" }, "--model"},
		{func(c *Config) { c.Dataset = "cifar" }, "--dataset"},
		{func(c *Config) { c.Optimizer = "lion" }, "--optimizer"},
		{func(c *Config) { c.Epochs = 0 }, "--epochs"},
		{func(c *Config) { c.BatchSize = -1 }, "--batch-size"},
		{func(c *Config) { c.LR = 0 }, "--lr"},
		{func(c *Config) { c.LR = math.NaN() }, "--lr"},
		{func(c *Config) { c.Schedule = "linear" }, "--schedule"},
		{func(c *Config) { c.Schedule = "step" }, "--schedule"},
		{func(c *Config) { c.Dropout = 1.5 }, "--dropout"},
		{func(c *Config) { c.Shares = []float64{0.7, 0} }, "--shares"},
		{func(c *Config) { c.Shares = []float64{0.7, math.Inf(1)} }, "--shares"},
		{func(c *Config) { c.Shares, c.Balance = []float64{0.7, 0.3}, "adaptive" }, "use one of them"},
	} {
		c := Default()
		tc.mutate(&c)
		err := c.Validate()
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, tc.want)
	}
	c := Default()
	require.NoError(t, c.Validate())
}

func TestConfigFiles(t *testing.T) {
	dir := t.TempDir()
	y := filepath.Join(dir, "c.yaml")
	require.NoError(t, os.WriteFile(y, []byte("model: cnn\nhidden: [64]\nlr: 0.01\nbatch_size: 32\n"), 0o644))
	c := Default()
	require.NoError(t, c.LoadFile(y))
	require.Equal(t, "cnn", c.Model)
	require.Equal(t, []int{64}, c.Hidden)
	require.Equal(t, 0.01, c.LR)
	require.Equal(t, 32, c.BatchSize)
	require.Equal(t, "adam", c.Optimizer, "unset keys keep their defaults")

	j := filepath.Join(dir, "c.json")
	require.NoError(t, os.WriteFile(j, []byte(`{"model":"mlp","epochs":3}`), 0o644))
	c = Default()
	require.NoError(t, c.LoadFile(j))
	require.Equal(t, 3, c.Epochs)

	typo := filepath.Join(dir, "typo.yaml")
	require.NoError(t, os.WriteFile(typo, []byte("modle: cnn\n"), 0o644))
	err := c.LoadFile(typo)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "modle")
	err = c.LoadFile(filepath.Join(dir, "absent.yaml"))
	require.ErrorIs(t, err, ErrConfig)
}

func TestSaveWeightsAndLoadModel(t *testing.T) {
	cfg := smallConfig(t)
	cfg.Epochs = 1
	cfg.Out = filepath.Join(t.TempDir(), "w.safetensors")
	tr := newTrainer(t, cfg)
	res, err := tr.Run(context.Background())
	require.NoError(t, err)
	m, got, path, err := LoadModel(cfg.Out)
	require.NoError(t, err)
	require.Equal(t, cfg.Out, path)
	require.Equal(t, cfg.Hidden, got.Hidden)
	for i, p := range m.Params {
		require.Equal(t, tr.Model.Params[i].Data, p.Data)
	}
	acc, _, err := Evaluate(m, learnable(200, 2), 64)
	require.NoError(t, err)
	require.Equal(t, res.TestAccuracy, acc)
	_, _, _, err = LoadModel(filepath.Join(t.TempDir(), "none"))
	require.Error(t, err)
	require.False(t, errors.Is(err, ErrNonFinite))
}

func maxAbsDiff(a, b [][]float32) float64 {
	d := 0.0
	for i := range a {
		for j := range a[i] {
			d = math.Max(d, math.Abs(float64(a[i][j])-float64(b[i][j])))
		}
	}
	return d
}

func sgdConfig(t *testing.T) Config {
	cfg := smallConfig(t)
	cfg.CheckpointDir = ""
	cfg.Dropout = 0
	cfg.Optimizer = "sgd"
	cfg.Schedule = "constant"
	cfg.LR = 0.05
	cfg.MaxSteps = 30
	return cfg
}

// TestMaxStepsEvaluatesWhatItTrained: a run stopped by MaxSteps inside an
// epoch reports the test set on the parameters it ends with (one
// evaluation per epoch end and one at the stop), and one that stops at an
// epoch's end evaluates once there.
func TestMaxStepsEvaluatesWhatItTrained(t *testing.T) {
	for _, tc := range []struct {
		steps int64
		evals int
	}{{25, 2}, {19, 1}, {7, 1}} { // 19 batches an epoch
		cfg := sgdConfig(t)
		cfg.MaxSteps = tc.steps
		rec := &recorder{}
		tr := newTrainer(t, cfg, WithSink(rec))
		res, err := tr.Run(context.Background())
		require.NoError(t, err)
		require.Equal(t, tc.steps, res.Steps)
		acc, loss, err := EvaluateSource(tr.Model, tr.test, cfg.EvalBatchSize)
		require.NoError(t, err)
		require.Equal(t, acc, res.TestAccuracy, "stopped at step %d", tc.steps)
		require.InDelta(t, loss, res.TestLoss, 1e-9)
		require.Len(t, rec.eval, tc.evals, "stopped at step %d", tc.steps)
		require.Equal(t, acc, rec.eval[len(rec.eval)-1].TestAccuracy)
	}
}

// TestAccumulationEqualsOneBatch: K micro-batches per step give the
// parameters that one batch of the same size gives, up to rounding.
func TestAccumulationEqualsOneBatch(t *testing.T) {
	ref := newTrainer(t, sgdConfig(t))
	_, err := ref.Run(context.Background())
	require.NoError(t, err)
	for _, k := range []int{2, 3, 7} {
		cfg := sgdConfig(t)
		cfg.AccumSteps = k
		tr := newTrainer(t, cfg)
		_, err := tr.Run(context.Background())
		require.NoError(t, err)
		d := maxAbsDiff(params(ref), params(tr))
		require.Less(t, d, 1e-5, "accum %d", k)
		require.NotEqual(t, params(newTrainer(t, cfg)), params(tr), "training moved the parameters")
	}
}

func TestShardCoversExactlyOnce(t *testing.T) {
	for _, tc := range []struct{ lo, hi, w int }{{0, 10, 3}, {5, 7, 4}, {0, 128, 8}, {10, 10, 2}, {3, 100, 1}} {
		next := tc.lo
		for r := 0; r < tc.w; r++ {
			s, e := shard(tc.lo, tc.hi, r, tc.w)
			require.Equal(t, next, s)
			require.LessOrEqual(t, e-s, (tc.hi-tc.lo+tc.w-1)/tc.w)
			require.GreaterOrEqual(t, e-s, (tc.hi-tc.lo)/tc.w)
			next = e
		}
		require.Equal(t, tc.hi, next)
	}
}

func TestTrainRecordsCarryDeviceStats(t *testing.T) {
	rec := &recorder{}
	cfg := smallConfig(t)
	cfg.Epochs = 1
	calls := 0
	tr := newTrainer(t, cfg, WithSink(rec), WithDeviceStats(func() []metrics.GPU {
		calls++
		return []metrics.GPU{{Index: 0, UtilGPUPercent: 87, MemUsedBytes: 1 << 30}}
	}))
	_, err := tr.Run(context.Background())
	require.NoError(t, err)
	require.NotEmpty(t, rec.train)
	require.Equal(t, len(rec.train), calls, "one sample per train record")
	require.Equal(t, 87.0, rec.train[0].GPU[0].UtilGPUPercent)
}
