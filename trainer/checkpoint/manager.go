package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	namePrefix   = "ckpt-"
	nameSuffix   = ".safetensors"
	stalePattern = "." + namePrefix + "*" + tempSuffix // temp files of WriteFileAtomic
)

// FileName is the base name of the checkpoint for step:
// fmt.Sprintf("ckpt-%010d.safetensors", step).
func FileName(step int64) string {
	return fmt.Sprintf("%s%010d%s", namePrefix, step, nameSuffix)
}

// ParseStep returns the step of a checkpoint path whose base name is exactly
// FileName(step) for some step >= 0; ok is false for any other name.
func ParseStep(path string) (step int64, ok bool) {
	base := filepath.Base(path)
	digits, found := strings.CutPrefix(base, namePrefix)
	if !found {
		return 0, false
	}
	digits, found = strings.CutSuffix(digits, nameSuffix)
	if !found || digits == "" || strings.ContainsFunc(digits, func(r rune) bool { return r < '0' || r > '9' }) {
		return 0, false
	}
	step, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || FileName(step) != base {
		return 0, false
	}
	return step, true
}

// Manager keeps the checkpoints of one training run in Dir, one file per
// step, named by FileName. Keep is how many checkpoints Save retains; Keep
// <= 0 keeps all. A Manager assumes it is the only writer in Dir.
type Manager struct {
	Dir  string
	Keep int
}

// Open returns a Manager for dir, creating dir if needed and removing stale
// temporary files left in it by saves that were killed midway.
func Open(dir string, keep int) (*Manager, error) {
	m := &Manager{Dir: dir, Keep: keep}
	if err := os.MkdirAll(m.dir(), 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	if err := m.removeStale(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Manager) dir() string {
	if m.Dir == "" {
		return "."
	}
	return m.Dir
}

// removeStale deletes ".ckpt-*.tmp" files: temporaries of interrupted saves.
func (m *Manager) removeStale() error {
	entries, err := os.ReadDir(m.dir())
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if ok, _ := filepath.Match(stalePattern, e.Name()); !ok || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(m.dir(), e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("checkpoint: removing stale temporary files: %w", errors.Join(errs...))
	}
	return nil
}

// Save writes f atomically (see WriteFileAtomic) as Dir/FileName(step),
// creating Dir if needed and first removing stale temporary files. After a
// successful save, if Keep > 0, it deletes the checkpoints with the lowest
// steps until at most Keep remain; the file just written is never deleted.
//
// A non-empty path means the checkpoint was written; err may then still
// report a failure to delete old checkpoints.
func (m *Manager) Save(step int64, f *File) (path string, err error) {
	if step < 0 {
		return "", fmt.Errorf("%w: negative step %d", ErrInvalid, step)
	}
	if err := os.MkdirAll(m.dir(), 0o755); err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	_ = m.removeStale() // best effort: a leftover temp file only wastes space
	path = filepath.Join(m.dir(), FileName(step))
	if err := WriteFileAtomic(path, f); err != nil {
		return "", err
	}
	if m.Keep <= 0 {
		return path, nil
	}
	all, err := m.List()
	if err != nil {
		return path, fmt.Errorf("checkpoint: saved %s, but pruning old checkpoints failed: %w", path, err)
	}
	all = slices.DeleteFunc(all, func(p string) bool { return p == path })
	excess := len(all) + 1 - m.Keep
	var errs []error
	for i := 0; i < excess && i < len(all); i++ {
		if err := os.Remove(all[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return path, fmt.Errorf("checkpoint: saved %s, but pruning old checkpoints failed: %w", path, errors.Join(errs...))
	}
	return path, nil
}

// List returns the paths of the checkpoints in Dir, sorted by step
// ascending. Files not named exactly like FileName(step) are ignored. A
// missing Dir holds no checkpoints.
func (m *Manager) List() ([]string, error) {
	paths, err := list(m.dir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return paths, nil
}

func list(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type ckpt struct {
		step int64
		path string
	}
	var found []ckpt
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if step, ok := ParseStep(e.Name()); ok {
			found = append(found, ckpt{step, filepath.Join(dir, e.Name())})
		}
	}
	slices.SortFunc(found, func(a, b ckpt) int {
		switch {
		case a.step < b.step:
			return -1
		case a.step > b.step:
			return 1
		}
		return 0
	})
	paths := make([]string, len(found))
	for i, c := range found {
		paths[i] = c.path
	}
	return paths, nil
}

// Latest returns the path of the checkpoint with the highest step in dir.
// The error wraps ErrNoCheckpoint if there is none, including when dir does
// not exist (then it also wraps fs.ErrNotExist).
func Latest(dir string) (string, error) {
	paths, err := list(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %w", ErrNoCheckpoint, err)
	}
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	if len(paths) == 0 {
		return "", fmt.Errorf("%w in %s", ErrNoCheckpoint, dir)
	}
	return paths[len(paths)-1], nil
}

// Resolve turns a user-supplied checkpoint location into a file: a regular
// file is returned as is, a directory resolves to Latest(dir), and a missing
// path is an error (wrapping fs.ErrNotExist) that says it does not exist.
func Resolve(pathOrDir string) (string, error) {
	fi, err := os.Stat(pathOrDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("checkpoint: %s does not exist: %w", pathOrDir, fs.ErrNotExist)
	}
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	switch {
	case fi.IsDir():
		return Latest(pathOrDir)
	case fi.Mode().IsRegular():
		return pathOrDir, nil
	}
	return "", fmt.Errorf("checkpoint: %s is neither a regular file nor a directory", pathOrDir)
}
