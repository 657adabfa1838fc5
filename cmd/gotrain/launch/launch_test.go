package launch

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const helperEnv = "GOTRAIN_LAUNCH_TEST_HELPER"

// TestHelperProcess is the worker: the test binary re-executed by Run with
// -test.run=^TestHelperProcess$ -- MODE ARGS...
func TestHelperProcess(t *testing.T) {
	for i, a := range os.Args {
		if a == "--" && os.Getenv(helperEnv) == "1" && i+1 < len(os.Args) {
			os.Exit(helperMain(os.Args[i+1:]))
		}
	}
	t.Skip("helper process for the other tests")
}

// TestMain marks the environment the workers inherit, so that the test
// binary they run acts as TestHelperProcess's worker.
func TestMain(m *testing.M) {
	os.Setenv(helperEnv, "1")
	os.Exit(m.Run())
}

func helperMain(args []string) int {
	rank, _ := strconv.Atoi(os.Getenv("RANK"))
	switch args[0] {
	case "env": // env DIR: print the launcher's variables, write the secret to DIR/secret-RANK
		for _, k := range []string{EnvRank, EnvWorldSize, EnvLocalRank, EnvLocalWorldSize, EnvGroupRank, EnvGroupWorldSize, EnvMasterAddr, EnvMasterPort} {
			fmt.Printf("%s=%s\n", k, os.Getenv(k))
		}
		if err := os.WriteFile(filepath.Join(args[1], "secret-"+os.Getenv("RANK")), []byte(os.Getenv(EnvSecret)), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "fail": // fail DIR RANK CODE: once every worker is up, that rank exits CODE; the others sleep
		dir := args[1]
		bad, _ := strconv.Atoi(args[2])
		code, _ := strconv.Atoi(args[3])
		world, _ := strconv.Atoi(os.Getenv(EnvWorldSize))
		fmt.Printf("pid=%d\n", os.Getpid())
		if err := os.WriteFile(filepath.Join(dir, "up-"+os.Getenv(EnvRank)), nil, 0o600); err != nil {
			return 1
		}
		if rank != bad {
			time.Sleep(60 * time.Second)
			return 0
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if up, _ := filepath.Glob(filepath.Join(dir, "up-*")); len(up) == world {
				break
			}
		}
		time.Sleep(50 * time.Millisecond) // let the pid lines reach the launcher first
		return code
	case "stopped": // stopped DIR: rank 0 exits 0 once every worker is up; the others stop themselves (SIGSTOP)
		world, _ := strconv.Atoi(os.Getenv(EnvWorldSize))
		fmt.Printf("pid=%d\n", os.Getpid())
		if err := os.WriteFile(filepath.Join(args[1], "up-"+os.Getenv(EnvRank)), nil, 0o600); err != nil {
			return 1
		}
		if rank != 0 {
			time.Sleep(50 * time.Millisecond) // let the pid line reach the launcher first
			_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			time.Sleep(60 * time.Second)
			return 0
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if up, _ := filepath.Glob(filepath.Join(args[1], "up-*")); len(up) == world {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
		return 0
	case "ignore-term": // ignore SIGTERM and SIGINT, then sleep
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
		fmt.Printf("ready pid=%d\n", os.Getpid())
		time.Sleep(60 * time.Second)
		return 0
	case "report-signal": // wait for SIGINT or SIGTERM, report it, exit 0
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
		fmt.Printf("ready pid=%d\n", os.Getpid())
		select {
		case s := <-c:
			fmt.Printf("got %s\n", signalName(s.(syscall.Signal)))
			return 0
		case <-time.After(60 * time.Second):
			return 1
		}
	case "affinity": // print the CPUs this worker may run on
		cpus, err := allowedCPUs()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("cpus=%s\n", formatCPUs(cpus))
		return 0
	case "output": // many lines written in pieces, a long line, partial last lines
		for i := range 200 {
			os.Stdout.WriteString(fmt.Sprintf("w%d line %d ", rank, i))
			os.Stdout.WriteString(strings.Repeat("x", 50))
			os.Stdout.WriteString("\n")
		}
		os.Stdout.WriteString("long " + strings.Repeat("y", 100_000) + "\n")
		os.Stdout.WriteString("par")
		time.Sleep(20 * time.Millisecond)
		os.Stdout.WriteString("tial\nno newline at end")
		os.Stderr.WriteString(fmt.Sprintf("err %d\nerr partial", rank))
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", args[0])
	return 1
}

// syncBuf is a goroutine-safe output buffer.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits until buf holds n occurrences of substr; it may run on
// any goroutine, so it reports a timeout with Errorf and returns false.
func waitFor(t *testing.T, buf *syncBuf, substr string, n int) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(buf.String(), substr) < n {
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %d x %q in output:\n%s", n, substr, buf.String())
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

type result struct {
	code           int
	stdout, stderr *syncBuf
	elapsed        time.Duration
}

// launch runs Run with the test binary as the worker executable; mode and
// its arguments follow "--".
func launch(t *testing.T, ctx context.Context, flags []string, getenv func(string) string, stdout, stderr *syncBuf, mode ...string) result {
	t.Helper()
	args := append(append(append([]string{}, flags...), "--", "-test.run=^TestHelperProcess$", "--"), mode...)
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if stdout == nil {
		stdout = &syncBuf{}
	}
	if stderr == nil {
		stderr = &syncBuf{}
	}
	start := time.Now()
	code := Run(ctx, os.Args[0], args, stdout, stderr, getenv)
	return result{code, stdout, stderr, time.Since(start)}
}

// pids returns the pid=N values printed by the workers.
func pids(t *testing.T, out string) []int {
	t.Helper()
	var ps []int
	for _, m := range regexp.MustCompile(`pid=(\d+)`).FindAllStringSubmatch(out, -1) {
		p, err := strconv.Atoi(m[1])
		require.NoError(t, err)
		ps = append(ps, p)
		t.Cleanup(func() { _ = syscall.Kill(p, syscall.SIGKILL) })
	}
	return ps
}

func requireGone(t *testing.T, pid int) {
	t.Helper()
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "worker pid %d is still alive", pid)
}

// envOf parses the KEY=VALUE lines a rank printed.
func envOf(t *testing.T, out string, rank int) map[string]string {
	t.Helper()
	env := map[string]string{}
	prefix := fmt.Sprintf("[rank%d] ", rank)
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			k, v, _ := strings.Cut(rest, "=")
			env[k] = v
		}
	}
	require.NotEmpty(t, env, "no output from rank %d in:\n%s", rank, out)
	return env
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no nproc", []string{"--", "train"}, "--nproc-per-node is required"},
		{"nproc zero", []string{"--nproc-per-node", "0", "--", "train"}, "from 1 to 1024"},
		{"nproc huge", []string{"--nproc-per-node", "100000", "--", "train"}, "from 1 to 1024, not 100000"},
		{"nnodes huge", []string{"--nproc-per-node", "1", "--nnodes", "4611686018427387904", "--", "train"}, "--nnodes must be from 1 to 65536"},
		{"node rank too big", []string{"--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1", "--", "train"}, "--node-rank 2 is out of range"},
		{"negative node rank", []string{"--nproc-per-node", "2", "--node-rank", "-1", "--", "train"}, "out of range"},
		{"no dashdash", []string{"--nproc-per-node", "2"}, "no worker command"},
		{"empty command", []string{"--nproc-per-node", "2", "--"}, "no worker command"},
		{"multi-node without endpoint", []string{"--nproc-per-node", "2", "--nnodes", "2", "--", "train"}, "needs --rdzv-endpoint"},
		{"standalone multi-node", []string{"--nproc-per-node", "2", "--nnodes", "2", "--standalone", "--", "train"}, "--standalone is for one node"},
		{"standalone with endpoint", []string{"--nproc-per-node", "2", "--standalone", "--rdzv-endpoint", "h:1", "--", "train"}, "drop --rdzv-endpoint"},
		{"bad endpoint port", []string{"--nproc-per-node", "2", "--rdzv-endpoint", "h:99999", "--", "train"}, "bad port"},
		{"conflicting ports", []string{"--nproc-per-node", "2", "--rdzv-endpoint", "h:1234", "--master-port", "99", "--", "train"}, "contradicts"},
		{"stray argument", []string{"--nproc-per-node", "2", "train", "--", "train"}, "unexpected argument"},
		{"unknown flag", []string{"--nproc-per-node", "2", "--bogus", "--", "train"}, "flag provided but not defined"},
		{"bad cpu-bind", []string{"--nproc-per-node", "1", "--cpu-bind", "sockets", "--", "train"}, `--cpu-bind "sockets" is not a policy`},
		{"negative grace", []string{"--nproc-per-node", "1", "--grace", "-1s", "--", "train"}, "--grace"},
		{"multi-node without secret", []string{"--nproc-per-node", "2", "--nnodes", "2", "--rdzv-endpoint", "h:1", "--", "train"}, "GOTRAIN_JOB_SECRET"},
		{"missing secret file", []string{"--nproc-per-node", "1", "--secret-file", "/nonexistent/secret", "--", "train"}, "--secret-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), "/nonexistent/gotrain", tc.args, &stdout, &stderr, func(string) string { return "" })
			require.Equal(t, 2, code, "stderr: %s", stderr.String())
			require.Contains(t, stderr.String(), tc.want)
			require.Empty(t, stdout.String())
			require.NotContains(t, stderr.String(), "starting", "no worker may start on a usage error")
		})
	}
}

