package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// recorder is a Sink that remembers what it got.
type recorder struct {
	name   string
	log    *[]string
	err    error
	closed int
}

func (r *recorder) Train(t Train)     { *r.log = append(*r.log, r.name+":train") }
func (r *recorder) Eval(e Eval)       { *r.log = append(*r.log, r.name+":eval") }
func (r *recorder) Summary(s Summary) { *r.log = append(*r.log, r.name+":summary") }
func (r *recorder) Err() error        { return r.err }
func (r *recorder) Close() error      { r.closed++; return r.err }

// plainSink has neither Err nor Close.
type plainSink struct{ n *int }

func (p plainSink) Train(Train)     { *p.n++ }
func (p plainSink) Eval(Eval)       { *p.n++ }
func (p plainSink) Summary(Summary) { *p.n++ }

func TestMulti(t *testing.T) {
	var log []string
	errA := errors.New("a failed")
	a := &recorder{name: "a", log: &log, err: errA}
	b := &recorder{name: "b", log: &log}
	n := 0
	var nilJSONL *JSONL
	var nilRec *recorder

	s := Multi(a, nil, nilJSONL, Multi(b, nilRec), plainSink{&n})
	s.Train(Train{})
	s.Eval(Eval{})
	s.Summary(Summary{})
	require.Equal(t, []string{"a:train", "b:train", "a:eval", "b:eval", "a:summary", "b:summary"}, log)
	require.Equal(t, 3, n)

	errer, ok := s.(interface{ Err() error })
	require.True(t, ok)
	require.ErrorIs(t, errer.Err(), errA)

	err := Close(s)
	require.ErrorIs(t, err, errA)
	require.Equal(t, 1, a.closed)
	require.Equal(t, 1, b.closed, "nested Multi flattened and closed")

	// No sinks: records are discarded, nothing fails.
	empty := Multi(nil, nilJSONL)
	empty.Train(Train{})
	require.NoError(t, Close(empty))
	require.NoError(t, Close(plainSink{&n}), "not a Closer")
	require.NoError(t, Close(nilJSONL), "typed nil")
}

func TestMultiWithRealSinks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	j, err := CreateJSONL(path)
	require.NoError(t, err)
	var bar, logs bytes.Buffer
	p := NewProgress(&bar, 10, WithTerminal(true), WithEpochs(1), WithWidth(0))
	s := Multi(j, p, NewSlogSink(slog.New(slog.NewTextHandler(&logs, nil))))

	s.Train(Train{Epoch: 1, Step: 10, Loss: 0.1})
	s.Eval(Eval{Epoch: 1, TestAccuracy: 0.5})
	s.Summary(Summary{TestAccuracy: 0.5})
	require.NoError(t, Close(s))

	lines := readLines(t, path)
	require.Len(t, lines, 3)
	var kinds []string
	for _, l := range lines {
		kinds = append(kinds, decodeObject(t, l)["kind"].(string))
	}
	require.Equal(t, []string{"train", "eval", "summary"}, kinds)
	require.Contains(t, bar.String(), "100% 10/10")
	require.True(t, strings.HasSuffix(bar.String(), "\n"), "Close finished the bar")
	require.Contains(t, logs.String(), "msg=eval")
	require.Contains(t, logs.String(), "msg=summary")
	require.NotContains(t, logs.String(), "msg=train")
}

func TestSlogSink(t *testing.T) {
	tests := []struct {
		name     string
		logTrain bool
		emit     func(Sink)
		want     map[string]any // nil: nothing logged
	}{
		{"eval", false, func(s Sink) { s.Eval(Eval{Epoch: 3, TestLoss: 0.25, TestAccuracy: 0.875}) },
			map[string]any{"msg": "eval", "epoch": 3.0, "test_loss": 0.25, "test_accuracy": 0.875}},
		{"eval nan", false, func(s Sink) { s.Eval(Eval{Epoch: 1, TestLoss: math.NaN()}) },
			map[string]any{"msg": "eval", "epoch": 1.0, "test_loss": "NaN", "test_accuracy": 0.0}},
		{"summary", false, func(s Sink) {
			s.Summary(Summary{TestAccuracy: 0.99, TrainSamplesPerSec: 1000, WallSeconds: 60, PeakRSSBytes: 1 << 20})
		}, map[string]any{"msg": "summary", "test_accuracy": 0.99, "train_samples_per_sec": 1000.0,
			"wall_seconds": 60.0, "peak_rss_bytes": float64(1 << 20)}},
		{"summary inf", false, func(s Sink) { s.Summary(Summary{TrainSamplesPerSec: math.Inf(1)}) },
			map[string]any{"msg": "summary", "train_samples_per_sec": "+Inf"}},
		{"train off", false, func(s Sink) { s.Train(Train{Step: 1}) }, nil},
		{"train on", true, func(s Sink) { s.Train(Train{Epoch: 1, Step: 5, Loss: math.Inf(-1), LR: 0.1}) },
			map[string]any{"msg": "train", "epoch": 1.0, "step": 5.0, "loss": "-Inf", "lr": 0.1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			s := NewSlogSink(slog.New(slog.NewJSONHandler(&buf, nil)))
			s.LogTrain = tt.logTrain
			tt.emit(s)
			if tt.want == nil {
				require.Empty(t, buf.String())
				return
			}
			var m map[string]any
			require.NoError(t, json.Unmarshal(buf.Bytes(), &m), buf.String())
			require.Equal(t, "INFO", m["level"])
			for k, v := range tt.want {
				require.Equal(t, v, m[k], k)
			}
			require.NotContains(t, buf.String(), "!ERROR")
		})
	}
}

func TestSlogSinkDefaultLogger(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	defer slog.SetDefault(old)
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	NewSlogSink(nil).Eval(Eval{Epoch: 2})
	require.Contains(t, buf.String(), "msg=eval epoch=2")
}
