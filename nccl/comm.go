package nccl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

type commState int

const (
	stateLive commState = iota
	stateFinalized
	stateDestroyed
	stateAborted
)

// Comm is an NCCL communicator. Its methods may be called from any
// goroutine, but see the package documentation on thread discipline:
// NCCL calls for one device belong on one OS-locked goroutine. Abort (and
// GetAsyncError) may be called from another goroutine while a call blocks;
// that is what Watch and Run do.
type Comm struct {
	lib    *Library
	nranks int // from init
	rank   int // from init

	mu       sync.Mutex
	h        handle // nil once destroyed/aborted
	state    commState
	inflight int
	release  func() // frees C memory that lives as long as the comm
}

// enter checks the comm is usable and counts a call in flight.
func (c *Comm) enter(fn string, allowFinalized bool) (handle, error) {
	if c == nil || c.lib == nil {
		return nil, argErr(fn, "nil communicator")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateDestroyed:
		return nil, fmt.Errorf("nccl: %s: communicator was destroyed: %w", fn, ErrAborted)
	case stateAborted:
		return nil, fmt.Errorf("nccl: %s: communicator was aborted: %w", fn, ErrAborted)
	case stateFinalized:
		if !allowFinalized {
			return nil, fmt.Errorf("nccl: %s: communicator was finalized (only Destroy is allowed now): %w", fn, InvalidUsage)
		}
	}
	if c.h == nil {
		return nil, argErr(fn, "communicator has no handle")
	}
	c.inflight++
	return c.h, nil
}

func (c *Comm) exit() {
	c.mu.Lock()
	c.inflight--
	c.mu.Unlock()
}

// call runs one NCCL call that returns a Result, with the comm entered.
func (c *Comm) call(fn string, allowFinalized bool, f func(h handle) Result) error {
	if err := c.lib.need(fn); err != nil {
		return err
	}
	h, err := c.enter(fn, allowFinalized)
	if err != nil {
		return err
	}
	defer c.exit()
	if r := f(h); r != Success {
		return c.lib.fail(fn, r, h)
	}
	return nil
}

// checkCount checks count >= 0 and count*mult elements of dt fit in an int
// (and so in size_t); it returns count as a size_t.
func checkCount(fn, what string, count, mult int, dt DataType) (uint64, error) {
	if count < 0 {
		return 0, argErr(fn, "%s %d is negative", what, count)
	}
	if mult < 1 {
		mult = 1
	}
	if count > 0 && count > math.MaxInt/mult/dt.Size() {
		return 0, argErr(fn, "%s %d (x%d ranks) of %v overflows the buffer size", what, count, mult, dt)
	}
	return uint64(count), nil
}

func checkBuf(fn, what string, p DevicePtr, count int) error {
	if p == 0 && count > 0 {
		return argErr(fn, "%s buffer is nil with count %d", what, count)
	}
	return nil
}

func (c *Comm) checkRank(fn, what string, r int) error {
	if r < 0 || r >= c.nranks {
		return argErr(fn, "%s %d out of range [0, %d)", what, r, c.nranks)
	}
	return nil
}

func (c *Comm) pre(fn string, dt DataType, op RedOp, hasOp bool) error {
	if c == nil || c.lib == nil {
		return argErr(fn, "nil communicator")
	}
	return c.lib.checkTypes(fn, dt, op, hasOp)
}

// AllReduce reduces count elements of send over all ranks with op into recv
// on every rank (ncclAllReduce). send may equal recv (in place).
func (c *Comm) AllReduce(send, recv DevicePtr, count int, dt DataType, op RedOp, s Stream) error {
	const fn = "ncclAllReduce"
	if err := c.pre(fn, dt, op, true); err != nil {
		return err
	}
	n, err := checkCount(fn, "count", count, 1, dt)
	if err != nil {
		return err
	}
	if err := errors.Join(checkBuf(fn, "send", send, count), checkBuf(fn, "recv", recv, count)); err != nil {
		return err
	}
	return c.call(fn, false, func(h handle) Result { return c.lib.api.allReduce(send, recv, n, dt, op, h, s) })
}

// Broadcast copies count elements of root's send into recv on every rank
// (ncclBroadcast). send is only read on root (it may be 0 elsewhere).
func (c *Comm) Broadcast(send, recv DevicePtr, count int, dt DataType, root int, s Stream) error {
	const fn = "ncclBroadcast"
	if err := c.pre(fn, dt, 0, false); err != nil {
		return err
	}
	n, err := checkCount(fn, "count", count, 1, dt)
	if err != nil {
		return err
	}
	if err := c.checkRank(fn, "root", root); err != nil {
		return err
	}
	var sendErr error
	if c.rank == root {
		sendErr = checkBuf(fn, "send", send, count)
	}
	if err := errors.Join(sendErr, checkBuf(fn, "recv", recv, count)); err != nil {
		return err
	}
	return c.call(fn, false, func(h handle) Result { return c.lib.api.broadcast(send, recv, n, dt, root, h, s) })
}

