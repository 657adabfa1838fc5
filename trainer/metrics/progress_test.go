package metrics

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

// lastFrame returns what a terminal shows on the current line: the text
// after the last '\r' (trailing padding trimmed).
func lastFrame(out string) string {
	return strings.TrimRight(out[strings.LastIndexByte(out, '\r')+1:], " ")
}

func TestProgressTerminalRedrawThrottle(t *testing.T) {
	tests := []struct {
		name      string
		interval  time.Duration
		step      time.Duration
		updates   int
		wantDraws int
	}{
		{"every 50ms, redraw 100ms", 100 * time.Millisecond, 50 * time.Millisecond, 40, 20},
		{"every 10ms, redraw 100ms", 100 * time.Millisecond, 10 * time.Millisecond, 100, 10},
		{"every 200ms, redraw 100ms", 100 * time.Millisecond, 200 * time.Millisecond, 10, 10},
		{"every 10ms, redraw 1s", time.Second, 10 * time.Millisecond, 300, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			clk := newFakeClock()
			p := NewProgress(&buf, 1_000_000, WithTerminal(true), WithNow(clk.Now), WithRedrawInterval(tt.interval), WithWidth(0))
			require.True(t, p.Terminal())
			for i := range tt.updates {
				p.Update(1, 1, int64(i+1)*10, 0.5, 0)
				clk.Advance(tt.step)
			}
			out := buf.String()
			require.Equal(t, tt.wantDraws, strings.Count(out, "\r"), "one '\\r' per redraw")
			require.NotContains(t, out, "\n", "a live bar never ends the line before Finish")
			p.Finish()
			require.True(t, strings.HasSuffix(buf.String(), "\n"), "Finish ends the line")
			require.Contains(t, lastFrame(strings.TrimSuffix(buf.String(), "\n")), strconv.FormatInt(int64(tt.updates)*10, 10)+"/1000000",
				"Finish draws the latest state")
		})
	}
}

func TestProgressTerminalLine(t *testing.T) {
	// 1000 units per second, measured with the injected clock; the run has
	// 60000 units, so at 27000 done 33000 remain: 33s.
	tests := []struct {
		name    string
		total   int64
		done    int64
		sps     float64
		opts    []ProgressOption
		want    []string
		notWant []string
	}{
		{"mid run", 60000, 27000, 12345, nil,
			[]string{"epoch 1/2 [", "]  45% 27000/60000", "12345 samples/s", "loss 0.2345", "ETA 0:33"}, nil},
		{"measured rate", 60000, 27000, 0, []ProgressOption{WithUnit("samples")},
			[]string{"45%", "1000 samples/s", "ETA 0:33"}, nil},
		{"long run", 4_000_000, 27000, 0, nil,
			[]string{"0% 27000/4000000", "1000 it/s", "ETA 1:06:13"}, nil}, // 3973s
		{"unknown total", 0, 27000, 0, nil,
			[]string{"epoch 1/2 27000", "1000 it/s", "loss 0.2345"}, []string{"ETA", "[", "%"}},
		{"narrow terminal drops the bar", 60000, 27000, 12345, []ProgressOption{WithWidth(60)},
			[]string{"epoch 1/2  45% 27000/60000"}, []string{"["}},
		{"device status", 60000, 27000, 12345, []ProgressOption{WithStatus(func() string { return "gpu0 87% 12.3/80.0GiB 61C" })},
			[]string{"loss 0.2345  gpu0 87% 12.3/80.0GiB 61C  ETA 0:33"}, nil},
		{"no device status", 60000, 27000, 12345, []ProgressOption{WithStatus(func() string { return "" })},
			[]string{"loss 0.2345  ETA 0:33"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			clk := newFakeClock()
			opts := append([]ProgressOption{WithTerminal(true), WithNow(clk.Now), WithWidth(0)}, tt.opts...)
			p := NewProgress(&buf, tt.total, opts...)
			for done := int64(0); done <= tt.done; done += 1000 {
				p.Update(1, 2, done, 0.2345, tt.sps)
				clk.Advance(time.Second)
			}
			frame := lastFrame(buf.String())
			for _, w := range tt.want {
				require.Contains(t, frame, w)
			}
			for _, w := range tt.notWant {
				require.NotContains(t, frame, w)
			}
			if w := p.cfg.width; w > 0 {
				require.LessOrEqual(t, len(frame), w-1)
			}
			rate, ok := p.Rate()
			require.True(t, ok)
			require.InDelta(t, 1000, rate, 1e-6)
		})
	}
}

