package nccl

import (
	"context"
	"errors"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUniqueIDRoundTrip(t *testing.T) {
	var id UniqueID
	for i := range id {
		id[i] = byte(i * 7)
	}
	b, err := id.MarshalBinary()
	require.NoError(t, err)
	require.Len(t, b, 128)
	var back UniqueID
	require.NoError(t, back.UnmarshalBinary(b))
	assert.Equal(t, id, back)
	b[0] ^= 1 // the marshalled bytes are a copy
	assert.Equal(t, byte(0), id[0])

	for _, n := range []int{0, 1, 127, 129, 256} {
		err := back.UnmarshalBinary(make([]byte, n))
		require.Error(t, err, "len %d", n)
		assert.ErrorIs(t, err, ErrInvalidArgument)
		assert.Contains(t, err.Error(), "want 128")
	}
	assert.Equal(t, id, back, "a failed unmarshal leaves the id alone")
}

func TestErrorFormattingAndIs(t *testing.T) {
	e := &Error{Func: "ncclAllReduce", Code: InvalidArgument, Msg: "invalid argument", Last: "Invalid config blocking attribute value -2147483648"}
	assert.Equal(t, "nccl: ncclAllReduce: invalid argument (last error: Invalid config blocking attribute value -2147483648)", e.Error())
	e2 := &Error{Func: "ncclCommInitRank", Code: RemoteError}
	assert.Equal(t, "nccl: ncclCommInitRank: remote process exited or there was a network error", e2.Error())

	var err error = e
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.ErrorIs(t, err, InvalidArgument)
	assert.NotErrorIs(t, err, ErrInvalidUsage)
	assert.ErrorIs(t, err, &Error{Code: InvalidArgument})
	assert.ErrorIs(t, err, &Error{Func: "ncclAllReduce", Code: InvalidArgument})
	assert.NotErrorIs(t, err, &Error{Func: "ncclBroadcast", Code: InvalidArgument})
	wrapped := errors.Join(errors.New("step 3"), err)
	assert.ErrorIs(t, wrapped, InvalidArgument)
	var ne *Error
	require.ErrorAs(t, wrapped, &ne)
	assert.Equal(t, "ncclAllReduce", ne.Func)

	for r := Success; r <= InProgress; r++ {
		assert.NotContains(t, r.String(), "unknown", r)
	}
	assert.Contains(t, Result(99).String(), "99")

	se := &SymbolError{Symbol: "ncclCommFinalize", Since: "2.14", Path: "/x/libnccl.so.2", Version: "2.12.12"}
	assert.ErrorIs(t, se, ErrSymbolMissing)
	assert.Contains(t, se.Error(), "ncclCommFinalize")
	assert.Contains(t, se.Error(), "2.14")
	assert.Contains(t, se.Error(), "2.12.12")
}

func TestTypes(t *testing.T) {
	sizes := map[DataType]int{Int8: 1, Uint8: 1, Int32: 4, Uint32: 4, Int64: 8, Uint64: 8, Float16: 2, Float32: 4, Float64: 8, Bfloat16: 2}
	for dt, n := range sizes {
		assert.Equal(t, n, dt.Size(), dt.String())
		assert.True(t, dt.valid())
	}
	assert.Equal(t, 0, DataType(10).Size())
	assert.Equal(t, "DataType(10)", DataType(10).String())
	assert.Equal(t, "Float32", Float32.String())
	assert.Equal(t, "Avg", Avg.String())
	assert.Equal(t, "RedOp(-1)", RedOp(-1).String())
}

func TestParseVersion(t *testing.T) {
	for _, c := range []struct{ code, ma, mi, pa int }{
		{21903, 2, 19, 3}, {2190300, 2, 19, 3}, {2804, 2, 8, 4}, {21400, 2, 14, 0}, {22703, 2, 27, 3}, {30001, 3, 0, 1},
	} {
		ma, mi, pa, err := parseVersion(c.code)
		require.NoError(t, err, c.code)
		assert.Equal(t, []int{c.ma, c.mi, c.pa}, []int{ma, mi, pa}, c.code)
	}
	_, _, _, err := parseVersion(7)
	assert.Error(t, err)

	f := newFake()
	f.version = 21206
	l, err := newLibrary("fake", f)
	require.NoError(t, err)
	ma, mi, pa, code, err := l.Version()
	require.NoError(t, err)
	assert.Equal(t, []int{2, 12, 6, 21206}, []int{ma, mi, pa, code})
}

func TestNewLibraryMissingCore(t *testing.T) {
	f := newFake()
	f.missing["ncclAllReduce"] = true
	_, err := newLibrary("fake.so", f)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclAllReduce")
}

func TestValidation(t *testing.T) {
	f := newFake()
	_, c := fakeLib(f) // rank 1 of 4
	p := DevicePtr(0x1000)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"negative count", c.AllReduce(p, p, -1, Float32, Sum, 0), "negative"},
		{"overflowing count", c.AllReduce(p, p, math.MaxInt/2, Float32, Sum, 0), "overflows"},
		{"allgather overflow", c.AllGather(p, p, math.MaxInt/2, Int8, 0), "overflows"},
		{"reducescatter overflow", c.ReduceScatter(p, p, math.MaxInt/16, Float64, Sum, 0), "overflows"},
		{"nil send", c.AllReduce(0, p, 4, Float32, Sum, 0), "send buffer is nil"},
		{"nil recv", c.AllReduce(p, 0, 4, Float32, Sum, 0), "recv buffer is nil"},
		{"unknown dtype", c.AllReduce(p, p, 4, DataType(42), Sum, 0), "unknown data type"},
		{"negative dtype", c.Broadcast(p, p, 4, DataType(-1), 0, 0), "unknown data type"},
		{"unknown op", c.AllReduce(p, p, 4, Float32, RedOp(9), 0), "unknown reduction operator"},
		{"root too big", c.Broadcast(p, p, 4, Float32, 4, 0), "root 4 out of range [0, 4)"},
		{"negative root", c.Reduce(p, p, 4, Float32, Sum, -1, 0), "root -1 out of range"},
		{"peer too big", c.Send(p, 4, Float32, 4, 0), "peer 4 out of range"},
		{"negative peer", c.Recv(p, 4, Float32, -2, 0), "peer -2 out of range"},
		{"nil send buf", c.Send(0, 1, Uint8, 0, 0), "send buffer is nil"},
		{"nil recv buf", c.Recv(0, 1, Uint8, 0, 0), "recv buffer is nil"},
		{"broadcast root nil send", func() error { c.rank = 2; defer func() { c.rank = 1 }(); return c.Broadcast(0, p, 4, Float32, 2, 0) }(), "send buffer is nil"},
		{"reduce root nil recv", c.Reduce(p, 0, 4, Float32, Sum, 1, 0), "recv buffer is nil"},
	}
	for _, tc := range cases {
		require.Error(t, tc.err, tc.name)
		assert.ErrorIs(t, tc.err, ErrInvalidArgument, tc.name)
		assert.Contains(t, tc.err.Error(), tc.want, tc.name)
	}
	assert.Empty(t, f.called(), "no call reached the library")

	// Valid edge cases do reach it: zero counts with nil buffers, nil send
	// on a non-root Broadcast, nil recv on a non-root Reduce.
	require.NoError(t, c.AllReduce(0, 0, 0, Float32, Sum, 0))
	require.NoError(t, c.Broadcast(0, p, 4, Float32, 0, 0))
	require.NoError(t, c.Reduce(p, 0, 4, Float32, Max, 0, 0))
	require.NoError(t, c.AllGather(p, p, 3, Float16, 0))
	require.NoError(t, c.ReduceScatter(p, p, 3, Int64, Prod, 0))
	require.NoError(t, c.Send(p, 1, Int8, 1, 0))
	require.NoError(t, c.Recv(p, 1, Int8, 3, 0))
	assert.Equal(t, []string{"allreduce", "broadcast", "reduce", "allgather", "reducescatter", "send", "recv"}, f.called())

	// Bad init arguments.
	l := c.lib
	for _, e := range []struct{ n, r int }{{0, 0}, {-1, 0}, {2, 2}, {2, -1}, {math.MaxInt32 + 1, 0}} {
		_, err := l.InitRank(e.n, UniqueID{}, e.r)
		assert.ErrorIs(t, err, ErrInvalidArgument, "%v", e)
	}
	_, err := l.InitRankConfig(2, UniqueID{}, 0, Config{MinCTAs: -1})
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = l.InitRankConfig(2, UniqueID{}, 0, Config{MinCTAs: 8, MaxCTAs: 4})
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = l.InitRankConfig(2, UniqueID{}, 0, Config{NetName: "a\x00b"})
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = l.InitAll(nil)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = l.InitAll([]int{0, -1})
	assert.ErrorIs(t, err, ErrInvalidArgument)

	// A nil comm.
	var nilComm *Comm
	assert.ErrorIs(t, nilComm.AllReduce(p, p, 1, Float32, Sum, 0), ErrInvalidArgument)
	assert.ErrorIs(t, nilComm.Destroy(), ErrInvalidArgument)
}

