package rendezvous

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/stretchr/testify/require"
)

var jobOpt = secure.Options{Secret: []byte("the job's secret"), Timeout: time.Second}

// The structural interface other packages rely on.
var _ interface {
	Set(ctx context.Context, key string, value []byte) error
	Get(ctx context.Context, key string) ([]byte, error)
} = (*Client)(nil)

func startServer(t *testing.T) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := Serve(ln, jobOpt)
	t.Cleanup(func() { s.Close() })
	return s
}

func dial(t *testing.T, s *Server) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.Addr().String(), jobOpt)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waiters counts the server's blocked requests and wait entries.
func waiters(s *Server) (entries int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ready)
}

func TestConcurrentClients(t *testing.T) {
	s := startServer(t)
	const n, adds = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dial(t, s)
			ctx := ctxT(t, 10*time.Second)
			errs <- func() error {
				if err := c.Set(ctx, fmt.Sprintf("addr/%d", i), []byte(fmt.Sprintf("host%d", i))); err != nil {
					return err
				}
				for range adds {
					if _, err := c.Add(ctx, "counter", 1); err != nil {
						return err
					}
				}
				keys := make([]string, n)
				for j := range keys {
					keys[j] = fmt.Sprintf("addr/%d", j)
				}
				if err := c.Wait(ctx, keys...); err != nil {
					return err
				}
				for j := range n {
					v, err := c.Get(ctx, keys[j])
					if err != nil {
						return err
					}
					if string(v) != fmt.Sprintf("host%d", j) {
						return fmt.Errorf("client %d got %q for %s", i, v, keys[j])
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	c := dial(t, s)
	v, err := c.Add(ctxT(t, time.Second), "counter", 0)
	require.NoError(t, err)
	require.EqualValues(t, n*adds, v)
	got, err := c.Get(ctxT(t, time.Second), "counter")
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(n*adds), string(got))
}

func TestOperations(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	ctx := ctxT(t, 5*time.Second)
	big := bytes.Repeat([]byte{0xab}, 3<<20)
	require.NoError(t, c.Set(ctx, "big", big))
	got, err := c.Get(ctx, "big")
	require.NoError(t, err)
	require.Equal(t, big, got)

	require.NoError(t, c.Set(ctx, "empty", nil))
	got, err = c.Get(ctx, "empty")
	require.NoError(t, err)
	require.Empty(t, got)

	require.NoError(t, c.Set(ctx, "k", []byte("v1")))
	require.NoError(t, c.Set(ctx, "k", []byte("v2")))
	got, err = c.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(got))

	v, err := c.Add(ctx, "n", -5)
	require.NoError(t, err)
	require.EqualValues(t, -5, v)
	v, err = c.Add(ctx, "n", 7)
	require.NoError(t, err)
	require.EqualValues(t, 2, v)

	_, err = c.Add(ctx, "k", 1)
	require.ErrorContains(t, err, "not a decimal integer")
	require.NoError(t, c.Set(ctx, "max", []byte(strconv.FormatInt(1<<62, 10))))
	_, err = c.Add(ctx, "max", 1<<62)
	require.ErrorContains(t, err, "overflows")

	require.NoError(t, c.Wait(ctx))
	require.NoError(t, c.Wait(ctx, "k", "n"))

	// Client-side validation.
	require.ErrorContains(t, c.Set(ctx, "", nil), "empty key")
	require.ErrorContains(t, c.Set(ctx, string(make([]byte, MaxKeyLen+1)), nil), "exceeds the limit")
	require.ErrorContains(t, c.Wait(ctx, make([]string, MaxWaitKeys+1)...), "exceeds the limit")

	// The connection survives application errors.
	got, err = c.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(got))
}

func TestStoreFull(t *testing.T) {
	s := startServer(t)
	s.mu.Lock()
	s.maxStore = 100
	s.mu.Unlock()
	c := dial(t, s)
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Set(ctx, "a", make([]byte, 50)))
	require.ErrorContains(t, c.Set(ctx, "b", make([]byte, 60)), "store full")
	require.NoError(t, c.Set(ctx, "a", make([]byte, 92)), "replacing a value frees the old one")
	_, err := c.Add(ctx, "counter", 1)
	require.ErrorContains(t, err, "store full")
	require.NoError(t, c.Set(ctx, "a", nil))
	require.NoError(t, c.Set(ctx, "b", make([]byte, 60)))
}

