//go:build cgo

package gpu

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/stretchr/testify/require"
)

// values are what a mock device reports in setValues.
type values struct {
	util, memUtil        uint32
	used, free           uint64
	power, limit, temp   uint32
	sm, maxSM, tx, rx    uint32
	throttle, oldReasons uint64
}

func valuesFor(i int) values {
	return values{
		util: uint32(10 + i), memUtil: uint32(20 + i),
		used: uint64(i+1) << 30, free: uint64(79-i) << 30,
		power: uint32(300000 + 1000*i), limit: 700000, temp: uint32(40 + i),
		sm: uint32(1500 + i), maxSM: 1980, tx: uint32(1000 * i), rx: uint32(2000 * i),
		throttle: ThrottleIdle, oldReasons: 0xdead,
	}
}

// setValues installs the sampling functions the dgxh100 mock leaves unset.
func setValues(d *server.Device, v values) {
	d.MemoryInfo.Used, d.MemoryInfo.Free = v.used, v.free
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{Gpu: v.util, Memory: v.memUtil}, nvml.SUCCESS
	}
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return v.power, nvml.SUCCESS }
	d.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return v.limit, nvml.SUCCESS }
	d.GetTemperatureFunc = func(s nvml.TemperatureSensors) (uint32, nvml.Return) {
		if s != nvml.TEMPERATURE_GPU {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return v.temp, nvml.SUCCESS
	}
	d.GetClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
		if c != nvml.CLOCK_SM {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return v.sm, nvml.SUCCESS
	}
	d.GetMaxClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
		if c != nvml.CLOCK_SM {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return v.maxSM, nvml.SUCCESS
	}
	d.GetPcieThroughputFunc = func(c nvml.PcieUtilCounter) (uint32, nvml.Return) {
		switch c {
		case nvml.PCIE_UTIL_TX_BYTES:
			return v.tx, nvml.SUCCESS
		case nvml.PCIE_UTIL_RX_BYTES:
			return v.rx, nvml.SUCCESS
		}
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return v.throttle, nvml.SUCCESS }
	d.GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) { return v.oldReasons, nvml.SUCCESS }
}

// newH100 returns the 8-GPU DGX H100 mock with sampling values installed.
func newH100(t *testing.T) (*server.Server, []*server.Device) {
	t.Helper()
	s := dgxh100.New()
	require.NotNil(t, s)
	devs := make([]*server.Device, len(s.Devices))
	for i, d := range s.Devices {
		devs[i] = d.(*server.Device)
		setValues(devs[i], valuesFor(i))
	}
	return s, devs
}

func TestDevicesDGXH100(t *testing.T) {
	s, devs := newH100(t)
	n, err := NewNVML(s)
	require.NoError(t, err)

	infos := n.Devices()
	require.Len(t, infos, 8)
	seen := map[string]bool{}
	for i, d := range infos {
		require.Equal(t, i, d.Index)
		require.Equal(t, "NVIDIA H100 80GB HBM3", d.Name)
		require.Equal(t, devs[i].UUID, d.UUID)
		require.True(t, strings.HasPrefix(d.UUID, "GPU-"))
		require.False(t, seen[d.UUID], "duplicate UUID")
		seen[d.UUID] = true
		require.Equal(t, uint64(81920)<<20, d.MemTotalBytes)
		require.Equal(t, "9.0", d.ComputeCapability())
		require.Equal(t, "550.54.15", d.DriverVersion)
		require.Equal(t, "12.4", d.CUDAVersion())
	}
	// Devices returns a copy.
	infos[0].Name = "changed"
	require.Equal(t, "NVIDIA H100 80GB HBM3", n.Devices()[0].Name)

	require.NoError(t, n.Close())
	require.NoError(t, n.Close())
	require.Len(t, s.ShutdownCalls(), 1, "Close calls Shutdown exactly once")
	require.Nil(t, n.Devices())
	_, err = n.Sample()
	require.ErrorIs(t, err, ErrClosed)
}

