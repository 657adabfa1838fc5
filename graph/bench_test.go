package graph

import (
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/gotrain/gotrain/graph/cblas"
)

func benchStep(b *testing.B, spec Spec, batch int) {
	cblas.SetThreads(runtime.GOMAXPROCS(0))
	m, err := New(spec, 1)
	if err != nil {
		b.Fatal(err)
	}
	prog, err := m.Program(batch, true)
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	fill(r, prog.X, 1)
	for i := range prog.Y {
		prog.Y[i] = float32(i % 10)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := prog.Run(nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "samples/s")
}

// BenchmarkMLPStep is forward and backward of the 784-256-10 MLP, batch 128.
func BenchmarkMLPStep(b *testing.B) { benchStep(b, Spec{Kind: "mlp"}, 128) }

// BenchmarkCNNStep is forward and backward of the CNN, batch 64.
func BenchmarkCNNStep(b *testing.B) { benchStep(b, Spec{Kind: "cnn"}, 64) }

// BenchmarkResNet20Step is forward and backward of ResNet-20 on 1x28x28
// inputs, batch 128 (`make bench`'s resnet20 configuration).
func BenchmarkResNet20Step(b *testing.B) { benchStep(b, Spec{Kind: "resnet", Depth: 20}, 128) }
