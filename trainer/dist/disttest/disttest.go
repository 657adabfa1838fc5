// Package disttest is the conformance suite every dist.Communicator backend
// runs: Run(t, newGroup) checks every collective, operator and element type
// against references computed in the test, plus the failure semantics
// (deadlines, Abort, Close).
package disttest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/dist"
)

// NewGroup creates a communicator group of the given size (element r is rank
// r) for a test; it should register cleanup (Close) with t.Cleanup.
type NewGroup func(t *testing.T, size int) []dist.Communicator

// callTimeout bounds every collective a test runs; a hang fails the test.
const callTimeout = 30 * time.Second

// Run runs the whole suite as subtests of t.
func Run(t *testing.T, newGroup NewGroup) {
	t.Run("Group", func(t *testing.T) { testGroup(t, newGroup) })
	t.Run("AllReduce", func(t *testing.T) { testAllReduce(t, newGroup) })
	t.Run("AllReduceDeterministic", func(t *testing.T) { testDeterministic(t, newGroup) })
	t.Run("Broadcast", func(t *testing.T) { testBroadcast(t, newGroup) })
	t.Run("AllGather", func(t *testing.T) { testAllGather(t, newGroup) })
	t.Run("ReduceScatter", func(t *testing.T) { testReduceScatter(t, newGroup) })
	t.Run("Barrier", func(t *testing.T) { testBarrier(t, newGroup) })
	t.Run("SendRecv", func(t *testing.T) { testSendRecv(t, newGroup) })
	t.Run("BadArguments", func(t *testing.T) { testBadArguments(t, newGroup) })
	t.Run("Deadline", func(t *testing.T) { testDeadline(t, newGroup) })
	t.Run("Cancel", func(t *testing.T) { testCancel(t, newGroup) })
	t.Run("Abort", func(t *testing.T) { testAbort(t, newGroup) })
	t.Run("Close", func(t *testing.T) { testClose(t, newGroup) })
}

// World sizes and buffer lengths: the full set of lengths for small groups,
// a few (not divisible by the size) for the larger ones.
var (
	worldSizes   = []int{1, 2, 3, 4, 5, 8}
	smallLengths = []int{0, 1, 2, 3, 7, 1000, 1<<16 + 3}
	bigLengths   = []int{0, 3, 7, 1001}
	ops          = []dist.Op{dist.Sum, dist.Avg, dist.Max, dist.Min}
)

func lengthsFor(n int) []int {
	if n <= 4 {
		return smallLengths
	}
	return bigLengths
}

// each runs fn on every rank concurrently and returns the per-rank errors.
// It fails the test if the ranks do not all return within callTimeout+10s.
func each(t *testing.T, comms []dist.Communicator, fn func(ctx context.Context, r int, c dist.Communicator) error) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Go(func() { errs[r] = fn(ctx, r, c) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(callTimeout + 10*time.Second):
		t.Fatalf("ranks did not return within %v (hang)", callTimeout+10*time.Second)
	}
	return errs
}

func mustEach(t *testing.T, comms []dist.Communicator, fn func(ctx context.Context, r int, c dist.Communicator) error) {
	t.Helper()
	for r, err := range each(t, comms, fn) {
		require.NoError(t, err, "rank %d", r)
	}
}

type float interface{ ~float32 | ~float64 }

// ival is an integer-valued input, so sums are exact in any order and the
// reference comparison can be bitwise.
func ival(r, i int) float64 { return float64((r*31+i*7+r*i)%17 - 8) }

func fill[T float](n, r int) []T {
	s := make([]T, n)
	for i := range s {
		s[i] = T(ival(r, i))
	}
	return s
}

func reference[T float](op dist.Op, inputs [][]T) []T {
	out := make([]T, len(inputs[0]))
	for i := range out {
		acc := inputs[0][i]
		for _, in := range inputs[1:] {
			switch op {
			case dist.Sum, dist.Avg:
				acc += in[i]
			case dist.Max:
				acc = max(acc, in[i])
			case dist.Min:
				acc = min(acc, in[i])
			}
		}
		if op == dist.Avg {
			acc /= T(len(inputs))
		}
		out[i] = acc
	}
	return out
}

