package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"unicode/utf8"
)

// MaxHeaderSize is the largest JSON header Decode accepts, in bytes. It is
// the same limit the reference Rust implementation enforces; it bounds the
// memory a hostile header can make the decoder allocate.
const MaxHeaderSize = 100_000_000

// metadataKey is the reserved header key holding the string->string metadata.
const metadataKey = "__metadata__"

// Sentinel errors. Errors returned by this package wrap exactly one of them
// (or an *os.PathError / *fs.PathError for plain I/O failures), so callers
// can branch with errors.Is.
var (
	// ErrCorrupt is wrapped by every error Decode and ReadFile return for
	// bytes that are not a valid safetensors file. The concrete error is a
	// *DecodeError.
	ErrCorrupt = errors.New("corrupt safetensors file")
	// ErrInvalid is wrapped by errors about tensors or files that cannot be
	// encoded (bad dtype, shape/data mismatch, duplicate names, ...) and by
	// typed accessors such as Tensor.Float32s when the dtype or size does
	// not match.
	ErrInvalid = errors.New("checkpoint: invalid tensor")
	// ErrNoCheckpoint is wrapped when a directory holds no checkpoint.
	ErrNoCheckpoint = errors.New("checkpoint: no checkpoint found")
)

// DecodeError describes why bytes could not be decoded as safetensors. It
// wraps ErrCorrupt.
type DecodeError struct {
	Path   string // file name, set by ReadFile; empty for Decode
	Tensor string // tensor the problem concerns, if any
	Reason string
}

func (e *DecodeError) Error() string {
	s := "checkpoint: corrupt safetensors file"
	if e.Path != "" {
		s += " " + e.Path
	}
	if e.Tensor != "" {
		s += ": tensor " + quoteName(e.Tensor)
	}
	return s + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *DecodeError) Unwrap() error { return ErrCorrupt }

// quoteName quotes a (possibly hostile, very long) tensor name for messages.
func quoteName(name string) string {
	const max = 80
	if len(name) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(name[cut]) {
			cut--
		}
		return strconv.Quote(name[:cut]) + "..."
	}
	return strconv.Quote(name)
}

// DType is a safetensors element type, spelled as in the file header.
type DType string

// Element types understood by this package (all byte-sized or wider; the
// sub-byte types of newer safetensors versions are not supported).
const (
	DTypeBOOL   DType = "BOOL"
	DTypeU8     DType = "U8"
	DTypeI8     DType = "I8"
	DTypeF8E5M2 DType = "F8_E5M2"
	DTypeF8E4M3 DType = "F8_E4M3"
	DTypeF8E8M0 DType = "F8_E8M0"
	DTypeI16    DType = "I16"
	DTypeU16    DType = "U16"
	DTypeF16    DType = "F16"
	DTypeBF16   DType = "BF16"
	DTypeI32    DType = "I32"
	DTypeU32    DType = "U32"
	DTypeF32    DType = "F32"
	DTypeF64    DType = "F64"
	DTypeI64    DType = "I64"
	DTypeU64    DType = "U64"
	DTypeC64    DType = "C64"
)

var dtypeSizes = map[DType]int{
	DTypeBOOL: 1, DTypeU8: 1, DTypeI8: 1, DTypeF8E5M2: 1, DTypeF8E4M3: 1, DTypeF8E8M0: 1,
	DTypeI16: 2, DTypeU16: 2, DTypeF16: 2, DTypeBF16: 2,
	DTypeI32: 4, DTypeU32: 4, DTypeF32: 4,
	DTypeF64: 8, DTypeI64: 8, DTypeU64: 8, DTypeC64: 8,
}

// Size is the size of one element in bytes, or 0 for an unknown dtype.
func (d DType) Size() int { return dtypeSizes[d] }

// Tensor is one named tensor: a dtype, a shape (row-major; an empty shape is
// a scalar) and the raw little-endian element bytes.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// File is the content of a safetensors file: tensors in file order and the
// optional string->string metadata.
type File struct {
	Tensors  []Tensor
	Metadata map[string]string
}

