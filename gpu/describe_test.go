package gpu

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDescribeSystemHere(t *testing.T) {
	if n, err := OpenNVML(); err == nil {
		n.Close()
		t.Skip("an NVIDIA driver is installed on this machine")
	}
	var buf bytes.Buffer
	require.NoError(t, DescribeSystem(&buf))
	out := buf.String()
	require.True(t, strings.HasPrefix(out, "no NVIDIA driver found: "), out)
	require.Contains(t, out, fmt.Sprintf("CPU: %d logical CPU", runtime.NumCPU()))
	require.Equal(t, 2, strings.Count(out, "\n"), out)
}

func TestDescribeFakeMonitor(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, Describe(&buf, &fakeMonitor{}))
	require.Contains(t, buf.String(), "NVIDIA driver unknown, 1 GPU\n")
	require.Regexp(t, `\n0\s+fake\s+0 B\s+0\.0\s`, buf.String())
	require.Error(t, Describe(&buf, nil))
}

func TestFormatBytes(t *testing.T) {
	require.Equal(t, "512 B", formatBytes(512))
	require.Equal(t, "1.5 KiB", formatBytes(1536))
	require.Equal(t, "80.0 GiB", formatBytes(80<<30))
	require.Equal(t, "141.0 GiB", formatBytes(141<<30))
	require.Equal(t, "2.0 TiB", formatBytes(2<<40))
}
