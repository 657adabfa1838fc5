package csrc

// Host execution of the kernels: a shim per kernel unpacks its arguments
// from the array of pointers that cuLaunchKernel also takes. The shims are
// written out here, one line per kernel; TestShimsCoverTheKernels checks
// that none is missing or miscounted.

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo CFLAGS: -O2 -std=gnu11 -Wno-unused-function
#cgo LDFLAGS: -lm
#include <stdlib.h>
#include <string.h>
#include "kernels.cu"

#include "shims.h"

static int nshims(void) { return sizeof shims / sizeof shims[0]; }
static const char *shim_name(int i) { return shims[i].name; }
static int shim_nargs(int i) { return shims[i].nargs; }
static void shim_call(int i, void **a) { shims[i].call(a); }
*/
import "C"

import (
	"fmt"
	"math"
	"regexp"
	"strings"
	"unsafe"
)

// ArgKind is the type of a kernel parameter.
type ArgKind int

// Kernel parameter types, as kernels.cu declares them.
const (
	ArgPtr    ArgKind = iota // a pointer to device (or host) memory
	ArgLong                  // long: sizes and indices (64-bit)
	ArgInt                   // int: flags
	ArgFloat                 // float: scalars
	ArgU64                   // unsigned long long: RNG seeds
	ArgDouble                // double: scalars that need float64
)

func (k ArgKind) String() string {
	return [...]string{"pointer", "long", "int", "float", "unsigned long long", "double"}[k]
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
			case strings.HasPrefix(p, "double "):
				k = ArgDouble
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
		case ArgDouble:
			v, ok := a.(float64)
			if !ok {
				return bad()
			}
			slots[i] = math.Float64bits(v)
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
// for unsigned long long. The kernel runs as the one thread of a one-block
// grid (LaunchGrid runs it as a GPU would).
func Launch(name string, args ...any) error {
	i, params, free, err := hostParams(name, args)
	if err != nil {
		return err
	}
	defer free()
	C.shim_call(C.int(i), params)
	return nil
}

// hostParams checks args against kernel name and packs them into C memory
// as cuLaunchKernel takes them: an array of pointers to the arguments. It
// returns the kernel's shim index; free releases the memory.
func hostParams(name string, args []any) (i int, params *unsafe.Pointer, free func(), err error) {
	i, ok := shimIndex[name]
	if !ok {
		return 0, nil, nil, fmt.Errorf("csrc: no kernel %q in kernels.cu", name)
	}
	if n := int(C.shim_nargs(C.int(i))); n != len(args) {
		return 0, nil, nil, fmt.Errorf("csrc: kernel %s takes %d arguments, got %d", name, n, len(args))
	}
	// The slots and the pointer array live in C memory: C code may keep no
	// Go pointers.
	block := C.calloc(C.size_t(len(args)+1), 16)
	slots := unsafe.Slice((*uint64)(block), len(args)+1)
	ptrs := unsafe.Slice((*unsafe.Pointer)(unsafe.Add(block, 8*(len(args)+1))), len(args)+1)
	err = Pack(name, slots, func(a any) (uintptr, bool) {
		m, ok := a.(*HostMem)
		if !ok || m == nil || m.p == nil {
			return 0, false
		}
		return m.Addr(), true
	}, args...)
	if err != nil {
		C.free(block)
		return 0, nil, nil, err
	}
	for j := range args {
		ptrs[j] = unsafe.Add(block, 8*j)
	}
	return i, (*unsafe.Pointer)(unsafe.Add(block, 8*(len(args)+1))), func() { C.free(block) }, nil
}

// shimArgs is the number of arguments the host shim of kernel i unpacks
// (for the tests).
func shimArgs(i int) int { return int(C.shim_nargs(C.int(i))) }
