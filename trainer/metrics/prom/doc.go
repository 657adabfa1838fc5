// Package prom exports a training run's metrics to Prometheus: an
// [Exporter] is a [metrics.Sink] that keeps the latest values of the
// run's records, the load balancer's batch shares, the GPUs' and the
// process's state in gauges and counters, and serves them over HTTP for
// Prometheus (or curl) to scrape.
//
// # Use
//
//	exp := prom.New(rank, worldSize)
//	addr, err := exp.Serve("127.0.0.1:9400") // or ":0" / "127.0.0.1:0" for any free port
//	if err != nil { ... }                     // the error names the address
//	defer exp.Close()
//	log.Printf("metrics at http://%s/metrics", addr)
//	sink := metrics.Multi(jsonl, progress, exp) // the loop reports as usual
//	...
//	exp.SetShares(balancer.Shares())  // after each rebalance
//	exp.SetDevices(gauges)            // from the GPU monitor, each sample
//	exp.SetCPU(cpuPercent, rssBytes)  // from the CPU monitor, each sample
//
// Scrape it with
//
//	curl -s http://127.0.0.1:9400/metrics | grep ^gotrain_
//
// or with a Prometheus job such as
//
//	scrape_configs:
//	  - job_name: gotrain
//	    scrape_interval: 15s
//	    static_configs:
//	      - targets: ["node0:9400", "node0:9401"]   # one port per rank
//
// In a data-parallel job, give each process its own port (for example the
// base port plus the local rank). Every series carries the constant labels
// rank and world_size (the values given to [New]), so the ranks' series
// stay apart even when they are relabelled to one instance.
//
// The registry is private to the Exporter (not prometheus.DefaultRegisterer),
// so several Exporters can live in one process (tests do) and nothing else
// in the program adds series to it by accident. Besides the gotrain_*
// metrics below it holds the Go runtime collector (go_*) and the process
// collector (process_*: CPU seconds, resident memory, open file
// descriptors and so on, on Linux), both with the constant labels too.
// Other packages can add metrics of their own through
// [Exporter.Registerer], which applies the same constant labels.
//
// # Metrics
//
// Names follow Prometheus conventions: base units (seconds, bytes, watts,
// hertz, degrees Celsius), fractions as _ratio in 0..1 (percentages are
// divided by 100), counters end in _total. All are gauges unless the type
// column says otherwise. Until the first record or call that sets a gauge,
// it reads 0; labelled families (batch shares, GPUs) have no series until
// set.
//
//	metric                                   type     labels         unit     meaning
//	gotrain_train_loss                       gauge                   -        training loss of the latest train record
//	gotrain_train_samples_per_second         gauge                   1/s      training throughput of the latest train record
//	gotrain_learning_rate                    gauge                   -        learning rate of the latest reported step
//	gotrain_step                             gauge                   steps    optimizer steps done since the run began; only grows
//	                                                                          within a run, like a counter, but set (not added to),
//	                                                                          so a resumed run continues from its checkpoint's step
//	gotrain_epoch                            gauge                   -        1-based epoch of the latest train or eval record
//	gotrain_train_records_total              counter                 records  train records received
//	gotrain_train_last_record_timestamp_seconds gauge                s        Unix time of the latest train record (alert when
//	                                                                          time() minus this grows: training has stalled)
//	gotrain_eval_loss                        gauge                   -        mean test-set loss of the latest evaluation
//	gotrain_eval_accuracy_ratio              gauge                   0..1     test accuracy of the latest evaluation (the
//	                                                                          summary's final accuracy at the end)
//	gotrain_evaluations_total                counter                 evals    evaluations completed
//	gotrain_run_finished                     gauge                   0/1      1 once the run's summary has been reported
//	gotrain_run_duration_seconds             gauge                   s        wall-clock duration of the finished run
//	gotrain_run_samples_per_second           gauge                   1/s      mean training throughput of the finished run
//	gotrain_run_peak_resident_memory_bytes   gauge                   bytes    peak RSS of the finished run (0 if unknown)
//	gotrain_batch_share_ratio                gauge    share_rank     0..1     fraction of the global batch given to rank
//	                                                                          share_rank by the load balancer ([Exporter.SetShares])
//	gotrain_gpu_utilization_ratio            gauge    gpu, name      0..1     fraction of time a kernel ran on the GPU
//	gotrain_gpu_memory_utilization_ratio     gauge    gpu, name      0..1     fraction of time GPU memory was read or written
//	gotrain_gpu_memory_used_bytes            gauge    gpu, name      bytes    GPU memory in use
//	gotrain_gpu_memory_total_bytes           gauge    gpu, name      bytes    GPU memory installed
//	gotrain_gpu_power_watts                  gauge    gpu, name      W        GPU power draw
//	gotrain_gpu_temperature_celsius          gauge    gpu, name      °C       GPU temperature
//	gotrain_gpu_sm_clock_hertz               gauge    gpu, name      Hz       streaming-multiprocessor clock
//	gotrain_process_cpu_ratio                gauge                   cores    CPU time per wall-clock second as sampled by the
//	                                                                          trainer (1 = one core busy; can exceed 1)
//	gotrain_process_resident_memory_bytes    gauge                   bytes    resident set size as sampled by the trainer
//
// Every series also has the constant labels rank and world_size. The
// per-rank label of gotrain_batch_share_ratio is share_rank, not rank,
// because rank is already the constant label naming the process that
// exports it (usually rank 0, which runs the balancer): a series cannot
// have two labels of one name.
//
// The gpu label is the device index, name its model name. The gpu_*
// families are replaced as a whole by each [Exporter.SetDevices] call, and
// gotrain_batch_share_ratio by each [Exporter.SetShares] call: a device or
// rank missing from the latest call has no series.
//
// Non-finite values (a diverged loss) are exported as they are: the
// exposition format writes NaN, +Inf and -Inf, and Prometheus stores them.
//
// # The HTTP server
//
// [Exporter.Serve] listens on the given address and serves the metrics at
// /metrics (the text format, or protobuf/OpenMetrics when the scraper asks
// for them) in a goroutine; / answers with a one-line pointer to /metrics.
// It bounds header and request read times, response write time, idle
// keep-alive time, header size, open connections ([MaxConnections]; one
// beyond them is closed at once, so idle connections cannot use up the
// process's file descriptors), concurrent scrapes and scrape duration (see
// the constants). An address that is malformed, busy or not local
// gives an error that names it and says what to change. [Exporter.Close]
// stops listening (the port is free when it returns) and waits briefly for
// scrapes in progress.
//
// To serve the metrics from a server of your own instead, mount
// [Exporter.Handler].
package prom
