package csrc

// Host execution of the kernels: a shim per kernel unpacks its arguments
// from the array of pointers that cuLaunchKernel also takes. The shims are
// written out here, one line per kernel; TestShimsCoverTheKernels checks
// that none is missing or miscounted.

/*
#cgo CFLAGS: -O2 -std=gnu11 -Wno-unused-function
#cgo LDFLAGS: -lm
#include <stdlib.h>
#include <string.h>
#include "kernels.cu"

#define A(T, i) (*(T *)a[i])

static void call_fill(void **a) { fill(A(float *, 0), A(float, 1), A(long, 2)); }
static void call_copy_f32(void **a) { copy_f32(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_axpy_at(void **a) { axpy_at(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(float, 4), A(int, 5)); }
static void call_copy_at(void **a) { copy_at(A(const float *, 0), A(long, 1), A(float *, 2), A(long, 3), A(long, 4)); }
static void call_fill_at(void **a) { fill_at(A(float *, 0), A(long, 1), A(long, 2), A(float, 3)); }
static void call_bias_rows(void **a) { bias_rows(A(float *, 0), A(const float *, 1), A(long, 2), A(long, 3)); }
static void call_sum_rows(void **a) { sum_rows(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3)); }
static void call_relu(void **a) { relu(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_relu_grad(void **a) { relu_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_tanh_fwd(void **a) { tanh_fwd(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_tanh_grad(void **a) { tanh_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_sigmoid_fwd(void **a) { sigmoid_fwd(A(const float *, 0), A(float *, 1), A(long, 2)); }
static void call_sigmoid_grad(void **a) { sigmoid_grad(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_mul(void **a) { mul(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_softmax_ce_rows(void **a) { softmax_ce_rows(A(const float *, 0), A(const float *, 1), A(double *, 2), A(long, 3), A(long, 4)); }
static void call_mean_f64(void **a) { mean_f64(A(const double *, 0), A(float *, 1), A(long, 2)); }
static void call_softmax_ce_grad(void **a) { softmax_ce_grad(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(float *, 3), A(long, 4), A(long, 5)); }
static void call_dot_parts(void **a) { dot_parts(A(const float *, 0), A(const float *, 1), A(double *, 2), A(long, 3), A(long, 4)); }
static void call_sum_f64_to_f32(void **a) { sum_f64_to_f32(A(const double *, 0), A(float *, 1), A(long, 2)); }
static void call_scale_by(void **a) { scale_by(A(const float *, 0), A(const float *, 1), A(float *, 2), A(long, 3)); }
static void call_im2col(void **a) { im2col(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7), A(long, 8), A(long, 9), A(long, 10), A(long, 11)); }
static void call_col2im(void **a) { col2im(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7), A(long, 8), A(long, 9), A(long, 10), A(long, 11)); }
static void call_nchw_to_km(void **a) { nchw_to_km(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4)); }
static void call_km_to_nchw_bias(void **a) { km_to_nchw_bias(A(const float *, 0), A(float *, 1), A(const float *, 2), A(long, 3), A(long, 4), A(long, 5)); }
static void call_conv_grad_b_parts(void **a) { conv_grad_b_parts(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5)); }
static void call_sum_parts(void **a) { sum_parts(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3)); }
static void call_maxpool(void **a) { maxpool(A(const float *, 0), A(float *, 1), A(long, 2), A(long, 3), A(long, 4), A(long, 5)); }
static void call_maxpool_grad(void **a) { maxpool_grad(A(const float *, 0), A(const float *, 1), A(const float *, 2), A(float *, 3), A(long, 4), A(long, 5), A(long, 6), A(long, 7)); }
static void call_dropout_mask(void **a) { dropout_mask(A(float *, 0), A(long, 1), A(float, 2), A(unsigned long long, 3), A(unsigned long long, 4)); }
static void call_round_mantissa(void **a) { round_mantissa(A(const float *, 0), A(float *, 1), A(long, 2), A(int, 3)); }
static void call_to_bf16(void **a) { to_bf16(A(const float *, 0), A(unsigned short *, 1), A(long, 2)); }
static void call_from_bf16(void **a) { from_bf16(A(const unsigned short *, 0), A(float *, 1), A(long, 2)); }
static void call_sgd(void **a) { sgd(A(float *, 0), A(const float *, 1), A(long, 2), A(float, 3), A(float, 4)); }
static void call_sgd_momentum(void **a) { sgd_momentum(A(float *, 0), A(const float *, 1), A(float *, 2), A(long, 3), A(float, 4), A(float, 5), A(float, 6), A(float, 7), A(int, 8), A(int, 9)); }
static void call_sum_squares_parts(void **a) { sum_squares_parts(A(const float *, 0), A(double *, 1), A(long, 2), A(long, 3)); }
static void call_sum_f64_at(void **a) { sum_f64_at(A(const double *, 0), A(double *, 1), A(long, 2), A(long, 3)); }
static void call_scale_f32(void **a) { scale_f32(A(float *, 0), A(long, 1), A(float, 2)); }
static void call_adam(void **a) { adam(A(float *, 0), A(const float *, 1), A(float *, 2), A(float *, 3), A(long, 4), A(float, 5), A(float, 6), A(float, 7), A(float, 8), A(float, 9), A(float, 10), A(float, 11), A(float, 12), A(float, 13)); }

typedef struct {
	const char *name;
	void (*call)(void **);
	int nargs;
} shim;

static const shim shims[] = {
	{"fill", call_fill, 3},
	{"copy_f32", call_copy_f32, 3},
	{"axpy_at", call_axpy_at, 6},
	{"copy_at", call_copy_at, 5},
	{"fill_at", call_fill_at, 4},
	{"bias_rows", call_bias_rows, 4},
	{"sum_rows", call_sum_rows, 4},
	{"relu", call_relu, 3},
	{"relu_grad", call_relu_grad, 4},
	{"tanh_fwd", call_tanh_fwd, 3},
	{"tanh_grad", call_tanh_grad, 4},
	{"sigmoid_fwd", call_sigmoid_fwd, 3},
	{"sigmoid_grad", call_sigmoid_grad, 4},
	{"mul", call_mul, 4},
	{"softmax_ce_rows", call_softmax_ce_rows, 5},
	{"mean_f64", call_mean_f64, 3},
	{"softmax_ce_grad", call_softmax_ce_grad, 6},
	{"dot_parts", call_dot_parts, 5},
	{"sum_f64_to_f32", call_sum_f64_to_f32, 3},
	{"scale_by", call_scale_by, 4},
	{"im2col", call_im2col, 12},
	{"col2im", call_col2im, 12},
	{"nchw_to_km", call_nchw_to_km, 5},
	{"km_to_nchw_bias", call_km_to_nchw_bias, 6},
	{"conv_grad_b_parts", call_conv_grad_b_parts, 6},
	{"sum_parts", call_sum_parts, 4},
	{"maxpool", call_maxpool, 6},
	{"maxpool_grad", call_maxpool_grad, 8},
	{"dropout_mask", call_dropout_mask, 5},
	{"round_mantissa", call_round_mantissa, 4},
	{"sum_squares_parts", call_sum_squares_parts, 4},
	{"sum_f64_at", call_sum_f64_at, 4},
	{"scale_f32", call_scale_f32, 3},
	{"to_bf16", call_to_bf16, 3},
	{"from_bf16", call_from_bf16, 3},
	{"sgd", call_sgd, 5},
	{"sgd_momentum", call_sgd_momentum, 10},
	{"adam", call_adam, 14},
};

static int nshims(void) { return sizeof shims / sizeof shims[0]; }
static const char *shim_name(int i) { return shims[i].name; }
static int shim_nargs(int i) { return shims[i].nargs; }
static void shim_call(int i, void **a) { shims[i].call(a); }
*/
import "C"

