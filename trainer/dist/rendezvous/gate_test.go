package rendezvous

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/dist/secure/securetest"
)

// TestHandshakeCap: with a cap of 4, a flood of 50 connections that send
// only the preamble gets 4 handshakes in progress and the rest closed at
// once; the 4 end at the handshake deadline (jobOpt: 1s), and a client that
// dials during the flood gets in. Established clients hold no slot: 10 of
// them stay connected beside a full cap.
func TestHandshakeCap(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := serve(ln, jobOpt, 4)
	t.Cleanup(func() { s.Close() })
	addr := s.Addr().String()

	var clients []*Client
	for range 10 {
		clients = append(clients, dial(t, s))
	}
	// The server gives a slot back just after its side of the handshake.
	require.Eventually(t, func() bool { return s.gate.InProgress() == 0 }, 2*time.Second, 5*time.Millisecond,
		"established connections hold no slot")

	f := securetest.Start(addr, 50, []byte(secure.Preamble))
	t.Cleanup(f.Stop)
	require.True(t, f.WaitOpened(10*time.Second))
	require.Zero(t, f.Failed())
	require.Equal(t, 4, f.WaitHeld(4, 2*time.Second), "the cap admits 4 handshakes")
	require.Equal(t, 4, s.gate.InProgress())
	require.GreaterOrEqual(t, f.Refused(), 46, "the excess is closed at once")
	require.GreaterOrEqual(t, s.gate.Refused(), uint64(46))

	// A client dialing now is refused while the slots are full, retries,
	// and gets in once the stalled handshakes reach their deadline.
	start := time.Now()
	c, err := Dial(ctxT(t, 10*time.Second), addr, jobOpt)
	require.NoError(t, err, "a real client joins during the flood")
	defer c.Close()
	t.Logf("joined after %v during the flood; refused %d", time.Since(start).Round(time.Millisecond), s.gate.Refused())
	require.Equal(t, 0, f.WaitHeld(0, 3*time.Second), "stalled handshakes end at the deadline")

	// The established clients still work.
	for i, cl := range append(clients, c) {
		require.NoError(t, cl.Set(context.Background(), "k", []byte{byte(i)}))
	}
	require.Eventually(t, func() bool { return s.gate.InProgress() == 0 }, 2*time.Second, 5*time.Millisecond)
}
