//go:build cgo

package gpu

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVML is the Monitor backed by NVIDIA's management library, loaded at run
// time. It is safe for concurrent use; calls are serialised. A nil or zero
// NVML, or one that has been closed, is safe to call: Devices returns nil,
// Sample returns ErrClosed and Close returns nil, and none of them reaches
// the library.
type NVML struct {
	mu      sync.Mutex
	lib     nvml.Interface // nil once closed, and in the zero value
	devices []nvml.Device
	infos   []DeviceInfo
	readers []fieldReader
	absent  []string // fields whose NVML symbol the driver lacks, in field order
}

var _ Monitor = (*NVML)(nil)

// OpenNVML loads libnvidia-ml.so.1 (go-nvml's dlopen at Init) and
// enumerates the GPUs. Without a driver it returns an error wrapping
// ErrNoDriver whose text starts "no NVIDIA driver found: ".
func OpenNVML() (*NVML, error) {
	return NewNVML(nvml.New())
}

// NewNVML opens a monitor on lib, which may be go-nvml's library or one of
// its mocks. It calls lib.Init first; if that fails it returns an error
// wrapping ErrNoDriver and calls nothing else on lib (NVML functions called
// after a failed Init crash the process). Once Init has succeeded, a later
// failure (enumerating the devices) calls lib.Shutdown before returning.
func NewNVML(lib nvml.Interface) (*NVML, error) {
	if lib == nil {
		return nil, fmt.Errorf("%w: no NVML library given", ErrNoDriver)
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, initError(ret)
	}
	n := &NVML{lib: lib}
	if err := n.open(); err != nil {
		lib.Shutdown()
		return nil, err
	}
	return n, nil
}

func initError(ret nvml.Return) error {
	re := &ReturnError{Ret: ret}
	if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
		return fmt.Errorf("%w: %s could not be loaded (%w)", ErrNoDriver, nvmlLibraryName, re)
	}
	return fmt.Errorf("%w: %s was loaded but NVML failed to initialise (%w)", ErrNoDriver, nvmlLibraryName, re)
}

// open enumerates the devices and picks the readers the driver supports.
// Called with Init done and n not yet shared.
func (n *NVML) open() error {
	lookup := symbolChecker(n.lib)

	driver, ret := n.lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		driver = ""
	}
	cuda := 0
	if lookup("nvmlSystemGetCudaDriverVersion") {
		if v, ret := n.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
			cuda = v
		}
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: counting devices: %w", &ReturnError{Ret: ret})
	}
	hasCC := lookup("nvmlDeviceGetCudaComputeCapability")
	for i := 0; i < count; i++ {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS || d == nil {
			if ret == nvml.SUCCESS {
				ret = nvml.ERROR_UNKNOWN
			}
			return fmt.Errorf("gpu: device %d of %d: %w", i, count, &ReturnError{Ret: ret})
		}
		info := DeviceInfo{Index: i, ComputeMajor: -1, ComputeMinor: -1, DriverVersion: driver, CUDADriverVersion: cuda}
		if s, ret := d.GetName(); ret == nvml.SUCCESS {
			info.Name = s
		}
		if s, ret := d.GetUUID(); ret == nvml.SUCCESS {
			info.UUID = s
		}
		if m, ret := d.GetMemoryInfo(); ret == nvml.SUCCESS {
			info.MemTotalBytes = m.Total
		}
		if hasCC {
			if major, minor, ret := d.GetCudaComputeCapability(); ret == nvml.SUCCESS {
				info.ComputeMajor, info.ComputeMinor = major, minor
			}
		}
		n.devices = append(n.devices, d)
		n.infos = append(n.infos, info)
	}
	for _, r := range allReaders(lookup) {
		if r.read == nil {
			n.absent = append(n.absent, r.fields...)
		} else {
			n.readers = append(n.readers, r)
		}
	}
	return nil
}

