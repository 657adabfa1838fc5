package ncclstandin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	driverOnce sync.Once
	driverPath string
	driverErr  error
	driverDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if driverDir != "" {
		os.RemoveAll(driverDir)
	}
	os.Exit(code)
}

// tools builds the stand-in and the C test driver (once per process).
func tools(t *testing.T) (lib, driver string) {
	t.Helper()
	lib = Build(t)
	driverOnce.Do(func() {
		driverDir, driverErr = os.MkdirTemp("", "ncclstandin-driver-")
		if driverErr != nil {
			return
		}
		out := filepath.Join(driverDir, "bin")
		driverErr = CompileInto(out, "driver", filepath.Join(SourceDir(), "driver.c"), "-ldl", "-lpthread", "-lm")
		driverPath = filepath.Join(out, "driver")
	})
	require.NoError(t, driverErr, "building driver.c")
	return lib, driverPath
}

type rankOut struct {
	lines []string
	err   error
}

func (r rankOut) String() string { return strings.Join(r.lines, "\n") }

// runRanks runs nranks driver processes of scenario (only the first `start`
// of them, if start > 0). Rank 0 makes the unique id and prints it; the test
// passes it to the others in hex. It returns each rank's output lines and the
// shared-memory name of the id.
func runRanks(t *testing.T, scenario string, nranks, start int, env []string, args ...string) ([]rankOut, string) {
	t.Helper()
	lib, driver := tools(t)
	if start <= 0 {
		start = nranks
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	outs := make([]rankOut, start)
	var wg sync.WaitGroup
	idc := make(chan string, 1)
	launch := func(rank int, id string) {
		cmd := exec.CommandContext(ctx, driver, append([]string{lib, scenario, strconv.Itoa(rank), strconv.Itoa(nranks), id}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 1<<16), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				if rank == 0 && strings.HasPrefix(line, "ID ") {
					idc <- strings.TrimPrefix(line, "ID ")
					continue
				}
				outs[rank].lines = append(outs[rank].lines, line)
			}
			err := cmd.Wait()
			if err != nil {
				err = fmt.Errorf("rank %d: %v; stderr: %s", rank, err, stderr.String())
			}
			outs[rank].err = err
			if rank == 0 {
				select {
				case idc <- "":
				default:
				}
			}
		}()
	}
	launch(0, "-")
	id := <-idc
	require.NotEmpty(t, id, "rank 0 printed no unique id: %v", outs[0])
	for r := 1; r < start; r++ {
		launch(r, id)
	}
	wg.Wait()
	require.NoError(t, ctx.Err(), "driver processes ran past 3 minutes")
	return outs, shmName(t, id)
}

func shmName(t *testing.T, idhex string) string {
	b, err := hex.DecodeString(idhex)
	require.NoError(t, err)
	require.Len(t, b, 128)
	require.Equal(t, "GOTRAIN-NCCL-SI1", string(b[:16]))
	name := b[16:]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	require.True(t, strings.HasPrefix(string(name), "/gotrain-nccl-"), "id name %q", name)
	return string(name)
}

func assertNoShmLeft(t *testing.T, name string) {
	t.Helper()
	_, err := os.Stat(filepath.Join("/dev/shm", name))
	assert.True(t, os.IsNotExist(err), "shared memory %s still exists (err=%v)", name, err)
}

// checkAllOK asserts every rank succeeded, every check printed OK, and the
// hashes of outputs that must agree are identical on every rank.
func checkAllOK(t *testing.T, outs []rankOut, minOK int) {
	t.Helper()
	hashes := map[string]string{}
	for r, o := range outs {
		require.NoError(t, o.err, "rank %d output:\n%s", r, o)
		nOK := 0
		for _, l := range o.lines {
			switch {
			case strings.HasPrefix(l, "OK "):
				nOK++
				if i := strings.LastIndex(l, " hash="); i >= 0 {
					label, h := l[3:i], l[i+6:]
					if prev, ok := hashes[label]; ok {
						assert.Equal(t, prev, h, "rank %d: %s differs from another rank's result", r, label)
					} else {
						hashes[label] = h
					}
				}
			case strings.HasPrefix(l, "FAIL"):
				t.Errorf("rank %d: %s", r, l)
			}
		}
		assert.GreaterOrEqual(t, nOK, minOK, "rank %d: too few checks ran:\n%s", r, o)
		assert.Contains(t, o.lines, "DONE fail=0", "rank %d", r)
	}
}

