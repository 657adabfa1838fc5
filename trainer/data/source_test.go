package data

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// SourceConformance checks what every Source promises: fields that say
// what Fill writes, the same values for the same (indices, seed, epoch)
// in any order and from several goroutines at once, and errors, not
// panics, for bad arguments.
func sourceConformance(t *testing.T, s Source) {
	t.Helper()
	in, out := s.Input(), s.Target()
	require.Positive(t, s.Len())
	require.Positive(t, in.Size())
	require.Equal(t, Float, in.Kind)
	require.Equal(t, ClassIndex, out.Kind)
	require.Equal(t, 1, out.Size())
	require.Positive(t, out.Classes)
	n := min(s.Len(), 64)
	idx := rand.New(rand.NewPCG(1, 2)).Perm(s.Len())[:n]
	fill := func(idx []int, epoch int) ([]float32, []float32) {
		x, y := make([]float32, len(idx)*in.Size()), make([]float32, len(idx))
		require.NoError(t, s.Fill(x, y, idx, 7, epoch))
		return x, y
	}
	x, y := fill(idx, 3)
	for _, v := range y {
		require.True(t, v >= 0 && v < float32(out.Classes) && v == float32(int(v)), "class %v of %d", v, out.Classes)
	}
	// Sample by sample, in reverse, concurrently: the same values.
	var wg sync.WaitGroup
	for i := len(idx) - 1; i >= 0; i-- {
		wg.Go(func() {
			xi, yi := fill(idx[i:i+1], 3)
			require.Equal(t, x[i*in.Size():(i+1)*in.Size()], xi)
			require.Equal(t, y[i], yi[0])
		})
	}
	wg.Wait()
	for _, bad := range []struct {
		x, y []float32
		idx  []int
	}{
		{make([]float32, 1), make([]float32, 1), []int{0}},
		{make([]float32, in.Size()), nil, []int{0}},
		{make([]float32, in.Size()), make([]float32, 1), []int{s.Len()}},
		{make([]float32, in.Size()), make([]float32, 1), []int{-1}},
	} {
		require.ErrorIs(t, s.Fill(bad.x, bad.y, bad.idx, 0, 0), ErrFill)
	}
	require.NotEmpty(t, s.Meta()["data.name"])
}

func TestSourceConformance(t *testing.T) {
	t.Run("synthetic images", func(t *testing.T) { sourceConformance(t, Synthetic(100, 28, 28, 10, 1).AsSource()) })
	t.Run("csv", func(t *testing.T) {
		tb, err := ReadCSV(strings.NewReader(genCSV(200, 5, 3, 1)), "gen.csv", CSVOptions{Label: "y"})
		require.NoError(t, err)
		sourceConformance(t, tb)
		tb.Standardize()
		sourceConformance(t, tb)
	})
}

// genCSV writes n rows of f features and a label y in [0, k), the label
// column in the middle.
func genCSV(n, f, k int, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, 0))
	var b strings.Builder
	cols := []string{}
	for j := range f {
		cols = append(cols, fmt.Sprintf("x%d", j))
	}
	mid := f / 2
	cols = append(cols[:mid], append([]string{"y"}, cols[mid:]...)...)
	b.WriteString(strings.Join(cols, ",") + "\n")
	for range n {
		vals := []string{}
		for range f {
			vals = append(vals, fmt.Sprintf("%.4f", r.NormFloat64()*3+1))
		}
		vals = append(vals[:mid], append([]string{fmt.Sprint(r.IntN(k))}, vals[mid:]...)...)
		b.WriteString(strings.Join(vals, ",") + "\n")
	}
	return b.String()
}

