package prom

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/dist/secure/securetest"
)

// TestConnectionCap: a flood of idle connections holds at most
// MaxConnections of the server's; the rest are closed at once. When the
// flood goes, a scrape is served again.
func TestConnectionCap(t *testing.T) {
	e := New(0, 1)
	addr := serve(t, e)
	const n = MaxConnections + 150
	f := securetest.Start(addr, n, nil)
	t.Cleanup(f.Stop)
	require.True(t, f.WaitOpened(10*time.Second))
	require.Zero(t, f.Failed())
	require.Equal(t, MaxConnections, f.WaitHeld(MaxConnections, 2*time.Second), "the cap holds %d idle connections", MaxConnections)
	require.GreaterOrEqual(t, f.Refused(), 150, "the excess is closed at once")
	f.Stop()

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + MetricsPath)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Contains(t, string(body), "gotrain_step")
			return
		}
		require.True(t, time.Now().Before(deadline), "no scrape served after the flood: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
}