// Reduce reduces count elements of send over all ranks with op into recv on
// root (ncclReduce). recv is only written on root (it may be 0 elsewhere).
func (c *Comm) Reduce(send, recv DevicePtr, count int, dt DataType, op RedOp, root int, s Stream) error {
	const fn = "ncclReduce"
	if err := c.pre(fn, dt, op, true); err != nil {
		return err
	}
	n, err := checkCount(fn, "count", count, 1, dt)
	if err != nil {
		return err
	}
	if err := c.checkRank(fn, "root", root); err != nil {
		return err
	}
	var recvErr error
	if c.rank == root {
		recvErr = checkBuf(fn, "recv", recv, count)
	}
	if err := errors.Join(checkBuf(fn, "send", send, count), recvErr); err != nil {
		return err
	}
	return c.call(fn, false, func(h handle) Result { return c.lib.api.reduce(send, recv, n, dt, op, root, h, s) })
}

// AllGather gathers sendCount elements from every rank into recv, which
// holds nranks*sendCount elements in rank order (ncclAllGather).
func (c *Comm) AllGather(send, recv DevicePtr, sendCount int, dt DataType, s Stream) error {
	const fn = "ncclAllGather"
	if err := c.pre(fn, dt, 0, false); err != nil {
		return err
	}
	n, err := checkCount(fn, "sendCount", sendCount, c.nranks, dt)
	if err != nil {
		return err
	}
	if err := errors.Join(checkBuf(fn, "send", send, sendCount), checkBuf(fn, "recv", recv, sendCount)); err != nil {
		return err
	}
	return c.call(fn, false, func(h handle) Result { return c.lib.api.allGather(send, recv, n, dt, h, s) })
}

// ReduceScatter reduces send (nranks*recvCount elements) over all ranks and
// leaves block r, recvCount elements, in rank r's recv (ncclReduceScatter).
func (c *Comm) ReduceScatter(send, recv DevicePtr, recvCount int, dt DataType, op RedOp, s Stream) error {
	const fn = "ncclReduceScatter"
	if err := c.pre(fn, dt, op, true); err != nil {
		return err
	}
	n, err := checkCount(fn, "recvCount", recvCount, c.nranks, dt)
	if err != nil {
		return err
	}
	if err := errors.Join(checkBuf(fn, "send", send, recvCount), checkBuf(fn, "recv", recv, recvCount)); err != nil {
		return err
	}
	return c.call(fn, false, func(h handle) Result { return c.lib.api.reduceScatter(send, recv, n, dt, op, h, s) })
}

// Send sends count elements of buf to peer (ncclSend, NCCL >= 2.7). Pair
// it with the peer's Recv inside GroupStart/GroupEnd.
func (c *Comm) Send(buf DevicePtr, count int, dt DataType, peer int, s Stream) error {
	const fn = "ncclSend"
	if err := c.pre(fn, dt, 0, false); err != nil {
		return err
	}
	n, err := checkCount(fn, "count", count, 1, dt)
	if err != nil {
		return err
	}
	if err := errors.Join(c.checkRank(fn, "peer", peer), checkBuf(fn, "send", buf, count)); err != nil {
		return err
	}
	return c.call(fn, false, func(h handle) Result { return c.lib.api.send(buf, n, dt, peer, h, s) })
}

// Recv receives count elements from peer into buf (ncclRecv, NCCL >= 2.7).
func (c *Comm) Recv(buf DevicePtr, count int, dt DataType, peer int, s Stream) error {
	const fn = "ncclRecv"
	if err := c.pre(fn, dt, 0, false); err != nil {
		return err
	}
	n, err := checkCount(fn, "count", count, 1, dt)
	if err != nil {
		return err
	}
	if err := errors.Join(c.checkRank(fn, "peer", peer), checkBuf(fn, "recv", buf, count)); err != nil {
		return err
	}
	return c.call(fn, false, func(h handle) Result { return c.lib.api.recv(buf, n, dt, peer, h, s) })
}

func (c *Comm) queryInt(fn string, q func(api, handle) (int, Result)) (int, error) {
	if c == nil || c.lib == nil {
		return 0, argErr(fn, "nil communicator")
	}
	var v int
	err := c.call(fn, true, func(h handle) Result {
		var r Result
		v, r = q(c.lib.api, h)
		return r
	})
	return v, err
}

