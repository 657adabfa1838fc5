package data

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// idx builds an IDX file: magic, dims (big-endian uint32), payload.
func idx(magic uint32, dims []uint32, payload []byte) []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.BigEndian, magic)
	for _, d := range dims {
		_ = binary.Write(&b, binary.BigEndian, d)
	}
	b.Write(payload)
	return b.Bytes()
}

// imagesIDX builds a valid image file of n rows×cols images whose pixel i
// is byte(i*7+1).
func imagesIDX(n, rows, cols int) []byte {
	pix := make([]byte, n*rows*cols)
	for i := range pix {
		pix[i] = byte(i*7 + 1)
	}
	return idx(MagicImages, []uint32{uint32(n), uint32(rows), uint32(cols)}, pix)
}

// labelsIDX builds a valid label file.
func labelsIDX(labels ...byte) []byte {
	return idx(MagicLabels, []uint32{uint32(len(labels))}, labels)
}

func gz(b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	_, _ = w.Write(b)
	_ = w.Close()
	return out.Bytes()
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p
}
