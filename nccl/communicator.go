package nccl

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/gotrain/gotrain/trainer/dist"
)

// Communicator is a Comm behind the trainer's dist.Communicator interface,
// for buffers in memory the library can address: host slices ([]float32,
// []float64, []byte) here, which the test stand-in library serves; the GPU
// build hands NCCL device buffers. Every call runs under the Comm's
// watchdog (Comm.Run): a context that ends aborts the communicator, so a
// dead peer never hangs a rank. Errors are *dist.OpError values with the
// same kinds as the CPU ring's: a peer that failed or aborted is
// dist.ErrPeerLost (NCCL's remote/system errors), a deadline is
// dist.ErrTimeout, a call after Abort or Close is dist.ErrAborted.
type Communicator struct {
	comm       *Comm
	rank, size int
	stage      Staging       // nil: NCCL reads the host buffers themselves
	slots      [2]sync.Mutex // held by the staged call using each slot

	mu    sync.Mutex
	cause error // set by Abort, Close or a failed call
}

var _ dist.Communicator = (*Communicator)(nil)

// NewCommunicator wraps comm, whose rank and size it reads.
func NewCommunicator(comm *Comm) (*Communicator, error) {
	rank, err := comm.UserRank()
	if err != nil {
		return nil, err
	}
	size, err := comm.Count()
	if err != nil {
		return nil, err
	}
	return &Communicator{comm: comm, rank: rank, size: size}, nil
}

// Rank is this process's rank.
func (c *Communicator) Rank() int { return c.rank }

// Size is the number of ranks.
func (c *Communicator) Size() int { return c.size }

// Comm is the underlying NCCL communicator.
func (c *Communicator) Comm() *Comm { return c.comm }

// Staging carries host buffers through device memory, for an NCCL that
// reads only device memory (on a GPU, every NCCL; the CPU build's stand-in
// reads host memory and needs none). Slots 0 and 1 are two device
// buffers, grown as needed and kept; the staged collective runs on the
// device's default stream, after Put's copy and before Get's.
type Staging interface {
	// Reserve returns slot's device address with room for bytes.
	Reserve(slot, bytes int) (uintptr, error)
	// Put copies bytes of host memory at src into slot, queued before the
	// default stream's later work, and returns the slot's address.
	Put(slot int, src unsafe.Pointer, bytes int) (uintptr, error)
	// Get copies bytes of slot into host memory at dst, after the default
	// stream's earlier work.
	Get(dst unsafe.Pointer, slot, bytes int) error
	// Idle reports whether the default stream's work is done: the
	// watchdog waits for it before Get, so a peer that never joins is an
	// error, not a copy that never returns.
	Idle() (bool, error)
}

// UseStaging makes the collectives on host buffers go through s (see
// Staging). Call it before the first collective.
func (c *Communicator) UseStaging(s Staging) { c.stage = s }

// hostBuf returns the address, element count and NCCL type of a slice.
func hostBuf(b any) (DevicePtr, int, DataType, bool) {
	switch s := b.(type) {
	case []float32:
		return ptr(unsafe.SliceData(s)), len(s), Float32, true
	case []float64:
		return ptr(unsafe.SliceData(s)), len(s), Float64, true
	case []byte:
		return ptr(unsafe.SliceData(s)), len(s), Uint8, true
	}
	return 0, 0, 0, false
}

func ptr[T any](p *T) DevicePtr { return DevicePtr(uintptr(unsafe.Pointer(p))) }

// hostPtr is the address of a host buffer's first element (nil for nil).
func hostPtr(b any) unsafe.Pointer {
	switch s := b.(type) {
	case []float32:
		return unsafe.Pointer(unsafe.SliceData(s))
	case []float64:
		return unsafe.Pointer(unsafe.SliceData(s))
	case []byte:
		return unsafe.Pointer(unsafe.SliceData(s))
	}
	return nil
}

func (c *Communicator) opErr(op string, kind error, peers []int, err error) error {
	return &dist.OpError{Rank: c.rank, Op: op, Peers: peers, Kind: kind, Err: err}
}

