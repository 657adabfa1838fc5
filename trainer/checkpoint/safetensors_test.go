package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// rawFile assembles a safetensors file from a literal header and data, with
// no padding or validation, for hand-made (often invalid) inputs.
func rawFile(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func encode(t testing.TB, f *File) []byte {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, Encode(&buf, f))
	return buf.Bytes()
}

// headerOf returns the JSON header of an encoded file, padding included.
func headerOf(t testing.TB, b []byte) []byte {
	t.Helper()
	require.GreaterOrEqual(t, len(b), 8)
	n := binary.LittleEndian.Uint64(b)
	require.LessOrEqual(t, n, uint64(len(b)-8))
	return b[8 : 8+n]
}

// requireSameFile checks that two files hold the same tensors in the same
// order and the same metadata (nil and empty metadata are equal).
func requireSameFile(t testing.TB, want, got *File) {
	t.Helper()
	require.Len(t, got.Tensors, len(want.Tensors))
	for i, w := range want.Tensors {
		g := got.Tensors[i]
		require.Equal(t, w.Name, g.Name, "tensor %d", i)
		require.Equal(t, w.DType, g.DType, "tensor %q", w.Name)
		require.Equal(t, len(w.Shape), len(g.Shape), "tensor %q rank", w.Name)
		for j := range w.Shape {
			require.Equal(t, w.Shape[j], g.Shape[j], "tensor %q dim %d", w.Name, j)
		}
		require.True(t, bytes.Equal(w.Data, g.Data), "tensor %q data", w.Name)
	}
	require.Equal(t, len(want.Metadata), len(got.Metadata))
	for k, v := range want.Metadata {
		require.Equal(t, v, got.Metadata[k], "metadata %q", k)
	}
}

func TestEncodeGoldenBytes(t *testing.T) {
	f := &File{
		Tensors: []Tensor{
			F32("w", []int{2}, []float32{1, -2}),
			I64("step", nil, []int64{7}),
		},
		Metadata: map[string]string{"format": "pt"},
	}
	header := `{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},` +
		`"step":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}`
	for len(header)%8 != 0 {
		header += " "
	}
	want := rawFile(header, []byte{
		0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, // 1.0, -2.0 little-endian
		0x07, 0, 0, 0, 0, 0, 0, 0,
	})
	require.Equal(t, string(want), string(encode(t, f)))
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	allDTypes := &File{}
	for i, dt := range []DType{DTypeBOOL, DTypeU8, DTypeI8, DTypeF8E5M2, DTypeF8E4M3, DTypeF8E8M0, DTypeI16, DTypeU16,
		DTypeF16, DTypeBF16, DTypeI32, DTypeU32, DTypeF32, DTypeF64, DTypeI64, DTypeU64, DTypeC64} {
		data := make([]byte, 3*dt.Size())
		for j := range data {
			data[j] = byte(i*31 + j)
		}
		allDTypes.Tensors = append(allDTypes.Tensors, Tensor{Name: string(dt), DType: dt, Shape: []int{3}, Data: data})
	}
	tests := []struct {
		name string
		file *File
	}{
		{"empty", &File{}},
		{"metadata only", &File{Metadata: map[string]string{"a": "1", "": "empty key", "z": ""}}},
		{"scalar", &File{Tensors: []Tensor{F32("s", nil, []float32{math.Pi})}}},
		{"matrix", &File{Tensors: []Tensor{F32("m", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6})}}},
		{"zero-size tensors share an offset", &File{Tensors: []Tensor{
			F32("a", []int{1}, []float32{1}),
			F32("empty1", []int{0}, nil),
			F64("empty2", []int{3, 0, 2}, nil),
			I64("b", []int{1}, []int64{-1}),
		}}},
		{"order is kept, not sorted", &File{Tensors: []Tensor{
			I32("zeta", []int{2}, []int32{1, 2}),
			F64("alpha", []int{1}, []float64{0.5}),
			F32("mid", []int{1, 1, 1}, []float32{-0}),
		}}},
		{"names needing escapes", &File{
			Tensors:  []Tensor{F32("layer.0/\"w\"\\<&>\n\tünï", []int{1}, []float32{1}), F32("", []int{1}, []float32{2})},
			Metadata: map[string]string{"quote\"": "line\nbreak", "html": "<a&b>"},
		}},
		{"special floats", &File{Tensors: []Tensor{
			F32("f", []int{4}, []float32{float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), math.SmallestNonzeroFloat32}),
			F64("d", []int{2}, []float64{math.MaxFloat64, -math.SmallestNonzeroFloat64}),
		}}},
		{"every dtype", allDTypes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := encode(t, tc.file)
			require.Zero(t, len(headerOf(t, b))%8, "header must be padded to a multiple of 8")
			require.Equal(t, byte('{'), headerOf(t, b)[0])

			got, err := Decode(b)
			require.NoError(t, err)
			requireSameFile(t, tc.file, got)
			for _, want := range tc.file.Tensors {
				g, ok := got.Get(want.Name)
				require.True(t, ok, "Get(%q)", want.Name)
				require.Equal(t, want.DType, g.DType)
			}
			_, ok := got.Get("no such tensor")
			require.False(t, ok)
			// Re-encoding a decoded file reproduces the bytes exactly.
			require.Equal(t, b, encode(t, got))
		})
	}
}

