//go:build unix

package checkpoint

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// envCrashDir tells a re-executed test binary to act as the crash helper.
const envCrashDir = "GOTRAIN_CHECKPOINT_CRASH_DIR"

const crashWeights = 1 << 20 // 4 MiB of F32 per save

// crashVersion checks that path is a complete checkpoint written by the
// crash helper and returns its version.
func crashVersion(t *testing.T, path string) int {
	t.Helper()
	f, err := ReadFile(path)
	require.NoError(t, err, "target must be absent or fully valid")
	v, err := strconv.Atoi(f.Metadata["version"])
	require.NoError(t, err)
	w, ok := f.Get("w")
	require.True(t, ok)
	ws, err := w.Float32s()
	require.NoError(t, err)
	require.Len(t, ws, crashWeights)
	for i, x := range ws {
		if x != float32(v) { // a torn write would show old or zero bytes here
			require.Equal(t, float32(v), x, "weight %d of version %d", i, v)
		}
	}
	step, ok := f.Get("step")
	require.True(t, ok)
	s, err := step.Int64s()
	require.NoError(t, err)
	require.Equal(t, []int64{int64(v)}, s)
	return v
}

// TestHelperProcess is the child of TestCrashDuringSave: it saves ever newer
// versions of one checkpoint until it is killed. In a normal run it skips.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(envCrashDir)
	if dir == "" {
		t.Skip("helper process for TestCrashDuringSave; runs only when re-executed by it")
	}
	target := filepath.Join(dir, FileName(1))
	version := 0
	if f, err := ReadFile(target); err == nil {
		version, _ = strconv.Atoi(f.Metadata["version"])
	}
	fmt.Println("ready")
	for {
		version++
		if err := WriteFileAtomic(target, bigFile(crashWeights, float32(version), strconv.Itoa(version))); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(3)
		}
		fmt.Println("saved", version)
	}
}

// TestCrashDuringSave SIGKILLs a process that is saving checkpoints in a
// loop at random moments, and checks after every kill that the target is
// either absent (nothing saved yet) or a complete checkpoint no older than
// the last one seen.
func TestCrashDuringSave(t *testing.T) {
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	dir := t.TempDir()
	target := filepath.Join(dir, FileName(1))
	lastVersion := 0
	staleSeen := map[string]bool{}
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), envCrashDir+"="+dir)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())

		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		waitFor := func(prefix string) {
			deadline := time.After(60 * time.Second)
			for {
				select {
				case l, ok := <-lines:
					require.True(t, ok, "helper exited before printing %q", prefix)
					if strings.HasPrefix(l, prefix) {
						return
					}
				case <-deadline:
					_ = cmd.Process.Kill()
					t.Fatalf("helper did not print %q within 60s", prefix)
				}
			}
		}
		waitFor("ready")
		if round == rounds-1 {
			waitFor("saved") // make sure at least one save completes overall
		}
		time.Sleep(time.Duration(rand.IntN(150_000)) * time.Microsecond)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		for range lines { // drain until the dead child's stdout closes
		}
		err = cmd.Wait()
		require.Error(t, err)
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		require.True(t, ok)
		require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL,
			"helper must die from our SIGKILL, not exit by itself: %v", cmd.ProcessState)

		for _, name := range dirNames(t, dir) {
			if name == FileName(1) {
				continue
			}
			ok, _ := filepath.Match(stalePattern, name)
			require.True(t, ok, "unexpected file %s: only the target and temp files may exist", name)
			staleSeen[name] = true
		}
		if _, err := os.Stat(target); os.IsNotExist(err) {
			require.Zero(t, lastVersion, "round %d: a saved checkpoint disappeared", round)
			continue
		}
		v := crashVersion(t, target)
		require.GreaterOrEqual(t, v, lastVersion, "round %d: checkpoint went back in time", round)
		lastVersion = v
	}
	t.Logf("%d rounds, final version %d, %d stale temp files seen", rounds, lastVersion, len(staleSeen))
	require.Positive(t, lastVersion, "the helper never completed a save")

	// Opening a Manager cleans up the temporaries of killed saves.
	m, err := Open(dir, 0)
	require.NoError(t, err)
	require.Equal(t, []string{FileName(1)}, dirNames(t, dir))
	paths, err := m.List()
	require.NoError(t, err)
	require.Equal(t, []string{target}, paths)
}
