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
//
// A write that fails (a full disk, an I/O error) loses nothing at once:
// the record is kept, in memory, up to [MaxPendingBytes], and written
// before the next record, so a disk that frees up gets every record in
// order. The function given to [JSONL.OnError] hears of the failure when
// it happens and of the recovery; [JSONL.Stats] counts the records written
// late and those lost; Close makes a last try and fails only if records
// are still unwritten.
type JSONL struct {
	path string

	mu      sync.Mutex
	f       *os.File
	err     error // first error of any Write
	encErr  error // first record that could not be encoded (lost)
	closed  bool
	onErr   func(err error, pending int)
	pending [][]byte // lines whose write failed, oldest first
	pendB   int      // their bytes
	midLine bool     // the file ends in part of a line (a short write that could not be taken back)
	stats   WriteStats
}

// MaxPendingBytes bounds the records a [JSONL] keeps while its file cannot
// be written; older ones are dropped (and counted as lost) beyond it.
const MaxPendingBytes = 8 << 20

// WriteStats counts what a [JSONL]'s write failures cost.
type WriteStats struct {
	Failures int   // writes that failed
	Late     int   // records written after a failure, when a retry succeeded
	Lost     int   // records dropped: not encodable, beyond MaxPendingBytes, or unwritten at Close
	Pending  int   // records waiting for a retry now
	LastErr  error // the latest write error, or nil
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
	switch {
	case err != nil:
		j.stats.Lost++
		if j.encErr == nil {
			j.encErr = err
		}
	case j.closed:
		err = fmt.Errorf("metrics: write %s: %w", j.path, os.ErrClosed)
	default:
		err = j.writeLine(b)
	}
	if err != nil && j.err == nil {
		j.err = err
	}
	return err
}

// cutShortWrite takes back the n bytes of a line that a failed write left
// at the end of the file, so that the file holds whole records only. It
// reports whether it could.
func (j *JSONL) cutShortWrite(n int) bool {
	end, err := j.f.Seek(0, io.SeekCurrent)
	if err != nil || end < int64(n) {
		return false
	}
	if j.f.Truncate(end-int64(n)) != nil {
		return false
	}
	_, err = j.f.Seek(end-int64(n), io.SeekStart)
	return err == nil
}

// OnError makes f hear of write failures as they happen: with the error
// and the records waiting, at the first failure and at the first after
// a recovery; with a nil error when a retry has written them all. f runs
// with the JSONL locked: it must not call the JSONL.
func (j *JSONL) OnError(f func(err error, pending int)) {
	j.mu.Lock()
	j.onErr = f
	j.mu.Unlock()
}

// Stats returns the counts of write failures so far.
func (j *JSONL) Stats() WriteStats {
	j.mu.Lock()
	defer j.mu.Unlock()
	st := j.stats
	st.Pending = len(j.pending)
	return st
}

// writeLine writes the waiting lines and then b, or queues b behind them.
// Caller holds mu.
func (j *JSONL) writeLine(b []byte) error {
	failing := len(j.pending) > 0
	j.pending = append(j.pending, b)
	j.pendB += len(b)
	for len(j.pending) > 0 {
		line := j.pending[0]
		if j.midLine {
			line = append([]byte{'\n'}, line...) // leave the fragment on its own line
		}
		n, err := j.f.Write(line)
		if err != nil && n == len(line) {
			err = nil // written whole, the error came after
		}
		if err != nil && n > 0 {
			j.midLine = !j.cutShortWrite(n)
		}
		if err != nil {
			j.stats.Failures++
			j.stats.LastErr = err
			for j.pendB > MaxPendingBytes && len(j.pending) > 1 {
				j.pendB -= len(j.pending[0])
				j.pending = j.pending[1:]
				j.stats.Lost++
			}
			if !failing && j.onErr != nil {
				j.onErr(err, len(j.pending))
			}
			return fmt.Errorf("metrics: %w (the record is kept and written when the file takes it)", err)
		}
		j.midLine = false
		j.pendB -= len(j.pending[0])
		j.pending = j.pending[1:]
		if failing {
			j.stats.Late++
		}
	}
	if failing {
		j.stats.Late-- // the record of this call was not late
		j.stats.LastErr = nil
		if j.onErr != nil {
			j.onErr(nil, 0)
		}
	}
	return nil
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

// Close writes the records still waiting (see [JSONL.OnError]), syncs and
// closes the file. It returns the first record that could not be encoded,
// an error counting the records it could not write, and any error from
// syncing or closing; a write failure that a later retry made good is not
// an error. Calling Close again returns nil.
func (j *JSONL) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	var lostErr error
	if len(j.pending) > 0 { // a last try
		last := j.pending[len(j.pending)-1]
		j.pending, j.pendB = j.pending[:len(j.pending)-1], j.pendB-len(last)
		if err := j.writeLine(last); err != nil {
			n := len(j.pending)
			j.stats.Lost += n
			j.pending, j.pendB = nil, 0
			lostErr = fmt.Errorf("metrics: %d records could not be written to %s: %w", n, j.path, j.stats.LastErr)
		}
	}
	j.closed = true
	syncErr := j.f.Sync()
	if errors.Is(syncErr, syscall.EINVAL) {
		syncErr = nil // not syncable (a pipe, /dev/null): nothing to commit
	}
	closeErr := j.f.Close()
	return errors.Join(j.encErr, lostErr, syncErr, closeErr)
}