func TestGetBlocksUntilSet(t *testing.T) {
	s := startServer(t)
	getter, setter := dial(t, s), dial(t, s)
	type res struct {
		v   []byte
		err error
	}
	got := make(chan res, 2)
	go func() {
		v, err := getter.Get(ctxT(t, 10*time.Second), "late")
		got <- res{v, err}
	}()
	go func() {
		err := getter.Wait(ctxT(t, 10*time.Second), "late", "late2")
		got <- res{nil, err}
	}()
	select {
	case r := <-got:
		t.Fatalf("returned before the key was set: %v %v", r.v, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, setter.Set(ctxT(t, time.Second), "late", []byte("finally")))
	r := <-got
	require.NoError(t, r.err)
	require.Equal(t, "finally", string(r.v))
	select {
	case r := <-got:
		t.Fatalf("Wait returned before late2 was set: %v", r.err)
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, setter.Set(ctxT(t, time.Second), "late2", nil))
	require.NoError(t, (<-got).err)
	require.Eventually(t, func() bool { return waiters(s) == 0 }, 2*time.Second, 10*time.Millisecond)
}

func TestDeadlines(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	cases := []struct {
		name   string
		ctx    func() (context.Context, context.CancelFunc)
		call   func(ctx context.Context) error
		want   error
		inText []string
	}{
		{
			name: "get with deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 100*time.Millisecond)
			},
			call: func(ctx context.Context) error { _, err := c.Get(ctx, "never"); return err },
			want: context.DeadlineExceeded, inText: []string{`"never"`, "no process has set it"},
		},
		{
			name: "get with setter hint",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				return WithSetter(ctx, "rank 0"), cancel
			},
			call: func(ctx context.Context) error { _, err := c.Get(ctx, "master/port"); return err },
			want: context.DeadlineExceeded, inText: []string{`"master/port"`, "set by rank 0"},
		},
		{
			name: "wait with deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 100*time.Millisecond)
			},
			call: func(ctx context.Context) error { return c.Wait(ctx, "x", "y") },
			want: context.DeadlineExceeded, inText: []string{`"x"`, `"y"`},
		},
		{
			name: "get canceled",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(100*time.Millisecond, cancel)
				return ctx, cancel
			},
			call: func(ctx context.Context) error { _, err := c.Get(ctx, "never"); return err },
			want: context.Canceled, inText: []string{`"never"`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			err := tc.call(ctx)
			require.ErrorIs(t, err, tc.want)
			for _, s := range tc.inText {
				require.ErrorContains(t, err, s)
			}
			require.Less(t, time.Since(start), 2*time.Second)
			// The server let go of the waiter (the client sent a cancel).
			require.Eventually(t, func() bool { return waiters(s) == 0 }, 2*time.Second, 10*time.Millisecond)
		})
	}
	// The client is still usable.
	require.NoError(t, c.Set(ctxT(t, time.Second), "after", []byte("ok")))
}

func TestWaitersTiedToConnection(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	go c.Get(context.Background(), "never")
	require.Eventually(t, func() bool { return waiters(s) == 1 }, 2*time.Second, 10*time.Millisecond)
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return waiters(s) == 0 }, 2*time.Second, 10*time.Millisecond)
	_, err := c.Get(ctxT(t, time.Second), "k")
	require.ErrorContains(t, err, "closed")
}

func TestWrongSecretCannotTouchStore(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Set(ctx, "master/addr", []byte("10.0.0.1:29500")))
	_, err := c.Add(ctx, "joined", 3)
	require.NoError(t, err)

	evil := secure.Options{Secret: []byte("a guess"), Timeout: time.Second}
	// Through the client API.
	start := time.Now()
	_, err = Dial(ctx, s.Addr().String(), evil)
	require.ErrorIs(t, err, secure.ErrAuth)
	require.ErrorContains(t, err, s.Addr().String())
	require.Less(t, time.Since(start), 2*time.Second, "an auth failure is not retried")

	// Raw: a failed handshake followed by requests anyway, and requests
	// with no handshake at all.
	setFrame := frame(encodeRequest(request{op: opSet, id: 1, keys: []string{"master/addr"}, value: []byte("evil")}))
	addFrame := frame(encodeRequest(request{op: opAdd, id: 2, keys: []string{"joined"}, delta: 100}))
	for _, handshake := range []bool{true, false} {
		raw, err := net.Dial("tcp", s.Addr().String())
		require.NoError(t, err)
		if handshake {
			sc, _ := secureClientIgnoringResult(raw, evil)
			raw = sc
		}
		raw.Write(setFrame)
		raw.Write(addFrame)
		raw.SetReadDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(raw)
		require.NotContains(t, string(b), "evil")
		raw.Close()
	}

	got, err := c.Get(ctx, "master/addr")
	require.NoError(t, err)
	require.Equal(t, "10.0.0.1:29500", string(got))
	n, err := c.Add(ctx, "joined", 0)
	require.NoError(t, err)
	require.EqualValues(t, 3, n)
}

// secureClientIgnoringResult runs the client handshake with opt and
// returns the raw connection whatever the outcome (secure.Client closes it
// on failure, so later writes fail: also what we want to show).
func secureClientIgnoringResult(raw net.Conn, opt secure.Options) (net.Conn, error) {
	c, err := secure.Client(raw, opt)
	if err != nil {
		return raw, err
	}
	return c, nil
}

