// Package metrics is what the training loop reports, and where it goes:
// a metrics file of JSON records for programs, a progress display for
// people, and structured log lines for both.
//
// # Records
//
// The loop reports three kinds of record. Each is one JSON object whose
// "kind" field names it; the other fields are:
//
//	kind "train"    every few optimizer steps (type Train)
//	  epoch            int     1-based epoch
//	  step             int     optimizer steps done since the run began
//	                           (1-based; continues across epochs and resumes)
//	  loss             float   training loss at this step
//	  lr               float   learning rate used for the step
//	  samples_per_sec  float   training throughput, samples per second
//
//	kind "eval"     after each evaluation on the test set (type Eval)
//	  epoch            int     epoch after which it ran
//	  test_loss        float   mean loss over the test set
//	  test_accuracy    float   fraction of the test set classified
//	                           correctly, 0..1
//
//	kind "summary"  once, at the end of the run (type Summary)
//	  test_accuracy          float  final test accuracy, 0..1
//	  train_samples_per_sec  float  mean training throughput over the run
//	  wall_seconds           float  wall-clock duration of the run, seconds
//	  peak_rss_bytes         int    peak resident memory of the process,
//	                                bytes (PeakRSSBytes); 0 if unknown
//	  rank_compute_samples_per_sec  [float]  each rank's computation
//	                                speed: the samples it computed over
//	                                the seconds of its forward and
//	                                backward passes (waits for other
//	                                ranks, communication, the optimiser
//	                                step and programs' first runs left
//	                                out), in rank
//	                                order; their sum is what the job
//	                                would train at with no overhead of
//	                                synchronisation and perfect shares
//
// Every field is always present (none is omitted when zero). Programs
// reading the records should select them by "kind" and ignore fields they
// do not know: later versions add fields (such as "rank" and
// "world_size"), never rename or remove them.
//
// The kind is set by the records' JSON encoding from the Go type, so it
// cannot be forgotten or wrong: Train{Loss: 0.5} encodes with
// "kind":"train" even though its Kind field is empty.
//
// Floats that are not finite (a diverged loss: NaN, +Inf, -Inf) have no
// JSON representation; they are written as null. A reader decoding into
// these types gets 0 for null, so check for null in the raw JSON where it
// matters.
//
// # The metrics file
//
// [CreateJSONL] creates (or truncates) a JSON Lines file, one record per
// line; [OpenJSONL] with appendMode true appends instead, for a resumed
// run, first ending any partial last line left by a crash. Each record is
// written to the file as soon as it is reported, in one write: `tail -f`
// shows it at once, and a crash loses at most the line being written.
// Close fsyncs the file. A line looks like
//
//	{"kind":"train","epoch":1,"step":200,"loss":0.2345,"lr":0.01,"samples_per_sec":12345.6}
//
// # Progress display
//
// [Progress] shows how far the run has got, on standard error say. When
// its writer is a terminal ([IsTerminal]) it draws one status line,
// redrawn in place with '\r' at most every 100ms:
//
//	epoch 1/2 [=============>                ]  45% 27000/60000  12345 samples/s  loss 0.2345  ETA 0:33
//
// The percentage and the ETA are for the whole run (total units, done
// cumulative); the ETA is remaining units over a smoothed measured rate.
// When the writer is not a terminal (redirected to a file, a CI log),
// redrawing would only fill the file with '\r's, so Progress logs a plain
// line through log/slog instead, on the first update and then every 10s:
//
//	time=... level=INFO msg=train epoch=1 epochs=2 done=27000 total=60000 loss=0.2345 samples_per_sec=12345 eta=0:33
//
// Other output must not be written straight to the terminal while the bar
// is shown, or it lands in the middle of the line: print through
// [Progress.Log], or give log handlers the Progress itself as their
// io.Writer (it prints whole lines above the bar and redraws it).
//
// # Sinks
//
// The training loop reports to a [Sink]; [Multi] fans records out to
// several. [JSONL] is a sink writing the metrics file, [SlogSink] logs eval
// and summary records, and [Progress] shows train records.
//
// # Errors
//
// Reporting must not stop training, so the Sink methods return nothing. A
// sink that can fail remembers its first error, keeps trying later
// records, and reports that error from Err() and again from Close. The
// loop should check Close's error (or Err() from time to time) and warn
// or fail the run as it sees fit. [JSONL.Write], the direct API, returns
// its error as well as remembering it. Open and create errors are
// returned at once. Errors of the progress display's writer are ignored:
// it is a display, not a record.
//
// # Example
//
//	f, err := metrics.CreateJSONL(filepath.Join(runDir, "metrics.jsonl"))
//	if err != nil {
//		return err
//	}
//	bar := metrics.NewProgress(os.Stderr, int64(epochs*stepsPerEpoch),
//		metrics.WithEpochs(epochs))
//	logger := slog.New(slog.NewTextHandler(bar, nil)) // logs above the bar
//	sink := metrics.Multi(f, bar, metrics.NewSlogSink(logger))
//	start := time.Now()
//	for epoch := 1; epoch <= epochs; epoch++ {
//		for ... {
//			step++
//			sink.Train(metrics.Train{Epoch: epoch, Step: step, Loss: loss,
//				LR: lr, SamplesPerSec: sps})
//		}
//		sink.Eval(metrics.Eval{Epoch: epoch, TestLoss: tl, TestAccuracy: acc})
//	}
//	sink.Summary(metrics.Summary{TestAccuracy: acc,
//		TrainSamplesPerSec: float64(samples) / trainSeconds,
//		WallSeconds:        time.Since(start).Seconds(),
//		PeakRSSBytes:       metrics.PeakRSSBytes()})
//	if err := metrics.Close(sink); err != nil { // ends the bar, closes the file
//		return fmt.Errorf("writing metrics: %w", err)
//	}
package metrics