import (
	"fmt"
	"regexp"
	"strings"
	"unsafe"
)

// ArgKind is the type of a kernel parameter.
type ArgKind int

// Kernel parameter types, as kernels.cu declares them.
const (
	ArgPtr   ArgKind = iota // a pointer to device (or host) memory
	ArgLong                 // long: sizes and indices (64-bit)
	ArgInt                  // int: flags
	ArgFloat                // float: scalars
	ArgU64                  // unsigned long long: RNG seeds
)

func (k ArgKind) String() string {
	return [...]string{"pointer", "long", "int", "float", "unsigned long long"}[k]
}

// kernels is Source's kernels, parsed once: their names in order and
// their parameter types.
var kernels = parseKernels(Source)

type kernelSet struct {
	names []string
	sigs  map[string][]ArgKind
	err   error // a parameter type the launchers do not pass
}

func parseKernels(src string) kernelSet {
	ks := kernelSet{sigs: map[string][]ArgKind{}}
	re := regexp.MustCompile(`(?ms)^KERNEL ([a-z_0-9]+)\((.*?)\)\s*\{`)
	for _, m := range re.FindAllStringSubmatch(src, -1) {
		var kinds []ArgKind
		for _, p := range strings.Split(m[2], ",") {
			p = strings.Join(strings.Fields(p), " ")
			var k ArgKind
			switch {
			case strings.Contains(p, "*"):
				k = ArgPtr
			case strings.HasPrefix(p, "unsigned long long "):
				k = ArgU64
			case strings.HasPrefix(p, "long "):
				k = ArgLong
			case strings.HasPrefix(p, "int "):
				k = ArgInt
			case strings.HasPrefix(p, "float "):
				k = ArgFloat
			default:
				if ks.err == nil {
					ks.err = fmt.Errorf("csrc: kernel %s: parameter %q has a type the launchers do not pass", m[1], p)
				}
			}
			kinds = append(kinds, k)
		}
		ks.names = append(ks.names, m[1])
		ks.sigs[m[1]] = kinds
	}
	return ks
}

// Signature returns the parameter types of a kernel, parsed from Source.
func Signature(name string) ([]ArgKind, error) {
	if kernels.err != nil {
		return nil, kernels.err
	}
	s, ok := kernels.sigs[name]
	if !ok {
		return nil, fmt.Errorf("csrc: no kernel %q in kernels.cu", name)
	}
	return s, nil
}

