package data

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// IDX magic numbers for unsigned-byte files: 0x00 0x00, type 0x08, and the
// number of dimensions.
const (
	MagicImages = 0x00000803 // [n, rows, cols] uint8
	MagicLabels = 0x00000801 // [n] uint8
)

// MaxPayload is the largest payload (product of the dimensions, in bytes)
// that the decoders accept. A header announcing more is rejected with
// ErrTooLarge before anything is allocated.
const MaxPayload = 1 << 31

// initialChunk is the first allocation when the payload length cannot be
// checked in advance (gzip, or a plain io.Reader). The buffer then doubles
// as data actually arrives, so a lying header costs at most twice the bytes
// really present, never the size it claims.
const initialChunk = 64 << 10

// Images is the content of an IDX image file: N images of Rows×Cols
// unsigned bytes, row-major, image after image.
type Images struct {
	N, Rows, Cols int
	Pix           []byte // len N*Rows*Cols
}

// ReadImages reads an IDX image file (magic 0x00000803), gzip-compressed or
// not; compression is detected from the first two bytes (1f 8b), not from
// the file name. Errors are *FileError values naming path; see the package
// documentation for the error policy.
func ReadImages(path string) (*Images, error) {
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dims, pix, err := decodeIDX(f, path, size, 3)
	if err != nil {
		return nil, err
	}
	return &Images{N: dims[0], Rows: dims[1], Cols: dims[2], Pix: pix}, nil
}

// ReadLabels reads an IDX label file (magic 0x00000801), gzip-compressed or
// not. It does not check the label values; use CheckLabels for that (Load
// does).
func ReadLabels(path string) ([]byte, error) {
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	_, labels, err := decodeIDX(f, path, size, 1)
	return labels, err
}

// DecodeImages is ReadImages on a stream; name is used in error messages.
// Because the stream length is unknown, the payload buffer grows as data
// arrives instead of being allocated from the header's claim.
func DecodeImages(r io.Reader, name string) (*Images, error) {
	dims, pix, err := decodeIDX(r, name, -1, 3)
	if err != nil {
		return nil, err
	}
	return &Images{N: dims[0], Rows: dims[1], Cols: dims[2], Pix: pix}, nil
}

// DecodeLabels is ReadLabels on a stream; name is used in error messages.
func DecodeLabels(r io.Reader, name string) ([]byte, error) {
	_, labels, err := decodeIDX(r, name, -1, 1)
	return labels, err
}

// CheckLabels returns an ErrLabelRange *FileError naming name if any label
// is >= classes.
func CheckLabels(labels []byte, classes int, name string) error {
	for i, l := range labels {
		if int(l) >= classes {
			return &FileError{Path: name, Err: ErrLabelRange,
				Detail: fmt.Sprintf("label %d of %d is %d, but there are only %d classes (0..%d)",
					i, len(labels), l, classes, classes-1),
				Hint: hintRedownload}
		}
	}
	return nil
}

// openSized opens path and returns its size (or -1 when it is not a regular
// file).
func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		fe := &FileError{Path: path, Detail: "cannot open", Cause: err}
		if errors.Is(err, os.ErrNotExist) {
			fe.Err = ErrNotFound
			fe.Detail = "file does not exist"
		}
		return nil, 0, fe
	}
	size := int64(-1)
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	return f, size, nil
}

