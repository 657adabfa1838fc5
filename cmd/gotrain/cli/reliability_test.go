package cli

// The reliability suite: the faults and hostile inputs an operator meets,
// run as real processes on real mounts. Cases that take seconds run in
// make test; those that take minutes are TestSoak* and run with
// GOTRAIN_SOAK=1 (make soak).

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/faulttest"
)

// requireNoCrash checks that a process said what went wrong as an error,
// not as a Go runtime crash.
func requireNoCrash(t *testing.T, stderr string) {
	t.Helper()
	for _, bad := range []string{"panic:", "fatal error:", "goroutine ", "runtime: out of memory", "SIGSEGV"} {
		require.NotContains(t, stderr, bad)
	}
}

// Outputs that cannot be written and sizes that cannot be built are refused
// within 3 s of the start, before any training, with the reason.
func TestRefusedBeforeAnyWork(t *testing.T) {
	ro := faulttest.Tmpfs(t, "ro,size=1m")
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	bigConfig := filepath.Join(dir, "big.yaml")
	require.NoError(t, os.WriteFile(bigConfig, []byte("hidden: ["+strings.Repeat("1,", 1<<20)+"1]\n"), 0o644))
	longValue := filepath.Join(dir, "long.yaml")
	require.NoError(t, os.WriteFile(longValue, []byte("model: "+strings.Repeat("m", 1<<19)+"\n"), 0o644))
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"read-only --out", []string{"--out", filepath.Join(ro, "w.safetensors")}, 1, "read-only file system"},
		{"read-only --checkpoint-dir", []string{"--checkpoint-dir", filepath.Join(ro, "ckpt")}, 1, "read-only file system"},
		{"read-only --metrics-file", []string{"--metrics-file", filepath.Join(ro, "m.jsonl")}, 1, "read-only file system"},
		{"--out under a file", []string{"--out", filepath.Join(blocker, "w.safetensors")}, 1, "not a directory"},
		{"--hidden 100000000", []string{"--hidden", "100000000"}, 2, "--hidden width 100000000 must be at most"},
		{"--hidden 10000000", []string{"--hidden", "10000000"}, 1, "use smaller --hidden widths"},
		{"--synthetic-size 1000000000", []string{"--dataset", "synthetic", "--synthetic-size", "1000000000"}, 1, "use a smaller --synthetic-size"},
		{"--threads 100000", []string{"--threads", "100000"}, 2, "--threads 100000 is more than"},
		{"--accum-steps 1000000000", []string{"--accum-steps", "1000000000"}, 2, "--accum-steps 1000000000 is more than --batch-size 64"},
		{"--batch-size 10000000", []string{"--model", "cnn", "--batch-size", "10000000"}, 1, "use a smaller --batch-size"},
		{"a config of a million widths", []string{"--config", bigConfig}, 2, "larger than 1048576 bytes"},
		{"a long config value", []string{"--config", longValue}, 2, "(524288 bytes)"},
		{"a long flag value", []string{"--model", strings.Repeat("m", 1<<16)}, 2, "arguments are at most"},
		{"a long list", []string{"--hidden", strings.Repeat("1,", 3000) + "1"}, 2, "at most 256 layers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			out, stderr, err := gotrain(t, append([]string{"train", "--dataset", "mnist", "--epochs", "2"}, tc.args...)...)
			took := time.Since(start)
			var ee *exec.ExitError
			require.True(t, errors.As(err, &ee), "%v: %s", err, stderr)
			require.Equal(t, tc.code, ee.ExitCode(), stderr)
			require.Contains(t, stderr, tc.want)
			require.NotContains(t, out, "test accuracy")
			require.NotContains(t, stderr, "msg=training", "refused before training")
			requireNoCrash(t, stderr)
			require.Less(t, took, 3*time.Second)
			require.Less(t, len(stderr), 8<<10, "a refused value is not echoed whole")
		})
	}
}

// A disk that fills up under --metrics-file is reported when it happens;
// training goes on to the end; the records that could not be written are
// counted in the summary and the exit status says so. The weights are
// saved.
func TestMetricsFullDiskIsReportedWhenItHappens(t *testing.T) {
	disk := faulttest.Tmpfs(t, "size=64k")
	require.NoError(t, os.WriteFile(filepath.Join(disk, "blocker"), make([]byte, 56<<10), 0o644)) // room for a few records
	w := filepath.Join(t.TempDir(), "w.safetensors")
	out, stderr, err := gotrain(t, "train", "--dataset", "synthetic", "--synthetic-size", "3000", "--hidden", "16", "--epochs", "1",
		"--batch-size", "10", "--log-every", "1", "--threads", "1", "--metrics-file", filepath.Join(disk, "m.jsonl"), "--out", w)
	require.Error(t, err, stderr)
	requireNoCrash(t, stderr)
	warn := strings.Index(stderr, "--metrics-file cannot be written; training goes on")
	require.GreaterOrEqual(t, warn, 0, stderr)
	require.Contains(t, stderr[warn:], "no space left on device")
	require.Greater(t, strings.Index(stderr, "msg=summary"), warn, "reported during the run, not at its end")
	require.Regexp(t, `test accuracy .*; metrics file: \d+ write failures, 0 records written late, \d+ lost`, out)
	require.Contains(t, stderr, "records could not be written to")
	_, err = checkpoint.ReadFile(w)
	require.NoError(t, err, "the weights are saved")
	b, err := os.ReadFile(filepath.Join(disk, "m.jsonl"))
	require.NoError(t, err)
	require.NotEmpty(t, b)
	require.True(t, strings.HasSuffix(string(b), "\n"), "whole records only")
}

// --resume DIR whose newest checkpoint is truncated goes on from the one
// before, naming the one it skipped.
func TestResumeSkipsACorruptNewestCheckpoint(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	common := []string{"train", "--dataset", "synthetic", "--synthetic-size", "600", "--hidden", "32", "--batch-size", "50",
		"--epochs", "2", "--threads", "1", "--checkpoint-dir", ckpt, "--checkpoint-every", "5", "--keep-checkpoints", "0"}
	_, stderr, err := gotrain(t, append(common, "--max-steps", "12")...)
	require.NoError(t, err, stderr)
	paths, err := (&checkpoint.Manager{Dir: ckpt}).List()
	require.NoError(t, err)
	require.Equal(t, []string{checkpoint.FileName(5), checkpoint.FileName(10), checkpoint.FileName(12)}, baseNames(paths))
	raw, err := os.ReadFile(paths[2])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(paths[2], raw[:len(raw)-100], 0o644))

	out, stderr, err := gotrain(t, append(common, "--resume", ckpt)...)
	require.NoError(t, err, stderr)
	require.Contains(t, out, "test accuracy")
	require.Contains(t, stderr, "checkpoint unusable, trying the one before it")
	require.Contains(t, stderr, checkpoint.FileName(12))
	require.Regexp(t, `msg=resumed checkpoint=\S*`+checkpoint.FileName(10)+` epoch=1 step=10`, stderr)

	require.NoError(t, os.WriteFile(paths[2], raw[:len(raw)-100], 0o644)) // the resumed run wrote it anew at its epoch's end
	_, stderr, err = gotrain(t, append(common, "--resume", paths[2])...)
	require.Error(t, err, "a file named explicitly fails hard")
	require.Contains(t, stderr, "corrupt safetensors file")
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}
