package plot

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// exampleJSONL is a synthetic run of 3 epochs of 40 steps on 2 ranks
// with 2 GPUs, in the metrics-file format, with the oddities a reader
// must tolerate: nulls, unknown kinds and fields, blank lines.
func exampleJSONL() string {
	var b strings.Builder
	step := 0
	for epoch := 1; epoch <= 3; epoch++ {
		for i := 0; i < 4; i++ {
			step += 10
			loss := 2.3*math.Exp(-float64(step)/25) + 0.05
			thr := 40000 + 3000*math.Sin(float64(step))
			lossJSON := fmt.Sprintf("%.4f", loss)
			if step == 50 {
				lossJSON = "null" // a diverged value written as null
			}
			fmt.Fprintf(&b, `{"kind":"train","epoch":%d,"step":%d,"loss":%s,"lr":0.002,"samples_per_sec":%.1f,"rank":0,"world_size":2,"new_field":{"x":1},`+
				`"gpu":[{"index":0,"name":"H100","util_gpu_percent":%.1f,"mem_used_bytes":%d},{"index":1,"util_gpu_percent":%.1f,"mem_used_bytes":%d}]}`+"\n",
				epoch, step, lossJSON, thr, 80+10*math.Sin(float64(step)/7), 10<<30+step<<20, 60+5*math.Cos(float64(step)/5), 9<<30)
			share := 0.5 + 0.1*math.Sin(float64(step)/20)
			fmt.Fprintf(&b, `{"kind":"balance","step":%d,"shares":[%.3f,%.3f]}`+"\n", step, share, 1-share)
		}
		fmt.Fprintf(&b, `{"kind":"eval","epoch":%d,"test_loss":%.4f,"test_accuracy":%.4f,"rank":0}`+"\n",
			epoch, 0.4/float64(epoch), 0.9+0.02*float64(epoch))
		b.WriteString(`{"kind":"checkpoint","step":1,"path":"x"}` + "\n\n")
	}
	b.WriteString(`{"kind":"summary","test_accuracy":0.96,"train_samples_per_sec":40000,"wall_seconds":3.1,"peak_rss_bytes":1}` + "\n")
	return b.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = Run(args, &o, &e)
	return code, o.String(), e.String()
}

// checkPanels decodes the PNG at path, checks its size and that each of
// the panels stacked under the title band holds drawing, and coloured
// (data) pixels, not just a white background.
func checkPanels(t *testing.T, path string, wantW, wantH, titlePx, panelPx, panels int) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	require.Equal(t, image.Rect(0, 0, wantW, wantH), img.Bounds())
	for j := 0; j < panels; j++ {
		y0 := titlePx + j*panelPx
		var ink, coloured, total int
		for y := y0; y < y0+panelPx && y < wantH; y++ {
			for x := 0; x < wantW; x++ {
				r, g, b, _ := img.At(x, y).RGBA()
				total++
				if r < 0xf000 || g < 0xf000 || b < 0xf000 {
					ink++
				}
				if max3(r, g, b)-min3(r, g, b) > 0x3000 {
					coloured++
				}
			}
		}
		assert.Greater(t, ink, total/100, "panel %d looks blank (%d of %d pixels not white)", j, ink, total)
		assert.Greater(t, coloured, 50, "panel %d has no coloured data line", j)
	}
}

func max3(a, b, c uint32) uint32 { return max(a, b, c) }
func min3(a, b, c uint32) uint32 { return min(a, b, c) }

func TestPlotPNG(t *testing.T) {
	in := writeFile(t, "run.jsonl", exampleJSONL())
	out := filepath.Join(t.TempDir(), "curves.png")
	// Flags after the file name, both spellings of -o.
	code, stdout, stderr := runCmd(in, "--out", out, "--width", "6in", "--height", "2in", "--title", "synthetic")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "wrote "+out+" (6 panels")
	assert.Empty(t, stderr)
	// 96 dpi: 6in = 576 px; 0.4in title = 38.4 px; 2in panels = 192 px.
	checkPanels(t, out, 576, 1190, 38, 192, 6)
}