func bitsEqual[T float](t *testing.T, want, got []T, msg string, args ...any) {
	t.Helper()
	require.Len(t, got, len(want), msg, args)
	for i := range want {
		w, g := float64(want[i]), float64(got[i])
		if math.Float64bits(w) != math.Float64bits(g) {
			require.Failf(t, "mismatch", "%s: element %d: want %v, got %v", fmt.Sprintf(msg, args...), i, w, g)
		}
	}
}

func testGroup(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{1, 3} {
		comms := newGroup(t, n)
		require.Len(t, comms, n)
		for r, c := range comms {
			require.Equal(t, r, c.Rank())
			require.Equal(t, n, c.Size())
		}
	}
}

func testAllReduce(t *testing.T, newGroup NewGroup) {
	for _, n := range worldSizes {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			for _, length := range lengthsFor(n) {
				for _, op := range ops {
					for _, inPlace := range []bool{false, true} {
						name := fmt.Sprintf("len=%d/%v/inplace=%v", length, op, inPlace)
						allReduceCase[float32](t, comms, length, op, inPlace, "f32/"+name)
						allReduceCase[float64](t, comms, length, op, inPlace, "f64/"+name)
					}
				}
			}
		})
	}
}

func allReduceCase[T float](t *testing.T, comms []dist.Communicator, length int, op dist.Op, inPlace bool, name string) {
	t.Helper()
	n := len(comms)
	inputs := make([][]T, n)
	sends := make([][]T, n)
	recvs := make([][]T, n)
	for r := range n {
		inputs[r] = fill[T](length, r)
		sends[r] = append([]T(nil), inputs[r]...)
		if inPlace {
			recvs[r] = sends[r]
		} else {
			recvs[r] = make([]T, length)
			for i := range recvs[r] {
				recvs[r][i] = T(math.NaN()) // must be overwritten
			}
		}
	}
	mustEach(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
		return c.AllReduce(ctx, sends[r], recvs[r], op)
	})
	want := reference(op, inputs)
	for r := range n {
		bitsEqual(t, want, recvs[r], "%s: rank %d", name, r)
		if !inPlace {
			bitsEqual(t, inputs[r], sends[r], "%s: rank %d: send modified", name, r)
		}
	}
}

func testDeterministic(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{2, 3, 5} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			const length = 10007
			rng := rand.New(rand.NewPCG(uint64(n), 7))
			inputs := make([][]float32, n)
			for r := range inputs {
				inputs[r] = make([]float32, length)
				for i := range inputs[r] {
					inputs[r][i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(7)-3)))
				}
			}
			for _, op := range []dist.Op{dist.Sum, dist.Avg} {
				outs := make([][]float32, n)
				mustEach(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
					outs[r] = make([]float32, length)
					return c.AllReduce(ctx, inputs[r], outs[r], op)
				})
				for r := 1; r < n; r++ {
					bitsEqual(t, outs[0], outs[r], "%v: rank %d differs from rank 0", op, r)
				}
				for i := range length {
					var s float64
					for r := range n {
						s += float64(inputs[r][i])
					}
					if op == dist.Avg {
						s /= float64(n)
					}
					require.InDelta(t, s, float64(outs[0][i]), 1e-4*(1+math.Abs(s)), "element %d", i)
				}
			}
		})
	}
}

func testBroadcast(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{1, 2, 3, 5} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			for _, root := range []int{0, n - 1, n / 2} {
				for _, length := range []int{0, 1, 3, 1000, 1<<16 + 3} {
					name := fmt.Sprintf("root=%d/len=%d", root, length)
					bufs32 := make([][]float32, n)
					bufs64 := make([][]float64, n)
					bufsB := make([][]byte, n)
					for r := range n {
						bufs32[r] = fill[float32](length, r)
						bufs64[r] = fill[float64](length, r)
						bufsB[r] = make([]byte, length)
						for i := range bufsB[r] {
							bufsB[r][i] = byte(r*7 + i)
						}
					}
					mustEach(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
						if err := c.Broadcast(ctx, bufs32[r], root); err != nil {
							return err
						}
						if err := c.Broadcast(ctx, bufs64[r], root); err != nil {
							return err
						}
						return c.Broadcast(ctx, bufsB[r], root)
					})
					for r := range n {
						bitsEqual(t, fill[float32](length, root), bufs32[r], "%s: f32 rank %d", name, r)
						bitsEqual(t, fill[float64](length, root), bufs64[r], "%s: f64 rank %d", name, r)
						require.Equal(t, bufsB[root], bufsB[r], "%s: bytes rank %d", name, r)
					}
				}
			}
		})
	}
}

