package data

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io/fs"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDecodeImagesValid(t *testing.T) {
	raw := imagesIDX(3, 2, 4)
	tests := []struct {
		name string
		file string // file name used for ReadImages: compression is not guessed from it
		in   []byte
	}{
		{"raw", "img", raw},
		{"gzip", "img.gz", gz(raw)},
		{"gzip without .gz suffix", "img", gz(raw)},
		{"raw with .gz suffix", "img.gz", raw},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := func(img *Images, err error) {
				require.NoError(t, err)
				require.Equal(t, 3, img.N)
				require.Equal(t, 2, img.Rows)
				require.Equal(t, 4, img.Cols)
				require.Equal(t, raw[16:], img.Pix)
			}
			check(DecodeImages(bytes.NewReader(tc.in), tc.file))
			check(ReadImages(writeFile(t, t.TempDir(), tc.file, tc.in)))
		})
	}
}

func TestDecodeLabelsValid(t *testing.T) {
	raw := labelsIDX(5, 0, 4, 1, 9)
	for _, in := range [][]byte{raw, gz(raw)} {
		got, err := DecodeLabels(bytes.NewReader(in), "lbl")
		require.NoError(t, err)
		require.Equal(t, []byte{5, 0, 4, 1, 9}, got)
		got, err = ReadLabels(writeFile(t, t.TempDir(), "lbl", in))
		require.NoError(t, err)
		require.Equal(t, []byte{5, 0, 4, 1, 9}, got)
	}
	// Zero labels is a valid IDX file.
	got, err := DecodeLabels(bytes.NewReader(labelsIDX()), "empty")
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestDecodeImagesErrors(t *testing.T) {
	valid := imagesIDX(2, 3, 3)
	validGz := gz(valid)
	badCRC := bytes.Clone(validGz)
	badCRC[len(badCRC)-8] ^= 0xff // first byte of the CRC-32 in the gzip trailer
	badMethod := bytes.Clone(validGz)
	badMethod[2] = 7 // compression method must be 8 (deflate)

	tests := []struct {
		name  string
		in    []byte
		want  error
		inMsg string // substring the message must contain
	}{
		{"empty", nil, ErrTruncated, "empty"},
		{"short magic", []byte{0, 0, 8}, ErrTruncated, "magic"},
		{"short dims", valid[:9], ErrTruncated, "header"},
		{"no payload", valid[:16], ErrTruncated, "re-download"},
		{"short payload", valid[:len(valid)-1], ErrTruncated, "17"},
		{"trailing garbage", cat(valid, []byte{0}), ErrTrailing, "re-download"},
		{"bad magic", idx(0x12345678, []uint32{1, 1, 1}, []byte{0}), ErrBadMagic, "0x12345678"},
		{"html page", []byte("<!DOCTYPE html><html>Not Found</html>"), ErrBadMagic, "HTML"},
		{"float32 type", idx(0x00000d03, []uint32{1, 1, 1}, make([]byte, 4)), ErrBadType, "float32"},
		{"int32 type", idx(0x00000c03, []uint32{1, 1, 1}, make([]byte, 4)), ErrBadType, "int32"},
		{"label file", labelsIDX(1, 2), ErrBadDims, "swapped"},
		{"two dims", idx(0x00000802, []uint32{2, 2}, make([]byte, 4)), ErrBadDims, "2 dimension(s)"},
		{"zero rows", idx(MagicImages, []uint32{1, 0, 5}, nil), ErrBadDims, "0x5"},
		{"zero cols", idx(MagicImages, []uint32{1, 5, 0}, nil), ErrBadDims, "5x0"},
		{"absurd dims", idx(MagicImages, []uint32{0xffffffff, 0xffffffff, 0xffffffff}, nil), ErrTooLarge, "re-download"},
		{"just over limit", idx(MagicImages, []uint32{2, 1 << 15, 1<<15 + 1}, nil), ErrTooLarge, "2147483648"},
		{"at limit, no data", idx(MagicImages, []uint32{2, 1 << 15, 1 << 15}, []byte{1, 2, 3}), ErrTruncated, "2147483648"},
		{"gzip truncated header", validGz[:5], ErrTruncated, "gzip header"},
		{"gzip truncated stream", validGz[:len(validGz)/2], ErrTruncated, "re-download"},
		{"gzip missing trailer", validGz[:len(validGz)-4], ErrTruncated, "gzip trailer"},
		{"gzip bad checksum", badCRC, ErrCorrupt, "checksum"},
		{"gzip bad method", badMethod, ErrCorrupt, "gzip"},
		{"gzip garbage after stream", cat(validGz, []byte("junk")), ErrTrailing, "gzip stream"},
		{"gzip two members", cat(validGz, validGz), ErrTrailing, "gzip stream"},
		{"gzip trailing inside", gz(cat(valid, []byte{9})), ErrTrailing, "continues"},
		{"gzip short payload", gz(valid[:len(valid)-2]), ErrTruncated, "16"},
		{"gzip of garbage", gz([]byte("hello world")), ErrBadMagic, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := func(img *Images, err error, name string) {
				t.Helper()
				require.Nil(t, img)
				require.ErrorIs(t, err, tc.want)
				var fe *FileError
				require.ErrorAs(t, err, &fe)
				require.Equal(t, name, fe.Path)
				require.Contains(t, err.Error(), name)
				require.Contains(t, err.Error(), tc.inMsg)
			}
			img, err := DecodeImages(bytes.NewReader(tc.in), "stream-name")
			check(img, err, "stream-name")
			path := writeFile(t, t.TempDir(), "images.idx", tc.in)
			img, err = ReadImages(path)
			check(img, err, path)
		})
	}
}