// Get returns the tensor with the given name.
func (f *File) Get(name string) (Tensor, bool) {
	for _, t := range f.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// byteSize returns the number of elements of shape and its size in bytes
// for elements of elemSize bytes. It fails on a negative dimension or when
// the product of the non-zero dimensions times elemSize overflows an int64,
// even if another dimension is zero: such shapes are rejected everywhere,
// so that decoding and encoding accept exactly the same files.
func byteSize(shape []int, elemSize int) (n, size int, err error) {
	nonZero := uint64(elemSize) // product of the non-zero dimensions, times elemSize
	zero := false
	for i, d := range shape {
		if d < 0 {
			return 0, 0, fmt.Errorf("shape %v: dimension %d is negative", shape, i)
		}
		if d == 0 {
			zero = true
			continue
		}
		if nonZero > math.MaxInt/uint64(d) {
			return 0, 0, fmt.Errorf("shape %v: size overflows", shape)
		}
		nonZero *= uint64(d)
	}
	if zero {
		return 0, 0, nil
	}
	return int(nonZero) / elemSize, int(nonZero), nil
}

// NumElements is the number of elements the shape describes (1 for a scalar).
func (t Tensor) NumElements() (int, error) {
	n, _, err := byteSize(t.Shape, 1)
	if err != nil {
		return 0, fmt.Errorf("%w %s: %v", ErrInvalid, quoteName(t.Name), err)
	}
	return n, nil
}

// validate checks that t can be written: known dtype, valid shape and a data
// length matching the shape.
func (t Tensor) validate() error {
	if !utf8.ValidString(t.Name) {
		return fmt.Errorf("%w %s: name is not valid UTF-8", ErrInvalid, quoteName(t.Name))
	}
	if t.Name == metadataKey {
		return fmt.Errorf("%w: the name %q is reserved for metadata", ErrInvalid, metadataKey)
	}
	es := t.DType.Size()
	if es == 0 {
		return fmt.Errorf("%w %s: unknown dtype %q", ErrInvalid, quoteName(t.Name), string(t.DType))
	}
	_, size, err := byteSize(t.Shape, es)
	if err != nil {
		return fmt.Errorf("%w %s: %v", ErrInvalid, quoteName(t.Name), err)
	}
	if len(t.Data) != size {
		return fmt.Errorf("%w %s: has %d data bytes, but %s with shape %v needs %d",
			ErrInvalid, quoteName(t.Name), len(t.Data), t.DType, t.Shape, size)
	}
	return nil
}

// checkTyped verifies that t has dtype want and n elements of data, n being
// the number of elements its shape describes.
func (t Tensor) checkTyped(want DType) (int, error) {
	if t.DType != want {
		return 0, fmt.Errorf("%w %s: dtype is %s, not %s", ErrInvalid, quoteName(t.Name), t.DType, want)
	}
	n, size, err := byteSize(t.Shape, want.Size())
	if err != nil {
		return 0, fmt.Errorf("%w %s: %v", ErrInvalid, quoteName(t.Name), err)
	}
	if len(t.Data) != size {
		return 0, fmt.Errorf("%w %s: has %d data bytes, but shape %v needs %d",
			ErrInvalid, quoteName(t.Name), len(t.Data), t.Shape, size)
	}
	return n, nil
}

// F32 makes an F32 tensor holding a little-endian copy of v. Shape is
// copied; a nil or empty shape is a scalar. F32 does not check that len(v)
// matches the shape: Encode does.
func F32(name string, shape []int, v []float32) Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return Tensor{Name: name, DType: DTypeF32, Shape: slices.Clone(shape), Data: b}
}

// F64 makes an F64 tensor holding a little-endian copy of v (see F32).
func F64(name string, shape []int, v []float64) Tensor {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	return Tensor{Name: name, DType: DTypeF64, Shape: slices.Clone(shape), Data: b}
}