// enter fails fast once the communicator is aborted or ctx has ended.
func (c *Communicator) enter(ctx context.Context, op string) error {
	c.mu.Lock()
	cause := c.cause
	c.mu.Unlock()
	if cause != nil {
		return c.opErr(op, dist.ErrAborted, nil, cause)
	}
	if err := ctx.Err(); err != nil {
		return c.opErr(op, context.Canceled, nil, err)
	}
	return nil
}

var rankInText = regexp.MustCompile(`rank (\d+)`)

// hostCall runs an NCCL call on host buffers: in is read by it (nil: none),
// out written (nil: none; the same slice as in: in place). f gets the
// addresses NCCL takes: the host buffers', or with staging the device
// slots' they were copied to, and out is copied back once the device is
// done.
func (c *Communicator) hostCall(ctx context.Context, op string, in, out any, f func(send, recv DevicePtr) error) error {
	ip, _, _, _ := hostBuf(in)
	outp, _, _, _ := hostBuf(out)
	if c.stage == nil {
		return c.run(ctx, op, func() error { return f(ip, outp) }, in, out)
	}
	defer runtime.KeepAlive(in)
	defer runtime.KeepAlive(out)
	if err := c.enter(ctx, op); err != nil {
		return err
	}
	// A Send (slot 0) may run beside a Recv (slot 1), as a ring step's
	// do; calls on the same slot take turns.
	inPlace := in != nil && out != nil && ip == outp && byteLen(in) == byteLen(out)
	if in != nil {
		c.slots[0].Lock()
		defer c.slots[0].Unlock()
	}
	if out != nil && !inPlace {
		c.slots[1].Lock()
		defer c.slots[1].Unlock()
	}
	inBytes, outBytes := byteLen(in), byteLen(out)
	var dIn, dOut uintptr
	var err error
	if in != nil {
		if dIn, err = c.stage.Put(0, hostPtr(in), inBytes); err != nil {
			return c.opErr(op, dist.ErrBadBuffer, nil, fmt.Errorf("staging %d bytes on the device: %w", inBytes, err))
		}
	}
	slot := 1
	switch {
	case out == nil:
	case inPlace:
		dOut, slot = dIn, 0
	default:
		if dOut, err = c.stage.Reserve(1, outBytes); err != nil {
			return c.opErr(op, dist.ErrBadBuffer, nil, fmt.Errorf("staging %d bytes on the device: %w", outBytes, err))
		}
	}
	if err := c.failed(op, c.comm.Run(ctx, func() error { return f(DevicePtr(dIn), DevicePtr(dOut)) }, c.stage.Idle)); err != nil {
		return err
	}
	if out != nil {
		if err := c.stage.Get(hostPtr(out), slot, outBytes); err != nil {
			return c.opErr(op, dist.ErrBadBuffer, nil, fmt.Errorf("copying %d bytes back from the device: %w", outBytes, err))
		}
	}
	return nil
}

// byteLen is the size in bytes of a host buffer (0 for nil).
func byteLen(b any) int {
	switch s := b.(type) {
	case []float32:
		return 4 * len(s)
	case []float64:
		return 8 * len(s)
	case []byte:
		return len(s)
	}
	return 0
}

// run calls f under the watchdog and translates its errors. keep holds the
// Go buffers whose addresses f passes to C as integers: they must stay
// reachable until the call has returned, or the collector may free them
// under NCCL's feet.
func (c *Communicator) run(ctx context.Context, op string, f func() error, keep ...any) error {
	defer runtime.KeepAlive(keep)
	if err := c.enter(ctx, op); err != nil {
		return err
	}
	return c.failed(op, c.comm.Run(ctx, f, nil))
}

