package executor

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/graph"
)

// Every op graph/ registers has a device lowering here, and every lowering
// is of a registered op: adding an op to the set without its device side
// fails here, not on a GPU.
func TestEveryRegisteredOpHasALowering(t *testing.T) {
	kinds := graph.OpKinds()
	require.NotEmpty(t, kinds)
	for _, k := range kinds {
		_, ok := lowerings[k]
		require.True(t, ok, "op %s is registered in graph/ and has no device lowering", k)
	}
	for k := range lowerings {
		_, ok := graph.LookupOp(k)
		require.True(t, ok, "lowering of %s, which graph/ does not register", k)
	}
	_, err := newOp("NoSuchOp", nil, nil, nil, 0, nil, nil)
	require.ErrorContains(t, err, `"NoSuchOp" is not an op of graph/'s set`)
}