// Pack checks args against the kernel's signature and writes each one as
// the kernel takes it into a slot of 8 bytes (pointer arguments through
// ptr, which returns the address). It is what a launcher passes as kernel
// parameters: slot i holds argument i.
func Pack(name string, slots []uint64, ptr func(any) (uintptr, bool), args ...any) error {
	sig, err := Signature(name)
	if err != nil {
		return err
	}
	if len(args) != len(sig) || len(slots) < len(sig) {
		return fmt.Errorf("csrc: kernel %s takes %d arguments, got %d", name, len(sig), len(args))
	}
	for i, a := range args {
		bad := func() error {
			return fmt.Errorf("csrc: kernel %s: argument %d is a %T, want a %s", name, i, a, sig[i])
		}
		switch sig[i] {
		case ArgPtr:
			p, ok := ptr(a)
			if !ok {
				return bad()
			}
			slots[i] = uint64(p)
		case ArgLong:
			switch v := a.(type) {
			case int:
				slots[i] = uint64(int64(v))
			case int64:
				slots[i] = uint64(v)
			default:
				return bad()
			}
		case ArgInt:
			switch v := a.(type) {
			case int32:
				slots[i] = uint64(uint32(v))
			case bool:
				if v {
					slots[i] = 1
				} else {
					slots[i] = 0
				}
			default:
				return bad()
			}
		case ArgFloat:
			v, ok := a.(float32)
			if !ok {
				return bad()
			}
			slots[i] = uint64(*(*uint32)(unsafe.Pointer(&v)))
		case ArgU64:
			v, ok := a.(uint64)
			if !ok {
				return bad()
			}
			slots[i] = v
		}
	}
	return nil
}

// HostMem is memory from the C heap that kernels run by Launch address.
type HostMem struct {
	p     unsafe.Pointer
	bytes int
}

// Alloc returns zeroed host memory of the given size, for Launch.
func Alloc(bytes int) *HostMem {
	if bytes < 1 {
		bytes = 1
	}
	p := C.calloc(C.size_t(bytes), 1)
	if p == nil {
		panic(fmt.Sprintf("csrc: out of memory allocating %d bytes", bytes))
	}
	return &HostMem{p: p, bytes: bytes}
}

// Free releases the memory.
func (m *HostMem) Free() {
	if m.p != nil {
		C.free(m.p)
		m.p = nil
	}
}

// Bytes is the size of the memory.
func (m *HostMem) Bytes() int { return m.bytes }

// Float32s views the memory as float32s.
func (m *HostMem) Float32s() []float32 { return unsafe.Slice((*float32)(m.p), m.bytes/4) }

// Uint16s views the memory as uint16s (bfloat16 values).
func (m *HostMem) Uint16s() []uint16 { return unsafe.Slice((*uint16)(m.p), m.bytes/2) }

// Float64s views the memory as float64s.
func (m *HostMem) Float64s() []float64 { return unsafe.Slice((*float64)(m.p), m.bytes/8) }

// Addr is the memory's address.
func (m *HostMem) Addr() uintptr { return uintptr(m.p) }

var shimIndex = func() map[string]int {
	idx := map[string]int{}
	for i := 0; i < int(C.nshims()); i++ {
		idx[C.GoString(C.shim_name(C.int(i)))] = i
	}
	return idx
}()

// Launch runs kernel name on the host with args: *HostMem for pointers,
// int or int64 for long, int32 or bool for int, float32 for float, uint64
// for unsigned long long.
func Launch(name string, args ...any) error {
	i, ok := shimIndex[name]
	if !ok {
		return fmt.Errorf("csrc: no kernel %q in kernels.cu", name)
	}
	if n := int(C.shim_nargs(C.int(i))); n != len(args) {
		return fmt.Errorf("csrc: kernel %s takes %d arguments, got %d", name, n, len(args))
	}
	// The slots and the pointer array live in C memory: C code may keep no
	// Go pointers.
	block := C.calloc(C.size_t(len(args)+1), 16)
	defer C.free(block)
	slots := unsafe.Slice((*uint64)(block), len(args)+1)
	ptrs := unsafe.Slice((*unsafe.Pointer)(unsafe.Add(block, 8*(len(args)+1))), len(args)+1)
	err := Pack(name, slots, func(a any) (uintptr, bool) {
		m, ok := a.(*HostMem)
		if !ok || m == nil || m.p == nil {
			return 0, false
		}
		return m.Addr(), true
	}, args...)
	if err != nil {
		return err
	}
	for j := range args {
		ptrs[j] = unsafe.Add(block, 8*j)
	}
	C.shim_call(C.int(i), (*unsafe.Pointer)(unsafe.Add(block, 8*(len(args)+1))))
	return nil
}

// shimArgs is the number of arguments the host shim of kernel i unpacks
// (for the tests).
func shimArgs(i int) int { return int(C.shim_nargs(C.int(i))) }
