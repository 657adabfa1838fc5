package main

import (
	"log/slog"
	"time"

	"github.com/gotrain/gotrain/gpu"
	"github.com/gotrain/gotrain/trainer/metrics/prom"
)

// startMonitor feeds the Prometheus exporter with this process's CPU use
// and memory and, where an NVIDIA driver is present, every GPU's NVML
// statistics, every interval. It returns the function that stops it.
func startMonitor(exp *prom.Exporter, interval time.Duration, log *slog.Logger) func() {
	cpu := gpu.NewCPUMonitor()
	nv, err := gpu.OpenNVML()
	if err != nil {
		log.Debug("no GPU statistics", "reason", err)
		nv = nil
	}
	update := func() {
		s := cpu.Sample()
		exp.SetCPU(s.CPUPercent, float64(s.RSSBytes))
		if nv == nil {
			return
		}
		stats, _ := nv.Sample()
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
		if nv != nil {
			nv.Close()
		}
	}
}
