package trainer

import (
	"context"
	"fmt"
	"slices"

	"github.com/gotrain/gotrain/gpu/device"
	gpuexec "github.com/gotrain/gotrain/gpu/executor"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/dist"
)

// devReducer is the gradient reducer of a device whose backend
// all-reduces device memory (NCCL): the gradient buckets live on the
// device (in the host buckets' layout: offsets[i] is parameter i's place
// in its bucket), the last micro-batch's buckets are packed and reduced
// as its backward pass issues their gradients, and the reduced gradients
// go to the optimiser's buffers without coming to the host.
type devReducer struct {
	d        *devRun
	b        *buckets
	reduce   dist.DeviceAllReducer
	bufs     []device.Buffer
	offsets  []int
	bucketOf []int           // per parameter: its bucket
	bf16     []device.Buffer // --reduce-precision bf16: each bucket's bfloat16 copy, which travels
	one      device.Buffer   // one-value scratch for the stop flag
}

// newDevReducer puts the buckets on the device; nil (and no error) when
// the backend cannot reach the device's memory.
func newDevReducer(d *devRun, b *buckets, red dist.DeviceAllReducer, wantBF16 bool) (*devReducer, error) {
	m := d.t.Model
	r := &devReducer{d: d, b: b, reduce: red, offsets: make([]int, len(m.Params)), bucketOf: make([]int, len(m.Params))}
	for bi, bk := range b.list {
		off := 0
		for _, i := range bk.params {
			r.offsets[i] = off
			r.bucketOf[i] = bi
			off += m.Params[i].Size()
		}
		buf, err := d.dev.Alloc(len(bk.buf))
		if err != nil {
			r.free()
			return nil, d.err("allocating a gradient bucket", err)
		}
		r.bufs = append(r.bufs, buf)
		if _, ok := buf.(device.Addresser); !ok {
			r.free()
			if wantBF16 {
				return nil, fmt.Errorf("%w: --reduce-precision bf16: the backend cannot reach %s's memory", ErrConfig, d.dev.Name())
			}
			return nil, nil // the backend cannot reach this device's memory: the host buckets serve
		}
		if wantBF16 {
			half, err := d.dev.Alloc((len(bk.buf) + 1) / 2)
			if err != nil {
				r.free()
				return nil, d.err("allocating a bf16 gradient bucket", err)
			}
			r.bf16 = append(r.bf16, half)
		}
	}
	var err error
	if r.one, err = d.dev.Alloc(1); err != nil {
		r.free()
		return nil, d.err("allocating the stop flag", err)
	}
	d.closers = append(d.closers, r.free)
	d.t.log.Info("gradient buckets on the device", "device", d.dev.Name(), "buckets", len(r.bufs), "reduce_precision", map[bool]string{false: "fp32", true: "bf16"}[wantBF16])
	return r, nil
}

func (r *devReducer) free() {
	for _, b := range append(r.bufs, r.bf16...) {
		r.d.dev.Free(b)
	}
	if r.one != nil {
		r.d.dev.Free(r.one)
	}
	r.bufs, r.bf16, r.one = nil, nil, nil
}

// add adds scale times prog's gradients into the device buckets (or sets
// them, when first); prog nil (no samples) zeroes them. The same
// arithmetic as the host's.
func (r *devReducer) add(prog *graph.Program, scale float32, first bool) error {
	var e *gpuexec.Program
	if prog != nil {
		var err error
		if e, err = r.d.program(prog); err != nil {
			return err
		}
	}
	for bi := range r.b.list {
		if err := r.packBucket(bi, e, scale, first); err != nil {
			return err
		}
	}
	return nil
}

