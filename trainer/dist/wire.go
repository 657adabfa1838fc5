package dist

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// Wire format: every message is a 12-byte header followed by its payload.
//
//	offset size field
//	0      1    magic 0xD7
//	1      1    version (1)
//	2      1    op code
//	3      1    flags (0)
//	4      4    sequence number, uint32 little-endian, per connection and direction, from 0
//	8      4    payload length in bytes, uint32 little-endian
const (
	frameMagic   = 0xD7
	frameVersion = 1
	headerLen    = 12

	// maxFramePayload caps any data frame, whatever a peer claims.
	maxFramePayload = 64 << 20
	// maxControlPayload caps hello, reject, bye, abort and send-header frames.
	maxControlPayload = 4096
)

type opcode uint8

const (
	opHello         opcode = 1  // handshake: rank u32, size u32, prefix len u16, prefix
	opReject        opcode = 2  // handshake refused: reason text
	opBye           opcode = 3  // orderly close: reason text
	opAbort         opcode = 4  // abort: reason text
	opAllReduce     opcode = 10 // data
	opBroadcast     opcode = 11
	opAllGather     opcode = 12
	opReduceScatter opcode = 13
	opBarrier       opcode = 14 // empty
	opSendHdr       opcode = 15 // kind u8, element count u64
	opSendData      opcode = 16
)

func (o opcode) String() string {
	switch o {
	case opHello:
		return "hello"
	case opReject:
		return "reject"
	case opBye:
		return "bye"
	case opAbort:
		return "abort"
	case opAllReduce:
		return "AllReduce"
	case opBroadcast:
		return "Broadcast"
	case opAllGather:
		return "AllGather"
	case opReduceScatter:
		return "ReduceScatter"
	case opBarrier:
		return "Barrier"
	case opSendHdr:
		return "Send header"
	case opSendData:
		return "Send data"
	}
	return fmt.Sprintf("op %d", uint8(o))
}

func (o opcode) known() bool {
	return (o >= opHello && o <= opAbort) || (o >= opAllReduce && o <= opSendData)
}

type header struct {
	op  opcode
	seq uint32
	n   uint32
}

func putHeader(b []byte, h header) {
	b[0] = frameMagic
	b[1] = frameVersion
	b[2] = byte(h.op)
	b[3] = 0
	binary.LittleEndian.PutUint32(b[4:], h.seq)
	binary.LittleEndian.PutUint32(b[8:], h.n)
}

// protoErr is a malformed-input error; it matches ErrProtocol.
type protoErr struct {
	msg string
	// drain: the header was well formed (a frame of another collective or
	// an oversize one) and its payload of skip bytes was not read, so the
	// stream can be skipped forward, e.g. to find the peer's abort frame.
	drain bool
	skip  uint32
}

func (e *protoErr) Error() string        { return e.msg }
func (e *protoErr) Is(target error) bool { return target == ErrProtocol }

func protof(format string, args ...any) error { return &protoErr{msg: fmt.Sprintf(format, args...)} }

// goneErr reports a peer that said bye or abort; it matches ErrPeerLost.
type goneErr struct{ msg string }

func (e *goneErr) Error() string        { return e.msg }
func (e *goneErr) Is(target error) bool { return target == ErrPeerLost }

// parseHeader checks the static fields of a header.
func parseHeader(b []byte) (header, error) {
	if len(b) < headerLen {
		return header{}, protof("short header (%d bytes)", len(b))
	}
	if b[0] != frameMagic {
		return header{}, protof("bad magic 0x%02x (not a gotrain dist peer?)", b[0])
	}
	if b[1] != frameVersion {
		return header{}, protof("unsupported wire version %d (want %d)", b[1], frameVersion)
	}
	h := header{op: opcode(b[2]), seq: binary.LittleEndian.Uint32(b[4:]), n: binary.LittleEndian.Uint32(b[8:])}
	if !h.op.known() {
		return header{}, protof("unknown op code %d", b[2])
	}
	if b[3] != 0 {
		return header{}, protof("unknown flags 0x%02x", b[3])
	}
	return h, nil
}

// frameReader decodes frames from one direction of a connection.
type frameReader struct {
	r   io.Reader
	seq uint32 // next expected sequence number
	hdr [headerLen]byte
}

