//go:build cgo

package nccl

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestABILayout(t *testing.T) {
	m := abiLayout()
	assert.Equal(t, 128, m["sizeof(ncclUniqueId)"])
	assert.Equal(t, UniqueIDBytes, m["NCCL_UNIQUE_ID_BYTES"])
	assert.Equal(t, 4, m["sizeof(ncclResult_t)"])
	assert.Equal(t, int(unsafe.Sizeof(uintptr(0))), m["sizeof(ncclComm_t)"])
	assert.Equal(t, 23, m["NCCL_SYM_COUNT"])
	assert.Equal(t, len(symbolSince), m["NCCL_SYM_COUNT"], "symbolSince lists every table symbol")
	if runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64" {
		// LP64: size_t 8, unsigned/int 4, pointer 8.
		for k, v := range map[string]int{
			"offsetof(size)": 0, "offsetof(magic)": 8, "offsetof(version)": 12,
			"offsetof(blocking)": 16, "offsetof(cgaClusterSize)": 20, "offsetof(minCTAs)": 24,
			"offsetof(maxCTAs)": 28, "offsetof(netName)": 32, "offsetof(splitShare)": 40,
			"sizeof(ncclConfig_t)": 48,
		} {
			assert.Equal(t, v, m[k], k)
		}
	}
	enums := map[string]int{
		"ncclSuccess": int(Success), "ncclUnhandledCudaError": int(UnhandledCudaError), "ncclSystemError": int(SystemError),
		"ncclInternalError": int(InternalError), "ncclInvalidArgument": int(InvalidArgument), "ncclInvalidUsage": int(InvalidUsage),
		"ncclRemoteError": int(RemoteError), "ncclInProgress": int(InProgress),
		"ncclSum": int(Sum), "ncclProd": int(Prod), "ncclMax": int(Max), "ncclMin": int(Min), "ncclAvg": int(Avg),
		"ncclInt8": int(Int8), "ncclUint8": int(Uint8), "ncclInt32": int(Int32), "ncclUint32": int(Uint32),
		"ncclInt64": int(Int64), "ncclUint64": int(Uint64), "ncclFloat16": int(Float16), "ncclFloat32": int(Float32),
		"ncclFloat64": int(Float64), "ncclBfloat16": int(Bfloat16),
	}
	for k, v := range enums {
		assert.Equal(t, v, m[k], k)
	}
	assert.Equal(t, -2147483648, m["NCCL_CONFIG_UNDEF_INT"])
	assert.Equal(t, 0xcafebeef, m["NCCL_CONFIG_MAGIC"])
	assert.Equal(t, 21700, m["GOTRAIN_NCCL_CONFIG_VERSION"])

	size, magic, version, blocking, cga, minC, maxC, split, netNil := abiConfigDefaults()
	assert.Equal(t, m["sizeof(ncclConfig_t)"], size)
	assert.Equal(t, 0xcafebeef, magic)
	assert.Equal(t, 21700, version)
	for _, v := range []int{blocking, cga, minC, maxC, split} {
		assert.Equal(t, -2147483648, v)
	}
	assert.True(t, netNil)
}

// buildSO compiles a C snippet into a shared library in a temporary folder.
func buildSO(t *testing.T, name, src string) string {
	t.Helper()
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		t.Skipf("no C compiler (%s) to build the test library %s: %v", cc, name, err)
	}
	dir := t.TempDir()
	c := filepath.Join(dir, name+".c")
	so := filepath.Join(dir, name+".so")
	require.NoError(t, os.WriteFile(c, []byte(src), 0o644))
	out, err := exec.Command(cc, "-shared", "-fPIC", "-o", so, c).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return so
}

func TestLoadNotFound(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "libnccl.so.2"))
	require.ErrorIs(t, err, ErrLibraryNotFound)
	assert.Contains(t, err.Error(), "libnccl.so.2 (")
	assert.Contains(t, err.Error(), "install NCCL")
	assert.Contains(t, err.Error(), "NCCL_LIBRARY")

	t.Setenv("NCCL_LIBRARY", "/nonexistent/from-env/libnccl.so.2")
	_, err = Load("")
	require.ErrorIs(t, err, ErrLibraryNotFound)
	assert.Contains(t, err.Error(), "/nonexistent/from-env/libnccl.so.2")

	os.Unsetenv("NCCL_LIBRARY")
	l, err := Load("")
	if err == nil {
		t.Logf("this machine has NCCL: %s", l.Path())
		return
	}
	require.ErrorIs(t, err, ErrLibraryNotFound)
	assert.Contains(t, err.Error(), "libnccl.so.2 (")
	assert.Contains(t, err.Error(), "libnccl.so (")
}

