package nccl

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// DevicePtr is a device pointer (gorgonia.org/cu's cu.DevicePtr converts to
// it). Only the test stand-in library accepts host memory.
type DevicePtr uintptr

// Stream is a cudaStream_t / CUstream handle (cu.Stream's handle converts to
// it); 0 is the default (legacy) stream.
type Stream uintptr

// Result is an ncclResult_t. Result implements error, so the codes are
// themselves error values: errors.Is(err, nccl.InvalidArgument) matches an
// *Error with that code and the package's own argument errors.
type Result int

// The ncclResult_t codes, as in nccl.h.
const (
	Success            Result = 0
	UnhandledCudaError Result = 1
	SystemError        Result = 2
	InternalError      Result = 3
	InvalidArgument    Result = 4
	InvalidUsage       Result = 5
	RemoteError        Result = 6
	InProgress         Result = 7
)

// String returns a short description of the code (the same words NCCL's
// ncclGetErrorString uses).
func (r Result) String() string {
	switch r {
	case Success:
		return "no error"
	case UnhandledCudaError:
		return "unhandled cuda error"
	case SystemError:
		return "unhandled system error"
	case InternalError:
		return "internal error"
	case InvalidArgument:
		return "invalid argument"
	case InvalidUsage:
		return "invalid usage"
	case RemoteError:
		return "remote process exited or there was a network error"
	case InProgress:
		return "NCCL operation in progress"
	}
	return fmt.Sprintf("unknown result code %d", int(r))
}

// Error makes a Result usable as an error value (see errors.Is).
func (r Result) Error() string { return "nccl: " + r.String() }

// Sentinel errors for the codes, for readability: ErrInvalidArgument ==
// InvalidArgument etc.
var (
	ErrUnhandledCudaError error = UnhandledCudaError
	ErrSystemError        error = SystemError
	ErrInternalError      error = InternalError
	ErrInvalidArgument    error = InvalidArgument
	ErrInvalidUsage       error = InvalidUsage
	ErrRemoteError        error = RemoteError
	ErrInProgress         error = InProgress
)

// Package sentinel errors.
var (
	// ErrLibraryNotFound: Load could not dlopen any candidate libnccl.
	ErrLibraryNotFound = errors.New("nccl: library not found")
	// ErrSymbolMissing: the loaded libnccl lacks a symbol, or is too old for
	// a data type or operator (see *SymbolError).
	ErrSymbolMissing = errors.New("nccl: symbol missing")
	// ErrTimeout: Watch, Run or WaitReady gave up because the context ended;
	// the communicator was aborted. Such errors also wrap ctx.Err().
	ErrTimeout = errors.New("nccl: timeout")
	// ErrAborted: the communicator was destroyed or aborted.
	ErrAborted = errors.New("nccl: communicator destroyed or aborted")
	// ErrNoCgo: the package was built without cgo (see Load).
	ErrNoCgo = errors.New("nccl: this build has no cgo; the nccl package needs cgo (CGO_ENABLED=1 and a C compiler)")
)

// Error is a failed NCCL call.
type Error struct {
	Func string // the NCCL function, e.g. "ncclAllReduce"
	Code Result // what it returned
	Msg  string // ncclGetErrorString(Code)
	Last string // ncclGetLastError, when the library has it and it said something
}

func (e *Error) Error() string {
	msg := e.Msg
	if msg == "" {
		msg = e.Code.String()
	}
	s := fmt.Sprintf("nccl: %s: %s", e.Func, msg)
	if e.Last != "" {
		s += " (last error: " + e.Last + ")"
	}
	return s
}

// Is reports whether target is e's code (a Result or one of the ErrXxx code
// sentinels) or an *Error with the same code (and, if set, Func).
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case Result:
		return t == e.Code
	case *Error:
		return t.Code == e.Code && (t.Func == "" || t.Func == e.Func)
	}
	return false
}

// Unwrap returns the code.
func (e *Error) Unwrap() error { return e.Code }

// SymbolError is returned when the loaded library lacks what a call needs.
// It wraps ErrSymbolMissing.
type SymbolError struct {
	Symbol  string // e.g. "ncclCommFinalize", or "ncclAvg" for an operator
	Since   string // the NCCL version that introduced it, e.g. "2.14"
	Path    string // the library
	Version string // the library's version, e.g. "2.12.12", if known
}

func (e *SymbolError) Error() string {
	have := e.Path
	if e.Version != "" {
		have += " (NCCL " + e.Version + ")"
	}
	return fmt.Sprintf("nccl: %s is not available in %s: it needs NCCL >= %s; install a newer NCCL or point NCCL_LIBRARY at one", e.Symbol, have, e.Since)
}

// Unwrap returns ErrSymbolMissing.
func (e *SymbolError) Unwrap() error { return ErrSymbolMissing }

// symbolSince: the NCCL version that introduced each symbol the table
// resolves ("" = core: Load fails without it).
var symbolSince = map[string]string{
	"ncclGetVersion":         "",
	"ncclGetUniqueId":        "",
	"ncclCommInitRank":       "",
	"ncclAllReduce":          "",
	"ncclGetErrorString":     "",
	"ncclCommInitRankConfig": "2.14",
	"ncclCommInitAll":        "2.0",
	"ncclCommFinalize":       "2.14",
	"ncclCommDestroy":        "2.0",
	"ncclCommAbort":          "2.4",
	"ncclGetLastError":       "2.13",
	"ncclCommGetAsyncError":  "2.4",
	"ncclCommCount":          "2.0",
	"ncclCommCuDevice":       "2.0",
	"ncclCommUserRank":       "2.0",
	"ncclBroadcast":          "2.0",
	"ncclReduce":             "2.0",
	"ncclAllGather":          "2.0",
	"ncclReduceScatter":      "2.0",
	"ncclSend":               "2.7",
	"ncclRecv":               "2.7",
	"ncclGroupStart":         "2.0",
	"ncclGroupEnd":           "2.0",
}