func TestReadCSV(t *testing.T) {
	tb, err := ReadCSV(strings.NewReader("\ufeffa, b ,label,c\n1,2,0,3\n\n-4.5,1e3,2,0.25\n"), "t.csv", CSVOptions{Label: "label"})
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b", "c"}, tb.Columns)
	require.Equal(t, 2, tb.N)
	require.Equal(t, 3, tb.Classes, "one more than the largest label")
	require.Equal(t, []float32{1, 2, 3, -4.5, 1000, 0.25}, tb.Features)
	require.Equal(t, []int32{0, 2}, tb.Labels)
	x, y := make([]float32, 6), make([]float32, 2)
	require.NoError(t, tb.Fill(x, y, []int{1, 0}, 0, 0))
	require.Equal(t, []float32{-4.5, 1000, 0.25, 1, 2, 3}, x)
	require.Equal(t, []float32{2, 0}, y)

	tb.Standardize()
	require.Equal(t, []float32{-1.75, 501, 1.625}, tb.Mean)
	require.NoError(t, tb.Fill(x, y, []int{0, 1}, 0, 0))
	require.Equal(t, []float32{1, -1, 1, -1, 1, -1}, x, "two rows standardise to ±1")

	test, err := ReadCSV(strings.NewReader("a,b,c,label\n1,2,3,1\n"), "test.csv", CSVOptions{Label: "label", Classes: 3})
	require.NoError(t, err)
	require.NoError(t, test.SetNorm(tb.Mean, tb.Std))
	require.Error(t, test.SetNorm(tb.Mean[:2], tb.Std))
	require.Error(t, test.SetNorm(tb.Mean, []float32{1, 0, 1}))
	require.Equal(t, "csv:t.csv", tb.Meta()["data.name"])
	require.Equal(t, "a,b,c", tb.Meta()["data.columns"])
}

// Every malformed file is refused with the file and the line, never read
// as zeros.
func TestReadCSVRefusesMalformedRows(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		o        CSVOptions
		want     string
	}{
		{"empty", "", CSVOptions{Label: "y"}, "t.csv:1: malformed CSV: the file is empty"},
		{"header only", "a,y\n", CSVOptions{Label: "y"}, "t.csv:1: malformed CSV: the file has a header but no rows"},
		{"no label column", "a,b\n1,2\n", CSVOptions{Label: "y"}, `t.csv:1: malformed CSV: no column is named "y"`},
		{"no label given", "a,b\n1,2\n", CSVOptions{}, "no label column given"},
		{"no features", "y\n1\n", CSVOptions{Label: "y"}, "no feature columns"},
		{"duplicate column", "a,a,y\n1,2,0\n", CSVOptions{Label: "y"}, `column "a" appears twice`},
		{"unnamed column", "a,,y\n1,2,0\n", CSVOptions{Label: "y"}, "column 2 has no name"},
		{"short row", "a,b,y\n1,2,0\n1,2\n", CSVOptions{Label: "y"}, "t.csv:3: malformed CSV: wrong number of fields"},
		{"long row", "a,b,y\n1,2,0,9\n", CSVOptions{Label: "y"}, "t.csv:2: malformed CSV: wrong number of fields"},
		{"text value", "a,b,y\n1,2,0\n1,two,0\n", CSVOptions{Label: "y"}, `t.csv:3: malformed CSV: column "b": "two" is not a finite number`},
		{"empty value", "a,b,y\n1,,0\n", CSVOptions{Label: "y"}, `t.csv:2: malformed CSV: column "b": "" is not a finite number`},
		{"NaN", "a,b,y\n1,NaN,0\n", CSVOptions{Label: "y"}, `"NaN" is not a finite number`},
		{"Inf", "a,b,y\n1,-Inf,0\n", CSVOptions{Label: "y"}, `"-Inf" is not a finite number`},
		{"overflow", "a,b,y\n1,1e39,0\n", CSVOptions{Label: "y"}, `"1e39" is not a finite number`},
		{"negative label", "a,y\n1,-1\n", CSVOptions{Label: "y"}, `t.csv:2: malformed CSV: label "-1" is not a class`},
		{"fractional label", "a,y\n1,0.5\n", CSVOptions{Label: "y"}, `label "0.5" is not a class`},
		{"label beyond classes", "a,y\n1,0\n1,12\n", CSVOptions{Label: "y", Classes: 12}, `t.csv:3: malformed CSV: label "12" is not a class (an integer from 0 to 11)`},
		{"bad quote", "a,y\n\"1,0\n", CSVOptions{Label: "y"}, "t.csv:2: malformed CSV"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadCSV(strings.NewReader(tc.in), "t.csv", tc.o)
			require.ErrorIs(t, err, ErrMalformed)
			require.ErrorContains(t, err, tc.want)
		})
	}
	_, err := LoadCSV(filepath.Join(t.TempDir(), "absent.csv"), CSVOptions{Label: "y"})
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, err, os.ErrNotExist)
}

