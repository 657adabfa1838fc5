package graph

import (
	"fmt"
	"slices"
)

// OpDef is an op's registration, made once, in the file of its family:
// how to make it outside a graph from its attributes and shapes (NewOp:
// conformance tests, device executors) and its cost in floating-point
// operations. Device executors register their lowering of each kind in
// turn, and their tests fail for a registered kind without one.
type OpDef struct {
	Kind Kind
	// Make builds the op for inputs of shapes in and an output of shape
	// out; attrs are as the op's Attrs reports them.
	Make func(attrs Attrs, in [][]int, out []int) (Op, error)
	// FLOPs is what one run costs (a multiply-add counts two).
	FLOPs func(attrs Attrs, in [][]int, out []int) float64
}

// Attrs are an op's attributes (Op.Attrs), read by kind: a missing or
// mistyped key reads as the zero value. Device executors read them too.
type Attrs map[string]any

// Int is attribute k as an int.
func (a Attrs) Int(k string) int { v, _ := a[k].(int); return v }

// Bool is attribute k as a bool.
func (a Attrs) Bool(k string) bool { v, _ := a[k].(bool); return v }

// String is attribute k as a string.
func (a Attrs) String(k string) string { v, _ := a[k].(string); return v }

// Float is attribute k as a float64 (from a float64, float32 or int).
func (a Attrs) Float(k string) float64 {
	switch v := a[k].(type) {
	case float64:
		return v
	case float32:
		return float64(v)
	case int:
		return float64(v)
	}
	return 0
}

var opDefs = map[Kind]OpDef{}

// registerOp registers d; a kind is registered once.
func registerOp(d OpDef) {
	if _, dup := opDefs[d.Kind]; dup || d.Make == nil || d.FLOPs == nil {
		panic(fmt.Sprintf("graph: bad or second registration of op %s", d.Kind)) // a programming error, at init
	}
	opDefs[d.Kind] = d
}

// LookupOp returns kind's registration.
func LookupOp(kind Kind) (OpDef, bool) {
	d, ok := opDefs[kind]
	return d, ok
}

// OpKinds lists the registered op kinds, sorted.
func OpKinds() []Kind {
	ks := make([]Kind, 0, len(opDefs))
	for k := range opDefs {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// OpFLOPs is the cost of one run of op kind with the given attributes and
// shapes.
func OpFLOPs(kind Kind, attrs map[string]any, in [][]int, out []int) (float64, error) {
	d, ok := opDefs[kind]
	if !ok {
		return 0, fmt.Errorf("graph: %q is not a registered op", kind)
	}
	return d.FLOPs(Attrs(attrs), in, out), nil
}

func prod(s []int) float64 {
	n := 1.0
	for _, d := range s {
		n *= float64(d)
	}
	return n
}

// firstDims is the rank of the first input (0 without inputs).
func firstDims(in [][]int) int {
	if len(in) == 0 {
		return 0
	}
	return len(in[0])
}

// innerDim is the summed dimension of a matrix product out = op(A)·op(B).
func innerDim(in [][]int, out []int) int {
	if len(in) < 2 || len(out) < 1 || len(in[0]) < 2 {
		return 0
	}
	a := in[0]
	if a[0] == out[0] {
		return a[1]
	}
	return a[0]
}

// elementwiseFLOPs counts one operation per output value.
func elementwiseFLOPs(_ Attrs, _ [][]int, out []int) float64 { return prod(out) }
