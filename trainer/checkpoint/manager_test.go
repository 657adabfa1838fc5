package checkpoint

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFileNameAndParseStep(t *testing.T) {
	require.Equal(t, "ckpt-0000000042.safetensors", FileName(42))
	require.Equal(t, "ckpt-12345678901.safetensors", FileName(12345678901))
	tests := []struct {
		path   string
		want   int64
		wantOK bool
	}{
		{"ckpt-0000000000.safetensors", 0, true},
		{"/runs/a/ckpt-0000000042.safetensors", 42, true},
		{"ckpt-12345678901.safetensors", 12345678901, true},
		{"ckpt-42.safetensors", 0, false},                   // not zero-padded: not ours
		{"ckpt-00000000042.safetensors", 0, false},          // over-padded
		{"ckpt--000000042.safetensors", 0, false},           // negative
		{"ckpt-+000000042.safetensors", 0, false},           // sign
		{"ckpt-0000000042.safetensors.tmp", 0, false},       // temp file
		{".ckpt-0000000042.safetensors.abc.tmp", 0, false},  // temp file
		{"ckpt-0000000042.pt", 0, false},                    // other format
		{"model.safetensors", 0, false},                     // unrelated
		{"ckpt-.safetensors", 0, false},                     // no digits
		{"ckpt-99999999999999999999.safetensors", 0, false}, // overflows int64
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got, ok := ParseStep(tc.path)
			require.Equal(t, tc.wantOK, ok)
			require.Equal(t, tc.want, got)
		})
	}
}

func saveSteps(t *testing.T, m *Manager, steps ...int64) {
	t.Helper()
	for _, s := range steps {
		path, err := m.Save(s, bigFile(8, float32(s), "v"))
		require.NoError(t, err)
		require.Equal(t, filepath.Join(m.Dir, FileName(s)), path)
		got, err := ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, "v", got.Metadata["version"])
	}
}

func TestManagerSaveKeepsNewest(t *testing.T) {
	tests := []struct {
		name      string
		keep      int
		steps     []int64
		wantSteps []int64
	}{
		{"keep all (0)", 0, []int64{1, 2, 3, 4}, []int64{1, 2, 3, 4}},
		{"keep all (negative)", -1, []int64{5, 6}, []int64{5, 6}},
		{"keep 2", 2, []int64{10, 20, 30, 40}, []int64{30, 40}},
		{"keep 1", 1, []int64{1, 2, 3}, []int64{3}},
		{"keep more than saved", 5, []int64{1, 2}, []int64{1, 2}},
		{"numeric, not lexical, order", 2, []int64{9, 10, 99, 100, 12345678901}, []int64{100, 12345678901}},
		{"resave same step", 2, []int64{1, 2, 2}, []int64{1, 2}},
		{"older step saved last survives", 1, []int64{10, 5}, []int64{5}},
		{"older step saved last, keep 2", 2, []int64{10, 20, 5}, []int64{5, 20}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manager{Dir: filepath.Join(t.TempDir(), "run", "ckpts"), Keep: tc.keep} // Save creates it
			saveSteps(t, m, tc.steps...)
			var want []string
			for _, s := range tc.wantSteps {
				want = append(want, filepath.Join(m.Dir, FileName(s)))
			}
			got, err := m.List()
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
}

func TestManagerListIgnoresOtherFiles(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{Dir: dir}
	saveSteps(t, m, 3, 1, 2)
	for _, name := range []string{"ckpt-7.safetensors", "notes.txt", "model.safetensors", "ckpt-0000000009.safetensors.bak"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, FileName(99)), 0o755)) // a directory is not a checkpoint
	got, err := m.List()
	require.NoError(t, err)
	require.Equal(t, []string{
		filepath.Join(dir, FileName(1)), filepath.Join(dir, FileName(2)), filepath.Join(dir, FileName(3)),
	}, got)

	latest, err := Latest(dir)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, FileName(3)), latest)

	// Pruning never touches foreign files.
	m.Keep = 1
	saveSteps(t, m, 4)
	for _, name := range []string{"ckpt-7.safetensors", "notes.txt", "model.safetensors", FileName(4)} {
		require.FileExists(t, filepath.Join(dir, name))
	}
	require.DirExists(t, filepath.Join(dir, FileName(99)))
	require.NoFileExists(t, filepath.Join(dir, FileName(3)))
}