var allTypes = "int8,uint8,int32,uint32,int64,uint64,float16,float32,float64,bfloat16"

func TestCollectivesSmallCounts(t *testing.T) {
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("nranks=%d", n), func(t *testing.T) {
			outs, name := runRanks(t, "matrix", n, 0, nil, "1,7,1000", allTypes)
			checkAllOK(t, outs, 100)
			assertNoShmLeft(t, name)
		})
	}
}

// A tiny staging slot makes every collective run in many chunks.
func TestCollectivesTinySlot(t *testing.T) {
	outs, name := runRanks(t, "matrix", 3, 0, []string{"NCCL_STANDIN_SLOT_BYTES=64"}, "1,7,101", "float32,float64,int32,float16,bfloat16,int8")
	checkAllOK(t, outs, 100)
	assertNoShmLeft(t, name)
}

// 1<<20+3 elements are larger than the default 1 MiB slot.
func TestCollectivesLargeCount(t *testing.T) {
	if testing.Short() {
		t.Skip("large collectives in -short mode")
	}
	outs, name := runRanks(t, "matrix", 3, 0, nil, strconv.Itoa(1<<20+3), "float32,float64,int32,float16,bfloat16")
	checkAllOK(t, outs, 100)
	assertNoShmLeft(t, name)
}

func TestSendRecv(t *testing.T) {
	for _, tc := range []struct{ n, count int }{{2, 1}, {2, 100000}, {4, 100000}, {3, 7}} {
		t.Run(fmt.Sprintf("nranks=%d/count=%d", tc.n, tc.count), func(t *testing.T) {
			outs, name := runRanks(t, "p2p", tc.n, 0, nil, strconv.Itoa(tc.count))
			checkAllOK(t, outs, 1)
			assertNoShmLeft(t, name)
		})
	}
}

var errLine = regexp.MustCompile(`^ERR (\S+) rc=(\d+) ms=(\d+) msg=(.*)$`)

type errRes struct {
	rc, ms int
	msg    string
}

func errLines(t *testing.T, o rankOut) map[string]errRes {
	t.Helper()
	m := map[string]errRes{}
	for _, l := range o.lines {
		if g := errLine.FindStringSubmatch(l); g != nil {
			rc, _ := strconv.Atoi(g[2])
			ms, _ := strconv.Atoi(g[3])
			m[g[1]] = errRes{rc, ms, g[4]}
		}
	}
	return m
}

func lineValue(o rankOut, prefix string) string {
	for _, l := range o.lines {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimPrefix(l, prefix)
		}
	}
	return ""
}

const (
	rcSystemError     = 2
	rcInvalidArgument = 4
	rcInvalidUsage    = 5
	rcRemoteError     = 6
)

func TestRankExitsEarly(t *testing.T) {
	const timeout = 4000
	outs, name := runRanks(t, "exitearly", 3, 0, []string{"NCCL_STANDIN_TIMEOUT_MS=" + strconv.Itoa(timeout)})
	for r := 0; r < 2; r++ {
		require.NoError(t, outs[r].err, "rank %d:\n%s", r, outs[r])
		e := errLines(t, outs[r])
		ar, ok := e["allreduce"]
		require.True(t, ok, "rank %d:\n%s", r, outs[r])
		assert.Contains(t, []int{rcSystemError, rcRemoteError}, ar.rc)
		assert.Contains(t, ar.msg, "rank 2", "the message names the missing rank")
		assert.Less(t, ar.ms, timeout+2000)
		assert.NotEqual(t, "0", lineValue(outs[r], "ASYNC "))
		assert.NotZero(t, e["again"].rc, "later calls fail too")
	}
	assertNoShmLeft(t, name)
}