// failed turns an error of the NCCL call op into the dist error a caller
// expects (nil stays nil), aborting the communicator where the ranks are
// out of step.
func (c *Communicator) failed(op string, err error) error {
	if err == nil {
		return nil
	}
	c.mu.Lock()
	cause := c.cause
	c.mu.Unlock()
	if cause != nil { // Abort or Close released this call
		return c.opErr(op, dist.ErrAborted, nil, errors.Join(cause, err))
	}
	var kind error
	var peers []int
	switch {
	case errors.Is(err, ErrTimeout) && errors.Is(err, context.DeadlineExceeded):
		kind = dist.ErrTimeout
	case errors.Is(err, ErrTimeout):
		kind = context.Canceled
	case errors.Is(err, InvalidArgument) || errors.Is(err, InvalidUsage):
		return c.opErr(op, dist.ErrInvalidArg, nil, err) // nothing was sent: still usable
	case errors.Is(err, ErrAborted):
		kind = dist.ErrAborted
	default:
		kind = dist.ErrPeerLost
		// NCCL's last-error text names the rank that failed, when it knows.
		for _, m := range rankInText.FindAllStringSubmatch(err.Error(), -1) {
			if r, e := strconv.Atoi(m[1]); e == nil && r != c.rank {
				peers = append(peers, r)
				break
			}
		}
	}
	c.fail(err)
	return c.opErr(op, kind, peers, err)
}

// fail aborts the NCCL communicator after a failed call: the ranks are out
// of step, as NCCL documents.
func (c *Communicator) fail(err error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause = err
	}
	c.mu.Unlock()
	_ = c.comm.Abort()
}

// pair checks a collective's send and recv buffers and returns send's
// element count and type.
func (c *Communicator) pair(op string, send, recv any, mult int) (int, DataType, error) {
	_, sn, sdt, ok1 := hostBuf(send)
	_, rn, rdt, ok2 := hostBuf(recv)
	if !ok1 || !ok2 || sdt != rdt {
		return 0, 0, c.opErr(op, dist.ErrBadBuffer, nil, fmt.Errorf("buffers %T and %T: want two slices of the same type ([]float32, []float64 or []byte)", send, recv))
	}
	if sn*mult != rn {
		return 0, 0, c.opErr(op, dist.ErrBadBuffer, nil, fmt.Errorf("send has %d elements, recv %d: want recv = %d × send", sn, rn, mult))
	}
	return sn, sdt, nil
}

func redOp(op dist.Op) (RedOp, bool) {
	switch op {
	case dist.Sum:
		return Sum, true
	case dist.Avg:
		return Avg, true
	case dist.Max:
		return Max, true
	case dist.Min:
		return Min, true
	}
	return 0, false
}

// AllReduce reduces send over the ranks into recv (send may equal recv).
func (c *Communicator) AllReduce(ctx context.Context, send, recv any, op dist.Op) error {
	n, dt, err := c.pair("AllReduce", send, recv, 1)
	if err != nil {
		return err
	}
	if dt == Uint8 {
		return c.opErr("AllReduce", dist.ErrBadBuffer, nil, errors.New("AllReduce takes []float32 or []float64"))
	}
	nop, ok := redOp(op)
	if !ok {
		return c.opErr("AllReduce", dist.ErrInvalidArg, nil, fmt.Errorf("op %v", op))
	}
	if n == 0 {
		return c.enter(ctx, "AllReduce")
	}
	return c.hostCall(ctx, "AllReduce", send, recv, func(s, r DevicePtr) error { return c.comm.AllReduce(s, r, n, dt, nop, 0) })
}

// AllReduceDevice all-reduces count float32 (bf16: bfloat16) values in place at ptr, memory
// of the device this rank's NCCL communicator was created for (with the
// CPU build's stand-in, host memory): gradient buckets that never leave
// the device. It is queued on stream (a CUstream; 0: the default stream,
// after the work already queued there) under the same deadline and
// watchdog as AllReduce, and may return before the device has run it:
// WaitDevice waits for it.
func (c *Communicator) AllReduceDevice(ctx context.Context, ptr uintptr, count int, bf16 bool, op dist.Op, stream uintptr) error {
	return c.AllReduceDeviceTo(ctx, ptr, ptr, count, bf16, op, stream)
}