func TestLoadMissingCoreSymbols(t *testing.T) {
	so := buildSO(t, "libnccl-versiononly", `int ncclGetVersion(int* v) { *v = 21903; return 0; }`)
	_, err := Load(so)
	require.ErrorIs(t, err, ErrSymbolMissing)
	for _, s := range []string{"ncclGetUniqueId", "ncclCommInitRank", "ncclAllReduce", "ncclGetErrorString", so} {
		assert.Contains(t, err.Error(), s)
	}
	assert.NotContains(t, err.Error(), "[ncclGetVersion")
}

// oldNCCL is an NCCL 2.12-like library: the core plus Destroy/Count/
// UserRank/CuDevice/GetAsyncError/Abort, but no ncclCommFinalize,
// ncclGetLastError or ncclCommInitRankConfig. It checks that the unique id
// arrives by value, intact, and implements a 1-rank float32 AllReduce.
const oldNCCL = `
#include <stdlib.h>
#include <string.h>
typedef struct { char internal[128]; } ncclUniqueId;
struct ncclComm { int nranks, rank; };
int ncclGetVersion(int* v) { *v = 21206; return 0; }
int ncclGetUniqueId(ncclUniqueId* id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 3); return 0; }
int ncclCommInitRank(struct ncclComm** c, int nranks, ncclUniqueId id, int rank) {
  for (int i = 0; i < 128; i++) if (id.internal[i] != (char)(i * 3)) return 4;
  *c = malloc(sizeof(struct ncclComm)); (*c)->nranks = nranks; (*c)->rank = rank; return 0;
}
int ncclAllReduce(const void* s, void* r, size_t n, int dt, int op, struct ncclComm* c, void* stream) {
  if (dt != 7 || c->nranks != 1) return 5;
  if (stream != (void*)0x1234) return 4;
  memmove(r, s, n * 4); return 0;
}
const char* ncclGetErrorString(int r) { return r == 5 ? "fake: invalid usage" : "fake: other"; }
int ncclCommDestroy(struct ncclComm* c) { free(c); return 0; }
int ncclCommAbort(struct ncclComm* c) { free(c); return 0; }
int ncclCommCount(struct ncclComm* c, int* n) { *n = c->nranks; return 0; }
int ncclCommUserRank(struct ncclComm* c, int* r) { *r = c->rank; return 0; }
int ncclCommCuDevice(struct ncclComm* c, int* d) { *d = 3; return 0; }
int ncclCommGetAsyncError(struct ncclComm* c, int* e) { *e = 0; return 0; }
`

