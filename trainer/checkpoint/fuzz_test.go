package checkpoint

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// fuzzSeeds returns the seed corpus of FuzzDecode: valid files, truncations
// of them, and hand-mangled headers.
func fuzzSeeds(t testing.TB) [][]byte {
	valid := [][]byte{
		encode(t, &File{}),
		encode(t, &File{Metadata: map[string]string{"format": "pt", "step": "10"}}),
		encode(t, &File{Tensors: []Tensor{
			F32("w", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}),
			F64("b", []int{3}, []float64{-1, 0, math.Inf(1)}),
			I64("step", nil, []int64{42}),
			F32("empty", []int{0, 4}, nil),
			{Name: "mask", DType: DTypeBOOL, Shape: []int{3}, Data: []byte{1, 0, 1}},
			{Name: "h", DType: DTypeBF16, Shape: []int{1}, Data: []byte{0x80, 0x3f}},
		}, Metadata: map[string]string{"k": "v"}}),
		rawFile(validPairHeader, make([]byte, 12)),
		rawFile(`{"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 12)),
		rawFile(`{"e1":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"e2":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`, nil),
	}
	seeds := append([][]byte(nil), valid...)
	for _, v := range valid {
		for _, n := range []int{0, 4, 7, 8, 9, len(v) / 2, len(v) - 1} {
			if n >= 0 && n < len(v) {
				seeds = append(seeds, v[:n])
			}
		}
		// A header length one too large, and one too small.
		for _, delta := range []int64{1, -1} {
			m := bytes.Clone(v)
			n := int64(binary.LittleEndian.Uint64(m))
			binary.LittleEndian.PutUint64(m, uint64(n+delta))
			seeds = append(seeds, m)
		}
		// Flip a byte in the middle of the header.
		if len(v) > 12 {
			m := bytes.Clone(v)
			m[8+(len(v)-8)/3] ^= 0x5a
			seeds = append(seeds, m)
		}
	}
	for _, h := range []string{
		`{"a":}`, `{} x`, `{"__metadata__":{"k":1}}`, `{"__metadata__":null}`,
		`{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`,
		`{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`,
		`{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}`,
		`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}`,
		`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`,
		`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`,
		"{\"\xff\":1}",
	} {
		seeds = append(seeds, rawFile(h, make([]byte, 8)))
	}
	seeds = append(seeds, binary.LittleEndian.AppendUint64(nil, math.MaxUint64))
	return seeds
}

// FuzzDecode checks that Decode never panics, that every error wraps
// ErrCorrupt, and that whatever decodes re-encodes to a file that decodes to
// the same tensors, byte-identically on a second round.
func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Decode(b)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			var de *DecodeError
			require.ErrorAs(t, err, &de)
			return
		}
		// The tensors exactly cover the data buffer.
		total := 0
		for _, tensor := range file.Tensors {
			total += len(tensor.Data)
		}
		require.Equal(t, len(b)-8-int(binary.LittleEndian.Uint64(b)), total)

		var buf bytes.Buffer
		require.NoError(t, Encode(&buf, file))
		enc := buf.Bytes()
		require.Zero(t, binary.LittleEndian.Uint64(enc)%8)
		again, err := Decode(enc)
		require.NoError(t, err)
		requireSameFile(t, file, again)

		buf2 := bytes.Buffer{}
		require.NoError(t, Encode(&buf2, again))
		require.Equal(t, enc, buf2.Bytes())
	})
}

func TestFuzzSeedsCoverBothOutcomes(t *testing.T) {
	var ok, bad int
	for _, s := range fuzzSeeds(t) {
		if _, err := Decode(s); err == nil {
			ok++
		} else {
			bad++
		}
	}
	require.GreaterOrEqual(t, ok, 5, "seed corpus needs valid files")
	require.Greater(t, bad, 40, "seed corpus needs invalid files")
}
