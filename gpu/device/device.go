// Package device is what gotrain needs from a compute device: float32
// buffers, copies in and out, launches of the kernels of csrc/kernels.cu
// (by name, checked against their signatures) and GEMM.
//
// Three implement [Device]:
//
//   - [Host]: buffers on the C heap, the kernels compiled for the host and
//     run as one thread (see package csrc), GEMM through graph/cblas. It is
//     the reference that gpu/executor's conformance suite runs in every
//     build, without a GPU.
//   - [HostGrid]: the host device with every kernel run thread by thread
//     over the grid a GPU launch gets, in a scattered order: the test
//     device that finds kernels that depend on the threads' order, and
//     launches whose grid is too small for their loop.
//   - gpu/cuda's device (the gpu build): buffers in device memory, the
//     kernels compiled by NVRTC, GEMM by cuBLAS.
//
// Two optional interfaces say what a GPU has beyond that, and the host
// device has no need of: [Pinner], page-locked host memory from which
// uploads are queued instead of waited for, and [Streamer], a second
// stream on which collectives run beside the kernels, ordered with them by
// events. gpu/cuda's device implements both; the trainer's tests run them
// on a host device that queues its work as late as a GPU may
// (trainer/lazyhost_test.go).
//
// # Faults
//
// A host device fails as a GPU fails when its [Faults] say so, so that the
// code above a device can be tested on its error paths: an allocation out
// of memory ([ErrOutOfMemory]), a launch that fails ([ErrLaunchFailed]),
// and the sticky asynchronous fault of a kernel that touched memory it may
// not ([ErrIllegalAddress]: the launch returns nil, the next call that
// waits for the device reports it, and every call after). --device host
// takes them from $GOTRAIN_HOST_FAULT ([HostFromEnv]), rules separated by
// commas:
//
//	GOTRAIN_HOST_FAULT=alloc:N           the Nth allocation
//	GOTRAIN_HOST_FAULT=mem:BYTES         allocations beyond BYTES live
//	GOTRAIN_HOST_FAULT=launch:N          the Nth launch
//	GOTRAIN_HOST_FAULT=launch:KERNEL:N   the Nth launch of KERNEL
//	GOTRAIN_HOST_FAULT=sticky:N          (or sticky:KERNEL:N) the Nth launch faults, seen later
//
// For example `GOTRAIN_HOST_FAULT=launch:relu:8 gotrain train --device
// host` stops at step 8 with `device host: running a program: executor:
// ReLU: launching kernel relu: injected launch failure (fault
// launch:relu:8)`. The error is a [*FaultError]. fakecuda, the CUDA driver
// on the host under gpu/cuda, takes the same rules from $FAKECUDA_FAULT.
//
// # Errors
//
// Calls return errors, never panic: a buffer of another device, a copy or
// GEMM that reaches outside its buffer, and the faults above. The trainer
// names the device and the op in front of them (trainer/device.go's
// devErr).
package device

import (
	"fmt"
	"sort"
	"sync"

	"github.com/gotrain/gotrain/csrc"
	"github.com/gotrain/gotrain/graph/cblas"
)

// Precision is what a matrix product's inputs are rounded to before they
// are multiplied; products accumulate in float32 whatever it is, and every
// other op computes in float32.
type Precision int

// The precisions of --precision.
const (
	FP32 Precision = iota // float32 throughout
	TF32                  // inputs rounded to TF32 (10 mantissa bits): Ampere's and Hopper's tensor cores on float32 data
	BF16                  // inputs rounded to bfloat16 (7 mantissa bits): tensor cores; master weights stay float32
)

// Precisions are the names of the precisions, in order.
var Precisions = []string{"fp32", "tf32", "bf16"}

func (p Precision) String() string {
	if p < 0 || int(p) >= len(Precisions) {
		return fmt.Sprintf("Precision(%d)", int(p))
	}
	return Precisions[p]
}

// MantissaBits is the number of stored mantissa bits the precision keeps.
func (p Precision) MantissaBits() int { return [...]int{23, 10, 7}[p] }

