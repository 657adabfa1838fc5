package graph

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// NewOp builds one op of the set outside any graph, for executors'
// conformance tests: its Do is the CPU reference an executor's kernels are
// compared with. attrs are the op's attributes as Attrs reports them; in
// are the shapes of its inputs, out the shape of its output (needed by the
// convolution gradients, which produce a given shape). It is the Make of
// the kind's registration (see OpDef).
func NewOp(kind Kind, attrs map[string]any, in [][]int, out []int) (Op, error) {
	d, ok := LookupOp(kind)
	if !ok {
		return nil, fmt.Errorf("graph: %q is not an op of the set (registered: %v)", kind, OpKinds())
	}
	return d.Make(Attrs(attrs), in, out)
}

// Run runs a standalone op on float32 inputs of the given shapes (a
// scalar input is a one-element slice with a nil shape) and returns its
// output and the output's shape (nil for a scalar).
func Run(op Op, in [][]float32, shapes [][]int) ([]float32, []int, error) {
	vals := make([]G.Value, len(in))
	for i, x := range in {
		if shapes[i] == nil {
			v := G.F32(x[0])
			vals[i] = &v
			continue
		}
		vals[i] = tensor.New(tensor.WithShape(shapes[i]...), tensor.WithBacking(x))
	}
	out, err := op.Do(vals...)
	if err != nil {
		return nil, nil, err
	}
	if s, ok := out.(*G.F32); ok {
		return []float32{float32(*s)}, nil, nil
	}
	return f32(out), out.Shape().Clone(), nil
}
