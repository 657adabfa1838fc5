package rendezvous

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits enforced by the server (and checked by the client before sending).
const (
	MaxKeyLen    = 4 << 10  // bytes in a key
	MaxValueLen  = 64 << 20 // bytes in a value
	MaxStoreSize = 1 << 30  // bytes of keys and values in the whole store
	MaxWaitKeys  = 1024     // keys in one Wait
	// MaxPendingPerConn bounds the Gets and Waits one connection may have
	// blocked on the server at once.
	MaxPendingPerConn = 4096
)

// Wire format. Every message is a frame: a big-endian uint32 length, then
// that many bytes of payload.
//
// Request payload: op uint8, id uint64, then by op:
//
//	set:    keylen uint32, key, value (the rest of the frame)
//	get:    timeout_ms uint64 (0: none), keylen uint32, key
//	add:    delta int64, keylen uint32, key
//	wait:   timeout_ms uint64, count uint32, count × (keylen uint32, key)
//	cancel: nothing (id names the blocked get or wait to give up)
//
// Response payload: id uint64, status uint8, then by status:
//
//	ok:      the value (get), the new value as int64 (add), nothing (set, wait)
//	error:   a message
//	timeout: nothing
//
// A response with id 0 and status error reports a malformed request; the
// server closes the connection after it.
const (
	opSet    = 1
	opGet    = 2
	opAdd    = 3
	opWait   = 4
	opCancel = 5

	statusOK      = 0
	statusError   = 1
	statusTimeout = 2
)

const (
	reqHeader = 1 + 8
	// maxRequest is the largest request payload: a set with the largest
	// key and value (a wait with MaxWaitKeys keys of MaxKeyLen is smaller).
	maxRequest  = reqHeader + 4 + MaxKeyLen + MaxValueLen
	respHeader  = 8 + 1
	maxResponse = respHeader + MaxValueLen
	maxErrorMsg = 4 << 10
)

type request struct {
	op        byte
	id        uint64
	keys      []string // one key except for wait
	value     []byte   // set
	delta     int64    // add
	timeoutMS uint64   // get, wait
}

var errMalformed = errors.New("malformed request")

type decoder struct {
	p   []byte
	err error
}

func (d *decoder) fail(format string, a ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, a...))
	}
}

func (d *decoder) u64(what string) uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.p) < 8 {
		d.fail("truncated %s", what)
		return 0
	}
	v := binary.BigEndian.Uint64(d.p)
	d.p = d.p[8:]
	return v
}

func (d *decoder) u32(what string) uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.p) < 4 {
		d.fail("truncated %s", what)
		return 0
	}
	v := binary.BigEndian.Uint32(d.p)
	d.p = d.p[4:]
	return v
}

func (d *decoder) key() string {
	n := d.u32("key length")
	if d.err != nil {
		return ""
	}
	if n == 0 {
		d.fail("empty key")
		return ""
	}
	if n > MaxKeyLen {
		d.fail("key of %d bytes exceeds the limit of %d", n, MaxKeyLen)
		return ""
	}
	if uint32(len(d.p)) < n {
		d.fail("truncated key (%d of %d bytes)", len(d.p), n)
		return ""
	}
	k := string(d.p[:n])
	d.p = d.p[n:]
	return k
}

// decodeRequest parses a request payload. It never allocates more than the
// payload's own size and rejects any length beyond the limits.
func decodeRequest(p []byte) (request, error) {
	if len(p) < reqHeader {
		return request{}, fmt.Errorf("%w: %d-byte frame is shorter than a request header", errMalformed, len(p))
	}
	if len(p) > maxRequest {
		return request{}, fmt.Errorf("%w: %d-byte frame exceeds the limit of %d", errMalformed, len(p), maxRequest)
	}
	r := request{op: p[0], id: binary.BigEndian.Uint64(p[1:9])}
	if r.id == 0 {
		return r, fmt.Errorf("%w: request id 0 is reserved", errMalformed)
	}
	d := &decoder{p: p[reqHeader:]}
	switch r.op {
	case opSet:
		r.keys = []string{d.key()}
		if d.err == nil {
			if len(d.p) > MaxValueLen {
				d.fail("value of %d bytes exceeds the limit of %d", len(d.p), MaxValueLen)
			}
			r.value = d.p
			d.p = nil
		}
	case opGet:
		r.timeoutMS = d.u64("timeout")
		r.keys = []string{d.key()}
	case opAdd:
		r.delta = int64(d.u64("delta"))
		r.keys = []string{d.key()}
	case opWait:
		r.timeoutMS = d.u64("timeout")
		n := d.u32("key count")
		if d.err == nil {
			switch {
			case n == 0:
				d.fail("wait for no keys")
			case n > MaxWaitKeys:
				d.fail("wait for %d keys exceeds the limit of %d", n, MaxWaitKeys)
			case uint64(n)*5 > uint64(len(d.p)):
				d.fail("truncated wait: %d keys cannot fit in %d bytes", n, len(d.p))
			}
		}
		if d.err == nil {
			r.keys = make([]string, 0, n)
			for i := uint32(0); i < n && d.err == nil; i++ {
				r.keys = append(r.keys, d.key())
			}
		}
	case opCancel:
	default:
		return r, fmt.Errorf("%w: unknown operation %d", errMalformed, r.op)
	}
	if d.err == nil && len(d.p) != 0 {
		d.fail("%d trailing bytes", len(d.p))
	}
	if d.err != nil {
		return r, d.err
	}
	return r, nil
}

// encodeRequest is decodeRequest's inverse (without the frame length).
func encodeRequest(r request) []byte {
	b := []byte{r.op}
	b = binary.BigEndian.AppendUint64(b, r.id)
	putKey := func(k string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
	}
	switch r.op {
	case opSet:
		putKey(r.keys[0])
		b = append(b, r.value...)
	case opGet:
		b = binary.BigEndian.AppendUint64(b, r.timeoutMS)
		putKey(r.keys[0])
	case opAdd:
		b = binary.BigEndian.AppendUint64(b, uint64(r.delta))
		putKey(r.keys[0])
	case opWait:
		b = binary.BigEndian.AppendUint64(b, r.timeoutMS)
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.keys)))
		for _, k := range r.keys {
			putKey(k)
		}
	}
	return b
}

// readFrame reads one frame of at most max bytes. The buffer grows with
// the bytes that actually arrive, so a peer announcing a large frame and
// sending nothing costs no memory.
func readFrame(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(hdr[:]))
	if n > int64(max) {
		return nil, fmt.Errorf("%w: %d-byte frame exceeds the limit of %d", errMalformed, n, max)
	}
	const chunk = 1 << 20
	buf := make([]byte, 0, min(n, chunk))
	for int64(len(buf)) < n {
		want := min(n-int64(len(buf)), chunk)
		if cap(buf)-len(buf) < int(want) {
			nb := make([]byte, len(buf), min(n, int64(cap(buf))*2+want))
			copy(nb, buf)
			buf = nb
		}
		m, err := io.ReadFull(r, buf[len(buf):len(buf)+int(want)])
		buf = buf[:len(buf)+m]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

func validKey(k string) error {
	if k == "" {
		return errors.New("rendezvous: empty key")
	}
	if len(k) > MaxKeyLen {
		return fmt.Errorf("rendezvous: key of %d bytes exceeds the limit of %d", len(k), MaxKeyLen)
	}
	return nil
}
