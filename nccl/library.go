package nccl

import (
	"fmt"
	"math"
	"unsafe"
)

// handle is an ncclComm_t: a pointer to C memory owned by libnccl, never
// dereferenced in Go.
type handle = unsafe.Pointer

// api is the call table behind a Library: the cgo build implements it with
// dlsym'd function pointers (nccl_cgo.go); tests substitute fakes. Every
// method returns the raw ncclResult_t; validation happens before it is called.
type api interface {
	has(sym string) bool
	getVersion() (int, Result)
	getUniqueID() (UniqueID, Result)
	commInitRank(nranks int, id UniqueID, rank int) (handle, Result)
	// commInitRankConfig returns release, which frees what must outlive the
	// call (the C copy of NetName); it is called when the comm is destroyed.
	commInitRankConfig(nranks int, id UniqueID, rank int, cfg Config) (h handle, release func(), r Result)
	commInitAll(devices []int) ([]handle, Result)
	commFinalize(c handle) Result
	commDestroy(c handle) Result
	commAbort(c handle) Result
	getErrorString(r Result) string
	getLastError(c handle) string
	commGetAsyncError(c handle) (async Result, r Result)
	commCount(c handle) (int, Result)
	commCuDevice(c handle) (int, Result)
	commUserRank(c handle) (int, Result)
	allReduce(send, recv DevicePtr, count uint64, dt DataType, op RedOp, c handle, s Stream) Result
	broadcast(send, recv DevicePtr, count uint64, dt DataType, root int, c handle, s Stream) Result
	reduce(send, recv DevicePtr, count uint64, dt DataType, op RedOp, root int, c handle, s Stream) Result
	allGather(send, recv DevicePtr, sendCount uint64, dt DataType, c handle, s Stream) Result
	reduceScatter(send, recv DevicePtr, recvCount uint64, dt DataType, op RedOp, c handle, s Stream) Result
	send(buf DevicePtr, count uint64, dt DataType, peer int, c handle, s Stream) Result
	recv(buf DevicePtr, count uint64, dt DataType, peer int, c handle, s Stream) Result
	groupStart() Result
	groupEnd() Result
}

// Library is a loaded libnccl. It is safe for concurrent use. A library is
// never unloaded (dlclose with live communicators would be fatal).
type Library struct {
	path                string
	api                 api
	code                int // as ncclGetVersion reported it
	major, minor, patch int
}