func TestDecodeLabelsErrors(t *testing.T) {
	valid := labelsIDX(1, 2, 3)
	tests := []struct {
		name  string
		in    []byte
		want  error
		inMsg string
	}{
		{"empty", nil, ErrTruncated, "empty"},
		{"image file", imagesIDX(1, 2, 2), ErrBadDims, "swapped"},
		{"bad magic", []byte{1, 2, 3, 4, 5, 6, 7, 8}, ErrBadMagic, "0x01020304"},
		{"int8 type", idx(0x00000901, []uint32{1}, []byte{1}), ErrBadType, "int8"},
		{"short", valid[:len(valid)-1], ErrTruncated, ""},
		{"trailing", cat(valid, []byte{4}), ErrTrailing, ""},
		{"too large", idx(MagicLabels, []uint32{0xffffffff}, nil), ErrTooLarge, ""},
		{"gzip trailing", cat(gz(valid), []byte{0}), ErrTrailing, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeLabels(bytes.NewReader(tc.in), "labels-stream")
			require.Nil(t, got)
			require.ErrorIs(t, err, tc.want)
			require.Contains(t, err.Error(), "labels-stream")
			require.Contains(t, err.Error(), tc.inMsg)
			path := writeFile(t, t.TempDir(), "labels.idx", tc.in)
			got, err = ReadLabels(path)
			require.Nil(t, got)
			require.ErrorIs(t, err, tc.want)
			require.Contains(t, err.Error(), path)
		})
	}
}

func TestReadMissingAndUnreadable(t *testing.T) {
	dir := t.TempDir()
	_, err := ReadImages(dir + "/nope")
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.Contains(t, err.Error(), dir+"/nope")

	_, err = ReadLabels(dir + "/nope")
	require.ErrorIs(t, err, ErrNotFound)

	// A directory opens but cannot be read: an error, not a panic.
	_, err = ReadImages(dir)
	require.Error(t, err)
	require.Contains(t, err.Error(), dir)
}

// A header that claims far more data than present must not make the
// decoder allocate what it claims.
func TestLyingHeaderDoesNotAllocate(t *testing.T) {
	in := idx(MagicImages, []uint32{2, 1 << 15, 1 << 15}, make([]byte, 1000)) // claims 2 GiB
	inGz := gz(in)
	path := writeFile(t, t.TempDir(), "liar", in)
	for name, decode := range map[string]func() error{
		"stream": func() error { _, err := DecodeImages(bytes.NewReader(in), "x"); return err },
		"gzip":   func() error { _, err := DecodeImages(bytes.NewReader(inGz), "x"); return err },
		"file":   func() error { _, err := ReadImages(path); return err },
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := decode()
		runtime.ReadMemStats(&after)
		require.ErrorIs(t, err, ErrTruncated, name)
		require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "%s allocated too much", name)
	}
}

// A large valid stream decodes through the growing buffer intact.
func TestDecodeLargeStream(t *testing.T) {
	raw := imagesIDX(1000, 28, 28) // 784000 bytes: several buffer doublings
	for _, in := range [][]byte{raw, gz(raw)} {
		img, err := DecodeImages(bytes.NewReader(in), "big")
		require.NoError(t, err)
		require.Equal(t, 1000, img.N)
		require.True(t, bytes.Equal(raw[16:], img.Pix))
	}
}

func TestCheckLabels(t *testing.T) {
	tests := []struct {
		labels  []byte
		classes int
		bad     string // "" if valid, else substring of the message
	}{
		{[]byte{0, 9, 5}, 10, ""},
		{nil, 10, ""},
		{[]byte{0, 10}, 10, "label 1 of 2 is 10"},
		{[]byte{255}, 10, "only 10 classes"},
		{[]byte{1}, 1, "label 0 of 1 is 1"},
	}
	for _, tc := range tests {
		err := CheckLabels(tc.labels, tc.classes, "lbl-file")
		if tc.bad == "" {
			require.NoError(t, err)
			continue
		}
		require.ErrorIs(t, err, ErrLabelRange)
		require.Contains(t, err.Error(), "lbl-file")
		require.Contains(t, err.Error(), tc.bad)
	}
}

func TestFileErrorFormat(t *testing.T) {
	e := &FileError{Path: "p", Err: ErrTruncated, Detail: "d", Hint: "h", Cause: gzip.ErrChecksum}
	require.Equal(t, "data: p: truncated file: d: gzip: invalid checksum; h", e.Error())
	require.ErrorIs(t, e, ErrTruncated)
	require.ErrorIs(t, e, gzip.ErrChecksum)
	require.False(t, errors.Is(e, ErrBadMagic))
	require.Equal(t, "data: p", (&FileError{Path: "p"}).Error())
	require.Empty(t, (&FileError{Path: "p"}).Unwrap())
	require.True(t, strings.HasPrefix(e.Error(), "data: p: "))
}
