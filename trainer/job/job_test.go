package job_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/job"
)

// The test binary is also the "user program" of the multi-process tests:
// started with envOut set, it is one rank (see rankMain) instead of the
// tests.
const (
	envOut  = "GOTRAIN_JOB_TEST_OUT"  // directory for the rank's results
	envSync = "GOTRAIN_JOB_TEST_SYNC" // Config.Sync of the run
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envOut); dir != "" {
		os.Exit(rankMain(dir, os.Getenv(envSync)))
	}
	os.Exit(m.Run())
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// tinyConfig is a small SGD run on synthetic data: a few seconds.
func tinyConfig(sync string) trainer.Config {
	cfg := trainer.Default()
	cfg.Dataset, cfg.SyntheticSize = "synthetic", 1200
	cfg.Hidden = []int{32}
	cfg.Epochs, cfg.BatchSize = 2, 64
	cfg.Optimizer, cfg.Schedule, cfg.LR = "sgd", "constant", 0.05
	cfg.Device, cfg.Threads, cfg.LogEvery = "cpu", 1, 1000
	cfg.Timeout, cfg.RdzvTimeout = time.Minute, 30*time.Second
	if sync != "" {
		cfg.Sync = sync
	}
	return cfg
}

// rankResult is what a rank reports to the test.
type rankResult struct {
	Rank, World, LocalRank, LocalWorld int
	Distributed                        bool
	Steps                              int64
	RankSpeeds                         int // len(Result.RankComputeSamplesPerSec): the trainer's world
	TestAccuracy                       float64
}

// rankMain is the user program, as the package documentation writes it:
// Join, TrainerOptions, trainer.New, Run, Close. It writes its result and
// its final parameters (float32 bits, little-endian) to dir.
func rankMain(dir, sync string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := train(context.Background(), dir, tinyConfig(sync), log); err != nil {
		fmt.Fprintln(os.Stderr, "rank error:", err)
		return 1
	}
	return 0
}

func train(ctx context.Context, dir string, cfg trainer.Config, log *slog.Logger) error {
	j, err := job.Join(ctx, cfg, job.WithLogger(log))
	if err != nil {
		return err
	}
	defer j.Close()
	opts, err := j.TrainerOptions(ctx)
	if err != nil {
		return err
	}
	t, err := trainer.New(cfg, append(opts, trainer.WithLogger(log))...)
	if err != nil {
		return err
	}
	res, err := t.Run(ctx)
	if err != nil {
		j.Abort(err)
		return err
	}
	out := rankResult{j.Rank(), j.World(), j.LocalRank(), j.LocalWorld(), j.Distributed(), res.Steps, len(res.RankComputeSamplesPerSec), res.TestAccuracy}
	b, _ := json.Marshal(out)
	name := filepath.Join(dir, "rank"+strconv.Itoa(j.Rank()))
	if err := os.WriteFile(name+".json", b, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(name+".params", paramBytes(t), 0o644); err != nil {
		return err
	}
	return j.Close()
}

func paramBytes(t *trainer.Trainer) []byte {
	var b []byte
	for _, p := range t.Model.Params {
		for _, v := range p.Data {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
	}
	return b
}

// initialParams are the parameters a run of cfg starts from.
func initialParams(t *testing.T, cfg trainer.Config) []byte {
	t.Helper()
	tr, err := trainer.New(cfg, trainer.WithLogger(quiet))
	require.NoError(t, err)
	return paramBytes(tr)
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// torchrunEnv is the environment torchrun gives rank r of world ranks on
// one node.
func torchrunEnv(r, world, port int) map[string]string {
	return map[string]string{
		"RANK": strconv.Itoa(r), "WORLD_SIZE": strconv.Itoa(world), "LOCAL_RANK": strconv.Itoa(r),
		"LOCAL_WORLD_SIZE": strconv.Itoa(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": strconv.Itoa(port),
	}
}

func getenvOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// noJobEnv is an environment without any launcher's variables.
func noJobEnv(string) string { return "" }

// TestOneProcessJob: without a launcher's environment Join gives rank 0
// of 1, whose TrainerOptions train exactly as a trainer without them; the
// job can be aborted and closed, twice.
func TestOneProcessJob(t *testing.T) {
	ctx := context.Background()
	cfg := tinyConfig("")
	j, err := job.Join(ctx, cfg, job.WithLogger(quiet), job.WithEnv(noJobEnv))
	require.NoError(t, err)
	require.Equal(t, [4]int{0, 1, 0, 1}, [4]int{j.Rank(), j.World(), j.LocalRank(), j.LocalWorld()})
	require.False(t, j.Distributed())
	require.Nil(t, j.Communicator())
	require.Equal(t, "default", j.Env().Source)

	opts, err := j.TrainerOptions(ctx)
	require.NoError(t, err)
	tr, err := trainer.New(cfg, append(opts, trainer.WithLogger(quiet))...)
	require.NoError(t, err)
	res, err := tr.Run(ctx)
	require.NoError(t, err)
	require.Len(t, res.RankComputeSamplesPerSec, 1, "one rank")
	require.NotEqual(t, initialParams(t, cfg), paramBytes(tr), "it trained")

	alone, err := trainer.New(cfg, trainer.WithLogger(quiet))
	require.NoError(t, err)
	want, err := alone.Run(ctx)
	require.NoError(t, err)
	require.Equal(t, want.Steps, res.Steps)
	require.Equal(t, paramBytes(alone), paramBytes(tr), "the job's options change nothing for one process")

	j.Abort(errors.New("nothing to abort"))
	require.NoError(t, j.Close())
	require.NoError(t, j.Close())
	_, err = j.TrainerOptions(ctx)
	require.Error(t, err, "after Close")
	var nilJob *job.Job
	require.NoError(t, nilJob.Close())

	// WORLD_SIZE=1 under a launcher is a one-process job too, and needs no secret.
	j, err = job.Join(ctx, cfg, job.WithLogger(quiet), job.WithEnv(getenvOf(torchrunEnv(0, 1, 29500))))
	require.NoError(t, err)
	require.False(t, j.Distributed())
	require.Equal(t, "torchrun", j.Env().Source)
	require.NoError(t, j.Close())
}

// startRanks runs the test binary as ranks 0..world-1 of a job, with
// torchrun's variables, and waits for them (at most two minutes); it
// returns each rank's error and stderr.
func startRanks(t *testing.T, dir string, world int, sync string, env func(r int) map[string]string) ([]error, []string) {
	t.Helper()
	secret := secure.NewSecret()
	cmds := make([]*exec.Cmd, world)
	logs := make([]*bytes.Buffer, world)
	for r := range world {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), envOut+"="+dir, envSync+"="+sync, secure.EnvSecret+"="+secret)
		for k, v := range env(r) {
			c.Env = append(c.Env, k+"="+v)
		}
		logs[r] = &bytes.Buffer{}
		c.Stdout, c.Stderr = logs[r], logs[r]
		require.NoError(t, c.Start())
		cmds[r] = c
	}
	errs := make([]error, world)
	done := make(chan struct{})
	go func() {
		for r, c := range cmds {
			errs[r] = c.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		for _, c := range cmds {
			c.Process.Kill()
		}
		<-done
		t.Fatalf("the ranks did not finish within 2 minutes (hang)")
	}
	out := make([]string, world)
	for r := range logs {
		out[r] = logs[r].String()
	}
	return errs, out
}

func readResult(t *testing.T, dir string, r int) (rankResult, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("rank%d.json", r)))
	require.NoError(t, err)
	var res rankResult
	require.NoError(t, json.Unmarshal(b, &res))
	params, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("rank%d.params", r)))
	require.NoError(t, err)
	return res, params
}

