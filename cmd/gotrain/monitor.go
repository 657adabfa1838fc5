package main

import (
	"log/slog"
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
