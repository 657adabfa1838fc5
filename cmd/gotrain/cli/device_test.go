package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
)

// TestDeviceFlag: --device host trains the CNN through the device
// executor (the GPU's kernels, compiled for the CPU) and writes the same
// weights as --device cpu; --device gpu in a build without GPU support
// says how to get one; a bad value is a usage error.
func TestDeviceFlag(t *testing.T) {
	dir := t.TempDir()
	common := []string{"train", "--model", "cnn", "--dataset", "synthetic", "--synthetic-size", "300", "--hidden", "16",
		"--batch-size", "50", "--epochs", "1", "--optimizer", "sgd", "--threads", "1"}
	outs := map[string]string{}
	for _, d := range []string{"cpu", "host"} {
		outs[d] = filepath.Join(dir, d+".safetensors")
		_, stderr, err := gotrain(t, append(common, "--device", d, "--out", outs[d])...)
		require.NoError(t, err, stderr)
		if d == "host" {
			require.Contains(t, stderr, "training on a device")
		}
	}
	cpu, host := weights(t, outs["cpu"]), weights(t, outs["host"])
	require.Len(t, host, len(cpu))
	for name, want := range cpu {
		require.InDeltaSlice(t, want, host[name], 1e-5, "tensor %s", name)
	}

	// Without the prefetcher and its page-locked slots: the same weights.
	plain := filepath.Join(dir, "plain.safetensors")
	_, stderr, err := gotrain(t, append(common, "--device", "host", "--prefetch=false", "--pin-memory=false", "--out", plain)...)
	require.NoError(t, err, stderr)
	require.Equal(t, host, weights(t, plain), "with --prefetch=false --pin-memory=false")

	_, stderr, err = gotrain(t, append(common, "--device", "host", "--precision", "bf16")...)
	require.NoError(t, err, stderr)
	require.Contains(t, stderr, "precision=bf16")

	_, stderr, err = gotrain(t, append(common, "--device", "gpu")...)
	require.Error(t, err)
	require.Contains(t, stderr, "--device gpu: this gotrain was built without GPU support: build it with 'make build-gpu'")

	_, stderr, err = gotrain(t, append(common, "--device", "tpu")...)
	require.Error(t, err)
	require.Contains(t, stderr, `--device "tpu" is not a device`)
}

// weights reads a safetensors file's tensors as float32s, by name.
func weights(t *testing.T, path string) map[string][]float32 {
	t.Helper()
	f, err := checkpoint.ReadFile(path)
	require.NoError(t, err)
	out := map[string][]float32{}
	for _, tn := range f.Tensors {
		v, err := tn.Float32s()
		require.NoError(t, err, "tensor %s", tn.Name)
		out[tn.Name] = v
	}
	return out
}

// TestBenchTrainOnADevice: 'bench train --device host' (batches decoded
// once, uploaded each step) trains on the same batches as the CPU's bench
// and ends with its loss; the record names the device.
func TestBenchTrainOnADevice(t *testing.T) {
	losses := map[string]float64{}
	for _, d := range []string{"cpu", "host", "host --pin-memory=false"} {
		args := append([]string{"bench", "train", "--device"}, strings.Fields(d)...)
		stdout, stderr, err := gotrain(t, append(args, "--steps", "40", "--warmup", "3", "--optimizer", "sgd", "--threads", "1")...)
		require.NoError(t, err, stderr)
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		var rec struct {
			Device string  `json:"device"`
			Loss   float64 `json:"loss"`
			Pinned bool    `json:"pinned_memory"`
		}
		require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &rec))
		require.Equal(t, strings.Fields(d)[0], rec.Device)
		require.False(t, rec.Pinned, "the host device has no page-locked memory")
		losses[d] = rec.Loss
	}
	t.Logf("loss after 43 steps: cpu %v, host device %v", losses["cpu"], losses["host"])
	require.InDelta(t, losses["cpu"], losses["host"], 1e-4)
	require.Equal(t, losses["host"], losses["host --pin-memory=false"])

	// --profile: where the time goes, op by op, and a record that says so.
	stdout, stderr, err := gotrain(t, "bench", "train", "--device", "host", "--steps", "3", "--warmup", "1", "--profile")
	require.NoError(t, err, stderr)
	require.Contains(t, stderr, "where the time of 3 steps went on host")
	require.Regexp(t, `(?m)^ *[0-9.]+% +3 .* Linear \[\[128 784\] \[256 784\] \[256\]\]$`, stderr)
	require.Regexp(t, `(?m)^ *[0-9.]+% +3 .* optimizer adam, 4 tensors$`, stderr)
	require.Contains(t, stdout, `"profiled":true`)
	_, stderr, err = gotrain(t, "bench", "train", "--profile")
	require.Error(t, err)
	require.Contains(t, stderr, "--profile times a device's ops: add --device gpu (or host)")
}
