//go:build gpu

package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/gotrain/gotrain/csrc"
	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/gpu/nvrtc"
)

// Count is the number of CUDA devices.
func Count() (int, error) { return cu.NumDevices() }

type buf struct {
	p cu.DevicePtr
	n int
}

func (b *buf) Len() int { return b.n }

// Addr is the buffer's device address (for NCCL).
func (b *buf) Addr() uintptr { return uintptr(b.p) }

// Device is one GPU.
type Device struct {
	ordinal int
	dev     cu.Device
	ctx     cu.CUContext
	name    string
	mod     cu.Module
	fns     map[string]cu.Function
	blas    blasHandle
	mu      sync.Mutex
	// bfloat16 copies of a product's inputs (BF16), grown as needed
	bfA, bfB *buf
	pinned   []pinnedMem // page-locked host memory from AllocHost
	comm     commHandle  // the communication stream (streams.go); nil until used
}

var (
	ptxMu sync.Mutex
	ptx   = map[string]string{} // by compute capability
)

// compile returns the kernels' PTX for compute capability arch ("90").
func compile(arch string) (string, error) {
	ptxMu.Lock()
	defer ptxMu.Unlock()
	if p, ok := ptx[arch]; ok {
		return p, nil
	}
	p, err := nvrtc.Compile(csrc.Source, arch, "--std=c++11")
	if err != nil {
		return "", err
	}
	ptx[arch] = p
	return p, nil
}

