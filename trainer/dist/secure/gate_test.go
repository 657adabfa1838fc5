package secure

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestGate: slots are taken up to the cap and given back; a refused
// connection is closed and counted, and the warnings are rate-limited.
func TestGate(t *testing.T) {
	var logs lockedBuf
	g := NewGate("test listener", 3, slog.New(slog.NewTextHandler(&logs, nil)))
	require.Equal(t, 3, g.Max())
	for range 3 {
		require.True(t, g.TryAcquire())
	}
	require.False(t, g.TryAcquire(), "the 4th is over the cap")
	require.Equal(t, 3, g.InProgress())
	for range 5 {
		a, b := net.Pipe()
		require.False(t, g.Admit(a))
		_, err := b.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "a refused connection is closed")
	}
	require.Equal(t, uint64(5), g.Refused())
	require.Equal(t, 1, strings.Count(logs.String(), "refusing connections"), "one warning per WarnInterval:\n%s", logs.String())
	require.Contains(t, logs.String(), `listener="test listener"`)
	g.Release()
	require.True(t, g.TryAcquire(), "a released slot is free again")

	require.Equal(t, DefaultMaxHandshakes, NewGate("", 0, nil).Max())
	unlimited := NewGate("", -1, nil)
	for range 1000 {
		require.True(t, unlimited.TryAcquire())
	}
}

// TestLimitListener: at most max connections are open at once; the excess
// is closed at once, and closing one (even twice) frees one slot.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g := NewGate("limited", 2, nil)
	ln := LimitListener(inner, g)
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", inner.Addr().String())
		require.NoError(t, err)
		clients = append(clients, c)
	}
	a, b := <-accepted, <-accepted
	// The other three are closed by the listener.
	closed := 0
	for _, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, syscall.EAGAIN) && !isTimeout(err) {
			closed++
		}
	}
	require.Equal(t, 3, closed)
	require.Equal(t, 2, g.InProgress())
	require.Equal(t, uint64(3), g.Refused())
	select {
	case c := <-accepted:
		t.Fatalf("a third connection %v was handed out", c.RemoteAddr())
	default:
	}
	require.NoError(t, a.Close())
	a.Close()
	require.Equal(t, 1, g.InProgress(), "Close frees one slot, once")
	c, err := net.Dial("tcp", inner.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	select {
	case got := <-accepted:
		got.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a connection after a Close was not accepted")
	}
	b.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{fmt.Errorf("x: %w", ErrAuth), false},
		{handshakeErr("reading challenge", io.EOF), true},
		{handshakeErr("reading challenge", syscall.ECONNRESET), true},
		{tlsErr(&net.OpError{Op: "read", Err: syscall.ECONNRESET}), true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{errors.New("bad credentials"), false},
	} {
		require.Equal(t, tc.want, Retryable(tc.err), "%v", tc.err)
	}
}

// TestRefusedTLSClientIsNotAnAuthError: a server that closes a TLS client's
// connection at once (its gate full) gives the client a handshake error,
// which it retries, not ErrAuth.
func TestRefusedTLSClientIsNotAnAuthError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond) // the ClientHello arrives unread
			c.Close()
		}
	}()
	cli := newPKI(t).clientTLS
	for range 5 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		_, err = Client(c, Options{Secret: []byte("s"), TLS: cli, Timeout: 2 * time.Second})
		require.Error(t, err)
		require.ErrorIs(t, err, ErrHandshake)
		require.NotErrorIs(t, err, ErrAuth)
		require.True(t, Retryable(err))
	}
}