func TestLoadOldLibrary(t *testing.T) {
	so := buildSO(t, "libnccl-old", oldNCCL)
	l, err := Load(so)
	require.NoError(t, err)
	assert.Equal(t, so, l.Path())
	ma, mi, pa, code, err := l.Version()
	require.NoError(t, err)
	assert.Equal(t, []int{2, 12, 6, 21206}, []int{ma, mi, pa, code})

	id, err := l.GetUniqueID()
	require.NoError(t, err)
	assert.Equal(t, byte(3), id[1])
	assert.Equal(t, byte(127*3%256), id[127])

	_, err = l.InitRankConfig(1, id, 0, Config{})
	require.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclCommInitRankConfig")
	assert.Contains(t, err.Error(), "2.14")

	var bad UniqueID
	_, err = l.InitRank(1, bad, 0)
	require.ErrorIs(t, err, ErrInvalidArgument, "the library saw a different id")

	c, err := l.InitRank(1, id, 0)
	require.NoError(t, err)
	n, err := c.Count()
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	dev, err := c.CuDevice()
	require.NoError(t, err)
	assert.Equal(t, 3, dev)
	require.NoError(t, c.GetAsyncError())

	x := []float32{1, 2, 3, 4}
	y := make([]float32, 4)
	require.NoError(t, c.AllReduce(DevicePtr(unsafe.Pointer(&x[0])), DevicePtr(unsafe.Pointer(&y[0])), 4, Float32, Sum, Stream(0x1234)))
	runtime.KeepAlive(x)
	runtime.KeepAlive(y)
	assert.Equal(t, x, y)

	err = c.AllReduce(DevicePtr(unsafe.Pointer(&x[0])), DevicePtr(unsafe.Pointer(&y[0])), 4, Float64, Sum, Stream(0x1234))
	var ne *Error
	require.ErrorAs(t, err, &ne)
	assert.Equal(t, Error{Func: "ncclAllReduce", Code: InvalidUsage, Msg: "fake: invalid usage"}, *ne)

	err = c.Finalize()
	require.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclCommFinalize")
	assert.Contains(t, err.Error(), "2.14")
	err = c.Broadcast(1, 1, 1, Float32, 0, 0)
	require.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclBroadcast")
	err = l.GroupStart()
	require.ErrorIs(t, err, ErrSymbolMissing)

	require.NoError(t, c.Destroy())
	require.NoError(t, c.Destroy())
	assert.ErrorIs(t, c.AllReduce(1, 1, 1, Float32, Sum, 0), ErrAborted)
}

func TestStandinSmoke(t *testing.T) {
	path := os.Getenv("GOTRAIN_NCCL_STANDIN")
	if path == "" {
		t.Skip("GOTRAIN_NCCL_STANDIN is not set: set it to a built stand-in libnccl.so.2 (nccl/testdata/standin) to run the smoke test")
	}
	l, err := Load(path)
	require.NoError(t, err)
	ma, mi, pa, code, err := l.Version()
	require.NoError(t, err)
	t.Logf("stand-in %s: NCCL %d.%d.%d (code %d)", l.Path(), ma, mi, pa, code)
	id, err := l.GetUniqueID()
	require.NoError(t, err)
	c, err := l.InitRank(1, id, 0)
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Destroy()) }()
	x := []float32{1, 2.5, -3}
	y := make([]float32, len(x))
	require.NoError(t, c.AllReduce(DevicePtr(unsafe.Pointer(&x[0])), DevicePtr(unsafe.Pointer(&y[0])), len(x), Float32, Sum, 0))
	runtime.KeepAlive(x)
	runtime.KeepAlive(y)
	assert.Equal(t, x, y, "AllReduce over one rank copies send to recv")
}

func TestStandinTwoRanksAndAbort(t *testing.T) {
	path := os.Getenv("GOTRAIN_NCCL_STANDIN")
	if path == "" {
		t.Skip("GOTRAIN_NCCL_STANDIN is not set: set it to a built stand-in libnccl.so.2 (nccl/testdata/standin) to run the 2-rank test")
	}
	l, err := Load(path)
	require.NoError(t, err)
	id, err := l.GetUniqueID()
	require.NoError(t, err)
	comms := make([]*Comm, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range comms {
		wg.Add(1)
		go func() { defer wg.Done(); comms[r], errs[r] = l.InitRank(2, id, r) }()
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))

	bufs := [][]float32{{1, 2}, {10, 20}}
	for r := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := DevicePtr(unsafe.Pointer(&bufs[r][0]))
			errs[r] = comms[r].AllReduce(p, p, 2, Float32, Sum, 0)
		}()
	}
	wg.Wait()
	runtime.KeepAlive(bufs)
	require.NoError(t, errors.Join(errs...))
	assert.Equal(t, [][]float32{{11, 22}, {11, 22}}, bufs)

	// Only rank 0 enters the collective: it blocks until Run aborts it.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	x := []float32{1}
	err = comms[0].Run(ctx, func() error {
		return comms[0].AllReduce(DevicePtr(unsafe.Pointer(&x[0])), DevicePtr(unsafe.Pointer(&x[0])), 1, Float32, Sum, 0)
	}, nil)
	runtime.KeepAlive(x)
	require.ErrorIs(t, err, ErrTimeout)
	assert.ErrorIs(t, comms[0].AllReduce(1, 1, 1, Float32, Sum, 0), ErrAborted)
	require.NoError(t, comms[1].Abort())
}
