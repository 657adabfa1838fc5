package gpu

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type fakeProc struct {
	ps  ProcStats
	err error
}

func (f *fakeProc) read() (ProcStats, error) { return f.ps, f.err }

func TestCPUMonitorMath(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	proc := &fakeProc{ps: ProcStats{CPUTime: 10 * time.Second, RSSBytes: 100 << 20, PeakRSSBytes: 120 << 20}}
	m := NewCPUMonitor(WithCPUClock(clock.Now), WithProcStats(proc.read), WithStepWindow(4))

	// 3 s of CPU in 2 s of wall time: 1.5 cores.
	clock.Add(2 * time.Second)
	proc.ps.CPUTime += 3 * time.Second
	st := m.Sample()
	require.NoError(t, m.Err())
	require.InDelta(t, 150.0, st.CPUPercent, 1e-9)
	require.Equal(t, int64(100<<20), st.RSSBytes)
	require.Equal(t, int64(120<<20), st.PeakRSSBytes)
	require.Zero(t, st.StepSeconds)
	require.Zero(t, st.SamplesPerSec)
	require.Greater(t, st.Goroutines, 0)

	// The next interval starts at the previous Sample: 0.5 s CPU in 4 s.
	clock.Add(4 * time.Second)
	proc.ps.CPUTime += 500 * time.Millisecond
	proc.ps.RSSBytes = 200 << 20 // above the kernel's stale high-water mark
	st = m.Sample()
	require.InDelta(t, 12.5, st.CPUPercent, 1e-9)
	require.Equal(t, int64(200<<20), st.PeakRSSBytes)

	// RSS drops, peak stays.
	proc.ps.RSSBytes = 50 << 20
	clock.Add(time.Second)
	st = m.Sample()
	require.Zero(t, st.CPUPercent)
	require.Equal(t, int64(50<<20), st.RSSBytes)
	require.Equal(t, int64(200<<20), st.PeakRSSBytes)

	// Steps: the window holds the last 4.
	m.RecordStep(time.Hour, 1) // pushed out below
	m.RecordStep(100*time.Millisecond, 64)
	m.RecordStep(200*time.Millisecond, 64)
	m.RecordStep(300*time.Millisecond, 64)
	m.RecordStep(400*time.Millisecond, 64)
	st = m.Sample()
	require.InDelta(t, 0.25, st.StepSeconds, 1e-12)
	require.InDelta(t, 256.0, st.SamplesPerSec, 1e-9)
	m.RecordStep(-time.Second, -5) // counts as 0: mean (0.2+0.3+0.4+0)/4
	st = m.Sample()
	require.InDelta(t, 0.225, st.StepSeconds, 1e-12)
	require.InDelta(t, 192.0/0.9, st.SamplesPerSec, 1e-9)

	// Zero wall time gives 0, not Inf or NaN.
	proc.ps.CPUTime += time.Second
	st = m.Sample()
	require.Zero(t, st.CPUPercent)

	// A failing read leaves the process figures 0 and says why; steps stay.
	proc.err = errors.New("no /proc")
	st = m.Sample()
	require.ErrorContains(t, m.Err(), "no /proc")
	require.Zero(t, st.CPUPercent)
	require.Zero(t, st.RSSBytes)
	require.InDelta(t, 0.225, st.StepSeconds, 1e-12)
	proc.err = nil
	clock.Add(time.Second)
	proc.ps.CPUTime += 2 * time.Second
	st = m.Sample()
	require.NoError(t, m.Err())
	require.InDelta(t, 200.0, st.CPUPercent, 1e-9, "interval continues from the last good read")
}

func TestCPUMonitorRecordStepDoesNotAllocate(t *testing.T) {
	m := NewCPUMonitor(WithProcStats((&fakeProc{}).read))
	allocs := testing.AllocsPerRun(1000, func() { m.RecordStep(time.Millisecond, 32) })
	require.Zero(t, allocs)
	st := m.Sample()
	require.InDelta(t, 0.001, st.StepSeconds, 1e-12)
	require.InDelta(t, 32000.0, st.SamplesPerSec, 1e-6)
}

func TestReadProcStatsHere(t *testing.T) {
	if runtime.GOOS != "linux" {
		_, err := ReadProcStats()
		require.Error(t, err)
		return
	}
	// Burn a little CPU so the process time is measurable.
	x := 0
	for i := 0; i < 20_000_000; i++ {
		x += i ^ (x >> 3)
	}
	_ = x
	ps, err := ReadProcStats()
	require.NoError(t, err)
	require.Greater(t, ps.CPUTime, time.Duration(0))
	require.Greater(t, ps.RSSBytes, int64(1<<20))
	require.Greater(t, ps.PeakRSSBytes, int64(1<<20))

	m := NewCPUMonitor()
	st := m.Sample()
	require.NoError(t, m.Err())
	require.Equal(t, ps.RSSBytes > 0, st.RSSBytes > 0)
	require.GreaterOrEqual(t, st.PeakRSSBytes, st.RSSBytes)
}

func TestParseStatmRSS(t *testing.T) {
	n, err := parseStatmRSS([]byte("12345 678 90 1 0 456 0\n"), 4096)
	require.NoError(t, err)
	require.Equal(t, int64(678*4096), n)
	_, err = parseStatmRSS([]byte("12345"), 4096)
	require.Error(t, err)
	_, err = parseStatmRSS([]byte("1 x"), 4096)
	require.Error(t, err)
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		n, err := parseStatmRSS(b, os.Getpagesize())
		require.NoError(t, err)
		require.Greater(t, n, int64(0))
	}
}

func TestParseCPUModel(t *testing.T) {
	x86 := "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13   64-Core Processor\n"
	require.Equal(t, "AMD EPYC 7B13 64-Core Processor", parseCPUModel(strings.NewReader(x86)))
	arm := "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd0c\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
	require.Equal(t, "Raspberry Pi 4 Model B Rev 1.4", parseCPUModel(strings.NewReader(arm)))
	require.Equal(t, "", parseCPUModel(strings.NewReader("processor : 0\n")))
}
