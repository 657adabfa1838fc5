//go:build !cgo

package nccl

import "fmt"

// Load always fails in a build without cgo: the package dlopens libnccl,
// which needs cgo (CGO_ENABLED=1 and a C compiler). The error wraps both
// ErrNoCgo and ErrLibraryNotFound, so callers that fall back to another
// backend when NCCL is absent do so here too.
func Load(path string) (*Library, error) {
	return nil, fmt.Errorf("%w (%w)", ErrNoCgo, ErrLibraryNotFound)
}

// abiLayout is empty without cgo.
func abiLayout() map[string]int { return nil }