func TestProgressBarAndWidth(t *testing.T) {
	tests := []struct {
		frac  float64
		width int
		want  string
	}{
		{0, 10, ">         "},
		{0.45, 10, "====>     "},
		{0.99, 10, "=========>"},
		{1, 10, "=========="},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, bar(tt.frac, tt.width))
	}
	for _, cols := range []int{120, 80, 70, 50, 20} {
		var buf bytes.Buffer
		p := NewProgress(&buf, 60000, WithTerminal(true), WithWidth(cols), WithEpochs(10))
		p.Update(10, 0, 27000, 0.2345, 12345)
		require.LessOrEqual(t, len(lastFrame(buf.String())), cols-1, "width %d", cols)
		require.Contains(t, buf.String(), "epoch 10/10", "width %d", cols)
	}
}

func TestFormatETA(t *testing.T) {
	tests := []struct {
		d     time.Duration
		known bool
		want  string
	}{
		{0, true, "0:00"},
		{12 * time.Second, true, "0:12"},
		{59*time.Second + 400*time.Millisecond, true, "0:59"},
		{59*time.Second + 600*time.Millisecond, true, "1:00"},
		{10*time.Minute + 5*time.Second, true, "10:05"},
		{time.Hour, true, "1:00:00"},
		{time.Hour + 2*time.Minute + 3*time.Second, true, "1:02:03"},
		{100 * time.Hour, true, "100:00:00"},
		{time.Minute, false, "--:--"},
		{-time.Second, true, "--:--"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, formatETA(tt.d, tt.known), "%v", tt.d)
	}
}

func TestProgressETA(t *testing.T) {
	tests := []struct {
		name      string
		smoothing time.Duration
		steps     []int64 // units done per 1s interval
		total     int64
		wantETA   time.Duration
		wantKnown bool
	}{
		{"one update: unknown", 10 * time.Second, nil, 100, 0, false},
		{"steady 10/s", 10 * time.Second, []int64{10, 10, 10}, 100, 7 * time.Second, true},
		{"unsmoothed: last interval", 0, []int64{10, 10, 40}, 100, time.Second, true}, // 40 left at 40/s
		{"stalled", 10 * time.Second, []int64{0, 0}, 100, 0, false},
		{"done", 10 * time.Second, []int64{50, 50}, 100, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			p := NewProgress(nil, tt.total, WithTerminal(false), WithLogger(slog.New(slog.DiscardHandler)),
				WithNow(clk.Now), WithSmoothing(tt.smoothing))
			done := int64(0)
			p.Update(1, 1, done, 1, 0)
			for _, s := range tt.steps {
				clk.Advance(time.Second)
				done += s
				p.Update(1, 1, done, 1, 0)
			}
			eta, known := p.ETA()
			require.Equal(t, tt.wantKnown, known)
			require.InDelta(t, tt.wantETA.Seconds(), eta.Seconds(), 1e-6)
		})
	}

	// Smoothing: a jump from 10/s to 100/s moves the estimate part way.
	clk := newFakeClock()
	p := NewProgress(nil, 1000, WithTerminal(false), WithLogger(slog.New(slog.DiscardHandler)), WithNow(clk.Now))
	p.Update(1, 1, 0, 1, 0)
	clk.Advance(time.Second)
	p.Update(1, 1, 10, 1, 0)
	clk.Advance(time.Second)
	p.Update(1, 1, 110, 1, 0)
	rate, ok := p.Rate()
	require.True(t, ok)
	require.Greater(t, rate, 10.0)
	require.Less(t, rate, 100.0)
}

