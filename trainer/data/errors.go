package data

import (
	"errors"
	"strings"
)

// Sentinel errors. Every error returned by this package wraps exactly one
// of these (test with errors.Is), except plain I/O errors from the operating
// system, which are wrapped as the Cause of a *FileError.
var (
	// ErrNotFound: a dataset directory or file does not exist.
	ErrNotFound = errors.New("dataset not found")
	// ErrUnknownDataset: Load or DefaultDir was given a name other than
	// those listed by Names.
	ErrUnknownDataset = errors.New("unknown dataset")
	// ErrUnknownSplit: Load was given a split other than "train" or "test".
	ErrUnknownSplit = errors.New("unknown split")
	// ErrBadMagic: the first two bytes of the file are not zero, so it is
	// not an IDX file (or not gzip-compressed IDX) at all.
	ErrBadMagic = errors.New("bad IDX magic number")
	// ErrBadType: the IDX data type byte is not 0x08 (unsigned byte).
	ErrBadType = errors.New("unsupported IDX data type")
	// ErrBadDims: the IDX file has the wrong number of dimensions (3 for
	// images, 1 for labels) or an image dimension is zero.
	ErrBadDims = errors.New("wrong IDX dimensions")
	// ErrTooLarge: the dimensions in the header multiply to more than
	// MaxPayload bytes.
	ErrTooLarge = errors.New("IDX payload too large")
	// ErrTruncated: the file ends before the header or the payload the
	// header announces is complete.
	ErrTruncated = errors.New("truncated file")
	// ErrTrailing: there are bytes after the payload the header announces
	// (or after the end of the gzip stream).
	ErrTrailing = errors.New("trailing garbage")
	// ErrCorrupt: the gzip stream is damaged (bad header, bad deflate data,
	// or a checksum mismatch).
	ErrCorrupt = errors.New("corrupt compressed data")
	// ErrMismatch: an image file and a label file do not describe the same
	// samples (different counts), or a Dataset's fields are inconsistent.
	ErrMismatch = errors.New("images and labels do not match")
	// ErrLabelRange: a label is not smaller than the number of classes.
	ErrLabelRange = errors.New("label out of range")
)

// Hints appended to errors; they say what the user should do.
const (
	hintRedownload = "the file is damaged or is not the expected dataset file: re-download the dataset"
	hintMismatch   = "the image and label files come from different datasets or splits: re-download the dataset"
)

// FileError describes a problem with one file (or named stream). Its Error
// method gives one line: "data: PATH: WHAT: DETAIL: CAUSE; HINT".
//
// errors.Is(err, ErrTruncated) and friends see through it to Err, and
// errors.Is / errors.As also reach Cause (for example *fs.PathError or
// gzip.ErrChecksum).
type FileError struct {
	Path   string // file name, or the name passed to DecodeImages/DecodeLabels
	Err    error  // one of the sentinel errors of this package, or nil
	Detail string // what exactly is wrong, with numbers
	Hint   string // what to do about it, or ""
	Cause  error  // underlying error (os, gzip, flate), or nil
}

func (e *FileError) Error() string {
	var b strings.Builder
	b.WriteString("data: ")
	b.WriteString(e.Path)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Cause != nil {
		b.WriteString(": ")
		b.WriteString(e.Cause.Error())
	}
	if e.Hint != "" {
		b.WriteString("; ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Unwrap returns the sentinel and the cause, whichever are set.
func (e *FileError) Unwrap() []error {
	var errs []error
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	if e.Cause != nil {
		errs = append(errs, e.Cause)
	}
	return errs
}