func frame(p []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(p))), p...)
}

func TestHostileBytes(t *testing.T) {
	s := startServer(t)
	good := dial(t, s)
	ctx := ctxT(t, 10*time.Second)
	// A value no random bytes of a reply will spell by chance (a 1-byte
	// value did: the server's challenge held "v\x00" once in a few
	// hundred runs).
	secret := "the-value-of-k-that-must-not-leak"
	require.NoError(t, good.Set(ctx, "k", []byte(secret)))

	pre := []byte(secure.Preamble)
	unauth := [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		{0xff, 0xff, 0xff, 0xff, 1, 2, 3},
		frame(encodeRequest(request{op: opGet, id: 1, keys: []string{"k"}})),
		append(pre, bytes.Repeat([]byte{0}, 200)...),
		pre[:5],
	}
	for i, b := range unauth {
		t.Run(fmt.Sprintf("unauthenticated/%d", i), func(t *testing.T) {
			raw, err := net.Dial("tcp", s.Addr().String())
			require.NoError(t, err)
			defer raw.Close()
			raw.Write(b)
			raw.SetReadDeadline(time.Now().Add(3 * time.Second))
			got, err := io.ReadAll(raw)
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server should close the connection")
			require.NotContains(t, string(got), secret)
		})
	}

	// Authenticated peers sending malformed requests: an error with id 0,
	// then the connection closes; others are unaffected.
	u32 := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	hdr := func(op byte) []byte { return append([]byte{op}, 0, 0, 0, 0, 0, 0, 0, 9) }
	malformed := []struct {
		name, want string
		bytes      []byte
	}{
		{"huge frame", "exceeds the limit", u32(0xffffffff)},
		{"short frame", "shorter than a request header", frame([]byte{1, 2})},
		{"unknown op", "unknown operation", frame(hdr(99))},
		{"id zero", "reserved", frame([]byte{opSet, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'k'})},
		{"key too long", "exceeds the limit", frame(append(hdr(opSet), u32(MaxKeyLen+1)...))},
		{"truncated key", "truncated key", frame(append(append(hdr(opAdd), make([]byte, 8)...), append(u32(10), 'k')...))},
		{"empty key", "empty key", frame(append(append(hdr(opGet), make([]byte, 8)...), u32(0)...))},
		{"trailing bytes", "trailing", frame(append(encodeRequest(request{op: opGet, id: 3, keys: []string{"k"}}), 1))},
		{"wait too many keys", "exceeds the limit", frame(append(append(hdr(opWait), make([]byte, 8)...), u32(1<<30)...))},
		{"wait count beyond frame", "cannot fit", frame(append(append(hdr(opWait), make([]byte, 8)...), u32(100)...))},
	}
	for _, tc := range malformed {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", s.Addr().String())
			require.NoError(t, err)
			conn, err := secure.Client(raw, jobOpt)
			require.NoError(t, err)
			defer conn.Close()
			_, err = conn.Write(tc.bytes)
			require.NoError(t, err)
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			p, err := readFrame(conn, maxResponse)
			require.NoError(t, err)
			require.EqualValues(t, 0, binary.BigEndian.Uint64(p))
			require.EqualValues(t, statusError, p[8])
			require.Contains(t, string(p[respHeader:]), tc.want)
			_, err = readFrame(conn, maxResponse)
			require.ErrorIs(t, err, io.EOF, "the server closes the connection")
		})
	}
	got, err := good.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, secret, string(got))
	s.mu.Lock()
	require.Len(t, s.data, 1)
	s.mu.Unlock()
}

func TestServerClose(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Get(context.Background(), "never")
		errc <- err
	}()
	require.Eventually(t, func() bool { return waiters(s) == 1 }, 2*time.Second, 10*time.Millisecond)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
	select {
	case err := <-errc:
		require.ErrorContains(t, err, "connection to the store")
	case <-time.After(3 * time.Second):
		t.Fatal("blocked Get did not end when the server closed")
	}
	require.Error(t, c.Set(ctxT(t, time.Second), "k", nil))
	_, err := Dial(ctxT(t, 200*time.Millisecond), s.Addr().String(), jobOpt)
	require.ErrorContains(t, err, s.Addr().String())
	require.ErrorContains(t, err, "could not connect")
}

func TestDialRetriesUntilServerStarts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	type res struct {
		c   *Client
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := Dial(ctxT(t, 10*time.Second), addr, jobOpt)
		done <- res{c, err}
	}()
	time.Sleep(300 * time.Millisecond)
	ln, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	s := Serve(ln, jobOpt)
	defer s.Close()
	r := <-done
	require.NoError(t, r.err)
	defer r.c.Close()
	require.NoError(t, r.c.Set(ctxT(t, time.Second), "up", []byte("yes")))
}
