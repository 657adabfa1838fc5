package graph

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	G "gorgonia.org/gorgonia"
)

// TestOpTimes prints where a training step's time goes, op by op
// (GOTRAIN_OPTIMES=1 to run).
func TestOpTimes(t *testing.T) {
	if os.Getenv("GOTRAIN_OPTIMES") == "" {
		t.Skip("set GOTRAIN_OPTIMES=1 to print per-op times")
	}
	m, _ := New(Spec{Kind: os.Getenv("GOTRAIN_OPTIMES_MODEL")}, 1)
	batch := 64
	prog, _ := m.Program(batch, true)
	r := rand.New(rand.NewPCG(1, 2))
	fill(r, prog.X, 1)
	prog.Run(nil)
	sorted, _ := G.Sort(prog.g)
	times := map[string]time.Duration{}
	const reps = 20
	for i := len(sorted) - 1; i >= 0; i-- {
		n := sorted[i]
		op, ok := n.Op().(Op)
		if !ok {
			continue
		}
		var in []G.Value
		_ = in
		st := time.Now()
		for k := 0; k < reps; k++ {
			ins := []G.Value{}
			it := prog.g.From(n.ID())
			for it.Next() {
				ins = append(ins, it.Node().(*G.Node).Value())
			}
			op.Do(ins...)
		}
		times[fmt.Sprintf("%s %v", op.Kind(), n.Shape())] += time.Since(st) / reps
	}
	var total time.Duration
	for k, v := range times {
		t.Logf("%-50s %v", k, v)
		total += v
	}
	t.Logf("total %v", total)
}