func TestSampleDGXH100(t *testing.T) {
	s, devs := newH100(t)
	v3 := valuesFor(3)
	v3.throttle = ThrottleSWPowerCap | ThrottleHWThermal
	setValues(devs[3], v3)
	v5 := valuesFor(5)
	v5.throttle = ThrottleHWSlowdown | ThrottleSWThermal | ThrottlePowerBrake | ThrottleSyncBoost | ThrottleApplicationsClocks
	setValues(devs[5], v5)
	for _, d := range devs {
		d.GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) {
			t.Error("deprecated throttle-reasons call used although the event-reasons symbol exists")
			return 0, nvml.ERROR_UNKNOWN
		}
	}

	n, err := NewNVML(s)
	require.NoError(t, err)
	defer n.Close()

	stats, err := n.Sample()
	require.NoError(t, err)
	require.Len(t, stats, 8)
	for i, st := range stats {
		want := valuesFor(i)
		require.Equal(t, i, st.Index)
		require.Equal(t, "NVIDIA H100 80GB HBM3", st.Name)
		require.Equal(t, devs[i].UUID, st.UUID)
		require.Equal(t, want.util, st.UtilGPUPercent)
		require.Equal(t, want.memUtil, st.UtilMemPercent)
		require.Equal(t, want.used, st.MemUsedBytes)
		require.Equal(t, want.free, st.MemFreeBytes)
		require.Equal(t, uint64(81920)<<20, st.MemTotalBytes)
		require.Equal(t, want.power, st.PowerMilliwatts)
		require.Equal(t, want.limit, st.PowerLimitMilliwatts)
		require.Equal(t, want.temp, st.TemperatureC)
		require.Equal(t, want.sm, st.SMClockMHz)
		require.Equal(t, want.maxSM, st.MaxSMClockMHz)
		require.Equal(t, want.tx, st.PCIeTxKBps)
		require.Equal(t, want.rx, st.PCIeRxKBps)
		require.Nil(t, st.Missing, "device %d", i)
		switch i {
		case 3:
			require.Equal(t, uint64(0x44), st.ThrottleReasons)
			require.Equal(t, []string{"sw_power_cap", "hw_thermal"}, st.Throttle)
		case 5:
			require.Equal(t, []string{"applications_clocks", "hw_slowdown", "sync_boost", "sw_thermal", "power_brake"}, st.Throttle)
		default:
			require.Equal(t, ThrottleIdle, st.ThrottleReasons)
			require.Equal(t, []string{"idle"}, st.Throttle)
		}
	}

	// What the load balancer takes from these samples: free memory, SM
	// clock, and only the throttle reasons that slow the device down.
	require.Equal(t, Headroom{FreeBytes: 76 << 30, ClockMHz: 1503, Slowdown: ThrottleSWPowerCap | ThrottleHWThermal}, DeviceHeadroom(stats[3]))
	require.Equal(t, ThrottleHWSlowdown|ThrottleSWThermal|ThrottlePowerBrake, DeviceHeadroom(stats[5]).Slowdown,
		"sync boost and application clocks are the job's own settings")
	require.Zero(t, DeviceHeadroom(stats[0]).Slowdown, "an idle GPU is not slowed down")

	// A second sample sees changed values.
	v0 := valuesFor(0)
	v0.temp, v0.util = 83, 97
	setValues(devs[0], v0)
	stats, err = n.Sample()
	require.NoError(t, err)
	require.Equal(t, uint32(83), stats[0].TemperatureC)
	require.Equal(t, uint32(97), stats[0].UtilGPUPercent)
}

func TestSampleOlderDriverUsesThrottleReasons(t *testing.T) {
	s, devs := newH100(t)
	s.LookupSymbolFunc = func(sym string) error {
		if sym == "nvmlDeviceGetCurrentClocksEventReasons" {
			return errors.New("undefined symbol")
		}
		return nil
	}
	for _, d := range devs {
		d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
			t.Error("event-reasons call made although the driver lacks the symbol")
			return 0, nvml.ERROR_FUNCTION_NOT_FOUND
		}
	}
	n, err := NewNVML(s)
	require.NoError(t, err)
	defer n.Close()
	stats, err := n.Sample()
	require.NoError(t, err)
	require.Equal(t, uint64(0xdead), stats[0].ThrottleReasons)
	require.Equal(t, DecodeThrottle(0xdead), stats[0].Throttle)
	require.Nil(t, stats[0].Missing)
}