// Devices returns a copy of the GPUs enumerated at open; nil when closed.
func (n *NVML) Devices() []DeviceInfo {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lib == nil {
		return nil
	}
	return append([]DeviceInfo(nil), n.infos...)
}

// Sample reads every device once and returns one entry per device, in
// Devices order.
//
// A field the driver cannot report is left zero and named in Missing. When
// the reason is expected on some GPUs or drivers (ERROR_NOT_SUPPORTED,
// ERROR_FUNCTION_NOT_FOUND or a symbol an older driver lacks,
// ERROR_NO_PERMISSION, ERROR_NOT_FOUND, ERROR_NO_DATA) that is all.
// Any other failure (ERROR_GPU_IS_LOST, ERROR_UNKNOWN, ...) also produces a
// non-nil error, one line per affected device, while the returned slice still
// holds every device with whatever could be read. The error wraps a
// *ReturnError, so errors.Is(err, nvml.ERROR_GPU_IS_LOST) works.
//
// NVML's PCIe throughput counters sample over 20 ms each, so one Sample
// takes about 40 ms per GPU; sample no more than a few times a second.
func (n *NVML) Sample() ([]DeviceStats, error) {
	if n == nil {
		return nil, ErrClosed
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lib == nil {
		return nil, ErrClosed
	}
	out := make([]DeviceStats, len(n.devices))
	var errs []error
	for i, d := range n.devices {
		s := &out[i]
		info := n.infos[i]
		s.Index, s.Name, s.UUID = info.Index, info.Name, info.UUID
		if len(n.absent) > 0 {
			s.Missing = append(s.Missing, n.absent...)
		}
		var first error
		failed := 0
		for _, r := range n.readers {
			ret := r.read(d, s)
			if ret == nvml.SUCCESS {
				continue
			}
			s.Missing = append(s.Missing, r.fields...)
			if expectedMissing(ret) {
				continue
			}
			failed++
			if first == nil {
				first = fmt.Errorf("gpu %d (%s): reading %s: %w", info.Index, info.UUID, strings.Join(r.fields, ", "), &ReturnError{Ret: ret})
			}
		}
		if failed > 1 {
			first = fmt.Errorf("%w (and %d more failed reads)", first, failed-1)
		}
		if first != nil {
			errs = append(errs, first)
		}
	}
	return out, errors.Join(errs...)
}

// Close shuts NVML down. Only the first Close of an opened NVML calls
// lib.Shutdown; later ones, and Close on a nil or zero NVML, return nil.
func (n *NVML) Close() error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	lib := n.lib
	if lib == nil {
		return nil
	}
	n.lib, n.devices, n.readers = nil, nil, nil
	if ret := lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("gpu: NVML shutdown: %w", &ReturnError{Ret: ret})
	}
	return nil
}

// expectedMissing reports whether ret means "this GPU or driver does not
// offer the value" rather than a failure worth reporting.
func expectedMissing(ret nvml.Return) bool {
	switch ret {
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND, nvml.ERROR_NO_PERMISSION,
		nvml.ERROR_NOT_FOUND, nvml.ERROR_NO_DATA:
		return true
	}
	return false
}

// fieldReader reads some DeviceStats fields with one NVML call. read is nil
// when the driver lacks the symbol.
type fieldReader struct {
	fields []string
	read   func(nvml.Device, *DeviceStats) nvml.Return
}