func TestEncodeOffsetsAreContiguousInGivenOrder(t *testing.T) {
	f := &File{Tensors: []Tensor{
		F64("c", []int{2}, []float64{1, 2}),
		{Name: "a", DType: DTypeU8, Shape: []int{3}, Data: []byte{1, 2, 3}},
		F32("b", []int{1}, []float32{1}),
	}}
	var hdr map[string]struct {
		DataOffsets [2]int `json:"data_offsets"`
	}
	require.NoError(t, json.Unmarshal(headerOf(t, encode(t, f)), &hdr))
	require.Equal(t, [2]int{0, 16}, hdr["c"].DataOffsets)
	require.Equal(t, [2]int{16, 19}, hdr["a"].DataOffsets)
	require.Equal(t, [2]int{19, 23}, hdr["b"].DataOffsets)
}

func TestEncodeRejectsInvalidFiles(t *testing.T) {
	tests := []struct {
		name    string
		file    *File
		wantMsg string
	}{
		{"nil file", nil, "nil *File"},
		{"unknown dtype", &File{Tensors: []Tensor{{Name: "x", DType: "F128", Shape: []int{1}, Data: make([]byte, 16)}}}, `"x": unknown dtype "F128"`},
		{"too few bytes", &File{Tensors: []Tensor{F32("x", []int{3}, []float32{1, 2})}}, `"x": has 8 data bytes, but F32 with shape [3] needs 12`},
		{"too many bytes", &File{Tensors: []Tensor{F32("x", nil, []float32{1, 2})}}, `needs 4`},
		{"negative dim", &File{Tensors: []Tensor{F32("x", []int{2, -1}, nil)}}, "dimension 1 is negative"},
		{"overflowing shape", &File{Tensors: []Tensor{F32("x", []int{math.MaxInt / 2, 3}, nil)}}, "size overflows"},
		{"duplicate names", &File{Tensors: []Tensor{F32("x", nil, []float32{1}), F32("x", nil, []float32{2})}}, `"x": duplicate tensor name`},
		{"reserved name", &File{Tensors: []Tensor{F32("__metadata__", nil, []float32{1})}}, "reserved for metadata"},
		{"invalid UTF-8 name", &File{Tensors: []Tensor{F32("\xff", nil, []float32{1})}}, "not valid UTF-8"},
		{"invalid UTF-8 metadata", &File{Metadata: map[string]string{"k": "\xfe"}}, `metadata entry "k" is not valid UTF-8`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Encode(&buf, tc.file)
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, tc.wantMsg)
			require.Zero(t, buf.Len(), "nothing may be written for an invalid file")
		})
	}
}

