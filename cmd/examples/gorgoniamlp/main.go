// Command gorgoniamlp is gotrain with a model written in Gorgonia's own
// operators: a residual MLP whose layers call gorgonia.Mul,
// gorgonia.BroadcastAdd, gorgonia.Rectify and gorgonia.Add on the nodes
// gotrain gives them, registered as "gorgoniamlp". gotrain differentiates
// it with Gorgonia's Grad and runs it everywhere it runs its own models:
// Gorgonia executes the operators on the CPU, and a device (--device gpu,
// or host) runs them as the op set's kernels (graph's gorgonia.go).
// Everything else is gotrain's command line (cli.Main):
//
//	./gorgoniamlp train --model gorgoniamlp --dataset mnist --out w.safetensors
//	gotrain launch --standalone --nproc-per-node 2 -- ./gorgoniamlp train --model gorgoniamlp
//	./gorgoniamlp eval --checkpoint w.safetensors
//
// The network: x·W1 + b1, ReLU; then --blocks residual blocks
// h + ReLU(h·W + b); then h·Wout + bout. Its weights are [in, out]
// matrices, as gorgonia.Mul(x, W) takes them (named fc1.weight ...;
// PyTorch's Linear stores the transpose). --hidden sets the width
// (default 128).
package main

import (
	"fmt"
	"os"

	G "gorgonia.org/gorgonia"

	"github.com/gotrain/gotrain/cmd/gotrain/cli"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/graph/nn"
)

// blocks is how many residual blocks the network has.
const blocks = 2

// dense is x·W + b with Gorgonia's operators: W [in, out], b [out]
// broadcast over the batch.
type dense struct{ w, b *nn.Param }

func newDense(s *nn.Scope, in, out int) dense {
	return dense{w: s.Param("weight", nn.FanIn(in), in, out), b: s.Param("bias", nn.FanIn(in), out)}
}

func (d dense) apply(c nn.Ctx, x nn.T) nn.T {
	if x == nil {
		return nil
	}
	if x.Dims() > 2 { // an image batch: one row per sample
		var err error
		if x, err = G.Reshape(x, []int{x.Shape()[0], x.Shape().TotalSize() / x.Shape()[0]}); err != nil {
			c.Fail(err)
			return nil
		}
	}
	xw, err := G.Mul(x, c.Param(d.w))
	if err != nil {
		c.Fail(fmt.Errorf("%s: %w", d.w.Name, err))
		return nil
	}
	y, err := G.BroadcastAdd(xw, c.Param(d.b), nil, []byte{0})
	if err != nil {
		c.Fail(fmt.Errorf("%s: %w", d.b.Name, err))
	}
	return y
}

func relu(c nn.Ctx, x nn.T) nn.T {
	if x == nil {
		return nil
	}
	y, err := G.Rectify(x)
	if err != nil {
		c.Fail(err)
	}
	return y
}

// NewMLP declares the network for spec's input and classes.
func NewMLP(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
	hidden := 128
	if len(spec.Hidden) > 0 {
		hidden = spec.Hidden[0]
	}
	if hidden < 1 || len(spec.Hidden) > 1 {
		return nil, fmt.Errorf("gorgoniamlp takes one --hidden width, got %v", spec.Hidden)
	}
	in := spec.InC * spec.InH * spec.InW
	first := newDense(s.Sub("fc1"), in, hidden)
	layers := []nn.Module{nn.Func(func(c nn.Ctx, x nn.T) nn.T { return relu(c, first.apply(c, x)) })}
	for i := range blocks {
		d := newDense(s.Sub("blocks").Index(i), hidden, hidden)
		layers = append(layers, nn.Func(func(c nn.Ctx, h nn.T) nn.T {
			r := relu(c, d.apply(c, h))
			if r == nil {
				return nil
			}
			y, err := G.Add(h, r)
			if err != nil {
				c.Fail(err)
			}
			return y
		}))
	}
	last := newDense(s.Sub("head"), hidden, spec.Classes)
	layers = append(layers, nn.Func(func(c nn.Ctx, x nn.T) nn.T { return last.apply(c, x) }))
	return nn.Seq(layers...), nil
}

func main() {
	if err := graph.Register("gorgoniamlp", NewMLP); err != nil {
		fmt.Fprintln(os.Stderr, "gorgoniamlp:", err)
		os.Exit(1)
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