// allReaders lists the readers in field order. lookup reports whether the
// loaded library has a symbol: calling a symbol an older libnvidia-ml.so
// lacks would abort the process in the dynamic linker, so an absent one is
// never called and its fields are reported missing.
func allReaders(lookup func(string) bool) []fieldReader {
	only := func(symbol string, fields []string, read func(nvml.Device, *DeviceStats) nvml.Return) fieldReader {
		if !lookup(symbol) {
			read = nil
		}
		return fieldReader{fields: fields, read: read}
	}
	throttle := fieldReader{fields: []string{FieldThrottle}}
	switch {
	case lookup("nvmlDeviceGetCurrentClocksEventReasons"): // driver 535 and later
		throttle.read = func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetCurrentClocksEventReasons()
			if ret == nvml.SUCCESS {
				s.ThrottleReasons, s.Throttle = v, DecodeThrottle(v)
			}
			return ret
		}
	case lookup("nvmlDeviceGetCurrentClocksThrottleReasons"):
		throttle.read = func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetCurrentClocksThrottleReasons()
			if ret == nvml.SUCCESS {
				s.ThrottleReasons, s.Throttle = v, DecodeThrottle(v)
			}
			return ret
		}
	}
	return []fieldReader{
		only("nvmlDeviceGetUtilizationRates", []string{FieldUtilGPU, FieldUtilMem}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			u, ret := d.GetUtilizationRates()
			if ret == nvml.SUCCESS {
				s.UtilGPUPercent, s.UtilMemPercent = u.Gpu, u.Memory
			}
			return ret
		}),
		only("nvmlDeviceGetMemoryInfo", []string{FieldMemUsed, FieldMemTotal, FieldMemFree}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			m, ret := d.GetMemoryInfo()
			if ret == nvml.SUCCESS {
				s.MemUsedBytes, s.MemTotalBytes, s.MemFreeBytes = m.Used, m.Total, m.Free
			}
			return ret
		}),
		only("nvmlDeviceGetPowerUsage", []string{FieldPower}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetPowerUsage()
			if ret == nvml.SUCCESS {
				s.PowerMilliwatts = v
			}
			return ret
		}),
		only("nvmlDeviceGetEnforcedPowerLimit", []string{FieldPowerLimit}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetEnforcedPowerLimit()
			if ret == nvml.SUCCESS {
				s.PowerLimitMilliwatts = v
			}
			return ret
		}),
		only("nvmlDeviceGetTemperature", []string{FieldTemperature}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetTemperature(nvml.TEMPERATURE_GPU)
			if ret == nvml.SUCCESS {
				s.TemperatureC = v
			}
			return ret
		}),
		only("nvmlDeviceGetClockInfo", []string{FieldSMClock}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetClockInfo(nvml.CLOCK_SM)
			if ret == nvml.SUCCESS {
				s.SMClockMHz = v
			}
			return ret
		}),
		only("nvmlDeviceGetMaxClockInfo", []string{FieldMaxSMClock}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetMaxClockInfo(nvml.CLOCK_SM)
			if ret == nvml.SUCCESS {
				s.MaxSMClockMHz = v
			}
			return ret
		}),
		only("nvmlDeviceGetPcieThroughput", []string{FieldPCIeTx}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetPcieThroughput(nvml.PCIE_UTIL_TX_BYTES)
			if ret == nvml.SUCCESS {
				s.PCIeTxKBps = v
			}
			return ret
		}),
		only("nvmlDeviceGetPcieThroughput", []string{FieldPCIeRx}, func(d nvml.Device, s *DeviceStats) nvml.Return {
			v, ret := d.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES)
			if ret == nvml.SUCCESS {
				s.PCIeRxKBps = v
			}
			return ret
		}),
		throttle,
	}
}

// symbolChecker returns a function reporting whether lib's loaded library
// has a symbol, through go-nvml's Extensions().LookupSymbol. When lib offers
// no working lookup (a bare mock), every symbol is assumed present and an
// absent one shows up as ERROR_FUNCTION_NOT_FOUND from the call itself.
func symbolChecker(lib nvml.Interface) func(string) bool {
	ext := extensions(lib)
	if ext == nil {
		return func(string) bool { return true }
	}
	return func(symbol string) (ok bool) {
		defer func() {
			if recover() != nil {
				ok = true
			}
		}()
		return ext.LookupSymbol(symbol) == nil
	}
}

func extensions(lib nvml.Interface) (ext nvml.ExtendedInterface) {
	defer func() {
		if recover() != nil { // a go-nvml mock without ExtensionsFunc panics
			ext = nil
		}
	}()
	return lib.Extensions()
}