func testAllGather(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{1, 2, 3, 4, 7} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			for _, length := range []int{0, 1, 3, 1000, 1<<14 + 1} {
				name := fmt.Sprintf("len=%d", length)
				out32 := make([][]float32, n)
				out64 := make([][]float64, n)
				outB := make([][]byte, n)
				mustEach(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
					out32[r] = make([]float32, n*length)
					out64[r] = make([]float64, n*length)
					outB[r] = make([]byte, n*length)
					if err := c.AllGather(ctx, fill[float32](length, r), out32[r]); err != nil {
						return err
					}
					// In place: our own block already sits in the output.
					copy(out64[r][r*length:], fill[float64](length, r))
					if err := c.AllGather(ctx, out64[r][r*length:(r+1)*length], out64[r]); err != nil {
						return err
					}
					b := make([]byte, length)
					for i := range b {
						b[i] = byte(r + 3*i)
					}
					return c.AllGather(ctx, b, outB[r])
				})
				var want32 []float32
				var want64 []float64
				wantB := []byte{}
				for q := range n {
					want32 = append(want32, fill[float32](length, q)...)
					want64 = append(want64, fill[float64](length, q)...)
					for i := range length {
						wantB = append(wantB, byte(q+3*i))
					}
				}
				for r := range n {
					bitsEqual(t, want32, out32[r], "%s: f32 rank %d", name, r)
					bitsEqual(t, want64, out64[r], "%s: f64 in place rank %d", name, r)
					require.Equal(t, len(wantB), len(outB[r]))
					require.Equal(t, wantB, outB[r][:len(wantB)], "%s: bytes rank %d", name, r)
				}
			}
		})
	}
}

func testReduceScatter(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{1, 2, 3, 4, 6} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			for _, m := range []int{0, 1, 3, 1000} {
				for _, op := range ops {
					reduceScatterCase[float32](t, comms, m, op, fmt.Sprintf("f32/m=%d/%v", m, op))
					reduceScatterCase[float64](t, comms, m, op, fmt.Sprintf("f64/m=%d/%v", m, op))
				}
			}
		})
	}
}

func reduceScatterCase[T float](t *testing.T, comms []dist.Communicator, m int, op dist.Op, name string) {
	t.Helper()
	n := len(comms)
	inputs := make([][]T, n)
	sends := make([][]T, n)
	outs := make([][]T, n)
	for r := range n {
		inputs[r] = fill[T](n*m, r)
		sends[r] = append([]T(nil), inputs[r]...)
		outs[r] = make([]T, m)
	}
	mustEach(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
		return c.ReduceScatter(ctx, sends[r], outs[r], op)
	})
	want := reference(op, inputs)
	for r := range n {
		bitsEqual(t, want[r*m:(r+1)*m], outs[r], "%s: rank %d", name, r)
		bitsEqual(t, inputs[r], sends[r], "%s: rank %d: send modified", name, r)
	}
}

func testBarrier(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{1, 2, 3, 5, 8} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			for round := range 3 {
				var arrived atomic.Int32
				seen := make([]int32, n)
				mustEach(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
					time.Sleep(time.Duration((r+round)%n) * 5 * time.Millisecond)
					arrived.Add(1)
					if err := c.Barrier(ctx); err != nil {
						return err
					}
					seen[r] = arrived.Load()
					return nil
				})
				for r := range n {
					require.Equal(t, int32(n), seen[r], "round %d: rank %d left the barrier before everyone arrived", round, r)
				}
			}
		})
	}
}