func TestNCCLErrorsCarryLastError(t *testing.T) {
	f := newFake()
	f.result = InternalError
	f.last = "something went wrong in transport"
	_, c := fakeLib(f)
	err := c.AllReduce(1, 1, 1, Float32, Sum, 0)
	var ne *Error
	require.ErrorAs(t, err, &ne)
	assert.Equal(t, &Error{Func: "ncclAllReduce", Code: InternalError, Msg: "internal error", Last: "something went wrong in transport"}, ne)

	f.missing["ncclGetLastError"] = true // NCCL < 2.13
	err = c.AllReduce(1, 1, 1, Float32, Sum, 0)
	require.ErrorAs(t, err, &ne)
	assert.Empty(t, ne.Last)
}

func TestVersionGatedTypes(t *testing.T) {
	f := newFake()
	f.version = 2907 // 2.9.7 (new-style code 20907 would read the same)
	_, c := fakeLib(f)
	err := c.AllReduce(1, 1, 1, Float32, Avg, 0)
	assert.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclAvg")
	assert.Contains(t, err.Error(), "2.10")
	err = c.Broadcast(1, 1, 1, Bfloat16, 0, 0)
	assert.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclBfloat16")
	assert.NoError(t, c.AllReduce(1, 1, 1, Float32, Sum, 0))

	f2 := newFake()
	f2.version = 21003
	_, c2 := fakeLib(f2)
	assert.NoError(t, c2.AllReduce(1, 1, 1, Bfloat16, Avg, 0))
}

