package data

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrMalformed: a row of a CSV file cannot be read as the header says
// (wrong number of fields, a value that is not a finite number, a label
// that is not a class), or the header itself is wrong.
var ErrMalformed = errors.New("malformed CSV")

// MaxCSVColumns bounds the columns of a CSV file.
const MaxCSVColumns = 1 << 16

// CSVOptions says how to read a CSV file of float features and a class.
type CSVOptions struct {
	// Label names the column that holds the class, an integer from 0
	// (required). Every other column is a feature.
	Label string
	// Classes is the number of classes; 0 takes one more than the
	// largest label in the file (a test split should be given its
	// training split's count).
	Classes int
	// Comma separates fields (',' when 0).
	Comma rune
}

// Table is a CSV file's samples held in memory: N rows of len(Columns)
// float features and a class label. It is a [Source]: its input is the
// features, standardised by Mean and Std when they are set (see
// [Table.Standardize]), and its target the label.
//
// The file has a header row naming the columns; every row has a value
// for each column; features are finite decimal numbers and labels
// integers in [0, Classes). Empty lines are skipped. Anything else is
// refused with the file and line (ErrMalformed), so that a bad row is
// never silently read as a zero.
type Table struct {
	Name     string   // the file's base name
	Columns  []string // the feature columns, in file order
	Label    string   // the label column
	N        int
	Features []float32 // N·len(Columns), row after row
	Labels   []int32   // N
	Classes  int
	// Mean and Std standardise each feature in Fill: (v − Mean)/Std.
	// Both nil: the values as they are.
	Mean, Std []float32
}

// LoadCSV reads the CSV file at path (see [Table]).
func LoadCSV(path string, o CSVOptions) (*Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &FileError{Path: path, Err: ErrNotFound, Cause: err}
	}
	defer f.Close()
	return ReadCSV(f, path, o)
}

// ReadCSV reads a CSV file from r; name is what errors call it.
func ReadCSV(r io.Reader, name string, o CSVOptions) (*Table, error) {
	bad := func(line int, format string, a ...any) error {
		return &FileError{Path: fmt.Sprintf("%s:%d", name, line), Err: ErrMalformed, Detail: fmt.Sprintf(format, a...)}
	}
	if o.Label == "" {
		return nil, fmt.Errorf("data: %s: %w: no label column given (CSVOptions.Label)", name, ErrMalformed)
	}
	if o.Classes < 0 {
		return nil, fmt.Errorf("data: %s: %w: %d classes", name, ErrMalformed, o.Classes)
	}
	cr := csv.NewReader(r)
	if o.Comma != 0 {
		cr.Comma = o.Comma
	}
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return nil, bad(1, "the file is empty: it needs a header row naming the columns, then rows")
	}
	if err != nil {
		return nil, csvErr(name, err)
	}
	header = slices.Clone(header) // the reader reuses its record
	if len(header) > MaxCSVColumns {
		return nil, bad(1, "%d columns; at most %d are supported", len(header), MaxCSVColumns)
	}
	t := &Table{Name: filepath.Base(name), Label: o.Label}
	labelCol := -1
	for i, h := range header {
		h = strings.TrimSpace(h)
		if i == 0 {
			h = strings.TrimPrefix(h, "\ufeff") // a byte order mark
		}
		switch {
		case h == "":
			return nil, bad(1, "column %d has no name", i+1)
		case h == o.Label:
			labelCol = i
		case slices.Contains(t.Columns, h):
			return nil, bad(1, "column %q appears twice", h)
		default:
			t.Columns = append(t.Columns, h)
		}
	}
	if labelCol < 0 {
		return nil, bad(1, "no column is named %q (the label); the columns are %s", o.Label, quoteList(header))
	}
	if len(t.Columns) == 0 {
		return nil, bad(1, "no feature columns besides the label %q", o.Label)
	}
	cr.FieldsPerRecord = len(header)
	maxLabel := int64(-1)
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, csvErr(name, err)
		}
		line, _ := cr.FieldPos(0)
		for i, v := range rec {
			v = strings.TrimSpace(v)
			if i == labelCol {
				l, err := strconv.ParseInt(v, 10, 32)
				if err != nil || l < 0 || (o.Classes > 0 && l >= int64(o.Classes)) {
					want := "an integer from 0"
					if o.Classes > 0 {
						want = fmt.Sprintf("an integer from 0 to %d", o.Classes-1)
					}
					return nil, bad(line, "label %s is not a class (%s)", quoteCut(v), want)
				}
				maxLabel = max(maxLabel, l)
				t.Labels = append(t.Labels, int32(l))
				continue
			}
			f, err := strconv.ParseFloat(v, 32)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, bad(line, "column %q: %s is not a finite number", header[i], quoteCut(v))
			}
			t.Features = append(t.Features, float32(f))
		}
		t.N++
	}
	if t.N == 0 {
		return nil, bad(1, "the file has a header but no rows")
	}
	t.Classes = o.Classes
	if t.Classes == 0 {
		t.Classes = int(maxLabel) + 1
	}
	return t, nil
}

// csvErr turns encoding/csv's error (which names the line) into ours.
func csvErr(name string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		detail := pe.Err.Error()
		if errors.Is(pe.Err, csv.ErrFieldCount) {
			detail = "wrong number of fields: every row needs a value for each column of the header"
		}
		return &FileError{Path: fmt.Sprintf("%s:%d", name, pe.Line), Err: ErrMalformed, Detail: detail}
	}
	return &FileError{Path: name, Err: ErrMalformed, Cause: err}
}