// ParsePrecision reads fp32, tf32 or bf16.
func ParsePrecision(s string) (Precision, error) {
	for i, n := range Precisions {
		if s == n {
			return Precision(i), nil
		}
	}
	return 0, fmt.Errorf("precision %q is not one of fp32, tf32, bf16", s)
}

// Buffer is device memory holding Len float32 values.
type Buffer interface {
	Len() int
}

// Addresser is a buffer whose address can be handed to a library that
// works in the device's memory (NCCL): CUDA device memory, or the host
// device's C heap.
type Addresser interface {
	Addr() uintptr
}

// Device is memory, kernels and GEMM on one device. Calls are ordered: a
// launch sees the effect of every call made before it.
type Device interface {
	// Name says which device this is, e.g. "host" or "cuda:0 NVIDIA H100".
	Name() string
	// Alloc returns n zeroed float32s.
	Alloc(n int) (Buffer, error)
	// Free releases a buffer.
	Free(Buffer)
	// Write copies src into the start of dst; Read copies the start of src
	// into dst.
	Write(dst Buffer, src []float32) error
	Read(dst []float32, src Buffer) error
	// Launch runs a kernel of csrc over n independent outputs (n sizes the
	// grid). Buffers are passed as Buffer, the other arguments as csrc.Pack
	// takes them.
	Launch(kernel string, n int, args ...any) error
	// Gemm computes C = alpha·op(A)·op(B) + beta·C on row-major matrices:
	// op(A) is m×k, op(B) k×n, C m×n, with leading dimensions lda, ldb, ldc;
	// A and B are taken at precision prec, the sums kept in float32.
	Gemm(prec Precision, transA, transB bool, m, n, k int, alpha float32, a Buffer, lda int, b Buffer, ldb int, beta float32, c Buffer, ldc int) error
	// Sync waits until all work is done and returns its first error.
	Sync() error
	// Close releases the device.
	Close() error
}

// Pinner is a device that copies from page-locked ("pinned") host memory
// asynchronously: a CUDA device (cuMemHostAlloc, cuMemcpyHtoDAsync on the
// stream its kernels run on). Input batches prepared there go up while
// the host prepares the next one.
type Pinner interface {
	// AllocHost returns n float32s of page-locked host memory.
	AllocHost(n int) ([]float32, error)
	// FreeHost releases memory from AllocHost.
	FreeHost([]float32)
	// WriteAsync is Write that may return before the copy is made, when
	// src lies in memory from AllocHost: the copy is ordered with the
	// device's other work, and src must not change until the device's
	// next Read or Sync returns. From other memory it copies as Write.
	WriteAsync(dst Buffer, src []float32) error
}

// WriteAsync copies src into dst through dev's WriteAsync when it has one
// (see Pinner), else through Write.
func WriteAsync(dev Device, dst Buffer, src []float32) error {
	if p, ok := dev.(Pinner); ok {
		return p.WriteAsync(dst, src)
	}
	return dev.Write(dst, src)
}

// AllocHost returns n float32s of dev's page-locked host memory when it has
// some (see Pinner), else ordinary memory; pinned says whether dev's
// FreeHost must release it.
func AllocHost(dev Device, n int) (mem []float32, pinned bool, err error) {
	if p, ok := dev.(Pinner); ok {
		mem, err = p.AllocHost(n)
		return mem, err == nil, err
	}
	return make([]float32, n), false, nil
}

// Pageable returns n float32s of ordinary (pageable) memory, with
// AllocHost's signature: what --pin-memory=false puts batches in.
func Pageable(_ Device, n int) (mem []float32, pinned bool, err error) {
	return make([]float32, n), false, nil
}

// Host is the host device: the reference implementation (see the package
// documentation).
type Host struct {
	// Faults, when not nil, makes the device fail as a GPU can: an
	// allocation out of memory, a failing launch, a sticky asynchronous
	// fault (see Faults; --device host takes them from
	// $GOTRAIN_HOST_FAULT, HostFromEnv).
	Faults *Faults
}

type hostBuf struct {
	mem *csrc.HostMem
	n   int
}

func (b *hostBuf) Len() int { return b.n }

// Addr is the buffer's address, which a collective library takes (see
// Addresser).
func (b *hostBuf) Addr() uintptr { return b.mem.Addr() }

