package nccl

import (
	"sync"
	"sync/atomic"
	"unsafe"
)

// fakeAPI is an in-memory api for tests of the Go logic: it never touches C.
type fakeAPI struct {
	missing map[string]bool
	version int

	mu      sync.Mutex
	calls   []string
	async   Result        // what commGetAsyncError reports
	result  Result        // what collectives return
	block   chan struct{} // when not nil, collectives block until it closes or the comm aborts
	aborted chan struct{}
	abortN  atomic.Int32
	destroy atomic.Int32
	last    string
}

func newFake() *fakeAPI {
	return &fakeAPI{missing: map[string]bool{}, version: 21903, aborted: make(chan struct{})}
}

var fakeComm = new(int) // any non-nil pointer: the fake never dereferences it

func (f *fakeAPI) rec(name string) {
	f.mu.Lock()
	f.calls = append(f.calls, name)
	f.mu.Unlock()
}

func (f *fakeAPI) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeAPI) has(sym string) bool       { _, known := symbolSince[sym]; return known && !f.missing[sym] }
func (f *fakeAPI) getVersion() (int, Result) { return f.version, Success }
func (f *fakeAPI) getUniqueID() (UniqueID, Result) {
	var id UniqueID
	id[0] = 42
	return id, Success
}
func (f *fakeAPI) commInitRank(int, UniqueID, int) (handle, Result) {
	return unsafe.Pointer(fakeComm), Success
}
func (f *fakeAPI) commInitRankConfig(int, UniqueID, int, Config) (handle, func(), Result) {
	return unsafe.Pointer(fakeComm), nil, InProgress
}
func (f *fakeAPI) commInitAll(d []int) ([]handle, Result) {
	hs := make([]handle, len(d))
	for i := range hs {
		hs[i] = unsafe.Pointer(new(int))
	}
	return hs, Success
}
func (f *fakeAPI) commFinalize(handle) Result { f.rec("finalize"); return Success }
func (f *fakeAPI) commDestroy(handle) Result  { f.rec("destroy"); f.destroy.Add(1); return Success }
func (f *fakeAPI) commAbort(handle) Result {
	f.rec("abort")
	if f.abortN.Add(1) == 1 {
		close(f.aborted)
	}
	return Success
}
func (f *fakeAPI) getErrorString(r Result) string { return r.String() }
func (f *fakeAPI) getLastError(handle) string     { return f.last }
func (f *fakeAPI) commGetAsyncError(handle) (Result, Result) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.async, Success
}
func (f *fakeAPI) setAsync(r Result)                 { f.mu.Lock(); f.async = r; f.mu.Unlock() }
func (f *fakeAPI) commCount(handle) (int, Result)    { return 4, Success }
func (f *fakeAPI) commCuDevice(handle) (int, Result) { return 0, Success }
func (f *fakeAPI) commUserRank(handle) (int, Result) { return 1, Success }

func (f *fakeAPI) coll(name string) Result {
	f.rec(name)
	if f.block != nil {
		select {
		case <-f.block:
		case <-f.aborted:
			return RemoteError
		}
	}
	return f.result
}
func (f *fakeAPI) allReduce(DevicePtr, DevicePtr, uint64, DataType, RedOp, handle, Stream) Result {
	return f.coll("allreduce")
}
func (f *fakeAPI) broadcast(DevicePtr, DevicePtr, uint64, DataType, int, handle, Stream) Result {
	return f.coll("broadcast")
}
func (f *fakeAPI) reduce(DevicePtr, DevicePtr, uint64, DataType, RedOp, int, handle, Stream) Result {
	return f.coll("reduce")
}
func (f *fakeAPI) allGather(DevicePtr, DevicePtr, uint64, DataType, handle, Stream) Result {
	return f.coll("allgather")
}
func (f *fakeAPI) reduceScatter(DevicePtr, DevicePtr, uint64, DataType, RedOp, handle, Stream) Result {
	return f.coll("reducescatter")
}
func (f *fakeAPI) send(DevicePtr, uint64, DataType, int, handle, Stream) Result {
	return f.coll("send")
}
func (f *fakeAPI) recv(DevicePtr, uint64, DataType, int, handle, Stream) Result {
	return f.coll("recv")
}
func (f *fakeAPI) groupStart() Result { return Success }
func (f *fakeAPI) groupEnd() Result   { return f.coll("groupend") }

// fakeLib returns a Library over f and a comm of rank 1 of 4.
func fakeLib(f *fakeAPI) (*Library, *Comm) {
	l, err := newLibrary("fake", f)
	if err != nil {
		panic(err)
	}
	c, err := l.InitRank(4, UniqueID{}, 1)
	if err != nil {
		panic(err)
	}
	return l, c
}
