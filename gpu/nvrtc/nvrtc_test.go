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

// TestKernelsAssembleWithoutSpills takes csrc/kernels.cu through ptxas,
// inside NVRTC, for Ampere and Hopper, as the driver does with the PTX
// when gpu/cuda loads it: every kernel assembles with no stack frame and
// no spills to local memory, in at most 64 registers a thread (an SM's
// 65,536 registers then hold four blocks of 256 threads; more registers
// would halve that).
func TestKernelsAssembleWithoutSpills(t *testing.T) {
	if err := Load(); errors.Is(err, ErrNotFound) {
		t.Skipf("needs libnvrtc (make deps-cuda installs Debian's; CI has it): %v", err)
	}
	for _, arch := range []string{"80", "90"} {
		res, err := Assemble(csrc.Source, arch, "--std=c++11")
		require.NoError(t, err, "sm_%s", arch)
		require.Len(t, res, len(csrc.Kernels), "sm_%s: a report per kernel", arch)
		most := ""
		for _, k := range csrc.Kernels {
			r, ok := res[k]
			require.True(t, ok, "sm_%s: no report for %s", arch, k)
			require.Positive(t, r.Registers, "sm_%s %s", arch, k)
			require.LessOrEqual(t, r.Registers, 64, "sm_%s %s", arch, k)
			require.Zero(t, r.StackBytes, "sm_%s %s: stack frame", arch, k)
			require.Zero(t, r.SpillStoreBytes+r.SpillLoadBytes, "sm_%s %s: spills", arch, k)
			if most == "" || r.Registers > res[most].Registers {
				most = k
			}
		}
		t.Logf("sm_%s: %d kernels, no spills; most registers: %s, %d", arch, len(res), most, res[most].Registers)
	}
}

func TestParseResources(t *testing.T) {
	log := `ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'adam' for 'sm_90'
ptxas info    : Function properties for adam
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 46 registers
ptxas info    : Compiling entry function 'fill' for 'sm_90'
ptxas info    : Function properties for fill
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, 380 bytes cmem[0]`
	res, err := parseResources(log)
	require.NoError(t, err)
	require.Equal(t, map[string]Resources{
		"adam": {Registers: 46, StackBytes: 8, SpillStoreBytes: 4, SpillLoadBytes: 12},
		"fill": {Registers: 10},
	}, res)
	_, err = parseResources("ptxas info    : 0 bytes gmem")
	require.ErrorContains(t, err, "no resource report")
}

func TestCompileErrorsCarryTheLog(t *testing.T) {
	if err := Load(); errors.Is(err, ErrNotFound) {
		t.Skipf("needs libnvrtc: %v", err)
	}
	_, err := Compile(`extern "C" __global__ void k(float *x) { x[0] = undefined_name; }`, "70")
	require.ErrorContains(t, err, "undefined_name")
	require.ErrorContains(t, err, "compute_70")
}
