package dist

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// nativeLE reports whether the machine is little-endian, in which case
// float slices go on the wire as they lie in memory. A variable so tests can
// exercise the portable encode/decode path.
var nativeLE = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

type kind uint8

const (
	kindF32 kind = iota + 1
	kindF64
	kindBytes
)

func (k kind) String() string {
	switch k {
	case kindF32:
		return "[]float32"
	case kindF64:
		return "[]float64"
	case kindBytes:
		return "[]byte"
	}
	return "unknown"
}

func (k kind) size() int {
	switch k {
	case kindF32:
		return 4
	case kindF64:
		return 8
	}
	return 1
}

// vec is a typed view of a caller's buffer.
type vec struct {
	k   kind
	f32 []float32
	f64 []float64
	b   []byte
}

func toVec(x any, allowBytes bool) (vec, error) {
	switch v := x.(type) {
	case []float32:
		return vec{k: kindF32, f32: v}, nil
	case []float64:
		return vec{k: kindF64, f64: v}, nil
	case []byte:
		if allowBytes {
			return vec{k: kindBytes, b: v}, nil
		}
		return vec{}, fmt.Errorf("%w: []byte not allowed here (use []float32 or []float64)", ErrBadBuffer)
	}
	return vec{}, fmt.Errorf("%w: unsupported type %T", ErrBadBuffer, x)
}

func (v vec) len() int {
	switch v.k {
	case kindF32:
		return len(v.f32)
	case kindF64:
		return len(v.f64)
	}
	return len(v.b)
}

// same reports whether v and w are the same slice (same start and length).
func (v vec) same(w vec) bool {
	if v.k != w.k || v.len() != w.len() {
		return false
	}
	if v.len() == 0 {
		return true
	}
	return unsafe.Pointer(v.rawPtr()) == unsafe.Pointer(w.rawPtr())
}

func (v vec) rawPtr() *byte {
	switch v.k {
	case kindF32:
		return (*byte)(unsafe.Pointer(unsafe.SliceData(v.f32)))
	case kindF64:
		return (*byte)(unsafe.Pointer(unsafe.SliceData(v.f64)))
	}
	return unsafe.SliceData(v.b)
}

// raw returns the bytes of elements [lo, hi) as they lie in memory.
func (v vec) raw(lo, hi int) []byte {
	if hi <= lo {
		return nil
	}
	switch v.k {
	case kindF32:
		return unsafe.Slice((*byte)(unsafe.Pointer(&v.f32[lo])), (hi-lo)*4)
	case kindF64:
		return unsafe.Slice((*byte)(unsafe.Pointer(&v.f64[lo])), (hi-lo)*8)
	}
	return v.b[lo:hi]
}

// wire returns the little-endian wire bytes of elements [lo, hi): an alias of
// the buffer on little-endian machines, else encoded into scratch (which must
// hold (hi-lo)*size bytes).
func (v vec) wire(lo, hi int, scratch []byte) []byte {
	if nativeLE || v.k == kindBytes {
		return v.raw(lo, hi)
	}
	out := scratch[:(hi-lo)*v.k.size()]
	switch v.k {
	case kindF32:
		for i, x := range v.f32[lo:hi] {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
		}
	case kindF64:
		for i, x := range v.f64[lo:hi] {
			binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(x))
		}
	}
	return out
}

// direct reports whether wire bytes can be read straight into the buffer.
func (v vec) direct() bool { return nativeLE || v.k == kindBytes }

// setWire stores little-endian wire bytes into elements starting at lo.
func (v vec) setWire(lo int, data []byte) {
	switch v.k {
	case kindF32:
		n := len(data) / 4
		if nativeLE {
			copy(v.raw(lo, lo+n), data)
			return
		}
		for i := range n {
			v.f32[lo+i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	case kindF64:
		n := len(data) / 8
		if nativeLE {
			copy(v.raw(lo, lo+n), data)
			return
		}
		for i := range n {
			v.f64[lo+i] = math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:]))
		}
	default:
		copy(v.b[lo:], data)
	}
}

// copyFrom copies elements [slo, slo+n) of src into v at dlo.
func (v vec) copyFrom(dlo int, src vec, slo, n int) {
	switch v.k {
	case kindF32:
		copy(v.f32[dlo:dlo+n], src.f32[slo:slo+n])
	case kindF64:
		copy(v.f64[dlo:dlo+n], src.f64[slo:slo+n])
	default:
		copy(v.b[dlo:dlo+n], src.b[slo:slo+n])
	}
}

// reduceWire sets v[dlo+i] = wire[i] op b[blo+i] for the elements in data
// (little-endian wire bytes, 8-byte aligned). tmp is used on big-endian
// machines to decode; it must hold len(data) bytes, 8-byte aligned.
func (v vec) reduceWire(op Op, dlo int, data []byte, b vec, blo int, tmp []byte) {
	n := len(data) / v.k.size()
	if n == 0 {
		return
	}
	if !nativeLE {
		t := vec{k: v.k}
		switch v.k {
		case kindF32:
			t.f32 = unsafe.Slice((*float32)(unsafe.Pointer(&tmp[0])), n)
		case kindF64:
			t.f64 = unsafe.Slice((*float64)(unsafe.Pointer(&tmp[0])), n)
		}
		t.setWire(0, data)
		data = t.raw(0, n)
	}
	switch v.k {
	case kindF32:
		a := unsafe.Slice((*float32)(unsafe.Pointer(&data[0])), n)
		reduceSlice(op, v.f32[dlo:dlo+n], a, b.f32[blo:blo+n])
	case kindF64:
		a := unsafe.Slice((*float64)(unsafe.Pointer(&data[0])), n)
		reduceSlice(op, v.f64[dlo:dlo+n], a, b.f64[blo:blo+n])
	}
}

// scale divides elements [lo, hi) by n (for Avg).
func (v vec) scale(lo, hi, n int) {
	switch v.k {
	case kindF32:
		d := float32(n)
		s := v.f32[lo:hi]
		for i := range s {
			s[i] /= d
		}
	case kindF64:
		d := float64(n)
		s := v.f64[lo:hi]
		for i := range s {
			s[i] /= d
		}
	}
}

type float interface{ ~float32 | ~float64 }

// reduceSlice sets dst[i] = a[i] op b[i]. dst may alias b. Max and Min
// propagate NaN.
func reduceSlice[T float](op Op, dst, a, b []T) {
	_ = a[len(dst)-1]
	_ = b[len(dst)-1]
	switch op {
	case Sum, Avg:
		for i := range dst {
			dst[i] = a[i] + b[i]
		}
	case Max:
		for i := range dst {
			x, y := a[i], b[i]
			if x > y || x != x {
				dst[i] = x
			} else {
				dst[i] = y
			}
		}
	case Min:
		for i := range dst {
			x, y := a[i], b[i]
			if x < y || x != x {
				dst[i] = x
			} else {
				dst[i] = y
			}
		}
	}
}

// blocks splits n elements into parts blocks; block i is [off(i), off(i+1)).
type blocks struct{ n, parts int }

func (b blocks) off(i int) int {
	base, rem := b.n/b.parts, b.n%b.parts
	return i*base + min(i, rem)
}

func (b blocks) span(i int) (lo, hi int) {
	i = ((i % b.parts) + b.parts) % b.parts
	return b.off(i), b.off(i + 1)
}