func testSendRecv(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{2, 3, 4} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			for _, length := range []int{0, 1, 7, 1000, 1<<16 + 3} {
				// Every rank sends to its right neighbour while receiving
				// from its left one, on two goroutines.
				got32 := make([][]float32, n)
				got64 := make([][]float64, n)
				gotB := make([][]byte, n)
				mustEach(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
					right, left := (r+1)%n, (r+n-1)%n
					errc := make(chan error, 1)
					go func() {
						b := make([]byte, length)
						for i := range b {
							b[i] = byte(r ^ i)
						}
						err := c.Send(ctx, fill[float32](length, r), right)
						if err == nil {
							err = c.Send(ctx, fill[float64](length, r), right)
						}
						if err == nil {
							err = c.Send(ctx, b, right)
						}
						errc <- err
					}()
					got32[r] = make([]float32, length)
					got64[r] = make([]float64, length)
					gotB[r] = make([]byte, length)
					err := c.Recv(ctx, got32[r], left)
					if err == nil {
						err = c.Recv(ctx, got64[r], left)
					}
					if err == nil {
						err = c.Recv(ctx, gotB[r], left)
					}
					return errors.Join(err, <-errc)
				})
				for r := range n {
					left := (r + n - 1) % n
					bitsEqual(t, fill[float32](length, left), got32[r], "len=%d rank %d f32", length, r)
					bitsEqual(t, fill[float64](length, left), got64[r], "len=%d rank %d f64", length, r)
					for i, b := range gotB[r] {
						require.Equal(t, byte(left^i), b, "len=%d rank %d byte %d", length, r, i)
					}
				}
			}
			// A collective after point-to-point traffic still works.
			allReduceCase[float32](t, comms, 5, dist.Sum, false, "after SendRecv")
		})
	}
	t.Run("LengthMismatch", func(t *testing.T) {
		comms := newGroup(t, 2)
		errs := each(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
			if r == 0 {
				return c.Send(ctx, make([]float32, 5), 1)
			}
			return c.Recv(ctx, make([]float32, 4), 0)
		})
		require.Error(t, errs[1], "Recv into a shorter buffer must fail")
	})
}

func testBadArguments(t *testing.T, newGroup NewGroup) {
	comms := newGroup(t, 2)
	c := comms[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cases := []struct {
		name string
		call func() error
		want error
	}{
		{"AllReduce int", func() error { return c.AllReduce(ctx, []int{1}, []int{1}, dist.Sum) }, dist.ErrBadBuffer},
		{"AllReduce bytes", func() error { return c.AllReduce(ctx, []byte{1}, []byte{1}, dist.Sum) }, dist.ErrBadBuffer},
		{"AllReduce mixed", func() error { return c.AllReduce(ctx, []float32{1}, []float64{1}, dist.Sum) }, dist.ErrBadBuffer},
		{"AllReduce length", func() error { return c.AllReduce(ctx, make([]float32, 3), make([]float32, 4), dist.Sum) }, dist.ErrBadBuffer},
		{"AllReduce op", func() error { return c.AllReduce(ctx, make([]float32, 3), make([]float32, 3), dist.Op(42)) }, dist.ErrInvalidArg},
		{"Broadcast string", func() error { return c.Broadcast(ctx, "x", 0) }, dist.ErrBadBuffer},
		{"Broadcast root", func() error { return c.Broadcast(ctx, make([]float32, 3), 2) }, dist.ErrInvalidArg},
		{"AllGather length", func() error { return c.AllGather(ctx, make([]float32, 3), make([]float32, 5)) }, dist.ErrBadBuffer},
		{"ReduceScatter length", func() error {
			return c.ReduceScatter(ctx, make([]float64, 5), make([]float64, 2), dist.Sum)
		}, dist.ErrBadBuffer},
		{"ReduceScatter bytes", func() error { return c.ReduceScatter(ctx, make([]byte, 4), make([]byte, 2), dist.Sum) }, dist.ErrBadBuffer},
		{"Send nil", func() error { return c.Send(ctx, nil, 1) }, dist.ErrBadBuffer},
		{"Send self", func() error { return c.Send(ctx, make([]byte, 1), 0) }, dist.ErrInvalidArg},
		{"Recv peer", func() error { return c.Recv(ctx, make([]byte, 1), 7) }, dist.ErrInvalidArg},
	}
	for _, tc := range cases {
		err := tc.call()
		require.ErrorIs(t, err, tc.want, tc.name)
	}
	// Bad arguments are caught before any communication: the group still works.
	allReduceCase[float64](t, comms, 10, dist.Max, true, "after bad arguments")
}

func testDeadline(t *testing.T, newGroup NewGroup) {
	calls := []struct {
		name string
		call func(ctx context.Context, c dist.Communicator) error
	}{
		{"AllReduce", func(ctx context.Context, c dist.Communicator) error {
			return c.AllReduce(ctx, make([]float32, 1000), make([]float32, 1000), dist.Sum)
		}},
		{"Barrier", func(ctx context.Context, c dist.Communicator) error { return c.Barrier(ctx) }},
		{"Recv", func(ctx context.Context, c dist.Communicator) error { return c.Recv(ctx, make([]float64, 3), 1) }},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			comms := newGroup(t, 3)
			const deadline = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			err := tc.call(ctx, comms[0]) // ranks 1 and 2 never join
			elapsed := time.Since(start)
			require.Error(t, err)
			require.ErrorIs(t, err, dist.ErrTimeout)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Contains(t, err.Error(), tc.name)
			require.Less(t, elapsed, deadline+2*time.Second, "returned long after the deadline")
			// The communicator aborted itself: later calls fail at once.
			err = comms[0].Barrier(context.Background())
			require.ErrorIs(t, err, dist.ErrAborted)
			// The peers, out of step, see rank 0 lost instead of hanging.
			errs := each(t, comms[1:], func(ctx context.Context, _ int, c dist.Communicator) error {
				return c.AllReduce(ctx, make([]float32, 10), make([]float32, 10), dist.Sum)
			})
			for i, err := range errs {
				require.ErrorIs(t, err, dist.ErrPeerLost, "rank %d", i+1)
			}
		})
	}
}

