package main

import (
	"bufio"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
)

// The example's data: 20 float features and 12 classes, each class a
// mixture of two Gaussian clusters in feature space (so that no linear
// model separates them), features on scales from 0.1 to 100 (so that
// standardisation matters). Deterministic from the seed.
const (
	features = 20
	classes  = 12
)

// genData writes dir/train.csv (nTrain rows) and dir/test.csv (nTest).
func genData(dir string, nTrain, nTest int, seed uint64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, 0xc5f))
	centers := make([][]float64, 2*classes)
	for k := range centers {
		centers[k] = make([]float64, features)
		for j := range centers[k] {
			centers[k][j] = 1.1 * r.NormFloat64()
		}
	}
	scale := make([]float64, features)
	for j := range scale {
		scale[j] = math.Pow(10, -1+3*float64(j)/float64(features-1))
	}
	for _, split := range []struct {
		name string
		n    int
	}{{"train.csv", nTrain}, {"test.csv", nTest}} {
		if err := writeSplit(filepath.Join(dir, split.name), split.n, centers, scale, r); err != nil {
			return err
		}
	}
	return nil
}

func writeSplit(path string, n int, centers [][]float64, scale []float64, r *rand.Rand) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for j := range features {
		fmt.Fprintf(w, "f%02d,", j)
	}
	fmt.Fprintln(w, "label")
	for range n {
		k := r.IntN(len(centers))
		for j := range features {
			v := (centers[k][j] + 1.2*r.NormFloat64()) * scale[j]
			w.WriteString(strconv.FormatFloat(v, 'g', 7, 64))
			w.WriteByte(',')
		}
		fmt.Fprintln(w, k%classes)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
