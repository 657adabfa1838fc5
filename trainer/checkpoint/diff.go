package checkpoint

import (
	"fmt"
	"math"
)

// MaxAbsDiff is the largest |a−b| over the float32 tensors of two files
// with the same tensors (names, order, shapes): how far apart two runs'
// weights ended. Any other difference is an error that names it.
func MaxAbsDiff(a, b *File) (float64, error) {
	if len(a.Tensors) != len(b.Tensors) {
		return 0, fmt.Errorf("checkpoint: %d tensors against %d", len(a.Tensors), len(b.Tensors))
	}
	d := 0.0
	for i, ta := range a.Tensors {
		tb := b.Tensors[i]
		if ta.Name != tb.Name || fmt.Sprint(ta.Shape) != fmt.Sprint(tb.Shape) {
			return 0, fmt.Errorf("checkpoint: tensor %d is %s %v against %s %v", i, ta.Name, ta.Shape, tb.Name, tb.Shape)
		}
		x, err := ta.Float32s()
		if err != nil {
			return 0, err
		}
		y, err := tb.Float32s()
		if err != nil {
			return 0, err
		}
		for j := range x {
			d = math.Max(d, math.Abs(float64(x[j])-float64(y[j])))
		}
	}
	return d, nil
}

// MaxAbsDiffFiles is MaxAbsDiff of the files at two paths.
func MaxAbsDiffFiles(a, b string) (float64, error) {
	fa, err := ReadFile(a)
	if err != nil {
		return 0, err
	}
	fb, err := ReadFile(b)
	if err != nil {
		return 0, err
	}
	return MaxAbsDiff(fa, fb)
}
