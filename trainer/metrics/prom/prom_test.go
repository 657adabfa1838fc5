package prom

import (
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/metrics"
)

func scrape(t *testing.T, addr string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + MetricsPath)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// sample returns the value text of the series name{labels...} in the
// exposition text, where labels are given in the order the text format
// writes them (sorted by name). It fails the test if there is none.
func sample(t *testing.T, text, series string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	require.NotNil(t, m, "no series %s in\n%s", series, gotrainLines(text))
	return m[1]
}

func gotrainLines(text string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "gotrain_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func serve(t *testing.T, e *Exporter) string {
	t.Helper()
	addr, err := e.Serve("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	return addr
}

func TestScrape(t *testing.T) {
	e := New(2, 4)
	addr := serve(t, e)
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", host)
	assert.NotEqual(t, "0", port)

	var sink metrics.Sink = metrics.Multi(e) // usable as an ordinary sink
	sink.Train(metrics.Train{Epoch: 2, Step: 1234, Loss: 0.25, LR: 0.002, SamplesPerSec: 41000.5, Rank: 2, WorldSize: 4})
	sink.Eval(metrics.Eval{Epoch: 2, TestLoss: 0.0679, TestAccuracy: 0.978})
	e.SetShares([]float64{0.3, 0.2, 0.25, 0.25})
	e.SetDevices([]DeviceGauge{
		{Index: 0, Name: "NVIDIA H100 80GB HBM3", UtilGPUPercent: 87, UtilMemPercent: 40, MemUsedBytes: 12e9, MemTotalBytes: 80e9, PowerWatts: 412.5, TemperatureCelsius: 61, SMClockHertz: 1.98e9},
		{Index: 1, Name: "NVIDIA H100 80GB HBM3", UtilGPUPercent: 50},
	})
	e.SetCPU(150, 131e6)

	text := scrape(t, addr)
	const c = `rank="2",world_size="4"`
	for series, want := range map[string]string{
		`gotrain_train_loss{` + c + `}`:                                                        "0.25",
		`gotrain_train_samples_per_second{` + c + `}`:                                          "41000.5",
		`gotrain_learning_rate{` + c + `}`:                                                     "0.002",
		`gotrain_step{` + c + `}`:                                                              "1234",
		`gotrain_epoch{` + c + `}`:                                                             "2",
		`gotrain_train_records_total{` + c + `}`:                                               "1",
		`gotrain_eval_loss{` + c + `}`:                                                         "0.0679",
		`gotrain_eval_accuracy_ratio{` + c + `}`:                                               "0.978",
		`gotrain_evaluations_total{` + c + `}`:                                                 "1",
		`gotrain_run_finished{` + c + `}`:                                                      "0",
		`gotrain_batch_share_ratio{rank="2",share_rank="0",world_size="4"}`:                    "0.3",
		`gotrain_batch_share_ratio{rank="2",share_rank="3",world_size="4"}`:                    "0.25",
		`gotrain_gpu_utilization_ratio{gpu="0",name="NVIDIA H100 80GB HBM3",` + c + `}`:        "0.87",
		`gotrain_gpu_utilization_ratio{gpu="1",name="NVIDIA H100 80GB HBM3",` + c + `}`:        "0.5",
		`gotrain_gpu_memory_utilization_ratio{gpu="0",name="NVIDIA H100 80GB HBM3",` + c + `}`: "0.4",
		`gotrain_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100 80GB HBM3",` + c + `}`:        "1.2e+10",
		`gotrain_gpu_memory_total_bytes{gpu="0",name="NVIDIA H100 80GB HBM3",` + c + `}`:       "8e+10",
		`gotrain_gpu_power_watts{gpu="0",name="NVIDIA H100 80GB HBM3",` + c + `}`:              "412.5",
		`gotrain_gpu_temperature_celsius{gpu="0",name="NVIDIA H100 80GB HBM3",` + c + `}`:      "61",
		`gotrain_gpu_sm_clock_hertz{gpu="0",name="NVIDIA H100 80GB HBM3",` + c + `}`:           "1.98e+09",
		`gotrain_process_cpu_ratio{` + c + `}`:                                                 "1.5",
		`gotrain_process_resident_memory_bytes{` + c + `}`:                                     "1.31e+08",
	} {
		assert.Equal(t, want, sample(t, text, series), series)
	}
	ts := sample(t, text, `gotrain_train_last_record_timestamp_seconds{`+c+`}`)
	assert.NotEqual(t, "0", ts)

	// Help and type lines, and the units in the names.
	assert.Contains(t, text, "# TYPE gotrain_step gauge")
	assert.Contains(t, text, "# TYPE gotrain_evaluations_total counter")
	assert.Contains(t, text, "# HELP gotrain_train_loss ")

	// Every series, the Go and process collectors' included, has the
	// constant labels.
	var goSeen bool
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		assert.Contains(t, line, `rank="2"`, line)
		assert.Contains(t, line, `world_size="4"`, line)
		goSeen = goSeen || strings.HasPrefix(line, "go_goroutines{")
	}
	assert.True(t, goSeen, "Go collector missing")
	if _, err := os.Stat("/proc/self/stat"); err == nil {
		assert.Contains(t, text, "process_resident_memory_bytes{"+c+"}")
	}

	// Summary, then shrinking lists: removed devices and ranks vanish.
	e.Summary(metrics.Summary{TestAccuracy: 0.9791, TrainSamplesPerSec: 40000, WallSeconds: 4.2, PeakRSSBytes: 140000000})
	e.SetShares([]float64{0.5, 0.5})
	e.SetDevices([]DeviceGauge{{Index: 1, Name: "NVIDIA H100 80GB HBM3", UtilGPUPercent: 10}})
	text = scrape(t, addr)
	assert.Equal(t, "1", sample(t, text, `gotrain_run_finished{`+c+`}`))
	assert.Equal(t, "0.9791", sample(t, text, `gotrain_eval_accuracy_ratio{`+c+`}`))
	assert.Equal(t, "4.2", sample(t, text, `gotrain_run_duration_seconds{`+c+`}`))
	assert.Equal(t, "40000", sample(t, text, `gotrain_run_samples_per_second{`+c+`}`))
	assert.Equal(t, "1.4e+08", sample(t, text, `gotrain_run_peak_resident_memory_bytes{`+c+`}`))
	assert.Equal(t, "0.5", sample(t, text, `gotrain_batch_share_ratio{rank="2",share_rank="1",world_size="4"}`))
	assert.NotContains(t, text, `share_rank="2"`)
	assert.NotContains(t, text, `gpu="0"`)
	assert.Equal(t, "0.1", sample(t, text, `gotrain_gpu_utilization_ratio{gpu="1",name="NVIDIA H100 80GB HBM3",`+c+`}`))

	// The index page and unknown paths.
	resp, err := http.Get("http://" + addr + "/")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(b), "/metrics")
	resp, err = http.Get("http://" + addr + "/nope")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestNonFinite(t *testing.T) {
	e := New(0, 1)
	addr := serve(t, e)
	e.Train(metrics.Train{Step: 7, Loss: math.NaN(), LR: math.Inf(1), SamplesPerSec: math.Inf(-1)})
	text := scrape(t, addr)
	const c = `rank="0",world_size="1"`
	assert.Equal(t, "NaN", sample(t, text, `gotrain_train_loss{`+c+`}`))
	assert.Equal(t, "+Inf", sample(t, text, `gotrain_learning_rate{`+c+`}`))
	assert.Equal(t, "-Inf", sample(t, text, `gotrain_train_samples_per_second{`+c+`}`))
}

