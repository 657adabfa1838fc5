// Package extest runs the examples as their users do, for their tests:
// it builds the example and gotrain into a temporary directory, runs them
// as processes (outside any job that started the test), and reads the
// accuracy they print and the weights they write.
package extest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/checkpoint"
)

// Bin is the directory of the built binaries: the example (named name in
// Main) and gotrain.
var Bin string

// Main builds the example in the current directory as name, and gotrain,
// then runs the tests; for TestMain.
func Main(m *testing.M, name string) {
	dir, err := os.MkdirTemp("", name+"-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	Bin = dir
	for _, b := range []struct{ out, pkg string }{{name, "."}, {"gotrain", "github.com/gotrain/gotrain/cmd/gotrain"}} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", b.pkg, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Path is the path of a built binary.
func Path(name string) string { return filepath.Join(Bin, name) }

// Run runs a built binary and returns its output (stdout and stderr); it
// fails the test when the binary fails. The environment is the test's
// without the variables of a job (MASTER_*, RANK, WORLD_SIZE, LOCAL_*), so
// that a run is one process unless a launcher starts it.
func Run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(Path(name), args...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "MASTER_") && k != "RANK" && k != "WORLD_SIZE" && !strings.HasPrefix(k, "LOCAL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out)
}

var accRE = regexp.MustCompile(`(?m)^(?:\[rank0\] )?(?:.*test accuracy|.*: accuracy) ([0-9.]+)%`)

// Accuracy is the test accuracy, in percent, that rank 0 (or the only
// process, or gotrain eval) printed in out.
func Accuracy(t *testing.T, out string) float64 {
	t.Helper()
	m := accRE.FindStringSubmatch(out)
	require.NotNil(t, m, "no accuracy in %q", out)
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

// MaxDiff is the largest difference between the weights of two files.
func MaxDiff(t *testing.T, a, b string) float64 {
	t.Helper()
	d, err := checkpoint.MaxAbsDiffFiles(a, b)
	require.NoError(t, err)
	return d
}