// validPair is a two-tensor file used to build hostile variants.
const validPairHeader = `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}}`

func TestDecodeRejectsCorruptFiles(t *testing.T) {
	data12 := make([]byte, 12)
	valid := rawFile(validPairHeader, data12)
	bigLen := binary.LittleEndian.AppendUint64(nil, MaxHeaderSize+1)
	hugeLen := binary.LittleEndian.AppendUint64(nil, math.MaxUint64)
	entry := func(dtype, shape, offsets string) string {
		return `{"x":{"dtype":` + dtype + `,"shape":` + shape + `,"data_offsets":` + offsets + `}}`
	}
	tests := []struct {
		name       string
		in         []byte
		wantTensor string // DecodeError.Tensor
		wantMsg    string
	}{
		{"empty input", nil, "", "fewer than the 8-byte header length prefix"},
		{"7 bytes", valid[:7], "", "fewer than the 8-byte"},
		{"header length above the cap", append(bigLen, "{}"...), "", "exceeds the 100000000-byte limit"},
		{"header length max uint64", append(hugeLen, "{}"...), "", "exceeds the 100000000-byte limit"},
		{"header length beyond file", valid[:8+len(validPairHeader)-1], "", "truncated file?"},
		{"truncated data", valid[:len(valid)-1], "b", "extend past the 11-byte data buffer"},
		{"empty header", rawFile("", nil), "", "does not start with '{'"},
		{"header not an object", rawFile("[]      ", nil), "", "does not start with '{'"},
		{"leading whitespace", rawFile(" {}     ", nil), "", "does not start with '{'"},
		{"invalid JSON", rawFile(`{"a":}  `, nil), "a", "invalid JSON header"},
		{"unterminated JSON", rawFile(`{"a":{"dtype":"F32"`, nil), "a", "invalid JSON header"},
		{"invalid UTF-8", rawFile("{\"\xff\":1}", nil), "", "not valid UTF-8"},
		{"trailing garbage", rawFile(`{} x`, nil), "", "invalid JSON header"},
		{"second JSON value", rawFile(`{}{}`, nil), "", `unexpected "{" after the header object`},
		{"NUL padding", rawFile("{}\x00\x00\x00\x00\x00\x00", nil), "", "invalid JSON header"},
		{"entry not an object", rawFile(`{"x":[1]}`, nil), "x", `header entry: expected "{", found "["`},
		{"unknown dtype", rawFile(entry(`"F128"`, `[1]`, `[0,16]`), make([]byte, 16)), "x", `unknown dtype "F128"`},
		{"dtype lowercase", rawFile(entry(`"f32"`, `[1]`, `[0,4]`), make([]byte, 4)), "x", `unknown dtype "f32"`},
		{"dtype not a string", rawFile(entry(`4`, `[1]`, `[0,4]`), make([]byte, 4)), "x", "dtype: expected a string, found number 4"},
		{"negative shape", rawFile(entry(`"F32"`, `[-1]`, `[0,4]`), make([]byte, 4)), "x", "shape: negative value -1"},
		{"fractional shape", rawFile(entry(`"F32"`, `[1.5]`, `[0,4]`), make([]byte, 4)), "x", "shape: 1.5 is not an integer"},
		{"exponent shape", rawFile(entry(`"F32"`, `[1e0]`, `[0,4]`), make([]byte, 4)), "x", "is not an integer"},
		{"shape above int64", rawFile(entry(`"F32"`, `[99999999999999999999]`, `[0,4]`), make([]byte, 4)), "x", "is not an integer"},
		{"shape string", rawFile(entry(`"F32"`, `["1"]`, `[0,4]`), make([]byte, 4)), "x", `shape: expected an integer, found string "1"`},
		{"shape not an array", rawFile(entry(`"F32"`, `4`, `[0,4]`), make([]byte, 4)), "x", `shape: expected "[", found number 4`},
		{"overflowing shape", rawFile(entry(`"F32"`, `[4294967296,4294967296]`, `[0,4]`), make([]byte, 4)), "x", "size overflows"},
		{"overflow hidden by a zero dim", rawFile(entry(`"F32"`, `[0,4294967296,4294967296]`, `[0,0]`), nil), "x", "size overflows"},
		{"one offset", rawFile(entry(`"F32"`, `[1]`, `[4]`), make([]byte, 4)), "x", "data_offsets has 1 values, want 2"},
		{"three offsets", rawFile(entry(`"F32"`, `[1]`, `[0,4,4]`), make([]byte, 4)), "x", "data_offsets has 3 values, want 2"},
		{"negative offset", rawFile(entry(`"F32"`, `[1]`, `[-4,0]`), make([]byte, 4)), "x", "data_offsets: negative value -4"},
		{"offsets reversed", rawFile(entry(`"F32"`, `[1]`, `[4,0]`), make([]byte, 4)), "x", "end before they begin"},
		{"span too small for shape", rawFile(entry(`"F32"`, `[2]`, `[0,4]`), make([]byte, 4)), "x", "span 4 bytes, but F32 with shape [2] needs 8"},
		{"span too big for shape", rawFile(entry(`"F32"`, `[]`, `[0,8]`), make([]byte, 8)), "x", "needs 4"},
		{"offsets out of range", rawFile(entry(`"F32"`, `[1]`, `[4,8]`), make([]byte, 4)), "x", "extend past the 4-byte data buffer"},
		{"huge offsets", rawFile(entry(`"U8"`, `[1]`, `[9223372036854775806,9223372036854775807]`), make([]byte, 1)), "x", "extend past"},
		{"offset above int64", rawFile(entry(`"U8"`, `[1]`, `[0,18446744073709551615]`), make([]byte, 1)), "x", "is not an integer in [0, 9223372036854775807]"},
		{"missing dtype", rawFile(`{"x":{"shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), "x", `missing field "dtype"`},
		{"missing shape", rawFile(`{"x":{"dtype":"F32","data_offsets":[0,4]}}`, make([]byte, 4)), "x", `missing field "shape"`},
		{"missing offsets", rawFile(`{"x":{"dtype":"F32","shape":[1]}}`, make([]byte, 4)), "x", `missing field "data_offsets"`},
		{"unknown field", rawFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"stride":[1]}}`, make([]byte, 4)), "x", `unknown field "stride"`},
		{"duplicate field", rawFile(`{"x":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), "x", `duplicate field "dtype"`},
		{"duplicate tensor", rawFile(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, make([]byte, 2)), "x", "duplicate tensor name"},
		{"overlap", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), "b", `overlap tensor "a", which ends at 8`},
		{"identical offsets", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), "b", `overlap tensor "a"`},
		{"empty tensor inside another", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}`, make([]byte, 8)), "e", "overlap"},
		{"hole at start", rawFile(entry(`"F32"`, `[1]`, `[4,8]`), make([]byte, 8)), "x", "bytes [0, 4) before this tensor belong to no tensor"},
		{"hole between", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[6,10]}}`, make([]byte, 10)), "b", "hole in the data buffer: bytes [4, 6)"},
		{"trailing bytes", rawFile(validPairHeader, make([]byte, 13)), "", "data buffer has 13 bytes, but the tensors cover only 12"},
		{"data without tensors", rawFile(`{}`, []byte{1}), "", "data buffer has 1 bytes, but the tensors cover only 0"},
		{"metadata not an object", rawFile(`{"__metadata__":"x"}`, nil), "", `__metadata__ is not a JSON object (found string "x")`},
		{"metadata number value", rawFile(`{"__metadata__":{"step":5}}`, nil), "", `__metadata__ value for "step" is not a string (found number 5)`},
		{"metadata null value", rawFile(`{"__metadata__":{"k":null}}`, nil), "", `value for "k" is not a string (found null)`},
		{"metadata nested value", rawFile(`{"__metadata__":{"k":{"a":"b"}}}`, nil), "", `value for "k" is not a string`},
		{"metadata duplicate key", rawFile(`{"__metadata__":{"k":"a","k":"b"}}`, nil), "", `duplicate __metadata__ key "k"`},
		{"metadata twice", rawFile(`{"__metadata__":{},"__metadata__":{}}`, nil), "", "duplicate __metadata__"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Decode(tc.in)
			require.Nil(t, f)
			require.ErrorIs(t, err, ErrCorrupt)
			var de *DecodeError
			require.ErrorAs(t, err, &de)
			require.Equal(t, tc.wantTensor, de.Tensor)
			require.Contains(t, err.Error(), tc.wantMsg)
			require.True(t, strings.HasPrefix(err.Error(), "checkpoint: corrupt safetensors file"), err.Error())
			if tc.wantTensor != "" {
				require.Contains(t, err.Error(), `tensor "`+tc.wantTensor+`"`)
			}
		})
	}
}

func TestDecodeAcceptsUnusualValidFiles(t *testing.T) {
	tests := []struct {
		name      string
		in        []byte
		wantOrder []string
		wantMeta  map[string]string
	}{
		{
			name:      "header lists tensors out of data order",
			in:        rawFile(`{"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 12)),
			wantOrder: []string{"a", "b"},
		},
		{
			name:      "whitespace, newline padding, metadata last",
			in:        rawFile("{ \"a\" : { \"shape\" : [ 2 ] , \"data_offsets\" : [0, 8], \"dtype\":\"F32\" },\n \"__metadata__\": {\"k\": \"v\"} }\n\t  ", make([]byte, 8)),
			wantOrder: []string{"a"},
			wantMeta:  map[string]string{"k": "v"},
		},
		{
			name: "null metadata",
			in:   rawFile(`{"__metadata__":null}`, nil),
		},
		{
			name:      "unpadded header",
			in:        rawFile(`{"s":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}`, []byte{9}),
			wantOrder: []string{"s"},
		},
		{
			name:      "escaped names",
			in:        rawFile(`{"\u00fc\"\n":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}`, []byte{1}),
			wantOrder: []string{"ü\"\n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Decode(tc.in)
			require.NoError(t, err)
			var names []string
			for _, tt := range f.Tensors {
				names = append(names, tt.Name)
			}
			require.Equal(t, tc.wantOrder, names)
			require.Equal(t, tc.wantMeta, f.Metadata)
		})
	}
}

