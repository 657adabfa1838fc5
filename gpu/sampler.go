package gpu

import (
	"fmt"
	"sync"
	"time"
)

// DefaultInterval is the sampling interval NewSampler uses when given a
// non-positive one.
const DefaultInterval = time.Second

// Ticker is the part of *time.Ticker the Sampler uses; tests inject one
// whose channel they drive.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

type timeTicker struct{ t *time.Ticker }

func (t timeTicker) C() <-chan time.Time { return t.t.C }
func (t timeTicker) Stop()               { t.t.Stop() }

// SamplerOption configures a Sampler.
type SamplerOption func(*samplerConfig)

type samplerConfig struct {
	newTicker func(time.Duration) Ticker
	now       func() time.Time
	onSample  func([]DeviceStats, time.Time, error)
}

// WithTicker replaces time.NewTicker.
func WithTicker(newTicker func(time.Duration) Ticker) SamplerOption {
	return func(c *samplerConfig) { c.newTicker = newTicker }
}

// WithClock replaces time.Now for the sample times Latest reports.
func WithClock(now func() time.Time) SamplerOption {
	return func(c *samplerConfig) { c.now = now }
}

// WithOnSample calls f after each sample, from the sampling goroutine, with
// what Sample returned and the sample's time (to feed metrics or a log). f
// must not call Stop.
func WithOnSample(f func(stats []DeviceStats, at time.Time, err error)) SamplerOption {
	return func(c *samplerConfig) { c.onSample = f }
}

// Sampler samples a Monitor periodically in its own goroutine: once at start
// and then at every tick. It does not own the Monitor: Stop leaves it open.
type Sampler struct {
	m    Monitor
	cfg  samplerConfig
	tick Ticker
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	latest  []DeviceStats
	at      time.Time
	err     error
	samples uint64
}

// NewSampler starts sampling m every interval (DefaultInterval if interval
// <= 0). Call Stop when done.
func NewSampler(m Monitor, interval time.Duration, opts ...SamplerOption) *Sampler {
	if interval <= 0 {
		interval = DefaultInterval
	}
	cfg := samplerConfig{
		newTicker: func(d time.Duration) Ticker { return timeTicker{time.NewTicker(d)} },
		now:       time.Now,
	}
	for _, o := range opts {
		o(&cfg)
	}
	s := &Sampler{
		m:    m,
		cfg:  cfg,
		tick: cfg.newTicker(interval),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go s.run()
	return s
}

func (s *Sampler) run() {
	defer close(s.done)
	s.sampleOnce()
	for {
		// Check stop first so a Stop racing with a ready tick wins.
		select {
		case <-s.stop:
			return
		default:
		}
		select {
		case <-s.stop:
			return
		case <-s.tick.C():
			s.sampleOnce()
		}
	}
}

func (s *Sampler) sampleOnce() {
	stats, err := s.safeSample()
	at := s.cfg.now()
	s.mu.Lock()
	s.samples++
	if stats != nil {
		s.latest, s.at = stats, at
	}
	if err != nil {
		s.err = err
	}
	s.mu.Unlock()
	if s.cfg.onSample != nil {
		s.cfg.onSample(stats, at, err)
	}
}

// safeSample calls the monitor, turning a panic into an error so a faulty
// monitor cannot take the trainer down.
func (s *Sampler) safeSample() (stats []DeviceStats, err error) {
	defer func() {
		if r := recover(); r != nil {
			stats, err = nil, fmt.Errorf("gpu: monitor panicked while sampling: %v", r)
		}
	}()
	if s.m == nil {
		return nil, ErrClosed
	}
	return s.m.Sample()
}

// Latest returns the most recent sample that returned statistics and its
// time; nil and the zero time before the first. The slice is shared between
// callers: do not modify it.
func (s *Sampler) Latest() ([]DeviceStats, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest, s.at
}

// Err returns the most recent sampling error. It is kept until a later
// error replaces it, so an error between two calls is not lost; a sample
// that fails does not clear Latest.
func (s *Sampler) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Samples returns how many samples have been taken, failed ones included.
func (s *Sampler) Samples() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

// Stop stops the ticker and waits for the sampling goroutine to return
// (after the sample in progress, if any). It is safe to call more than once
// and from several goroutines.
func (s *Sampler) Stop() {
	s.once.Do(func() {
		close(s.stop)
		s.tick.Stop()
	})
	<-s.done
}
