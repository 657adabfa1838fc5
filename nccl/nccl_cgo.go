//go:build cgo

package nccl

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo CFLAGS: -I${SRCDIR}/../csrc -D_GNU_SOURCE
#cgo LDFLAGS: -ldl
#include "nccl_abi.h"
*/
import "C"

import (
	"fmt"
	"os"
	"strings"
	"unsafe"
)

// defaultNames are dlopen'd, in order, when neither Load's path nor
// NCCL_LIBRARY is set.
var defaultNames = []string{"libnccl.so.2", "libnccl.so"}

// Load dlopens libnccl and resolves its symbols. It tries path if it is not
// empty, else $NCCL_LIBRARY if set, else "libnccl.so.2" then "libnccl.so"
// (found through the usual dynamic-linker search: LD_LIBRARY_PATH,
// ld.so.cache, ...). A library that lacks a core symbol (ncclGetVersion,
// ncclGetUniqueId, ncclCommInitRank, ncclAllReduce, ncclGetErrorString) is
// rejected with an error wrapping ErrSymbolMissing; other missing symbols
// only make their methods fail. When nothing loads, the error wraps
// ErrLibraryNotFound and lists what was tried.
func Load(path string) (*Library, error) {
	var tried []string
	switch {
	case path != "":
		tried = []string{path}
	case os.Getenv("NCCL_LIBRARY") != "":
		tried = []string{os.Getenv("NCCL_LIBRARY")}
	default:
		tried = defaultNames
	}
	var reasons []string
	for _, name := range tried {
		cname := C.CString(name)
		var ebuf [512]C.char
		L := C.nccl_lib_open(cname, &ebuf[0], C.size_t(len(ebuf)))
		C.free(unsafe.Pointer(cname))
		if L == nil {
			reasons = append(reasons, fmt.Sprintf("%s (%s)", name, C.GoString(&ebuf[0])))
			continue
		}
		resolved := name
		if p := C.nccl_lib_path(L); p != nil {
			resolved = C.GoString(p)
		}
		return newLibrary(resolved, newCAPI(L))
	}
	how := "install NCCL 2.x (NVIDIA's libnccl2 package from the CUDA repository, or pip's nvidia-nccl-cu12) so the dynamic linker finds libnccl.so.2, or set NCCL_LIBRARY to the library's full path"
	return nil, fmt.Errorf("%w: tried %s; %s", ErrLibraryNotFound, strings.Join(reasons, ", "), how)
}

// cAPI calls through a dlsym'd table.
type cAPI struct {
	L   *C.nccl_lib
	sym map[string]bool
}

func newCAPI(L *C.nccl_lib) *cAPI {
	a := &cAPI{L: L, sym: map[string]bool{}}
	for i := C.int(0); i < C.NCCL_SYM_COUNT; i++ {
		a.sym[C.GoString(C.nccl_sym_name(i))] = C.nccl_has(L, i) != 0
	}
	return a
}

func (a *cAPI) has(sym string) bool { return a.sym[sym] }

func ch(h handle) C.ncclComm_t { return C.ncclComm_t(h) }

func cid(id UniqueID) C.ncclUniqueId {
	var c C.ncclUniqueId
	*(*[UniqueIDBytes]byte)(unsafe.Pointer(&c)) = id
	return c
}

func (a *cAPI) getVersion() (int, Result) {
	var v C.int
	r := C.nccl_GetVersion(a.L, &v)
	return int(v), Result(r)
}

func (a *cAPI) getUniqueID() (UniqueID, Result) {
	var c C.ncclUniqueId
	r := C.nccl_GetUniqueId(a.L, &c)
	return *(*[UniqueIDBytes]byte)(unsafe.Pointer(&c)), Result(r)
}

func (a *cAPI) commInitRank(nranks int, id UniqueID, rank int) (handle, Result) {
	var c C.ncclComm_t
	r := C.nccl_CommInitRank(a.L, &c, C.int(nranks), cid(id), C.int(rank))
	return handle(c), Result(r)
}