func TestMissingOptionalSymbols(t *testing.T) {
	f := newFake()
	for _, s := range []string{"ncclCommFinalize", "ncclCommInitRankConfig", "ncclSend", "ncclCommGetAsyncError"} {
		f.missing[s] = true
	}
	f.version = 21206
	l, c := fakeLib(f)
	err := c.Finalize()
	require.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclCommFinalize")
	assert.Contains(t, err.Error(), "2.14")
	assert.Contains(t, err.Error(), "2.12.6")
	_, err = l.InitRankConfig(2, UniqueID{}, 0, Config{})
	require.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "ncclCommInitRankConfig")
	err = c.Send(1, 1, Float32, 0, 0)
	require.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "2.7")
	err = c.GetAsyncError()
	require.ErrorIs(t, err, ErrSymbolMissing)
	assert.Contains(t, err.Error(), "2.4")
	// Watch still works without ncclCommGetAsyncError.
	require.NoError(t, c.Watch(context.Background(), nil, 0))
}

func TestLifecycle(t *testing.T) {
	f := newFake()
	_, c := fakeLib(f)
	n, err := c.Count()
	require.NoError(t, err)
	assert.Equal(t, 4, n)
	r, err := c.UserRank()
	require.NoError(t, err)
	assert.Equal(t, 1, r)

	require.NoError(t, c.Finalize())
	require.NoError(t, c.Finalize(), "Finalize is idempotent")
	err = c.AllReduce(1, 1, 1, Float32, Sum, 0)
	assert.ErrorIs(t, err, ErrInvalidUsage, "no collectives after Finalize")
	require.NoError(t, c.GetAsyncError(), "GetAsyncError is allowed after Finalize")
	require.NoError(t, c.Destroy())
	require.NoError(t, c.Destroy(), "Destroy is idempotent")
	require.NoError(t, c.Abort(), "Abort after Destroy is a no-op")
	assert.Equal(t, int32(1), f.destroy.Load())
	assert.Equal(t, int32(0), f.abortN.Load())
	for name, err := range map[string]error{
		"AllReduce": c.AllReduce(1, 1, 1, Float32, Sum, 0),
		"Count":     func() error { _, err := c.Count(); return err }(),
		"Async":     c.GetAsyncError(),
		"Finalize":  c.Finalize(),
		"Recv":      c.Recv(1, 1, Float32, 0, 0),
	} {
		assert.ErrorIs(t, err, ErrAborted, name)
		assert.Contains(t, err.Error(), "destroyed", name)
	}
	assert.Equal(t, []string{"finalize", "destroy"}, f.called())

	f2 := newFake()
	_, c2 := fakeLib(f2)
	require.NoError(t, c2.Abort())
	require.NoError(t, c2.Abort())
	require.NoError(t, c2.Destroy())
	assert.Equal(t, int32(1), f2.abortN.Load())
	assert.Equal(t, int32(0), f2.destroy.Load())
	assert.ErrorIs(t, c2.Broadcast(1, 1, 1, Float32, 0, 0), ErrAborted)
}

