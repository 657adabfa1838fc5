package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
)

// Test hooks; nil in production.
var (
	// testHookWriter wraps the writer the encoded file goes to.
	testHookWriter func(io.Writer) io.Writer
	// testHookBeforeRename runs after the temporary file is written, synced
	// and closed, just before it is renamed over the target.
	testHookBeforeRename func(tmp string) error
)

// tempSuffix ends the name of every temporary file WriteFileAtomic creates.
const tempSuffix = ".tmp"

// createTemp creates a new file named prefix+random+tempSuffix in dir with
// mode 0666 (before umask), so that checkpoints get ordinary permissions.
func createTemp(dir, prefix string) (*os.File, error) {
	for range 100 {
		name := filepath.Join(dir, prefix+strconv.FormatUint(rand.Uint64(), 36)+tempSuffix)
		fh, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		return fh, err
	}
	return nil, fmt.Errorf("checkpoint: cannot create a temporary file in %s", dir)
}

// WriteFileAtomic writes f to path in safetensors format so that path always
// holds either its previous content or the complete new file, even if the
// process crashes midway.
//
// It validates f, writes it to a new temporary file in the same directory
// (named "."+base(path)+".<random>.tmp"), fsyncs and closes that file,
// renames it over path and fsyncs the directory. On any error before the
// rename the temporary file is removed and path is left untouched. If only
// the final directory fsync fails, the new file is already in place (and
// visible to readers) but its durability across a power loss is not
// guaranteed; the error says so.
//
// A process killed during WriteFileAtomic can leave the temporary file
// behind; Manager removes such files. Concurrent writers to the same path
// are safe in the sense that the last rename wins and path is never torn.
func WriteFileAtomic(path string, f *File) (err error) {
	header, err := encodeHeader(f) // validate before touching the disk
	if err != nil {
		return err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := createTemp(dir, "."+base+".")
	if err != nil {
		return fmt.Errorf("checkpoint: save %s: %w", path, err)
	}
	tmpName := tmp.Name()
	closed, renamed := false, false
	defer func() {
		if err == nil || renamed {
			return
		}
		if !closed {
			tmp.Close()
		}
		os.Remove(tmpName)
	}()

	var w io.Writer = tmp
	if testHookWriter != nil {
		w = testHookWriter(w)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := writeEncoded(bw, header, f); err != nil {
		return fmt.Errorf("checkpoint: save %s: write %s: %w", path, tmpName, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("checkpoint: save %s: write %s: %w", path, tmpName, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("checkpoint: save %s: fsync %s: %w", path, tmpName, err)
	}
	closed = true
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("checkpoint: save %s: close %s: %w", path, tmpName, err)
	}
	if testHookBeforeRename != nil {
		if err := testHookBeforeRename(tmpName); err != nil {
			return fmt.Errorf("checkpoint: save %s: %w", path, err)
		}
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("checkpoint: save %s: %w", path, err)
	}
	renamed = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("checkpoint: saved %s, but syncing directory %s failed, so the save may not survive a power loss: %w", path, dir, err)
	}
	return nil
}

// syncDir fsyncs a directory so that a rename in it is durable. Platforms and
// file systems that cannot sync directories are tolerated.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, errors.ErrUnsupported) || errors.Is(err, syscall.EINVAL) {
		return nil
	}
	return err
}