func TestProgressLogAndWriteKeepBar(t *testing.T) {
	var buf bytes.Buffer
	clk := newFakeClock()
	p := NewProgress(&buf, 100, WithTerminal(true), WithNow(clk.Now), WithWidth(0), WithEpochs(1))
	p.Update(1, 0, 40, 0.5, 0)
	frame := lastFrame(buf.String())
	require.Contains(t, frame, "40%")

	buf.Reset()
	p.Log("checkpoint saved")
	out := buf.String()
	// clear the line, print the message on it, redraw the bar below
	require.Regexp(t, `^\r +\rcheckpoint saved\n\r`, out)
	require.Equal(t, frame, lastFrame(out))

	// A slog handler writing to the Progress: lines appear above the bar,
	// whole even when written in pieces.
	buf.Reset()
	logger := slog.New(slog.NewTextHandler(p, &slog.HandlerOptions{ReplaceAttr: dropTime}))
	logger.Info("eval", "epoch", 1)
	_, err := p.Write([]byte("partial "))
	require.NoError(t, err)
	require.NotContains(t, buf.String(), "partial", "held until its newline")
	_, err = p.Write([]byte("line\n"))
	require.NoError(t, err)
	out = buf.String()
	require.Contains(t, out, "\rlevel=INFO msg=eval epoch=1\n")
	require.Contains(t, out, "\rpartial line\n")
	require.Equal(t, frame, lastFrame(out), "bar redrawn last")

	buf.Reset()
	p.Finish()
	require.Equal(t, "\r"+frame+"\n", buf.String())

	// After Finish, log lines are not followed by a bar.
	buf.Reset()
	p.Log("done")
	require.Equal(t, "done\n", buf.String())
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		return slog.Attr{}
	}
	return a
}

type logLine struct {
	Msg   string  `json:"msg"`
	Epoch int     `json:"epoch"`
	Step  int64   `json:"done"`
	Loss  float64 `json:"loss"`
	SPS   float64 `json:"samples_per_sec"`
	ETA   string  `json:"eta"`
	Time  string  `json:"time"`
}

func TestProgressPlainLogInterval(t *testing.T) {
	tests := []struct {
		name      string
		opts      []ProgressOption
		interval  time.Duration
		every     int64
		wantSteps []int64
	}{
		{"default 10s", nil, 10 * time.Second, 0, []int64{0, 10, 20, 30, 34}},
		{"every 7 steps only", []ProgressOption{WithLogInterval(0), WithLogEvery(7)}, 0, 7, []int64{0, 7, 14, 21, 28, 34}},
		{"every 4s", []ProgressOption{WithLogInterval(4 * time.Second)}, 4 * time.Second, 0, []int64{0, 4, 8, 12, 16, 20, 24, 28, 32, 34}},
		{"either trigger", []ProgressOption{WithLogInterval(10 * time.Second), WithLogEvery(25)}, 10 * time.Second, 25, []int64{0, 10, 20, 30, 34}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			clk := newFakeClock()
			logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{
				ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.String(slog.TimeKey, clk.Now().Format(time.RFC3339Nano))
					}
					return a
				},
			}))
			opts := append([]ProgressOption{WithTerminal(false), WithNow(clk.Now), WithLogger(logger)}, tt.opts...)
			p := NewProgress(&buf, 100, opts...)
			require.False(t, p.Terminal())
			// one unit per second, for 35 seconds
			for i := int64(0); i < 35; i++ {
				p.Update(1, 1, i, 0.25, 10)
				clk.Advance(time.Second)
			}
			p.Finish() // logs the last, unlogged, update
			p.Finish() // nothing more

			out := buf.String()
			require.NotContains(t, out, "\r")
			var lines []logLine
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				var ll logLine
				require.NoError(t, json.Unmarshal([]byte(l), &ll), l)
				require.Equal(t, "train", ll.Msg)
				require.Equal(t, 1, ll.Epoch)
				require.Equal(t, 0.25, ll.Loss)
				require.Equal(t, 10.0, ll.SPS)
				lines = append(lines, ll)
			}
			var steps []int64
			for _, l := range lines {
				steps = append(steps, l.Step)
			}
			require.Equal(t, tt.wantSteps, steps)
			// Never more often than configured (the last line is Finish's).
			for i := 1; i < len(lines)-1; i++ {
				t0, err := time.Parse(time.RFC3339Nano, lines[i-1].Time)
				require.NoError(t, err)
				t1, err := time.Parse(time.RFC3339Nano, lines[i].Time)
				require.NoError(t, err)
				byTime := tt.interval > 0 && t1.Sub(t0) >= tt.interval
				bySteps := tt.every > 0 && lines[i].Step-lines[i-1].Step >= tt.every
				require.True(t, byTime || bySteps, "line %d logged too soon after line %d", i, i-1)
			}
			// ETA: 1 unit/s, 100 units.
			require.Equal(t, "1:06", lines[len(lines)-1].ETA)
		})
	}
}

