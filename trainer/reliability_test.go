package trainer

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/faulttest"
)

// --resume DIR whose newest checkpoint is corrupt (truncated by a crash or
// a full disk) goes on from the one before it, and says which it skipped;
// the result equals resuming from that older checkpoint by name. A file
// named explicitly, and a checkpoint of another setup, still fail hard.
func TestResumeFallsBackPastACorruptCheckpoint(t *testing.T) {
	cfg := smallConfig(t)
	cfg.CheckpointEvery = 5
	cfg.KeepCheckpoints = 0
	tr := newTrainer(t, cfg)
	_, err := tr.Run(context.Background())
	require.NoError(t, err)
	paths, err := (&checkpoint.Manager{Dir: cfg.CheckpointDir}).List()
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(paths), 3)
	newest, older := paths[len(paths)-1], paths[len(paths)-2]
	raw, err := os.ReadFile(newest)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(newest, raw[:len(raw)/3], 0o644))

	var logged strings.Builder
	c := cfg
	c.Resume = cfg.CheckpointDir
	fromDir, err := New(c, WithData(learnable(930, 1), learnable(200, 2)), WithLogger(textLogger(&logged)))
	require.NoError(t, err)
	require.Equal(t, older, fromDir.resumedFrom)
	require.Contains(t, logged.String(), filepath.Base(newest), "the skipped checkpoint is named")
	require.Contains(t, logged.String(), "truncated")

	c.Resume = older
	byName := newTrainer(t, c)
	require.Equal(t, byName.Step(), fromDir.Step())
	require.Equal(t, params(byName), params(fromDir))

	c.Resume = newest // named explicitly: no fallback
	_, err = New(c, WithData(learnable(930, 1), learnable(200, 2)), WithLogger(quiet))
	require.ErrorIs(t, err, checkpoint.ErrCorrupt)

	c.Resume = cfg.CheckpointDir // every checkpoint of another setup: no fallback either
	c.BatchSize = 10
	logged.Reset()
	_, err = New(c, WithData(learnable(930, 1), learnable(200, 2)), WithLogger(textLogger(&logged)))
	require.ErrorContains(t, err, "different setup")
	require.NotContains(t, logged.String(), filepath.Base(older), "no fallback past the older checkpoint's setup")

	for _, p := range paths[:len(paths)-1] { // none usable: all named in the error
		require.NoError(t, os.WriteFile(p, []byte("garbage"), 0o644))
	}
	c.BatchSize = cfg.BatchSize
	_, err = New(c, WithData(learnable(930, 1), learnable(200, 2)), WithLogger(quiet))
	require.ErrorContains(t, err, "no checkpoint in")
	require.ErrorIs(t, err, checkpoint.ErrCorrupt)
	require.ErrorContains(t, err, filepath.Base(paths[0]))
}

// Preflight refuses outputs that cannot be written before any work, and
// creates the directories of those that can.
func TestPreflightRefusesUnwritableOutputs(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	free := func() (uint64, error) { return 1 << 40, nil }
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"out under a file", func(c *Config) { c.Out = filepath.Join(blocker, "w.safetensors") }, "--out: cannot create its directory"},
		{"out is a directory", func(c *Config) { c.Out = dir }, "--out " + `"` + dir + `" is a directory`},
		{"checkpoint dir under a file", func(c *Config) { c.CheckpointDir = filepath.Join(blocker, "ckpt") }, "--checkpoint-dir"},
		{"metrics under a file", func(c *Config) { c.MetricsFile = filepath.Join(blocker, "m.jsonl") }, "--metrics-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			err := Preflight(c, PreflightEnv{FreeMemory: free})
			require.ErrorIs(t, err, ErrPreflight)
			require.ErrorContains(t, err, tc.want)
			require.NoError(t, Preflight(c, PreflightEnv{Rank: 1, FreeMemory: free}), "only rank 0 writes the outputs")
		})
	}
	c := Default()
	c.Out = filepath.Join(dir, "a", "b", "w.safetensors")
	c.CheckpointDir = filepath.Join(dir, "c", "ckpt")
	c.MetricsFile = filepath.Join(dir, "d", "m.jsonl")
	require.NoError(t, Preflight(c, PreflightEnv{FreeMemory: free}))
	for _, d := range []string{filepath.Dir(c.Out), c.CheckpointDir, filepath.Dir(c.MetricsFile)} {
		entries, err := os.ReadDir(d)
		require.NoError(t, err, "the directory is made")
		require.Empty(t, entries, "the probe file is removed")
	}
}

