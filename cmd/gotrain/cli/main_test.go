package cli

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
	"github.com/gotrain/gotrain/trainer/data"
)

var bin string // the gotrain binary built for the end-to-end tests

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gotrain-test")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "gotrain")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runIn(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage"},
		{[]string{"fly"}, "unknown command"},
		{[]string{"train", "--no-such-flag"}, "no-such-flag"},
		{[]string{"train", "--epochs", "two"}, "epochs"},
		{[]string{"train", "--model", "densenet"}, "--model"},
		{[]string{"train", "--hidden", "256,x"}, "positive integers"},
		{[]string{"train", "--lr", "-1"}, "--lr"},
		{[]string{"train", "--dataset", "cifar10"}, "--dataset"},
		{[]string{"train", "stray"}, "unexpected argument"},
		{[]string{"train", "--config", "/nonexistent/c.yaml"}, "--config"},
		{[]string{"eval"}, "--checkpoint"},
		{[]string{"bench"}, "bench train"},
		{[]string{"bench", "train", "--steps", "0"}, "--steps"},
	} {
		code, _, stderr := runIn(t, tc.args...)
		require.Equal(t, 2, code, "%v: %s", tc.args, stderr)
		require.Contains(t, stderr, tc.want, "%v", tc.args)
	}
}

func TestVersionAndHelp(t *testing.T) {
	code, out, _ := runIn(t, "version")
	require.Equal(t, 0, code)
	require.Contains(t, out, "gotrain")
	require.Contains(t, out, "BLAS")
	code, _, errOut := runIn(t, "train", "-h")
	require.Equal(t, 0, code)
	require.Contains(t, errOut, "-checkpoint-dir")
}

func TestMissingDatasetSaysHowToGetIt(t *testing.T) {
	code, _, stderr := runIn(t, "train", "--dataset", "fashion-mnist", "--data-dir", t.TempDir())
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "train-images-idx3-ubyte")
}

func readRecords(t *testing.T, path string) map[string][]map[string]any {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	out := map[string][]map[string]any{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec), "line %q", sc.Text())
		out[rec["kind"].(string)] = append(out[rec["kind"].(string)], rec)
	}
	return out
}

func gotrain(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return o.String(), e.String(), err
}

// TestTrainEvalResumeEndToEnd drives the binary: metrics records, final
// weights, eval of them, and a run stopped and resumed that ends with the
// same weights as one run straight through.
func TestTrainEvalResumeEndToEnd(t *testing.T) {
	dir := t.TempDir()
	common := []string{"train", "--dataset", "synthetic", "--synthetic-size", "600", "--hidden", "32", "--batch-size", "50",
		"--epochs", "2", "--log-every", "4", "--dropout", "0.1", "--threads", "1"}
	straight := filepath.Join(dir, "straight.safetensors")
	metricsPath := filepath.Join(dir, "m.jsonl")
	out, stderr, err := gotrain(t, append(common, "--out", straight, "--metrics-file", metricsPath)...)
	require.NoError(t, err, stderr)
	require.Contains(t, out, "test accuracy")

	recs := readRecords(t, metricsPath)
	require.Len(t, recs["eval"], 2)
	require.Len(t, recs["summary"], 1)
	require.Len(t, recs["train"], 6) // 24 steps, a record every 4
	for _, k := range []string{"epoch", "step", "loss", "lr", "samples_per_sec"} {
		require.Contains(t, recs["train"][0], k)
	}
	for _, k := range []string{"test_accuracy", "train_samples_per_sec", "wall_seconds", "peak_rss_bytes"} {
		require.Contains(t, recs["summary"][0], k)
	}
	require.Greater(t, recs["summary"][0]["peak_rss_bytes"].(float64), 1e6)

	evalOut, stderr, err := gotrain(t, "eval", "--checkpoint", straight)
	require.NoError(t, err, stderr)
	acc := recs["summary"][0]["test_accuracy"].(float64)
	require.Contains(t, evalOut, fmt.Sprintf("accuracy %.2f%%", 100*acc))

	ckdir := filepath.Join(dir, "ckpt")
	_, stderr, err = gotrain(t, append(common, "--max-steps", "17", "--checkpoint-dir", ckdir)...)
	require.NoError(t, err, stderr)
	resumed := filepath.Join(dir, "resumed.safetensors")
	_, stderr, err = gotrain(t, append(common, "--resume", ckdir, "--checkpoint-dir", ckdir, "--out", resumed)...)
	require.NoError(t, err, stderr)
	a, err := checkpoint.ReadFile(straight)
	require.NoError(t, err)
	b, err := checkpoint.ReadFile(resumed)
	require.NoError(t, err)
	require.Equal(t, len(a.Tensors), len(b.Tensors))
	for i := range a.Tensors {
		require.Equal(t, a.Tensors[i].Name, b.Tensors[i].Name)
		require.Equal(t, a.Tensors[i].Data, b.Tensors[i].Data, "tensor %s differs after resume", a.Tensors[i].Name)
	}
}

// --cpu-profile writes a gzipped pprof CPU profile; a path that cannot be
// written is an error naming the flag.
func TestCPUProfile(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "cpu.pprof")
	_, stderr, err := gotrain(t, "train", "--dataset", "synthetic", "--synthetic-size", "2000", "--hidden", "32", "--epochs", "1", "--threads", "1", "--cpu-profile", prof)
	require.NoError(t, err, stderr)
	f, err := os.Open(prof)
	require.NoError(t, err)
	defer f.Close()
	z, err := gzip.NewReader(f)
	require.NoError(t, err, "a pprof profile is gzipped")
	raw, err := io.ReadAll(z)
	require.NoError(t, err)
	for _, s := range []string{"samples", "cpu", "nanoseconds"} {
		require.Contains(t, string(raw), s, "the profile's sample types")
	}
	_, stderr, err = gotrain(t, "train", "--dataset", "synthetic", "--synthetic-size", "200", "--epochs", "1", "--cpu-profile", filepath.Join(dir, "no", "such", "dir", "p"))
	require.Error(t, err)
	require.Contains(t, stderr, "--cpu-profile")
}

