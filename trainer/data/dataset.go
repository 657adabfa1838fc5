package data

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// Dataset is an in-memory image classification dataset. Pixels stay bytes
// until Batch converts the samples of one mini-batch to float32.
type Dataset struct {
	Name    string // "mnist", "fashion-mnist", "synthetic" (selects Mean and Std)
	Split   string // "train" or "test"
	N       int    // number of samples
	Rows    int    // image height
	Cols    int    // image width
	Classes int    // labels are 0..Classes-1
	Pix     []byte // N*Rows*Cols, sample after sample, row-major
	Labels  []byte // N

	custom *norm // SetNorm's constants, replacing Name's
}

// Normalisation constants: the mean and standard deviation of p/255 over
// the training split.
//
//	mnist          0.1307 0.3081  (the usual published values; the test
//	fashion-mnist  0.2860 0.3530   TestLoadReal recomputes them)
//	synthetic      0.5    0.2898  (discrete uniform bytes: sqrt((256²-1)/12)/255)
//	anything else  0      1       (x = p/255)
type norm struct {
	mean, std float32
	lut       *[256]float32 // lut[p] = (p/255 - mean)/std
}

var (
	normMNIST     = newNorm(0.1307, 0.3081)
	normFashion   = newNorm(0.2860, 0.3530)
	normSynthetic = newNorm(0.5, 0.2898)
	normIdentity  = newNorm(0, 1)
)

func newNorm(mean, std float64) norm {
	var t [256]float32
	for p := range t {
		t[p] = float32((float64(p)/255 - mean) / std)
	}
	return norm{mean: float32(mean), std: float32(std), lut: &t}
}

func (d *Dataset) norm() *norm {
	if d.custom != nil {
		return d.custom
	}
	switch d.Name {
	case "mnist":
		return &normMNIST
	case "fashion-mnist":
		return &normFashion
	case "synthetic":
		return &normSynthetic
	}
	return &normIdentity
}

// SetNorm replaces the constants Name selects by mean and std, as
// torchvision's Normalize((mean,), (std,)) does: Batch then gives
// (p/255 - mean)/std, computed in float64 from the float32 constants and
// rounded to float32 (as [Folder.SetNorm], through the same table, so
// that a dataset and the image folder written from it normalise bit for
// bit alike). std must be positive and both finite ([ValidNorm]). Slices
// made afterwards share the constants.
func (d *Dataset) SetNorm(mean, std float32) error {
	if !ValidNorm(mean, std) {
		return fmt.Errorf("data: %s/%s: normalisation by mean %v and deviation %v: the deviation must be positive and both finite", d.Name, d.Split, mean, std)
	}
	n := newNorm(float64(mean), float64(std))
	d.custom = &n
	return nil
}

// ValidNorm reports whether mean and std can normalise, as SetNorm and
// Folder.SetNorm take them: std positive, both finite.
func ValidNorm(mean, std float32) bool {
	m, s := float64(mean), float64(std)
	return s > 0 && !math.IsInf(s, 0) && !math.IsNaN(m) && !math.IsInf(m, 0)
}

// Mean is the mean of p/255 used by Batch: that of SetNorm if it was
// called, else 0.1307 for "mnist", 0.2860 for "fashion-mnist", 0.5 for
// "synthetic", 0 for any other Name.
func (d *Dataset) Mean() float32 { return d.norm().mean }

// Std is the standard deviation of p/255 used by Batch: that of SetNorm
// if it was called, else 0.3081 for
// "mnist", 0.3530 for "fashion-mnist", 0.2898 for "synthetic" (uniform
// random bytes), 1 for any other Name.
func (d *Dataset) Std() float32 { return d.norm().std }

// Features is the number of pixels per sample, Rows*Cols.
func (d *Dataset) Features() int { return d.Rows * d.Cols }