// Open opens GPU ordinal.
func Open(ordinal int) (device.Device, error) {
	if err := loadLibs(); err != nil {
		return nil, err
	}
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("cuda: counting devices: %w", err)
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: no GPU %d: this machine has %d (LOCAL_RANK picks the GPU; start at most %d workers per node)", ordinal, n, n)
	}
	d := &Device{ordinal: ordinal, fns: map[string]cu.Function{}}
	if d.dev, err = cu.GetDevice(ordinal); err != nil {
		return nil, fmt.Errorf("cuda: GPU %d: %w", ordinal, err)
	}
	if d.ctx, err = d.dev.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("cuda: GPU %d: primary context: %w", ordinal, err)
	}
	name, _ := d.dev.Name()
	d.name = fmt.Sprintf("cuda:%d %s", ordinal, name)
	major, minor, err := d.dev.ComputeCapability()
	if err != nil {
		return nil, fmt.Errorf("cuda: %s: compute capability: %w", d.name, err)
	}
	code, err := compile(fmt.Sprintf("%d%d", major, minor))
	if err != nil {
		return nil, err
	}
	err = d.do(func() error {
		if d.mod, err = cu.LoadData(code); err != nil {
			return fmt.Errorf("cuda: %s: loading the kernels: %w", d.name, err)
		}
		for _, k := range csrc.Kernels {
			if d.fns[k], err = d.mod.Function(k); err != nil {
				return fmt.Errorf("cuda: %s: kernel %s: %w", d.name, k, err)
			}
		}
		if st := blasCreate(&d.blas); st != 0 {
			return fmt.Errorf("cuda: %s: cublasCreate: status %d", d.name, st)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// do runs fn with the device's context current on this OS thread.
func (d *Device) do(fn func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		return fmt.Errorf("cuda: %s: making the context current: %w", d.name, err)
	}
	return fn()
}

// Name is "cuda:N <product name>".
func (d *Device) Name() string { return d.name }

// Alloc returns n zeroed float32s of device memory.
func (d *Device) Alloc(n int) (device.Buffer, error) {
	b := &buf{n: n}
	err := d.do(func() error {
		var err error
		if b.p, err = cu.MemAlloc(int64(4 * max(n, 1))); err != nil {
			free, total, _ := cu.MemInfo()
			return fmt.Errorf("cuda: %s: cuMemAlloc %d bytes (%d of %d free): %w", d.name, 4*max(n, 1), free, total, drv(err))
		}
		if err := cu.MemsetD32(b.p, 0, int64(max(n, 1))); err != nil {
			_ = cu.MemFree(b.p)
			return fmt.Errorf("cuda: %s: cuMemsetD32 %d bytes: %w", d.name, 4*max(n, 1), drv(err))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (d *Device) buf(b device.Buffer) (*buf, error) {
	db, ok := b.(*buf)
	if !ok || db == nil || db.p == 0 {
		return nil, fmt.Errorf("cuda: %T is not a live buffer of a CUDA device", b)
	}
	return db, nil
}

// Free releases b.
func (d *Device) Free(b device.Buffer) {
	if db, err := d.buf(b); err == nil {
		_ = d.do(func() error { return cu.MemFree(db.p) })
		db.p = 0
	}
}

// Write copies src into dst.
func (d *Device) Write(dst device.Buffer, src []float32) error {
	b, err := d.buf(dst)
	if err != nil {
		return err
	}
	if len(src) > b.n {
		return fmt.Errorf("cuda: writing %d values into a buffer of %d", len(src), b.n)
	}
	if len(src) == 0 {
		return nil
	}
	return d.do(func() error {
		if err := cu.MemcpyHtoD(b.p, unsafe.Pointer(&src[0]), int64(4*len(src))); err != nil {
			return fmt.Errorf("cuda: %s: cuMemcpyHtoD %d bytes: %w", d.name, 4*len(src), drv(err))
		}
		return nil
	})
}

// Read copies src into dst.
func (d *Device) Read(dst []float32, src device.Buffer) error {
	b, err := d.buf(src)
	if err != nil {
		return err
	}
	if len(dst) > b.n {
		return fmt.Errorf("cuda: reading %d values from a buffer of %d", len(dst), b.n)
	}
	if len(dst) == 0 {
		return nil
	}
	return d.do(func() error {
		if err := cu.MemcpyDtoH(unsafe.Pointer(&dst[0]), b.p, int64(4*len(dst))); err != nil {
			return fmt.Errorf("cuda: %s: cuMemcpyDtoH %d bytes: %w", d.name, 4*len(dst), drv(err))
		}
		return nil
	})
}

// Launch runs a kernel over n outputs with csrc.Geometry's grid: blocks of
// 256 threads, as many as cover n (at most 65535; the kernels loop over the
// rest).
func (d *Device) Launch(kernel string, n int, args ...any) error {
	fn, ok := d.fns[kernel]
	if !ok {
		return fmt.Errorf("cuda: no kernel %q in csrc/kernels.cu", kernel)
	}
	slots := make([]uint64, len(args))
	err := csrc.Pack(kernel, slots, func(a any) (uintptr, bool) {
		b, ok := a.(device.Buffer)
		if !ok {
			return 0, false
		}
		db, err := d.buf(b)
		if err != nil {
			return 0, false
		}
		return uintptr(db.p), true
	}, args...)
	if err != nil {
		return err
	}
	params := make([]unsafe.Pointer, len(slots))
	for i := range slots {
		params[i] = unsafe.Pointer(&slots[i])
	}
	blocks, threads := csrc.Geometry(n)
	return d.do(func() error {
		if err := fn.Launch(blocks, 1, 1, threads, 1, 1, 0, cu.Stream{}, params); err != nil {
			return fmt.Errorf("cuda: %s: launching kernel %s: %w", d.name, kernel, drv(err))
		}
		return nil
	})
}

// Gemm computes C = alpha·op(A)·op(B) + beta·C on row-major matrices with
// cuBLAS (column-major) as Cᵀ = op(B)ᵀ·op(A)ᵀ: cublasSgemm at FP32,
// cublasGemmEx with TF32 compute at TF32, and at BF16 cublasGemmEx on
// bfloat16 copies of A and B (the to_bf16 kernel) with float32 sums.
func (d *Device) Gemm(prec device.Precision, ta, tb bool, m, n, k int, alpha float32, a device.Buffer, lda int, b device.Buffer, ldb int, beta float32, c device.Buffer, ldc int) error {
	ab, err := d.buf(a)
	if err != nil {
		return err
	}
	bb, err := d.buf(b)
	if err != nil {
		return err
	}
	cb, err := d.buf(c)
	if err != nil {
		return err
	}
	pa, pb := uintptr(ab.p), uintptr(bb.p)
	if prec == device.BF16 {
		if pa, err = d.toBF16(&d.bfA, ab); err != nil {
			return err
		}
		if pb, err = d.toBF16(&d.bfB, bb); err != nil {
			return err
		}
	}
	return d.do(func() error {
		var st int
		if prec == device.FP32 {
			st = blasSgemm(d.blas, tb, ta, n, m, k, alpha, pb, ldb, pa, lda, beta, uintptr(cb.p), ldc)
		} else {
			st = blasGemmEx(d.blas, tb, ta, n, m, k, alpha, pb, ldb, pa, lda, beta, uintptr(cb.p), ldc, prec == device.BF16)
		}
		if st != 0 {
			return fmt.Errorf("cuda: %s: GEMM %d×%d×%d at %s: cuBLAS status %d", d.name, m, n, k, prec, st)
		}
		return nil
	})
}

// toBF16 converts src into the scratch buffer *dst (grown to fit) and
// returns the bfloat16 copy's address.
func (d *Device) toBF16(dst **buf, src *buf) (uintptr, error) {
	need := (src.n + 1) / 2 // two bfloat16 per float32 slot
	if *dst == nil || (*dst).n < need {
		if *dst != nil {
			d.Free(*dst)
		}
		nb, err := d.Alloc(need)
		if err != nil {
			return 0, err
		}
		*dst = nb.(*buf)
	}
	if err := d.Launch("to_bf16", src.n, device.Buffer(src), device.Buffer(*dst), src.n); err != nil {
		return 0, err
	}
	return uintptr((*dst).p), nil
}

// Sync waits for the device's work and returns its first error.
func (d *Device) Sync() error {
	return d.do(func() error {
		if err := cu.Synchronize(); err != nil {
			return fmt.Errorf("cuda: %s: cuCtxSynchronize: %w", d.name, drv(err))
		}
		return nil
	})
}

// Close releases the cuBLAS handle, the module and the primary context.
func (d *Device) Close() error {
	var errs []error
	_ = d.Sync()
	d.freeComm()
	d.freePinned()
	for _, b := range []*buf{d.bfA, d.bfB} {
		if b != nil {
			d.Free(b)
		}
	}
	_ = d.do(func() error {
		if d.blas != nil {
			if st := blasDestroy(d.blas); st != 0 {
				errs = append(errs, fmt.Errorf("cublasDestroy: status %d", st))
			}
			d.blas = nil
		}
		return nil
	})
	if err := d.dev.ReleasePrimaryCtx(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// IsGPU reports whether d is a CUDA device.
func IsGPU(d device.Device) bool {
	_, ok := d.(*Device)
	return ok
}

// Describe says what this gpu build finds: the devices, and the NVRTC it
// loads (cuBLAS is loaded when a device opens).
func Describe() string {
	n, err := cu.NumDevices()
	if err != nil {
		return fmt.Sprintf("compute: the gpu build; CUDA devices cannot be counted: %v", err)
	}
	lib := nvrtc.Library()
	if lib == "" {
		lib = fmt.Sprint(nvrtc.Load())
	}
	return fmt.Sprintf("compute: the gpu build, %d CUDA device(s); NVRTC %s", n, lib)
}