func TestMetricsDocumented(t *testing.T) {
	// Every gotrain_* family in the registry appears in the package
	// doc's table, and the table lists nothing that does not exist.
	e := New(0, 1)
	e.SetShares([]float64{1})
	e.SetDevices([]DeviceGauge{{Index: 0, Name: "x"}})
	mfs, err := e.Registry().Gather()
	require.NoError(t, err)
	doc, err := os.ReadFile("doc.go")
	require.NoError(t, err)
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^//\t(gotrain_\w+)\s`).FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "gotrain_") {
			exported[mf.GetName()] = true
			assert.True(t, documented[mf.GetName()], "%s is not in the table of doc.go", mf.GetName())
		}
	}
	for name := range documented {
		assert.True(t, exported[name], "doc.go lists %s, which is not exported", name)
	}
	assert.Len(t, exported, 24)
}

func TestServeBadAddress(t *testing.T) {
	for _, addr := range []string{"nonsense", "127.0.0.1:99999", "203.0.113.7:0"} {
		e := New(0, 1)
		_, err := e.Serve(addr)
		require.Error(t, err, addr)
		assert.Contains(t, err.Error(), `"`+addr+`"`)
		assert.Contains(t, err.Error(), "port")
		require.NoError(t, e.Close())
	}
}

func TestServeBusyAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	e := New(0, 1)
	_, err = e.Serve(ln.Addr().String())
	require.Error(t, err)
	assert.Contains(t, err.Error(), ln.Addr().String())
	assert.Contains(t, err.Error(), "pick another port")
}

func TestCloseFreesPort(t *testing.T) {
	e := New(0, 1)
	addr, err := e.Serve("127.0.0.1:0")
	require.NoError(t, err)
	_ = scrape(t, addr) // leaves a kept-alive connection behind
	_, err = e.Serve("127.0.0.1:0")
	assert.ErrorContains(t, err, "already serving")

	require.NoError(t, e.Close())
	require.NoError(t, e.Close()) // idempotent
	_, err = http.Get("http://" + addr + MetricsPath)
	assert.Error(t, err, "still answering after Close")
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err, "port not freed by Close")
	ln.Close()

	_, err = e.Serve("127.0.0.1:0")
	assert.ErrorContains(t, err, "after Close")
	// Values remain gatherable after Close.
	e.Train(metrics.Train{Step: 3})
	_, err = e.Registry().Gather()
	assert.NoError(t, err)
}

func TestNilExporter(t *testing.T) {
	var e *Exporter
	e.Train(metrics.Train{})
	e.Eval(metrics.Eval{})
	e.Summary(metrics.Summary{})
	e.SetShares([]float64{1})
	e.SetDevices(nil)
	e.SetCPU(1, 2)
	assert.NoError(t, e.Close())
	_, err := e.Serve("127.0.0.1:0")
	assert.Error(t, err)
}

func TestConcurrentUpdatesAndScrapes(t *testing.T) {
	e := New(1, 2)
	addr := serve(t, e)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				e.Train(metrics.Train{Step: int64(n), Loss: float64(i)})
				e.SetShares([]float64{0.5, 0.5})
				e.SetDevices([]DeviceGauge{{Index: i, Name: "g"}})
				e.SetCPU(float64(n), 1)
			}
		}()
	}
	for range 5 {
		text := scrape(t, addr)
		assert.Contains(t, text, "gotrain_step{")
	}
	close(stop)
	wg.Wait()
}
