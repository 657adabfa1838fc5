package gpu

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// CPUStats is the CPU-side counterpart of DeviceStats: what a rank training
// on the CPU reports to the balancer and the metrics.
type CPUStats struct {
	// CPUPercent is the process's CPU time (user + system, all threads,
	// OpenBLAS's included) over the wall time since the previous Sample
	// (since NewCPUMonitor for the first): 100 = one core busy, 200 = two.
	CPUPercent float64 `json:"cpu_percent"`
	// RSSBytes is the resident set size now; PeakRSSBytes the largest seen
	// (the kernel's high-water mark, or the largest RSSBytes sampled).
	RSSBytes     int64 `json:"rss_bytes"`
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	Goroutines   int   `json:"goroutines"`
	// StepSeconds is the mean duration of the recent steps given to
	// RecordStep (the last StepWindow of them); SamplesPerSec is their
	// samples over their summed durations. Both 0 before the first step.
	StepSeconds   float64 `json:"step_seconds"`
	SamplesPerSec float64 `json:"samples_per_sec"`
}

// ProcStats is what the CPU monitor reads from the operating system.
type ProcStats struct {
	CPUTime      time.Duration // user + system time of the whole process
	RSSBytes     int64
	PeakRSSBytes int64 // 0 when unknown
}

// StepWindow is how many recent steps CPUStats' step figures average over
// unless WithStepWindow says otherwise.
const StepWindow = 64

// CPUOption configures a CPUMonitor.
type CPUOption func(*CPUMonitor)

// WithCPUClock replaces time.Now (for tests).
func WithCPUClock(now func() time.Time) CPUOption {
	return func(m *CPUMonitor) { m.now = now }
}

// WithProcStats replaces ReadProcStats (for tests, or another OS).
func WithProcStats(read func() (ProcStats, error)) CPUOption {
	return func(m *CPUMonitor) { m.read = read }
}

// WithStepWindow sets how many recent steps are averaged (at least 1).
func WithStepWindow(n int) CPUOption {
	return func(m *CPUMonitor) { m.window = max(n, 1) }
}

// CPUMonitor measures the process: CPU use, memory and, through RecordStep,
// the training loop's step time and throughput. It is safe for concurrent
// use: the training loop calls RecordStep while a reporter calls Sample.
type CPUMonitor struct {
	now    func() time.Time
	read   func() (ProcStats, error)
	window int

	mu         sync.Mutex
	stepNs     []int64 // ring of the recent steps
	stepN      []int64
	next, n    int
	sumNs      int64
	sumSamples int64
	lastWall   time.Time
	lastCPU    time.Duration
	havePrev   bool
	peak       int64
	err        error
}

// NewCPUMonitor reads the process's CPU time now, as the start of the first
// interval Sample reports.
func NewCPUMonitor(opts ...CPUOption) *CPUMonitor {
	m := &CPUMonitor{now: time.Now, read: ReadProcStats, window: StepWindow}
	for _, o := range opts {
		o(m)
	}
	m.stepNs = make([]int64, m.window)
	m.stepN = make([]int64, m.window)
	if ps, err := m.read(); err == nil {
		m.lastWall, m.lastCPU, m.havePrev = m.now(), ps.CPUTime, true
		m.peak = max(ps.PeakRSSBytes, ps.RSSBytes)
	} else {
		m.err = err
	}
	return m
}

// RecordStep records one training step of duration d over samples samples.
// It is O(1) and does not allocate. Negative values count as 0.
func (m *CPUMonitor) RecordStep(d time.Duration, samples int) {
	ns, k := max(int64(d), 0), max(int64(samples), 0)
	m.mu.Lock()
	if m.n == len(m.stepNs) {
		m.sumNs -= m.stepNs[m.next]
		m.sumSamples -= m.stepN[m.next]
	} else {
		m.n++
	}
	m.stepNs[m.next], m.stepN[m.next] = ns, k
	m.sumNs += ns
	m.sumSamples += k
	m.next++
	if m.next == len(m.stepNs) {
		m.next = 0
	}
	m.mu.Unlock()
}

// Sample reads the process statistics and starts a new CPU interval. When
// the operating system cannot be read, the CPU and memory figures are 0 and
// Err says why; the step figures are always filled.
func (m *CPUMonitor) Sample() CPUStats {
	now := m.now()
	ps, err := m.read()
	gor := runtime.NumGoroutine()

	m.mu.Lock()
	defer m.mu.Unlock()
	st := CPUStats{Goroutines: gor}
	if m.n > 0 && m.sumNs > 0 {
		secs := float64(m.sumNs) / 1e9
		st.StepSeconds = secs / float64(m.n)
		st.SamplesPerSec = float64(m.sumSamples) / secs
	}
	m.err = err
	if err != nil {
		return st
	}
	if m.havePrev {
		if wall := now.Sub(m.lastWall); wall > 0 {
			st.CPUPercent = max(float64(ps.CPUTime-m.lastCPU), 0) / float64(wall) * 100
		}
	}
	m.lastWall, m.lastCPU, m.havePrev = now, ps.CPUTime, true
	m.peak = max(m.peak, ps.PeakRSSBytes, ps.RSSBytes)
	st.RSSBytes, st.PeakRSSBytes = ps.RSSBytes, m.peak
	return st
}

// Err returns the error of the latest read of the process statistics, nil
// when it succeeded.
func (m *CPUMonitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// parseStatmRSS returns the resident size, the second field of
// /proc/self/statm (in pages), in bytes.
func parseStatmRSS(b []byte, pageSize int) (int64, error) {
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0, fmt.Errorf("gpu: /proc/self/statm: want at least 2 fields, got %q", b)
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("gpu: /proc/self/statm: %w", err)
	}
	return pages * int64(pageSize), nil
}
