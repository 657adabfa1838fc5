package executor

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/graph"
)

// TestProfile: a profiled program times every op of every run, the batch's
// upload and the dropout masks, each op under its kind and shapes; the
// matrix products' FLOPs add up to the program's; the run computes what an
// unprofiled one does; the table lists every row.
func TestProfile(t *testing.T) {
	for _, mk := range devices {
		dev := mk(t)
		spec := graph.Spec{Kind: "cnn", InC: 1, InH: 12, InW: 12, Classes: 10, Hidden: []int{16}, Dropout: 0.3}
		m, err := graph.New(spec, 1)
		require.NoError(t, err)
		params, err := UploadParams(dev, m)
		require.NoError(t, err)
		defer params.Free()
		prog, err := m.Program(8, true)
		require.NoError(t, err)
		dp, err := Compile(dev, prog, params, device.FP32)
		require.NoError(t, err)
		defer dp.Free()
		x, y := batch(rand.New(rand.NewPCG(1, 2)), 8, m.InputSize(), 10)
		want, err := dp.Run(x, y, 3, 4)
		require.NoError(t, err)

		p := NewProfile()
		dp.Profile(p)
		const runs = 3
		for range runs {
			got, err := dp.Run(x, y, 3, 4)
			require.NoError(t, err)
			require.Equal(t, want, got, "%s: profiling changes nothing", dev.Name())
		}
		dp.Profile(nil)
		_, err = dp.Run(x, y, 3, 4)
		require.NoError(t, err)

		ops := 0
		for _, op := range dp.ops {
			if op != nil {
				ops++
			}
		}
		rows := p.Rows()
		calls, flops := 0, int64(0)
		kinds := map[string]bool{}
		for i, r := range rows {
			require.Positive(t, r.Seconds, r.Name)
			require.Zero(t, r.Calls%runs, "%s: %d calls", r.Name, r.Calls)
			if i > 0 {
				require.GreaterOrEqual(t, rows[i-1].Seconds, r.Seconds, "most time first")
			}
			calls += r.Calls
			flops += r.FLOPs
			kinds[strings.Fields(r.Name)[0]] = true
		}
		require.Equal(t, runs*(ops+2), calls, "%s: every op, the upload and the masks, every run", dev.Name())
		require.Equal(t, runs*FLOPs(dp.layout), flops)
		for _, k := range []string{"Conv2D", "Conv2DGradW", "MaxPool2D", "Linear", "upload", "dropout"} {
			require.True(t, kinds[k], "%s: a row for %s in %v", dev.Name(), k, kinds)
		}
		var out bytes.Buffer
		require.NoError(t, p.Write(&out))
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		require.Len(t, lines, len(rows)+1)
		require.Contains(t, lines[0], "GFLOP/s")
		t.Logf("%s:\n%s", dev.Name(), out.String())
	}
}
