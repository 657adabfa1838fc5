package cblas

import (
	"os"

	"golang.org/x/sys/cpu"
)

// On a CPU with AVX-512, OpenBLAS (0.3.21, Debian's) picks its AVX-512
// kernels, whose rounding of a row of C depends on how many rows the
// product has: a batch split across ranks or micro-batches then no
// longer gives one process's numbers bit for bit, and a training run
// that magnifies its last bits (ReLU kinks, Adam on near-zero gradients)
// drifts far from it (4 ranks of 16 rows against one process of 64:
// 0.028 after 100 SGD steps, where its AVX2 kernels give 1.3e-7). Its
// AVX2 ("Haswell") kernels round a row the same whatever the rows around
// it, and run ResNets and MLPs as fast here; unless the user chose
// (OPENBLAS_CORETYPE set), they are what OpenBLAS loads with, before any
// library opens it (fakecuda's cuBLAS included).
func init() {
	if os.Getenv("OPENBLAS_CORETYPE") == "" && cpu.X86.HasAVX512F && cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		_ = os.Setenv("OPENBLAS_CORETYPE", "Haswell")
	}
}
