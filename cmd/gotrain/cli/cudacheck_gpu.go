//go:build gpu

package cli

// The gpu build: say clearly what is wrong when the CUDA driver cannot be
// used, before gorgonia.org/cu's own init exits the process (see package
// gpu/cudacheck).
import _ "github.com/gotrain/gotrain/gpu/cudacheck"
