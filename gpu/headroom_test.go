package gpu

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDeviceHeadroom(t *testing.T) {
	s := DeviceStats{MemFreeBytes: 40 << 30, SMClockMHz: 1755,
		ThrottleReasons: ThrottleIdle | ThrottleSWThermal | ThrottleApplicationsClocks | ThrottleHWSlowdown}
	h := DeviceHeadroom(s)
	require.Equal(t, Headroom{FreeBytes: 40 << 30, ClockMHz: 1755, Slowdown: ThrottleSWThermal | ThrottleHWSlowdown}, h,
		"idle and application clocks are not slowdowns")
	s.Missing = []string{FieldMemFree, FieldSMClock, FieldThrottle}
	require.Equal(t, Headroom{}, DeviceHeadroom(s), "what NVML could not read is unknown, not a reading")
}

func TestCPUHeadroomReadsThisMachine(t *testing.T) {
	h, err := CPUHeadroom()
	require.NoError(t, err)
	require.Greater(t, h.FreeBytes, uint64(1<<20), "some memory is available to this test")
	require.Zero(t, h.ClockMHz)
	require.Zero(t, h.Slowdown)
}

func TestParseMemInfo(t *testing.T) {
	v, err := parseMemAvailable([]byte("MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n"))
	require.NoError(t, err)
	require.Equal(t, uint64(2048<<10), v)
	for _, bad := range []string{"", "MemTotal: 5 kB\n", "MemAvailable: 5\n", "MemAvailable: x kB\n", "MemAvailable: 99999999999999999999 kB"} {
		_, err := parseMemAvailable([]byte(bad))
		require.ErrorContains(t, err, "MemAvailable", "%q", bad)
	}
	p, ok := parseCgroupPath([]byte("12:memory:/x\n0::/user.slice/job.scope\n"))
	require.True(t, ok)
	require.Equal(t, "/user.slice/job.scope", p)
	_, ok = parseCgroupPath([]byte("0::/../../etc\n"))
	require.False(t, ok, "a path that climbs out of the cgroup tree is refused")
	for in, want := range map[string]struct {
		v  uint64
		ok bool
	}{"max\n": {0, false}, "1073741824\n": {1 << 30, true}, "9223372036854771712\n": {9223372036854771712, false}} {
		v, ok, err := parseCgroupBytes([]byte(in))
		require.NoError(t, err)
		require.Equal(t, want.ok, ok, in)
		if ok {
			require.Equal(t, want.v, v)
		}
	}
	_, _, err = parseCgroupBytes([]byte("lots"))
	require.ErrorContains(t, err, "not a byte count")
}

func FuzzParseMemInfo(f *testing.F) {
	f.Add([]byte("MemAvailable:   2048 kB\n"))
	f.Add([]byte("0::/a/b\n"))
	f.Add([]byte("max"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseMemAvailable(b)
		if p, ok := parseCgroupPath(b); ok && (p == "" || p[0] != '/') {
			t.Fatalf("path %q", p)
		}
		parseCgroupBytes(b)
	})
}