// Name is "host".
func (Host) Name() string { return "host" }

// Alloc returns n zeroed float32s on the C heap.
func (h Host) Alloc(n int) (Buffer, error) {
	if n < 0 {
		return nil, fmt.Errorf("device: allocating %d values", n)
	}
	if err := h.Faults.alloc(n); err != nil {
		return nil, err
	}
	return &hostBuf{mem: csrc.Alloc(4 * n), n: n}, nil
}

// Free releases b.
func (h Host) Free(b Buffer) {
	if hb, ok := b.(*hostBuf); ok {
		h.Faults.free(hb.n)
		hb.mem.Free()
	}
}

func (Host) buf(b Buffer) (*hostBuf, error) {
	hb, ok := b.(*hostBuf)
	if !ok || hb == nil {
		return nil, fmt.Errorf("device: %T is not a host buffer", b)
	}
	return hb, nil
}

// Write copies src into dst.
func (h Host) Write(dst Buffer, src []float32) error {
	d, err := h.buf(dst)
	if err != nil {
		return err
	}
	if len(src) > d.n {
		return fmt.Errorf("device: writing %d values into a buffer of %d", len(src), d.n)
	}
	if err := h.Faults.wait(fmt.Sprintf("writing %d values", len(src))); err != nil {
		return err
	}
	copy(d.mem.Float32s(), src)
	return nil
}

// Read copies src into dst.
func (h Host) Read(dst []float32, src Buffer) error {
	s, err := h.buf(src)
	if err != nil {
		return err
	}
	if len(dst) > s.n {
		return fmt.Errorf("device: reading %d values from a buffer of %d", len(dst), s.n)
	}
	if err := h.Faults.wait(fmt.Sprintf("reading %d values", len(dst))); err != nil {
		return err
	}
	copy(dst, s.mem.Float32s())
	return nil
}

// Launch runs the kernel on the host, as one thread.
func (h Host) Launch(kernel string, n int, args ...any) error {
	conv, err := h.args(kernel, args)
	if err != nil {
		return err
	}
	if run, err := h.Faults.launch(kernel); !run {
		return err
	}
	return csrc.Launch(kernel, conv...)
}

// args replaces the buffers among a kernel's arguments by their memory.
func (h Host) args(kernel string, args []any) ([]any, error) {
	conv := make([]any, len(args))
	for i, a := range args {
		if b, ok := a.(Buffer); ok {
			hb, err := h.buf(b)
			if err != nil {
				return nil, fmt.Errorf("device: kernel %s argument %d: %w", kernel, i, err)
			}
			conv[i] = hb.mem
			continue
		}
		conv[i] = a
	}
	return conv, nil
}

// HostGrid is the host device with its kernels run as a GPU runs them:
// each launch over n outputs takes the grid gpu/cuda gives it
// (csrc.Geometry) and runs every thread of it, in a scattered order that
// changes from launch to launch (csrc.LaunchGrid). A kernel whose result
// depends on the threads' order or on the grid's size gives other results
// here than on Host. It also keeps the launches that would leave a GPU's
// threads looping (see Underfilled). It is slower than Host: a test
// device. Memory, copies and GEMM are Host's.
type HostGrid struct {
	Host
	mu       sync.Mutex
	launches uint64
	under    map[string]string
}

// Name is "host-grid".
func (*HostGrid) Name() string { return "host-grid" }

// Launch runs the kernel with a GPU's grid for n outputs.
func (h *HostGrid) Launch(kernel string, n int, args ...any) error {
	conv, err := h.args(kernel, args)
	if err != nil {
		return err
	}
	if run, err := h.Faults.launch(kernel); !run {
		return err
	}
	h.mu.Lock()
	h.launches++
	order := h.launches * 0x9e3779b97f4a7c15
	h.mu.Unlock()
	blocks, threads := csrc.Geometry(n)
	iters, err := csrc.LaunchGrid(kernel, blocks, threads, order, conv...)
	if err != nil {
		return err
	}
	if iters > 1 && blocks < csrc.MaxBlocks {
		h.mu.Lock()
		if h.under == nil {
			h.under = map[string]string{}
		}
		if _, seen := h.under[kernel]; !seen {
			h.under[kernel] = fmt.Sprintf("%s launched over %d outputs (%d blocks of %d threads) ran %d iterations in one thread", kernel, n, blocks, threads, iters)
		}
		h.mu.Unlock()
	}
	return nil
}