// next reads one header, expecting op want with a payload of at most max
// bytes, and returns the payload length (the caller reads the payload).
// A bye or abort frame from the peer returns a goneErr with its reason.
func (fr *frameReader) next(want opcode, max int) (int, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, err
	}
	h, err := parseHeader(fr.hdr[:])
	if err != nil {
		return 0, err
	}
	if h.seq != fr.seq {
		return 0, protof("out-of-order frame: sequence %d, want %d", h.seq, fr.seq)
	}
	if (h.op == opBye || h.op == opAbort || h.op == opReject) && h.op != want {
		if h.n > maxControlPayload {
			return 0, protof("%s frame of %d bytes (max %d)", h.op, h.n, maxControlPayload)
		}
		var buf [maxControlPayload]byte
		if _, err := io.ReadFull(fr.r, buf[:h.n]); err != nil {
			return 0, err
		}
		fr.seq++
		return 0, &goneErr{sanitize(buf[:h.n])}
	}
	if h.op != want {
		fr.seq++
		return 0, &protoErr{msg: fmt.Sprintf("got a %s frame, expected %s (ranks calling different collectives?)", h.op, want), drain: true, skip: h.n}
	}
	if max > maxFramePayload {
		max = maxFramePayload
	}
	if int64(h.n) > int64(max) {
		fr.seq++
		return 0, &protoErr{msg: fmt.Sprintf("%s frame of %d bytes, expected at most %d (mismatched lengths across ranks?)", h.op, h.n, max), drain: true, skip: h.n}
	}
	fr.seq++
	return int(h.n), nil
}

// readControl reads a whole control frame (op want) and returns its payload.
func (fr *frameReader) readControl(want opcode) ([]byte, error) {
	n, err := fr.next(want, maxControlPayload)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(fr.r, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

func sanitize(b []byte) string {
	s := strings.ToValidUTF8(string(b), "?")
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' {
			return ' '
		}
		return r
	}, s)
}

// hello is the handshake payload.
type hello struct {
	rank, size int
	prefix     string
}

func (h hello) encode() []byte {
	b := make([]byte, 10+len(h.prefix))
	binary.LittleEndian.PutUint32(b[0:], uint32(h.rank))
	binary.LittleEndian.PutUint32(b[4:], uint32(h.size))
	binary.LittleEndian.PutUint16(b[8:], uint16(len(h.prefix)))
	copy(b[10:], h.prefix)
	return b
}

func parseHello(b []byte) (hello, error) {
	if len(b) < 10 {
		return hello{}, protof("short hello (%d bytes)", len(b))
	}
	r, s := binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:])
	n := int(binary.LittleEndian.Uint16(b[8:]))
	if len(b) != 10+n {
		return hello{}, protof("hello of %d bytes with a %d-byte prefix", len(b), n)
	}
	if s == 0 || s > 1<<20 || r >= s {
		return hello{}, protof("hello with rank %d, size %d", r, s)
	}
	return hello{rank: int(r), size: int(s), prefix: string(b[10:])}, nil
}

// peer is the connection to one other rank.
type peer struct {
	rank int
	conn net.Conn
	fr   frameReader
	wsem chan struct{} // held while writing a message
	rsem chan struct{} // held while reading a message
	wseq uint32
	whdr [headerLen]byte
}

func newPeer(rank int, conn net.Conn, br *bufio.Reader) *peer {
	return &peer{
		rank: rank, conn: conn, fr: frameReader{r: br},
		wsem: make(chan struct{}, 1), rsem: make(chan struct{}, 1),
	}
}

// writeFrame writes one frame; the caller holds wsem.
func (p *peer) writeFrame(op opcode, payload []byte) error {
	putHeader(p.whdr[:], header{op: op, seq: p.wseq, n: uint32(len(payload))})
	p.wseq++
	if len(payload) == 0 {
		_, err := p.conn.Write(p.whdr[:])
		return err
	}
	bufs := net.Buffers{p.whdr[:], payload}
	_, err := bufs.WriteTo(p.conn)
	return err
}

var errLocalAbort = errors.New("communicator aborted")

// drainForGone skips the unread payload of a rejected frame and any frames
// after it, for at most wait, looking for the peer's bye or abort frame: a
// peer that aborted mid-collective leaves frames of that collective behind
// it, which are not a protocol error of their own. It returns the goneErr or
// the connection's error, or nil if the stream shows neither.
func (fr *frameReader) drainForGone(skip uint32) error {
	var junk [32 << 10]byte
	discard := func(n int64) error {
		for n > 0 {
			m, err := io.ReadFull(fr.r, junk[:min(n, int64(len(junk)))])
			if err != nil {
				return err
			}
			n -= int64(m)
		}
		return nil
	}
	if err := discard(int64(skip)); err != nil {
		return err
	}
	for {
		if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
			return err
		}
		h, err := parseHeader(fr.hdr[:])
		if err != nil || h.seq != fr.seq {
			return nil
		}
		fr.seq++
		if h.op == opBye || h.op == opAbort {
			if h.n > maxControlPayload {
				return nil
			}
			buf := make([]byte, h.n)
			if _, err := io.ReadFull(fr.r, buf); err != nil {
				return err
			}
			return &goneErr{sanitize(buf)}
		}
		if err := discard(int64(h.n)); err != nil {
			return err
		}
	}
}
