package checkpoint

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// bigFile is a checkpoint of about 4*n bytes whose every weight is value.
func bigFile(n int, value float32, version string) *File {
	w := make([]float32, n)
	for i := range w {
		w[i] = value
	}
	return &File{
		Tensors:  []Tensor{F32("w", []int{n}, w), I64("step", nil, []int64{int64(value)})},
		Metadata: map[string]string{"version": version},
	}
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// failingWriter passes through n bytes, then fails.
type failingWriter struct {
	w io.Writer
	n int
}

var errInjected = errors.New("injected write failure")

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) <= f.n {
		f.n -= len(p)
		return f.w.Write(p)
	}
	k, err := f.w.Write(p[:f.n])
	f.n = 0
	if err != nil {
		return k, err
	}
	return k, errInjected
}

// setHooks installs test hooks and restores them when the test ends.
func setHooks(t *testing.T, writer func(io.Writer) io.Writer, beforeRename func(string) error) {
	t.Helper()
	oldW, oldR := testHookWriter, testHookBeforeRename
	testHookWriter, testHookBeforeRename = writer, beforeRename
	t.Cleanup(func() { testHookWriter, testHookBeforeRename = oldW, oldR })
}

func TestWriteFileAtomicCreatesAndReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	for _, version := range []string{"1", "2", "3"} {
		want := bigFile(1000, 7, version)
		require.NoError(t, WriteFileAtomic(path, want))
		got, err := ReadFile(path)
		require.NoError(t, err)
		requireSameFile(t, want, got)
		require.Equal(t, []string{"model.safetensors"}, dirNames(t, dir), "no temporary file may remain")
	}
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.NotZero(t, fi.Mode().Perm()&0o044, "checkpoint should be readable by others (0666 minus umask), got %v", fi.Mode())
}

func TestWriteFileAtomicRelativePath(t *testing.T) {
	t.Chdir(t.TempDir())
	want := bigFile(10, 1, "rel")
	require.NoError(t, WriteFileAtomic("rel.safetensors", want))
	got, err := ReadFile("rel.safetensors")
	require.NoError(t, err)
	requireSameFile(t, want, got)
}

// A save that fails at any point before the rename must leave the previous
// checkpoint intact and loadable, and no temporary file behind.
func TestWriteFileAtomicFailureKeepsPreviousFile(t *testing.T) {
	const n = 600_000 // ~2.4 MB: larger than the 1 MiB write buffer
	hookFailAt := func(k int) func(io.Writer) io.Writer {
		return func(w io.Writer) io.Writer { return &failingWriter{w: w, n: k} }
	}
	size := len(encode(t, bigFile(n, 2, "new")))
	var sawTemp string
	tests := []struct {
		name         string
		file         *File
		writer       func(io.Writer) io.Writer
		beforeRename func(string) error
		wantErr      error
	}{
		{name: "fails on first byte", file: bigFile(n, 2, "new"), writer: hookFailAt(0), wantErr: errInjected},
		{name: "fails inside the header", file: bigFile(n, 2, "new"), writer: hookFailAt(20), wantErr: errInjected},
		{name: "fails after the first buffer", file: bigFile(n, 2, "new"), writer: hookFailAt(1 << 20), wantErr: errInjected},
		{name: "fails one byte before the end", file: bigFile(n, 2, "new"), writer: hookFailAt(size - 1), wantErr: errInjected},
		{
			name: "fails after fsync, before rename",
			file: bigFile(n, 2, "new"),
			beforeRename: func(tmp string) error {
				sawTemp = tmp
				return errInjected
			},
			wantErr: errInjected,
		},
		{name: "invalid file", file: &File{Tensors: []Tensor{F32("bad", []int{5}, nil)}}, wantErr: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "ckpt-0000000001.safetensors")
			old := bigFile(1000, 1, "old")
			require.NoError(t, WriteFileAtomic(path, old))

			setHooks(t, tc.writer, tc.beforeRename)
			err := WriteFileAtomic(path, tc.file)
			require.ErrorIs(t, err, tc.wantErr)

			got, rerr := ReadFile(path)
			require.NoError(t, rerr, "previous checkpoint must stay loadable")
			requireSameFile(t, old, got)
			require.Equal(t, []string{"ckpt-0000000001.safetensors"}, dirNames(t, dir), "temporary file must be removed")
		})
	}
	// The temporary file is a hidden sibling of the target ending in ".tmp".
	require.Equal(t, ".ckpt-0000000001.safetensors.", filepath.Base(sawTemp)[:len(".ckpt-0000000001.safetensors.")])
	require.True(t, strings.HasSuffix(sawTemp, ".tmp"), sawTemp)
	matched, err := filepath.Match(stalePattern, filepath.Base(sawTemp))
	require.NoError(t, err)
	require.True(t, matched, "Manager must recognise %s as a stale temp file", sawTemp)
}

func TestWriteFileAtomicErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		path    string
		wantMsg string
	}{
		{"missing directory", filepath.Join(dir, "nope", "x.safetensors"), "no such file or directory"},
		{"target is a directory", dir, "save " + dir},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteFileAtomic(tc.path, bigFile(4, 1, "x"))
			require.ErrorContains(t, err, tc.wantMsg)
			if entries, rerr := os.ReadDir(filepath.Dir(tc.path)); rerr == nil {
				for _, e := range entries {
					require.False(t, strings.HasSuffix(e.Name(), ".tmp"), "leftover %s", e.Name())
				}
			}
		})
	}
}
