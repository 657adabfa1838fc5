package prom

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/metrics"
)

// Limits of the HTTP server started by [Exporter.Serve]. A scrape is one
// small GET; these keep a slow or hostile client from holding the
// server's resources.
const (
	// ReadHeaderTimeout bounds the time to read a request's headers.
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds the time to read a whole request.
	ReadTimeout = 10 * time.Second
	// WriteTimeout bounds the time to write a response.
	WriteTimeout = 30 * time.Second
	// IdleTimeout bounds how long a kept-alive connection waits for
	// its next request.
	IdleTimeout = 2 * time.Minute
	// MaxHeaderBytes bounds the size of a request's headers.
	MaxHeaderBytes = 16 << 10
	// MaxConnections bounds the connections open at once, idle ones
	// included; a connection beyond it is closed at once (secure.Gate,
	// through secure.LimitListener), so a flood of connections that send
	// nothing holds at most this many file descriptors, each for at most
	// ReadHeaderTimeout. A few scrapers need a few connections.
	MaxConnections = 64
	// MaxRequestsInFlight bounds concurrent scrapes; more get 503.
	MaxRequestsInFlight = 4
	// ScrapeTimeout bounds the time to gather and encode one scrape;
	// a slower one gets 503.
	ScrapeTimeout = 10 * time.Second
	// ShutdownTimeout bounds how long [Exporter.Close] waits for
	// scrapes in progress before closing their connections.
	ShutdownTimeout = 5 * time.Second
)

// MetricsPath is the path at which [Exporter.Serve] serves the metrics.
const MetricsPath = "/metrics"

// DeviceGauge is one GPU's state at one moment, as the trainer's device
// monitor reads it (the caller converts from its own type). Percentages
// are 0..100; [Exporter.SetDevices] exports them as ratios 0..1.
type DeviceGauge struct {
	// Index is the device's index (its CUDA/NVML ordinal); it becomes
	// the "gpu" label.
	Index int
	// Name is the device's model name ("NVIDIA H100 80GB HBM3"); it
	// becomes the "name" label.
	Name string
	// UtilGPUPercent is the percentage of time over the last sample
	// period during which a kernel ran on the device, 0..100.
	UtilGPUPercent float64
	// UtilMemPercent is the percentage of time over the last sample
	// period during which device memory was read or written, 0..100.
	UtilMemPercent float64
	// MemUsedBytes and MemTotalBytes are the device memory in use and
	// installed, in bytes.
	MemUsedBytes, MemTotalBytes float64
	// PowerWatts is the power draw, in watts.
	PowerWatts float64
	// TemperatureCelsius is the GPU die temperature, in degrees Celsius.
	TemperatureCelsius float64
	// SMClockHertz is the streaming-multiprocessor clock, in hertz.
	SMClockHertz float64
}

// Exporter keeps the latest training metrics of one process in Prometheus
// gauges and counters, in a registry of its own, and serves them over
// HTTP. It implements [metrics.Sink], so the training loop reports to it
// like to any other sink (pass it to [metrics.Multi]).
//
// All methods are safe for concurrent use. A nil *Exporter ignores every
// call, so an optional exporter can be passed around unconditionally.
type Exporter struct {
	rank, worldSize int

	reg *prometheus.Registry
	// wrapped registers with the constant labels rank and world_size.
	wrapped prometheus.Registerer

	trainLoss     prometheus.Gauge
	samplesPerSec prometheus.Gauge
	learningRate  prometheus.Gauge
	step          prometheus.Gauge
	epoch         prometheus.Gauge
	lastTrain     prometheus.Gauge
	trainRecords  prometheus.Counter
	evalLoss      prometheus.Gauge
	evalAccuracy  prometheus.Gauge
	evaluations   prometheus.Counter
	runFinished   prometheus.Gauge
	runDuration   prometheus.Gauge
	runThroughput prometheus.Gauge
	runPeakRSS    prometheus.Gauge
	share         *prometheus.GaugeVec
	gpuUtil       *prometheus.GaugeVec
	gpuMemUtil    *prometheus.GaugeVec
	gpuMemUsed    *prometheus.GaugeVec
	gpuMemTotal   *prometheus.GaugeVec
	gpuPower      *prometheus.GaugeVec
	gpuTemp       *prometheus.GaugeVec
	gpuClock      *prometheus.GaugeVec
	cpuRatio      prometheus.Gauge
	rss           prometheus.Gauge

	// mu serialises the Reset-then-Set updates of the labelled families
	// (so a scrape never sees two devices' lists mixed) and guards the
	// server fields.
	mu     sync.Mutex
	srv    *http.Server
	ln     net.Listener
	served chan struct{} // closed when srv.Serve returns
	closed bool
}

