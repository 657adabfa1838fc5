package trainer

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // image.DecodeConfig of a folder's JPEG files
	_ "image/png"  // and of its PNG files
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gotrain/gotrain/gpu"
	"github.com/gotrain/gotrain/graph"
)

// PreflightEnv is what Preflight knows of the process it checks.
type PreflightEnv struct {
	// Rank is this process's rank: only rank 0 writes the outputs, so
	// only rank 0 checks them.
	Rank int
	// LocalRanks is the number of ranks that share this machine's memory
	// (LOCAL_WORLD_SIZE); 0 counts as 1.
	LocalRanks int
	// DataLoaded says the datasets are already in memory (the caller
	// supplied them), so they are not counted again.
	DataLoaded bool
	// FreeMemory returns the memory the run may use (nil:
	// gpu.CPUHeadroom, the machine's available memory lowered to the
	// cgroup's limit). 0 means unknown, and skips the memory check.
	FreeMemory func() (uint64, error)
}

// ErrPreflight wraps every refusal of Preflight: the run would fail later
// (an output it cannot write, more memory than the machine has), so it is
// stopped before it loads its data or takes a step.
var ErrPreflight = errors.New("preflight")

// Preflight checks, before a run loads its data or takes its first step,
// what would otherwise fail after the work:
//
//   - every output the run writes (--out, --checkpoint-dir,
//     --metrics-file): their directories are created, and each is proved
//     writable by writing a small temporary file in it and removing it;
//     where the file system says how much room it has, a checkpoint and
//     the final weights must fit;
//   - the memory the run needs (parameters, gradients, optimiser state,
//     the activations of a training and an evaluation batch, the data),
//     estimated from the shapes (graph.Spec.Estimate) against the free
//     memory of the machine or its cgroup, times the ranks that share it.
//
// A refusal wraps ErrPreflight and says what to change. New runs it too;
// the command line runs it first of all, so that a bad --out is refused
// within a second rather than after the data is loaded and the job joined.
func Preflight(cfg Config, env PreflightEnv) error {
	fp, err := cfg.ModelSpec().Estimate()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	est := estimateMemory(cfg, fp, env.DataLoaded)
	if env.Rank == 0 {
		if err := checkOutputs(cfg, est); err != nil {
			return err
		}
	}
	free := env.FreeMemory
	if free == nil {
		free = func() (uint64, error) { h, err := gpu.CPUHeadroom(); return h.FreeBytes, err }
	}
	avail, err := free()
	if err != nil || avail == 0 {
		return nil // unknown: nothing to check against
	}
	ranks := max(env.LocalRanks, 1)
	if need := est.total() * float64(ranks); need > float64(avail) {
		per := ""
		if ranks > 1 {
			per = fmt.Sprintf(" per rank, %s for the %d ranks on this machine,", bytesText(need), ranks)
		}
		return fmt.Errorf("%w: this run needs about %s%s and this machine has %s free: %s; %s",
			ErrPreflight, bytesText(est.total()), per, bytesText(float64(avail)), est, est.advice(cfg))
	}
	return nil
}

// memEstimate is the memory a run needs, in bytes, by part.
type memEstimate struct {
	params, grads, optState, train, eval, data float64
	checkpoint                                 float64 // one checkpoint file (weights and optimiser state)
}

func (e memEstimate) total() float64 {
	return e.params + e.grads + e.optState + e.train + e.eval + e.data
}

func (e memEstimate) String() string {
	return fmt.Sprintf("parameters %s, gradients %s, optimiser state %s, training batch %s, evaluation batch %s, data %s",
		bytesText(e.params), bytesText(e.grads), bytesText(e.optState), bytesText(e.train), bytesText(e.eval), bytesText(e.data))
}

// advice names the flags that shrink the largest part.
func (e memEstimate) advice(cfg Config) string {
	parts := []struct {
		v    float64
		what string
	}{
		{e.params + e.grads + e.optState, "use smaller --hidden widths"},
		{e.train, fmt.Sprintf("use a smaller --batch-size than %d", cfg.BatchSize)},
		{e.eval, fmt.Sprintf("use a smaller --eval-batch-size than %d", cfg.EvalBatchSize)},
		{e.data, "use a smaller --synthetic-size or dataset"},
	}
	best := parts[0]
	for _, p := range parts[1:] {
		if p.v > best.v {
			best = p
		}
	}
	return best.what
}

