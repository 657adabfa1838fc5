package nvrtc

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/csrc"
)

// TestKernelsCompile compiles csrc/kernels.cu with the real NVRTC for
// Volta, Ampere and Hopper: every kernel is in the PTX under its own
// (unmangled) name.
func TestKernelsCompile(t *testing.T) {
	if err := Load(); errors.Is(err, ErrNotFound) {
		t.Skipf("needs libnvrtc (make deps-cuda installs Debian's; CI has it): %v", err)
	}
	t.Logf("NVRTC: %s", Library())
	for _, arch := range []string{"70", "80", "90"} {
		ptx, err := Compile(csrc.Source, arch, "--std=c++11")
		require.NoError(t, err, "compute_%s", arch)
		require.Contains(t, ptx, ".target sm_"+arch)
		for _, k := range csrc.Kernels {
			require.True(t, strings.Contains(ptx, ".entry "+k+"("), "compute_%s: kernel %s is not in the PTX", arch, k)
		}
	}
}

func TestCompileErrorsCarryTheLog(t *testing.T) {
	if err := Load(); errors.Is(err, ErrNotFound) {
		t.Skipf("needs libnvrtc: %v", err)
	}
	_, err := Compile(`extern "C" __global__ void k(float *x) { x[0] = undefined_name; }`, "70")
	require.ErrorContains(t, err, "undefined_name")
	require.ErrorContains(t, err, "compute_70")
}
