package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"reflect"
	"strconv"
)

// Sink receives the records of a training run. The training loop calls
// Train every few steps, Eval after each evaluation and Summary once at the
// end. Methods do not return errors: a sink that can fail remembers its
// first error and reports it from an Err() error method and from Close
// (as [JSONL] does), so a full disk never stops training.
//
// The sinks of this package ([JSONL], [SlogSink], [Progress] and the
// result of [Multi]) are safe for concurrent use.
type Sink interface {
	Train(Train)
	Eval(Eval)
	Summary(Summary)
}

// Multi returns a Sink that passes every record to each of sinks, in
// order. Nil sinks, including typed nil pointers such as a nil *JSONL, are
// skipped, so optional sinks can be passed unconditionally; nested Multi
// sinks are flattened. With no sinks left the result discards records.
//
// The result also has these methods, which the caller reaches with a type
// assertion or through [Close]:
//
//	Err() error   // errors.Join of the Err() of the sinks that have one
//	Close() error // closes the sinks that are io.Closers, joining errors
func Multi(sinks ...Sink) Sink {
	var m multi
	for _, s := range sinks {
		if isNil(s) {
			continue
		}
		if mm, ok := s.(multi); ok {
			m = append(m, mm...)
			continue
		}
		m = append(m, s)
	}
	return m
}

// Sinks returns the sinks s passes records to: those of a [Multi], or s
// itself (none for a nil sink). The slice is the caller's.
func Sinks(s Sink) []Sink {
	if m, ok := s.(multi); ok {
		return append([]Sink(nil), m...)
	}
	if isNil(s) {
		return nil
	}
	return []Sink{s}
}

func isNil(s Sink) bool {
	if s == nil {
		return true
	}
	v := reflect.ValueOf(s)
	switch v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return v.IsNil()
	}
	return false
}

type multi []Sink

func (m multi) Train(r Train) {
	for _, s := range m {
		s.Train(r)
	}
}

func (m multi) Eval(r Eval) {
	for _, s := range m {
		s.Eval(r)
	}
}

func (m multi) Summary(r Summary) {
	for _, s := range m {
		s.Summary(r)
	}
}

// Balance passes a load-balancing record to the sinks that take one.
func (m multi) Balance(r Balance) {
	for _, s := range m {
		if b, ok := s.(interface{ Balance(Balance) }); ok {
			b.Balance(r)
		}
	}
}

// Async passes an asynchronous-training record to the sinks that take one.
func (m multi) Async(r Async) {
	for _, s := range m {
		if b, ok := s.(interface{ Async(Async) }); ok {
			b.Async(r)
		}
	}
}

func (m multi) Err() error {
	var errs []error
	for _, s := range m {
		if e, ok := s.(interface{ Err() error }); ok {
			errs = append(errs, e.Err())
		}
	}
	return errors.Join(errs...)
}

func (m multi) Close() error {
	var errs []error
	for _, s := range m {
		if c, ok := s.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// Close closes s if it is an io.Closer (a [JSONL], a [Progress], a [Multi]
// of them) and returns its error; otherwise it returns nil.
func Close(s Sink) error {
	if c, ok := s.(io.Closer); ok && !isNil(s) {
		return c.Close()
	}
	return nil
}

// SlogSink logs records as structured log lines: "eval" and "summary"
// messages at level Info with the record's fields as attributes, named as
// in the JSON records. Train records are logged (message "train") only if
// LogTrain is set; usually a [Progress] shows training progress instead.
// Non-finite floats are logged as the strings "NaN", "+Inf" and "-Inf",
// which every slog handler can encode.
type SlogSink struct {
	Logger   *slog.Logger // nil means slog.Default()
	LogTrain bool
}

var _ Sink = (*SlogSink)(nil)

// NewSlogSink returns a SlogSink that logs eval and summary records to
// logger (slog.Default() if nil).
func NewSlogSink(logger *slog.Logger) *SlogSink {
	return &SlogSink{Logger: logger}
}

func (s *SlogSink) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// Train logs r if s.LogTrain is set.
func (s *SlogSink) Train(r Train) {
	if !s.LogTrain {
		return
	}
	s.logger().LogAttrs(context.Background(), slog.LevelInfo, KindTrain,
		slog.Int("epoch", r.Epoch),
		slog.Int64("step", r.Step),
		floatAttr("loss", r.Loss),
		floatAttr("lr", r.LR),
		floatAttr("samples_per_sec", r.SamplesPerSec),
	)
}

// Eval logs r.
func (s *SlogSink) Eval(r Eval) {
	s.logger().LogAttrs(context.Background(), slog.LevelInfo, KindEval,
		slog.Int("epoch", r.Epoch),
		floatAttr("test_loss", r.TestLoss),
		floatAttr("test_accuracy", r.TestAccuracy),
	)
}

// Summary logs r.
func (s *SlogSink) Summary(r Summary) {
	s.logger().LogAttrs(context.Background(), slog.LevelInfo, KindSummary,
		floatAttr("test_accuracy", r.TestAccuracy),
		floatAttr("train_samples_per_sec", r.TrainSamplesPerSec),
		floatAttr("wall_seconds", r.WallSeconds),
		slog.Int64("peak_rss_bytes", r.PeakRSSBytes),
		slog.Any("rank_compute_samples_per_sec", r.RankComputeSamplesPerSec),
	)
}

// floatAttr is slog.Float64, except that non-finite values (which
// slog.JSONHandler cannot encode) become strings.
func floatAttr(key string, f float64) slog.Attr {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return slog.String(key, strconv.FormatFloat(f, 'g', -1, 64))
	}
	return slog.Float64(key, f)
}
