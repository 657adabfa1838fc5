package dist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func frame(op opcode, seq uint32, payload []byte) []byte {
	b := make([]byte, headerLen+len(payload))
	putHeader(b, header{op: op, seq: seq, n: uint32(len(payload))})
	copy(b[headerLen:], payload)
	return b
}

func TestFrameDecode(t *testing.T) {
	good := frame(opAllReduce, 0, []byte{1, 2, 3, 4})
	mut := func(i int, v byte) []byte { b := bytes.Clone(good); b[i] = v; return b }
	cases := []struct {
		name    string
		in      []byte
		want    opcode
		max     int
		n       int
		wantErr error
		msg     string
	}{
		{"ok", good, opAllReduce, 4, 4, nil, ""},
		{"bad magic", mut(0, 0x47), opAllReduce, 4, 0, ErrProtocol, "bad magic"},
		{"bad version", mut(1, 9), opAllReduce, 4, 0, ErrProtocol, "version"},
		{"unknown op", mut(2, 99), opAllReduce, 4, 0, ErrProtocol, "unknown op"},
		{"flags", mut(3, 1), opAllReduce, 4, 0, ErrProtocol, "flags"},
		{"out of order", frame(opAllReduce, 5, []byte{1, 2, 3, 4}), opAllReduce, 4, 0, ErrProtocol, "out-of-order"},
		{"too long", good, opAllReduce, 3, 0, ErrProtocol, "at most 3"},
		{"other op", good, opBroadcast, 4, 0, ErrProtocol, "expected Broadcast"},
		{"huge length", func() []byte { b := bytes.Clone(good); b[11] = 0xff; return b }(), opAllReduce, 1 << 40, 0, ErrProtocol, "at most"},
		{"bye", frame(opBye, 0, []byte("rank 3 closed\x00")), opAllReduce, 4, 0, ErrPeerLost, "rank 3 closed"},
		{"abort", frame(opAbort, 0, []byte("rank 3 aborted: x")), opBarrier, 0, 0, ErrPeerLost, "aborted: x"},
		{"huge abort", func() []byte { b := frame(opAbort, 0, nil); b[10] = 1; return b }(), opBarrier, 0, 0, ErrProtocol, "abort frame"},
		{"short", good[:7], opAllReduce, 4, 0, io.ErrUnexpectedEOF, ""},
		{"empty", nil, opAllReduce, 4, 0, io.EOF, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fr := frameReader{r: bytes.NewReader(tc.in)}
			n, err := fr.next(tc.want, tc.max)
			if tc.wantErr == nil {
				require.NoError(t, err)
				require.Equal(t, tc.n, n)
				require.Equal(t, uint32(1), fr.seq)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.Contains(t, err.Error(), tc.msg)
		})
	}
}

func TestHello(t *testing.T) {
	h := hello{rank: 3, size: 8, prefix: "ring/"}
	got, err := parseHello(h.encode())
	require.NoError(t, err)
	require.Equal(t, h, got)
	bad := []struct {
		name string
		in   []byte
	}{
		{"short", []byte{1, 2, 3}},
		{"prefix length", append(h.encode(), 'x')},
		{"rank >= size", hello{rank: 8, size: 8}.encode()},
		{"size 0", hello{rank: 0, size: 0}.encode()},
	}
	for _, tc := range bad {
		_, err := parseHello(tc.in)
		require.ErrorIs(t, err, ErrProtocol, tc.name)
	}
}