func TestDestroyRefusesWhileInFlight(t *testing.T) {
	f := newFake()
	f.block = make(chan struct{})
	_, c := fakeLib(f)
	done := make(chan error, 1)
	go func() { done <- c.AllReduce(1, 1, 1, Float32, Sum, 0) }()
	require.Eventually(t, func() bool { return len(f.called()) == 1 }, time.Second, time.Millisecond)
	err := c.Destroy()
	assert.ErrorIs(t, err, ErrInvalidUsage)
	assert.Contains(t, err.Error(), "in flight")
	close(f.block)
	require.NoError(t, <-done)
	require.NoError(t, c.Destroy())
}

func TestWatch(t *testing.T) {
	t.Run("done at once", func(t *testing.T) {
		_, c := fakeLib(newFake())
		require.NoError(t, c.Watch(context.Background(), func() (bool, error) { return true, nil }, time.Millisecond))
	})
	t.Run("done after polls", func(t *testing.T) {
		_, c := fakeLib(newFake())
		n := 0
		require.NoError(t, c.Watch(context.Background(), func() (bool, error) { n++; return n == 5, nil }, time.Millisecond))
		assert.Equal(t, 5, n)
	})
	t.Run("timeout aborts", func(t *testing.T) {
		f := newFake()
		_, c := fakeLib(f)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		err := c.Watch(ctx, func() (bool, error) { return false, nil }, time.Millisecond)
		require.ErrorIs(t, err, ErrTimeout)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), "deadline")
		assert.Contains(t, err.Error(), "aborted")
		assert.Equal(t, int32(1), f.abortN.Load())
		assert.ErrorIs(t, c.AllReduce(1, 1, 1, Float32, Sum, 0), ErrAborted)
	})
	t.Run("async error aborts", func(t *testing.T) {
		f := newFake()
		_, c := fakeLib(f)
		go func() { time.Sleep(5 * time.Millisecond); f.setAsync(RemoteError) }()
		err := c.Watch(context.Background(), func() (bool, error) { return false, nil }, time.Millisecond)
		require.ErrorIs(t, err, ErrRemoteError)
		var ne *Error
		require.ErrorAs(t, err, &ne)
		assert.Equal(t, "ncclCommGetAsyncError", ne.Func)
		assert.Equal(t, int32(1), f.abortN.Load())
	})
	t.Run("done error aborts", func(t *testing.T) {
		f := newFake()
		_, c := fakeLib(f)
		boom := errors.New("cudaErrorLaunchFailure")
		err := c.Watch(context.Background(), func() (bool, error) { return false, boom }, time.Millisecond)
		require.ErrorIs(t, err, boom)
		assert.Equal(t, int32(1), f.abortN.Load())
	})
}

func TestWaitReadyNonBlocking(t *testing.T) {
	f := newFake()
	f.async = InProgress
	l, _ := fakeLib(f)
	no := false
	c, err := l.InitRankConfig(4, UniqueID{}, 0, Config{Blocking: &no, NetName: "Socket"})
	require.NoError(t, err, "InProgress from a non-blocking init is not an error")
	assert.ErrorIs(t, c.GetAsyncError(), InProgress)
	go func() { time.Sleep(5 * time.Millisecond); f.setAsync(Success) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.WaitReady(ctx))

	f.setAsync(InProgress)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	err = c.WaitReady(ctx2)
	assert.ErrorIs(t, err, ErrTimeout)
	assert.Equal(t, int32(1), f.abortN.Load())
}

