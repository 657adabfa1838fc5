//go:build !cgo

package gpu

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOpenNVMLWithoutCgo(t *testing.T) {
	n, err := OpenNVML()
	require.ErrorIs(t, err, ErrNoDriver)
	require.True(t, strings.HasPrefix(err.Error(), "no NVIDIA driver found: this gotrain was built without cgo"), err.Error())
	require.Nil(t, n.Devices())
	_, err = n.Sample()
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, n.Close())
}