func TestHelpReturnsZero(t *testing.T) {
	var stderr bytes.Buffer
	require.Equal(t, 0, Run(context.Background(), "/nonexistent/gotrain", []string{"-h"}, &bytes.Buffer{}, &stderr, nil))
	require.Contains(t, stderr.String(), "--nproc-per-node")
}

func TestParseEndpoint(t *testing.T) {
	for ep, want := range map[string]struct {
		host string
		port int
	}{
		"node0:1234":    {"node0", 1234},
		"10.0.0.1":      {"10.0.0.1", 0},
		"[::1]:29501":   {"::1", 29501},
		"[fe80::1]":     {"fe80::1", 0},
		"node0.cluster": {"node0.cluster", 0},
	} {
		h, p, err := parseEndpoint(ep)
		require.NoError(t, err, ep)
		require.Equal(t, want.host, h, ep)
		require.Equal(t, want.port, p, ep)
	}
	for _, bad := range []string{":1234", "h:x", "a:b:c", ""} {
		_, _, err := parseEndpoint(bad)
		require.Error(t, err, bad)
	}
}

func TestStandaloneEnvAndGeneratedSecret(t *testing.T) {
	dir := t.TempDir()
	r := launch(t, context.Background(), []string{"--nproc-per-node", "2", "--standalone"}, nil, nil, nil, "env", dir)
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	out := r.stdout.String()
	var port string
	for local := range 2 {
		env := envOf(t, out, local)
		require.Equal(t, strconv.Itoa(local), env[EnvRank])
		require.Equal(t, "2", env[EnvWorldSize])
		require.Equal(t, strconv.Itoa(local), env[EnvLocalRank])
		require.Equal(t, "2", env[EnvLocalWorldSize])
		require.Equal(t, "0", env[EnvGroupRank])
		require.Equal(t, "1", env[EnvGroupWorldSize])
		require.Equal(t, "127.0.0.1", env[EnvMasterAddr])
		n, err := strconv.Atoi(env[EnvMasterPort])
		require.NoError(t, err)
		require.Positive(t, n)
		if local > 0 {
			require.Equal(t, port, env[EnvMasterPort], "all workers share one master port")
		}
		port = env[EnvMasterPort]
	}
	s0, err := os.ReadFile(filepath.Join(dir, "secret-0"))
	require.NoError(t, err)
	s1, err := os.ReadFile(filepath.Join(dir, "secret-1"))
	require.NoError(t, err)
	require.Equal(t, s0, s1, "local workers share one secret")
	raw, err := hex.DecodeString(string(s0))
	require.NoError(t, err)
	require.Len(t, raw, 32)
	require.NotContains(t, out+r.stderr.String(), string(s0), "the secret must not be printed")

	// A second job gets a different secret.
	dir2 := t.TempDir()
	r = launch(t, context.Background(), []string{"--nproc-per-node", "1"}, nil, nil, nil, "env", dir2)
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	s2, err := os.ReadFile(filepath.Join(dir2, "secret-0"))
	require.NoError(t, err)
	require.Len(t, s2, 64)
	require.NotEqual(t, s0, s2)
	require.Equal(t, "29500", envOf(t, r.stdout.String(), 0)[EnvMasterPort], "default port without --standalone")
}

