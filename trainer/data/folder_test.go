package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// synthFolder writes a synthetic dataset as an image folder.
func synthFolder(t *testing.T, n int) (string, *Dataset) {
	t.Helper()
	d := Synthetic(n, 12, 10, 4, 3)
	dir := t.TempDir()
	require.NoError(t, WriteImageFolder(dir, d))
	return dir, d
}

func TestImageFolderReadsWhatWasWritten(t *testing.T) {
	dir, d := synthFolder(t, 60)
	f, err := LoadImageFolder(dir, FolderOptions{Workers: 3})
	require.NoError(t, err)
	require.Equal(t, []string{"0", "1", "2", "3"}, f.Classes)
	require.Equal(t, 60, f.Len())
	require.Equal(t, []int{1, 12, 10}, f.Input().Shape)
	require.Equal(t, 4, f.Target().Classes)
	// Sample by sample: the same pixels and label as the dataset (files
	// are ordered by class, then name, as torchvision's ImageFolder).
	seen := 0
	for i, file := range f.Files {
		var k int
		_, err := fmtSscanf(filepath.Base(file), &k)
		require.NoError(t, err)
		require.Equal(t, int32(d.Labels[k]), f.Labels[i])
		require.Equal(t, d.Pix[k*120:(k+1)*120], f.Pix[i*120:(i+1)*120])
		seen++
	}
	require.Equal(t, 60, seen)
	// Normalised as the IDX dataset is, given its constants.
	require.NoError(t, f.SetNorm([]float32{d.Mean()}, []float32{d.Std()}))
	k := 0
	_, err = fmtSscanf(filepath.Base(f.Files[0]), &k)
	require.NoError(t, err)
	x, y := make([]float32, 120), make([]float32, 1)
	require.NoError(t, f.Fill(x, y, []int{0}, 1, 0))
	wx, wy := make([]float32, 120), make([]float32, 1)
	d.Batch([]int{k}, wx, wy)
	require.InDeltaSlice(t, wx, x, 1e-6)
	require.Equal(t, wy, y)
	sourceConformance(t, f)
	f.Augment, f.Pad = true, 2
	sourceConformance(t, f)
}

// The crop and flip are torchvision's RandomCrop(padding) then
// RandomHorizontalFlip, drawn from (seed, epoch, index): a shifted,
// possibly mirrored copy of the image with zeros (normalised) around it.
func TestImageFolderAugmentation(t *testing.T) {
	dir, _ := synthFolder(t, 20)
	f, err := LoadImageFolder(dir, FolderOptions{Augment: true, Pad: 3})
	require.NoError(t, err)
	f.Standardize()
	plain := *f
	plain.Augment = false
	per := 120
	x, y := make([]float32, per), make([]float32, 1)
	p, py := make([]float32, per), make([]float32, 1)
	require.NoError(t, plain.Fill(p, py, []int{5}, 0, 0))
	zero := f.normLUT[0][0]
	flips, shifts := 0, 0
	for epoch := range 40 {
		require.NoError(t, f.Fill(x, y, []int{5}, 9, epoch))
		// Find the shift and flip that explain x.
		found := false
		for _, flip := range []bool{false, true} {
			for dy := -3; dy <= 3 && !found; dy++ {
				for dx := -3; dx <= 3 && !found; dx++ {
					ok := true
					for r := 0; r < 12 && ok; r++ {
						for j := 0; j < 10 && ok; j++ {
							col := j
							if flip {
								col = 9 - j
							}
							sr, sc := r+dy, col+dx
							want := zero
							if sr >= 0 && sr < 12 && sc >= 0 && sc < 10 {
								want = p[sr*10+sc]
							}
							ok = x[r*10+j] == want
						}
					}
					if ok {
						found = true
						if flip {
							flips++
						}
						if dx != 0 || dy != 0 {
							shifts++
						}
					}
				}
			}
		}
		require.True(t, found, "epoch %d: not a crop of the padded image, flipped or not", epoch)
	}
	require.Greater(t, flips, 5)
	require.Greater(t, shifts, 20)
	// The same draw for the same (seed, epoch, index); another seed, another.
	a, b := make([]float32, per), make([]float32, per)
	require.NoError(t, f.Fill(a, y, []int{5}, 9, 7))
	require.NoError(t, f.Fill(b, y, []int{5}, 9, 7))
	require.Equal(t, a, b)
}

func putFile(t *testing.T, path string, b []byte) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, b, 0o644))
}

func pngOf(t *testing.T, img image.Image) []byte {
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return buf.Bytes()
}