// ReturnError is an NVML return code as an error. Its text comes from this
// package, not from nvmlErrorString, so formatting it never calls into the
// library (which may not be initialised). errors.Is(err, nvml.ERROR_X)
// matches through it.
type ReturnError struct {
	Ret nvml.Return
}

func (e *ReturnError) Error() string {
	name, ok := returnNames[e.Ret]
	if !ok {
		name = fmt.Sprintf("NVML return code %d", int32(e.Ret))
	}
	if hint := returnHints[e.Ret]; hint != "" {
		return name + ": " + hint
	}
	return name
}

// Unwrap returns the nvml.Return, so errors.Is compares against it.
func (e *ReturnError) Unwrap() error { return e.Ret }

var returnNames = map[nvml.Return]string{
	nvml.SUCCESS:                       "SUCCESS",
	nvml.ERROR_UNINITIALIZED:           "ERROR_UNINITIALIZED",
	nvml.ERROR_INVALID_ARGUMENT:        "ERROR_INVALID_ARGUMENT",
	nvml.ERROR_NOT_SUPPORTED:           "ERROR_NOT_SUPPORTED",
	nvml.ERROR_NO_PERMISSION:           "ERROR_NO_PERMISSION",
	nvml.ERROR_ALREADY_INITIALIZED:     "ERROR_ALREADY_INITIALIZED",
	nvml.ERROR_NOT_FOUND:               "ERROR_NOT_FOUND",
	nvml.ERROR_INSUFFICIENT_SIZE:       "ERROR_INSUFFICIENT_SIZE",
	nvml.ERROR_INSUFFICIENT_POWER:      "ERROR_INSUFFICIENT_POWER",
	nvml.ERROR_DRIVER_NOT_LOADED:       "ERROR_DRIVER_NOT_LOADED",
	nvml.ERROR_TIMEOUT:                 "ERROR_TIMEOUT",
	nvml.ERROR_IRQ_ISSUE:               "ERROR_IRQ_ISSUE",
	nvml.ERROR_LIBRARY_NOT_FOUND:       "ERROR_LIBRARY_NOT_FOUND",
	nvml.ERROR_FUNCTION_NOT_FOUND:      "ERROR_FUNCTION_NOT_FOUND",
	nvml.ERROR_CORRUPTED_INFOROM:       "ERROR_CORRUPTED_INFOROM",
	nvml.ERROR_GPU_IS_LOST:             "ERROR_GPU_IS_LOST",
	nvml.ERROR_RESET_REQUIRED:          "ERROR_RESET_REQUIRED",
	nvml.ERROR_OPERATING_SYSTEM:        "ERROR_OPERATING_SYSTEM",
	nvml.ERROR_LIB_RM_VERSION_MISMATCH: "ERROR_LIB_RM_VERSION_MISMATCH",
	nvml.ERROR_IN_USE:                  "ERROR_IN_USE",
	nvml.ERROR_MEMORY:                  "ERROR_MEMORY",
	nvml.ERROR_NO_DATA:                 "ERROR_NO_DATA",
	nvml.ERROR_UNKNOWN:                 "ERROR_UNKNOWN",
}

var returnHints = map[nvml.Return]string{
	nvml.ERROR_LIBRARY_NOT_FOUND:       "install the NVIDIA driver, or add the directory holding " + nvmlLibraryName + " to LD_LIBRARY_PATH",
	nvml.ERROR_DRIVER_NOT_LOADED:       "the NVIDIA kernel module is not loaded",
	nvml.ERROR_LIB_RM_VERSION_MISMATCH: "the user-space library and the kernel module are different driver versions; reload the module or reboot",
	nvml.ERROR_NO_PERMISSION:           "permission denied (check access to /dev/nvidia*)",
	nvml.ERROR_GPU_IS_LOST:             "the GPU has fallen off the bus or otherwise become inaccessible",
}
