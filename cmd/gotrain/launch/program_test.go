package launch

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// writeScript writes an executable shell script named name into dir.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755))
	return p
}

// runProgram runs the launcher with a gotrain (exe) that must not be
// started: the words after "--" name another program.
func runProgram(t *testing.T, exe string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr syncBuf
	code := Run(context.Background(), exe, args, &stdout, &stderr, func(string) string { return "" })
	return code, stdout.String(), stderr.String()
}

// TestProgramGetsTheJobEnvironment: a program after "--" (a script by its
// path, sh by its name in PATH) runs on every rank with the job's
// variables and its own arguments, its output prefixed as gotrain's is.
func TestProgramGetsTheJobEnvironment(t *testing.T) {
	script := writeScript(t, t.TempDir(), "myprog", `
for k in RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK MASTER_ADDR MASTER_PORT GOTRAIN_JOB_SECRET TORCHELASTIC_RESTART_COUNT; do
  eval "echo $k=\${$k}"
done
echo "ARGS=$*"
echo "to stderr from $RANK" >&2
`)
	for _, cmd := range [][]string{
		{script, "--lr", "0.1", "two words"},
		{"sh", script, "--lr", "0.1", "two words"},
	} {
		args := append([]string{"--standalone", "--nproc-per-node", "2", "--"}, cmd...)
		code, stdout, stderr := runProgram(t, "/nonexistent/gotrain", args...)
		require.Equal(t, 0, code, "%v: stderr: %s", cmd, stderr)
		env0, env1 := envOf(t, stdout, 0), envOf(t, stdout, 1)
		for r, env := range []map[string]string{env0, env1} {
			require.Equal(t, strconv.Itoa(r), env[EnvRank], "%v", cmd)
			require.Equal(t, strconv.Itoa(r), env[EnvLocalRank], "%v", cmd)
			require.Equal(t, "2", env[EnvWorldSize], "%v", cmd)
			require.Equal(t, "2", env[EnvLocalWorldSize], "%v", cmd)
			require.Equal(t, "0", env[EnvGroupRank], "%v", cmd)
			require.Equal(t, DefaultMasterAddr, env[EnvMasterAddr], "%v", cmd)
			require.Equal(t, "0", env[EnvRestartCount], "%v", cmd)
			require.Equal(t, "--lr 0.1 two words", env["ARGS"], "%v", cmd)
			require.Contains(t, stderr, "[rank"+strconv.Itoa(r)+"] to stderr from "+strconv.Itoa(r)+"\n", "%v", cmd)
		}
		port, err := strconv.Atoi(env0[EnvMasterPort])
		require.NoError(t, err, "%v", cmd)
		require.Positive(t, port)
		require.Equal(t, env0[EnvMasterPort], env1[EnvMasterPort])
		require.Len(t, env0[EnvSecret], 64, "a fresh 32-byte secret, in hex")
		require.Equal(t, env0[EnvSecret], env1[EnvSecret], "one secret for the job")
		require.Contains(t, stderr, "starting 2 worker(s) of ")
		require.NotContains(t, stdout+stderr, "/nonexistent/gotrain")
	}
}

// TestProgramFailureStopsTheJob: a program's exit status ends the job as a
// gotrain worker's does, and --max-restarts starts it again.
func TestProgramFailureStopsTheJob(t *testing.T) {
	code, _, stderr := runProgram(t, "/nonexistent/gotrain", "--nproc-per-node", "2", "--grace", "5s", "--max-restarts", "1", "--",
		"/bin/sh", "-c", `if [ "$RANK" = 1 ]; then exit 3; fi; exec sleep 30`)
	require.Equal(t, 3, code, stderr)
	require.Contains(t, stderr, "rank 1 (local 1")
	require.Contains(t, stderr, "exited with status 3")
	require.Contains(t, stderr, "restart 1 of 1")
}

// TestGotrainCommandsRunGotrain: "train" (and a flag such as --version)
// after "--" still runs gotrain itself, even with a program named train in
// PATH; anything else is looked up as a program.
func TestGotrainCommandsRunGotrain(t *testing.T) {
	dir := t.TempDir()
	fake := writeScript(t, dir, "gotrain", `echo "gotrain $*"`+"\n")
	bin := t.TempDir()
	writeScript(t, bin, "train", "echo not gotrain\n")
	writeScript(t, bin, "mytool", `echo "mytool $*"`+"\n")
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	for _, tc := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"train", "--epochs", "2"}, "[rank0] gotrain train --epochs 2\n"},
		{[]string{"--version"}, "[rank0] gotrain --version\n"},
		{[]string{"mytool", "train"}, "[rank0] mytool train\n"},
	} {
		code, stdout, stderr := runProgram(t, fake, append([]string{"--nproc-per-node", "1", "--"}, tc.cmd...)...)
		require.Equal(t, 0, code, "%v: %s", tc.cmd, stderr)
		require.Equal(t, tc.want, stdout, "%v", tc.cmd)
	}
}

// TestMissingProgramIsAUsageError: a program that is not there is named,
// with exit status 2, before any worker starts.
func TestMissingProgramIsAUsageError(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "notexec")
	require.NoError(t, os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644))
	for _, tc := range []struct {
		prog, want string
	}{
		{filepath.Join(dir, "missing"), "no such file or directory"},
		{"gotrain-no-such-program", "executable file not found in $PATH"},
		{notExec, "permission denied"},
		{"trian", "executable file not found"},
	} {
		var stdout, stderr bytes.Buffer
		code := Run(context.Background(), "/nonexistent/gotrain", []string{"--nproc-per-node", "2", "--", tc.prog, "--epochs", "2"}, &stdout, &stderr, nil)
		require.Equal(t, 2, code, "%s: %s", tc.prog, stderr.String())
		require.Contains(t, stderr.String(), `"`+tc.prog+`" after "--" is neither a gotrain command (train, eval, bench`)
		require.Contains(t, stderr.String(), tc.want)
		require.NotContains(t, stderr.String(), "starting")
		require.Empty(t, stdout.String())
	}
}
