package data

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ErrImage: an image folder cannot be read as one: a file that is not a
// PNG or JPEG image or is damaged, images of different sizes, a class
// folder without images, a split without classes, or splits whose classes
// differ. The error names the file or folder.
var ErrImage = errors.New("bad image folder")

// Limits of an image folder.
const (
	// MaxImageSide bounds an image's width and height.
	MaxImageSide = 1 << 14
	// MaxImageFile bounds one image file's size.
	MaxImageFile = 64 << 20
	// MaxFolderBytes bounds the decoded pixels of a split held in memory.
	MaxFolderBytes = 16 << 30
)

// FolderOptions says how to read an image folder.
type FolderOptions struct {
	// Mean and Std normalise each channel of p/255: (p/255 − Mean)/Std.
	// Both nil: the values p/255 as they are (see Folder.Standardize).
	Mean, Std []float32
	// Augment draws, per sample and epoch, a random crop of the image
	// padded by Pad zeros on every side (torchvision's RandomCrop(size,
	// padding=Pad)) and a horizontal flip with probability 1/2
	// (RandomHorizontalFlip), from (seed, epoch, index) alone.
	Augment bool
	Pad     int
	// Workers decode the files (0: one per CPU).
	Workers int
}

// Folder is an image classification split laid out as torchvision's
// ImageFolder: one directory per class, named by the class, holding PNG
// or JPEG files; classes are numbered in the sorted order of their names.
// Every image has the same size; gray images give one channel, colour
// images three (RGB). The images are decoded once, by a pool of workers,
// and held as bytes; Fill normalises (and augments) the samples of a
// batch. It is a [Source].
type Folder struct {
	Dir       string
	Classes   []string // class names, sorted; the label is the index
	Files     []string // per sample, relative to Dir
	N         int
	C, H, W   int
	Pix       []byte  // N·C·H·W, sample after sample, CHW
	Labels    []int32 // N
	Mean, Std []float32
	Augment   bool
	Pad       int
	normLUT   [][256]float32 // per channel: (p/255 − mean)/std; nil: p/255
}