// Batch fills x with the normalised pixels of samples idx, (p/255 -
// Mean)/Std computed in float64 and rounded to float32, sample after
// sample, row-major within a sample; and y with the labels as float32
// class indices. It does not allocate; x must have length
// len(idx)*Rows*Cols and y length len(idx), or be nil to fill only the
// other (a pipeline's last stage needs only labels, its first only
// pixels). Wrong lengths or an index outside [0, N) are programming errors
// and panic.
func (d *Dataset) Batch(idx []int, x, y []float32) {
	f := d.Rows * d.Cols
	if (x != nil && len(x) != len(idx)*f) || (y != nil && len(y) != len(idx)) {
		panic(fmt.Sprintf("data: Batch: %d samples of %d pixels need len(x)=%d, len(y)=%d; got %d, %d",
			len(idx), f, len(idx)*f, len(idx), len(x), len(y)))
	}
	lut := d.norm().lut
	for i, k := range idx {
		if k < 0 || k >= d.N {
			panic(fmt.Sprintf("data: Batch: index %d out of range [0, %d)", k, d.N))
		}
		if x != nil {
			src := d.Pix[k*f : (k+1)*f]
			dst := x[i*f : (i+1)*f]
			dst = dst[:len(src)]
			for j, p := range src {
				dst[j] = lut[p]
			}
		}
		if y != nil {
			y[i] = float32(d.Labels[k])
		}
	}
}

// Validate checks that the fields are consistent: positive sizes, Pix and
// Labels of the right lengths, labels below Classes. Load and Synthetic
// return valid datasets; call it on one you built yourself.
func (d *Dataset) Validate() error {
	name := d.Name + "/" + d.Split
	bad := func(format string, args ...any) error {
		return &FileError{Path: name, Err: ErrMismatch, Detail: fmt.Sprintf(format, args...)}
	}
	switch {
	case d.N < 0 || d.Rows <= 0 || d.Cols <= 0:
		return bad("N=%d Rows=%d Cols=%d: need N >= 0 and positive Rows and Cols", d.N, d.Rows, d.Cols)
	case d.Classes <= 0 || d.Classes > 256:
		return bad("Classes=%d: need 1..256 (labels are bytes)", d.Classes)
	case len(d.Pix) != d.N*d.Rows*d.Cols:
		return bad("len(Pix)=%d, want N*Rows*Cols=%d", len(d.Pix), d.N*d.Rows*d.Cols)
	case len(d.Labels) != d.N:
		return bad("len(Labels)=%d, want N=%d", len(d.Labels), d.N)
	}
	if err := CheckLabels(d.Labels, d.Classes, name); err != nil {
		var fe *FileError
		if errors.As(err, &fe) {
			fe.Hint = "every label must be below Classes" // not a file to download again
		}
		return err
	}
	return nil
}

// Synthetic returns a dataset of n random rows×cols images with random
// labels in [0, classes): pixels are uniform bytes and labels are
// independent of them, so it is good for benchmarks and plumbing tests, not
// for checking that a model learns. The content depends only on the
// arguments (PCG seeded from seed), never on the Go version or platform.
// Name is "synthetic", Split "train". It panics on n < 0, rows or cols < 1,
// or classes outside 1..256.
func Synthetic(n, rows, cols, classes int, seed uint64) *Dataset {
	if n < 0 || rows < 1 || cols < 1 || classes < 1 || classes > 256 {
		panic(fmt.Sprintf("data: Synthetic(n=%d, rows=%d, cols=%d, classes=%d): need n >= 0, rows, cols >= 1, classes in 1..256",
			n, rows, cols, classes))
	}
	var src rand.PCG
	src.Seed(splitmix64(seed), splitmix64(domainSynthetic))
	pix := make([]byte, n*rows*cols)
	for i := 0; i < len(pix); i += 8 {
		v := src.Uint64()
		for j := i; j < i+8 && j < len(pix); j++ {
			pix[j] = byte(v)
			v >>= 8
		}
	}
	labels := make([]byte, n)
	for i := range labels {
		labels[i] = byte(uint64n(&src, uint64(classes)))
	}
	return &Dataset{Name: "synthetic", Split: "train", N: n, Rows: rows, Cols: cols, Classes: classes, Pix: pix, Labels: labels}
}

// Slice returns samples [lo,hi) of d as a dataset sharing d's memory
// (for sharding evaluation across ranks).
func (d *Dataset) Slice(lo, hi int) *Dataset {
	if lo < 0 || hi > d.N || lo > hi {
		panic(fmt.Sprintf("data: Slice(%d, %d) of %d samples", lo, hi, d.N))
	}
	f := d.Rows * d.Cols
	s := *d
	s.N = hi - lo
	s.Pix = d.Pix[lo*f : hi*f]
	s.Labels = d.Labels[lo:hi]
	return &s
}