func TestMultiNodeEnv(t *testing.T) {
	dir := t.TempDir()
	const secret = "0123456789abcdef-shared-by-all-nodes"
	getenv := func(k string) string {
		if k == EnvSecret {
			return secret
		}
		return ""
	}
	r := launch(t, context.Background(), []string{"--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "10.1.2.3:1234"}, getenv, nil, nil, "env", dir)
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	out := r.stdout.String()
	for local, rank := range []int{2, 3} {
		env := envOf(t, out, rank)
		require.Equal(t, strconv.Itoa(rank), env[EnvRank])
		require.Equal(t, "4", env[EnvWorldSize])
		require.Equal(t, strconv.Itoa(local), env[EnvLocalRank])
		require.Equal(t, "2", env[EnvLocalWorldSize])
		require.Equal(t, "1", env[EnvGroupRank])
		require.Equal(t, "2", env[EnvGroupWorldSize])
		require.Equal(t, "10.1.2.3", env[EnvMasterAddr])
		require.Equal(t, "1234", env[EnvMasterPort])
		s, err := os.ReadFile(filepath.Join(dir, "secret-"+strconv.Itoa(rank)))
		require.NoError(t, err)
		require.Equal(t, secret, string(s))
	}
	require.NotContains(t, out, "[rank0]")
	require.NotContains(t, out+r.stderr.String(), secret)
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "secret")
	require.NoError(t, os.WriteFile(f, []byte("  from-the-file\n"), 0o600))
	envFile := filepath.Join(dir, "env-secret")
	require.NoError(t, os.WriteFile(envFile, []byte("from-env-file\n"), 0o600))
	getenv := func(vals map[string]string) func(string) string {
		return func(k string) string { return vals[k] }
	}
	multi := &options{nnodes: 2}

	s, err := resolveSecret(&options{nnodes: 2, secretFile: f}, getenv(map[string]string{EnvSecret: "from-env"}))
	require.NoError(t, err)
	require.Equal(t, "from-the-file", s, "--secret-file wins over the environment")

	s, err = resolveSecret(multi, getenv(map[string]string{EnvSecret: " from-env ", EnvSecretFile: envFile}))
	require.NoError(t, err)
	require.Equal(t, "from-env", s)

	s, err = resolveSecret(multi, getenv(map[string]string{EnvSecretFile: envFile}))
	require.NoError(t, err)
	require.Equal(t, "from-env-file", s)

	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
	_, err = resolveSecret(&options{nnodes: 1, secretFile: empty}, getenv(nil))
	require.ErrorContains(t, err, "empty")

	_, err = resolveSecret(multi, getenv(nil))
	require.ErrorContains(t, err, "--secret-file")

	// End to end: the file's secret reaches the workers.
	r := launch(t, context.Background(), []string{"--nproc-per-node", "1", "--secret-file", f}, getenv(map[string]string{EnvSecret: "from-env"}), nil, nil, "env", dir)
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	got, err := os.ReadFile(filepath.Join(dir, "secret-0"))
	require.NoError(t, err)
	require.Equal(t, "from-the-file", string(got))
}

func TestFailureStopsTheOthers(t *testing.T) {
	r := launch(t, context.Background(), []string{"--nproc-per-node", "3", "--grace", "30s"}, nil, nil, nil, "fail", t.TempDir(), "1", "3")
	require.Equal(t, 3, r.code, "the launcher exits with the failing worker's status; stderr: %s", r.stderr)
	require.Less(t, r.elapsed, 10*time.Second, "the sleepers must be stopped by SIGTERM, long before the grace and their sleep end")
	require.Regexp(t, `gotrain launch: rank 1 \(local 1, pid \d+\) exited with status 3; stopping the other workers`, r.stderr.String())
	ps := pids(t, r.stdout.String())
	require.Len(t, ps, 3)
	for _, p := range ps {
		requireGone(t, p)
	}
	require.NotContains(t, r.stderr.String(), "SIGKILL", "the sleepers die of SIGTERM")
}

// Once rank 0 has finished the job, a worker still running --grace later
// is stopped, and the job ends with rank 0's success: sleeping workers,
// and workers stopped with SIGSTOP (as an asynchronous rank declared lost
// may be), which only SIGKILL or a SIGCONT first would end.
func TestRank0FinishingEndsTheJob(t *testing.T) {
	for _, mode := range []string{"fail", "stopped"} {
		stdout := &syncBuf{}
		r := launch(t, context.Background(), []string{"--nproc-per-node", "3", "--grace", "300ms"}, nil, stdout, nil, mode, t.TempDir(), "0", "0")
		require.Equal(t, 0, r.code, "%s: stderr: %s", mode, r.stderr)
		require.Less(t, r.elapsed, 20*time.Second, "%s: the others (60 s) are stopped after the grace", mode)
		for _, rank := range []string{"1", "2"} {
			require.Regexp(t, `rank `+rank+` \(local `+rank+`, pid \d+\) still running 300ms after rank 0 finished the job; stopping it`, r.stderr.String(), mode)
		}
		require.NotContains(t, r.stderr.String(), "stopping the other workers", "%s: no failure", mode)
		ps := pids(t, stdout.String())
		require.Len(t, ps, 3)
		for _, p := range ps {
			requireGone(t, p)
		}
	}
}

func TestKillAfterGrace(t *testing.T) {
	stdout := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelled time.Time
	go func() {
		waitFor(t, stdout, "ready", 2)
		cancelled = time.Now()
		cancel()
	}()
	const grace = 300 * time.Millisecond
	r := launch(t, ctx, []string{"--nproc-per-node", "2", "--grace", grace.String()}, nil, stdout, nil, "ignore-term")
	end := time.Now()
	require.Equal(t, 128+int(syscall.SIGTERM), r.code, "stderr: %s", r.stderr)
	require.False(t, cancelled.IsZero())
	require.GreaterOrEqual(t, end.Sub(cancelled), grace, "SIGKILL comes only after the grace")
	require.Less(t, end.Sub(cancelled), 8*time.Second)
	require.Regexp(t, `rank 0 \(local 0, pid \d+\) still running after the 300ms grace; sending SIGKILL`, r.stderr.String())
	require.Regexp(t, `rank 1 \(local 1, pid \d+\) still running after the 300ms grace; sending SIGKILL`, r.stderr.String())
	for _, p := range pids(t, stdout.String()) {
		requireGone(t, p)
	}
}

func TestFailureThenKillReportsSignal(t *testing.T) {
	// A worker killed by a signal is a failure with exit code 1.
	stdout := &syncBuf{}
	done := make(chan result, 1)
	go func() {
		done <- launch(t, context.Background(), []string{"--nproc-per-node", "2", "--grace", "5s"}, nil, stdout, nil, "report-signal")
	}()
	require.True(t, waitFor(t, stdout, "ready", 2))
	ps := pids(t, stdout.String())
	require.Len(t, ps, 2)
	require.NoError(t, syscall.Kill(ps[0], syscall.SIGKILL))
	r := <-done
	require.Equal(t, 1, r.code)
	require.Regexp(t, `rank \d \(local \d, pid \d+\) killed by signal SIGKILL; stopping the other workers`, r.stderr.String())
	require.Contains(t, stdout.String(), "got SIGTERM", "the survivor is stopped with SIGTERM")
}

func TestCancelForwardsSIGTERM(t *testing.T) {
	stdout := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { waitFor(t, stdout, "ready", 2); cancel() }()
	r := launch(t, ctx, []string{"--nproc-per-node", "2"}, nil, stdout, nil, "report-signal")
	require.Equal(t, 128+int(syscall.SIGTERM), r.code, "stderr: %s", r.stderr)
	require.Contains(t, stdout.String(), "[rank0] got SIGTERM")
	require.Contains(t, stdout.String(), "[rank1] got SIGTERM")
	require.Contains(t, r.stderr.String(), "cancelled; stopping the workers")
	require.Less(t, r.elapsed, 10*time.Second)
}

func TestSignalIsForwardedAsReceived(t *testing.T) {
	// The caller's signal.NotifyContext and Run both see the SIGINT sent to
	// this process; the workers get SIGINT, not SIGTERM.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stdout := &syncBuf{}
	go func() {
		waitFor(t, stdout, "ready", 2)
		_ = syscall.Kill(os.Getpid(), syscall.SIGINT)
	}()
	r := launch(t, ctx, []string{"--nproc-per-node", "2"}, nil, stdout, nil, "report-signal")
	require.Equal(t, 128+int(syscall.SIGINT), r.code, "stderr: %s", r.stderr)
	require.Contains(t, stdout.String(), "[rank0] got SIGINT")
	require.Contains(t, stdout.String(), "[rank1] got SIGINT")
	require.Contains(t, r.stderr.String(), "received SIGINT")
}

func TestOutputPrefixedLineByLine(t *testing.T) {
	// stdout and stderr share one writer here, the harder case for whole lines.
	both := &syncBuf{}
	r := launch(t, context.Background(), []string{"--nproc-per-node", "2"}, nil, both, both, "output")
	require.Equal(t, 0, r.code, "output: %.2000s", both)
	got := map[int][]string{}
	lineRE := regexp.MustCompile(`^\[rank(\d)\] (.*)$`)
	for _, l := range strings.Split(strings.TrimSuffix(both.String(), "\n"), "\n") {
		if strings.HasPrefix(l, "gotrain launch: ") {
			continue
		}
		m := lineRE.FindStringSubmatch(l)
		require.NotNil(t, m, "unprefixed or mixed line %.200q", l)
		rank, _ := strconv.Atoi(m[1])
		got[rank] = append(got[rank], m[2])
	}
	for rank := range 2 {
		var want []string
		for i := range 200 {
			want = append(want, fmt.Sprintf("w%d line %d %s", rank, i, strings.Repeat("x", 50)))
		}
		want = append(want, "LONG", "partial", "no newline at end")
		var gotOut, gotErr []string
		for _, l := range got[rank] {
			switch {
			case strings.HasPrefix(l, "err"):
				gotErr = append(gotErr, l)
			case strings.HasPrefix(l, "long "):
				// Compared apart so that a failure does not print 100 kB.
				require.True(t, l == "long "+strings.Repeat("y", 100_000), "rank %d: the long line is not whole (%d bytes)", rank, len(l))
				gotOut = append(gotOut, "LONG")
			default:
				gotOut = append(gotOut, l)
			}
		}
		require.Equal(t, want, gotOut, "rank %d stdout lines", rank)
		require.Equal(t, []string{fmt.Sprintf("err %d", rank), "err partial"}, gotErr, "rank %d stderr lines", rank)
	}
}

func TestOutputGoesToTheRightStream(t *testing.T) {
	stdout, stderr := &syncBuf{}, &syncBuf{}
	r := launch(t, context.Background(), []string{"--nproc-per-node", "1"}, nil, stdout, stderr, "output")
	require.Equal(t, 0, r.code)
	out := stdout.String()
	require.True(t, strings.HasSuffix(out, "[rank0] partial\n[rank0] no newline at end\n"), "stdout ends %q", out[max(0, len(out)-200):])
	require.NotContains(t, stdout.String()[:1000], "err")
	require.True(t, strings.Contains(stderr.String(), "[rank0] err 0\n[rank0] err partial\n"), "stderr: %s", stderr)
	require.NotContains(t, stderr.String(), "line")
}

func TestStartFailure(t *testing.T) {
	var stderr bytes.Buffer
	code := Run(context.Background(), filepath.Join(t.TempDir(), "missing"), []string{"--nproc-per-node", "2", "--", "train"}, &bytes.Buffer{}, &stderr, nil)
	require.Equal(t, 1, code)
	require.Contains(t, stderr.String(), "starting rank 0 (local 0)")
}

func TestElasticFlags(t *testing.T) {
	o, err := parseArgs([]string{"--nnodes", "2:4", "--nproc-per-node", "2", "--rdzv-endpoint", "node0:29400", "--", "train"}, io.Discard)
	require.NoError(t, err)
	require.True(t, o.elastic)
	require.Equal(t, 2, o.minNodes)
	require.Equal(t, 4, o.maxNodes)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nnodes", "3:2", "--nproc-per-node", "1", "--rdzv-endpoint", "h:1", "--", "train"}, "MIN:MAX"},
		{[]string{"--nnodes", "0:2", "--nproc-per-node", "1", "--rdzv-endpoint", "h:1", "--", "train"}, "MIN:MAX"},
		{[]string{"--nnodes", "two", "--nproc-per-node", "1", "--", "train"}, "not a number of nodes"},
		{[]string{"--nnodes", "1:2", "--node-rank", "1", "--nproc-per-node", "1", "--rdzv-endpoint", "h:1", "--", "train"}, "drop --node-rank"},
		{[]string{"--nnodes", "1:2", "--nproc-per-node", "1", "--", "train"}, "needs --rdzv-endpoint"},
		{[]string{"--nnodes", "1:2", "--standalone", "--nproc-per-node", "1", "--", "train"}, "--standalone is for one node"},
		{[]string{"--max-restarts", "-1", "--nproc-per-node", "1", "--", "train"}, "--max-restarts"},
	} {
		_, err := parseArgs(tc.args, io.Discard)
		require.ErrorContains(t, err, tc.want, "%v", tc.args)
	}
}