// Count is the number of ranks (ncclCommCount).
func (c *Comm) Count() (int, error) {
	return c.queryInt("ncclCommCount", func(a api, h handle) (int, Result) { return a.commCount(h) })
}

// UserRank is this communicator's rank (ncclCommUserRank).
func (c *Comm) UserRank() (int, error) {
	return c.queryInt("ncclCommUserRank", func(a api, h handle) (int, Result) { return a.commUserRank(h) })
}

// CuDevice is the CUDA device the communicator uses (ncclCommCuDevice).
func (c *Comm) CuDevice() (int, error) {
	return c.queryInt("ncclCommCuDevice", func(a api, h handle) (int, Result) { return a.commCuDevice(h) })
}

// GetAsyncError returns nil while the communicator is healthy and idle, or
// an *Error holding the asynchronous error (ncclCommGetAsyncError, NCCL >=
// 2.4). In non-blocking mode an operation still running is reported as an
// *Error whose Code is InProgress (errors.Is(err, nccl.InProgress)).
func (c *Comm) GetAsyncError() error {
	const fn = "ncclCommGetAsyncError"
	if c == nil || c.lib == nil {
		return argErr(fn, "nil communicator")
	}
	var async Result
	if err := c.call(fn, true, func(h handle) Result {
		var r Result
		async, r = c.lib.api.commGetAsyncError(h)
		return r
	}); err != nil {
		return err
	}
	if async == Success {
		return nil
	}
	e := &Error{Func: fn, Code: async, Msg: c.lib.api.getErrorString(async)}
	if c.lib.api.has("ncclGetLastError") {
		if h, err := c.enter(fn, true); err == nil {
			e.Last = c.lib.api.getLastError(h)
			c.exit()
		}
	}
	return e
}

// Finalize flushes the communicator's pending work (ncclCommFinalize, NCCL
// >= 2.14); Destroy must follow. Calling it again is a no-op. In non-blocking
// mode it may return InProgress: poll with WaitReady.
func (c *Comm) Finalize() error {
	const fn = "ncclCommFinalize"
	if c == nil || c.lib == nil {
		return argErr(fn, "nil communicator")
	}
	c.mu.Lock()
	finalized := c.state == stateFinalized
	c.mu.Unlock()
	if finalized {
		return nil
	}
	err := c.call(fn, false, func(h handle) Result { return c.lib.api.commFinalize(h) })
	if err == nil || errors.Is(err, InProgress) {
		c.mu.Lock()
		if c.state == stateLive {
			c.state = stateFinalized
		}
		c.mu.Unlock()
	}
	return err
}

// teardown marks the comm dead and returns its handle, or nil if it already
// was. It fails while calls are in flight unless force.
func (c *Comm) teardown(fn string, to commState, force bool) (handle, func(), error) {
	if c == nil || c.lib == nil {
		return nil, nil, argErr(fn, "nil communicator")
	}
	if err := c.lib.need(fn); err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateDestroyed || c.state == stateAborted || c.h == nil {
		return nil, nil, nil
	}
	if !force && c.inflight > 0 {
		return nil, nil, fmt.Errorf("nccl: %s: %d call(s) still in flight on this communicator; use Abort: %w", fn, c.inflight, InvalidUsage)
	}
	h, rel := c.h, c.release
	c.h, c.release, c.state = nil, nil, to
	return h, rel, nil
}

// Destroy frees the communicator (ncclCommDestroy). Calling it again, or
// after Abort, is a no-op; any other call afterwards returns an error
// wrapping ErrAborted. It refuses while another goroutine is inside a call
// on this communicator (use Abort to interrupt one).
func (c *Comm) Destroy() error {
	const fn = "ncclCommDestroy"
	h, rel, err := c.teardown(fn, stateDestroyed, false)
	if err != nil || h == nil {
		return err
	}
	r := c.lib.api.commDestroy(h)
	if rel != nil {
		rel()
	}
	if r != Success {
		return c.lib.fail(fn, r, nil)
	}
	return nil
}

// Abort stops all work on the communicator and frees it (ncclCommAbort,
// NCCL >= 2.4); calls blocked in NCCL on it return. It may be called from
// any goroutine, while other calls are in flight. Calling it again, or after
// Destroy, is a no-op; any other call afterwards returns an error wrapping
// ErrAborted.
func (c *Comm) Abort() error {
	const fn = "ncclCommAbort"
	h, rel, err := c.teardown(fn, stateAborted, true)
	if err != nil || h == nil {
		return err
	}
	r := c.lib.api.commAbort(h)
	if rel != nil {
		rel()
	}
	if r != Success {
		return c.lib.fail(fn, r, nil)
	}
	return nil
}