func TestDecodedDataAliasesInputWithoutOverlap(t *testing.T) {
	b := rawFile(validPairHeader, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f, err := Decode(b)
	require.NoError(t, err)
	a, ok := f.Get("a")
	require.True(t, ok)
	require.Equal(t, 8, cap(a.Data), "capacity must stop at the tensor's end")
	_ = append(a.Data, 0xff) // must reallocate, not clobber "b"
	bt, _ := f.Get("b")
	require.Equal(t, []byte{9, 10, 11, 12}, bt.Data)
}

func TestTypedAccessors(t *testing.T) {
	f32 := F32("w", []int{2, 2}, []float32{1.5, -2, 0, float32(math.Inf(1))})
	tests := []struct {
		name    string
		call    func() (any, error)
		want    any
		wantErr string
	}{
		{"Float32s", func() (any, error) { return f32.Float32s() }, []float32{1.5, -2, 0, float32(math.Inf(1))}, ""},
		{"Float64s", func() (any, error) { return F64("d", []int{2}, []float64{math.Pi, -1}).Float64s() }, []float64{math.Pi, -1}, ""},
		{"Int64s", func() (any, error) { return I64("i", []int{3}, []int64{math.MinInt64, 0, math.MaxInt64}).Int64s() }, []int64{math.MinInt64, 0, math.MaxInt64}, ""},
		{"Int32s", func() (any, error) { return I32("i", nil, []int32{-7}).Int32s() }, []int32{-7}, ""},
		{"Float32s on F64", func() (any, error) { return F64("d", []int{1}, []float64{1}).Float32s() }, nil, `"d": dtype is F64, not F32`},
		{"Float64s on F32", func() (any, error) { return f32.Float64s() }, nil, "dtype is F32, not F64"},
		{"Int64s on I32", func() (any, error) { return I32("i", []int{1}, []int32{1}).Int64s() }, nil, "dtype is I32, not I64"},
		{"Float32s short data", func() (any, error) { return F32("w", []int{3}, []float32{1, 2}).Float32s() }, nil, "has 8 data bytes, but shape [3] needs 12"},
		{"Float32s bad shape", func() (any, error) { return F32("w", []int{-1}, nil).Float32s() }, nil, "negative"},
		{"Float32sInto wrong length", func() (any, error) { return nil, f32.Float32sInto(make([]float32, 3)) }, nil, "destination has 3 elements, tensor has 4"},
		{"NumElements", func() (any, error) { return f32.NumElements() }, 4, ""},
		{"NumElements scalar", func() (any, error) { return F32("s", nil, []float32{1}).NumElements() }, 1, ""},
		{"NumElements zero", func() (any, error) { return F32("s", []int{5, 0}, nil).NumElements() }, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.call()
			if tc.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalid)
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestFloat32sIntoDoesNotAllocate(t *testing.T) {
	src := make([]float32, 1000)
	for i := range src {
		src[i] = float32(i) / 3
	}
	tensor := F32("w", []int{10, 100}, src)
	dst := make([]float32, len(src))
	allocs := testing.AllocsPerRun(20, func() {
		if err := tensor.Float32sInto(dst); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs)
	require.Equal(t, src, dst)
}

func TestConstructorsCopy(t *testing.T) {
	shape := []int{2}
	v := []float32{1, 2}
	tensor := F32("w", shape, v)
	shape[0], v[0] = 99, 99
	require.Equal(t, []int{2}, tensor.Shape)
	got, err := tensor.Float32s()
	require.NoError(t, err)
	require.Equal(t, []float32{1, 2}, got)
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	want := &File{Tensors: []Tensor{F32("w", []int{2}, []float32{1, 2})}, Metadata: map[string]string{"step": "3"}}
	require.NoError(t, os.WriteFile(good, encode(t, want), 0o644))
	got, err := ReadFile(good)
	require.NoError(t, err)
	requireSameFile(t, want, got)

	bad := filepath.Join(dir, "bad.safetensors")
	require.NoError(t, os.WriteFile(bad, rawFile(`{"layer1.w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)), 0o644))
	_, err = ReadFile(bad)
	require.ErrorIs(t, err, ErrCorrupt)
	require.ErrorContains(t, err, "corrupt safetensors file "+bad+`: tensor "layer1.w": data_offsets [0, 4] span 4 bytes`)

	_, err = ReadFile(filepath.Join(dir, "missing.safetensors"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.False(t, errors.Is(err, ErrCorrupt))
	require.ErrorContains(t, err, "missing.safetensors")
}

func TestDecodeErrorTruncatesLongNames(t *testing.T) {
	name := strings.Repeat("ü", 200)
	_, err := Decode(rawFile(`{"`+name+`":{"dtype":"X"}}`, nil))
	require.ErrorIs(t, err, ErrCorrupt)
	require.Less(t, len(err.Error()), 200, "message must not echo a huge name: %s", err)
	require.Contains(t, err.Error(), `"...: unknown dtype "X"`)
}