// LoadImageFolder reads the image folder dir (see [Folder]).
func LoadImageFolder(dir string, o FolderOptions) (*Folder, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrImage, dir, err)
	}
	f := &Folder{Dir: dir, Augment: o.Augment, Pad: o.Pad}
	if f.Augment && f.Pad == 0 {
		f.Pad = 4
	}
	if f.Pad < 0 || f.Pad > 1024 {
		return nil, fmt.Errorf("%w: %s: padding %d must be from 0 to 1024", ErrImage, dir, f.Pad)
	}
	type item struct {
		path  string
		label int32
	}
	var items []item
	for _, e := range entries {
		if !e.IsDir() {
			continue // files beside the class folders (a README, a licence) are not samples
		}
		cls := e.Name()
		files, err := os.ReadDir(filepath.Join(dir, cls))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrImage, filepath.Join(dir, cls), err)
		}
		var names []string
		for _, fe := range files {
			if fe.Type().IsRegular() && !strings.HasPrefix(fe.Name(), ".") {
				names = append(names, fe.Name())
			}
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("%w: the class folder %s holds no image", ErrImage, filepath.Join(dir, cls))
		}
		sort.Strings(names)
		label := int32(len(f.Classes))
		f.Classes = append(f.Classes, cls)
		for _, n := range names {
			items = append(items, item{filepath.Join(cls, n), label})
		}
	}
	if len(f.Classes) == 0 {
		return nil, fmt.Errorf("%w: %s holds no class folder (want one folder of images per class)", ErrImage, dir)
	}
	f.N = len(items)
	f.Files = make([]string, f.N)
	f.Labels = make([]int32, f.N)
	for i, it := range items {
		f.Files[i], f.Labels[i] = it.path, it.label
	}
	// The first image sets the size and channels; the others must agree.
	first, err := decodeImageFile(filepath.Join(dir, f.Files[0]))
	if err != nil {
		return nil, err
	}
	b := first.Bounds()
	f.H, f.W = b.Dy(), b.Dx()
	f.C = channelsOf(first)
	per := f.C * f.H * f.W
	if float64(per)*float64(f.N) > MaxFolderBytes {
		return nil, fmt.Errorf("%w: %s: %d images of %dx%dx%d are more than %d bytes", ErrImage, dir, f.N, f.C, f.H, f.W, MaxFolderBytes)
	}
	f.Pix = make([]byte, per*f.N)
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		firstEr error
		errAt   = f.N
	)
	next := make(chan int, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				path := filepath.Join(dir, f.Files[i])
				img, err := decodeImageFile(path)
				if err == nil {
					err = f.put(i, img, path)
				}
				if err != nil {
					mu.Lock()
					if i < errAt { // the first bad file in order, whatever the scheduling
						errAt, firstEr = i, err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range f.N {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstEr != nil {
		return nil, firstEr
	}
	if o.Mean != nil || o.Std != nil {
		if err := f.SetNorm(o.Mean, o.Std); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func decodeImageFile(path string) (image.Image, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrImage, path, err)
	}
	if st.Size() > MaxImageFile {
		return nil, fmt.Errorf("%w: %s: %d bytes; an image file holds at most %d", ErrImage, path, st.Size(), MaxImageFile)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrImage, path, err)
	}
	img, err := decodeImage(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrImage, path, err)
	}
	return img, nil
}

// decodeImage decodes a PNG or JPEG image, refusing any other format and
// sizes beyond MaxImageSide before the pixels are allocated.
func decodeImage(raw []byte) (image.Image, error) {
	var cfg image.Config
	var decode func([]byte) (image.Image, error)
	var err error
	switch {
	case bytes.HasPrefix(raw, []byte("\x89PNG\r\n\x1a\n")):
		cfg, err = png.DecodeConfig(bytes.NewReader(raw))
		decode = func(b []byte) (image.Image, error) { return png.Decode(bytes.NewReader(b)) }
	case bytes.HasPrefix(raw, []byte{0xff, 0xd8}):
		cfg, err = jpeg.DecodeConfig(bytes.NewReader(raw))
		decode = func(b []byte) (image.Image, error) { return jpeg.Decode(bytes.NewReader(b)) }
	default:
		return nil, errors.New("not a PNG or JPEG image")
	}
	if err != nil {
		return nil, err
	}
	if cfg.Width < 1 || cfg.Height < 1 || cfg.Width > MaxImageSide || cfg.Height > MaxImageSide {
		return nil, fmt.Errorf("%dx%d pixels: each side must be from 1 to %d", cfg.Width, cfg.Height, MaxImageSide)
	}
	return decode(raw)
}

// channelsOf is 1 for gray images, 3 for any other.
func channelsOf(img image.Image) int {
	switch img.ColorModel() {
	case color.GrayModel, color.Gray16Model:
		return 1
	}
	return 3
}

// put stores image i's pixels, as the folder's channels.
func (f *Folder) put(i int, img image.Image, path string) error {
	b := img.Bounds()
	if b.Dy() != f.H || b.Dx() != f.W {
		return fmt.Errorf("%w: %s is %dx%d; the folder's images are %dx%d (%s): every image must have the same size", ErrImage, path, b.Dx(), b.Dy(), f.W, f.H, f.Files[0])
	}
	if c := channelsOf(img); c != f.C {
		return fmt.Errorf("%w: %s has %d channels; the folder's images have %d (%s)", ErrImage, path, c, f.C, f.Files[0])
	}
	hw := f.H * f.W
	dst := f.Pix[i*f.C*hw : (i+1)*f.C*hw]
	if g, ok := img.(*image.Gray); ok {
		for y := range f.H {
			copy(dst[y*f.W:(y+1)*f.W], g.Pix[y*g.Stride:y*g.Stride+f.W])
		}
		return nil
	}
	for y := range f.H {
		for x := range f.W {
			r, g, bl, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA()
			if f.C == 1 {
				dst[y*f.W+x] = byte(r >> 8)
				continue
			}
			dst[y*f.W+x] = byte(r >> 8)
			dst[hw+y*f.W+x] = byte(g >> 8)
			dst[2*hw+y*f.W+x] = byte(bl >> 8)
		}
	}
	return nil
}

// Standardize sets Mean and Std to each channel's mean and standard
// deviation of p/255 over the folder (a training split's; give a test
// split the same with SetNorm).
func (f *Folder) Standardize() {
	hw := f.H * f.W
	mean, std := make([]float32, f.C), make([]float32, f.C)
	for c := range f.C {
		var s, ss float64
		for i := range f.N {
			for _, p := range f.Pix[(i*f.C+c)*hw : (i*f.C+c+1)*hw] {
				v := float64(p) / 255
				s += v
				ss += v * v
			}
		}
		n := float64(f.N * hw)
		m := s / n
		sd := math.Sqrt(max(ss/n-m*m, 0))
		if sd == 0 {
			sd = 1
		}
		mean[c], std[c] = float32(m), float32(sd)
	}
	_ = f.SetNorm(mean, std)
}

// SetNorm sets the per-channel normalisation.
func (f *Folder) SetNorm(mean, std []float32) error {
	if len(mean) != f.C || len(std) != f.C {
		return fmt.Errorf("%w: %s: %d means and %d deviations for %d channels", ErrImage, f.Dir, len(mean), len(std), f.C)
	}
	lut := make([][256]float32, f.C)
	for c := range f.C {
		if !ValidNorm(mean[c], std[c]) {
			return fmt.Errorf("%w: %s: channel %d: normalisation by mean %v and deviation %v", ErrImage, f.Dir, c, mean[c], std[c])
		}
		lut[c] = *newNorm(float64(mean[c]), float64(std[c])).lut
	}
	f.Mean, f.Std, f.normLUT = mean, std, lut
	return nil
}

// Len is the number of images.
func (f *Folder) Len() int { return f.N }

// Input is the image, [C, H, W].
func (f *Folder) Input() Field {
	return Field{Name: "image", Kind: Float, Shape: []int{f.C, f.H, f.W}}
}

// Target is the class.
func (f *Folder) Target() Field {
	return Field{Name: "class", Kind: ClassIndex, Classes: len(f.Classes)}
}

// folderStream keys the augmentation streams.
const folderStream = 0x1f01de4

// Fill writes the samples idx: normalised pixels, cropped and flipped as
// (seed, epoch, index) draw when Augment is set.
func (f *Folder) Fill(x, y []float32, idx []int, seed uint64, epoch int) error {
	if err := checkFill(f.N, f.C*f.H*f.W, 1, x, y, idx); err != nil {
		return err
	}
	hw, per := f.H*f.W, f.C*f.H*f.W
	var pcg rand.PCG
	r := rand.New(&pcg)
	for k, i := range idx {
		y[k] = float32(f.Labels[i])
		src := f.Pix[i*per : (i+1)*per]
		dst := x[k*per : (k+1)*per]
		dy, dx, flip := f.Pad, f.Pad, false
		if f.Augment {
			dy, dx, flip = augDraw(r, &pcg, seed, epoch, i, f.Pad)
		}
		for c := range f.C {
			cropFlip(dst[c*hw:(c+1)*hw], src[c*hw:(c+1)*hw], f.lut(c), f.H, f.W, f.Pad, dy, dx, flip)
		}
	}
	return nil
}

// augDraw is sample i's augmentation in epoch epoch: the crop's offsets
// into the image padded by pad (0 to 2·pad each) and the flip, from the
// stream (seed, epoch, i) alone. Image folders and augmented IDX
// datasets draw the same for the same index.
func augDraw(r *rand.Rand, pcg *rand.PCG, seed uint64, epoch, i, pad int) (dy, dx int, flip bool) {
	pcg.Seed(seed^folderStream, uint64(epoch)<<40^uint64(i))
	dy, dx = r.IntN(2*pad+1), r.IntN(2*pad+1)
	return dy, dx, r.IntN(2) == 1
}

// cropFlip writes to dst the h x w plane src (bytes, normalised by lut)
// padded by pad zero pixels, cropped at (dy, dx) and flipped left to right
// when flip (torchvision's RandomCrop(padding=pad) then
// RandomHorizontalFlip); dy = dx = pad, no flip, is the plane itself.
func cropFlip(dst []float32, src []uint8, lut *[256]float32, h, w, pad, dy, dx int, flip bool) {
	zero := lut[0]
	for row := range h {
		sr := row + dy - pad
		out := dst[row*w : (row+1)*w]
		if sr < 0 || sr >= h {
			for j := range out {
				out[j] = zero
			}
			continue
		}
		in := src[sr*w : (sr+1)*w]
		for j := range out {
			col := j
			if flip {
				col = w - 1 - j
			}
			sc := col + dx - pad
			if sc < 0 || sc >= w {
				out[j] = zero
			} else {
				out[j] = lut[in[sc]]
			}
		}
	}
}

var identityLUT = func() (t [256]float32) {
	for p := range t {
		t[p] = float32(p) / 255
	}
	return
}()

func (f *Folder) lut(c int) *[256]float32 {
	if f.normLUT != nil {
		return &f.normLUT[c]
	}
	return &identityLUT
}

// Meta records the folder's identity and normalisation.
func (f *Folder) Meta() map[string]string {
	m := map[string]string{
		"data.name":        "folder:" + filepath.Base(f.Dir),
		"data.shape":       fmt.Sprintf("%dx%dx%d", f.C, f.H, f.W),
		"data.classes":     strconv.Itoa(len(f.Classes)),
		"data.class_names": strings.Join(f.Classes, ","),
	}
	if f.Mean != nil {
		m["data.mean"], m["data.std"] = floatList(f.Mean), floatList(f.Std)
	}
	return m
}

// WriteImageFolder writes the images of d as PNG files in dir, one
// folder per class (named by its number, zero-padded so that the names
// sort as the numbers), as torchvision's ImageFolder reads them: a test
// fixture made from the IDX datasets.
func WriteImageFolder(dir string, d *Dataset) error {
	width := len(strconv.Itoa(max(d.Classes-1, 0)))
	for c := range d.Classes {
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("%0*d", width, c)), 0o755); err != nil {
			return err
		}
	}
	hw := d.Rows * d.Cols
	for i := range d.N {
		img := &image.Gray{Pix: d.Pix[i*hw : (i+1)*hw], Stride: d.Cols, Rect: image.Rect(0, 0, d.Cols, d.Rows)}
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			return err
		}
		path := filepath.Join(dir, fmt.Sprintf("%0*d", width, d.Labels[i]), fmt.Sprintf("%06d.png", i))
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
