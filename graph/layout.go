package graph

import (
	"fmt"

	G "gorgonia.org/gorgonia"
)

// NodeRole says what a node of a program holds.
type NodeRole int

// The roles of a program's nodes.
const (
	RoleOp     NodeRole = iota // computed by an op of the set
	RoleInput                  // the input batch X [Batch, InC·InH·InW]
	RoleLabels                 // the class indices Y [Batch]
	RoleParam                  // parameter Node.Index of Model.Params
	RoleMask                   // dropout mask Node.Index: 0 with probability DropP, else 1/(1-DropP)
	RoleConst                  // the constant Node.Value (the gradient seed)
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
// the logits and each parameter's gradient.
type Layout struct {
	Nodes  []Node
	Loss   int
	Logits int
	Grads  []int // per Model.Params; nil for an evaluation program
}

// Layout describes the program for a device executor (see [Layout]).
func (p *Program) Layout() (*Layout, error) {
	order, err := G.Sort(p.g)
	if err != nil {
		return nil, fmt.Errorf("graph: ordering the program: %w", err)
	}
	idx := make(map[int64]int, len(order))
	masks := make(map[*G.Node]int, len(p.masks))
	for i, mk := range p.masks {
		masks[mk.node] = i
	}
	l := &Layout{}
	for i := len(order) - 1; i >= 0; i-- { // G.Sort lists consumers first
		n := order[i]
		nd := Node{Shape: n.Shape().Clone()}
		if n.IsScalar() || len(nd.Shape) == 0 {
			nd.Shape = nil
		}
		switch {
		case n == p.x:
			nd.Role = RoleInput
		case n == p.y:
			nd.Role = RoleLabels
		case p.params[n]:
			nd.Role, nd.Index = RoleParam, p.paramI[n]
		default:
			if mi, ok := masks[n]; ok {
				nd.Role, nd.Index, nd.DropP = RoleMask, mi, p.masks[mi].p
				break
			}
			op, ok := n.Op().(Op)
			if !ok {
				v := n.Value()
				if n.Op() == nil || v == nil || n.Op().Arity() != 0 {
					return nil, fmt.Errorf("graph: node %v is neither an op of the set nor an input", n)
				}
				nd.Role, nd.Value = RoleConst, scalarOf(v)
				break
			}
			nd.Role, nd.Op = RoleOp, op
			it := p.g.From(n.ID())
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
	l.Loss, l.Logits = idx[p.loss.ID()], idx[p.logits.ID()]
	if p.grads != nil {
		l.Grads = make([]int, len(p.grads))
		for i, g := range p.grads {
			l.Grads[i] = idx[g.ID()]
		}
	}
	return l, nil
}
