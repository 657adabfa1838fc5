package data

import (
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strconv"
)

// FieldKind says what the values of a [Field] are.
type FieldKind uint8

const (
	// Float values: features or pixels, as float32.
	Float FieldKind = iota + 1
	// ClassIndex: one class per sample, an integer in [0, Classes),
	// delivered as a float32 holding that integer.
	ClassIndex
)

func (k FieldKind) String() string {
	switch k {
	case Float:
		return "float"
	case ClassIndex:
		return "class"
	}
	return "FieldKind(" + strconv.Itoa(int(k)) + ")"
}

// Field describes one side of a sample: the model's input or its target.
type Field struct {
	Name    string
	Kind    FieldKind
	Shape   []int // per sample, e.g. [1 28 28] for an image, [20] for 20 features; empty for a scalar
	Classes int   // ClassIndex: the number of classes
}

// Size is the number of values one sample of the field holds.
func (f Field) Size() int {
	n := 1
	for _, d := range f.Shape {
		n *= d
	}
	return n
}

// ErrFill wraps the errors of Source.Fill: a batch that cannot be filled
// (buffers of the wrong size, an index out of range).
var ErrFill = errors.New("data: cannot fill the batch")

// Source is data as a training loop reads it: what a sample holds (its
// input and target fields), how many there are, and the samples of any
// list of indices, made deterministically.
//
// Fill writes the samples idx into x (len(idx)·Input().Size() values) and
// y (len(idx)·Target().Size()), as they are in the given epoch of a run
// seeded with seed. Anything random (augmentation) must be drawn from
// (seed, epoch, index) alone: the same call gives the same values, in any
// order and at any time, so that a resumed run remakes its batches bit for
// bit and batches can be filled ahead of the step by several goroutines.
// Fill must be safe for concurrent use, must not keep x or y, and returns
// an error wrapping ErrFill for bad arguments, never a panic.
//
// Meta is what a checkpoint records of the source so that evaluation can
// find and normalise the same data later (a name, normalisation
// constants); its keys are the source's own.
type Source interface {
	Len() int
	Input() Field
	Target() Field
	Fill(x, y []float32, idx []int, seed uint64, epoch int) error
	Meta() map[string]string
}

// checkFill checks Fill's arguments against a source of n samples of in
// input and out target values each. It does not allocate (Fill is on
// the training loop's path).
func checkFill(n, in, out int, x, y []float32, idx []int) error {
	if len(x) != len(idx)*in || len(y) != len(idx)*out {
		return fmt.Errorf("%w: %d samples need %d input and %d target values; got buffers of %d and %d",
			ErrFill, len(idx), len(idx)*in, len(idx)*out, len(x), len(y))
	}
	for _, k := range idx {
		if k < 0 || k >= n {
			return fmt.Errorf("%w: index %d out of range [0, %d)", ErrFill, k, n)
		}
	}
	return nil
}

// Checksummer is a Source that checksums its samples itself: CRC32C is
// the CRC-32C (Castagnoli) of what it holds, as it holds it. Sources
// without one are checksummed by their filled values (see the trainer's
// DataIdentity). The image datasets' source has one: the pixels, then the
// labels.
type Checksummer interface {
	CRC32C() uint32
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AsSource gives an image dataset the Source interface: its input is the
// image normalised as Batch does ([1, Rows, Cols]), its target the label.
// Nothing is random, so seed and epoch change nothing. The source is also
// a [Checksummer] (the pixels, then the labels) and has a Validate method
// ([Dataset.Validate]).
func (d *Dataset) AsSource() Source { return datasetSource{d} }

type datasetSource struct{ d *Dataset }

func (s datasetSource) Len() int { return s.d.N }

func (s datasetSource) Input() Field {
	return Field{Name: "image", Kind: Float, Shape: []int{1, s.d.Rows, s.d.Cols}}
}

func (s datasetSource) Target() Field {
	return Field{Name: "label", Kind: ClassIndex, Classes: s.d.Classes}
}

func (s datasetSource) Fill(x, y []float32, idx []int, _ uint64, _ int) error {
	if err := checkFill(s.d.N, s.d.Rows*s.d.Cols, 1, x, y, idx); err != nil {
		return err
	}
	s.d.Batch(idx, x, y)
	return nil
}

// Validate is the dataset's Validate.
func (s datasetSource) Validate() error { return s.d.Validate() }

// AsAugmentedSource is AsSource with the training augmentation of image
// folders (Folder.Augment): per sample and epoch a random crop of the
// image padded by pad black pixels, and a horizontal flip, drawn from
// (seed, epoch, index) as a Folder draws them, so that resuming stays bit
// for bit and an IDX dataset trains as its image folders do. pad 0 only
// flips.
func (d *Dataset) AsAugmentedSource(pad int) Source { return augmentedSource{datasetSource{d}, pad} }

type augmentedSource struct {
	datasetSource
	pad int
}

func (s augmentedSource) Fill(x, y []float32, idx []int, seed uint64, epoch int) error {
	d := s.d
	if err := checkFill(d.N, d.Rows*d.Cols, 1, x, y, idx); err != nil {
		return err
	}
	f := d.Rows * d.Cols
	lut := d.norm().lut
	var pcg rand.PCG
	r := rand.New(&pcg)
	for k, i := range idx {
		y[k] = float32(d.Labels[i])
		dy, dx, flip := augDraw(r, &pcg, seed, epoch, i, s.pad)
		cropFlip(x[k*f:(k+1)*f], d.Pix[i*f:(i+1)*f], lut, d.Rows, d.Cols, s.pad, dy, dx, flip)
	}
	return nil
}

// Meta adds the augmentation to the dataset's.
func (s augmentedSource) Meta() map[string]string {
	m := s.datasetSource.Meta()
	m["data.augment"] = "crop+flip, pad " + strconv.Itoa(s.pad)
	return m
}

// CRC32C is the CRC-32C of the pixels, then the labels.
func (s datasetSource) CRC32C() uint32 {
	return crc32.Update(crc32.Checksum(s.d.Pix, castagnoli), castagnoli, s.d.Labels)
}

func (s datasetSource) Meta() map[string]string {
	return map[string]string{
		"data.name":  s.d.Name,
		"data.shape": fmt.Sprintf("1x%dx%d", s.d.Rows, s.d.Cols),
		"data.mean":  strconv.FormatFloat(float64(s.d.Mean()), 'g', -1, 32),
		"data.std":   strconv.FormatFloat(float64(s.d.Std()), 'g', -1, 32),
	}
}