func quoteCut(s string) string {
	if len(s) > 40 {
		return strconv.Quote(s[:40]) + "..."
	}
	return strconv.Quote(s)
}

func quoteList(ss []string) string {
	q := make([]string, 0, min(len(ss), 10))
	for _, s := range ss[:min(len(ss), 10)] {
		q = append(q, quoteCut(s))
	}
	if len(ss) > 10 {
		q = append(q, fmt.Sprintf("... (%d in all)", len(ss)))
	}
	return strings.Join(q, ", ")
}

// Standardize computes each feature's mean and standard deviation over
// the table and sets them as its Mean and Std (a constant feature gets
// Std 1). Give a test split its training split's with SetNorm.
func (t *Table) Standardize() {
	f := len(t.Columns)
	mean, std := make([]float32, f), make([]float32, f)
	for j := range f {
		var s, ss float64
		for i := range t.N {
			v := float64(t.Features[i*f+j])
			s += v
			ss += v * v
		}
		m := s / float64(t.N)
		sd := math.Sqrt(max(ss/float64(t.N)-m*m, 0))
		if sd == 0 {
			sd = 1
		}
		mean[j], std[j] = float32(m), float32(sd)
	}
	t.Mean, t.Std = mean, std
}

// SetNorm sets the standardisation constants (another table's, typically
// the training split's), checking that they fit this table's columns.
func (t *Table) SetNorm(mean, std []float32) error {
	if len(mean) != len(t.Columns) || len(std) != len(t.Columns) {
		return fmt.Errorf("data: %s: %d means and %d deviations for %d feature columns", t.Name, len(mean), len(std), len(t.Columns))
	}
	for j, s := range std {
		if !(s > 0) || math.IsInf(float64(s), 0) || math.IsNaN(float64(mean[j])) {
			return fmt.Errorf("data: %s: column %q: standardisation by mean %v and deviation %v", t.Name, t.Columns[j], mean[j], s)
		}
	}
	t.Mean, t.Std = mean, std
	return nil
}

// Len is the number of rows.
func (t *Table) Len() int { return t.N }

// Input is the features.
func (t *Table) Input() Field {
	return Field{Name: "features", Kind: Float, Shape: []int{len(t.Columns)}}
}

// Target is the label column.
func (t *Table) Target() Field { return Field{Name: t.Label, Kind: ClassIndex, Classes: t.Classes} }

// Fill writes rows idx (see [Source]); nothing is random.
func (t *Table) Fill(x, y []float32, idx []int, _ uint64, _ int) error {
	f := len(t.Columns)
	if err := checkFill(t.N, f, 1, x, y, idx); err != nil {
		return err
	}
	for i, k := range idx {
		row, dst := t.Features[k*f:(k+1)*f], x[i*f:(i+1)*f]
		if t.Mean == nil {
			copy(dst, row)
		} else {
			for j, v := range row {
				dst[j] = (v - t.Mean[j]) / t.Std[j]
			}
		}
		y[i] = float32(t.Labels[k])
	}
	return nil
}

// Meta records the file, its columns and the standardisation.
func (t *Table) Meta() map[string]string {
	m := map[string]string{
		"data.name":    "csv:" + t.Name,
		"data.columns": strings.Join(t.Columns, ","),
		"data.label":   t.Label,
		"data.classes": strconv.Itoa(t.Classes),
	}
	if t.Mean != nil {
		m["data.mean"], m["data.std"] = floatList(t.Mean), floatList(t.Std)
	}
	return m
}

// ErrNoNorm: metadata that should record a table's standardisation (see
// [Table.Meta]) does not, or records it badly; returned by NormFromMeta.
var ErrNoNorm = errors.New("no standardisation recorded")

// NormFromMeta reads back the standardisation constants that [Table.Meta]
// records ("data.mean" and "data.std", one value per feature column), for
// a test split's SetNorm. An error wraps ErrNoNorm and names the key that
// is missing or malformed.
func NormFromMeta(meta map[string]string) (mean, std []float32, err error) {
	read := func(key string) ([]float32, error) {
		s, ok := meta[key]
		if !ok {
			return nil, fmt.Errorf("%w: no %q key", ErrNoNorm, key)
		}
		parts := strings.Split(s, ",")
		if len(parts) > MaxCSVColumns {
			return nil, fmt.Errorf("%w: %q holds %d values; a table has at most %d columns", ErrNoNorm, key, len(parts), MaxCSVColumns)
		}
		v := make([]float32, len(parts))
		for i, p := range parts {
			f, err := strconv.ParseFloat(p, 32)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, fmt.Errorf("%w: %q: value %d, %s, is not a finite number", ErrNoNorm, key, i+1, quoteCut(p))
			}
			v[i] = float32(f)
		}
		return v, nil
	}
	if mean, err = read("data.mean"); err != nil {
		return nil, nil, err
	}
	if std, err = read("data.std"); err != nil {
		return nil, nil, err
	}
	if len(mean) != len(std) {
		return nil, nil, fmt.Errorf("%w: %d means and %d deviations", ErrNoNorm, len(mean), len(std))
	}
	return mean, std, nil
}

func floatList(v []float32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(float64(x), 'g', -1, 32)
	}
	return strings.Join(s, ",")
}
