package device

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// The faults a device reports. A host device returns them only when its
// Faults inject them (wrapped in a *FaultError); gpu/cuda reports the
// driver's own codes instead (CUDA_ERROR_OUT_OF_MEMORY, ...).
var (
	// ErrOutOfMemory is returned by Alloc when the device has no room for
	// the buffer.
	ErrOutOfMemory = errors.New("out of memory")
	// ErrLaunchFailed is returned by Launch when the kernel could not be
	// started.
	ErrLaunchFailed = errors.New("launch failure")
	// ErrIllegalAddress is the asynchronous fault of a kernel that
	// touched memory it may not (CUDA_ERROR_ILLEGAL_ADDRESS): it is sticky,
	// first returned by a call that waits for the device and then by every
	// call.
	ErrIllegalAddress = errors.New("illegal memory access")
)

// FaultEnv is the environment variable that gives the host device of
// --device host its faults (see HostFromEnv and ParseFaults).
const FaultEnv = "GOTRAIN_HOST_FAULT"

// FaultError is a fault that Faults injected: Op is the call that reports
// it ("launching kernel relu"), Err one of ErrOutOfMemory, ErrLaunchFailed
// and ErrIllegalAddress, Rule the rule that injected it ("launch:relu:2").
type FaultError struct {
	Op     string
	Err    error
	Rule   string
	Detail string // where a sticky fault happened
}

func (e *FaultError) Error() string {
	s := fmt.Sprintf("%s: injected %v", e.Op, e.Err)
	if e.Detail != "" {
		s += " " + e.Detail
	}
	return s + " (fault " + e.Rule + ")"
}

func (e *FaultError) Unwrap() error { return e.Err }

// Faults make a host device fail as a GPU fails, for tests of what the
// code above a device does then. Each rule counts calls from 1, from the
// device's first call on:
//
//	alloc:N            the Nth Alloc fails with ErrOutOfMemory
//	mem:BYTES          an Alloc that would take the live buffers beyond
//	                   BYTES (4 bytes a value) fails with ErrOutOfMemory
//	launch:N           the Nth kernel launch fails with ErrLaunchFailed
//	launch:KERNEL:N    the Nth launch of KERNEL fails with ErrLaunchFailed
//	sticky:N           the Nth launch faults asynchronously, as a kernel
//	sticky:KERNEL:N    that touches memory it may not does on a GPU: the
//	                   launch returns nil and it and the device's later
//	                   work do not run; the next call that waits for the
//	                   device (Read, Write, Sync, Alloc) returns
//	                   ErrIllegalAddress, and so does every call after it
//
// Rules are separated by commas. The zero Faults, and a nil *Faults,
// inject nothing. A Faults may be shared by several devices (their calls
// count together) and is safe for concurrent use.
type Faults struct {
	mu        sync.Mutex
	rules     []faultRule
	allocs    int
	liveBytes int64
	launches  int
	byKernel  map[string]int
	sticky    *FaultError // a sticky fault has happened
	seen      bool        // and has been reported
}

type faultRule struct {
	kind   string // alloc, mem, launch, sticky
	kernel string // launch, sticky: "" for any kernel
	n      int64  // the count, or mem's bytes
	text   string
}

// ParseFaults reads rules as GOTRAIN_HOST_FAULT takes them (see Faults);
// "" gives nil, no faults.
func ParseFaults(spec string) (*Faults, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, nil
	}
	f := &Faults{byKernel: map[string]int{}}
	for _, text := range strings.Split(spec, ",") {
		text = strings.TrimSpace(text)
		parts := strings.Split(text, ":")
		r := faultRule{kind: parts[0], text: text}
		var num string
		switch {
		case (r.kind == "alloc" || r.kind == "mem") && len(parts) == 2:
			num = parts[1]
		case (r.kind == "launch" || r.kind == "sticky") && len(parts) == 2:
			num = parts[1]
		case (r.kind == "launch" || r.kind == "sticky") && len(parts) == 3 && parts[1] != "":
			r.kernel, num = parts[1], parts[2]
		default:
			return nil, fmt.Errorf("device: fault %q is not one of alloc:N, mem:BYTES, launch:N, launch:KERNEL:N, sticky:N, sticky:KERNEL:N", text)
		}
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("device: fault %q: %q is not a count from 1", text, num)
		}
		r.n = n
		f.rules = append(f.rules, r)
	}
	return f, nil
}

