// Package gpu monitors gotrain's devices: GPUs through NVML, and the CPU.
// The GPU build's compute lives in the packages below it: gpu/device (the
// Device interface and the host reference device), gpu/executor (graph/'s
// programs and the optimisers on a device), gpu/cuda (the CUDA device,
// gpu build only) and gpu/cudacheck.
//
// # Monitoring
//
// A Monitor lists the GPUs once (Devices: index, name, UUID, memory,
// compute capability, driver and CUDA version) and reads them on demand
// (Sample: utilisation, memory, power and its limit, temperature, SM clock
// and its maximum, PCIe traffic, clock throttle reasons). NVML is the
// Monitor backed by NVIDIA's management library:
//
//	m, err := gpu.OpenNVML()
//	if errors.Is(err, gpu.ErrNoDriver) {
//		// a CPU-only machine: carry on without GPU metrics
//	}
//	defer m.Close()
//	s := gpu.NewSampler(m, 5*time.Second)
//	defer s.Stop()
//	stats, at := s.Latest()
//
// A Sampler samples a Monitor in one goroutine, at start and then every
// interval; Latest returns the newest statistics, Err the newest error, and
// Stop ends the goroutine and waits for it. Ticker and clock can be injected
// (WithTicker, WithClock), and WithOnSample hands every sample to a metrics
// writer.
//
// CPUMonitor is the same for ranks that train on the CPU: the training loop
// calls RecordStep(duration, samples) once a step (constant time, no
// allocation) and a reporter calls Sample for CPU use, resident memory,
// goroutines, mean step time and samples per second, so CPU and GPU ranks
// feed the load balancer and the metrics file alike. On Linux the process
// figures come from getrusage and /proc/self/statm; elsewhere they are 0
// and CPUMonitor.Err says why.
//
// Describe prints the device table of `gotrain devices`; DescribeSystem
// opens NVML itself and prints either that table or the line
// "no NVIDIA driver found: ...", followed by the CPU (logical CPUs and the
// model named in /proc/cpuinfo).
//
// Monitoring has no build tag and is in every build.
//
// # Loading at run time
//
// Nothing NVIDIA is needed to build or start gotrain. OpenNVML uses
// go-nvml's loader (nvml.New), which dlopens libnvidia-ml.so.1 when Init
// is called; the binary has no link-time dependency on the driver. go-nvml
// is a cgo package: it needs a C compiler at build time but no NVIDIA
// headers or libraries (they ship inside go-nvml). In a build without cgo
// (CGO_ENABLED=0) the package still compiles: go-nvml is left out, NewNVML
// and ReturnError do not exist, and OpenNVML always fails with ErrNoDriver
// ("... built without cgo ..."), so `gotrain devices` and the CPU monitor
// work as on a machine without a driver.
//
// Functions newer than the oldest drivers are looked up first with
// go-nvml's Extensions().LookupSymbol: calling a symbol the loaded library
// lacks would stop the process in the dynamic linker, so an absent symbol
// is never called and its fields are reported missing. For throttle reasons
// nvmlDeviceGetCurrentClocksEventReasons (driver 535 and later) is used when
// present, the older nvmlDeviceGetCurrentClocksThrottleReasons otherwise.
// NewNVML takes any nvml.Interface, so tests run on go-nvml's mock servers
// (for example mock/dgxh100, eight H100s).
//
// # Error policy
//
//   - No driver: when Init fails, OpenNVML and NewNVML return an error that
//     wraps ErrNoDriver (and the nvml.Return, through *ReturnError), reading
//     "no NVIDIA driver found: libnvidia-ml.so.1 could not be loaded (...)".
//     Nothing else is called on the library after a failed Init, since NVML
//     calls on an uninitialised library crash the process. A nil, zero or
//     closed *NVML is safe to call: Sample returns ErrClosed and Close nil.
//   - Enumeration failures after a successful Init are returned (not
//     wrapped in ErrNoDriver) after Shutdown balances the Init.
//   - Per field: a value the GPU or driver does not offer
//     (ERROR_NOT_SUPPORTED, ERROR_FUNCTION_NOT_FOUND or an absent symbol,
//     ERROR_NO_PERMISSION, ERROR_NOT_FOUND, ERROR_NO_DATA) is left zero and
//     named in DeviceStats.Missing; the sample still succeeds. Any other
//     failure (ERROR_GPU_IS_LOST, ERROR_UNKNOWN, ...) also names the field
//     in Missing, and Sample returns an error alongside the full slice.
//   - The Sampler never crashes the trainer: errors (and panics of a
//     faulty Monitor) are kept for Err, and the last good statistics stay
//     in Latest.
//   - Error texts never call nvmlErrorString; ReturnError names the code
//     itself and adds a hint for the common ones.
//   - Close calls Shutdown exactly once; further Closes return nil.
//
// # Units
//
// Units are part of every field name: Percent (0-100; for CPUPercent 100
// means one core), Bytes, Milliwatts, C (degrees Celsius), MHz, KBps
// (kilobytes per second, as NVML reports PCIe traffic), Seconds, PerSec.
// DeviceStats' JSON names are the same in snake case (util_gpu_percent,
// mem_used_bytes, ...), and those are the names listed in Missing (the
// Field* constants). Throttle reasons are the raw NVML bit mask plus its
// decoding by DecodeThrottle: idle, applications_clocks, sw_power_cap,
// hw_slowdown, sync_boost, sw_thermal, hw_thermal, power_brake,
// display_clocks, board_limit, reliability.
//
// # Cost
//
// NVML's PCIe counters each sample over 20 ms, so one NVML Sample takes
// about 40 ms per GPU (a third of a second on eight): sample every few
// seconds, from the Sampler's goroutine, never from the training step.
package gpu
