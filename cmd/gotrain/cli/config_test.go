package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer"
)

// configValue is a value for a train flag other than its default: as the
// command line writes it, and as a config file does.
func configValue(t *testing.T, f *flag.Flag) (arg string, file any) {
	switch f.Name {
	case "hidden":
		return "3,4", []int{3, 4}
	case "shares":
		return "0.5,0.25", []float64{0.5, 0.25}
	case "mean", "std":
		return "0.5,0.25,0.125", []float32{0.5, 0.25, 0.125}
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		t.Fatalf("--%s: add a test value for its type %T to configValue", f.Name, f.Value)
	}
	switch v := g.Get().(type) {
	case bool:
		return fmt.Sprint(!v), !v
	case int, int64, uint64:
		return "7", 7
	case float64:
		return "0.375", 0.375
	case time.Duration:
		return "7s", "7s"
	case string:
		return "x" + v, "x" + v
	default:
		t.Fatalf("--%s: add a test value for its type %T to configValue", f.Name, v)
	}
	return "", nil
}

// TestEveryTrainFlagIsAConfigKey sets each flag of 'gotrain train' once on
// the command line and once in a config file (YAML and JSON), under the
// flag's name with _ for -, and wants the same Config from both: a flag
// added without a config key fails here.
func TestEveryTrainFlagIsAConfigKey(t *testing.T) {
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var probe trainer.Config = trainer.Default()
	trainFlags(fs, &probe)
	dir := t.TempDir()
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		n++
		arg, v := configValue(t, f)
		key := strings.ReplaceAll(f.Name, "-", "_")

		want := trainer.Default()
		fl := flag.NewFlagSet("train", flag.ContinueOnError)
		fl.SetOutput(io.Discard)
		trainFlags(fl, &want)
		require.NoError(t, fl.Parse([]string{"--" + f.Name + "=" + arg}), f.Name)
		require.NotEqual(t, trainer.Default(), want, "--%s %s should change the Config", f.Name, arg)

		b, err := json.Marshal(map[string]any{key: v})
		require.NoError(t, err)
		for _, name := range []string{"c.json", "c.yaml"} {
			path := filepath.Join(dir, name)
			// JSON is YAML too: the .yaml file goes through the YAML decoder.
			require.NoError(t, os.WriteFile(path, b, 0o600))
			got := trainer.Default()
			require.NoError(t, got.LoadFile(path), "--%s: config key %q in %s", f.Name, key, name)
			require.Equal(t, want, got, "--%s: config key %q in %s", f.Name, key, name)
		}
	})
	require.Greater(t, n, 50, "the train flags were not walked")
}

// TestConfigDurations: durations are strings in YAML and JSON; JSON also
// takes integers of nanoseconds (the config stored in checkpoints).
func TestConfigDurations(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body  string
		timeout     time.Duration
		rdzvTimeout time.Duration
		err         string
	}{
		{"c.json", `{"timeout": "30s", "rdzv_timeout": "5m"}`, 30 * time.Second, 5 * time.Minute, ""},
		{"c.json", `{"timeout": 600000000000}`, 10 * time.Minute, 5 * time.Minute, ""},
		{"c.yaml", "timeout: 30s\nrdzv_timeout: 2m\n", 30 * time.Second, 2 * time.Minute, ""},
		{"c.yaml", `{"timeout": "1m30s"}`, 90 * time.Second, 5 * time.Minute, ""},
		{"c.json", `{"timeout": "soon"}`, 0, 0, `"soon" is not a duration`},
		{"c.json", `{"timeout": true}`, 0, 0, "is not a duration"},
	} {
		path := filepath.Join(dir, tc.name)
		require.NoError(t, os.WriteFile(path, []byte(tc.body), 0o600))
		cfg := trainer.Default()
		err := cfg.LoadFile(path)
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err, tc.body)
			require.ErrorIs(t, err, trainer.ErrConfig)
			continue
		}
		require.NoError(t, err, tc.body)
		require.Equal(t, tc.timeout, cfg.Timeout, tc.body)
		require.Equal(t, tc.rdzvTimeout, cfg.RdzvTimeout, tc.body)
	}
	// The command line still takes --timeout 10m, over the file.
	path := filepath.Join(dir, "c.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"timeout": "30s", "backend": "cpu"}`), 0o600))
	cfg, err := parseTrain("train", []string{"--config", path, "--timeout", "10m", "--dataset", "synthetic"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, 10*time.Minute, cfg.Timeout)
	require.Equal(t, "cpu", cfg.Backend)
}