func TestManagerRemovesStaleTempFiles(t *testing.T) {
	stale := []string{".ckpt-0000000005.safetensors.1a2b.tmp", ".ckpt-x.tmp"}
	foreign := []string{".other.tmp", "ckpt-0000000005.safetensors.tmp", ".ckpt-0000000005.safetensors"}
	tests := []struct {
		name string
		act  func(t *testing.T, dir string)
	}{
		{"Open", func(t *testing.T, dir string) {
			m, err := Open(dir, 3)
			require.NoError(t, err)
			require.Equal(t, &Manager{Dir: dir, Keep: 3}, m)
		}},
		{"Save", func(t *testing.T, dir string) {
			saveSteps(t, &Manager{Dir: dir}, 1)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, name := range append(append([]string{}, stale...), foreign...) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("partial"), 0o644))
			}
			tc.act(t, dir)
			for _, name := range stale {
				require.NoFileExists(t, filepath.Join(dir, name))
			}
			for _, name := range foreign {
				require.FileExists(t, filepath.Join(dir, name))
			}
		})
	}
}

func TestOpenCreatesDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	_, err := Open(dir, 0)
	require.NoError(t, err)
	require.DirExists(t, dir)
}

func TestManagerSaveErrors(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{Dir: dir, Keep: 1}
	saveSteps(t, m, 1)

	path, err := m.Save(-1, bigFile(1, 1, "x"))
	require.ErrorIs(t, err, ErrInvalid)
	require.Empty(t, path)

	// An invalid file fails the save and prunes nothing.
	path, err = m.Save(2, &File{Tensors: []Tensor{F32("w", []int{3}, nil)}})
	require.ErrorIs(t, err, ErrInvalid)
	require.Empty(t, path)
	got, err := m.List()
	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(dir, FileName(1))}, got)

	// Dir is a regular file.
	file := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	_, err = (&Manager{Dir: file}).Save(1, bigFile(1, 1, "x"))
	require.Error(t, err)
}

func TestManagerEmptyDirMeansCurrentDirectory(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	m := &Manager{Keep: 1}
	for _, step := range []int64{1, 2} {
		path, err := m.Save(step, bigFile(2, 1, "x"))
		require.NoError(t, err)
		require.Equal(t, FileName(step), path)
	}
	got, err := m.List()
	require.NoError(t, err)
	require.Equal(t, []string{FileName(2)}, got)
	require.FileExists(t, filepath.Join(dir, FileName(2)))
	require.NoFileExists(t, filepath.Join(dir, FileName(1)))
}

func TestManagerListMissingDir(t *testing.T) {
	got, err := (&Manager{Dir: filepath.Join(t.TempDir(), "missing")}).List()
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestLatest(t *testing.T) {
	tests := []struct {
		name         string
		steps        []int64
		missing      bool
		want         int64
		wantNotExist bool
	}{
		{name: "one", steps: []int64{7}, want: 7},
		{name: "many", steps: []int64{100, 3, 20}, want: 100},
		{name: "empty dir", steps: nil},
		{name: "missing dir", missing: true, wantNotExist: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.missing {
				dir = filepath.Join(dir, "missing")
			}
			saveSteps(t, &Manager{Dir: dir}, tc.steps...)
			got, err := Latest(dir)
			if len(tc.steps) == 0 {
				require.ErrorIs(t, err, ErrNoCheckpoint)
				require.Equal(t, tc.wantNotExist, errors.Is(err, fs.ErrNotExist))
				require.ErrorContains(t, err, dir)
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, filepath.Join(dir, FileName(tc.want)), got)
		})
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	runDir := filepath.Join(dir, "run")
	saveSteps(t, &Manager{Dir: runDir}, 5, 50)
	emptyDir := filepath.Join(dir, "empty")
	require.NoError(t, os.Mkdir(emptyDir, 0o755))
	single := filepath.Join(dir, "exported.safetensors")
	require.NoError(t, WriteFileAtomic(single, bigFile(2, 1, "x")))

	tests := []struct {
		name    string
		in      string
		want    string
		wantErr error
		wantMsg string
	}{
		{name: "file", in: single, want: single},
		{name: "checkpoint file", in: filepath.Join(runDir, FileName(5)), want: filepath.Join(runDir, FileName(5))},
		{name: "dir", in: runDir, want: filepath.Join(runDir, FileName(50))},
		{name: "empty dir", in: emptyDir, wantErr: ErrNoCheckpoint, wantMsg: emptyDir},
		{name: "missing", in: filepath.Join(dir, "nope.safetensors"), wantErr: fs.ErrNotExist, wantMsg: "nope.safetensors does not exist"},
		{name: "missing dir", in: filepath.Join(dir, "gone") + "/", wantErr: fs.ErrNotExist, wantMsg: "gone/ does not exist"},
	}
	if fi, err := os.Stat(os.DevNull); err == nil && fi.Mode()&fs.ModeDevice != 0 {
		tests = append(tests, struct {
			name    string
			in      string
			want    string
			wantErr error
			wantMsg string
		}{name: "device", in: os.DevNull, wantMsg: "neither a regular file nor a directory"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.in)
			if tc.wantMsg != "" {
				if tc.wantErr != nil {
					require.ErrorIs(t, err, tc.wantErr)
				}
				require.ErrorContains(t, err, tc.wantMsg)
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}