var _ metrics.Sink = (*Exporter)(nil)

// New returns an Exporter for the process of the given rank in a job of
// worldSize processes (0 and 1 for a single process). Every series it
// exports, the Go runtime's and the process's included, carries the
// constant labels rank and world_size with these values. New does not
// listen anywhere; call [Exporter.Serve] for that, or mount
// [Exporter.Handler] on a server of your own.
func New(rank, worldSize int) *Exporter {
	reg := prometheus.NewRegistry()
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{
		"rank":       strconv.Itoa(rank),
		"world_size": strconv.Itoa(worldSize),
	}, reg)
	f := factory{wrapped}
	gpuLabels := []string{"gpu", "name"}
	e := &Exporter{
		rank:      rank,
		worldSize: worldSize,
		reg:       reg,
		wrapped:   wrapped,

		trainLoss:     f.gauge("gotrain_train_loss", "Training loss of the latest train record (mean over the steps since the previous record)."),
		samplesPerSec: f.gauge("gotrain_train_samples_per_second", "Training throughput of the latest train record, samples per second."),
		learningRate:  f.gauge("gotrain_learning_rate", "Learning rate used for the latest reported step."),
		step:          f.gauge("gotrain_step", "Optimizer steps completed since the run began (continues across resumes; only grows within a run)."),
		epoch:         f.gauge("gotrain_epoch", "1-based epoch of the latest train or eval record."),
		lastTrain:     f.gauge("gotrain_train_last_record_timestamp_seconds", "Unix time at which the latest train record arrived, seconds."),
		trainRecords:  f.counter("gotrain_train_records_total", "Train records received."),
		evalLoss:      f.gauge("gotrain_eval_loss", "Mean test-set loss of the latest evaluation."),
		evalAccuracy:  f.gauge("gotrain_eval_accuracy_ratio", "Fraction of the test set classified correctly by the latest evaluation (or the final summary), 0..1."),
		evaluations:   f.counter("gotrain_evaluations_total", "Evaluations on the test set completed."),
		runFinished:   f.gauge("gotrain_run_finished", "1 once the run has reported its summary, else 0."),
		runDuration:   f.gauge("gotrain_run_duration_seconds", "Wall-clock duration of the finished run, seconds (set by the summary)."),
		runThroughput: f.gauge("gotrain_run_samples_per_second", "Mean training throughput over the finished run, samples per second (set by the summary)."),
		runPeakRSS:    f.gauge("gotrain_run_peak_resident_memory_bytes", "Peak resident set size of the finished run's process, bytes (set by the summary; 0 if unknown)."),
		share:         f.gaugeVec("gotrain_batch_share_ratio", "Fraction of the global batch the load balancer assigns to the rank share_rank, 0..1.", "share_rank"),
		gpuUtil:       f.gaugeVec("gotrain_gpu_utilization_ratio", "Fraction of the last sample period during which a kernel ran on the GPU, 0..1.", gpuLabels...),
		gpuMemUtil:    f.gaugeVec("gotrain_gpu_memory_utilization_ratio", "Fraction of the last sample period during which GPU memory was read or written, 0..1.", gpuLabels...),
		gpuMemUsed:    f.gaugeVec("gotrain_gpu_memory_used_bytes", "GPU memory in use, bytes.", gpuLabels...),
		gpuMemTotal:   f.gaugeVec("gotrain_gpu_memory_total_bytes", "GPU memory installed, bytes.", gpuLabels...),
		gpuPower:      f.gaugeVec("gotrain_gpu_power_watts", "GPU power draw, watts.", gpuLabels...),
		gpuTemp:       f.gaugeVec("gotrain_gpu_temperature_celsius", "GPU temperature, degrees Celsius.", gpuLabels...),
		gpuClock:      f.gaugeVec("gotrain_gpu_sm_clock_hertz", "GPU streaming-multiprocessor clock, hertz.", gpuLabels...),
		cpuRatio:      f.gauge("gotrain_process_cpu_ratio", "CPU time used by the process per wall-clock second, as sampled by the trainer (1 = one core busy; can exceed 1)."),
		rss:           f.gauge("gotrain_process_resident_memory_bytes", "Resident set size of the process as sampled by the trainer, bytes."),
	}
	wrapped.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return e
}

