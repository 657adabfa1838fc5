package ps

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/dist/secure/securetest"
	"github.com/gotrain/gotrain/trainer/optim"
)

// TestServeCapsHandshakes: a flood of connections that send only the
// preamble holds at most secure.DefaultMaxHandshakes Upgrades of Serve; the
// rest are closed at once. A worker that dials during the flood retries
// and, once the stalled handshakes reach their deadline (1s here), joins
// and does the run's work.
func TestServeCapsHandshakes(t *testing.T) {
	opt := secure.Options{Secret: []byte("ps secret"), Timeout: time.Second}
	s, err := NewServer(Config{
		Params: []optim.Param{{Name: "a", Data: []float32{0, 0}}, {Name: "b", Data: []float32{10}}},
		NewOptimizer: func(ps []optim.Param) (optim.Optimizer, error) {
			return optim.New(optim.Config{Name: "sgd"}, ps)
		},
		LR:      func(uint64) float64 { return 0.1 },
		Epochs:  1,
		Batches: func(int) int { return 5 },
		Upgrade: func(c net.Conn) (net.Conn, error) { return secure.Server(c, opt) },
	})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() { s.Close(); ln.Close() })
	addr := ln.Addr().String()

	const n = secure.DefaultMaxHandshakes + 100
	f := securetest.Start(addr, n, []byte(secure.Preamble))
	t.Cleanup(f.Stop)
	require.True(t, f.WaitOpened(10*time.Second))
	require.Zero(t, f.Failed())
	require.Equal(t, secure.DefaultMaxHandshakes, f.WaitHeld(secure.DefaultMaxHandshakes, 2*time.Second))
	require.GreaterOrEqual(t, f.Refused(), 100, "the excess is closed at once")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	var conn net.Conn
	for attempts := 1; ; attempts++ {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		if conn, err = secure.Client(c, opt); err == nil {
			t.Logf("joined after %v and %d attempts during the flood", time.Since(start).Round(time.Millisecond), attempts)
			break
		}
		require.True(t, secure.Retryable(err), "%v", err)
		require.NoError(t, ctx.Err(), "never admitted: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
	cl, w, err := Join(ctx, conn, 1, 3)
	require.NoError(t, err)
	defer cl.Close()
	for pushes := 0; !w.End; pushes++ {
		require.Less(t, pushes, 10)
		w, err = cl.Push(ctx, w, 8, []float32{1, 1, 1})
		require.NoError(t, err)
	}
	require.NoError(t, s.Wait(ctx))
	require.Equal(t, 0, f.WaitHeld(0, 3*time.Second), "stalled handshakes end at the deadline")
	select {
	case err := <-served:
		t.Fatalf("Serve returned during the flood: %v", err)
	default:
	}
}