func TestCorruptCheckpointIsAClearError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.safetensors")
	require.NoError(t, os.WriteFile(p, []byte("\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"), 0o644))
	_, stderr, err := gotrain(t, "eval", "--checkpoint", p)
	require.Error(t, err)
	require.Equal(t, 1, err.(*exec.ExitError).ExitCode())
	require.Contains(t, stderr, "bad.safetensors")
	require.NotContains(t, stderr, "panic")
}

// TestInterruptCheckpointsAndResumes sends SIGINT to a running training
// and resumes from the checkpoint it leaves.
func TestInterruptCheckpointsAndResumes(t *testing.T) {
	dir := t.TempDir()
	ckdir := filepath.Join(dir, "ckpt")
	args := []string{"train", "--dataset", "synthetic", "--synthetic-size", "200000", "--epochs", "1", "--batch-size", "32",
		"--threads", "1", "--checkpoint-dir", ckdir}
	cmd := exec.Command(bin, args...)
	var e bytes.Buffer
	cmd.Stderr = &e
	require.NoError(t, cmd.Start())
	// Wait until it trains, then interrupt it.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(e.String(), "msg=training") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err := cmd.Wait()
	require.Error(t, err, "an interrupted run exits non-zero")
	require.Contains(t, e.String(), "--resume")
	latest, err := checkpoint.Latest(ckdir)
	require.NoError(t, err)
	step, ok := checkpoint.ParseStep(latest)
	require.True(t, ok)
	require.Greater(t, step, int64(0))
	// Resume it for a few more steps.
	_, stderr, err := gotrain(t, append(args, "--resume", ckdir, "--max-steps", fmt.Sprint(step+3))...)
	require.NoError(t, err, stderr)
	latest2, err := checkpoint.Latest(ckdir)
	require.NoError(t, err)
	step2, _ := checkpoint.ParseStep(latest2)
	require.Equal(t, step+3, step2)
}

// TestRealMNISTAccuracy is the acceptance run: defaults, 2 epochs.
func TestRealMNISTAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("trains on real MNIST for 2 epochs; skipped with -short")
	}
	if _, err := data.DefaultDir("mnist"); err != nil {
		t.Skipf("MNIST is not available (%v): run 'make data'", err)
	}
	for _, tc := range []struct {
		model string
		min   float64
	}{{"mlp", 0.975}, {"cnn", 0.985}} {
		t.Run(tc.model, func(t *testing.T) {
			mf := filepath.Join(t.TempDir(), "m.jsonl")
			_, stderr, err := gotrain(t, "train", "--model", tc.model, "--metrics-file", mf)
			require.NoError(t, err, stderr)
			sum := readRecords(t, mf)["summary"][0]
			t.Logf("%s: test accuracy %.4f, %.0f samples/s, peak RSS %.0f MB", tc.model, sum["test_accuracy"], sum["train_samples_per_sec"], sum["peak_rss_bytes"].(float64)/(1<<20))
			require.GreaterOrEqual(t, sum["test_accuracy"].(float64), tc.min)
			if tc.model == "mlp" {
				require.Less(t, sum["peak_rss_bytes"].(float64), float64(400<<20), "make train must stay under 400 MB")
			}
		})
	}
}

// TestMonitoringCommands: Prometheus metrics during a run, the device list
// (this machine has no NVIDIA driver: it says so), and a plot of the run.
func TestMonitoringCommands(t *testing.T) {
	dir := t.TempDir()
	mf := filepath.Join(dir, "run.jsonl")
	cmd := exec.Command(bin, "train", "--dataset", "synthetic", "--synthetic-size", "100000", "--epochs", "2", "--max-steps", "3000",
		"--metrics-addr", "127.0.0.1:0", "--log-every", "20", "--metrics-file", mf, "--threads", "1")
	var e bytes.Buffer
	cmd.Stderr = &e
	require.NoError(t, cmd.Start())
	defer cmd.Process.Kill()
	var url string
	deadline := time.Now().Add(30 * time.Second)
	for url == "" && time.Now().Before(deadline) {
		if i := strings.Index(e.String(), "url=http://"); i >= 0 {
			url = strings.Fields(e.String()[i+4:])[0]
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.NotEmpty(t, url, e.String())
	var body string
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		if strings.Contains(body, "gotrain_train_loss{") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.Contains(t, body, `gotrain_train_loss{rank="0",world_size="1"}`)
	require.Contains(t, body, "gotrain_process_resident_memory_bytes")
	require.NoError(t, cmd.Wait(), e.String())

	out, _, err := gotrain(t, "devices")
	require.NoError(t, err)
	require.Contains(t, out, "CPU:")
	require.True(t, strings.Contains(out, "no NVIDIA driver found") || strings.Contains(out, "GPU"), out)
	require.Contains(t, out, "compute: the CPU build")

	png := filepath.Join(dir, "curves.png")
	_, stderr, err := gotrain(t, "plot", mf, "-o", png)
	require.NoError(t, err, stderr)
	f, err := os.Open(png)
	require.NoError(t, err)
	defer f.Close()
	img, err := pngDecode(f)
	require.NoError(t, err)
	require.Greater(t, img.Bounds().Dx(), 100)
}

var pngDecode = png.Decode
