package dist_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/dist/secure/securetest"
)

// TestRingHandshakeCap: rank 0's ring listener, capped at 4 handshakes,
// takes a flood of 50 connections that send only the preamble: 4 hold
// slots, the rest are closed at once. Rank 1, dialing during the flood, is
// refused, retries, and joins once the stalled handshakes reach their
// deadline (1s here); the ring then works.
func TestRingHandshakeCap(t *testing.T) {
	opt := secure.Options{Secret: []byte("ring secret"), Timeout: time.Second}
	store := dist.NewMemStore()
	cfg := func(r int) dist.RingConfig {
		return dist.RingConfig{
			Rank: r, Size: 2, Store: store, Prefix: "capped/", TCPOnly: true, Timeout: 20 * time.Second, MaxHandshakes: 4,
			Upgrade: func(c net.Conn, server bool) (net.Conn, error) {
				if server {
					return secure.Server(c, opt)
				}
				return secure.Client(c, opt)
			},
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	comms := make([]dist.Communicator, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { comms[0], errs[0] = dist.NewRing(ctx, cfg(0)) })
	ep, err := store.Get(ctx, "capped/addr/0")
	require.NoError(t, err)
	addr, _, _ := strings.Cut(string(ep), "\n")

	f := securetest.Start(addr, 50, []byte(secure.Preamble))
	t.Cleanup(f.Stop)
	require.True(t, f.WaitOpened(10*time.Second))
	require.Zero(t, f.Failed())
	require.Equal(t, 4, f.WaitHeld(4, 2*time.Second), "the cap admits 4 handshakes")
	require.GreaterOrEqual(t, f.Refused(), 46, "the excess is closed at once")

	start := time.Now()
	comms[1], errs[1] = dist.NewRing(ctx, cfg(1))
	wg.Wait()
	for r, c := range comms {
		require.NoError(t, errs[r], "rank %d", r)
		t.Cleanup(func() { c.Close() })
	}
	t.Logf("rank 1 joined after %v during the flood", time.Since(start).Round(time.Millisecond))
	bufs := [][]float64{{1}, {2}}
	for r, c := range comms {
		wg.Go(func() { errs[r] = c.AllReduce(ctx, bufs[r], bufs[r], dist.Sum) })
	}
	wg.Wait()
	for r := range comms {
		require.NoError(t, errs[r])
		require.Equal(t, []float64{3}, bufs[r])
	}
}
