package graph

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Gorgonia's own operators that a program may hold. Gorgonia's Grad sums
// the gradients of a node with several consumers with its own Add (a
// residual connection, a tied weight), and a model may write Add itself
// (nn.Ctx.Add), so the set recognises that operator: a node of it is run
// by Gorgonia on the CPU, and a device executor runs it as the op of the
// set that computes the same (OpAdd). Any other operator of Gorgonia's is
// refused when the program is compiled, naming it.

// recognise returns the op of the set that computes a Gorgonia operator
// node of inputs in and output out, or false.
func recognise(op G.Op, in []tensor.Shape, out tensor.Shape) (Op, bool) {
	if fmt.Sprintf("%T", op) == "gorgonia.elemBinOp" && op.String() == "+ false" &&
		len(in) == 2 && in[0].Eq(in[1]) && in[0].Eq(out) && len(out) > 0 {
		return newAdd(len(out)), true
	}
	return nil, false
}

// recogniseNode is recognise for a node of g.
func recogniseNode(g *G.ExprGraph, n *G.Node) (Op, bool) {
	var in []tensor.Shape
	it := g.From(n.ID())
	for it.Next() {
		in = append(in, it.Node().(*G.Node).Shape())
	}
	return recognise(n.Op(), in, n.Shape())
}

// ---- Add: Y = A + B elementwise, the same shapes ----

type addOp struct{ base }

func newAdd(d int) *addOp { return &addOp{newBase(OpAdd, nil, tt(d), tt(d), tt(d))} }

func (o *addOp) InferShape(ds ...G.DimSizer) (tensor.Shape, error) {
	if !shapeOf(ds[0]).Eq(shapeOf(ds[1])) {
		return nil, fmt.Errorf("%s: shapes %v and %v differ", OpAdd, ds[0], ds[1])
	}
	return shapeOf(ds[0]).Clone(), nil
}

func (o *addOp) Do(in ...G.Value) (G.Value, error) {
	out := o.output(dims(in[0])...)
	a, b, y := f32(in[0]), f32(in[1]), f32(out)
	b, y = b[:len(a)], y[:len(a)]
	for i, v := range a {
		y[i] = v + b[i]
	}
	return out, nil
}

func (o *addOp) DiffWRT(int) []bool { return []bool{true, true} }

func (o *addOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	return G.Nodes{grad, grad}, nil
}