// FuzzReadCSV: no bytes make ReadCSV panic; what it accepts is a valid
// Source (labels below Classes, features finite and of the right count),
// and what it refuses is ErrMalformed.
func FuzzReadCSV(f *testing.F) {
	f.Add([]byte(genCSV(5, 3, 4, 1)), "y", 0)
	f.Add([]byte("a,y\n1,0\n1,12\n"), "y", 12)
	f.Add([]byte("\"a\nb\",y\n1,0\n"), "y", 0)
	f.Add([]byte("a;y\n1;0\n"), "y", 0)
	f.Fuzz(func(t *testing.T, b []byte, label string, classes int) {
		tb, err := ReadCSV(bytes.NewReader(b), "fuzz.csv", CSVOptions{Label: label, Classes: classes})
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("not ErrMalformed: %v", err)
			}
			return
		}
		require.Len(t, tb.Features, tb.N*len(tb.Columns))
		require.Len(t, tb.Labels, tb.N)
		for _, l := range tb.Labels {
			require.True(t, l >= 0 && int(l) < tb.Classes)
		}
		x, y := make([]float32, len(tb.Columns)), make([]float32, 1)
		require.NoError(t, tb.Fill(x, y, []int{tb.N - 1}, 0, 0))
	})
}

// An IDX dataset's augmented source draws, for the same index, seed and
// epoch, the crop and flip its image folder draws: both fill the same
// values; each epoch draws anew, and every sample is its image cropped
// from the padded image (black pixels outside), flipped or not.
func TestAugmentedDatasetMatchesItsFolder(t *testing.T) {
	d := Synthetic(40, 6, 5, 3, 7)
	f := &Folder{Dir: "mem", N: d.N, C: 1, H: d.Rows, W: d.Cols, Classes: []string{"a", "b", "c"},
		Pix: d.Pix, Labels: make([]int32, d.N), Augment: true, Pad: 2, normLUT: [][256]float32{*d.norm().lut}}
	for i, l := range d.Labels {
		f.Labels[i] = int32(l)
	}
	src := d.AsAugmentedSource(2)
	idx := []int{0, 3, 39, 17, 3}
	per := d.Rows * d.Cols
	x1, y1 := make([]float32, len(idx)*per), make([]float32, len(idx))
	x2, y2 := make([]float32, len(idx)*per), make([]float32, len(idx))
	seen := map[string]bool{}
	for epoch := range 3 {
		require.NoError(t, src.Fill(x1, y1, idx, 11, epoch))
		require.NoError(t, f.Fill(x2, y2, idx, 11, epoch))
		require.Equal(t, x2, x1, "epoch %d: the folder's values", epoch)
		require.Equal(t, y2, y1)
		seen[fmt.Sprint(x1)] = true
		lut := d.norm().lut
		for k, i := range idx {
			img, got := d.Pix[i*per:(i+1)*per], x1[k*per:(k+1)*per]
			ok := false
			for dy := 0; dy <= 4 && !ok; dy++ {
				for dx := 0; dx <= 4 && !ok; dx++ {
					for _, flip := range []bool{false, true} {
						match := true
						for r := 0; r < d.Rows && match; r++ {
							for c := 0; c < d.Cols && match; c++ {
								sc := c
								if flip {
									sc = d.Cols - 1 - c
								}
								sr, sc := r+dy-2, sc+dx-2
								want := lut[0]
								if sr >= 0 && sr < d.Rows && sc >= 0 && sc < d.Cols {
									want = lut[img[sr*d.Cols+sc]]
								}
								match = got[r*d.Cols+c] == want
							}
						}
						ok = ok || match
					}
				}
			}
			require.True(t, ok, "epoch %d sample %d is no crop of its padded image", epoch, i)
		}
	}
	require.Len(t, seen, 3, "each epoch draws anew")
	require.NoError(t, src.Fill(x2, y2, idx, 11, 2))
	require.Equal(t, x1, x2, "the same (seed, epoch, index) draws the same")
	require.Equal(t, "crop+flip, pad 2", src.Meta()["data.augment"])
}