func testCancel(t *testing.T, newGroup NewGroup) {
	comms := newGroup(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	err := comms[0].AllReduce(ctx, make([]float64, 10), make([]float64, 10), dist.Sum)
	require.ErrorIs(t, err, context.Canceled)
	require.NotErrorIs(t, err, dist.ErrTimeout)

	// A context that has already ended fails before anything is sent.
	comms = newGroup(t, 2)
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	require.ErrorIs(t, comms[0].Barrier(done), context.Canceled)
}

func testAbort(t *testing.T, newGroup NewGroup) {
	comms := newGroup(t, 3)
	boom := errors.New("boom")
	pending := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		pending <- comms[0].Recv(ctx, make([]float32, 4), 1) // never sent
	}()
	errs := each(t, comms, func(ctx context.Context, r int, c dist.Communicator) error {
		if r == 0 {
			time.Sleep(100 * time.Millisecond)
			c.Abort(boom)
			return nil
		}
		return c.AllReduce(ctx, make([]float32, 1000), make([]float32, 1000), dist.Sum)
	})
	for r := 1; r < 3; r++ {
		require.Error(t, errs[r], "rank %d", r)
		require.True(t, errors.Is(errs[r], dist.ErrPeerLost) || errors.Is(errs[r], dist.ErrAborted), "rank %d: %v", r, errs[r])
		require.Contains(t, errs[r].Error(), "rank 0", "rank %d's error should name the aborted rank", r)
	}
	select {
	case err := <-pending:
		require.ErrorIs(t, err, dist.ErrAborted)
		require.ErrorIs(t, err, boom)
	case <-time.After(10 * time.Second):
		t.Fatal("pending Recv on the aborted rank did not return")
	}
	err := comms[0].AllReduce(context.Background(), make([]float32, 1), make([]float32, 1), dist.Sum)
	require.ErrorIs(t, err, dist.ErrAborted)
	require.ErrorIs(t, err, boom)
}

func testClose(t *testing.T, newGroup NewGroup) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := newGroup(t, n)
			allReduceCase[float32](t, comms, 10, dist.Sum, false, "before Close")
			require.NoError(t, comms[1].Close())
			rest := append([]dist.Communicator{comms[0]}, comms[2:]...)
			errs := each(t, rest, func(ctx context.Context, _ int, c dist.Communicator) error {
				return c.AllReduce(ctx, make([]float32, 10), make([]float32, 10), dist.Sum)
			})
			for i, err := range errs {
				require.ErrorIs(t, err, dist.ErrPeerLost, "rank %d", rest[i].Rank())
				require.Contains(t, err.Error(), "rank 1")
			}
			require.Error(t, comms[1].Barrier(context.Background()), "a closed communicator must refuse calls")
		})
	}
}