func TestRankHangsTimesOut(t *testing.T) {
	const timeout = 1000
	outs, _ := runRanks(t, "hang", 2, 0, []string{"NCCL_STANDIN_TIMEOUT_MS=" + strconv.Itoa(timeout)})
	require.NoError(t, outs[0].err, "%s", outs[0])
	ar := errLines(t, outs[0])["allreduce"]
	assert.Equal(t, rcSystemError, ar.rc, "%s", outs[0])
	assert.Contains(t, ar.msg, "timed out")
	assert.Contains(t, ar.msg, "rank 1")
	assert.GreaterOrEqual(t, ar.ms, timeout-50)
	assert.Less(t, ar.ms, timeout+3000)
	assert.Equal(t, strconv.Itoa(rcSystemError), lineValue(outs[0], "ASYNC "))
}

func TestInitTimeoutNamesMissingRank(t *testing.T) {
	outs, name := runRanks(t, "initonly", 3, 2, []string{"NCCL_STANDIN_TIMEOUT_MS=800"})
	for r := 0; r < 2; r++ {
		require.NoError(t, outs[r].err)
		e := errLines(t, outs[r])["init"]
		assert.Contains(t, []int{rcSystemError, rcRemoteError}, e.rc, "rank %d: %s", r, outs[r])
		assert.Contains(t, e.msg, "rank 2")
		assert.Contains(t, e.msg, "join")
	}
	assertNoShmLeft(t, name)
}

func TestAbortUnblocksCollective(t *testing.T) {
	outs, name := runRanks(t, "abort", 2, 0, []string{"NCCL_STANDIN_TIMEOUT_MS=30000"})
	for r := range outs {
		require.NoError(t, outs[r].err, "rank %d:\n%s", r, outs[r])
	}
	b := errLines(t, outs[0])["blocked"]
	assert.NotZero(t, b.rc, "%s", outs[0])
	assert.Less(t, b.ms, 5000, "the abort unblocked the all-reduce long before the timeout")
	assert.Contains(t, b.msg, "abort")
	assert.Equal(t, "0", lineValue(outs[0], "ABORTRC "))
	a := errLines(t, outs[1])["after"]
	assert.Equal(t, rcRemoteError, a.rc, "%s", outs[1])
	assert.Contains(t, a.msg, "rank 0")
	assert.Less(t, a.ms, 1000)
	assert.Equal(t, strconv.Itoa(rcRemoteError), lineValue(outs[1], "ASYNC "))
	assertNoShmLeft(t, name)
}

func TestMismatchedCalls(t *testing.T) {
	outs, _ := runRanks(t, "mismatch", 2, 0, []string{"NCCL_STANDIN_TIMEOUT_MS=5000"})
	for r := range outs {
		require.NoError(t, outs[r].err, "rank %d:\n%s", r, outs[r])
		c := errLines(t, outs[r])["coll"]
		assert.Equal(t, rcInvalidUsage, c.rc, "rank %d: %s", r, outs[r])
		assert.Contains(t, c.msg, "mismatched collective")
		assert.Equal(t, "rc=0", lineValue(outs[r], "AFTER "), "the communicator still works")
	}
	rv := errLines(t, outs[1])["recv"]
	assert.Equal(t, rcInvalidUsage, rv.rc, "%s", outs[1])
	assert.Contains(t, rv.msg, "expected 20 bytes")
}

func TestArgumentErrors(t *testing.T) {
	outs, name := runRanks(t, "args", 1, 0, nil)
	checkAllOK(t, outs, 20)
	assertNoShmLeft(t, name)
}

func TestRanksInOneProcess(t *testing.T) {
	lib, driver := tools(t)
	for _, tc := range []struct {
		scenario string
		n        int
	}{{"threads", 4}, {"nonblocking", 3}, {"initall", 4}, {"initall", 1}} {
		t.Run(fmt.Sprintf("%s/%d", tc.scenario, tc.n), func(t *testing.T) {
			out, err := exec.Command(driver, lib, tc.scenario, "0", strconv.Itoa(tc.n), "x").CombinedOutput()
			require.NoError(t, err, "%s", out)
			s := string(out)
			assert.NotContains(t, s, "FAIL")
			assert.Contains(t, s, "OK ")
			lines := strings.Split(strings.TrimSpace(s), "\n")
			checkAllOK(t, []rankOut{{lines: append(lines, "DONE fail=0")}}, 1)
		})
	}
}