// coreSymbols must all be present for Load to succeed.
var coreSymbols = []string{"ncclGetVersion", "ncclGetUniqueId", "ncclCommInitRank", "ncclAllReduce", "ncclGetErrorString"}

// DataType is an ncclDataType_t.
type DataType int

// The data types, as in nccl.h.
const (
	Int8     DataType = 0
	Uint8    DataType = 1
	Int32    DataType = 2
	Uint32   DataType = 3
	Int64    DataType = 4
	Uint64   DataType = 5
	Float16  DataType = 6
	Float32  DataType = 7
	Float64  DataType = 8
	Bfloat16 DataType = 9 // needs NCCL >= 2.10
)

// Size is the element size in bytes (0 for an unknown type).
func (d DataType) Size() int {
	switch d {
	case Int8, Uint8:
		return 1
	case Float16, Bfloat16:
		return 2
	case Int32, Uint32, Float32:
		return 4
	case Int64, Uint64, Float64:
		return 8
	}
	return 0
}

func (d DataType) String() string {
	names := [...]string{"Int8", "Uint8", "Int32", "Uint32", "Int64", "Uint64", "Float16", "Float32", "Float64", "Bfloat16"}
	if d >= 0 && int(d) < len(names) {
		return names[d]
	}
	return fmt.Sprintf("DataType(%d)", int(d))
}

func (d DataType) valid() bool { return d >= Int8 && d <= Bfloat16 }

// RedOp is an ncclRedOp_t (the built-in operators only).
type RedOp int

// The reduction operators, as in nccl.h.
const (
	Sum  RedOp = 0
	Prod RedOp = 1
	Max  RedOp = 2
	Min  RedOp = 3
	Avg  RedOp = 4 // needs NCCL >= 2.10
)

func (o RedOp) String() string {
	names := [...]string{"Sum", "Prod", "Max", "Min", "Avg"}
	if o >= 0 && int(o) < len(names) {
		return names[o]
	}
	return fmt.Sprintf("RedOp(%d)", int(o))
}

func (o RedOp) valid() bool { return o >= Sum && o <= Avg }

// UniqueIDBytes is NCCL_UNIQUE_ID_BYTES.
const UniqueIDBytes = 128

// UniqueID is an ncclUniqueId: rank 0 makes one with GetUniqueID and sends
// it to the other ranks out of band (e.g. over trainer/dist's rendezvous).
type UniqueID [UniqueIDBytes]byte

// MarshalBinary returns the 128 bytes.
func (u UniqueID) MarshalBinary() ([]byte, error) {
	b := make([]byte, UniqueIDBytes)
	copy(b, u[:])
	return b, nil
}

// UnmarshalBinary sets u from exactly 128 bytes.
func (u *UniqueID) UnmarshalBinary(b []byte) error {
	if len(b) != UniqueIDBytes {
		return fmt.Errorf("nccl: UniqueID.UnmarshalBinary: got %d bytes, want %d: %w", len(b), UniqueIDBytes, InvalidArgument)
	}
	copy(u[:], b)
	return nil
}

// Config is an ncclConfig_t for InitRankConfig (NCCL >= 2.14). Zero values
// leave NCCL's default (the field is passed as NCCL_CONFIG_UNDEF_INT/NULL).
type Config struct {
	// Blocking: nil = NCCL's default (blocking, unless NCCL_COMM_BLOCKING
	// says otherwise); false makes init and collectives return InProgress
	// and complete asynchronously (see Comm.WaitReady).
	Blocking       *bool
	CGAClusterSize int    // 0 = default
	MinCTAs        int    // 0 = default
	MaxCTAs        int    // 0 = default
	NetName        string // "" = default, e.g. "IB" or "Socket"
}

func (c Config) validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"CGAClusterSize", c.CGAClusterSize}, {"MinCTAs", c.MinCTAs}, {"MaxCTAs", c.MaxCTAs}} {
		if f.v < 0 || f.v > math.MaxInt32 {
			return argErr("ncclCommInitRankConfig", "Config.%s %d out of range", f.name, f.v)
		}
	}
	if c.MinCTAs != 0 && c.MaxCTAs != 0 && c.MinCTAs > c.MaxCTAs {
		return argErr("ncclCommInitRankConfig", "Config.MinCTAs %d > MaxCTAs %d", c.MinCTAs, c.MaxCTAs)
	}
	if strings.IndexByte(c.NetName, 0) >= 0 {
		return argErr("ncclCommInitRankConfig", "Config.NetName contains a NUL byte")
	}
	return nil
}

// argErr is the error for an argument rejected before any C call; it wraps
// InvalidArgument.
func argErr(fn, format string, a ...any) error {
	return fmt.Errorf("nccl: %s: %s: %w", fn, fmt.Sprintf(format, a...), InvalidArgument)
}

// parseVersion splits an NCCL version code: major*10000+minor*100+patch
// (NCCL >= 2.9, e.g. 21903), major*1000+minor*100+patch (older, e.g. 2804),
// and codes padded with extra trailing decimal digits (e.g. 2190300) are
// divided down first.
func parseVersion(code int) (major, minor, patch int, err error) {
	c := code
	for c >= 1000000 {
		c /= 100
	}
	switch {
	case c >= 10000:
		return c / 10000, c % 10000 / 100, c % 100, nil
	case c >= 1000:
		return c / 1000, c % 1000 / 100, c % 100, nil
	}
	return 0, 0, 0, fmt.Errorf("nccl: ncclGetVersion returned %d, not a version code: %w", code, InternalError)
}
