package trainer

import (
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/gotrain/gotrain/gpu/device"
)

// lazyHost is the host device run as a GPU runs, as late as a GPU may:
//
//   - Launch, Gemm and WriteAsync (from its page-locked memory) only
//     queue their work on the compute stream; the queue runs when the
//     device is read from, written to synchronously, synced, or frees a
//     buffer. A caller that changes a WriteAsync source before then (what
//     device.Pinner forbids) uploads the changed values, as on a GPU.
//   - It has a communication stream (device.Streamer): OnComm runs the
//     compute stream's work up to the event only, then the collective, so
//     a bucket handed over before its packing is reduced unpacked, as on
//     a GPU, while the kernels queued after the event stay queued. And it
//     is a GPU far behind the host: the compute stream runs to its end
//     only once every event marked so far has gone to OnComm, so the
//     collectives always find the compute stream where their events put
//     it, not further.
type lazyHost struct {
	device.Host
	mu      sync.Mutex
	handed  *sync.Cond       // signalled when OnComm takes an event
	marks   int              // events from Mark
	taken   int              // events that OnComm took
	queue   []func() error   // the compute stream's work not yet run
	ran     int              // how many of the stream's items have run
	async   int              // copies from page-locked memory
	pinned  map[*float32]int // AllocHost's memory: start and length
	comms   int              // collectives queued on the communication stream
	joins   int              // JoinComm calls
	syncs   int              // Sync calls: waits for the whole device, the communication stream included
	overlap int              // collectives queued while later compute work was still queued
}

// lazyEvent is a position in the compute stream.
type lazyEvent int

func (h *lazyHost) push(f func() error) {
	h.mu.Lock()
	h.queue = append(h.queue, f)
	h.mu.Unlock()
}

// runTo runs the compute stream up to item n (-1: all of it, once OnComm
// took every event, or after 10 s: a collective that never comes).
func (h *lazyHost) runTo(n int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n < 0 {
		h.init()
		timeout := time.AfterFunc(10*time.Second, func() {
			h.mu.Lock()
			h.taken = h.marks
			h.mu.Unlock()
			h.handed.Broadcast()
		})
		for h.taken < h.marks {
			h.handed.Wait()
		}
		timeout.Stop()
		n = h.ran + len(h.queue)
	}
	for h.ran < n && len(h.queue) > 0 {
		f := h.queue[0]
		h.queue = h.queue[1:]
		h.ran++
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// AllocHost returns memory that WriteAsync then takes as page-locked.
func (h *lazyHost) AllocHost(n int) ([]float32, error) {
	m := make([]float32, max(n, 1))
	h.mu.Lock()
	if h.pinned == nil {
		h.pinned = map[*float32]int{}
	}
	h.pinned[&m[0]] = n
	h.mu.Unlock()
	return m[:n], nil
}

func (h *lazyHost) FreeHost(m []float32) {
	h.mu.Lock()
	delete(h.pinned, &m[:1][0])
	h.mu.Unlock()
}

// WriteAsync queues the copy from AllocHost's memory; from other memory
// it copies as Write does, after the queued work, as a GPU copies from
// pageable memory.
func (h *lazyHost) WriteAsync(dst device.Buffer, src []float32) error {
	h.mu.Lock()
	pinned := false
	if len(src) > 0 {
		p := uintptr(unsafe.Pointer(&src[0]))
		for start, n := range h.pinned {
			a := uintptr(unsafe.Pointer(start))
			pinned = pinned || (p >= a && p < a+4*uintptr(n))
		}
	}
	if pinned {
		h.async++
	}
	h.mu.Unlock()
	if !pinned {
		return h.Write(dst, src)
	}
	h.push(func() error { return h.Host.Write(dst, src) })
	return nil
}

func (h *lazyHost) Launch(kernel string, n int, args ...any) error {
	args = append([]any(nil), args...)
	h.push(func() error { return h.Host.Launch(kernel, n, args...) })
	return nil
}

func (h *lazyHost) Gemm(prec device.Precision, ta, tb bool, m, n, k int, alpha float32, a device.Buffer, lda int, b device.Buffer, ldb int, beta float32, c device.Buffer, ldc int) error {
	h.push(func() error { return h.Host.Gemm(prec, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) })
	return nil
}

func (h *lazyHost) Write(dst device.Buffer, src []float32) error {
	if err := h.runTo(-1); err != nil {
		return err
	}
	return h.Host.Write(dst, src)
}

func (h *lazyHost) Read(dst []float32, src device.Buffer) error {
	if err := h.runTo(-1); err != nil {
		return err
	}
	return h.Host.Read(dst, src)
}

func (h *lazyHost) Free(b device.Buffer) {
	_ = h.runTo(-1)
	h.Host.Free(b)
}

func (h *lazyHost) Sync() error {
	h.mu.Lock()
	h.syncs++
	h.mu.Unlock()
	return h.runTo(-1)
}

func (h *lazyHost) init() {
	if h.handed == nil {
		h.handed = sync.NewCond(&h.mu)
	}
}

func (h *lazyHost) Mark() (device.Event, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.marks++
	return lazyEvent(h.ran + len(h.queue)), nil
}

func (h *lazyHost) OnComm(ev device.Event, enqueue func(stream uintptr) error) error {
	e, ok := ev.(lazyEvent)
	if !ok {
		return fmt.Errorf("lazyHost: %T is not an event of Mark", ev)
	}
	if err := h.runTo(int(e)); err != nil {
		return err
	}
	h.mu.Lock()
	h.init()
	h.comms++
	h.taken++
	if len(h.queue) > 0 {
		h.overlap++
	}
	h.mu.Unlock()
	h.handed.Broadcast()
	return enqueue(1) // the collective runs when queued: its stream is never behind
}

func (h *lazyHost) CommDone() (bool, error) { return true, nil }

func (h *lazyHost) JoinComm() error {
	h.mu.Lock()
	h.joins++
	h.mu.Unlock()
	return nil
}