func (a *cAPI) commInitRankConfig(nranks int, id UniqueID, rank int, cfg Config) (handle, func(), Result) {
	// The config (and NetName) live in C memory until the comm is gone:
	// NCCL may keep pointers into them, and in non-blocking mode it reads
	// them after the call returns.
	cc := (*C.ncclConfig_t)(C.calloc(1, C.sizeof_ncclConfig_t))
	C.nccl_config_init(cc)
	if cfg.Blocking != nil {
		cc.blocking = 0
		if *cfg.Blocking {
			cc.blocking = 1
		}
	}
	if cfg.CGAClusterSize != 0 {
		cc.cgaClusterSize = C.int(cfg.CGAClusterSize)
	}
	if cfg.MinCTAs != 0 {
		cc.minCTAs = C.int(cfg.MinCTAs)
	}
	if cfg.MaxCTAs != 0 {
		cc.maxCTAs = C.int(cfg.MaxCTAs)
	}
	var name *C.char
	if cfg.NetName != "" {
		name = C.CString(cfg.NetName)
		cc.netName = name
	}
	release := func() {
		C.free(unsafe.Pointer(name))
		C.free(unsafe.Pointer(cc))
	}
	var c C.ncclComm_t
	r := C.nccl_CommInitRankConfig(a.L, &c, C.int(nranks), cid(id), C.int(rank), cc)
	return handle(c), release, Result(r)
}

func (a *cAPI) commInitAll(devices []int) ([]handle, Result) {
	n := len(devices)
	comms := make([]C.ncclComm_t, n)
	devs := make([]C.int, n)
	for i, d := range devices {
		devs[i] = C.int(d)
	}
	r := C.nccl_CommInitAll(a.L, &comms[0], C.int(n), &devs[0])
	hs := make([]handle, n)
	for i := range comms {
		hs[i] = handle(comms[i])
	}
	return hs, Result(r)
}

func (a *cAPI) commFinalize(c handle) Result { return Result(C.nccl_CommFinalize(a.L, ch(c))) }
func (a *cAPI) commDestroy(c handle) Result  { return Result(C.nccl_CommDestroy(a.L, ch(c))) }
func (a *cAPI) commAbort(c handle) Result    { return Result(C.nccl_CommAbort(a.L, ch(c))) }

func (a *cAPI) getErrorString(r Result) string {
	return C.GoString(C.nccl_GetErrorString(a.L, C.int(r)))
}

func (a *cAPI) getLastError(c handle) string {
	return C.GoString(C.nccl_GetLastError(a.L, ch(c)))
}

func (a *cAPI) commGetAsyncError(c handle) (Result, Result) {
	var async C.int
	r := C.nccl_CommGetAsyncError(a.L, ch(c), &async)
	return Result(async), Result(r)
}

func (a *cAPI) commCount(c handle) (int, Result) {
	var v C.int
	r := C.nccl_CommCount(a.L, ch(c), &v)
	return int(v), Result(r)
}

func (a *cAPI) commCuDevice(c handle) (int, Result) {
	var v C.int
	r := C.nccl_CommCuDevice(a.L, ch(c), &v)
	return int(v), Result(r)
}

func (a *cAPI) commUserRank(c handle) (int, Result) {
	var v C.int
	r := C.nccl_CommUserRank(a.L, ch(c), &v)
	return int(v), Result(r)
}

func up(p DevicePtr) C.uintptr_t { return C.uintptr_t(p) }
func us(s Stream) C.uintptr_t    { return C.uintptr_t(s) }

func (a *cAPI) allReduce(send, recv DevicePtr, count uint64, dt DataType, op RedOp, c handle, s Stream) Result {
	return Result(C.nccl_AllReduce(a.L, up(send), up(recv), C.size_t(count), C.int(dt), C.int(op), ch(c), us(s)))
}

func (a *cAPI) broadcast(send, recv DevicePtr, count uint64, dt DataType, root int, c handle, s Stream) Result {
	return Result(C.nccl_Broadcast(a.L, up(send), up(recv), C.size_t(count), C.int(dt), C.int(root), ch(c), us(s)))
}

func (a *cAPI) reduce(send, recv DevicePtr, count uint64, dt DataType, op RedOp, root int, c handle, s Stream) Result {
	return Result(C.nccl_Reduce(a.L, up(send), up(recv), C.size_t(count), C.int(dt), C.int(op), C.int(root), ch(c), us(s)))
}

func (a *cAPI) allGather(send, recv DevicePtr, count uint64, dt DataType, c handle, s Stream) Result {
	return Result(C.nccl_AllGather(a.L, up(send), up(recv), C.size_t(count), C.int(dt), ch(c), us(s)))
}

func (a *cAPI) reduceScatter(send, recv DevicePtr, count uint64, dt DataType, op RedOp, c handle, s Stream) Result {
	return Result(C.nccl_ReduceScatter(a.L, up(send), up(recv), C.size_t(count), C.int(dt), C.int(op), ch(c), us(s)))
}

func (a *cAPI) send(buf DevicePtr, count uint64, dt DataType, peer int, c handle, s Stream) Result {
	return Result(C.nccl_Send(a.L, up(buf), C.size_t(count), C.int(dt), C.int(peer), ch(c), us(s)))
}