// newLibrary checks the core symbols and reads the version.
func newLibrary(path string, a api) (*Library, error) {
	var missing []string
	for _, s := range coreSymbols {
		if !a.has(s) {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("nccl: %s is not a usable libnccl: it lacks the core symbol(s) %v (every NCCL 2.x has them): %w", path, missing, ErrSymbolMissing)
	}
	l := &Library{path: path, api: a}
	code, r := a.getVersion()
	if r != Success {
		return nil, l.fail("ncclGetVersion", r, nil)
	}
	var err error
	l.code = code
	if l.major, l.minor, l.patch, err = parseVersion(code); err != nil {
		return nil, err
	}
	return l, nil
}

// Path is the file the library was loaded from (as dlopen resolved it, when
// known, else the name passed to dlopen).
func (l *Library) Path() string { return l.path }

// Version returns NCCL's version, split, and the code ncclGetVersion
// reported (e.g. 21903 for 2.19.3; 2804 for 2.8.4).
func (l *Library) Version() (major, minor, patch int, code int, err error) {
	return l.major, l.minor, l.patch, l.code, nil
}

func (l *Library) versionString() string {
	return fmt.Sprintf("%d.%d.%d", l.major, l.minor, l.patch)
}

func (l *Library) atLeast(major, minor int) bool {
	return l.major > major || (l.major == major && l.minor >= minor)
}

// need returns a *SymbolError if the library lacks sym.
func (l *Library) need(sym string) error {
	if l.api.has(sym) {
		return nil
	}
	return &SymbolError{Symbol: sym, Since: symbolSince[sym], Path: l.path, Version: l.versionString()}
}

// fail builds the *Error for a call that returned r. c, when not nil, is a
// live communicator for ncclGetLastError.
func (l *Library) fail(fn string, r Result, c handle) error {
	e := &Error{Func: fn, Code: r, Msg: l.api.getErrorString(r)}
	if l.api.has("ncclGetLastError") {
		e.Last = l.api.getLastError(c)
	}
	return e
}

// check validates a data type and operator against the library's version.
func (l *Library) checkTypes(fn string, dt DataType, op RedOp, hasOp bool) error {
	if !dt.valid() {
		return argErr(fn, "unknown data type %v", dt)
	}
	if hasOp && !op.valid() {
		return argErr(fn, "unknown reduction operator %v", op)
	}
	if dt == Bfloat16 && !l.atLeast(2, 10) {
		return &SymbolError{Symbol: "ncclBfloat16", Since: "2.10", Path: l.path, Version: l.versionString()}
	}
	if hasOp && op == Avg && !l.atLeast(2, 10) {
		return &SymbolError{Symbol: "ncclAvg", Since: "2.10", Path: l.path, Version: l.versionString()}
	}
	return nil
}

// GetUniqueID makes a new unique id (ncclGetUniqueId); rank 0 calls it and
// shares the result with the other ranks.
func (l *Library) GetUniqueID() (UniqueID, error) {
	id, r := l.api.getUniqueID()
	if r != Success {
		return UniqueID{}, l.fail("ncclGetUniqueId", r, nil)
	}
	return id, nil
}

func checkRanks(fn string, nranks, rank int) error {
	if nranks < 1 || nranks > math.MaxInt32 {
		return argErr(fn, "nranks %d out of range [1, %d]", nranks, math.MaxInt32)
	}
	if rank < 0 || rank >= nranks {
		return argErr(fn, "rank %d out of range [0, %d)", rank, nranks)
	}
	return nil
}

// InitRank creates this process's communicator for rank of nranks
// (ncclCommInitRank). It blocks until every rank has called it.
func (l *Library) InitRank(nranks int, id UniqueID, rank int) (*Comm, error) {
	const fn = "ncclCommInitRank"
	if err := checkRanks(fn, nranks, rank); err != nil {
		return nil, err
	}
	h, r := l.api.commInitRank(nranks, id, rank)
	if r != Success {
		return nil, l.fail(fn, r, nil)
	}
	if h == nil {
		return nil, &Error{Func: fn, Code: InternalError, Msg: "returned success but no communicator"}
	}
	return &Comm{lib: l, h: h, nranks: nranks, rank: rank}, nil
}

// InitRankConfig is InitRank with a Config (ncclCommInitRankConfig, NCCL >=
// 2.14). With Blocking set to false NCCL may return before the communicator
// is ready: the Comm is returned anyway, and the caller must call WaitReady
// (or poll GetAsyncError until it returns nil) before using it.
func (l *Library) InitRankConfig(nranks int, id UniqueID, rank int, cfg Config) (*Comm, error) {
	const fn = "ncclCommInitRankConfig"
	if err := l.need(fn); err != nil {
		return nil, err
	}
	if err := checkRanks(fn, nranks, rank); err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h, release, r := l.api.commInitRankConfig(nranks, id, rank, cfg)
	if r != Success && r != InProgress {
		if release != nil {
			release()
		}
		return nil, l.fail(fn, r, nil)
	}
	if h == nil {
		if release != nil {
			release()
		}
		return nil, &Error{Func: fn, Code: InternalError, Msg: fmt.Sprintf("returned %v but no communicator", r)}
	}
	return &Comm{lib: l, h: h, nranks: nranks, rank: rank, release: release}, nil
}

// InitAll creates one communicator per device of this process
// (ncclCommInitAll); comm i has rank i and uses devices[i].
func (l *Library) InitAll(devices []int) ([]*Comm, error) {
	const fn = "ncclCommInitAll"
	if err := l.need(fn); err != nil {
		return nil, err
	}
	if len(devices) == 0 || len(devices) > math.MaxInt32 {
		return nil, argErr(fn, "%d devices", len(devices))
	}
	for i, d := range devices {
		if d < 0 || d > math.MaxInt32 {
			return nil, argErr(fn, "devices[%d] = %d out of range", i, d)
		}
	}
	hs, r := l.api.commInitAll(devices)
	if r != Success {
		return nil, l.fail(fn, r, nil)
	}
	comms := make([]*Comm, len(hs))
	for i, h := range hs {
		comms[i] = &Comm{lib: l, h: h, nranks: len(devices), rank: i}
	}
	return comms, nil
}

// GroupStart opens a group (ncclGroupStart): the calls up to GroupEnd are
// fused; Send/Recv pairs must be grouped.
func (l *Library) GroupStart() error {
	if err := l.need("ncclGroupStart"); err != nil {
		return err
	}
	if r := l.api.groupStart(); r != Success {
		return l.fail("ncclGroupStart", r, nil)
	}
	return nil
}

// GroupEnd closes a group (ncclGroupEnd). It may block until the peers
// join (run it under Comm.Run to bound that); in non-blocking mode it may
// return an error matching InProgress.
func (l *Library) GroupEnd() error {
	if err := l.need("ncclGroupEnd"); err != nil {
		return err
	}
	if r := l.api.groupEnd(); r != Success {
		return l.fail("ncclGroupEnd", r, nil)
	}
	return nil
}