func TestSampleAbsentSymbolIsMissingAndNeverCalled(t *testing.T) {
	s, devs := newH100(t)
	absent := map[string]bool{"nvmlDeviceGetPcieThroughput": true, "nvmlDeviceGetCurrentClocksEventReasons": true, "nvmlDeviceGetCurrentClocksThrottleReasons": true}
	s.LookupSymbolFunc = func(sym string) error {
		if absent[sym] {
			return fmt.Errorf("undefined symbol: %s", sym)
		}
		return nil
	}
	for _, d := range devs {
		d.GetPcieThroughputFunc = func(nvml.PcieUtilCounter) (uint32, nvml.Return) {
			t.Error("PCIe call made although the driver lacks the symbol")
			return 0, nvml.ERROR_FUNCTION_NOT_FOUND
		}
		d.GetCurrentClocksEventReasonsFunc = nil // would panic if called
		d.GetCurrentClocksThrottleReasonsFunc = nil
	}
	n, err := NewNVML(s)
	require.NoError(t, err)
	defer n.Close()
	stats, err := n.Sample()
	require.NoError(t, err)
	require.Len(t, stats, 8)
	for i, st := range stats {
		require.Equal(t, []string{FieldPCIeTx, FieldPCIeRx, FieldThrottle}, st.Missing, "device %d", i)
		require.Equal(t, valuesFor(i).temp, st.TemperatureC)
	}
}

func TestSampleNotSupportedLandsInMissing(t *testing.T) {
	s, devs := newH100(t)
	devs[2].GetPowerUsageFunc = func() (uint32, nvml.Return) { return 123, nvml.ERROR_NOT_SUPPORTED }
	devs[2].GetPcieThroughputFunc = func(nvml.PcieUtilCounter) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	devs[5].GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_FUNCTION_NOT_FOUND }
	devs[6].GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NO_PERMISSION }

	n, err := NewNVML(s)
	require.NoError(t, err)
	defer n.Close()
	stats, err := n.Sample()
	require.NoError(t, err, "unsupported fields are not errors")
	require.Len(t, stats, 8)

	require.Equal(t, []string{FieldPower, FieldPCIeTx, FieldPCIeRx}, stats[2].Missing)
	require.Zero(t, stats[2].PowerMilliwatts, "a value returned with an error is not used")
	require.Equal(t, valuesFor(2).temp, stats[2].TemperatureC)
	require.Equal(t, []string{FieldTemperature}, stats[5].Missing)
	require.Equal(t, valuesFor(5).power, stats[5].PowerMilliwatts)
	require.Equal(t, []string{FieldUtilGPU, FieldUtilMem}, stats[6].Missing)
	for _, i := range []int{0, 1, 3, 4, 7} {
		require.Nil(t, stats[i].Missing, "device %d", i)
	}
}

func TestSampleGPULostIsReportedButSampleCompletes(t *testing.T) {
	s, devs := newH100(t)
	lost := func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST }
	devs[4].GetUtilizationRatesFunc = lost
	devs[4].GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }

	n, err := NewNVML(s)
	require.NoError(t, err)
	defer n.Close()
	stats, err := n.Sample()
	require.Error(t, err)
	require.ErrorIs(t, err, nvml.ERROR_GPU_IS_LOST)
	var re *ReturnError
	require.ErrorAs(t, err, &re)
	require.Contains(t, err.Error(), "gpu 4 ")
	require.Contains(t, err.Error(), "ERROR_GPU_IS_LOST")
	require.Contains(t, err.Error(), "and 1 more failed reads")
	require.Len(t, stats, 8)
	require.Equal(t, []string{FieldUtilGPU, FieldUtilMem, FieldPower}, stats[4].Missing)
	require.Equal(t, valuesFor(4).temp, stats[4].TemperatureC)
	require.Equal(t, valuesFor(7).util, stats[7].UtilGPUPercent)
}

// initFailingLib is a go-nvml mock whose Init fails and whose other
// functions fail the test; the mock panics on any function left unset.
func initFailingLib(t *testing.T, ret nvml.Return) *mock.Interface {
	called := func(name string) { t.Errorf("%s called after a failed Init", name) }
	return &mock.Interface{
		InitFunc: func() nvml.Return { return ret },
		ShutdownFunc: func() nvml.Return {
			called("Shutdown")
			return nvml.SUCCESS
		},
		DeviceGetCountFunc: func() (int, nvml.Return) {
			called("DeviceGetCount")
			return 0, nvml.SUCCESS
		},
		DeviceGetHandleByIndexFunc: func(int) (nvml.Device, nvml.Return) {
			called("DeviceGetHandleByIndex")
			return nil, nvml.ERROR_UNKNOWN
		},
		SystemGetDriverVersionFunc: func() (string, nvml.Return) {
			called("SystemGetDriverVersion")
			return "", nvml.ERROR_UNKNOWN
		},
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) {
			called("SystemGetCudaDriverVersion")
			return 0, nvml.ERROR_UNKNOWN
		},
		ExtensionsFunc: func() nvml.ExtendedInterface {
			called("Extensions")
			return nil
		},
		ErrorStringFunc: func(nvml.Return) string {
			called("ErrorString")
			return ""
		},
	}
}

