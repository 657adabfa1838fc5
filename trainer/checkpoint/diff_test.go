package checkpoint

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMaxAbsDiff(t *testing.T) {
	f := func(name string, v ...float32) *File {
		return &File{Tensors: []Tensor{F32(name, []int{len(v)}, v)}}
	}
	d, err := MaxAbsDiff(f("w", 1, 2, 3), f("w", 1, 2.5, 2))
	require.NoError(t, err)
	require.Equal(t, 1.0, d)
	_, err = MaxAbsDiff(f("w", 1), f("v", 1))
	require.ErrorContains(t, err, "tensor 0 is w [1] against v [1]")
	_, err = MaxAbsDiff(f("w", 1), f("w", 1, 2))
	require.ErrorContains(t, err, "against w [2]")
	_, err = MaxAbsDiff(f("w", 1), &File{})
	require.ErrorContains(t, err, "1 tensors against 0")
}