// packBucket writes bucket bi from e's gradients.
func (r *devReducer) packBucket(bi int, e *gpuexec.Program, scale float32, first bool) error {
	d := r.d
	for _, i := range r.b.list[bi].params {
		n := d.t.Model.Params[i].Size()
		var err error
		switch {
		case e != nil:
			err = d.dev.Launch("axpy_at", n, e.Grad(i).Buf, r.bufs[bi], n, r.offsets[i], scale, !first)
		case first:
			err = d.dev.Launch("fill_at", n, r.bufs[bi], r.offsets[i], n, float32(0))
		}
		if err != nil {
			return d.err(fmt.Sprintf("packing gradient bucket %d", bi), err)
		}
	}
	return nil
}

// overlap starts the reductions of this step and returns the hook that
// packs each bucket once prog's run has issued its last gradient.
func (r *devReducer) overlap(ctx context.Context, prog *graph.Program, scale float32, first, stopRequested bool) (func(int) error, error) {
	b, err := r.start(ctx, prog, scale, first, stopRequested)
	if err != nil {
		return nil, err
	}
	r.d.red = b
	return func(param int) error {
		bi := r.bucketOf[param]
		if b.remaining[bi]--; b.remaining[bi] == 0 {
			return b.pack(bi)
		}
		return nil
	}, nil
}

// bucketReducer all-reduces the device buckets in a goroutine, each as
// soon as it is packed, so that the backward pass goes on meanwhile. On a
// device with a communication stream (device.Streamer) the collectives
// are queued there, each behind the event that follows its bucket's
// packing, and the compute stream goes on with the backward pass's
// kernels while they run; elsewhere they queue behind the kernels issued
// before them.
type bucketReducer struct {
	r         *devReducer
	e         *gpuexec.Program // the last micro-batch's program; nil: no samples
	scale     float32
	first     bool
	stop      float32
	remaining []int           // per bucket: gradients still to come
	streams   device.Streamer // nil: the device has no communication stream
	jobs      chan reduceJob
	done      chan error
}

// reduceJob is a packed bucket to all-reduce, and the event after its
// packing (with a communication stream).
type reduceJob struct {
	bucket int
	packed device.Event
}

// start starts the reducing goroutine of this step.
func (r *devReducer) start(ctx context.Context, prog *graph.Program, scale float32, first, stopRequested bool) (*bucketReducer, error) {
	d, t := r.d, r.d.t
	b := &bucketReducer{r: r, scale: scale, first: first, jobs: make(chan reduceJob, len(r.bufs)), done: make(chan error, 1)}
	b.streams, _ = d.dev.(device.Streamer)
	if stopRequested {
		b.stop = 1
	}
	if prog != nil {
		var err error
		if b.e, err = d.program(prog); err != nil {
			return nil, err
		}
	}
	for _, bk := range r.b.list {
		b.remaining = append(b.remaining, len(bk.params))
	}
	rank := t.rank()
	go func() {
		var err error
		for job := range b.jobs {
			if err != nil {
				continue
			}
			bi := job.bucket
			buf, n, bf16 := r.bufs[bi], r.bufs[bi].Len(), r.bf16 != nil
			if bf16 {
				buf = r.bf16[bi] // packed by pack(), widened by finish
			}
			addr := buf.(device.Addresser).Addr()
			cctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
			if b.streams != nil {
				err = b.streams.OnComm(job.packed, func(stream uintptr) error {
					return r.reduce.AllReduceDevice(cctx, addr, n, bf16, dist.Sum, stream)
				})
			} else {
				err = r.reduce.AllReduceDevice(cctx, addr, n, bf16, dist.Sum, 0)
			}
			cancel()
			if err != nil {
				err = fmt.Errorf("rank %d: all-reduce of gradient bucket %d on the device: %w", rank, bi, err)
			}
		}
		b.done <- err
	}()
	return b, nil
}

