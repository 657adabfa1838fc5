package data

import (
	"bytes"
	"errors"
	"testing"
)

// The sentinels a decoder may report. Anything else must at least be a
// *FileError carrying a cause.
var decodeSentinels = []error{ErrBadMagic, ErrBadType, ErrBadDims, ErrTooLarge, ErrTruncated, ErrTrailing, ErrCorrupt}

// seeds returns a corpus for both decoders: valid files, damaged ones, and
// gzip versions of each.
func seeds() [][]byte {
	img := imagesIDX(2, 3, 4)
	lbl := labelsIDX(0, 9, 3)
	var out [][]byte
	for _, b := range [][]byte{
		img, lbl,
		imagesIDX(0, 1, 1), labelsIDX(),
		img[:len(img)-1], img[:10], lbl[:7], {}, {0}, {0, 0, 8},
		cat(img, []byte{0xff}), cat(lbl, []byte{1, 2}),
		idx(0x00000d03, []uint32{1, 1, 1}, make([]byte, 4)),
		idx(MagicImages, []uint32{0xffffffff, 0xffffffff, 0xffffffff}, nil),
		idx(MagicImages, []uint32{2, 1 << 15, 1 << 15}, []byte{1}),
		idx(MagicLabels, []uint32{1 << 31}, nil),
		[]byte("<html>"),
	} {
		out = append(out, b, gz(b))
	}
	g := gz(img)
	out = append(out, g[:len(g)/2], g[:len(g)-4], cat(g, []byte("x")), cat(g, g), []byte{0x1f, 0x8b})
	return out
}

// checkDecodeError asserts the error contract: a *FileError naming the
// stream, wrapping a known sentinel or a cause.
func checkDecodeError(t *testing.T, err error, name string) {
	var fe *FileError
	if !errors.As(err, &fe) {
		t.Fatalf("error is %T, not *FileError: %v", err, err)
	}
	if fe.Path != name {
		t.Fatalf("error names %q, want %q", fe.Path, name)
	}
	known := fe.Cause != nil
	for _, s := range decodeSentinels {
		known = known || errors.Is(err, s)
	}
	if !known {
		t.Fatalf("error wraps no sentinel and no cause: %v", err)
	}
}

func FuzzDecodeImages(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		img, err := DecodeImages(bytes.NewReader(in), "fuzz")
		if err != nil {
			if img != nil {
				t.Fatal("non-nil images with an error")
			}
			checkDecodeError(t, err, "fuzz")
			return
		}
		if img.N < 0 || img.Rows <= 0 || img.Cols <= 0 {
			t.Fatalf("bad dims %d %d %d", img.N, img.Rows, img.Cols)
		}
		if len(img.Pix) != img.N*img.Rows*img.Cols {
			t.Fatalf("len(Pix)=%d, want %d*%d*%d", len(img.Pix), img.N, img.Rows, img.Cols)
		}
		if int64(len(img.Pix)) > int64(len(in)) && !(len(in) >= 2 && in[0] == 0x1f && in[1] == 0x8b) {
			t.Fatalf("decoded %d bytes from a %d-byte uncompressed input", len(img.Pix), len(in))
		}
		// Re-encoding gives back the input exactly (after decompression).
		enc := idx(MagicImages, []uint32{uint32(img.N), uint32(img.Rows), uint32(img.Cols)}, img.Pix)
		if in[0] != 0x1f && !bytes.Equal(enc, in) {
			t.Fatal("re-encoded file differs from the input")
		}
		again, err := DecodeImages(bytes.NewReader(enc), "again")
		if err != nil || !bytes.Equal(again.Pix, img.Pix) {
			t.Fatalf("re-encoded file does not decode to the same images: %v", err)
		}
	})
}

func FuzzDecodeLabels(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		labels, err := DecodeLabels(bytes.NewReader(in), "fuzz")
		if err != nil {
			if labels != nil {
				t.Fatal("non-nil labels with an error")
			}
			checkDecodeError(t, err, "fuzz")
			return
		}
		enc := idx(MagicLabels, []uint32{uint32(len(labels))}, labels)
		if in[0] != 0x1f && !bytes.Equal(enc, in) {
			t.Fatal("re-encoded file differs from the input")
		}
		if in[0] == 0x1f {
			if again, err := DecodeLabels(bytes.NewReader(enc), "again"); err != nil || !bytes.Equal(again, labels) {
				t.Fatalf("re-encoded file does not decode to the same labels: %v", err)
			}
		}
		// CheckLabels accepts exactly the class counts above the largest label.
		top := -1
		for _, l := range labels {
			top = max(top, int(l))
		}
		if err := CheckLabels(labels, top+1, "fuzz"); err != nil {
			t.Fatalf("CheckLabels(classes=%d) rejects max label %d: %v", top+1, top, err)
		}
		if top >= 0 && !errors.Is(CheckLabels(labels, top, "fuzz"), ErrLabelRange) {
			t.Fatalf("CheckLabels(classes=%d) accepts label %d", top, top)
		}
	})
}
