package metrics

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPeakRSSBytes(t *testing.T) {
	switch runtime.GOOS {
	case "linux", "darwin", "freebsd", "netbsd", "openbsd", "dragonfly":
	default:
		require.Zero(t, PeakRSSBytes(), "unsupported platform reports 0")
		t.Skip("peak RSS not reported on " + runtime.GOOS)
	}
	before := PeakRSSBytes()
	require.Positive(t, before)
	require.Greater(t, before, int64(1<<20), "a Go test binary holds more than 1 MiB")

	// Touch more memory than the peak so far: the current RSS, hence the
	// peak, must then exceed it.
	n := int(before) + 64<<20
	buf := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		buf[i] = 1
	}
	after := PeakRSSBytes()
	runtime.KeepAlive(buf)
	require.Greater(t, after, before)
	require.GreaterOrEqual(t, after, int64(n), "peak covers the touched allocation")
	require.GreaterOrEqual(t, PeakRSSBytes(), after, "a peak never decreases")
}