func TestInitFailureIsErrNoDriverAndNothingElseIsCalled(t *testing.T) {
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("an NVML function was called after a failed Init: %v", r)
		}
	}()
	lib := initFailingLib(t, nvml.ERROR_LIBRARY_NOT_FOUND)
	n, err := NewNVML(lib)
	require.Nil(t, n)
	require.ErrorIs(t, err, ErrNoDriver)
	require.ErrorIs(t, err, nvml.ERROR_LIBRARY_NOT_FOUND)
	require.True(t, strings.HasPrefix(err.Error(), "no NVIDIA driver found: libnvidia-ml.so.1 could not be loaded (ERROR_LIBRARY_NOT_FOUND"), err.Error())
	require.Len(t, lib.InitCalls(), 1)

	// The failed (nil) monitor is safe to use and reaches nothing.
	require.Nil(t, n.Devices())
	_, err = n.Sample()
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, n.Close())
	var zero NVML
	require.Nil(t, zero.Devices())
	_, err = zero.Sample()
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, zero.Close())
	require.Empty(t, lib.ShutdownCalls())
	require.Empty(t, lib.DeviceGetCountCalls())

	// A loaded library whose Init fails (kernel module missing) is also "no driver".
	lib = initFailingLib(t, nvml.ERROR_DRIVER_NOT_LOADED)
	_, err = NewNVML(lib)
	require.ErrorIs(t, err, ErrNoDriver)
	require.ErrorIs(t, err, nvml.ERROR_DRIVER_NOT_LOADED)
	require.Contains(t, err.Error(), "kernel module is not loaded")
	require.Empty(t, lib.ShutdownCalls())

	_, err = NewNVML(nil)
	require.ErrorIs(t, err, ErrNoDriver)
}

func TestEnumerationFailureShutsDown(t *testing.T) {
	s, _ := newH100(t)
	s.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	n, err := NewNVML(s)
	require.Nil(t, n)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrNoDriver)
	require.ErrorIs(t, err, nvml.ERROR_UNKNOWN)
	require.Len(t, s.ShutdownCalls(), 1, "Init succeeded, so Shutdown balances it")
}

func TestOpenNVMLWithoutDriver(t *testing.T) {
	n, err := OpenNVML()
	if err == nil {
		n.Close()
		t.Skip("an NVIDIA driver is installed on this machine")
	}
	require.ErrorIs(t, err, ErrNoDriver)
	// Either the library is missing, or it is there (Debian's libnvidia-ml1,
	// which the CUDA packages pull in) without a kernel module behind it.
	msg := err.Error()
	require.True(t, strings.HasPrefix(msg, "no NVIDIA driver found: libnvidia-ml.so.1 could not be loaded (") ||
		strings.HasPrefix(msg, "no NVIDIA driver found: libnvidia-ml.so.1 was loaded but NVML failed to initialise ("), msg)
	require.Nil(t, n)
	_, err = n.Sample()
	require.ErrorIs(t, err, ErrClosed)
}

func TestDecodeThrottle(t *testing.T) {
	require.Nil(t, DecodeThrottle(0))
	require.Equal(t, []string{"idle"}, DecodeThrottle(1))
	require.Equal(t, []string{
		"idle", "applications_clocks", "sw_power_cap", "hw_slowdown", "sync_boost", "sw_thermal",
		"hw_thermal", "power_brake", "display_clocks", "board_limit", "reliability",
	}, DecodeThrottle(uint64(nvml.ClocksEventReasonAll)))
	require.Equal(t, []string{"sw_power_cap", "bit_20", "bit_63"}, DecodeThrottle(ThrottleSWPowerCap|1<<20|1<<63))
	// The constants match go-nvml's.
	require.Equal(t, uint64(nvml.ClocksThrottleReasonHwPowerBrakeSlowdown), ThrottlePowerBrake)
	require.Equal(t, uint64(nvml.ClocksEventReasonSwThermalSlowdown), ThrottleSWThermal)
}