func TestImageFolderRGBAndJPEG(t *testing.T) {
	dir := t.TempDir()
	img := image.NewRGBA(image.Rect(0, 0, 4, 3))
	img.Set(1, 2, color.RGBA{R: 255, G: 128, B: 0, A: 255})
	putFile(t, filepath.Join(dir, "a", "x.png"), pngOf(t, img))
	var buf bytes.Buffer
	require.NoError(t, jpeg.Encode(&buf, img, &jpeg.Options{Quality: 100}))
	putFile(t, filepath.Join(dir, "b", "y.jpg"), buf.Bytes())
	f, err := LoadImageFolder(dir, FolderOptions{})
	require.NoError(t, err)
	require.Equal(t, []int{3, 3, 4}, f.Input().Shape)
	require.Equal(t, byte(255), f.Pix[0*12+2*4+1])
	require.Equal(t, byte(128), f.Pix[1*12+2*4+1])
	require.Equal(t, byte(0), f.Pix[2*12+2*4+1])
	f.Standardize()
	require.Len(t, f.Mean, 3)
	require.Contains(t, f.Meta()["data.mean"], ",")
}

func TestImageFolderRefusesBadFolders(t *testing.T) {
	good := pngOf(t, image.NewGray(image.Rect(0, 0, 5, 5)))
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		dirs  []string
		want  string
	}{
		{"corrupt", map[string][]byte{"a/1.png": good, "a/2.png": append([]byte("\x89PNG\r\n\x1a\n"), "garbage"...)}, nil, "a/2.png"},
		{"truncated", map[string][]byte{"a/1.png": good, "a/2.png": good[:len(good)-10]}, nil, "a/2.png"},
		{"mixed sizes", map[string][]byte{"a/1.png": good, "b/2.png": pngOf(t, image.NewGray(image.Rect(0, 0, 6, 5)))}, nil, "b/2.png is 6x5; the folder's images are 5x5"},
		{"mixed channels", map[string][]byte{"a/1.png": good, "b/2.png": pngOf(t, image.NewRGBA(image.Rect(0, 0, 5, 5)))}, nil, "b/2.png has 3 channels"},
		{"not an image", map[string][]byte{"a/1.png": good, "a/notes.txt": []byte("hello")}, nil, "a/notes.txt: not a PNG or JPEG image"},
		{"empty class", map[string][]byte{"a/1.png": good}, []string{"b"}, "the class folder"},
		{"no classes", map[string][]byte{"README": []byte("x")}, nil, "holds no class folder"},
		{"huge header", map[string][]byte{"a/1.png": hugePNG(t)}, nil, "each side must be from 1 to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for p, b := range tc.files {
				putFile(t, filepath.Join(dir, p), b)
			}
			for _, d := range tc.dirs {
				require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
			}
			_, err := LoadImageFolder(dir, FolderOptions{})
			require.ErrorIs(t, err, ErrImage)
			require.ErrorContains(t, err, tc.want)
		})
	}
	_, err := LoadImageFolder(filepath.Join(t.TempDir(), "missing"), FolderOptions{})
	require.ErrorIs(t, err, ErrImage)
}

// hugePNG is a PNG whose header claims 100000x1 pixels.
func hugePNG(t *testing.T) []byte {
	b := pngOf(t, image.NewGray(image.Rect(0, 0, 1, 1)))
	// IHDR: its type at bytes 12..15, the width at 16..19, the chunk's
	// CRC (of type and data) at 29..32.
	b[16], b[17], b[18], b[19] = 0, 1, 0x86, 0xa0
	binary.BigEndian.PutUint32(b[29:33], crc32.ChecksumIEEE(b[12:29]))
	return b
}

func FuzzDecodeImageFile(f *testing.F) {
	f.Add(pngOfF(image.NewGray(image.Rect(0, 0, 3, 2))))
	f.Add([]byte{0xff, 0xd8, 0xff})
	f.Add([]byte("\x89PNG\r\n\x1a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := decodeImage(b)
		if err == nil {
			r := img.Bounds()
			if r.Dx() < 1 || r.Dy() < 1 || r.Dx() > MaxImageSide || r.Dy() > MaxImageSide {
				t.Fatalf("decoded %v", r)
			}
		}
	})
}

func pngOfF(img image.Image) []byte {
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}

// fmtSscanf reads the sample number of a file name "NNNNNN.png".
func fmtSscanf(name string, k *int) (int, error) { return fmt.Sscanf(name, "%06d.png", k) }