func TestRun(t *testing.T) {
	t.Run("completes", func(t *testing.T) {
		f := newFake()
		_, c := fakeLib(f)
		err := c.Run(context.Background(), func() error { return c.AllReduce(1, 1, 1, Float32, Sum, 0) }, func() (bool, error) { return true, nil })
		require.NoError(t, err)
		assert.Equal(t, int32(0), f.abortN.Load())
	})
	t.Run("call error returned as is", func(t *testing.T) {
		f := newFake()
		f.result = InvalidUsage
		_, c := fakeLib(f)
		err := c.Run(context.Background(), func() error { return c.AllReduce(1, 1, 1, Float32, Sum, 0) }, nil)
		require.ErrorIs(t, err, ErrInvalidUsage)
		assert.Equal(t, int32(0), f.abortN.Load())
	})
	t.Run("blocked call released by abort", func(t *testing.T) {
		f := newFake()
		f.block = make(chan struct{}) // never closed: only the abort releases it
		_, c := fakeLib(f)
		released := make(chan error, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := c.Run(ctx, func() error {
			err := c.AllReduce(1, 1, 1, Float32, Sum, 0)
			released <- err
			return err
		}, nil)
		require.ErrorIs(t, err, ErrTimeout)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 2*time.Second)
		assert.Equal(t, int32(1), f.abortN.Load())
		select {
		case cerr := <-released:
			assert.ErrorIs(t, cerr, ErrRemoteError)
		case <-time.After(time.Second):
			t.Fatal("the blocked call was not released")
		}
		assert.ErrorIs(t, c.AllReduce(1, 1, 1, Float32, Sum, 0), ErrAborted)
	})
	t.Run("async error while blocked", func(t *testing.T) {
		f := newFake()
		f.block = make(chan struct{})
		_, c := fakeLib(f)
		go func() { time.Sleep(15 * time.Millisecond); f.setAsync(SystemError) }()
		err := c.Run(context.Background(), func() error { return c.AllReduce(1, 1, 1, Float32, Sum, 0) }, nil)
		require.ErrorIs(t, err, ErrSystemError)
		assert.Equal(t, int32(1), f.abortN.Load())
	})
	t.Run("cancel names context", func(t *testing.T) {
		f := newFake()
		f.block = make(chan struct{})
		_, c := fakeLib(f)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(5*time.Millisecond, cancel)
		err := c.Run(ctx, func() error { return c.Library().GroupEnd() }, nil)
		require.ErrorIs(t, err, ErrTimeout)
		assert.ErrorIs(t, err, context.Canceled)
		assert.Contains(t, err.Error(), "context ended")
	})
}

func TestInitAll(t *testing.T) {
	f := newFake()
	l, _ := fakeLib(f)
	cs, err := l.InitAll([]int{0, 1, 2})
	require.NoError(t, err)
	require.Len(t, cs, 3)
	for i, c := range cs {
		assert.Equal(t, i, c.rank)
		assert.Equal(t, 3, c.nranks)
	}
	assert.ErrorIs(t, cs[2].Send(1, 1, Float32, 3, 0), ErrInvalidArgument)
}

func TestDeviceThread(t *testing.T) {
	dt := NewDeviceThread()
	defer dt.Close()
	var tids []int
	for i := 0; i < 50; i++ {
		dt.Do(func() { tids = append(tids, syscall.Gettid()) })
		if i%10 == 0 {
			// make the scheduler busy so an unlocked goroutine would move
			done := make(chan struct{})
			for j := 0; j < 8; j++ {
				go func() { time.Sleep(time.Millisecond); done <- struct{}{} }()
			}
			for j := 0; j < 8; j++ {
				<-done
			}
		}
	}
	for _, tid := range tids {
		assert.Equal(t, tids[0], tid)
	}
	// A panic is re-raised in the caller and the thread survives.
	assert.PanicsWithValue(t, "boom", func() { dt.Do(func() { panic("boom") }) })
	var after int
	dt.Do(func() { after = syscall.Gettid() })
	assert.NotZero(t, after)

	dt2 := NewDeviceThread()
	dt2.Close()
	dt2.Close()
	assert.Panics(t, func() { dt2.Do(func() {}) })
}

func TestLoadErrorMentionsFix(t *testing.T) {
	t.Setenv("NCCL_LIBRARY", "")
	_, err := Load("/nonexistent/dir/libnccl.so.2")
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrLibraryNotFound)
	msg := err.Error()
	if !errors.Is(err, ErrNoCgo) {
		assert.Contains(t, msg, "/nonexistent/dir/libnccl.so.2")
		assert.Contains(t, msg, "NCCL_LIBRARY")
		assert.True(t, strings.Contains(msg, "install NCCL"), msg)
	} else {
		assert.Contains(t, msg, "cgo")
	}
}
