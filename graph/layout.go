package graph

import (
	"fmt"

	G "gorgonia.org/gorgonia"
)

// NodeRole says what a node of a program holds.
type NodeRole int

// The roles of a program's nodes.
const (
	RoleOp       NodeRole = iota // computed by an op of the set
	RoleInput                    // the input batch X [Batch, InC·InH·InW], or a stage's input activations
	RoleLabels                   // the class indices Y [Batch] (a model's program, a pipeline's last stage)
	RoleParam                    // parameter Node.Index of Model.Params
	RoleMask                     // dropout mask Node.Index: 0 with probability DropP, else 1/(1-DropP)
	RoleConst                    // the constant Node.Value (the gradient seed)
	RoleUpstream                 // the gradient of a stage's output, sent back by the next stage (StageProgram.G)
)

// Node is one node of a program's [Layout].
type Node struct {
	Role   NodeRole
	Op     Op    // RoleOp
	Inputs []int // RoleOp: indices of the input nodes in Layout.Nodes, in argument order
	Shape  []int // nil: a scalar
	Index  int   // RoleParam, RoleMask
	Value  float32
	DropP  float64
}

// Layout is a program as a device executor runs it: its nodes in an order
// where every node comes after its inputs, and which of them hold the loss,
// the output and each parameter's gradient.
type Layout struct {
	Nodes []Node
	// Loss is the mean loss: a model's program, a pipeline's last stage;
	// -1 for the other stages, which have no labels.
	Loss int
	// Out is the output: the logits of a model's program and of a
	// pipeline's last stage, the activations a stage sends on otherwise.
	Out int
	// Grads are the parameters' gradients: per Model.Params for a model's
	// program, per Stage.Params for a stage's; nil for evaluation.
	Grads []int
	// DX is the gradient of the input, which a training program of a
	// stage after the first sends back (-1 elsewhere).
	DX int
}

// layoutOf is what a layout is made from: a program's graph and the nodes
// that play a part.
type layoutOf struct {
	g         *G.ExprGraph
	x, y, up  *G.Node         // y, up: nil when absent
	paramI    map[*G.Node]int // parameter nodes: their index in Model.Params
	masks     []dropMask
	loss, out *G.Node // loss: nil when absent
	grads     []*G.Node
	dx        *G.Node // nil when absent
}

// Layout describes the program for a device executor (see [Layout]).
func (p *Program) Layout() (*Layout, error) {
	return layoutOf{g: p.g, x: p.x, y: p.y, paramI: p.paramI, masks: p.masks, loss: p.loss, out: p.logits, grads: p.grads}.build()
}

// Layout describes the stage's program for a device executor (see
// [Layout]): its parameters' gradients are in Stage.Params order, its
// parameter nodes' Index is their place in Model.Params.
func (p *StageProgram) Layout() (*Layout, error) {
	l := layoutOf{g: p.g, x: p.x, y: p.y, up: p.up, paramI: p.paramI, masks: p.masks, loss: p.loss, out: p.out}
	if p.grads != nil {
		l.grads = p.grads
		if p.hasDX {
			l.grads, l.dx = p.grads[:len(p.grads)-1], p.grads[len(p.grads)-1]
		}
	}
	return l.build()
}

func (src layoutOf) build() (*Layout, error) {
	order, err := G.Sort(src.g)
	if err != nil {
		return nil, fmt.Errorf("graph: ordering the program: %w", err)
	}
	idx := make(map[int64]int, len(order))
	masks := make(map[*G.Node]int, len(src.masks))
	for i, mk := range src.masks {
		masks[mk.node] = i
	}
	l := &Layout{Loss: -1, DX: -1}
	for i := len(order) - 1; i >= 0; i-- { // G.Sort lists consumers first
		n := order[i]
		nd := Node{Shape: n.Shape().Clone()}
		if n.IsScalar() || len(nd.Shape) == 0 {
			nd.Shape = nil
		}
		pi, isParam := src.paramI[n]
		switch {
		case n == src.x:
			nd.Role = RoleInput
		case src.y != nil && n == src.y:
			nd.Role = RoleLabels
		case src.up != nil && n == src.up:
			nd.Role = RoleUpstream
		case isParam:
			nd.Role, nd.Index = RoleParam, pi
		default:
			if mi, ok := masks[n]; ok {
				nd.Role, nd.Index, nd.DropP = RoleMask, mi, src.masks[mi].p
				break
			}
			op, ok := n.Op().(Op)
			if !ok && n.Op() != nil && n.Op().Arity() > 0 {
				if v, isConst := constantOf(n); isConst { // SizeOf: known from the shapes
					nd.Role, nd.Value, nd.Shape = RoleConst, v, nil
					break
				}
				op, ok = recogniseNode(src.g, n) // a Gorgonia operator, as the op of the set it computes
			}
			if !ok {
				v := n.Value()
				if n.Op() == nil || v == nil || n.Op().Arity() != 0 {
					return nil, fmt.Errorf("graph: node %v is neither an op of the set nor an input", n)
				}
				nd.Role, nd.Value = RoleConst, scalarOf(v)
				break
			}
			nd.Role, nd.Op = RoleOp, op
			it := src.g.From(n.ID())
			for it.Next() {
				j, ok := idx[it.Node().ID()]
				if !ok {
					return nil, fmt.Errorf("graph: node %v comes before its input", n)
				}
				nd.Inputs = append(nd.Inputs, j)
			}
		}
		idx[n.ID()] = len(l.Nodes)
		l.Nodes = append(l.Nodes, nd)
	}
	at := func(n *G.Node) (int, error) {
		i, ok := idx[n.ID()]
		if !ok {
			return 0, fmt.Errorf("graph: node %v is not in the program", n)
		}
		return i, nil
	}
	if src.loss != nil {
		if l.Loss, err = at(src.loss); err != nil {
			return nil, err
		}
	}
	if l.Out, err = at(src.out); err != nil {
		return nil, err
	}
	if src.dx != nil {
		if l.DX, err = at(src.dx); err != nil {
			return nil, err
		}
	}
	if src.grads != nil {
		l.Grads = make([]int, len(src.grads))
		for i, g := range src.grads {
			if l.Grads[i], err = at(g); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}
