package graph

import "sync"

// Program memory
//
// A program's first run allocates its buffers (node values, ops' scratch,
// dropout masks): tens of megabytes for the CNN. Fresh memory is paid for
// page by page when first written, and dearly on a virtual machine whose
// host backs guest memory on first touch. A load balancer that moves a
// rank from batch 85 to 86 pays that at every change of share, because
// every buffer of the new program is a little larger than the one it
// replaces and the Go heap cannot hand the old ones out again.
//
// So a model's programs draw their buffers from the model's bufPool:
//   - Model.Release gives a program's buffers back to the pool, and the
//     next program's first run takes them (best fit: the smallest free
//     buffer that is large enough), so that a change of share touches no
//     fresh memory. Fresh buffers are made with some slack (bufSlack) so
//     that a slightly larger batch still fits them, or with the room that
//     Model.Reserve asks for: a rank whose share may grow to 1.5 times its
//     first batch reserves that much, and its first change of share then
//     touches only the pages of the samples it gained. Capacity that is
//     never written costs address space, not memory: fresh pages are
//     backed when first touched.
//   - What the pool still holds after a program's first run is dropped to
//     the garbage collector: the pool never keeps more than one released
//     program's worth of memory for longer than a step.
//
// Measured here (CNN, one thread): a switch from batch 85 to 86 cost a
// first run of 240 ms with fresh buffers, 40 ms with the pool's (a usual
// run: 30 ms). Transparent huge pages for fresh buffers were tried and
// made no difference.

// bufSlack is the least extra capacity of fresh buffers, as a fraction;
// at least bufSlackMin elements.
const (
	bufSlack    = 1.0 / 16
	bufSlackMin = 64
)

// bufPool hands out float32 buffers to a model's programs. The zero value
// is ready; a nil pool allocates every buffer afresh, without slack.
type bufPool struct {
	mu    sync.Mutex
	free  [][]float32 // released buffers, any order
	fresh int64       // elements allocated afresh, ever
	slack float64     // extra capacity of fresh buffers (Reserve); 0: bufSlack
}

// get returns a zeroed buffer of length n: the smallest free one with room
// for n, or a fresh one.
func (p *bufPool) get(n int) []float32 {
	if p == nil {
		return make([]float32, n)
	}
	p.mu.Lock()
	best := -1
	for i, b := range p.free {
		if cap(b) >= n && (best < 0 || cap(b) < cap(p.free[best])) {
			best = i
		}
	}
	if best >= 0 {
		b := p.free[best][:n]
		p.free[best] = p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		p.mu.Unlock()
		clear(b)
		return b
	}
	c := n + max(int(float64(n)*max(bufSlack, p.slack)), bufSlackMin)
	p.fresh += int64(c)
	p.mu.Unlock()
	return make([]float32, n, c)
}

// put gives a buffer back; it must not be used after.
func (p *bufPool) put(b []float32) {
	if p == nil || cap(b) == 0 {
		return
	}
	p.mu.Lock()
	p.free = append(p.free, b[:0])
	p.mu.Unlock()
}

// trim drops what the pool holds to the garbage collector.
func (p *bufPool) trim() {
	if p == nil {
		return
	}
	p.mu.Lock()
	clear(p.free)
	p.free = p.free[:0]
	p.mu.Unlock()
}

// pooled is implemented by the ops that hold buffers: setPool makes them
// draw from p, releaseTo gives their buffers back.
type pooled interface {
	setPool(p *bufPool)
	releaseTo(p *bufPool)
}

// grow returns buf[:n] when it has room, else a buffer of length n from p
// (buf goes back to p).
func grow(p *bufPool, buf []float32, n int) []float32 {
	if cap(buf) >= n {
		return buf[:n]
	}
	p.put(buf)
	return p.get(n)
}
