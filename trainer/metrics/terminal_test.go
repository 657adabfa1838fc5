package metrics

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestIsTerminalNonTerminals(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "file"))
	require.NoError(t, err)
	defer f.Close()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	closed, err := os.Create(filepath.Join(t.TempDir(), "closed"))
	require.NoError(t, err)
	require.NoError(t, closed.Close())

	tests := []struct {
		name string
		f    *os.File
	}{
		{"nil", nil},
		{"regular file", f},
		{"pipe read end", r},
		{"pipe write end", w},
		{"closed file", closed},
	}
	for _, tt := range tests {
		require.False(t, IsTerminal(tt.f), tt.name)
	}
}

func TestTerminalWidthFallback(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "file"))
	require.NoError(t, err)
	defer f.Close()
	t.Setenv("COLUMNS", "132")
	require.Equal(t, 132, terminalWidth(f), "not a terminal: $COLUMNS")
	t.Setenv("COLUMNS", "junk")
	require.Equal(t, 80, terminalWidth(f), "default")
}
