package dist_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/disttest"
)

var groupSeq atomic.Int64

// newRingGroup starts size ranks in this process over loopback TCP.
func newRingGroup(t testing.TB, size int, tweak func(r int, cfg *dist.RingConfig)) ([]dist.Communicator, []error) {
	t.Helper()
	store := dist.NewMemStore()
	prefix := fmt.Sprintf("test%d/", groupSeq.Add(1))
	comms := make([]dist.Communicator, size)
	errs := make([]error, size)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for r := range size {
		cfg := dist.RingConfig{Rank: r, Size: size, Store: store, Prefix: prefix, Timeout: 10 * time.Second}
		if tweak != nil {
			tweak(r, &cfg)
		}
		wg.Go(func() { comms[r], errs[r] = dist.NewRing(ctx, cfg) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range comms {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	return comms, errs
}

func ringGroup(t *testing.T, size int) []dist.Communicator {
	comms, errs := newRingGroup(t, size, nil)
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
	return comms
}

// TestRingConformance runs the suite over the Unix-socket path (all ranks
// of a test share a host) and over TCP only.
func TestRingConformance(t *testing.T) {
	t.Run("unix", func(t *testing.T) { disttest.Run(t, ringGroup) })
	t.Run("tcp", func(t *testing.T) {
		disttest.Run(t, func(t *testing.T, size int) []dist.Communicator {
			comms, errs := newRingGroup(t, size, func(_ int, cfg *dist.RingConfig) { cfg.TCPOnly = true })
			for r, err := range errs {
				require.NoError(t, err, "rank %d", r)
			}
			return comms
		})
	})
}

func TestMemStore(t *testing.T) {
	s := dist.NewMemStore()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan []byte, 1)
	go func() {
		v, err := s.Get(ctx, "k")
		if err != nil {
			v = []byte("error: " + err.Error())
		}
		got <- v
	}()
	time.Sleep(20 * time.Millisecond)
	val := []byte("v1")
	require.NoError(t, s.Set(ctx, "k", val))
	val[0] = 'X' // the store keeps its own copy
	require.Equal(t, []byte("v1"), <-got)

	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	_, err := s.Get(short, "missing")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestRingSetupTimeoutNamesMissingRanks(t *testing.T) {
	store := dist.NewMemStore()
	start := time.Now()
	_, err := dist.NewRing(context.Background(), dist.RingConfig{
		Rank: 0, Size: 3, Store: store, Prefix: "lonely/", Timeout: 300 * time.Millisecond,
	})
	require.ErrorIs(t, err, dist.ErrTimeout)
	require.Contains(t, err.Error(), "ranks 1, 2")
	require.Less(t, time.Since(start), 3*time.Second)
}

func TestRingConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  dist.RingConfig
	}{
		{"size 0", dist.RingConfig{Size: 0}},
		{"rank out of range", dist.RingConfig{Rank: 2, Size: 2, Store: dist.NewMemStore()}},
		{"no store", dist.RingConfig{Rank: 0, Size: 2}},
	}
	for _, tc := range cases {
		_, err := dist.NewRing(context.Background(), tc.cfg)
		require.ErrorIs(t, err, dist.ErrInvalidArg, tc.name)
	}
	c, err := dist.NewRing(context.Background(), dist.RingConfig{Rank: 0, Size: 1})
	require.NoError(t, err, "size 1 needs no store")
	require.NoError(t, c.Close())
}

// TestRingUpgrade: Upgrade wraps every connection, once per side.
func TestRingUpgrade(t *testing.T) {
	var server, client atomic.Int32
	comms, errs := newRingGroup(t, 4, func(_ int, cfg *dist.RingConfig) {
		cfg.Upgrade = func(c net.Conn, isServer bool) (net.Conn, error) {
			if isServer {
				server.Add(1)
			} else {
				client.Add(1)
			}
			return c, nil
		}
	})
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
	require.Equal(t, int32(6), server.Load())
	require.Equal(t, int32(6), client.Load())
	bufs := make([][]float64, 4)
	var wg sync.WaitGroup
	ctx := context.Background()
	for r, c := range comms {
		bufs[r] = []float64{float64(r)}
		wg.Go(func() { errs[r] = c.AllReduce(ctx, bufs[r], bufs[r], dist.Sum) })
	}
	wg.Wait()
	for r := range comms {
		require.NoError(t, errs[r])
		require.Equal(t, []float64{6}, bufs[r])
	}
}

func TestRingUpgradeFailure(t *testing.T) {
	denied := errors.New("bad credentials")
	_, errs := newRingGroup(t, 2, func(r int, cfg *dist.RingConfig) {
		cfg.Timeout = time.Second
		cfg.Upgrade = func(c net.Conn, isServer bool) (net.Conn, error) {
			if !isServer {
				return nil, denied
			}
			return c, nil
		}
	})
	require.ErrorIs(t, errs[1], denied)
	require.Contains(t, errs[1].Error(), "rank 1: setup")
	require.ErrorIs(t, errs[0], dist.ErrTimeout, "rank 0 never gets its peer")
}

// TestRecvMismatchKeepsStream: the ring backend discards a mismatched
// message, so the pair stays usable.
func TestRecvMismatchKeepsStream(t *testing.T) {
	comms := ringGroup(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		err := comms[0].Send(ctx, []float32{1, 2, 3, 4, 5}, 1)
		if err == nil {
			err = comms[0].Send(ctx, []float64{7, 8, 9}, 1)
		}
		errc <- err
	}()
	err := comms[1].Recv(ctx, make([]float32, 4), 0)
	require.ErrorIs(t, err, dist.ErrBadBuffer)
	require.Contains(t, err.Error(), "rank 0 sent 5 elements of []float32, buffer is 4 elements of []float32")
	got := make([]float64, 3)
	require.NoError(t, comms[1].Recv(ctx, got, 0))
	require.NoError(t, <-errc)
	require.Equal(t, []float64{7, 8, 9}, got)
}

// TestErrorMessages pins the wording of the errors users see.
func TestErrorMessages(t *testing.T) {
	cases := []struct {
		err  *dist.OpError
		want string
		is   []error
	}{
		{&dist.OpError{Rank: 2, Op: "AllReduce", Peers: []int{3}, Kind: dist.ErrPeerLost, Err: errors.New("EOF")},
			"rank 2: AllReduce: lost connection to rank 3 (EOF)", []error{dist.ErrPeerLost}},
		{&dist.OpError{Rank: 0, Op: "Barrier", Peers: []int{1, 2}, Kind: dist.ErrTimeout, Err: context.DeadlineExceeded},
			"rank 0: Barrier: timed out waiting for ranks 1, 2 (context deadline exceeded)", []error{dist.ErrTimeout, context.DeadlineExceeded}},
		{&dist.OpError{Rank: 1, Op: "Recv", Kind: dist.ErrAborted, Err: dist.ErrClosed},
			"rank 1: Recv: communicator aborted: dist: communicator closed", []error{dist.ErrAborted, dist.ErrClosed}},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, tc.err.Error())
		for _, target := range tc.is {
			require.ErrorIs(t, tc.err, target)
		}
	}
	require.Equal(t, "Avg", dist.Avg.String())
	require.Equal(t, "Op(9)", dist.Op(9).String())
}

func BenchmarkRingAllReduce64MiB(b *testing.B) {
	const bytes = 64 << 20
	for _, n := range []int{2, 4} {
		for _, chunk := range []int{256 << 10, 1 << 20, 4 << 20} {
			b.Run(fmt.Sprintf("ranks=%d/chunk=%dKiB", n, chunk>>10), func(b *testing.B) {
				comms, errs := newRingGroup(b, n, func(_ int, cfg *dist.RingConfig) { cfg.ChunkBytes = chunk })
				for _, err := range errs {
					require.NoError(b, err)
				}
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, bytes/4)
				}
				ctx := context.Background()
				b.SetBytes(bytes)
				b.ResetTimer()
				start := time.Now()
				for range b.N {
					var wg sync.WaitGroup
					for r, c := range comms {
						wg.Go(func() { errs[r] = c.AllReduce(ctx, bufs[r], bufs[r], dist.Sum) })
					}
					wg.Wait()
					for _, err := range errs {
						if err != nil {
							b.Fatal(err)
						}
					}
				}
				sec := time.Since(start).Seconds() / float64(b.N)
				algbw := bytes / sec / 1e9
				b.ReportMetric(algbw, "algbw_GB/s")
				b.ReportMetric(algbw*2*float64(n-1)/float64(n), "busbw_GB/s")
			})
		}
	}
}