// decodeIDX decodes an unsigned-byte IDX stream with wantDims dimensions.
// size is the exact length of r when known (a regular file), else -1; it is
// used only when the stream is not gzip-compressed.
func decodeIDX(r io.Reader, name string, size int64, wantDims int) (dims [3]int, payload []byte, err error) {
	fail := func(sentinel error, hint string, cause error, format string, args ...any) ([3]int, []byte, error) {
		return [3]int{}, nil, &FileError{Path: name, Err: sentinel, Detail: fmt.Sprintf(format, args...), Hint: hint, Cause: cause}
	}
	kind, other := "image", "label"
	if wantDims == 1 {
		kind, other = "label", "image"
	}

	br := bufio.NewReader(r)
	var src io.Reader = br
	var gz *gzip.Reader
	if head, _ := br.Peek(2); len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		gz, err = gzip.NewReader(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fail(ErrTruncated, hintRedownload, nil, "file ends inside the gzip header")
			}
			return fail(ErrCorrupt, hintRedownload, err, "bad gzip header")
		}
		gz.Multistream(false) // anything after the first member is garbage
		src = gz
		size = -1 // the compressed size says little about the content
	}

	// Header: 4 magic bytes, then one big-endian uint32 per dimension.
	var hdr [4 + 4*3]byte
	if k, err := io.ReadFull(src, hdr[:4]); err != nil {
		if k == 0 && gz == nil {
			return fail(ErrTruncated, hintRedownload, nil, "file is empty")
		}
		return failRead(name, err, fmt.Sprintf("file ends inside the 4-byte IDX magic number (got %d bytes)", k))
	}
	magic := binary.BigEndian.Uint32(hdr[:4])
	want := uint32(MagicImages)
	if wantDims == 1 {
		want = MagicLabels
	}
	if hdr[0] != 0 || hdr[1] != 0 {
		return fail(ErrBadMagic, "this is not an IDX "+kind+" file (an HTML page saved by a failed download, perhaps): re-download the dataset",
			nil, "magic number is 0x%08x, want 0x%08x", magic, want)
	}
	if hdr[2] != 0x08 {
		return fail(ErrBadType, "only unsigned-byte IDX files (MNIST, Fashion-MNIST) are supported",
			nil, "data type byte is 0x%02x (%s), want 0x08 (unsigned byte); magic 0x%08x", hdr[2], idxTypeName(hdr[2]), magic)
	}
	if int(hdr[3]) != wantDims {
		hint := hintRedownload
		if (wantDims == 3 && hdr[3] == 1) || (wantDims == 1 && hdr[3] == 3) {
			hint = "this looks like an IDX " + other + " file: check that the " + kind + " and " + other + " file names are not swapped"
		}
		return fail(ErrBadDims, hint, nil, "%d dimension(s) (magic 0x%08x), want %d for an %s file (magic 0x%08x)",
			hdr[3], magic, wantDims, kind, want)
	}
	hlen := 4 + 4*wantDims
	if k, err := io.ReadFull(src, hdr[4:hlen]); err != nil {
		return failRead(name, err, fmt.Sprintf("file ends inside the IDX header (%d of %d dimension bytes)", k, hlen-4))
	}
	total := uint64(1)
	for i := range wantDims {
		d := binary.BigEndian.Uint32(hdr[4+4*i:])
		dims[i] = int(d)
		total *= uint64(d) // at most 2^31 * 2^32 before the check below: no overflow
		if total > MaxPayload || total > math.MaxInt {
			return fail(ErrTooLarge, "the header is corrupt: re-download the dataset", nil,
				"dimensions %v multiply to more than %d bytes", dimList(hdr[4:hlen]), int64(MaxPayload))
		}
	}
	if wantDims == 3 && (dims[1] == 0 || dims[2] == 0) {
		return fail(ErrBadDims, hintRedownload, nil, "images are %dx%d pixels", dims[1], dims[2])
	}
	if size >= 0 { // exact length known: check before allocating
		expect := int64(hlen) + int64(total)
		switch {
		case size < expect:
			return fail(ErrTruncated, hintRedownload, nil, "header announces %v = %d payload bytes but the file has only %d after the %d-byte header",
				dimList(hdr[4:hlen]), total, size-int64(hlen), hlen)
		case size > expect:
			return fail(ErrTrailing, hintRedownload, nil, "file has %d bytes, %d more than the %d-byte header plus %v = %d payload bytes",
				size, size-expect, hlen, dimList(hdr[4:hlen]), total)
		}
		payload = make([]byte, total)
		if k, err := io.ReadFull(src, payload); err != nil {
			return failRead(name, err, fmt.Sprintf("read %d of %d payload bytes", k, total))
		}
	} else {
		payload, err = readPayload(src, int64(total))
		if err != nil {
			return failRead(name, err, fmt.Sprintf("header announces %v = %d payload bytes but the data ends after %d",
				dimList(hdr[4:hlen]), total, len(payload)))
		}
	}

	// Nothing may follow the payload. For gzip, reading to EOF also checks
	// the CRC-32 and length in the gzip trailer.
	var one [1]byte
	if k, err := io.ReadFull(src, one[:]); k > 0 {
		return fail(ErrTrailing, hintRedownload, nil, "data continues after the %d payload bytes the header announces", total)
	} else if err != io.EOF {
		where := "after the payload"
		if gz != nil {
			where = "reading the gzip trailer (CRC-32 and length) after the payload"
		}
		return failRead(name, err, where)
	}
	if gz != nil {
		if _, err := br.ReadByte(); err == nil {
			return fail(ErrTrailing, hintRedownload, nil, "bytes follow the end of the gzip stream")
		} else if err != io.EOF {
			return failRead(name, err, "after the gzip stream")
		}
	}
	return dims, payload, nil
}

// failRead classifies a read error: a short read means a truncated file,
// a gzip/flate error a corrupt one; anything else (an I/O error) is passed
// on as the cause.
func failRead(name string, err error, detail string) ([3]int, []byte, error) {
	fe := &FileError{Path: name, Detail: detail, Hint: hintRedownload}
	var corrupt flate.CorruptInputError
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		fe.Err = ErrTruncated
	case errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.As(err, &corrupt):
		fe.Err, fe.Cause = ErrCorrupt, err
	default:
		fe.Cause, fe.Hint = err, ""
	}
	return [3]int{}, nil, fe
}

// readPayload reads exactly n bytes from r, growing the buffer as data
// arrives. On error it returns what it read so far.
func readPayload(r io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, initialChunk))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, 2*int64(cap(buf))))
			copy(grown, buf)
			buf = grown
		}
		k, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

func dimList(b []byte) []uint32 {
	d := make([]uint32, len(b)/4)
	for i := range d {
		d[i] = binary.BigEndian.Uint32(b[4*i:])
	}
	return d
}

func idxTypeName(t byte) string {
	switch t {
	case 0x08:
		return "uint8"
	case 0x09:
		return "int8"
	case 0x0B:
		return "int16"
	case 0x0C:
		return "int32"
	case 0x0D:
		return "float32"
	case 0x0E:
		return "float64"
	}
	return "not an IDX type"
}