// FuzzFrameDecode feeds arbitrary bytes to the frame decoder: it must never
// panic, never return a length above the caller's limit, and fail only with
// protocol, peer-gone or I/O errors.
func FuzzFrameDecode(f *testing.F) {
	f.Add(frame(opAllReduce, 0, []byte{1, 2, 3, 4}), uint8(opAllReduce), uint16(8))
	f.Add(append(frame(opSendHdr, 0, make([]byte, 9)), frame(opSendData, 1, []byte("abcdefgh"))...), uint8(opSendHdr), uint16(9))
	f.Add(frame(opAbort, 0, []byte("rank 1 aborted")), uint8(opBarrier), uint16(0))
	f.Add(frame(opHello, 0, hello{rank: 1, size: 2, prefix: "p/"}.encode()), uint8(opHello), uint16(4096))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint8(opHello), uint16(100))
	f.Add([]byte{frameMagic, frameVersion, 10, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, uint8(opAllReduce), uint16(65535))
	f.Fuzz(func(t *testing.T, data []byte, want uint8, max uint16) {
		fr := frameReader{r: bytes.NewReader(data)}
		for range 64 {
			n, err := fr.next(opcode(want), int(max))
			if err != nil {
				if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrPeerLost) &&
					!errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error %v", err)
				}
				var pe *protoErr
				if errors.As(err, &pe) && pe.drain {
					_ = fr.drainForGone(pe.skip)
				}
				return
			}
			if n < 0 || n > int(max) {
				t.Fatalf("length %d beyond limit %d", n, max)
			}
			payload := make([]byte, n)
			if _, err := io.ReadFull(fr.r, payload); err != nil {
				return
			}
			if opcode(want) == opHello {
				_, _ = parseHello(payload)
			}
		}
	})
}