// TestTwoRanksUnderTorchrunEnvironment: a program written as the package
// documentation says, started twice with torchrun's variables, joins one
// job of 2 ranks, trains data-parallel (the trainer sees both ranks) and
// both ranks end with bit-identical weights, within float rounding of one
// process trained on the same global batch.
func TestTwoRanksUnderTorchrunEnvironment(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	errs, logs := startRanks(t, dir, 2, "", func(r int) map[string]string { return torchrunEnv(r, 2, port) })
	for r, err := range errs {
		require.NoError(t, err, "rank %d: %s", r, logs[r])
	}
	var params [2][]byte
	for r := range 2 {
		res, p := readResult(t, dir, r)
		require.Equal(t, rankResult{Rank: r, World: 2, LocalRank: r, LocalWorld: 2, Distributed: true,
			Steps: res.Steps, RankSpeeds: 2, TestAccuracy: res.TestAccuracy}, res, "rank %d", r)
		require.Greater(t, res.Steps, int64(0))
		params[r] = p
	}
	require.NotEmpty(t, params[0])
	require.True(t, bytes.Equal(params[0], params[1]), "the ranks' weights differ")

	// One process on the same global batch ends at the same weights, up to
	// the order of the sums.
	alone, err := trainer.New(tinyConfig(""), trainer.WithLogger(quiet))
	require.NoError(t, err)
	_, err = alone.Run(context.Background())
	require.NoError(t, err)
	one := paramBytes(alone)
	require.Len(t, params[0], len(one))
	d := 0.0
	for i := 0; i < len(one); i += 4 {
		a := math.Float32frombits(binary.LittleEndian.Uint32(one[i:]))
		b := math.Float32frombits(binary.LittleEndian.Uint32(params[0][i:]))
		d = math.Max(d, math.Abs(float64(a)-float64(b)))
	}
	t.Logf("max |Δ| against one process: %g", d)
	require.Less(t, d, 1e-5)
}

