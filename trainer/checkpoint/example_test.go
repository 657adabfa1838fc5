package checkpoint_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/gotrain/gotrain/trainer/checkpoint"
)

func Example() {
	dir, err := os.MkdirTemp("", "ckpt-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	m, err := checkpoint.Open(dir, 2) // keep the 2 newest
	if err != nil {
		panic(err)
	}
	for step := int64(100); step <= 300; step += 100 {
		f := &checkpoint.File{
			Tensors: []checkpoint.Tensor{
				checkpoint.F32("fc.weight", []int{2, 2}, []float32{1, 2, 3, float32(step)}),
				checkpoint.I64("step", nil, []int64{step}),
			},
			Metadata: map[string]string{"format": "pt"},
		}
		if _, err := m.Save(step, f); err != nil {
			panic(err)
		}
	}
	paths, _ := m.List()
	for _, p := range paths {
		fmt.Println(filepath.Base(p))
	}

	path, err := checkpoint.Resolve(dir) // a directory resolves to its newest checkpoint
	if err != nil {
		panic(err)
	}
	f, err := checkpoint.ReadFile(path)
	if err != nil {
		panic(err)
	}
	w, _ := f.Get("fc.weight")
	weights := make([]float32, 4)
	if err := w.Float32sInto(weights); err != nil {
		panic(err)
	}
	fmt.Println(w.Shape, weights, f.Metadata["format"])
	// Output:
	// ckpt-0000000200.safetensors
	// ckpt-0000000300.safetensors
	// [2 2] [1 2 3 300] pt
}