// internalGroup builds a ring group inside package dist (for white-box tests).
func internalGroup(t *testing.T, size, chunk int) []*ring {
	t.Helper()
	store := NewMemStore()
	prefix := fmt.Sprintf("internal-%s/", t.Name())
	comms := make([]*ring, size)
	errs := make([]error, size)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for r := range size {
		wg.Go(func() {
			c, err := NewRing(ctx, RingConfig{Rank: r, Size: size, Store: store, Prefix: prefix, ChunkBytes: chunk})
			errs[r] = err
			if err == nil {
				comms[r] = c.(*ring)
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
	t.Cleanup(func() {
		for _, c := range comms {
			_ = c.Close()
		}
	})
	return comms
}

func parallel(t *testing.T, comms []*ring, fn func(ctx context.Context, c *ring) error) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Go(func() { errs[r] = fn(ctx, c) })
	}
	wg.Wait()
	return errs
}

// TestSmallChunksAndPortableEncoding runs multi-frame blocks through both the
// zero-copy little-endian path and the portable encode/decode path.
func TestSmallChunksAndPortableEncoding(t *testing.T) {
	for _, le := range []bool{true, false} {
		t.Run(fmt.Sprintf("nativeLE=%v", le), func(t *testing.T) {
			saved := nativeLE
			nativeLE = le
			defer func() { nativeLE = saved }()
			const n, length = 3, 5003 // blocks of ~1668 float64 = 3 frames of 4 KiB
			comms := internalGroup(t, n, 4096)
			outs := make([][]float64, n)
			bc := make([][]float32, n)
			p2p := make([][]float64, n)
			rs := make([][]float64, n)
			errs := parallel(t, comms, func(ctx context.Context, c *ring) error {
				r := c.rank
				in := make([]float64, length)
				for i := range in {
					in[i] = float64(r*1000 + i)
				}
				outs[r] = make([]float64, length)
				if err := c.AllReduce(ctx, in, outs[r], Sum); err != nil {
					return err
				}
				rs[r] = make([]float64, 2000)
				if err := c.ReduceScatter(ctx, append(in, make([]float64, n*2000-length)...), rs[r], Max); err != nil {
					return err
				}
				bc[r] = make([]float32, length)
				if r == 1 {
					for i := range bc[r] {
						bc[r][i] = float32(i) / 3
					}
				}
				if err := c.Broadcast(ctx, bc[r], 1); err != nil {
					return err
				}
				p2p[r] = make([]float64, length)
				errc := make(chan error, 1)
				go func() { errc <- c.Send(ctx, in, (r+1)%n) }()
				return errors.Join(c.Recv(ctx, p2p[r], (r+n-1)%n), <-errc)
			})
			for r, err := range errs {
				require.NoError(t, err, "rank %d", r)
			}
			for r := range n {
				left := (r + n - 1) % n
				for i := range length {
					require.Equal(t, float64(3000+3*i), outs[r][i], "AllReduce rank %d elem %d", r, i)
					require.Equal(t, float32(i)/3, bc[r][i], "Broadcast rank %d elem %d", r, i)
					require.Equal(t, float64(left*1000+i), p2p[r][i], "Send rank %d elem %d", r, i)
				}
				for i := range 2000 {
					j := r*2000 + i
					want := 0.0
					if j < length {
						want = float64(2000 + j)
					}
					require.Equal(t, want, rs[r][i], "ReduceScatter rank %d elem %d", r, i)
				}
			}
		})
	}
}

// TestGarbageMidStream: bytes that are not a frame fail the reader's
// collective with ErrProtocol naming the sender, rather than a hang or panic.
func TestGarbageMidStream(t *testing.T) {
	comms := internalGroup(t, 2, 0)
	_, err := comms[0].peers[1].conn.Write([]byte("this is not a frame at all"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = comms[1].AllReduce(ctx, make([]float32, 8), make([]float32, 8), Sum)
	require.ErrorIs(t, err, ErrProtocol)
	require.Contains(t, err.Error(), "rank 1: AllReduce: protocol error from rank 0")
	require.Contains(t, err.Error(), "bad magic")
}

// TestStrayConnections: a connection speaking another protocol, or from
// another group, is refused with a reason and setup still completes.
func TestStrayConnections(t *testing.T) {
	store := NewMemStore()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   Communicator
		err error
	}
	r0 := make(chan res, 1)
	go func() {
		c, err := NewRing(ctx, RingConfig{Rank: 0, Size: 2, Store: store, Prefix: "grp/"})
		r0 <- res{c, err}
	}()
	raw, err := store.Get(ctx, "grp/addr/0")
	require.NoError(t, err)
	addr := parseEndpoint(raw).tcp

	junk, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, _ = junk.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	_ = junk.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(junk)
	junk.Close()
	require.Empty(t, b, "a non-frame connection gets no answer, only closed")

	for _, tc := range []struct {
		name string
		h    hello
		msg  string
	}{
		{"wrong group", hello{rank: 1, size: 2, prefix: "other/"}, "wrong group"},
		{"wrong size", hello{rank: 1, size: 3, prefix: "grp/"}, "group size 2, not 3"},
	} {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err, tc.name)
		_, err = conn.Write(frame(opHello, 0, tc.h.encode()))
		require.NoError(t, err)
		fr := frameReader{r: conn}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = fr.readControl(opHello)
		require.ErrorIs(t, err, ErrPeerLost, tc.name) // a reject frame
		require.Contains(t, err.Error(), tc.msg, tc.name)
		conn.Close()
	}

	// A connection that never says anything must not hold setup up.
	silent, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer silent.Close()
	start := time.Now()
	c1, err := NewRing(ctx, RingConfig{Rank: 1, Size: 2, Store: store, Prefix: "grp/"})
	require.NoError(t, err)
	defer c1.Close()
	got := <-r0
	require.NoError(t, got.err)
	require.Less(t, time.Since(start), 3*time.Second, "a silent stray connection delayed setup")
	defer got.c.Close()
	errs := make([]error, 2)
	bufs := [][]float32{{1, 2}, {10, 20}}
	var wg sync.WaitGroup
	for r, c := range []Communicator{got.c, c1} {
		wg.Go(func() { errs[r] = c.AllReduce(ctx, bufs[r], bufs[r], Sum) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.Equal(t, []float32{11, 22}, bufs[0])
	require.Equal(t, []float32{11, 22}, bufs[1])
}