func TestReturnErrorText(t *testing.T) {
	require.Equal(t, "ERROR_NOT_SUPPORTED", (&ReturnError{Ret: nvml.ERROR_NOT_SUPPORTED}).Error())
	require.Equal(t, "NVML return code 77", (&ReturnError{Ret: nvml.Return(77)}).Error())
}

func TestDescribeDGXH100(t *testing.T) {
	srv, devs := newH100(t)
	n, err := NewNVML(srv)
	require.NoError(t, err)
	defer n.Close()

	var buf bytes.Buffer
	require.NoError(t, Describe(&buf, n))
	out := buf.String()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.Len(t, lines, 10, out)
	require.Equal(t, "NVIDIA driver 550.54.15, CUDA 12.4, 8 GPUs", lines[0])
	require.Regexp(t, `^INDEX\s+NAME\s+MEMORY\s+COMPUTE\s+DRIVER\s+UUID$`, lines[1])
	for i, l := range lines[2:] {
		f := strings.Fields(l)
		// index, name (4 words), memory (2), compute, driver, uuid
		require.Len(t, f, 10, l)
		require.Equal(t, fmt.Sprint(i), f[0])
		require.Equal(t, "NVIDIA H100 80GB HBM3", strings.Join(f[1:5], " "))
		require.Equal(t, "80.0 GiB", strings.Join(f[5:7], " "))
		require.Equal(t, "9.0", f[7])
		require.Equal(t, "550.54.15", f[8])
		require.Equal(t, devs[i].UUID, f[9])
	}

	var empty bytes.Buffer
	require.NoError(t, Describe(&empty, &fakeMonitor{}))
	require.Contains(t, empty.String(), "fake")
	require.Error(t, Describe(&empty, nil))
}

func TestDescribeSystemWithDriver(t *testing.T) {
	srv, _ := newH100(t)
	old := openNVML
	t.Cleanup(func() { openNVML = old })
	openNVML = func() (*NVML, error) { return NewNVML(srv) }

	var buf bytes.Buffer
	require.NoError(t, DescribeSystem(&buf))
	out := buf.String()
	require.True(t, strings.HasPrefix(out, "NVIDIA driver 550.54.15, CUDA 12.4, 8 GPUs\n"), out)
	require.Equal(t, 8, strings.Count(out, "NVIDIA H100 80GB HBM3"))
	require.Contains(t, out, "CPU: ")
	require.Len(t, srv.ShutdownCalls(), 1, "DescribeSystem closes what it opened")

	// An NVML failure after the driver loaded is printed and returned.
	openNVML = func() (*NVML, error) {
		return nil, fmt.Errorf("gpu: counting devices: %w", &ReturnError{Ret: nvml.ERROR_UNKNOWN})
	}
	buf.Reset()
	err := DescribeSystem(&buf)
	require.ErrorIs(t, err, nvml.ERROR_UNKNOWN)
	require.False(t, errors.Is(err, ErrNoDriver))
	require.Contains(t, buf.String(), "could not be listed")
	require.Contains(t, buf.String(), "CPU: ")
}

func TestSamplerOnNVMLMock(t *testing.T) {
	srv, _ := newH100(t)
	n, err := NewNVML(srv)
	require.NoError(t, err)
	tk := &fakeTicker{ch: make(chan time.Time)}
	s := NewSampler(n, time.Second, WithTicker(func(time.Duration) Ticker { return tk }))
	waitSamples(t, s, 1)
	tk.ch <- time.Now()
	waitSamples(t, s, 2)
	stats, at := s.Latest()
	require.Len(t, stats, 8)
	require.False(t, at.IsZero())
	require.Equal(t, valuesFor(7).temp, stats[7].TemperatureC)
	require.NoError(t, s.Err())
	s.Stop()

	// Closing the monitor under a running sampler gives errors, not crashes.
	tk2 := &fakeTicker{ch: make(chan time.Time)}
	s = NewSampler(n, time.Second, WithTicker(func(time.Duration) Ticker { return tk2 }))
	waitSamples(t, s, 1)
	require.NoError(t, n.Close())
	tk2.ch <- time.Now()
	waitSamples(t, s, 2)
	require.ErrorIs(t, s.Err(), ErrClosed)
	stats, _ = s.Latest()
	require.Len(t, stats, 8, "the last good sample is kept")
	s.Stop()
}