func (a *cAPI) recv(buf DevicePtr, count uint64, dt DataType, peer int, c handle, s Stream) Result {
	return Result(C.nccl_Recv(a.L, up(buf), C.size_t(count), C.int(dt), C.int(peer), ch(c), us(s)))
}

func (a *cAPI) groupStart() Result { return Result(C.nccl_GroupStart(a.L)) }
func (a *cAPI) groupEnd() Result   { return Result(C.nccl_GroupEnd(a.L)) }

// abiLayout reports sizes, offsets and enum values of the C declarations,
// for the ABI test.
func abiLayout() map[string]int {
	var cfg C.ncclConfig_t
	return map[string]int{
		"sizeof(ncclUniqueId)":        int(C.sizeof_ncclUniqueId),
		"NCCL_UNIQUE_ID_BYTES":        int(C.NCCL_UNIQUE_ID_BYTES),
		"sizeof(ncclConfig_t)":        int(C.sizeof_ncclConfig_t),
		"offsetof(size)":              int(unsafe.Offsetof(cfg.size)),
		"offsetof(magic)":             int(unsafe.Offsetof(cfg.magic)),
		"offsetof(version)":           int(unsafe.Offsetof(cfg.version)),
		"offsetof(blocking)":          int(unsafe.Offsetof(cfg.blocking)),
		"offsetof(cgaClusterSize)":    int(unsafe.Offsetof(cfg.cgaClusterSize)),
		"offsetof(minCTAs)":           int(unsafe.Offsetof(cfg.minCTAs)),
		"offsetof(maxCTAs)":           int(unsafe.Offsetof(cfg.maxCTAs)),
		"offsetof(netName)":           int(unsafe.Offsetof(cfg.netName)),
		"offsetof(splitShare)":        int(unsafe.Offsetof(cfg.splitShare)),
		"sizeof(ncclComm_t)":          int(unsafe.Sizeof(C.ncclComm_t(nil))),
		"sizeof(ncclResult_t)":        int(unsafe.Sizeof(C.ncclResult_t(0))),
		"ncclSuccess":                 int(C.ncclSuccess),
		"ncclUnhandledCudaError":      int(C.ncclUnhandledCudaError),
		"ncclSystemError":             int(C.ncclSystemError),
		"ncclInternalError":           int(C.ncclInternalError),
		"ncclInvalidArgument":         int(C.ncclInvalidArgument),
		"ncclInvalidUsage":            int(C.ncclInvalidUsage),
		"ncclRemoteError":             int(C.ncclRemoteError),
		"ncclInProgress":              int(C.ncclInProgress),
		"ncclSum":                     int(C.ncclSum),
		"ncclProd":                    int(C.ncclProd),
		"ncclMax":                     int(C.ncclMax),
		"ncclMin":                     int(C.ncclMin),
		"ncclAvg":                     int(C.ncclAvg),
		"ncclInt8":                    int(C.ncclInt8),
		"ncclUint8":                   int(C.ncclUint8),
		"ncclInt32":                   int(C.ncclInt32),
		"ncclUint32":                  int(C.ncclUint32),
		"ncclInt64":                   int(C.ncclInt64),
		"ncclUint64":                  int(C.ncclUint64),
		"ncclFloat16":                 int(C.ncclFloat16),
		"ncclFloat32":                 int(C.ncclFloat32),
		"ncclFloat64":                 int(C.ncclFloat64),
		"ncclBfloat16":                int(C.ncclBfloat16),
		"NCCL_CONFIG_UNDEF_INT":       int(C.NCCL_CONFIG_UNDEF_INT),
		"NCCL_CONFIG_MAGIC":           int(C.NCCL_CONFIG_MAGIC),
		"GOTRAIN_NCCL_CONFIG_VERSION": int(C.GOTRAIN_NCCL_CONFIG_VERSION),
		"NCCL_SYM_COUNT":              int(C.NCCL_SYM_COUNT),
	}
}

// abiConfigDefaults returns the fields nccl_config_init sets.
func abiConfigDefaults() (size, magic, version, blocking, cga, minCTAs, maxCTAs, splitShare int, netNameNil bool) {
	var cfg C.ncclConfig_t
	C.nccl_config_init(&cfg)
	return int(cfg.size), int(cfg.magic), int(cfg.version), int(cfg.blocking), int(cfg.cgaClusterSize),
		int(cfg.minCTAs), int(cfg.maxCTAs), int(cfg.splitShare), cfg.netName == nil
}
