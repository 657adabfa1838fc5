package plot

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// maxLine bounds one line of a metrics file (a train record with many GPUs
// is a few kilobytes).
const maxLine = 16 << 20

// point is one (x, y) sample of a curve.
type point struct{ x, y float64 }

// run is what the plots show, read from one metrics file.
type run struct {
	// trainLoss and throughput are indexed by step, sorted, one point
	// per step (the last record for a step wins: a resumed run appends
	// records for steps it repeats).
	trainLoss  []point
	throughput []point
	// testLoss is (step at the epoch's end, test loss); testAcc is
	// (epoch, accuracy in percent). One point per epoch, last wins.
	testLoss []point
	testAcc  []point
	// gpuUtil and gpuMem map the device index to (step, percent) and
	// (step, GiB) points.
	gpuUtil map[int][]point
	gpuMem  map[int][]point
	// shares maps the rank to (step, share) points.
	shares map[int][]point
	// trainRecords counts the train records read (with or without a
	// finite loss); finalAcc is the summary's test accuracy, if any.
	trainRecords int
	finalAcc     *float64
	// ranks are the ranks seen on train records; rank the one plotted.
	ranks []int
	rank  int
}

// record is the union of the fields of the record kinds plotted. Pointer
// fields are nil when the field is absent or null (a non-finite value).
type record struct {
	Kind          string     `json:"kind"`
	Rank          *int       `json:"rank"`
	Epoch         *float64   `json:"epoch"`
	Step          *float64   `json:"step"`
	Loss          *float64   `json:"loss"`
	SamplesPerSec *float64   `json:"samples_per_sec"`
	TestLoss      *float64   `json:"test_loss"`
	TestAccuracy  *float64   `json:"test_accuracy"`
	GPU           []gpuStat  `json:"gpu"`
	Shares        []*float64 `json:"shares"`
}

type gpuStat struct {
	Index          *int     `json:"index"`
	UtilGPUPercent *float64 `json:"util_gpu_percent"`
	MemUsedBytes   *float64 `json:"mem_used_bytes"`
}

// readRun reads the metrics file at path. wantRank < 0 plots the lowest
// rank found on train records. Errors name the file (and the line).
func readRun(path string, wantRank int) (*run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseRun(f, path, wantRank)
}

func parseRun(r io.Reader, name string, wantRank int) (*run, error) {
	var recs []record
	var lines []int
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		if b[0] != '{' {
			return nil, fmt.Errorf("%s:%d: not a JSON object: %.40q", name, n, b)
		}
		var rec record
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, fmt.Errorf("%s:%d: malformed record: %w", name, n, err)
		}
		recs = append(recs, rec)
		lines = append(lines, n)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s:%d: line longer than %d bytes", name, n+1, maxLine)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%s: no records: the file is empty (was the run started with --metrics-file, and has it logged anything yet?)", name)
	}

	// The ranks that wrote train records; keep one.
	rankSet := map[int]bool{}
	for _, rec := range recs {
		if rec.Kind == "train" {
			rankSet[rankOf(rec)] = true
		}
	}
	out := &run{
		gpuUtil: map[int][]point{},
		gpuMem:  map[int][]point{},
		shares:  map[int][]point{},
		rank:    wantRank,
	}
	for k := range rankSet {
		out.ranks = append(out.ranks, k)
	}
	sort.Ints(out.ranks)
	if wantRank < 0 && len(out.ranks) > 0 {
		out.rank = out.ranks[0]
	}

	loss := map[float64]float64{}
	thr := map[float64]float64{}
	epochEnd := map[float64]float64{} // epoch -> largest step seen in it
	testLoss := map[float64]float64{} // epoch -> test loss
	testAcc := map[float64]float64{}  // epoch -> accuracy (percent)
	gpuUtil := map[int]map[float64]float64{}
	gpuMem := map[int]map[float64]float64{}
	shares := map[int]map[float64]float64{}
	set := func(m map[int]map[float64]float64, k int, x, y float64) {
		if m[k] == nil {
			m[k] = map[float64]float64{}
		}
		m[k][x] = y
	}
	for _, rec := range recs {
		if (rec.Kind == "train" || rec.Kind == "eval") && rankOf(rec) != out.rank {
			continue
		}
		switch rec.Kind {
		case "train":
			out.trainRecords++
			if rec.Step == nil {
				continue
			}
			step := *rec.Step
			if rec.Epoch != nil && step > epochEnd[*rec.Epoch] {
				epochEnd[*rec.Epoch] = step
			}
			if rec.Loss != nil {
				loss[step] = *rec.Loss
			}
			if rec.SamplesPerSec != nil {
				thr[step] = *rec.SamplesPerSec
			}
			for _, g := range rec.GPU {
				if g.Index == nil {
					continue
				}
				if g.UtilGPUPercent != nil {
					set(gpuUtil, *g.Index, step, *g.UtilGPUPercent)
				}
				if g.MemUsedBytes != nil {
					set(gpuMem, *g.Index, step, *g.MemUsedBytes/(1<<30))
				}
			}
		case "eval":
			if rec.Epoch == nil {
				continue
			}
			if rec.TestLoss != nil {
				testLoss[*rec.Epoch] = *rec.TestLoss
			}
			if rec.TestAccuracy != nil {
				testAcc[*rec.Epoch] = 100 * *rec.TestAccuracy
			}
		case "balance":
			if rec.Step == nil {
				continue
			}
			for i, s := range rec.Shares {
				if s != nil {
					set(shares, i, *rec.Step, *s)
				}
			}
		case "summary":
			if rec.TestAccuracy != nil {
				a := *rec.TestAccuracy
				out.finalAcc = &a
			}
		}
	}
	if out.trainRecords == 0 {
		if len(out.ranks) > 0 {
			return nil, fmt.Errorf("%s: no train records of rank %d (the file has ranks %v)", name, out.rank, out.ranks)
		}
		return nil, fmt.Errorf("%s: no train records among its %d records (lines %d to %d): nothing to plot", name, len(recs), lines[0], lines[len(lines)-1])
	}
	out.trainLoss = sorted(loss)
	out.throughput = sorted(thr)
	out.testAcc = sorted(testAcc)
	// Test loss at the step that ended its epoch: the last step logged
	// in that epoch, or failing that in the latest earlier epoch.
	ends := sorted(epochEnd)
	for _, p := range sorted(testLoss) {
		step, ok := 0.0, false
		for _, e := range ends {
			if e.x <= p.x {
				step, ok = e.y, true
			}
		}
		if ok {
			out.testLoss = append(out.testLoss, point{step, p.y})
		}
	}
	for k, m := range gpuUtil {
		out.gpuUtil[k] = sorted(m)
	}
	for k, m := range gpuMem {
		out.gpuMem[k] = sorted(m)
	}
	for k, m := range shares {
		out.shares[k] = sorted(m)
	}
	return out, nil
}

func rankOf(rec record) int {
	if rec.Rank == nil {
		return 0
	}
	return *rec.Rank
}

func sorted(m map[float64]float64) []point {
	ps := make([]point, 0, len(m))
	for x, y := range m {
		ps = append(ps, point{x, y})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].x < ps[j].x })
	return ps
}