// DefaultPoll is the polling interval of WaitReady and of Run's watch.
const DefaultPoll = time.Millisecond

// asyncErr is GetAsyncError, except that a library without
// ncclCommGetAsyncError reports nothing.
func (c *Comm) asyncErr() error {
	err := c.GetAsyncError()
	if errors.Is(err, ErrSymbolMissing) {
		return nil
	}
	return err
}

// giveUp aborts the comm and builds the error for a context that ended.
func (c *Comm) giveUp(ctx context.Context, fn string) error {
	what := "context ended"
	if dl, ok := ctx.Deadline(); ok {
		what = "deadline " + dl.Format(time.RFC3339Nano) + " passed"
	}
	err := fmt.Errorf("nccl: %s: %w: %s (%w); the communicator was aborted", fn, ErrTimeout, what, context.Cause(ctx))
	if aerr := c.Abort(); aerr != nil {
		err = fmt.Errorf("%w; abort also failed: %v", err, aerr)
	}
	return err
}

// failAsync aborts the comm after an asynchronous error.
func (c *Comm) failAsync(err error) error {
	if aerr := c.Abort(); aerr != nil {
		return fmt.Errorf("%w; abort also failed: %v", err, aerr)
	}
	return fmt.Errorf("%w (the communicator was aborted)", err)
}

// WaitReady polls GetAsyncError until the communicator is ready (non-
// blocking init, Finalize or collectives returned InProgress). If ctx ends
// first, or an asynchronous error appears, it aborts the communicator and
// returns an error wrapping ErrTimeout (and ctx's error), or the *Error.
func (c *Comm) WaitReady(ctx context.Context) error {
	return c.Watch(ctx, nil, DefaultPoll)
}

// Watch waits until done reports completion (the GPU layer passes a
// stream query; host callers pass nil or a function that returns true),
// checking GetAsyncError every poll (<= 0: DefaultPoll). If ctx ends first
// it aborts the communicator and returns an error wrapping ErrTimeout and
// ctx's error, naming the deadline. If an asynchronous error appears, or
// done fails, it aborts the communicator and returns that error. An
// InProgress async state counts as not done yet.
func (c *Comm) Watch(ctx context.Context, done func() (bool, error), poll time.Duration) error {
	if poll <= 0 {
		poll = DefaultPoll
	}
	var t *time.Ticker
	for {
		ok := true
		if done != nil {
			var err error
			if ok, err = done(); err != nil {
				return c.failAsync(fmt.Errorf("nccl: Watch: completion check failed: %w", err))
			}
		}
		aerr := c.asyncErr()
		switch {
		case aerr == nil:
			if ok {
				return nil
			}
		case errors.Is(aerr, InProgress):
		case errors.Is(aerr, ErrAborted):
			return aerr
		default:
			return c.failAsync(aerr)
		}
		if t == nil {
			t = time.NewTicker(poll)
			defer t.Stop()
		}
		select {
		case <-ctx.Done():
			return c.giveUp(ctx, "Watch")
		case <-t.C:
		}
	}
}

// runGrace is how long Run waits, after an abort, for the blocked call to
// return before it returns without it.
var runGrace = 5 * time.Second

// Run runs call (typically a collective or GroupEnd, which may block) on a
// new goroutine and then, if done is not nil, Watches for completion. If
// ctx ends first, or an asynchronous error appears while call blocks, Run
// aborts the communicator, which releases the blocked call, and returns an
// error wrapping ErrTimeout (or the *Error). An error from call itself is
// returned as is, without aborting.
//
// call runs on a goroutine of its own, so it is not on a DeviceThread: in
// the GPU layer call should be a closure that does its work with
// DeviceThread.Do.
func (c *Comm) Run(ctx context.Context, call func() error, done func() (bool, error)) error {
	ch := make(chan error, 1)
	go func() { ch <- call() }()
	wait := func() {
		select {
		case <-ch:
		case <-time.After(runGrace):
		}
	}
	t := time.NewTicker(10 * DefaultPoll)
	defer t.Stop()
	for {
		select {
		case err := <-ch:
			if err != nil {
				return err
			}
			if done == nil {
				return nil
			}
			return c.Watch(ctx, done, DefaultPoll)
		case <-ctx.Done():
			err := c.giveUp(ctx, "Run")
			wait()
			return err
		case <-t.C:
			if aerr := c.asyncErr(); aerr != nil && !errors.Is(aerr, InProgress) && !errors.Is(aerr, ErrAborted) {
				err := c.failAsync(aerr)
				wait()
				return err
			}
		}
	}
}

// Library returns the library the communicator was created from.
func (c *Comm) Library() *Library { return c.lib }