// factory creates metrics and registers them with reg.
type factory struct{ reg prometheus.Registerer }

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

// Rank and WorldSize return the values of the constant labels rank and
// world_size given to [New].
func (e *Exporter) Rank() int      { return e.rank }
func (e *Exporter) WorldSize() int { return e.worldSize }

// Registry returns the Exporter's private registry, for tests and for
// gathering without HTTP. Register further collectors with
// [Exporter.Registerer] instead, so that they get the constant labels.
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// Registerer returns a Registerer that adds to the Exporter's registry
// with the constant labels rank and world_size, for packages that export
// metrics of their own next to these.
func (e *Exporter) Registerer() prometheus.Registerer { return e.wrapped }

// Handler returns the HTTP handler that serves the Exporter's registry
// in the Prometheus exposition formats (text, or protobuf/OpenMetrics
// where the scraper asks for it), with the limits [MaxRequestsInFlight]
// and [ScrapeTimeout]. [Exporter.Serve] mounts it at [MetricsPath].
func (e *Exporter) Handler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            e.wrapped,
		MaxRequestsInFlight: MaxRequestsInFlight,
		Timeout:             ScrapeTimeout,
		EnableOpenMetrics:   true,
	})
}

// Train sets the train gauges (loss, samples per second, learning rate,
// step, epoch) from r and counts the record. Non-finite values are
// exported as they are (Prometheus represents NaN and ±Inf). r.Rank and
// r.WorldSize are not used: the constant labels are those given to
// [New].
func (e *Exporter) Train(r metrics.Train) {
	if e == nil {
		return
	}
	e.trainLoss.Set(r.Loss)
	e.samplesPerSec.Set(r.SamplesPerSec)
	e.learningRate.Set(r.LR)
	e.step.Set(float64(r.Step))
	e.epoch.Set(float64(r.Epoch))
	e.lastTrain.SetToCurrentTime()
	e.trainRecords.Inc()
}

// Eval sets gotrain_eval_loss, gotrain_eval_accuracy_ratio and
// gotrain_epoch from r and counts the evaluation.
func (e *Exporter) Eval(r metrics.Eval) {
	if e == nil {
		return
	}
	e.evalLoss.Set(r.TestLoss)
	e.evalAccuracy.Set(r.TestAccuracy)
	e.epoch.Set(float64(r.Epoch))
	e.evaluations.Inc()
}

// Summary sets the gotrain_run_* gauges from r, gotrain_run_finished to
// 1, and gotrain_eval_accuracy_ratio to the final test accuracy.
func (e *Exporter) Summary(r metrics.Summary) {
	if e == nil {
		return
	}
	e.evalAccuracy.Set(r.TestAccuracy)
	e.runDuration.Set(r.WallSeconds)
	e.runThroughput.Set(r.TrainSamplesPerSec)
	e.runPeakRSS.Set(float64(r.PeakRSSBytes))
	e.runFinished.Set(1)
}

// SetShares sets gotrain_batch_share_ratio{share_rank="i"} to shares[i],
// the fraction of the global batch the load balancer gives rank i. It
// replaces the previous list: ranks beyond len(shares) disappear.
func (e *Exporter) SetShares(shares []float64) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.share.Reset()
	for i, s := range shares {
		e.share.WithLabelValues(strconv.Itoa(i)).Set(s)
	}
}