// pack writes bucket bi (and, in the last bucket, the stop flag) and hands
// it to the reducing goroutine.
func (b *bucketReducer) pack(bi int) error {
	r := b.r
	d := r.d
	if err := r.packBucket(bi, b.e, b.scale, b.first); err != nil {
		return err
	}
	if lb := len(r.bufs) - 1; bi == lb {
		if err := d.dev.Launch("fill_at", 1, r.bufs[lb], len(r.b.list[lb].buf)-1, 1, b.stop); err != nil {
			return d.err("packing the stop flag", err)
		}
	}
	if r.bf16 != nil {
		n := r.bufs[bi].Len()
		if err := d.dev.Launch("to_bf16", n, r.bufs[bi], r.bf16[bi], n); err != nil {
			return d.err(fmt.Sprintf("rounding gradient bucket %d to bf16", bi), err)
		}
	}
	job := reduceJob{bucket: bi}
	if b.streams != nil {
		var err error
		if job.packed, err = b.streams.Mark(); err != nil {
			return d.err(fmt.Sprintf("marking gradient bucket %d", bi), err)
		}
	}
	b.jobs <- job
	return nil
}

// finish waits for the reductions.
func (b *bucketReducer) finish() error {
	close(b.jobs)
	return <-b.done
}

// finish ends a step: the buckets (packed and being reduced since the
// backward pass, or packed now) are all-reduced by the backend in device
// memory, and the reduced gradients go to the optimiser's buffers, which
// become the step's. It returns whether any rank asked to stop.
func (r *devReducer) finish(ctx context.Context, last *graph.Program, scale float32, first, stopRequested bool) (bool, error) {
	d, t := r.d, r.d.t
	b := d.red
	d.red = nil
	if b == nil {
		// No samples on this rank, or no run reported its gradients: pack
		// and reduce every bucket now.
		var err error
		if b, err = r.start(ctx, last, scale, first, stopRequested); err != nil {
			return false, err
		}
		for bi := range r.bufs {
			if err := b.pack(bi); err != nil {
				b.finish()
				return false, err
			}
		}
	} else if slices.ContainsFunc(b.remaining, func(n int) bool { return n > 0 }) {
		b.finish()
		return false, fmt.Errorf("device %s: the run did not report every gradient (%v still due per bucket)", d.dev.Name(), b.remaining)
	}
	if err := b.finish(); err != nil {
		return false, err
	}
	if b.streams != nil {
		// The compute stream reads the reduced buckets next: it waits for
		// the communication stream, and the host for both, under the
		// watchdog (a Read would block for good on a peer that never
		// joins).
		if err := b.streams.JoinComm(); err != nil {
			return false, d.err("joining the communication stream", err)
		}
		cctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
		err := r.reduce.WaitDevice(cctx, b.streams.CommDone)
		cancel()
		if err != nil {
			return false, fmt.Errorf("rank %d: all-reduce of the gradient buckets on the device: %w", t.rank(), err)
		}
	}
	for bi := range r.bf16 {
		n := r.bufs[bi].Len()
		if err := d.dev.Launch("from_bf16", n, r.bf16[bi], r.bufs[bi], n); err != nil {
			return false, d.err(fmt.Sprintf("widening gradient bucket %d from bf16", bi), err)
		}
	}
	lb := len(r.bufs) - 1
	stopAt := len(r.b.list[lb].buf) - 1
	for bi, bk := range r.b.list {
		for _, i := range bk.params {
			n := t.Model.Params[i].Size()
			if err := d.dev.Launch("copy_at", n, r.bufs[bi], r.offsets[i], d.grads[i].Buf, 0, n); err != nil {
				return false, d.err(fmt.Sprintf("unpacking gradient bucket %d", bi), err)
			}
		}
	}
	if err := d.dev.Launch("copy_at", 1, r.bufs[lb], stopAt, r.one, 0, 1); err != nil {
		return false, d.err("unpacking the stop flag", err)
	}
	v := []float32{0}
	if err := d.dev.Read(v, r.one); err != nil {
		return false, d.err("downloading the stop flag", err)
	}
	d.cur = d.grads
	return v[0] > 0, nil
}
