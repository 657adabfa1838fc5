package trainer

import (
	"fmt"

	"github.com/gotrain/gotrain/gpu/device"
)

// Prefetching batches for a device
//
// Training on a device takes its batches from a prefetcher: a goroutine
// that decodes batch i+1 (bytes to normalised float32) while the device
// runs step i. In a job of several ranks it decodes this rank's
// micro-batches of its share, and starts anew whenever the balancer moves
// the shares. The batches go into page-locked host memory where the
// device has some (device.Pinner), from which the upload is queued with
// the kernels instead of waited for. There are two slots: a step takes
// one, and gives it back once it has read its loss, which waits for the
// device and so for the upload from the slot; the goroutine fills the
// other meanwhile. The batches are those the loop would decode itself, in
// the same order, so the run is the same with and without it.

// batchSlot is a prefetched batch: rows perm[lo:hi] decoded into x and y,
// or the error of decoding them.
type batchSlot struct {
	slot   int
	lo, hi int
	x, y   []float32
	err    error
}

type prefetcher struct {
	dev      device.Device
	features int
	x, y     [2][]float32
	pinned   bool // x and y are the device's page-locked memory
	taken    int  // batches next returned
	free     chan int
	ready    chan batchSlot
	quit     chan struct{}
	done     chan struct{} // closed when the epoch's goroutine has ended
}

// newPrefetcher makes the two slots, each for batch samples of features
// values, in page-locked memory when pin and the device has some.
func newPrefetcher(dev device.Device, batch, features int, pin bool) (*prefetcher, error) {
	p := &prefetcher{dev: dev, features: features}
	alloc := device.AllocHost
	if !pin {
		alloc = device.Pageable
	}
	for i := range 2 {
		var err error
		if p.x[i], p.pinned, err = alloc(dev, batch*features); err == nil {
			p.y[i], _, err = alloc(dev, batch)
		}
		if err != nil {
			p.close()
			return nil, fmt.Errorf("prefetch: page-locked memory for a batch of %d: %w", batch, err)
		}
	}
	return p, nil
}

// start prepares the batches [lo, hi) of spans in order, fill decoding
// each into a slot; it must not overlap another epoch's (stop first). A
// batch that fill fails to decode ends the epoch's batches: next returns
// its error.
func (p *prefetcher) start(spans [][2]int, fill func(lo, hi int, x, y []float32) error) {
	p.free = make(chan int, 2)
	p.free <- 0
	p.free <- 1
	p.ready = make(chan batchSlot, 2)
	p.quit = make(chan struct{})
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		defer close(p.ready) // no more batches this epoch
		for _, sp := range spans {
			var s int
			select {
			case s = <-p.free:
			case <-p.quit:
				return
			}
			n := sp[1] - sp[0]
			b := batchSlot{slot: s, lo: sp[0], hi: sp[1], x: p.x[s][:n*p.features], y: p.y[s][:n]}
			b.err = fill(b.lo, b.hi, b.x, b.y)
			select {
			case p.ready <- b:
			case <-p.quit:
				return
			}
			if b.err != nil {
				return
			}
		}
	}()
}

// next returns the next prepared batch, which must be rows [lo, hi).
func (p *prefetcher) next(lo, hi int) (batchSlot, error) {
	b, ok := <-p.ready
	switch {
	case !ok:
		return b, fmt.Errorf("prefetch: the loop wants rows [%d, %d), and the prefetcher has prepared every batch of the epoch", lo, hi)
	case b.lo != lo || b.hi != hi:
		return b, fmt.Errorf("prefetch: the loop wants rows [%d, %d), the prefetcher prepared [%d, %d)", lo, hi, b.lo, b.hi)
	case b.err != nil:
		p.free <- b.slot
		return b, fmt.Errorf("prefetch: %w", b.err)
	}
	p.taken++
	return b, nil
}

// release gives a slot back once the device is done with it.
func (p *prefetcher) release(b batchSlot) { p.free <- b.slot }

// active reports whether an epoch's batches are being prefetched.
func (p *prefetcher) active() bool { return p != nil && p.quit != nil }

// stop ends the epoch's goroutine and waits for it.
func (p *prefetcher) stop() {
	if p.quit == nil {
		return
	}
	close(p.quit)
	<-p.done
	p.quit = nil
}

// close stops and frees the slots.
func (p *prefetcher) close() {
	p.stop()
	if !p.pinned {
		return
	}
	for i := range 2 {
		for _, m := range [][]float32{p.x[i], p.y[i]} {
			if m != nil {
				p.dev.(device.Pinner).FreeHost(m)
			}
		}
	}
}

// prefetch starts decoding spans (rows of this epoch's permutation,
// micro-batches in the order the steps take them) where the executor
// prefetches (a device).
func (t *Trainer) prefetch(spans [][2]int) {
	epoch := t.pos.epoch
	t.exec.prefetch(spans, func(lo, hi int, x, y []float32) error { return t.fillTrain(x, y, t.perm[lo:hi], epoch) })
}
