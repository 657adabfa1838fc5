// Package nccl is gotrain's wrapper of NVIDIA's NCCL (libnccl.so.2): the
// collectives library behind the multi-GPU backend. It needs no NCCL
// headers or library to build, and no GPU to test.
//
// # Loading
//
// The library is opened at run time with dlopen, as go-nvml does for NVML:
//
//	lib, err := nccl.Load("") // or Load("/opt/nccl/lib/libnccl.so.2")
//
// Load tries the path it is given; else the file named by the environment
// variable NCCL_LIBRARY; else "libnccl.so.2" then "libnccl.so" through the
// dynamic linker's usual search (LD_LIBRARY_PATH, ld.so.cache). When
// nothing opens, the error wraps ErrLibraryNotFound, lists every name tried
// with dlopen's reason, and says how to fix it: install NCCL 2.x (NVIDIA's
// libnccl2 package, or pip's nvidia-nccl-cu12) or set NCCL_LIBRARY.
// Debian has no NCCL package, so callers are expected to fall back to
// another backend (trainer/dist's TCP ring) on that error. Libraries are
// never unloaded.
//
// Load resolves every symbol the package uses into a table. A library that
// lacks a core symbol (ncclGetVersion, ncclGetUniqueId, ncclCommInitRank,
// ncclAllReduce, ncclGetErrorString) is rejected with an error wrapping
// ErrSymbolMissing. Any other missing symbol is not fatal: the method that
// needs it returns a *SymbolError (wrapping ErrSymbolMissing) that names
// the symbol, the library's version and the NCCL version that introduced
// it, e.g. ncclCommInitRankConfig and ncclCommFinalize (2.14),
// ncclGetLastError (2.13), ncclSend/ncclRecv (2.7), ncclCommAbort and
// ncclCommGetAsyncError (2.4). The Avg operator and the Bfloat16 type are
// enums, not symbols: they are checked against the version (2.10).
//
// # Versions
//
// Library.Version returns major, minor, patch and the raw code from
// ncclGetVersion. NCCL >= 2.9 encodes major*10000+minor*100+patch (21903 =
// 2.19.3); older releases major*1000+minor*100+patch (2804 = 2.8.4); a
// code with extra trailing digits (2190300) is divided down first.
//
// # The Go API
//
// Rank 0 makes a UniqueID and shares it out of band (its MarshalBinary
// form is the 128 raw bytes); every rank then creates its communicator:
//
//	id, _ := lib.GetUniqueID()                 // rank 0 only; send id to the others
//	comm, err := lib.InitRank(nranks, id, rank) // blocks until all ranks join
//	defer comm.Destroy()
//	err = comm.AllReduce(buf, buf, n, nccl.Float32, nccl.Sum, stream)
//
// InitRankConfig takes a Config (ncclConfig_t; zero fields keep NCCL's
// defaults). With Config.Blocking set to false NCCL works asynchronously:
// InitRankConfig returns a communicator that may still be initialising,
// and calls may return an error matching InProgress; WaitReady (or
// polling GetAsyncError until nil) waits for them. InitAll makes one
// communicator per local device (ncclCommInitAll); GroupStart/GroupEnd
// bracket fused calls and Send/Recv pairs.
//
// Collectives (AllReduce, Broadcast, Reduce, AllGather, ReduceScatter,
// Send, Recv) take counts in elements, as NCCL does. Arguments are checked
// before any C call, and rejected with an error matching InvalidArgument:
// negative counts, counts whose byte size overflows an int (AllGather's
// and ReduceScatter's nranks-times larger buffer included), nil buffers
// with a count > 0 (Broadcast's send is only checked on root and Reduce's
// recv only on root), unknown data types or operators, roots and peers
// outside [0, nranks). Calls on a destroyed or aborted communicator
// return an error wrapping ErrAborted; after Finalize only queries,
// GetAsyncError and Destroy are allowed.
//
// Finalize (2.14) flushes pending work, Destroy frees the communicator and
// Abort stops and frees it even while other calls are blocked in it; all
// three are idempotent and Destroy/Abort never touch a freed handle.
// Destroy refuses while another goroutine is inside a call on the same
// communicator; Abort does not (that is its purpose).
//
// # Streams and pointers
//
// The package never imports CUDA. A DevicePtr is a device address
// (gorgonia.org/cu's cu.DevicePtr converts to it) and a Stream is a
// cudaStream_t/CUstream (0 is the default stream); both cross to C as
// integers. Collectives only enqueue work on the stream: completion is the
// stream's business (see Watch). Only the test stand-in library accepts
// host memory, e.g. DevicePtr(unsafe.Pointer(&x[0])); keep x alive with
// runtime.KeepAlive until the call returns.
//
// # Errors
//
// A failed NCCL call returns an *Error: the function, its ncclResult_t
// code, ncclGetErrorString's message and, when the library has it,
// ncclGetLastError's detail:
//
//	nccl: ncclAllReduce: invalid usage (last error: ...)
//
// Result implements error, so each code is an error value:
// errors.Is(err, nccl.InvalidArgument) (or nccl.ErrInvalidArgument, the
// same value) matches both an *Error with that code and the package's own
// argument checks. Other sentinels: ErrLibraryNotFound, ErrSymbolMissing,
// ErrTimeout, ErrAborted, ErrNoCgo.
//
// # Watchdog
//
// NCCL calls can hang: a peer dies, or a rank skips a collective. Two
// helpers bound them with a context:
//
//   - Comm.Watch(ctx, done, poll) waits until done reports completion
//     (the GPU layer passes a cudaStreamQuery-based function; host callers
//     nil or one that returns true), checking GetAsyncError every poll.
//   - Comm.Run(ctx, call, done) runs a blocking call (a collective, or
//     GroupEnd) on a goroutine, polls GetAsyncError while it blocks, then
//     Watches done.
//
// If ctx ends first they Abort the communicator (which releases a blocked
// call) and return an error wrapping ErrTimeout and ctx's error, naming
// the deadline; an asynchronous error (or a failing done) also aborts and
// is returned. An aborted communicator cannot be reused: build a new one
// (every rank must), or fail the job.
//
// # Thread discipline
//
// CUDA binds a context to an OS thread, and NCCL calls for a device must
// run with that device's context current. Go moves goroutines between
// threads, so gotrain issues all CUDA and NCCL calls for one device from
// one goroutine locked to its OS thread (runtime.LockOSThread): a
// DeviceThread per device, whose Do(f) runs f there and waits. The
// exceptions are Abort and GetAsyncError, which NCCL allows from any
// thread, and which Watch and Run call from the watching goroutine. With
// several devices in one process, a group (GroupStart ... GroupEnd) that
// spans them must be issued from a single thread, as NCCL requires.
//
// # Testing without a GPU
//
// Nothing here needs a GPU or NCCL: "go test ./nccl/..." checks the ABI
// declarations (csrc/nccl_abi.h: sizes, offsets, enum values), argument
// validation, errors, the watchdog and the lifecycle against an in-memory
// fake, and Load against tiny libraries built with gcc in a temporary
// folder (one lacking core symbols, one like NCCL 2.12 lacking
// ncclCommFinalize, ncclGetLastError and ncclCommInitRankConfig). Tests
// that need gcc skip without it. With GOTRAIN_NCCL_STANDIN set to a
// built stand-in libnccl.so.2 (nccl/testdata/standin, host memory, real
// multi-rank semantics) smoke tests also run collectives over one and two
// ranks and check that Run's abort releases a blocked collective:
//
//	gcc -O2 -shared -fPIC -o /tmp/libnccl.so.2 nccl/testdata/standin/standin.c -lpthread -lrt
//	GOTRAIN_NCCL_STANDIN=/tmp/libnccl.so.2 go test ./nccl/
//
// Without cgo (CGO_ENABLED=0) the package builds with the same API, and
// Load returns an error wrapping ErrNoCgo and ErrLibraryNotFound.
package nccl