func TestProgressPlainDefaultLogger(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf, 10, WithEpochs(3)) // a bytes.Buffer is no terminal
	require.False(t, p.Terminal())
	p.Train(Train{Epoch: 2, Step: 4, Loss: 1.5, SamplesPerSec: 99})
	p.Log("hello")
	out := buf.String()
	require.Contains(t, out, "msg=train epoch=2 epochs=3 done=4 total=10 loss=1.5 samples_per_sec=99 eta=--:--")
	require.Contains(t, out, "msg=hello")
	_, err := p.Write([]byte("raw\n"))
	require.NoError(t, err)
	require.True(t, strings.HasSuffix(buf.String(), "raw\n"), "plain writes pass through")
}

func TestProgressAsSink(t *testing.T) {
	var buf bytes.Buffer
	clk := newFakeClock()
	p := NewProgress(&buf, 200, WithTerminal(true), WithNow(clk.Now), WithEpochs(2), WithWidth(0))
	var s Sink = p
	s.Train(Train{Epoch: 1, Step: 50, Loss: 0.75, SamplesPerSec: 6400})
	clk.Advance(time.Second)
	s.Train(Train{Epoch: 2, Step: 150, Loss: 0.5, SamplesPerSec: 6400})
	before := buf.String()
	s.Eval(Eval{Epoch: 2, TestAccuracy: 0.9})
	s.Summary(Summary{TestAccuracy: 0.9})
	require.Equal(t, before, buf.String(), "eval and summary do not touch the bar")
	frame := lastFrame(before)
	require.Contains(t, frame, "epoch 2/2")
	require.Contains(t, frame, " 75% 150/200")
	require.Contains(t, frame, "6400 samples/s")
	require.Contains(t, frame, "loss 0.5000")
	require.Contains(t, frame, "ETA 0:01") // 100 units/s, 50 left
	require.NoError(t, Close(s))
	require.True(t, strings.HasSuffix(buf.String(), "\n"))
}

func TestProgressDetectsTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	require.NoError(t, err)
	defer f.Close()
	tests := []struct {
		name string
		p    *Progress
		want bool
	}{
		{"buffer", NewProgress(&bytes.Buffer{}, 1), false},
		{"regular file", NewProgress(f, 1), false},
		{"nil writer", NewProgress(nil, 1), false},
		{"forced on", NewProgress(f, 1, WithTerminal(true)), true},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.p.Terminal(), tt.name)
	}
}

func TestProgressConcurrentUse(t *testing.T) {
	for _, terminal := range []bool{true, false} {
		var buf lockedBuffer
		p := NewProgress(&buf, 1000, WithTerminal(terminal), WithRedrawInterval(0), WithWidth(0))
		logger := slog.New(slog.NewTextHandler(p, &slog.HandlerOptions{ReplaceAttr: dropTime}))
		p.Update(1, 1, 0, 0.1, 100) // the bar is up before anything is logged
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := range 200 {
				p.Update(1, 1, int64(i*5), 0.1, 100)
			}
		})
		wg.Go(func() {
			for i := range 50 {
				p.Log("message " + strconv.Itoa(i))
			}
		})
		wg.Go(func() {
			for i := range 50 {
				logger.Info("eval", "n", i)
			}
		})
		wg.Wait()
		p.Finish()
		out := buf.String()
		for i := range 50 {
			n := strconv.Itoa(i)
			if terminal {
				require.Contains(t, out, "\rmessage "+n+"\n", "terminal=%v", terminal)
			} else {
				require.Contains(t, out, "msg=\"message "+n+"\"", "terminal=%v", terminal)
			}
			require.Contains(t, out, "level=INFO msg=eval n="+n+"\n", "terminal=%v", terminal)
		}
		require.True(t, strings.HasSuffix(out, "\n"))
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers (plain mode
// passes writes through without Progress's lock, as an *os.File would).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestProgressPlainLogsDeviceStatus(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	p := NewProgress(&buf, 100, WithTerminal(false), WithLogger(logger), WithStatus(func() string { return "gpu0 50% 1.0/80.0GiB 40C" }))
	p.Update(1, 1, 10, 0.5, 100)
	var rec map[string]any
	require.NoError(t, json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &rec))
	require.Equal(t, "gpu0 50% 1.0/80.0GiB 40C", rec["devices"])
}
