//go:build gpu

package cuda

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo LDFLAGS: -lcuda
#include <cuda.h>

static CUresult stream_new(CUstream *s) { return cuStreamCreate(s, CU_STREAM_NON_BLOCKING); }
static CUresult stream_free(CUstream s) { return cuStreamDestroy(s); }
static CUresult stream_query(CUstream s) { return cuStreamQuery(s); }
// mark records a new event at the end of stream s (NULL: the default
// stream, where the kernels run).
static CUresult mark(CUstream s, CUevent *e) {
	CUresult r = cuEventCreate(e, CU_EVENT_DISABLE_TIMING);
	if (r != CUDA_SUCCESS) return r;
	r = cuEventRecord(*e, s);
	if (r != CUDA_SUCCESS) cuEventDestroy(*e);
	return r;
}
// wait makes stream s wait for e, and releases e (CUDA keeps it until the
// wait is over).
static CUresult wait_event(CUstream s, CUevent e) {
	CUresult r = cuStreamWaitEvent(s, e, 0);
	cuEventDestroy(e);
	return r;
}
static const char *result_name(CUresult r) { const char *s = NULL; cuGetErrorName(r, &s); return s ? s : "unknown"; }
*/
import "C"

import (
	"fmt"
	"reflect"
	"unsafe"

	"github.com/gotrain/gotrain/gpu/device"
)

// The communication stream
//
// The kernels and copies run on the default stream. Collectives (NCCL)
// run on a stream of the device's own, created non-blocking so that it
// does not wait for the default stream nor the default stream for it:
// the two are ordered only by the events of device.Streamer.

// event is a CUevent from Mark.
type event struct{ e C.CUevent }

// cuErr names a CUDA driver result.
func (d *Device) cuErr(what string, r C.CUresult) error {
	return fmt.Errorf("cuda: %s: %s: %d %s", d.name, what, int(r), C.GoString(C.result_name(r)))
}

// driverError is a result code from gorgonia.org/cu's driver calls, named
// as the driver names it (CUDA_ERROR_OUT_OF_MEMORY, where cu says
// OutOfMemory); cu's error stays wrapped.
type driverError struct {
	code C.CUresult
	err  error
}

func (e *driverError) Error() string { return C.GoString(C.result_name(e.code)) }
func (e *driverError) Unwrap() error { return e.err }

// drv names an error from a cu driver call (see driverError); other errors
// come back as they are.
func drv(err error) error {
	if err == nil {
		return nil
	}
	if v := reflect.ValueOf(err); v.Kind() == reflect.Int && v.Type().PkgPath() == "gorgonia.org/cu" {
		return &driverError{code: C.CUresult(v.Int()), err: err}
	}
	return err
}

// commStream returns the communication stream, created at first use.
func (d *Device) commStream() (C.CUstream, error) {
	if d.comm != nil {
		return d.comm, nil
	}
	var s C.CUstream
	if r := C.stream_new(&s); r != C.CUDA_SUCCESS {
		return nil, d.cuErr("cuStreamCreate", r)
	}
	d.comm = s
	return s, nil
}

// Mark records an event at the end of the default stream's work.
func (d *Device) Mark() (device.Event, error) {
	var ev event
	err := d.do(func() error {
		if r := C.mark(nil, &ev.e); r != C.CUDA_SUCCESS {
			return d.cuErr("cuEventRecord", r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ev, nil
}

// OnComm makes the communication stream wait for ev, then hands its
// handle to enqueue (an NCCL call, which runs on a goroutine of the NCCL
// watchdog and sets the device itself).
func (d *Device) OnComm(ev device.Event, enqueue func(stream uintptr) error) error {
	e, ok := ev.(event)
	if !ok {
		return fmt.Errorf("cuda: %s: %T is not an event of Mark", d.name, ev)
	}
	var s C.CUstream
	err := d.do(func() error {
		var err error
		if s, err = d.commStream(); err != nil {
			return err
		}
		if r := C.wait_event(s, e.e); r != C.CUDA_SUCCESS {
			return d.cuErr("cuStreamWaitEvent", r)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return enqueue(uintptr(unsafe.Pointer(s)))
}

// CommDone reports whether the communication stream is idle.
func (d *Device) CommDone() (bool, error) { return d.query(func() C.CUstream { return d.comm }, true) }

// query reports whether stream() (read with the context current) has
// finished its work (cuStreamQuery); a nil stream counts as the default
// one, unless noneIsIdle.
func (d *Device) query(stream func() C.CUstream, noneIsIdle bool) (bool, error) {
	done := true
	err := d.do(func() error {
		s := stream()
		if s == nil && noneIsIdle {
			return nil
		}
		switch r := C.stream_query(s); r {
		case C.CUDA_SUCCESS:
		case C.CUDA_ERROR_NOT_READY:
			done = false
		default:
			return d.cuErr("cuStreamQuery", r)
		}
		return nil
	})
	return done, err
}

// JoinComm makes the default stream wait for the communication stream's
// work so far.
func (d *Device) JoinComm() error {
	return d.do(func() error {
		if d.comm == nil {
			return nil
		}
		var e C.CUevent
		if r := C.mark(d.comm, &e); r != C.CUDA_SUCCESS {
			return d.cuErr("cuEventRecord", r)
		}
		if r := C.wait_event(nil, e); r != C.CUDA_SUCCESS {
			return d.cuErr("cuStreamWaitEvent", r)
		}
		return nil
	})
}

// freeComm destroys the communication stream (Close).
func (d *Device) freeComm() {
	_ = d.do(func() error {
		if d.comm != nil {
			C.stream_free(d.comm)
			d.comm = nil
		}
		return nil
	})
}

// commHandle is a CUstream.
type commHandle = C.CUstream

// Idle reports whether the default stream's work is done (cuStreamQuery),
// without waiting: the NCCL watchdog's completion check for collectives
// staged there (device.Staging).
func (d *Device) Idle() (bool, error) { return d.query(func() C.CUstream { return nil }, false) }

// Do runs f with the device's context current on the calling OS thread:
// NCCL's ncclCommInitRank takes the current device as the communicator's.
func (d *Device) Do(f func() error) error { return d.do(f) }
