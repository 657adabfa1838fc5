package nccl

import (
	"runtime"
	"sync"
)

// DeviceThread runs closures on one goroutine locked to one OS thread
// (runtime.LockOSThread), so a device's CUDA context and NCCL calls are
// always issued from the same thread. Create one per device with
// NewDeviceThread and Close it when done. Its methods are safe for
// concurrent use; closures run one at a time, in call order.
type DeviceThread struct {
	work      chan func()
	closeOnce sync.Once
	closed    chan struct{}
	exited    chan struct{}
}

// NewDeviceThread starts the locked goroutine.
func NewDeviceThread() *DeviceThread {
	t := &DeviceThread{work: make(chan func()), closed: make(chan struct{}), exited: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		// Never unlocked: when the goroutine exits, the runtime ends the
		// thread too, so no other goroutine inherits its CUDA state.
		runtime.LockOSThread()
		defer close(t.exited)
		close(started)
		for {
			select {
			case f := <-t.work:
				f()
			case <-t.closed:
				return
			}
		}
	}()
	<-started
	return t
}

// Do runs f on the thread and waits for it. A panic in f is re-raised in
// the caller (the thread survives it). Do on a closed DeviceThread panics.
func (t *DeviceThread) Do(f func()) {
	var (
		wg      sync.WaitGroup
		pval    any
		paniced bool
	)
	wg.Add(1)
	job := func() {
		defer wg.Done()
		defer func() {
			if r := recover(); r != nil {
				pval, paniced = r, true
			}
		}()
		f()
	}
	select {
	case t.work <- job:
	case <-t.closed:
		panic("nccl: DeviceThread.Do after Close")
	}
	wg.Wait()
	if paniced {
		panic(pval)
	}
}

// Close stops the thread after the closure running now, if any; later Do
// calls panic. Calling it again is a no-op.
func (t *DeviceThread) Close() {
	t.closeOnce.Do(func() { close(t.closed) })
	<-t.exited
}
