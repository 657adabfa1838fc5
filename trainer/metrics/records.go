package metrics

// Record kinds: the value of the "kind" field of every line in a metrics
// file. The JSON encoders of [Train], [Eval] and [Summary] always write the
// kind that matches the record's type, whatever the Kind field holds.
const (
	KindTrain   = "train"
	KindEval    = "eval"
	KindSummary = "summary"
)

// Train is reported by the training loop every few optimizer steps.
type Train struct {
	// Kind is always "train" in the encoded record (set by MarshalJSON).
	Kind string `json:"kind"`
	// Epoch is the 1-based epoch the step belongs to.
	Epoch int `json:"epoch"`
	// Step counts the optimizer steps completed since the start of the
	// run (1-based, continuing across epochs and resumed runs).
	Step int64 `json:"step"`
	// Loss is the training loss at this step (mean over the batch, or
	// over the steps since the previous record: the loop's choice).
	Loss float64 `json:"loss"`
	// LR is the learning rate used for this step.
	LR float64 `json:"lr"`
	// SamplesPerSec is training throughput: samples per wall-clock second,
	// as measured by the loop.
	SamplesPerSec float64 `json:"samples_per_sec"`
	// DataWaitFraction is the share of the window's wall-clock time that
	// this rank's steps spent waiting for their batches: filling them (the
	// CPU decodes, normalises and augments as it goes) or waiting for a
	// device's prefetcher. Near 0 when the input pipeline keeps up.
	DataWaitFraction float64 `json:"data_wait_fraction"`
	// Rank is the reporting process's rank in a data-parallel job (0 for
	// one process); WorldSize the number of ranks (1 for one process).
	Rank      int `json:"rank"`
	WorldSize int `json:"world_size"`
	// GPU holds the latest NVML sample of this rank's devices, on runs
	// where a driver is present.
	GPU []GPU `json:"gpu,omitempty"`
}

// GPU is one device's statistics in a [Train] record.
type GPU struct {
	Index           int      `json:"index"`
	UtilGPUPercent  float64  `json:"util_gpu_percent"`
	UtilMemPercent  float64  `json:"util_mem_percent"`
	MemUsedBytes    float64  `json:"mem_used_bytes"`
	MemTotalBytes   float64  `json:"mem_total_bytes"`
	PowerWatts      float64  `json:"power_watts"`
	TemperatureC    float64  `json:"temperature_c"`
	SMClockMHz      float64  `json:"sm_clock_mhz"`
	ThrottleReasons []string `json:"throttle,omitempty"`
}

// Eval is reported after each evaluation on the test set.
type Eval struct {
	// Kind is always "eval" in the encoded record (set by MarshalJSON).
	Kind string `json:"kind"`
	// Epoch is the 1-based epoch after which the evaluation ran.
	Epoch int `json:"epoch"`
	// TestLoss is the mean loss over the test set.
	TestLoss float64 `json:"test_loss"`
	// TestAccuracy is the fraction of correctly classified test
	// examples, in [0, 1].
	TestAccuracy float64 `json:"test_accuracy"`
	// Rank and WorldSize: see [Train].
	Rank      int `json:"rank"`
	WorldSize int `json:"world_size"`
}

// Summary is reported once, at the end of a run.
type Summary struct {
	// Kind is always "summary" in the encoded record (set by MarshalJSON).
	Kind string `json:"kind"`
	// TestAccuracy is the final test accuracy, a fraction in [0, 1].
	TestAccuracy float64 `json:"test_accuracy"`
	// TrainSamplesPerSec is the mean training throughput over the run:
	// training samples processed divided by seconds spent training.
	TrainSamplesPerSec float64 `json:"train_samples_per_sec"`
	// WallSeconds is the wall-clock duration of the run, in seconds.
	WallSeconds float64 `json:"wall_seconds"`
	// PeakRSSBytes is the peak resident set size of the process, in
	// bytes (see [PeakRSSBytes]); 0 where the platform does not report it.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// RankComputeSamplesPerSec is each rank's computation speed, in rank
	// order: the samples it computed over the seconds of its forward and
	// backward passes (waits for other ranks, communication, the
	// optimiser step and the first run of each program, which allocates
	// its buffers, left out). Their sum is the job's ideal throughput:
	// every rank busy all the time, no synchronisation. One element in a
	// run of one process.
	RankComputeSamplesPerSec []float64 `json:"rank_compute_samples_per_sec"`
	// DataWaitFraction is [Train]'s over the whole training time.
	DataWaitFraction float64 `json:"data_wait_fraction"`
	// Rank and WorldSize: see [Train].
	Rank      int `json:"rank"`
	WorldSize int `json:"world_size"`
}

// MarshalJSON encodes r with kind "train"; non-finite floats become null.
func (r Train) MarshalJSON() ([]byte, error) {
	type plain Train // same fields, no methods
	r.Kind = KindTrain
	return marshalFinite(plain(r))
}

// MarshalJSON encodes r with kind "eval"; non-finite floats become null.
func (r Eval) MarshalJSON() ([]byte, error) {
	type plain Eval
	r.Kind = KindEval
	return marshalFinite(plain(r))
}

// MarshalJSON encodes r with kind "summary"; non-finite floats become null.
func (r Summary) MarshalJSON() ([]byte, error) {
	type plain Summary
	r.Kind = KindSummary
	return marshalFinite(plain(r))
}

// KindBalance is the kind of a [Balance] record.
const KindBalance = "balance"

// Balance is reported when the load balancer re-plans the ranks' shares of
// the global batch.
type Balance struct {
	Kind string `json:"kind"`
	// Step is the optimizer step after which the new shares apply.
	Step int64 `json:"step"`
	// Shares are the fractions of the global batch per rank (sum 1).
	Shares []float64 `json:"shares"`
	// Reason says what was measured.
	Reason    string `json:"reason"`
	Rank      int    `json:"rank"`
	WorldSize int    `json:"world_size"`
}

// MarshalJSON encodes r with kind "balance".
func (r Balance) MarshalJSON() ([]byte, error) {
	type plain Balance
	r.Kind = KindBalance
	return marshalFinite(plain(r))
}

// KindAsync is the kind of an [Async] record.
const KindAsync = "async"

// Async is reported by the parameter server (rank 0) of an asynchronous
// run (--sync async) every few updates: the staleness of the gradients it
// applied and the time each worker was held by the staleness bound.
type Async struct {
	Kind string `json:"kind"`
	// Version is the number of updates applied so far.
	Version uint64 `json:"version"`
	// StalenessMean and StalenessMax are over the updates since the
	// previous record: how many updates a gradient's parameters were behind
	// when it was applied.
	StalenessMean float64 `json:"staleness_mean"`
	StalenessMax  uint64  `json:"staleness_max"`
	// WaitSeconds is each worker's total time held by --max-staleness,
	// indexed by rank (0 for a rank that never waited or never joined).
	WaitSeconds []float64 `json:"wait_seconds"`
	// Workers is how many workers are connected; Lost lists the ranks that
	// left before the end, TimedOut those of them the server declared lost
	// because they held a batch for longer than --timeout without pushing
	// it (a stopped or hung rank).
	Workers   int   `json:"workers"`
	Lost      []int `json:"lost,omitempty"`
	TimedOut  []int `json:"timed_out,omitempty"`
	Rank      int   `json:"rank"`
	WorldSize int   `json:"world_size"`
}

// MarshalJSON encodes r with kind "async".
func (r Async) MarshalJSON() ([]byte, error) {
	type plain Async
	r.Kind = KindAsync
	return marshalFinite(plain(r))
}