func estimateMemory(cfg Config, fp graph.Footprint, dataLoaded bool) memEstimate {
	const f32 = 4
	e := memEstimate{params: fp.Params * f32, grads: fp.Params * f32}
	states := 0.0 // optimiser state, per parameter element
	switch cfg.Optimizer {
	case "adam", "adamw":
		states = 2
	case "sgd":
		if cfg.Momentum > 0 {
			states = 1
		}
	}
	e.optState = states * fp.Params * f32
	e.checkpoint = (1 + states) * fp.Params * f32
	e.train = fp.TrainFloatsPerSample * f32 * float64(cfg.BatchSize)
	e.eval = fp.EvalFloatsPerSample * f32 * float64(cfg.EvalBatchSize)
	if !dataLoaded {
		spec := cfg.ModelSpec()
		perSample := float64(max(spec.InC, 1)*max(spec.InH, 28)*max(spec.InW, 28)) + 1 // pixels and label, one byte each
		switch cfg.Dataset {
		case "synthetic":
			n := float64(cfg.SyntheticSize)
			e.data = (n + math.Max(math.Floor(n/6), 1)) * perSample
		case "csv": // float32s of values written in at least two bytes each ("1,")
			for _, name := range []string{csvTrainFile, csvTestFile} {
				if fi, err := os.Stat(filepath.Join(cfg.DataDir, name)); err == nil {
					e.data += 2 * float64(fi.Size())
				}
			}
		case "folder":
			for _, split := range []string{folderTrain, folderTest} {
				e.data += folderBytes(filepath.Join(cfg.DataDir, split))
			}
		default: // the IDX datasets: 60,000 + 10,000 samples
			e.data = 70000 * perSample
		}
	}
	return e
}

// folderBytes estimates the memory an image folder takes once decoded
// (data.Folder: the pixels, a label and a file name per image) from the
// number of its files and the size and colour of the first: one
// directory listing per class and one image header. A folder that cannot
// be read counts 0; loading it says why.
func folderBytes(dir string) float64 {
	classes, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n, first := 0, ""
	for _, c := range classes {
		if !c.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, c.Name()))
		if err != nil {
			return 0
		}
		for _, f := range files {
			if f.Type().IsRegular() && !strings.HasPrefix(f.Name(), ".") {
				n++
				if first == "" {
					first = filepath.Join(dir, c.Name(), f.Name())
				}
			}
		}
	}
	if first == "" {
		return 0
	}
	fh, err := os.Open(first)
	if err != nil {
		return 0
	}
	defer fh.Close()
	ic, _, err := image.DecodeConfig(fh)
	if err != nil {
		return 0
	}
	channels := 3
	if ic.ColorModel == color.GrayModel || ic.ColorModel == color.Gray16Model {
		channels = 1
	}
	const perFile = 4 + 16 + 32 // the label, a string header and a short name
	return float64(n) * (float64(channels*ic.Width*ic.Height) + perFile)
}

// checkOutputs makes the directories of the run's outputs and proves each
// writable, with room for what goes there when the file system says.
func checkOutputs(cfg Config, est memEstimate) error {
	type output struct {
		flag, dir string
		need      float64 // bytes the directory must have room for
	}
	var outs []output
	if cfg.Out != "" {
		if fi, err := os.Stat(cfg.Out); err == nil && fi.IsDir() {
			return fmt.Errorf("%w: --out %s is a directory; name the weights file to write (e.g. %s)", ErrPreflight, strconv.Quote(cfg.Out), filepath.Join(cfg.Out, "model.safetensors"))
		}
		// The weights, written beside the old file before the rename.
		outs = append(outs, output{"--out", filepath.Dir(cfg.Out), est.params})
	}
	if cfg.CheckpointDir != "" {
		// A new checkpoint is written beside the newest before the oldest goes.
		outs = append(outs, output{"--checkpoint-dir", cfg.CheckpointDir, 2 * est.checkpoint})
	}
	if cfg.MetricsFile != "" {
		if fi, err := os.Stat(cfg.MetricsFile); err == nil && fi.IsDir() {
			return fmt.Errorf("%w: --metrics-file %s is a directory; name the file to write", ErrPreflight, strconv.Quote(cfg.MetricsFile))
		}
		outs = append(outs, output{"--metrics-file", filepath.Dir(cfg.MetricsFile), 0})
	}
	for _, o := range outs {
		if err := os.MkdirAll(o.dir, 0o755); err != nil {
			return fmt.Errorf("%w: %s: cannot create its directory: %v", ErrPreflight, o.flag, err)
		}
		if err := probeWrite(o.dir); err != nil {
			return fmt.Errorf("%w: %s: cannot write in %s: %v; choose a writable place before training, so that the run's work is not lost at its end", ErrPreflight, o.flag, strconv.Quote(o.dir), err)
		}
		if room, ok := diskFree(o.dir); ok && o.need > float64(room) {
			return fmt.Errorf("%w: %s: %s has %s free and this run writes about %s there; free some room or choose another place", ErrPreflight, o.flag, strconv.Quote(o.dir), bytesText(float64(room)), bytesText(o.need))
		}
	}
	return nil
}

// probeWrite writes, syncs and removes a small file in dir.
func probeWrite(dir string) error {
	f, err := os.CreateTemp(dir, ".gotrain-preflight-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.Write([]byte(strings.Repeat("gotrain preflight\n", 32)))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil && rerr != nil {
		err = rerr
	}
	return err
}

// bytesText writes a byte count for people: 1.5 GiB.
func bytesText(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", b)
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
