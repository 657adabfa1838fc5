package data

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMeanStd(t *testing.T) {
	tests := []struct {
		name      string
		mean, std float32
	}{
		{"mnist", 0.1307, 0.3081},
		{"fashion-mnist", 0.2860, 0.3530},
		{"synthetic", 0.5, 0.2898},
		{"my-own", 0, 1},
		{"", 0, 1},
	}
	for _, tc := range tests {
		d := &Dataset{Name: tc.name}
		require.Equal(t, tc.mean, d.Mean(), tc.name)
		require.Equal(t, tc.std, d.Std(), tc.name)
	}
}

func TestBatch(t *testing.T) {
	for _, name := range []string{"mnist", "fashion-mnist", "synthetic", "custom"} {
		t.Run(name, func(t *testing.T) {
			d := &Dataset{Name: name, Split: "train", N: 3, Rows: 2, Cols: 2, Classes: 10,
				Pix:    []byte{0, 255, 128, 1, 10, 20, 30, 40, 200, 201, 202, 203},
				Labels: []byte{7, 0, 9}}
			require.NoError(t, d.Validate())
			idx := []int{2, 0, 2, 1}
			x := make([]float32, len(idx)*4)
			y := make([]float32, len(idx))
			d.Batch(idx, x, y)
			mean, std := float64(d.Mean()), float64(d.Std())
			for i, k := range idx {
				for j := range 4 {
					p := float64(d.Pix[k*4+j])
					require.InDelta(t, (p/255-mean)/std, x[i*4+j], 1e-5, "sample %d pixel %d", i, j)
				}
				require.Equal(t, float32(d.Labels[k]), y[i])
			}
			// Normalisation really happens: pixel 0 is -Mean/Std.
			require.InDelta(t, -mean/std, x[4], 1e-6)
		})
	}
}

func TestBatchDoesNotAllocate(t *testing.T) {
	d := Synthetic(256, 28, 28, 10, 1)
	idx := Permutation(d.N, 1, 0)[:64]
	x := make([]float32, 64*d.Features())
	y := make([]float32, 64)
	require.Zero(t, testing.AllocsPerRun(20, func() { d.Batch(idx, x, y) }))
}

func TestBatchPanicsOnMisuse(t *testing.T) {
	d := Synthetic(4, 2, 2, 3, 1)
	tests := []struct {
		name string
		idx  []int
		x, y []float32
		msg  string
	}{
		{"short x", []int{0, 1}, make([]float32, 7), make([]float32, 2), "len(x)=8"},
		{"long x", []int{0, 1}, make([]float32, 9), make([]float32, 2), "len(x)=8"},
		{"short y", []int{0, 1}, make([]float32, 8), make([]float32, 1), "len(y)=2"},
		{"index too big", []int{4}, make([]float32, 4), make([]float32, 1), "index 4 out of range [0, 4)"},
		{"negative index", []int{-1}, make([]float32, 4), make([]float32, 1), "index -1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				require.NotNil(t, r, "Batch must panic")
				require.Contains(t, r, tc.msg)
			}()
			d.Batch(tc.idx, tc.x, tc.y)
		})
	}
}

func TestValidate(t *testing.T) {
	good := func() *Dataset {
		return &Dataset{Name: "x", Split: "train", N: 2, Rows: 1, Cols: 2, Classes: 3, Pix: []byte{1, 2, 3, 4}, Labels: []byte{0, 2}}
	}
	require.NoError(t, good().Validate())
	tests := []struct {
		name   string
		change func(d *Dataset)
		want   error
	}{
		{"zero rows", func(d *Dataset) { d.Rows = 0 }, ErrMismatch},
		{"negative N", func(d *Dataset) { d.N = -1 }, ErrMismatch},
		{"zero classes", func(d *Dataset) { d.Classes = 0 }, ErrMismatch},
		{"too many classes", func(d *Dataset) { d.Classes = 257 }, ErrMismatch},
		{"short pix", func(d *Dataset) { d.Pix = d.Pix[:3] }, ErrMismatch},
		{"long labels", func(d *Dataset) { d.Labels = append(d.Labels, 0) }, ErrMismatch},
		{"label too big", func(d *Dataset) { d.Labels[1] = 3 }, ErrLabelRange},
	}
	for _, tc := range tests {
		d := good()
		tc.change(d)
		err := d.Validate()
		require.ErrorIs(t, err, tc.want, tc.name)
		require.Contains(t, err.Error(), "x/train", tc.name)
	}
}