// Underfilled describes the launches, one per kernel, whose grid was
// smaller than the loop it ran while it could have been larger: the n
// given to Launch was below the kernel's number of outputs, so on a GPU
// some threads would have done the work of several and the rest none.
func (h *HostGrid) Underfilled() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, s := range h.under {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Gemm runs through graph/cblas (OpenBLAS where present). At TF32 or BF16
// it first rounds copies of A and B as the tensor cores take them (the
// round_mantissa kernel) and multiplies those in float32, which is what
// the tensor cores compute up to the order of the sums.
func (h Host) Gemm(prec Precision, ta, tb bool, m, n, k int, alpha float32, a Buffer, lda int, b Buffer, ldb int, beta float32, c Buffer, ldc int) error {
	ab, err := h.buf(a)
	if err != nil {
		return err
	}
	bb, err := h.buf(b)
	if err != nil {
		return err
	}
	cb, err := h.buf(c)
	if err != nil {
		return err
	}
	ar, ac := m, k
	if ta {
		ar, ac = k, m
	}
	br, bc := k, n
	if tb {
		br, bc = n, k
	}
	switch {
	case ar*lda > ab.n || lda < ac:
		return fmt.Errorf("device: gemm: A is %dx%d (lda %d) in a buffer of %d", ar, ac, lda, ab.n)
	case br*ldb > bb.n || ldb < bc:
		return fmt.Errorf("device: gemm: B is %dx%d (ldb %d) in a buffer of %d", br, bc, ldb, bb.n)
	case m*ldc > cb.n || ldc < n:
		return fmt.Errorf("device: gemm: C is %dx%d (ldc %d) in a buffer of %d", m, n, ldc, cb.n)
	}
	if run, err := h.Faults.queued(fmt.Sprintf("GEMM %d×%d×%d", m, n, k)); !run {
		return err
	}
	av, bv := ab.mem.Float32s()[:ar*lda], bb.mem.Float32s()[:br*ldb]
	if prec != FP32 {
		ra, rb := csrc.Alloc(4*len(av)), csrc.Alloc(4*len(bv))
		defer ra.Free()
		defer rb.Free()
		if err := csrc.Launch("round_mantissa", ab.mem, ra, len(av), int32(prec.MantissaBits())); err != nil {
			return err
		}
		if err := csrc.Launch("round_mantissa", bb.mem, rb, len(bv), int32(prec.MantissaBits())); err != nil {
			return err
		}
		av, bv = ra.Float32s(), rb.Float32s()
	}
	cblas.Sgemm(ta, tb, m, n, k, alpha, av, lda, bv, ldb, beta, cb.mem.Float32s(), ldc)
	return nil
}

// Sync returns nil: host calls complete before they return. With Faults,
// it reports a sticky fault.
func (h Host) Sync() error { return h.Faults.wait("synchronising") }

// Close does nothing.
func (Host) Close() error { return nil }

// Event marks a point in a device's compute stream (see Streamer).
type Event any

// Streamer is a device with a communication stream beside the one its
// kernels and copies run on (CUDA: a stream of its own that does not wait
// for the default one), so that a collective library (NCCL) reduces the
// gradient buckets while the backward pass's kernels go on.
//
// A bucket is handed over with an event: Mark after the kernels that pack
// it, then OnComm queues the all-reduce behind that mark only. Before the
// compute stream reads what the collectives wrote, JoinComm makes it wait
// for them.
type Streamer interface {
	// Mark returns an event at the current end of the compute stream.
	Mark() (Event, error)
	// OnComm makes the communication stream wait for ev, then calls
	// enqueue with the stream's handle (a CUstream) to queue work on it.
	// ev is used up.
	OnComm(ev Event, enqueue func(stream uintptr) error) error
	// CommDone reports whether the communication stream's work is done.
	CommDone() (bool, error)
	// JoinComm makes the compute stream's later work wait for the
	// communication stream's work queued so far.
	JoinComm() error
}
