//go:build gpu

package cuda

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo LDFLAGS: -lcuda
#include <cuda.h>

static CUresult host_alloc(void **p, size_t bytes) { return cuMemHostAlloc(p, bytes, CU_MEMHOSTALLOC_PORTABLE); }
static CUresult host_free(void *p) { return cuMemFreeHost(p); }
static const char *err_name(CUresult r) { const char *s = NULL; cuGetErrorName(r, &s); return s ? s : "unknown"; }
*/
import "C"

import (
	"fmt"
	"slices"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/gotrain/gotrain/gpu/device"
)

// pinnedMem is one allocation of page-locked host memory.
type pinnedMem struct {
	p     unsafe.Pointer
	bytes uintptr
}

// AllocHost returns n float32s of page-locked host memory (cuMemHostAlloc),
// from which WriteAsync copies without waiting (see device.Pinner).
func (d *Device) AllocHost(n int) ([]float32, error) {
	var p unsafe.Pointer
	err := d.do(func() error {
		if r := C.host_alloc(&p, C.size_t(4*max(n, 1))); r != C.CUDA_SUCCESS {
			return fmt.Errorf("cuda: %s: cuMemHostAlloc of %d bytes: %d %s", d.name, 4*n, int(r), C.GoString(C.err_name(r)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.pinned = append(d.pinned, pinnedMem{p, uintptr(4 * max(n, 1))})
	d.mu.Unlock()
	return unsafe.Slice((*float32)(p), n), nil
}

// FreeHost releases memory from AllocHost; other memory is left alone.
func (d *Device) FreeHost(mem []float32) {
	if cap(mem) == 0 {
		return
	}
	ptr := unsafe.Pointer(unsafe.SliceData(mem))
	d.mu.Lock()
	i := slices.IndexFunc(d.pinned, func(m pinnedMem) bool { return m.p == ptr })
	if i >= 0 {
		d.pinned = slices.Delete(d.pinned, i, i+1)
	}
	d.mu.Unlock()
	if i >= 0 {
		_ = d.do(func() error { C.host_free(ptr); return nil })
	}
}

// isPinned reports whether src lies in memory from AllocHost.
func (d *Device) isPinned(src []float32) bool {
	if len(src) == 0 {
		return false
	}
	lo := uintptr(unsafe.Pointer(&src[0]))
	hi := lo + 4*uintptr(len(src))
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.pinned {
		if p := uintptr(m.p); lo >= p && hi <= p+m.bytes {
			return true
		}
	}
	return false
}

// WriteAsync queues the copy of src into dst on the stream the kernels run
// on (cuMemcpyHtoDAsync) when src is page-locked memory from AllocHost,
// and returns at once; src must then stay as it is until the next Read or
// Sync. Other memory is copied as Write does.
func (d *Device) WriteAsync(dst device.Buffer, src []float32) error {
	if !d.isPinned(src) {
		return d.Write(dst, src)
	}
	b, err := d.buf(dst)
	if err != nil {
		return err
	}
	if len(src) > b.n {
		return fmt.Errorf("cuda: writing %d values into a buffer of %d", len(src), b.n)
	}
	return d.do(func() error {
		if err := cu.MemcpyHtoDAsync(b.p, unsafe.Pointer(&src[0]), int64(4*len(src)), cu.Stream{}); err != nil {
			return fmt.Errorf("cuda: %s: cuMemcpyHtoDAsync %d bytes: %w", d.name, 4*len(src), drv(err))
		}
		return nil
	})
}

// freePinned releases what AllocHost handed out and was not freed (Close).
func (d *Device) freePinned() {
	d.mu.Lock()
	mems := d.pinned
	d.pinned = nil
	d.mu.Unlock()
	for _, m := range mems {
		_ = d.do(func() error { C.host_free(m.p); return nil })
	}
}
