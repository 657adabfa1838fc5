package metrics

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// JSONL writes records to a file as JSON Lines: one JSON object per line.
//
// Every [JSONL.Write] hands its whole line to the operating system in a
// single write before returning, so a reader (tail -f, a dashboard) sees
// each record as soon as it is written, and a crash of the process loses
// at most the record being written. Lines are not fsynced one by one
// (that would cost a disk flush per record); [JSONL.Sync] and
// [JSONL.Close] do that.
//
// Non-finite floats (NaN, +Inf, -Inf) are written as null, because JSON
// has no representation for them; a diverging loss thus appears as
// "loss":null.
//
// A JSONL is safe for concurrent use. It is also a [Sink]: its Train, Eval
// and Summary methods write the record and remember the first error,
// which [JSONL.Err] and [JSONL.Close] report.
type JSONL struct {
	path string

	mu     sync.Mutex
	f      *os.File
	err    error // first error of any Write
	closed bool
}

var _ Sink = (*JSONL)(nil)

// CreateJSONL creates the file at path, truncating it if it exists, and
// creates its parent directories as needed.
func CreateJSONL(path string) (*JSONL, error) {
	return OpenJSONL(path, false)
}

// OpenJSONL opens the file at path for writing records, creating it and
// its parent directories as needed. With appendMode false an existing file
// is truncated (as [CreateJSONL]); with appendMode true new records are
// added after the existing ones, which is what a resumed run wants. If the
// existing file ends in a partial line (a crash mid-write), a newline is
// added first, so the partial line stays on its own and the new records
// remain parseable.
func OpenJSONL(path string, appendMode bool) (*JSONL, error) {
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	flag := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if appendMode {
		flag = os.O_CREATE | os.O_RDWR | os.O_APPEND
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if appendMode {
		if err := terminateLine(f); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return &JSONL{path: path, f: f}, nil
}

// terminateLine appends '\n' to f if f is not empty and does not end in one.
func terminateLine(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() == 0 || !st.Mode().IsRegular() {
		return nil
	}
	last := make([]byte, 1)
	if _, err := f.ReadAt(last, st.Size()-1); err != nil && err != io.EOF {
		return err
	}
	if last[0] == '\n' {
		return nil
	}
	_, err = f.Write([]byte{'\n'})
	return err
}

// Path returns the path the JSONL was opened with.
func (j *JSONL) Path() string { return j.path }

// Write encodes rec as JSON on one line and writes it to the file. rec is
// usually a [Train], [Eval] or [Summary], whose "kind" field is set from
// the type; any value encoding/json accepts works, with non-finite floats
// written as null. The error (encoding, I/O, or [os.ErrClosed] after
// Close) is returned and the first one is also remembered for [JSONL.Err].
func (j *JSONL) Write(rec any) error {
	b, err := marshalFinite(rec)
	if err != nil {
		err = fmt.Errorf("metrics: encode %T: %w", rec, err)
	}
	b = append(b, '\n')

	j.mu.Lock()
	defer j.mu.Unlock()
	if err == nil {
		if j.closed {
			err = fmt.Errorf("metrics: write %s: %w", j.path, os.ErrClosed)
		} else if _, werr := j.f.Write(b); werr != nil {
			err = fmt.Errorf("metrics: %w", werr)
		}
	}
	if err != nil && j.err == nil {
		j.err = err
	}
	return err
}

// Train writes r; see [JSONL.Write]. Errors are remembered for Err.
func (j *JSONL) Train(r Train) { _ = j.Write(r) }

// Eval writes r; see [JSONL.Write]. Errors are remembered for Err.
func (j *JSONL) Eval(r Eval) { _ = j.Write(r) }

// Summary writes r; see [JSONL.Write]. Errors are remembered for Err.
func (j *JSONL) Summary(r Summary) { _ = j.Write(r) }

// Async writes an asynchronous-training record.
func (j *JSONL) Async(r Async) { _ = j.Write(r) }

// Balance writes a load-balancing record.
func (j *JSONL) Balance(r Balance) { _ = j.Write(r) }

// Err returns the first error of any write so far, or nil.
func (j *JSONL) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// Sync commits the file's contents to stable storage (fsync).
func (j *JSONL) Sync() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return fmt.Errorf("metrics: sync %s: %w", j.path, os.ErrClosed)
	}
	return j.f.Sync()
}

// Close syncs and closes the file. It returns the first write error (see
// [JSONL.Err]) joined with any error from syncing or closing. Calling
// Close again returns nil.
func (j *JSONL) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	syncErr := j.f.Sync()
	if errors.Is(syncErr, syscall.EINVAL) {
		syncErr = nil // not syncable (a pipe, /dev/null): nothing to commit
	}
	closeErr := j.f.Close()
	return errors.Join(j.err, syncErr, closeErr)
}
