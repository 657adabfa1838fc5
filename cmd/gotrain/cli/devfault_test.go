package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/device"
)

// faultRun runs gotrain train on the host device with GOTRAIN_HOST_FAULT
// set to rule, checkpointing every 5 steps into a new directory; it
// returns the exit status, stderr and the directory.
func faultRun(t *testing.T, rule string) (code int, stderr, dir string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "ckpt")
	cmd := exec.Command(bin, "train", "--dataset", "synthetic", "--synthetic-size", "600", "--hidden", "32", "--batch-size", "50",
		"--epochs", "2", "--dropout", "0", "--threads", "1", "--device", "host", "--checkpoint-dir", dir, "--checkpoint-every", "5")
	cmd.Env = append(os.Environ(), device.FaultEnv+"="+rule)
	var e strings.Builder
	cmd.Stderr = &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), e.String(), dir
	}
	require.NoError(t, err)
	return 0, e.String(), dir
}

// TestDeviceFaultsExitCleanly: each fault of the host device
// (GOTRAIN_HOST_FAULT) stops gotrain train with exit status 1 and one
// error line naming the device, the op and the fault, no panic and no
// goroutine dump, and leaves the newest checkpoint, written before the
// fault, loadable by gotrain eval.
func TestDeviceFaultsExitCleanly(t *testing.T) {
	// 24 steps (12 an epoch), the evaluation program compiled at step 12.
	// Its allocations are the run's last: find the last one, the largest
	// alloc:N that still stops the run.
	lo, hi := 1, 1000 // alloc:lo fails, alloc:hi does not
	code, _, _ := faultRun(t, fmt.Sprintf("alloc:%d", hi))
	require.Equal(t, 0, code, "a run makes fewer than %d allocations", hi)
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if code, _, _ := faultRun(t, fmt.Sprintf("alloc:%d", mid)); code != 0 {
			lo = mid
		} else {
			hi = mid
		}
	}
	lastAlloc := fmt.Sprintf("alloc:%d", lo)

	for _, tc := range []struct {
		rule   string
		want   string // the error line, as a regular expression
		newest int    // the step of the newest checkpoint
	}{
		{"launch:relu:8", `^gotrain train: error: device host: running a program: executor: ReLU: launching kernel relu: injected launch failure \(fault launch:relu:8\)$`, 5},
		{"sticky:relu:8", `^gotrain train: error: device host: running a program: reading 1 values: injected illegal memory access in launch \d+ \(kernel relu\), reported by every call since \(fault sticky:relu:8\)$`, 5},
		{lastAlloc, `^gotrain train: error: device host: compiling a program: executor: .*: allocating \d+ bytes: injected out of memory \(fault ` + lastAlloc + `\)$`, 10},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			code, stderr, dir := faultRun(t, tc.rule)
			require.Equal(t, 1, code, stderr)
			require.NotRegexp(t, `(?m)^(panic|fatal error|goroutine \d+ \[)`, stderr)
			var errLines []string
			for _, l := range strings.Split(stderr, "\n") {
				if strings.Contains(l, "error") {
					errLines = append(errLines, l)
				}
			}
			require.Len(t, errLines, 1, stderr)
			require.Regexp(t, regexp.MustCompile(tc.want), errLines[0])
			t.Log(errLines[0])

			names, err := filepath.Glob(filepath.Join(dir, "ckpt-*.safetensors"))
			require.NoError(t, err)
			require.NotEmpty(t, names, "a checkpoint before the fault")
			sort.Strings(names)
			require.Equal(t, fmt.Sprintf("ckpt-%010d.safetensors", tc.newest), filepath.Base(names[len(names)-1]))
			out, stderr, err := gotrain(t, "eval", "--checkpoint", dir)
			require.NoError(t, err, stderr)
			require.Contains(t, out, "accuracy")
		})
	}
}
