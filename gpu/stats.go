package gpu

import (
	"errors"
	"fmt"
	"math/bits"
)

// DeviceInfo describes one GPU as enumerated when the monitor was opened.
// None of it changes while the process runs.
type DeviceInfo struct {
	Index         int    `json:"index"`
	Name          string `json:"name"`
	UUID          string `json:"uuid"`
	MemTotalBytes uint64 `json:"mem_total_bytes"`
	// ComputeMajor and ComputeMinor are the CUDA compute capability
	// (9.0 for an H100); both are -1 when the driver could not report it.
	ComputeMajor int `json:"compute_major"`
	ComputeMinor int `json:"compute_minor"`
	// DriverVersion is the kernel driver's version ("550.54.15"), the same
	// for every device; CUDADriverVersion is the CUDA version the driver
	// supports, encoded as NVML does (12040 for 12.4), 0 when unknown.
	DriverVersion     string `json:"driver_version"`
	CUDADriverVersion int    `json:"cuda_driver_version"`
}

// ComputeCapability returns "major.minor", or "?" when unknown.
func (d DeviceInfo) ComputeCapability() string {
	if d.ComputeMajor < 0 {
		return "?"
	}
	return fmt.Sprintf("%d.%d", d.ComputeMajor, d.ComputeMinor)
}

// CUDAVersion returns the driver's CUDA version as "12.4", or "" when unknown.
func (d DeviceInfo) CUDAVersion() string {
	if d.CUDADriverVersion <= 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d", d.CUDADriverVersion/1000, d.CUDADriverVersion%1000/10)
}

// DeviceStats is one sample of one GPU. Units are in the field names:
// percentages 0-100, bytes, milliwatts, degrees Celsius, MHz and KB/s
// (NVML's PCIe counters are in KB/s). A field the driver could not report is
// left zero and its name (the JSON name below) is listed in Missing, so a
// zero is never mistaken for a reading.
type DeviceStats struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	UUID  string `json:"uuid"`

	UtilGPUPercent uint32 `json:"util_gpu_percent"`
	UtilMemPercent uint32 `json:"util_mem_percent"`

	MemUsedBytes  uint64 `json:"mem_used_bytes"`
	MemTotalBytes uint64 `json:"mem_total_bytes"`
	MemFreeBytes  uint64 `json:"mem_free_bytes"`

	PowerMilliwatts      uint32 `json:"power_milliwatts"`
	PowerLimitMilliwatts uint32 `json:"power_limit_milliwatts"`

	TemperatureC uint32 `json:"temperature_c"`

	SMClockMHz    uint32 `json:"sm_clock_mhz"`
	MaxSMClockMHz uint32 `json:"max_sm_clock_mhz"`

	PCIeTxKBps uint32 `json:"pcie_tx_kbps"`
	PCIeRxKBps uint32 `json:"pcie_rx_kbps"`

	// ThrottleReasons is NVML's clock event (throttle) reason bit mask and
	// Throttle its decoding by DecodeThrottle.
	ThrottleReasons uint64   `json:"throttle_reasons"`
	Throttle        []string `json:"throttle,omitempty"`

	// Missing lists, by JSON name, the fields the driver could not report
	// (not supported by this GPU, symbol absent from an older driver, no
	// permission, ...). Nil when every field was read.
	Missing []string `json:"missing,omitempty"`
}

// Names used in DeviceStats.Missing.
const (
	FieldUtilGPU     = "util_gpu_percent"
	FieldUtilMem     = "util_mem_percent"
	FieldMemUsed     = "mem_used_bytes"
	FieldMemTotal    = "mem_total_bytes"
	FieldMemFree     = "mem_free_bytes"
	FieldPower       = "power_milliwatts"
	FieldPowerLimit  = "power_limit_milliwatts"
	FieldTemperature = "temperature_c"
	FieldSMClock     = "sm_clock_mhz"
	FieldMaxSMClock  = "max_sm_clock_mhz"
	FieldPCIeTx      = "pcie_tx_kbps"
	FieldPCIeRx      = "pcie_rx_kbps"
	FieldThrottle    = "throttle_reasons"
)

// Throttle reason bits, as in nvml.h's nvmlClocksEventReason* constants.
const (
	ThrottleIdle               uint64 = 0x1
	ThrottleApplicationsClocks uint64 = 0x2
	ThrottleSWPowerCap         uint64 = 0x4
	ThrottleHWSlowdown         uint64 = 0x8
	ThrottleSyncBoost          uint64 = 0x10
	ThrottleSWThermal          uint64 = 0x20
	ThrottleHWThermal          uint64 = 0x40
	ThrottlePowerBrake         uint64 = 0x80
	ThrottleDisplayClocks      uint64 = 0x100
	ThrottleBoardLimit         uint64 = 0x200
	ThrottleReliability        uint64 = 0x400
)

var throttleNames = [...]string{
	"idle",                // 0x1
	"applications_clocks", // 0x2
	"sw_power_cap",        // 0x4
	"hw_slowdown",         // 0x8
	"sync_boost",          // 0x10
	"sw_thermal",          // 0x20
	"hw_thermal",          // 0x40
	"power_brake",         // 0x80
	"display_clocks",      // 0x100
	"board_limit",         // 0x200
	"reliability",         // 0x400
}

// DecodeThrottle names the bits of an NVML clock event (throttle) reason
// mask, lowest bit first: "idle", "applications_clocks", "sw_power_cap",
// "hw_slowdown", "sync_boost", "sw_thermal", "hw_thermal", "power_brake",
// "display_clocks", "board_limit", "reliability"; a bit a newer driver may
// set that this list does not know is named "bit_N". It returns nil for 0.
func DecodeThrottle(mask uint64) []string {
	if mask == 0 {
		return nil
	}
	out := make([]string, 0, bits.OnesCount64(mask))
	for m := mask; m != 0; m &= m - 1 {
		b := bits.TrailingZeros64(m)
		if b < len(throttleNames) {
			out = append(out, throttleNames[b])
		} else {
			out = append(out, fmt.Sprintf("bit_%d", b))
		}
	}
	return out
}

// Monitor is a source of GPU statistics. NVML is the implementation that
// talks to the driver; tests and other backends may provide their own.
type Monitor interface {
	// Devices lists the GPUs enumerated when the monitor was opened.
	Devices() []DeviceInfo
	// Sample reads every device once. It returns one entry per device, in
	// Devices order, even when it also returns an error (see NVML.Sample).
	Sample() ([]DeviceStats, error)
	// Close releases the driver; later Samples fail.
	Close() error
}

// ErrNoDriver is wrapped by the error OpenNVML and NewNVML return when the
// NVIDIA management library cannot be loaded or initialised: no driver, no
// GPU, a driver whose kernel module is not loaded. Test with errors.Is.
var ErrNoDriver = errors.New("no NVIDIA driver found")

// ErrClosed is returned by Sample on an NVML that was closed, never opened
// (the zero value) or is nil.
var ErrClosed = errors.New("gpu: NVML monitor is closed or was never opened")

// nvmlLibraryName is the file go-nvml dlopens in Init.
const nvmlLibraryName = "libnvidia-ml.so.1"
