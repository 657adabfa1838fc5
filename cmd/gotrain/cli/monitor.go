package cli

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gotrain/gotrain/gpu"
	"github.com/gotrain/gotrain/trainer/metrics"
	"github.com/gotrain/gotrain/trainer/metrics/prom"
)

// devices samples this machine's GPUs through NVML every interval. It
// returns nil (and a no-op stop) where no NVIDIA driver is present.
func devices(interval time.Duration, log *slog.Logger) (*gpu.Sampler, func()) {
	nv, err := gpu.OpenNVML()
	if err != nil {
		log.Debug("no GPU statistics", "reason", err)
		return nil, func() {}
	}
	s := gpu.NewSampler(nv, interval)
	return s, func() { s.Stop(); nv.Close() }
}

// gpuLine is the progress line's view of GPU local (this rank's, by
// LOCAL_RANK): "gpu0 87% 12.3/80.0GiB 61C", with what NVML could not read
// left out; "" when there is no such GPU.
func gpuLine(stats []gpu.DeviceStats, local int) string {
	i := slices.IndexFunc(stats, func(d gpu.DeviceStats) bool { return d.Index == local })
	if i < 0 {
		return ""
	}
	d := stats[i]
	has := func(f string) bool { return !slices.Contains(d.Missing, f) }
	parts := []string{fmt.Sprintf("gpu%d", d.Index)}
	if has(gpu.FieldUtilGPU) {
		parts = append(parts, fmt.Sprintf("%d%%", d.UtilGPUPercent))
	}
	if has(gpu.FieldMemUsed) && has(gpu.FieldMemTotal) {
		parts = append(parts, fmt.Sprintf("%.1f/%.1fGiB", float64(d.MemUsedBytes)/(1<<30), float64(d.MemTotalBytes)/(1<<30)))
	}
	if has(gpu.FieldTemperature) {
		parts = append(parts, fmt.Sprintf("%dC", d.TemperatureC))
	}
	if slow := gpu.DecodeThrottle(d.ThrottleReasons & gpu.SlowdownReasons); len(slow) > 0 {
		parts = append(parts, "throttled:"+strings.Join(slow, ","))
	}
	return strings.Join(parts, " ")
}

// rankHeadroom is the headroom of a rank that trains on the CPU, for the
// load balancer: the free memory the system and the process's cgroup
// allow. (A rank on a GPU takes gpuHeadroom, from its GPU's NVML sample.)
// When the free memory cannot be read the share is not bounded, and the
// reason is logged once.
func rankHeadroom(log *slog.Logger) func() gpu.Headroom {
	var once sync.Once
	return func() gpu.Headroom {
		h, err := gpu.CPUHeadroom()
		if err != nil {
			once.Do(func() { log.Warn("load balancing without a memory bound", "reason", err) })
		}
		return h
	}
}

// gpuHeadroom is the headroom of the GPU a rank trains on (LOCAL_RANK
// local), from the sampler's newest sample; a GPU missing from it reports
// no bound.
func gpuHeadroom(latest func() []gpu.DeviceStats, local int) func() gpu.Headroom {
	return func() gpu.Headroom {
		for _, d := range latest() {
			if d.Index == local {
				return gpu.DeviceHeadroom(d)
			}
		}
		return gpu.Headroom{}
	}
}

// gpuRecords converts a sample for the metrics file's train records.
func gpuRecords(stats []gpu.DeviceStats) []metrics.GPU {
	out := make([]metrics.GPU, len(stats))
	for i, d := range stats {
		out[i] = metrics.GPU{Index: d.Index, UtilGPUPercent: float64(d.UtilGPUPercent), UtilMemPercent: float64(d.UtilMemPercent),
			MemUsedBytes: float64(d.MemUsedBytes), MemTotalBytes: float64(d.MemTotalBytes), PowerWatts: float64(d.PowerMilliwatts) / 1000,
			TemperatureC: float64(d.TemperatureC), SMClockMHz: float64(d.SMClockMHz), ThrottleReasons: d.Throttle}
	}
	return out
}

// startMonitor feeds the Prometheus exporter with this process's CPU use
// and memory and, when sampler is not nil, the GPUs' statistics, every
// interval. It returns the function that stops it.
func startMonitor(exp *prom.Exporter, sampler *gpu.Sampler, interval time.Duration) func() {
	cpu := gpu.NewCPUMonitor()
	update := func() {
		s := cpu.Sample()
		exp.SetCPU(s.CPUPercent, float64(s.RSSBytes))
		if sampler == nil {
			return
		}
		stats, _ := sampler.Latest()
		gauges := make([]prom.DeviceGauge, len(stats))
		for i, d := range stats {
			gauges[i] = prom.DeviceGauge{Index: d.Index, Name: d.Name, UtilGPUPercent: float64(d.UtilGPUPercent),
				UtilMemPercent: float64(d.UtilMemPercent), MemUsedBytes: float64(d.MemUsedBytes), MemTotalBytes: float64(d.MemTotalBytes),
				PowerWatts: float64(d.PowerMilliwatts) / 1000, TemperatureCelsius: float64(d.TemperatureC), SMClockHertz: float64(d.SMClockMHz) * 1e6}
		}
		exp.SetDevices(gauges)
	}
	update()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				update()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}