// TestAsyncJob: with Config.Sync "async" the options carry the parameter
// server's transport: rank 0 serves, rank 1 pushes its gradients to it,
// and both finish.
func TestAsyncJob(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	errs, logs := startRanks(t, dir, 2, "async", func(r int) map[string]string { return torchrunEnv(r, 2, port) })
	for r, err := range errs {
		require.NoError(t, err, "rank %d: %s", r, logs[r])
	}
	for r := range 2 {
		res, _ := readResult(t, dir, r)
		require.Equal(t, 2, res.World)
		require.Greater(t, res.Steps, int64(0), "rank %d trained", r)
	}
	_, params := readResult(t, dir, 0)
	require.NotEqual(t, initialParams(t, tinyConfig("async")), params, "rank 0's parameters were trained")
}

// TestBadEnvironment: an environment that cannot describe a job is an
// error naming the variable (ErrEnvironment), at once: neither a panic
// nor a wait for ranks that cannot exist. As a process, the program
// fails with that message.
func TestBadEnvironment(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"rank beyond the world", map[string]string{"RANK": "5", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "RANK=5 must be less than WORLD_SIZE=2"},
		{"world without a rank", map[string]string{"WORLD_SIZE": "2"}, "RANK is not set"},
		{"several nodes without a master", map[string]string{"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "MASTER_ADDR is not set"},
		{"not a port", map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT=99999 is not a TCP port"},
		{"not a number", map[string]string{"RANK": "one", "WORLD_SIZE": "2"}, `RANK="one" is not an integer`},
		{"Kubernetes without a master", map[string]string{"JOB_COMPLETION_INDEX": "1", "WORLD_SIZE": "2"}, "MASTER_ADDR is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			var j *job.Job
			var err error
			require.NotPanics(t, func() {
				j, err = job.Join(ctx, tinyConfig(""), job.WithLogger(quiet), job.WithEnv(getenvOf(tc.env)))
			})
			require.ErrorIs(t, err, job.ErrEnvironment)
			require.ErrorContains(t, err, tc.want)
			require.Nil(t, j)
			require.Less(t, time.Since(start), time.Second)
		})
	}

	t.Run("process", func(t *testing.T) {
		dir := t.TempDir()
		errs, logs := startRanks(t, dir, 1, "", func(int) map[string]string {
			return map[string]string{"RANK": "5", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": strconv.Itoa(freePort(t))}
		})
		require.Error(t, errs[0], logs[0])
		require.Contains(t, logs[0], "rank error: invalid job environment: rendezvous: RANK=5 must be less than WORLD_SIZE=2")
		require.NotContains(t, logs[0], "panic")
	})
}

// TestJoinErrors: the other mistakes a user can make are errors that say
// what to do, and a rank alone waits no longer than RdzvTimeout.
func TestJoinErrors(t *testing.T) {
	ctx := context.Background()
	env := torchrunEnv(0, 2, freePort(t))

	cfg := tinyConfig("")
	cfg.Backend = "gloo"
	_, err := job.Join(ctx, cfg, job.WithLogger(quiet), job.WithEnv(noJobEnv))
	require.ErrorIs(t, err, trainer.ErrConfig)
	require.ErrorContains(t, err, `--backend "gloo" is not a backend`)

	_, err = job.Join(ctx, tinyConfig(""), job.WithLogger(quiet), job.WithEnv(getenvOf(env)))
	require.ErrorContains(t, err, secure.EnvSecret, "no secret: the error names the variable")

	env[secure.EnvSecret] = secure.NewSecret()
	cfg = tinyConfig("")
	cfg.RdzvTimeout = time.Second
	start := time.Now()
	_, err = job.Join(ctx, cfg, job.WithLogger(quiet), job.WithEnv(getenvOf(env)))
	require.Less(t, time.Since(start), 15*time.Second)
	require.ErrorContains(t, err, "not every rank of 2 joined within --rdzv-timeout 1s")
	require.True(t, errors.Is(err, dist.ErrTimeout) || errors.Is(err, context.DeadlineExceeded), "%v", err)
	require.Contains(t, err.Error(), "rank 1", "the missing rank is named")
}

// TestServeMetrics: each rank serves at the given port plus its local
// rank; a bad address is a configuration error; Close stops the server.
func TestServeMetrics(t *testing.T) {
	j, err := job.Join(context.Background(), tinyConfig(""), job.WithLogger(quiet), job.WithEnv(noJobEnv))
	require.NoError(t, err)
	_, _, err = j.ServeMetrics("9090")
	require.ErrorIs(t, err, trainer.ErrConfig)
	require.ErrorContains(t, err, "want HOST:PORT")
	_, addr, err := j.ServeMetrics("127.0.0.1:0")
	require.NoError(t, err)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	c.Close()
	require.NoError(t, j.Close())
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 5*time.Second, 20*time.Millisecond, "Close stops the metrics server")
	require.True(t, strings.HasPrefix(addr, "127.0.0.1:"))
}