// SetDevices sets the gotrain_gpu_* gauges, one series per device
// labelled gpu (the index) and name. Percentages become ratios (divided
// by 100). It replaces the previous list: devices not in stats
// disappear, so pass every device each time.
func (e *Exporter) SetDevices(stats []DeviceGauge) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	vecs := []*prometheus.GaugeVec{e.gpuUtil, e.gpuMemUtil, e.gpuMemUsed, e.gpuMemTotal, e.gpuPower, e.gpuTemp, e.gpuClock}
	for _, v := range vecs {
		v.Reset()
	}
	for _, d := range stats {
		l := []string{strconv.Itoa(d.Index), d.Name}
		e.gpuUtil.WithLabelValues(l...).Set(d.UtilGPUPercent / 100)
		e.gpuMemUtil.WithLabelValues(l...).Set(d.UtilMemPercent / 100)
		e.gpuMemUsed.WithLabelValues(l...).Set(d.MemUsedBytes)
		e.gpuMemTotal.WithLabelValues(l...).Set(d.MemTotalBytes)
		e.gpuPower.WithLabelValues(l...).Set(d.PowerWatts)
		e.gpuTemp.WithLabelValues(l...).Set(d.TemperatureCelsius)
		e.gpuClock.WithLabelValues(l...).Set(d.SMClockHertz)
	}
}

// SetCPU sets gotrain_process_cpu_ratio to cpuPercent/100 (100% = one
// core busy) and gotrain_process_resident_memory_bytes to rssBytes.
func (e *Exporter) SetCPU(cpuPercent, rssBytes float64) {
	if e == nil {
		return
	}
	e.cpuRatio.Set(cpuPercent / 100)
	e.rss.Set(rssBytes)
}

// Serve listens on addr (host:port; "127.0.0.1:0" or ":0" picks a free
// port) and serves the metrics at [MetricsPath] in the background, until
// [Exporter.Close]. It returns the address actually bound, with the port
// filled in. It fails, naming addr, when the address is malformed, the
// port is in use or the host is not an address of this machine, and when
// the Exporter is already serving or closed.
func (e *Exporter) Serve(addr string) (actualAddr string, err error) {
	if e == nil {
		return "", errors.New("prom: Serve on a nil *Exporter")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.closed:
		return "", errors.New("prom: Serve after Close")
	case e.srv != nil:
		return "", fmt.Errorf("prom: already serving on %s", e.ln.Addr())
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("prom: metrics address %q is not HOST:PORT (%v); use e.g. 127.0.0.1:9400, :9400 for every interface, or 127.0.0.1:0 for any free port", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("prom: cannot listen for metrics on %q: %w; pick another port (or port 0 for any free one), or a host that is an address of this machine", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle(MetricsPath, e.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "gotrain metrics exporter (rank %d of %d): metrics at %s\n", e.rank, e.worldSize, MetricsPath)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	limited := secure.LimitListener(ln, secure.NewGate("metrics endpoint on "+ln.Addr().String(), MaxConnections, nil))
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(limited) // returns http.ErrServerClosed after Close
	}()
	e.srv, e.ln, e.served = srv, ln, served
	return ln.Addr().String(), nil
}

// Close stops the server started by [Exporter.Serve]: it stops listening
// at once (the port is free when Close returns), waits up to
// [ShutdownTimeout] for scrapes in progress and then closes their
// connections. The metrics keep their values and can still be gathered
// through [Exporter.Registry]; Serve cannot be called again. Close is
// idempotent and returns nil when nothing was served.
func (e *Exporter) Close() error {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	srv, served := e.srv, e.served
	e.closed = true
	e.srv = nil
	e.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, srv.Close())
	}
	<-served
	if err != nil {
		return fmt.Errorf("prom: closing the metrics server: %w", err)
	}
	return nil
}

// Balance takes the load balancer's records (see metrics.Balance): the
// shares become gotrain_batch_share_ratio.
func (e *Exporter) Balance(b metrics.Balance) {
	if e == nil {
		return
	}
	e.SetShares(b.Shares)
}