// I64 makes an I64 tensor holding a little-endian copy of v (see F32).
func I64(name string, shape []int, v []int64) Tensor {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return Tensor{Name: name, DType: DTypeI64, Shape: slices.Clone(shape), Data: b}
}

// I32 makes an I32 tensor holding a little-endian copy of v (see F32).
func I32(name string, shape []int, v []int32) Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return Tensor{Name: name, DType: DTypeI32, Shape: slices.Clone(shape), Data: b}
}

// Float32s returns the elements of an F32 tensor. It fails unless the dtype
// is F32 and the data length matches the shape.
func (t Tensor) Float32s() ([]float32, error) {
	n, err := t.checkTyped(DTypeF32)
	if err != nil {
		return nil, err
	}
	dst := make([]float32, n)
	return dst, t.Float32sInto(dst)
}

// Float32sInto copies the elements of an F32 tensor into dst, which must
// have exactly as many elements as the tensor. It does not allocate.
func (t Tensor) Float32sInto(dst []float32) error {
	n, err := t.checkTyped(DTypeF32)
	if err != nil {
		return err
	}
	if len(dst) != n {
		return fmt.Errorf("%w %s: destination has %d elements, tensor has %d", ErrInvalid, quoteName(t.Name), len(dst), n)
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return nil
}

// Float64s returns the elements of an F64 tensor (see Float32s).
func (t Tensor) Float64s() ([]float64, error) {
	n, err := t.checkTyped(DTypeF64)
	if err != nil {
		return nil, err
	}
	dst := make([]float64, n)
	for i := range dst {
		dst[i] = math.Float64frombits(binary.LittleEndian.Uint64(t.Data[8*i:]))
	}
	return dst, nil
}

// Int64s returns the elements of an I64 tensor (see Float32s).
func (t Tensor) Int64s() ([]int64, error) {
	n, err := t.checkTyped(DTypeI64)
	if err != nil {
		return nil, err
	}
	dst := make([]int64, n)
	for i := range dst {
		dst[i] = int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
	}
	return dst, nil
}

// Int32s returns the elements of an I32 tensor (see Float32s).
func (t Tensor) Int32s() ([]int32, error) {
	n, err := t.checkTyped(DTypeI32)
	if err != nil {
		return nil, err
	}
	dst := make([]int32, n)
	for i := range dst {
		dst[i] = int32(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return dst, nil
}

// encodeHeader validates f and builds its padded JSON header.
func encodeHeader(f *File) ([]byte, error) {
	if f == nil {
		return nil, fmt.Errorf("%w: nil *File", ErrInvalid)
	}
	var h bytes.Buffer
	h.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			h.WriteByte(',')
		}
		first = false
	}
	var scratch bytes.Buffer
	enc := json.NewEncoder(&scratch)
	enc.SetEscapeHTML(false)
	writeString := func(s string) {
		scratch.Reset()
		_ = enc.Encode(s) // cannot fail for a string
		h.Write(bytes.TrimSuffix(scratch.Bytes(), []byte{'\n'}))
	}
	if len(f.Metadata) > 0 {
		keys := make([]string, 0, len(f.Metadata))
		for k, v := range f.Metadata {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return nil, fmt.Errorf("%w: metadata entry %q is not valid UTF-8", ErrInvalid, k)
			}
			keys = append(keys, k)
		}
		slices.Sort(keys)
		sep()
		writeString(metadataKey)
		h.WriteString(":{")
		for i, k := range keys {
			if i > 0 {
				h.WriteByte(',')
			}
			writeString(k)
			h.WriteByte(':')
			writeString(f.Metadata[k])
		}
		h.WriteByte('}')
	}
	seen := make(map[string]bool, len(f.Tensors))
	offset := 0
	for _, t := range f.Tensors {
		if err := t.validate(); err != nil {
			return nil, err
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("%w %s: duplicate tensor name", ErrInvalid, quoteName(t.Name))
		}
		seen[t.Name] = true
		sep()
		writeString(t.Name)
		h.WriteString(`:{"dtype":`)
		writeString(string(t.DType))
		h.WriteString(`,"shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				h.WriteByte(',')
			}
			h.WriteString(strconv.Itoa(d))
		}
		end := offset + len(t.Data)
		fmt.Fprintf(&h, `],"data_offsets":[%d,%d]}`, offset, end)
		offset = end
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	if h.Len() > MaxHeaderSize {
		return nil, fmt.Errorf("%w: header of %d bytes exceeds the %d-byte limit", ErrInvalid, h.Len(), MaxHeaderSize)
	}
	return h.Bytes(), nil
}

// Encode writes f to w in safetensors format: an 8-byte little-endian header
// length, the JSON header padded with spaces to a multiple of 8 bytes, then
// the tensors' bytes, contiguous, in the order of f.Tensors. Everything is
// validated before the first byte is written; an invalid tensor gives an
// error wrapping ErrInvalid and writes nothing.
func Encode(w io.Writer, f *File) error {
	header, err := encodeHeader(f)
	if err != nil {
		return err
	}
	return writeEncoded(w, header, f)
}

// writeEncoded writes the length prefix, the header built by encodeHeader
// and the tensor data.
func writeEncoded(w io.Writer, header []byte, f *File) error {
	var prefix [8]byte
	binary.LittleEndian.PutUint64(prefix[:], uint64(len(header)))
	if _, err := w.Write(prefix[:]); err != nil {
		return err
	}
	if _, err := w.Write(header); err != nil {
		return err
	}
	for _, t := range f.Tensors {
		if len(t.Data) == 0 {
			continue
		}
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return nil
}

// ReadFile reads and decodes the safetensors file at path. Decoding errors
// are *DecodeError values naming the file and wrap ErrCorrupt.
func ReadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	f, err := Decode(b)
	if err != nil {
		var de *DecodeError
		if errors.As(err, &de) {
			de.Path = path
		}
		return nil, err
	}
	return f, nil
}

// rawTensor is a tensor as read from the header, before validation.
type rawTensor struct {
	name       string
	dtype      DType
	shape      []int
	begin, end uint64
}

// headerParser reads the JSON header token by token so that duplicate keys,
// unknown fields and wrongly typed values are all detected.
type headerParser struct {
	dec *json.Decoder
}

func corrupt(tensor, format string, args ...any) *DecodeError {
	return &DecodeError{Tensor: tensor, Reason: fmt.Sprintf(format, args...)}
}

func (p *headerParser) token(tensor string) (json.Token, error) {
	tok, err := p.dec.Token()
	if err == io.EOF {
		return nil, corrupt(tensor, "invalid JSON header: unexpected end")
	}
	if err != nil {
		return nil, corrupt(tensor, "invalid JSON header: %v", err)
	}
	return tok, nil
}

func (p *headerParser) delim(tensor, what string, want json.Delim) error {
	tok, err := p.token(tensor)
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return corrupt(tensor, "%s: expected %q, found %v", what, string(want), describe(tok))
	}
	return nil
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		return strconv.Quote(string(v))
	case string:
		return "string " + quoteName(v)
	case json.Number:
		return "number " + string(v)
	case bool:
		return strconv.FormatBool(v)
	}
	return fmt.Sprint(tok)
}

// intArray reads a JSON array of non-negative integers fitting in max.
func (p *headerParser) intArray(tensor, what string, max uint64) ([]uint64, error) {
	if err := p.delim(tensor, what, '['); err != nil {
		return nil, err
	}
	out := []uint64{}
	for p.dec.More() {
		tok, err := p.token(tensor)
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, corrupt(tensor, "%s: expected an integer, found %s", what, describe(tok))
		}
		if len(num) > 0 && num[0] == '-' {
			return nil, corrupt(tensor, "%s: negative value %s", what, num)
		}
		v, err := strconv.ParseUint(string(num), 10, 64)
		if err != nil || v > max {
			return nil, corrupt(tensor, "%s: %s is not an integer in [0, %d]", what, num, max)
		}
		out = append(out, v)
	}
	return out, p.delim(tensor, what, ']')
}

func (p *headerParser) tensor(name string) (rawTensor, error) {
	t := rawTensor{name: name}
	if err := p.delim(name, "header entry", '{'); err != nil {
		return t, err
	}
	var haveDType, haveShape, haveOffsets bool
	for p.dec.More() {
		tok, err := p.token(name)
		if err != nil {
			return t, err
		}
		key, _ := tok.(string)
		switch key {
		case "dtype":
			if haveDType {
				return t, corrupt(name, "duplicate field \"dtype\"")
			}
			haveDType = true
			tok, err := p.token(name)
			if err != nil {
				return t, err
			}
			s, ok := tok.(string)
			if !ok {
				return t, corrupt(name, "dtype: expected a string, found %s", describe(tok))
			}
			t.dtype = DType(s)
			if t.dtype.Size() == 0 {
				return t, corrupt(name, "unknown dtype %s", quoteName(s))
			}
		case "shape":
			if haveShape {
				return t, corrupt(name, "duplicate field \"shape\"")
			}
			haveShape = true
			dims, err := p.intArray(name, "shape", math.MaxInt)
			if err != nil {
				return t, err
			}
			t.shape = make([]int, len(dims))
			for i, d := range dims {
				t.shape[i] = int(d)
			}
		case "data_offsets":
			if haveOffsets {
				return t, corrupt(name, "duplicate field \"data_offsets\"")
			}
			haveOffsets = true
			offs, err := p.intArray(name, "data_offsets", math.MaxInt64)
			if err != nil {
				return t, err
			}
			if len(offs) != 2 {
				return t, corrupt(name, "data_offsets has %d values, want 2", len(offs))
			}
			t.begin, t.end = offs[0], offs[1]
		default:
			return t, corrupt(name, "unknown field %s", quoteName(key))
		}
	}
	if err := p.delim(name, "header entry", '}'); err != nil {
		return t, err
	}
	switch {
	case !haveDType:
		return t, corrupt(name, "missing field \"dtype\"")
	case !haveShape:
		return t, corrupt(name, "missing field \"shape\"")
	case !haveOffsets:
		return t, corrupt(name, "missing field \"data_offsets\"")
	}
	return t, nil
}

func (p *headerParser) metadata() (map[string]string, error) {
	tok, err := p.token("")
	if err != nil {
		return nil, err
	}
	if tok == nil { // "__metadata__": null is accepted as no metadata
		return nil, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, corrupt("", "__metadata__ is not a JSON object (found %s)", describe(tok))
	}
	md := map[string]string{}
	for p.dec.More() {
		tok, err := p.token("")
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if _, dup := md[key]; dup {
			return nil, corrupt("", "duplicate __metadata__ key %s", quoteName(key))
		}
		tok, err = p.token("")
		if err != nil {
			return nil, err
		}
		val, ok := tok.(string)
		if !ok {
			return nil, corrupt("", "__metadata__ value for %s is not a string (found %s)", quoteName(key), describe(tok))
		}
		md[key] = val
	}
	if err := p.delim("", "__metadata__", '}'); err != nil {
		return nil, err
	}
	if len(md) == 0 {
		return nil, nil
	}
	return md, nil
}

// Decode parses a complete safetensors file held in b. The returned tensors'
// Data slices point into b (capacity-limited, so appending to one never
// overwrites another); b must not be modified while they are in use.
// Tensors are returned in the order of their data in the file.
//
// Decode is strict: the header length must fit the file and MaxHeaderSize,
// the header must be a UTF-8 JSON object starting with '{' (trailing
// whitespace allowed), names and fields must not repeat, every entry needs a
// known dtype, a shape of non-negative integers and two data_offsets whose
// span equals the dtype size times the number of elements, and the tensors
// must tile the data buffer exactly: no overlaps, no holes, no trailing
// bytes. Metadata values must be strings. Any violation returns a
// *DecodeError wrapping ErrCorrupt; Decode never panics, and it allocates
// memory proportional to the header only.
func Decode(b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, corrupt("", "file has %d bytes, fewer than the 8-byte header length prefix", len(b))
	}
	n := binary.LittleEndian.Uint64(b[:8])
	if n > MaxHeaderSize {
		return nil, corrupt("", "header length %d exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	if n > uint64(len(b)-8) {
		return nil, corrupt("", "header length %d exceeds the %d bytes after the length prefix (truncated file?)", n, len(b)-8)
	}
	header, data := b[8:8+n], b[8+n:]
	if len(header) == 0 || header[0] != '{' {
		return nil, corrupt("", "header does not start with '{'")
	}
	if !utf8.Valid(header) {
		return nil, corrupt("", "header is not valid UTF-8")
	}

	dec := json.NewDecoder(bytes.NewReader(header))
	dec.UseNumber()
	p := &headerParser{dec: dec}
	if err := p.delim("", "header", '{'); err != nil {
		return nil, err
	}
	f := &File{}
	var raws []rawTensor
	seen := map[string]bool{}
	for dec.More() {
		tok, err := p.token("")
		if err != nil {
			return nil, err
		}
		name, _ := tok.(string)
		if seen[name] {
			if name == metadataKey {
				return nil, corrupt("", "duplicate __metadata__")
			}
			return nil, corrupt(name, "duplicate tensor name")
		}
		seen[name] = true
		if name == metadataKey {
			if f.Metadata, err = p.metadata(); err != nil {
				return nil, err
			}
			continue
		}
		rt, err := p.tensor(name)
		if err != nil {
			return nil, err
		}
		raws = append(raws, rt)
	}
	if err := p.delim("", "header", '}'); err != nil {
		return nil, err
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return nil, corrupt("", "invalid JSON header: %v", err)
		}
		return nil, corrupt("", "unexpected %s after the header object", describe(tok))
	}

	// Check sizes and bounds, then that the tensors tile the data buffer.
	for _, r := range raws {
		_, size, err := byteSize(r.shape, r.dtype.Size())
		if err != nil {
			return nil, corrupt(r.name, "%v", err)
		}
		if r.begin > r.end {
			return nil, corrupt(r.name, "data_offsets [%d, %d] end before they begin", r.begin, r.end)
		}
		if r.end-r.begin != uint64(size) {
			return nil, corrupt(r.name, "data_offsets [%d, %d] span %d bytes, but %s with shape %v needs %d",
				r.begin, r.end, r.end-r.begin, r.dtype, r.shape, size)
		}
		if r.end > uint64(len(data)) {
			return nil, corrupt(r.name, "data_offsets [%d, %d] extend past the %d-byte data buffer (truncated file?)",
				r.begin, r.end, len(data))
		}
	}
	slices.SortStableFunc(raws, func(a, b rawTensor) int {
		if c := cmpU64(a.begin, b.begin); c != 0 {
			return c
		}
		return cmpU64(a.end, b.end)
	})
	var pos uint64
	prev := ""
	for _, r := range raws {
		if r.begin < pos {
			return nil, corrupt(r.name, "data_offsets [%d, %d] overlap tensor %s, which ends at %d",
				r.begin, r.end, quoteName(prev), pos)
		}
		if r.begin > pos {
			return nil, corrupt(r.name, "hole in the data buffer: bytes [%d, %d) before this tensor belong to no tensor",
				pos, r.begin)
		}
		pos, prev = r.end, r.name
	}
	if pos != uint64(len(data)) {
		return nil, corrupt("", "data buffer has %d bytes, but the tensors cover only %d", len(data), pos)
	}

	f.Tensors = make([]Tensor, len(raws))
	for i, r := range raws {
		f.Tensors[i] = Tensor{Name: r.name, DType: r.dtype, Shape: r.shape, Data: data[r.begin:r.end:r.end]}
	}
	return f, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