// HostFromEnv is the host device with the faults of $GOTRAIN_HOST_FAULT
// (none when it is unset): --device host.
func HostFromEnv() (Host, error) {
	f, err := ParseFaults(os.Getenv(FaultEnv))
	if err != nil {
		return Host{}, fmt.Errorf("%s: %w", FaultEnv, err)
	}
	return Host{Faults: f}, nil
}

// Counts are the allocations and launches counted so far: a test runs
// once without rules to learn where to put one.
func (f *Faults) Counts() (allocs, launches int) {
	if f == nil {
		return 0, 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.allocs, f.launches
}

// stuck returns the sticky fault once it may be reported: to a call that
// waits for the device (wait), or to any call after that.
func (f *Faults) stuck(op string, wait bool) error {
	if f.sticky == nil || !(wait || f.seen) {
		return nil
	}
	f.seen = true
	e := *f.sticky
	e.Op = op
	return &e
}

// alloc counts an allocation of n values and says whether it fails.
func (f *Faults) alloc(n int) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	op := fmt.Sprintf("allocating %d bytes", 4*n)
	if err := f.stuck(op, true); err != nil {
		return err
	}
	f.allocs++
	for _, r := range f.rules {
		switch {
		case r.kind == "alloc" && int64(f.allocs) == r.n,
			r.kind == "mem" && f.liveBytes+4*int64(n) > r.n:
			return &FaultError{Op: op, Err: ErrOutOfMemory, Rule: r.text}
		}
	}
	f.liveBytes += 4 * int64(n)
	return nil
}

// free returns an allocation of n values.
func (f *Faults) free(n int) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.liveBytes -= 4 * int64(n)
	f.mu.Unlock()
}

// launch counts a launch of kernel; it says whether it fails, and whether
// it runs (not after a sticky fault).
func (f *Faults) launch(kernel string) (run bool, err error) {
	if f == nil {
		return true, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	op := "launching kernel " + kernel
	if err := f.stuck(op, false); err != nil {
		return false, err
	}
	if f.sticky != nil {
		return false, nil // the device faulted: its work is lost
	}
	f.launches++
	if f.byKernel == nil {
		f.byKernel = map[string]int{}
	}
	f.byKernel[kernel]++
	for _, r := range f.rules {
		if r.kind != "launch" && r.kind != "sticky" {
			continue
		}
		count := f.launches
		if r.kernel != "" {
			if r.kernel != kernel {
				continue
			}
			count = f.byKernel[kernel]
		}
		if int64(count) != r.n {
			continue
		}
		if r.kind == "launch" {
			return false, &FaultError{Op: op, Err: ErrLaunchFailed, Rule: r.text}
		}
		f.sticky = &FaultError{Err: ErrIllegalAddress, Rule: r.text,
			Detail: fmt.Sprintf("in launch %d (kernel %s), reported by every call since", f.launches, kernel)}
		return false, nil
	}
	return true, nil
}

// queued says whether queued work (a GEMM) runs: not after a sticky
// fault, which a call reports once it has been seen.
func (f *Faults) queued(op string) (run bool, err error) {
	if f == nil {
		return true, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.stuck(op, false); err != nil {
		return false, err
	}
	return f.sticky == nil, nil
}

// wait is a call that waits for the device: it reports a sticky fault.
func (f *Faults) wait(op string) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stuck(op, true)
}