// A read-only file system (root ignores permission bits, so a read-only
// tmpfs) and a full one are refused too.
func TestPreflightReadOnlyAndFullDisks(t *testing.T) {
	ro := faulttest.Tmpfs(t, "ro,size=1m")
	full := faulttest.Tmpfs(t, "size=64k")
	blocker := faulttest.Fill(t, full)
	free := func() (uint64, error) { return 1 << 40, nil }

	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want string
	}{
		{"read-only out", func(c *Config) { c.Out = filepath.Join(ro, "w.safetensors") }, "read-only file system"},
		{"read-only checkpoint dir", func(c *Config) { c.CheckpointDir = ro }, "read-only file system"},
		{"full metrics disk", func(c *Config) { c.MetricsFile = filepath.Join(full, "m.jsonl") }, "no space left"},
		{"full checkpoint disk", func(c *Config) { c.CheckpointDir = full }, "no space left"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.cfg(&c)
			err := Preflight(c, PreflightEnv{FreeMemory: free})
			require.ErrorIs(t, err, ErrPreflight)
			require.ErrorContains(t, err, tc.want)
		})
	}
	// Room for the probe but not for a checkpoint of this model.
	require.NoError(t, os.Truncate(blocker, 32<<10))
	c := Default()
	c.CheckpointDir = full
	err := Preflight(c, PreflightEnv{FreeMemory: free})
	require.ErrorIs(t, err, ErrPreflight)
	require.ErrorContains(t, err, "this run writes about")
}

// Sizes that no machine here can hold are refused with the estimate and
// what to change, before anything is allocated.
func TestPreflightRefusesRunsThatDoNotFit(t *testing.T) {
	free := func() (uint64, error) { return 24 << 30, nil }
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"huge hidden", func(c *Config) { c.Hidden = []int{MaxWidth} }, "smaller --hidden"},
		{"huge synthetic", func(c *Config) { c.Dataset, c.SyntheticSize = "synthetic", 1000000000 }, "smaller --synthetic-size"},
		{"huge batch", func(c *Config) { c.Model, c.BatchSize = "cnn", 1<<22 }, "smaller --batch-size"},
		{"huge eval batch", func(c *Config) { c.Model, c.EvalBatchSize = "cnn", 1<<22 }, "smaller --eval-batch-size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			require.NoError(t, c.Validate())
			err := Preflight(c, PreflightEnv{FreeMemory: free})
			require.ErrorIs(t, err, ErrPreflight)
			require.ErrorContains(t, err, "this machine has 24.0 GiB free")
			require.ErrorContains(t, err, tc.want)
		})
	}
	c := Default()
	require.NoError(t, Preflight(c, PreflightEnv{FreeMemory: free}))
	require.NoError(t, Preflight(c, PreflightEnv{FreeMemory: func() (uint64, error) { return 0, errors.New("unknown") }}), "unknown memory is not checked")
	// Ranks on one machine share its memory.
	c.Dataset, c.SyntheticSize = "synthetic", 4000000 // about 3.6 GB of data each
	require.NoError(t, Preflight(c, PreflightEnv{FreeMemory: free}))
	err := Preflight(c, PreflightEnv{FreeMemory: free, LocalRanks: 8})
	require.ErrorContains(t, err, "for the 8 ranks on this machine")
}

// Sizes beyond what can be built are refused by Validate, and a refused
// value is quoted by its start only.
func TestSizeLimits(t *testing.T) {
	long := strings.Repeat("x", 50<<20)
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Threads = 100000 }, "--threads 100000 is more than"},
		{func(c *Config) { c.AccumSteps = 1000000000 }, "--accum-steps 1000000000 is more than --batch-size 64"},
		{func(c *Config) { c.MicroBatches = 65 }, "--micro-batches 65"},
		{func(c *Config) { c.Hidden = make([]int, 26000000) }, "at most 256 layers"},
		{func(c *Config) { c.Hidden = []int{MaxWidth + 1} }, "--hidden width"},
		{func(c *Config) { c.SyntheticSize = MaxSyntheticSize + 1 }, "--synthetic-size"},
		{func(c *Config) { c.Epochs = MaxEpochs + 1 }, "--epochs"},
		{func(c *Config) { c.BatchSize = MaxBatch + 1 }, "--batch-size"},
		{func(c *Config) { c.BucketMB = 1e300 }, "--bucket-mb"},
		{func(c *Config) { c.PipelineStages = 1 << 20 }, "--pipeline-stages"},
		{func(c *Config) { c.Shares = make([]float64, MaxShares+1) }, "--shares"},
		{func(c *Config) { c.KeepCheckpoints = -1 }, "--keep-checkpoints"},
		{func(c *Config) { c.Model = long }, "--model \"xxxxxxxx"},
		{func(c *Config) { c.Balance = long }, "--balance"},
		{func(c *Config) { c.Out = long }, "--out"},
		{func(c *Config) { c.DataDir = "a\x00b" }, "NUL"},
	} {
		c := Default()
		tc.mutate(&c)
		err := c.Validate()
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, tc.want)
		require.Less(t, len(err.Error()), 400, "a refused value is not echoed whole")
	}
}