func TestPlotDefaults(t *testing.T) {
	in := writeFile(t, "run.jsonl", exampleJSONL())
	code, stdout, stderr := runCmd("-o", "", in) // empty -o: the default
	require.Equal(t, 0, code, stderr)
	out := strings.TrimSuffix(in, ".jsonl") + ".png"
	assert.Contains(t, stdout, out)
	checkPanels(t, out, 768, 1478, 38, 240, 6)
}

func TestPlotMinimal(t *testing.T) {
	// Train records only, without GPUs or shares: loss and throughput.
	in := writeFile(t, "min.jsonl", `{"kind":"train","epoch":1,"step":1,"loss":2.3,"lr":0.1,"samples_per_sec":1000}
{"kind":"train","epoch":1,"step":2,"loss":1.9,"lr":0.1,"samples_per_sec":1100}
`)
	out := filepath.Join(t.TempDir(), "m.png")
	code, stdout, stderr := runCmd("--title", "", "-o", out, in)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "(2 panels")
	checkPanels(t, out, 768, 480, 0, 240, 2)
}

func TestPlotSVGAndPDF(t *testing.T) {
	in := writeFile(t, "run.jsonl", exampleJSONL())
	dir := t.TempDir()
	for ext, magic := range map[string]string{".svg": "<?xml", ".pdf": "%PDF-"} {
		out := filepath.Join(dir, "c"+ext)
		code, _, stderr := runCmd("-o", out, in)
		require.Equal(t, 0, code, stderr)
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		assert.True(t, bytes.HasPrefix(b, []byte(magic)), "%s starts with %.20q", ext, b)
	}
	// "-" writes PNG to stdout.
	code, stdout, stderr := runCmd(in, "-o", "-")
	require.Equal(t, 0, code, stderr)
	_, err := png.Decode(strings.NewReader(stdout))
	assert.NoError(t, err)
}

func TestUsageErrors(t *testing.T) {
	in := writeFile(t, "run.jsonl", exampleJSONL())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no metrics file"},
		{[]string{in, in}, "one metrics file, not 2"},
		{[]string{"--bogus", in}, "flag provided but not defined"},
		{[]string{"--width", "wide", in}, `--width "wide" is not a length`},
		{[]string{"--height", "0in", in}, "too small"},
		{[]string{"--width", "1000in", in}, "too large"},
		{[]string{"-o", "out.gif", in}, `unsupported format "gif"`},
		{[]string{"-o", "out", in}, "no extension"},
		{[]string{"-"}, "not standard input"},
		{[]string{"x.png"}, "would be overwritten"},
	} {
		code, _, stderr := runCmd(tc.args...)
		assert.Equal(t, 2, code, "%v: %s", tc.args, stderr)
		assert.Contains(t, stderr, tc.want, "%v", tc.args)
	}
	code, _, stderr := runCmd("-h")
	assert.Equal(t, 0, code)
	assert.Contains(t, stderr, "usage: gotrain plot")
}

func TestInputErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want string
	}{
		{"empty.jsonl", "", "empty.jsonl: no records: the file is empty"},
		{"blank.jsonl", "\n\n", "blank.jsonl: no records"},
		{"noTrain.jsonl", `{"kind":"eval","epoch":1,"test_loss":0.1,"test_accuracy":0.9}` + "\n" + `{"kind":"summary"}`,
			"noTrain.jsonl: no train records among its 2 records"},
		{"bad.jsonl", `{"kind":"train","epoch":1,"step":1,"loss":1}` + "\n\n" + `{"kind":"train","step":2,"loss":` + "\n",
			"bad.jsonl:3: malformed record"},
		{"text.jsonl", `{"kind":"train","epoch":1,"step":1,"loss":1}` + "\nhello\n", "text.jsonl:2: not a JSON object"},
		{"type.jsonl", `{"kind":"train","epoch":1,"step":"one","loss":1}` + "\n", "type.jsonl:1: malformed record"},
		{"rank.jsonl", `{"kind":"train","epoch":1,"step":1,"loss":1,"rank":1}` + "\n", ""},
	} {
		in := filepath.Join(dir, tc.name)
		require.NoError(t, os.WriteFile(in, []byte(tc.content), 0o644))
		out := filepath.Join(dir, tc.name+".png")
		code, _, stderr := runCmd("-o", out, in)
		if tc.want == "" {
			assert.Equal(t, 0, code, stderr)
			continue
		}
		assert.Equal(t, 1, code, tc.name)
		assert.Contains(t, stderr, tc.want, tc.name)
		assert.NoFileExists(t, out)
	}
	code, _, stderr := runCmd(filepath.Join(dir, "missing.jsonl"))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "missing.jsonl")

	code, _, stderr = runCmd("--rank", "3", "-o", filepath.Join(dir, "r.png"), filepath.Join(dir, "rank.jsonl"))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "no train records of rank 3 (the file has ranks [1])")
}

func TestParse(t *testing.T) {
	r, err := parseRun(strings.NewReader(exampleJSONL()), "x", -1)
	require.NoError(t, err)
	assert.Equal(t, 12, r.trainRecords)
	assert.Len(t, r.trainLoss, 11) // step 50's loss is null
	assert.Len(t, r.throughput, 12)
	// Test loss at the last step of each epoch.
	assert.Equal(t, []point{{40, 0.4}, {80, 0.2}, {120, 0.1333}}, roundPts(r.testLoss))
	assert.Equal(t, []point{{1, 92}, {2, 94}, {3, 96}}, roundPts(r.testAcc))
	assert.Len(t, r.gpuUtil, 2)
	assert.Len(t, r.gpuMem[1], 12)
	assert.InDelta(t, 9.0, r.gpuMem[1][0].y, 1e-9)
	assert.Len(t, r.shares, 2)
	require.NotNil(t, r.finalAcc)
	assert.InDelta(t, 0.96, *r.finalAcc, 0)

	// A resumed run repeats steps: the later record wins, and points
	// stay sorted by step.
	r, err = parseRun(strings.NewReader(`{"kind":"train","epoch":1,"step":10,"loss":3}
{"kind":"train","epoch":1,"step":20,"loss":2}
{"kind":"train","epoch":1,"step":10,"loss":2.5}
{"kind":"train","epoch":1,"step":30,"loss":1}
{"kind":"train","epoch":1,"step":5,"loss":1,"rank":1}
`), "x", -1)
	require.NoError(t, err)
	assert.Equal(t, []point{{10, 2.5}, {20, 2}, {30, 1}}, r.trainLoss)
	assert.Equal(t, []int{0, 1}, r.ranks)
}

func roundPts(ps []point) []point {
	out := make([]point, len(ps))
	for i, p := range ps {
		out[i] = point{math.Round(p.x*1e6) / 1e6, math.Round(p.y*1e6) / 1e6}
	}
	return out
}

// TestRenderExample renders the synthetic example; with GOTRAIN_PLOT_OUT
// set it writes the PNG there to be looked at:
//
//	GOTRAIN_PLOT_OUT=/tmp/curves.png go test ./cmd/gotrain/plot -run TestRenderExample
func TestRenderExample(t *testing.T) {
	out := os.Getenv("GOTRAIN_PLOT_OUT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "example.png")
	}
	in := writeFile(t, "example.jsonl", exampleJSONL())
	code, stdout, stderr := runCmd(in, "-o", out, "--title", "gotrain plot: synthetic example (2 ranks, 2 GPUs)")
	require.Equal(t, 0, code, stderr)
	t.Log(strings.TrimSpace(stdout))
}
