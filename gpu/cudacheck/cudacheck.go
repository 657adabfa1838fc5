//go:build gpu

package cudacheck

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>

typedef int (*cu_init_t)(unsigned int);
typedef int (*cu_error_t)(int, const char **);

// check calls cuInit(0) from libcuda.so.1. It returns -1 when the library
// or the symbol is missing, else cuInit's result, with its name and text.
static int check(const char **name, const char **text) {
	void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) return -1;
	cu_init_t init = (cu_init_t)dlsym(lib, "cuInit");
	if (init == NULL) return -1;
	int r = init(0);
	cu_error_t n = (cu_error_t)dlsym(lib, "cuGetErrorName");
	cu_error_t s = (cu_error_t)dlsym(lib, "cuGetErrorString");
	if (r != 0 && n != NULL) n(r, name);
	if (r != 0 && s != NULL) s(r, text);
	return r;
}
*/
import "C"

import (
	"fmt"
	"os"
	"testing"
)

// Err is why the CUDA driver cannot be used (nil: it can).
var Err = check()

func check() error {
	var name, text *C.char
	switch r := C.check(&name, &text); r {
	case 0:
		return nil
	case -1:
		return fmt.Errorf("libcuda.so.1 (the NVIDIA driver's CUDA library) cannot be loaded")
	default:
		return fmt.Errorf("cuInit returned %d %s (%s)", int(r), C.GoString(name), C.GoString(text))
	}
}

func init() {
	if Err == nil {
		return
	}
	if testing.Testing() {
		fmt.Fprintf(os.Stderr, "--- SKIP: every test of this binary needs a GPU, and the CUDA driver cannot be used here: %v\n", Err)
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "gotrain: this is the GPU build of gotrain, and the CUDA driver cannot be used here: %v.\n"+
		"Run it on a machine with an NVIDIA GPU and its driver (in a container: 'docker run --gpus all', or request nvidia.com/gpu in Kubernetes), "+
		"or use the CPU build ('make build', image gotrain:cpu).\n", Err)
	os.Exit(1)
}