// A config file is bounded before it is parsed, and a parser's message is
// cut short.
func TestConfigFileBounds(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	require.NoError(t, os.WriteFile(big, []byte("hidden: ["+strings.Repeat("1,", 26000000)+"1]\n"), 0o644))
	c := Default()
	err := c.LoadFile(big)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "larger than 1048576 bytes")

	long := filepath.Join(dir, "long.yaml")
	require.NoError(t, os.WriteFile(long, []byte("model: "+strings.Repeat("y", 900000)+"\n"), 0o644))
	c = Default()
	require.NoError(t, c.LoadFile(long))
	err = c.Validate()
	require.ErrorContains(t, err, "900000 bytes")
	require.Less(t, len(err.Error()), 300)

	bad := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"hidden": ["`+strings.Repeat("z", 900000)+`"]}`), 0o644))
	err = c.LoadFile(bad)
	require.ErrorIs(t, err, ErrConfig)
	require.Less(t, len(err.Error()), 400)
}

// textLogger logs as text into b.
func textLogger(b *strings.Builder) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, nil))
}

// --out that cannot be written at the end although it could at the start
// (its directory replaced by a file during the run) does not drop the
// trained weights: they go to the checkpoint directory, or without one to
// the working directory, and the error says where.
func TestOutFallsBackWhenItCannotBeWritten(t *testing.T) {
	for _, withCkpt := range []bool{true, false} {
		dir := t.TempDir()
		t.Chdir(t.TempDir())
		cfg := smallConfig(t)
		cfg.Epochs = 1
		if !withCkpt {
			cfg.CheckpointDir = ""
		}
		cfg.Out = filepath.Join(dir, "sub", "w.safetensors")
		tr := newTrainer(t, cfg)
		require.NoError(t, os.Remove(filepath.Join(dir, "sub")))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "sub"), nil, 0o644))
		_, err := tr.Run(context.Background())
		want := filepath.Join(cfg.CheckpointDir, "w.safetensors")
		if !withCkpt {
			wd, _ := os.Getwd()
			want = filepath.Join(wd, "gotrain-rescued-w.safetensors")
		}
		require.ErrorContains(t, err, "the trained weights were saved to "+want+" instead")
		m, _, _, err := LoadModel(want)
		require.NoError(t, err)
		for i, p := range m.Params {
			require.Equal(t, tr.Model.Params[i].Data, p.Data, "the weights of the run")
		}
	}
}

// FuzzConfig: no bytes given as a --config file, YAML or JSON, make the
// parser, Validate or the memory estimate panic, and what Validate
// accepts can be estimated.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("model: cnn\nhidden: [64]\nlr: 0.01\nbatch_size: 32\n"), false)
	f.Add([]byte(`{"model":"mlp","epochs":3,"hidden":[512,256],"shares":[0.7,0.3]}`), true)
	f.Add([]byte("hidden: [100000000]\n"), false)
	f.Add([]byte("threads: 100000\naccum_steps: 1000000000\n"), false)
	f.Add([]byte("timeout: 10s\nsync: async\nmax_staleness: -1\n"), false)
	f.Add([]byte("&a [*a]"), false)
	f.Add([]byte(`{"hidden": [1e400]}`), true)
	f.Add([]byte(`{"timeout":"30s","rdzv_timeout":600000000000,"backend":"cpu","tls_cert":"c.pem"}`), true)
	f.Add([]byte("dataset: folder\nmean: [0.5, 0.4, 1e39]\nstd: [0.2, 0.2, 0]\n"), false)
	f.Add([]byte(`{"mean":[0.1,0.1,0.1,0.1,0.1],"std":[1,1,1,1,1]}`), true)
	f.Fuzz(func(t *testing.T, b []byte, isJSON bool) {
		if len(b) > MaxConfigBytes {
			return
		}
		c := Default()
		if err := c.parse(b, isJSON, "fuzz"); err != nil {
			require.ErrorIs(t, err, ErrConfig)
			require.Less(t, len(err.Error()), 400)
			return
		}
		if err := c.Validate(); err != nil {
			require.ErrorIs(t, err, ErrConfig)
			require.Less(t, len(err.Error()), 1000)
			return
		}
		fp, err := c.ModelSpec().Estimate()
		require.NoError(t, err)
		require.Greater(t, fp.Params, 0.0)
	})
}