// AllReduceDeviceTo is AllReduceDevice from device memory at send into
// device memory at recv (the same address: in place).
func (c *Communicator) AllReduceDeviceTo(ctx context.Context, send, recv uintptr, count int, bf16 bool, op dist.Op, stream uintptr) error {
	nop, ok := redOp(op)
	if !ok {
		return c.opErr("AllReduce", dist.ErrInvalidArg, nil, fmt.Errorf("op %v", op))
	}
	if send == 0 || recv == 0 || count < 0 {
		return c.opErr("AllReduce", dist.ErrBadBuffer, nil, fmt.Errorf("device buffers %#x and %#x of %d values", send, recv, count))
	}
	if count == 0 {
		return c.enter(ctx, "AllReduce")
	}
	dt := Float32
	if bf16 {
		dt = Bfloat16
	}
	return c.run(ctx, "AllReduce", func() error {
		return c.comm.AllReduce(DevicePtr(send), DevicePtr(recv), count, dt, nop, Stream(stream))
	})
}

// SendDevice sends count float32 values of device memory at ptr to peer,
// queued on stream like AllReduceDevice; the peer receives them with
// RecvDevice (or Recv).
func (c *Communicator) SendDevice(ctx context.Context, ptr uintptr, count, peer int, stream uintptr) error {
	return c.p2pDevice(ctx, "Send", ptr, count, peer, stream, c.comm.Send)
}

// RecvDevice receives count float32 values from peer into device memory at
// ptr, queued on stream.
func (c *Communicator) RecvDevice(ctx context.Context, ptr uintptr, count, peer int, stream uintptr) error {
	return c.p2pDevice(ctx, "Recv", ptr, count, peer, stream, c.comm.Recv)
}

func (c *Communicator) p2pDevice(ctx context.Context, op string, ptr uintptr, count, peer int, stream uintptr, f func(DevicePtr, int, DataType, int, Stream) error) error {
	if ptr == 0 || count < 0 {
		return c.opErr(op, dist.ErrBadBuffer, nil, fmt.Errorf("device buffer %#x of %d values", ptr, count))
	}
	if peer < 0 || peer >= c.size || peer == c.rank {
		return c.opErr(op, dist.ErrInvalidArg, nil, fmt.Errorf("peer %d (rank %d of %d)", peer, c.rank, c.size))
	}
	if count == 0 {
		return c.enter(ctx, op)
	}
	return c.run(ctx, op, func() error { return f(DevicePtr(ptr), count, Float32, peer, Stream(stream)) })
}

// devicePoll is how often WaitDevice asks whether the device is done: the
// host waits there at the end of every step, so finely.
const devicePoll = 20 * time.Microsecond

// WaitDevice waits until done (a query of the stream AllReduceDevice
// queued on) reports the device's work finished, checking NCCL's
// asynchronous errors meanwhile. When ctx ends first, or NCCL reports an
// error, the communicator is aborted (which releases the device's
// collectives) and the error names what happened, as for a collective.
func (c *Communicator) WaitDevice(ctx context.Context, done func() (bool, error)) error {
	if err := c.enter(ctx, "AllReduce"); err != nil {
		return err
	}
	return c.failed("AllReduce", c.comm.Watch(ctx, done, devicePoll))
}

// Broadcast copies root's buf to every rank's buf.
func (c *Communicator) Broadcast(ctx context.Context, buf any, root int) error {
	_, n, dt, ok := hostBuf(buf)
	if !ok {
		return c.opErr("Broadcast", dist.ErrBadBuffer, nil, fmt.Errorf("buffer %T", buf))
	}
	if root < 0 || root >= c.size {
		return c.opErr("Broadcast", dist.ErrInvalidArg, nil, fmt.Errorf("root %d of %d ranks", root, c.size))
	}
	if n == 0 {
		return c.enter(ctx, "Broadcast")
	}
	return c.hostCall(ctx, "Broadcast", buf, buf, func(s, r DevicePtr) error { return c.comm.Broadcast(s, r, n, dt, root, 0) })
}