func TestSynthetic(t *testing.T) {
	d := Synthetic(2000, 28, 28, 10, 42)
	require.NoError(t, d.Validate())
	require.Equal(t, "synthetic", d.Name)
	require.Equal(t, "train", d.Split)
	require.Equal(t, 2000, d.N)
	require.Equal(t, 784, d.Features())
	require.Equal(t, 10, d.Classes)

	// Deterministic in the seed, different across seeds.
	again := Synthetic(2000, 28, 28, 10, 42)
	require.Equal(t, d.Pix, again.Pix)
	require.Equal(t, d.Labels, again.Labels)
	other := Synthetic(2000, 28, 28, 10, 43)
	require.NotEqual(t, d.Pix, other.Pix)
	require.NotEqual(t, d.Labels, other.Labels)

	// Every class appears, roughly equally.
	var hist [10]int
	for _, l := range d.Labels {
		hist[l]++
	}
	for c, n := range hist {
		require.InDelta(t, 200, n, 60, "class %d", c)
	}

	// Pixels are uniform bytes: their statistics are Mean and Std.
	var sum, sumSq float64
	for _, p := range d.Pix {
		v := float64(p) / 255
		sum += v
		sumSq += v * v
	}
	n := float64(len(d.Pix))
	mean := sum / n
	std := math.Sqrt(sumSq/n - mean*mean)
	require.InDelta(t, float64(d.Mean()), mean, 2e-3)
	require.InDelta(t, float64(d.Std()), std, 2e-3)
}

// Synthetic data is part of the reproducibility contract, like Permutation.
func TestSyntheticGolden(t *testing.T) {
	d := Synthetic(2, 2, 3, 10, 42)
	require.Equal(t, []byte{143, 88, 68, 253, 181, 220, 188, 131, 98, 50, 15, 116}, d.Pix)
	require.Equal(t, []byte{2, 8}, d.Labels)
	require.Empty(t, Synthetic(0, 1, 1, 1, 0).Pix)
}

func TestSyntheticPanics(t *testing.T) {
	for _, args := range [][4]int{{-1, 1, 1, 1}, {1, 0, 1, 1}, {1, 1, 0, 1}, {1, 1, 1, 0}, {1, 1, 1, 257}} {
		require.Panics(t, func() { Synthetic(args[0], args[1], args[2], args[3], 0) }, "%v", args)
	}
}

func BenchmarkBatch64(b *testing.B) {
	d := Synthetic(1024, 28, 28, 10, 1)
	idx := Permutation(d.N, 1, 0)[:64]
	x := make([]float32, 64*d.Features())
	y := make([]float32, 64)
	b.SetBytes(int64(len(x) * 4))
	for b.Loop() {
		d.Batch(idx, x, y)
	}
}

func TestBatchFillsOnlyWhatIsGiven(t *testing.T) {
	d := Synthetic(10, 2, 2, 3, 1)
	x := make([]float32, 2*4)
	y := make([]float32, 2)
	d.Batch([]int{3, 7}, x, y)
	xOnly := make([]float32, 2*4)
	d.Batch([]int{3, 7}, xOnly, nil)
	require.Equal(t, x, xOnly)
	yOnly := make([]float32, 2)
	d.Batch([]int{3, 7}, nil, yOnly)
	require.Equal(t, y, yOnly)
	require.Panics(t, func() { d.Batch([]int{3}, make([]float32, 3), nil) })
}

// TestDatasetSetNorm: SetNorm's constants replace the name's in Batch,
// Mean, Std, the augmented source and the slices taken after it, bit for
// bit as a Folder normalises by the same constants; bad constants are
// refused and change nothing.
func TestDatasetSetNorm(t *testing.T) {
	d := Synthetic(40, 6, 5, 3, 7)
	d.Name = "mnist"
	idx := []int{0, 3, 39}
	before := make([]float32, len(idx)*30)
	d.Batch(idx, before, nil)

	for _, bad := range [][2]float32{{0.5, 0}, {0.5, -1}, {float32(math.NaN()), 1}, {0, float32(math.Inf(1))}, {float32(math.Inf(-1)), 1}} {
		err := d.SetNorm(bad[0], bad[1])
		require.Error(t, err, "%v", bad)
		require.ErrorContains(t, err, "mnist/train")
		require.Equal(t, float32(0.1307), d.Mean())
	}

	require.NoError(t, d.SetNorm(0.25, 0.125))
	require.Equal(t, float32(0.25), d.Mean())
	require.Equal(t, float32(0.125), d.Std())
	x := make([]float32, len(idx)*30)
	d.Batch(idx, x, nil)
	labels := make([]int32, d.N)
	for i, l := range d.Labels {
		labels[i] = int32(l)
	}
	f := &Folder{Dir: "ref", N: d.N, C: 1, H: d.Rows, W: d.Cols, Pix: d.Pix, Labels: labels, Classes: []string{"0", "1", "2"}}
	require.NoError(t, f.SetNorm([]float32{0.25}, []float32{0.125}))
	want, y := make([]float32, len(idx)*30), make([]float32, len(idx))
	require.NoError(t, f.Fill(want, y, idx, 0, 0))
	require.Equal(t, want, x)
	require.NotEqual(t, before, x)
	require.Equal(t, float32((float64(d.Pix[0])/255-0.25)/0.125), x[0])

	s := d.Slice(3, 40)
	xs := make([]float32, 30)
	s.Batch([]int{0}, xs, nil)
	require.Equal(t, x[30:60], xs)
	require.Equal(t, "0.25", d.AsAugmentedSource(2).Meta()["data.mean"])
}