// AllGather concatenates every rank's send, in rank order, into recv.
func (c *Communicator) AllGather(ctx context.Context, send, recv any) error {
	n, dt, err := c.pair("AllGather", send, recv, c.size)
	if err != nil {
		return err
	}
	if n == 0 {
		return c.enter(ctx, "AllGather")
	}
	return c.hostCall(ctx, "AllGather", send, recv, func(s, r DevicePtr) error { return c.comm.AllGather(s, r, n, dt, 0) })
}

// ReduceScatter reduces send (Size() blocks) and leaves block Rank() in recv.
func (c *Communicator) ReduceScatter(ctx context.Context, send, recv any, op dist.Op) error {
	n, dt, err := c.pair("ReduceScatter", recv, send, c.size)
	if err != nil {
		return err
	}
	if dt == Uint8 {
		return c.opErr("ReduceScatter", dist.ErrBadBuffer, nil, errors.New("ReduceScatter takes []float32 or []float64"))
	}
	nop, ok := redOp(op)
	if !ok {
		return c.opErr("ReduceScatter", dist.ErrInvalidArg, nil, fmt.Errorf("op %v", op))
	}
	if n == 0 {
		return c.enter(ctx, "ReduceScatter")
	}
	return c.hostCall(ctx, "ReduceScatter", send, recv, func(s, r DevicePtr) error { return c.comm.ReduceScatter(s, r, n, dt, nop, 0) })
}

// Barrier returns once every rank has entered it (an all-reduce of one
// element: NCCL has no barrier).
func (c *Communicator) Barrier(ctx context.Context) error {
	one := []float32{1}
	if err := c.enter(ctx, "Barrier"); err != nil {
		return err
	}
	return c.hostCall(ctx, "Barrier", one, one, func(s, r DevicePtr) error { return c.comm.AllReduce(s, r, 1, Float32, Sum, 0) })
}

// Send sends buf to peer, which must Recv the same type and length.
func (c *Communicator) Send(ctx context.Context, buf any, peer int) error {
	return c.p2p(ctx, "Send", buf, peer, true, c.comm.Send)
}

// Recv receives buf from peer.
func (c *Communicator) Recv(ctx context.Context, buf any, peer int) error {
	return c.p2p(ctx, "Recv", buf, peer, false, c.comm.Recv)
}

func (c *Communicator) p2p(ctx context.Context, op string, buf any, peer int, send bool, f func(DevicePtr, int, DataType, int, Stream) error) error {
	_, n, dt, ok := hostBuf(buf)
	if !ok {
		return c.opErr(op, dist.ErrBadBuffer, nil, fmt.Errorf("buffer %T", buf))
	}
	if peer < 0 || peer >= c.size || peer == c.rank {
		return c.opErr(op, dist.ErrInvalidArg, nil, fmt.Errorf("peer %d (rank %d of %d)", peer, c.rank, c.size))
	}
	if n == 0 {
		return c.enter(ctx, op)
	}
	if send {
		return c.hostCall(ctx, op, buf, nil, func(s, _ DevicePtr) error { return f(s, n, dt, peer, 0) })
	}
	return c.hostCall(ctx, op, nil, buf, func(_, r DevicePtr) error { return f(r, n, dt, peer, 0) })
}

// Close destroys the NCCL communicator (its peers learn it at their next
// collective, or when their watchdog's deadline passes).
func (c *Communicator) Close() error {
	c.mu.Lock()
	if c.cause == nil {
		c.cause = dist.ErrClosed
	}
	c.mu.Unlock()
	return c.comm.Destroy()
}

// Abort aborts the NCCL communicator: pending calls return, later ones
// fail with dist.ErrAborted wrapping err.
func (c *Communicator) Abort(err error) {
	if err == nil {
		err = errors.New("aborted")
	}
	c.fail(err)
}
