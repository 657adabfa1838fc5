// Package nvrtc compiles CUDA C to PTX with NVIDIA's runtime compiler,
// loaded at run time.
//
// Nothing is linked at build time and no CUDA header is needed: Load opens
// libnvrtc (sonames 13, 12 and 11.2, or the file GOTRAIN_NVRTC_LIBRARY
// names) with dlopen and resolves the seven functions it uses, whose
// signatures have not changed since CUDA 9. Compiling needs no GPU, so the
// test that compiles csrc/kernels.cu for several architectures runs
// wherever the library is installed (CI installs Debian's CUDA 11.8), and
// skips, saying so, where it is not.
//
// [Assemble] goes one step further, to machine code for one GPU
// generation, and returns ptxas's report of each kernel's registers, stack
// and spills: what the driver would make of the PTX, read without a GPU.
// A test holds every kernel to no spills and at most 64 registers.
//
// gpu/cuda compiles the kernels with it when it opens a device.
package nvrtc

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo CFLAGS: -D_GNU_SOURCE
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef struct _nvrtcProgram *nvrtcProgram;
typedef int (*create_t)(nvrtcProgram *, const char *, const char *, int, const char *const *, const char *const *);
typedef int (*compile_t)(nvrtcProgram, int, const char *const *);
typedef int (*size_t_fn)(nvrtcProgram, size_t *);
typedef int (*get_t)(nvrtcProgram, char *);
typedef int (*destroy_t)(nvrtcProgram *);
typedef const char *(*errstr_t)(int);

static void *lib;
static create_t p_create;
static compile_t p_compile;
static size_t_fn p_ptx_size, p_log_size;
static get_t p_ptx, p_log;
static destroy_t p_destroy;
static errstr_t p_errstr;

#define SYM(var, name) do { *(void **)(&var) = dlsym(lib, name); if (var == NULL) return name; } while (0)

// load returns NULL, "lib" when no library opens, or the missing symbol.
static const char *load(const char *override) {
	const char *names[] = {override, "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"};
	for (int i = 0; i < 5 && lib == NULL; i++)
		if (names[i] != NULL && names[i][0] != 0) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) return "lib";
	SYM(p_create, "nvrtcCreateProgram");
	SYM(p_compile, "nvrtcCompileProgram");
	SYM(p_ptx_size, "nvrtcGetPTXSize");
	SYM(p_ptx, "nvrtcGetPTX");
	SYM(p_log_size, "nvrtcGetProgramLogSize");
	SYM(p_log, "nvrtcGetProgramLog");
	SYM(p_destroy, "nvrtcDestroyProgram");
	SYM(p_errstr, "nvrtcGetErrorString");
	return NULL;
}

static const char *lib_path(void) {
	Dl_info info;
	if (lib != NULL && p_create != NULL && dladdr((void *)p_create, &info) && info.dli_fname != NULL) return info.dli_fname;
	return "";
}

static const char *errstr(int r) { return p_errstr(r); }

// compile returns the PTX (malloc'd) when want_ptx, else src itself, or
// NULL on failure, with *res; *log (malloc'd) is the compiler's log either
// way.
static char *compile(const char *src, const char *const *opts, int nopts, int want_ptx, char **log, int *res) {
	nvrtcProgram prog;
	*log = NULL;
	if ((*res = p_create(&prog, src, "kernels.cu", 0, NULL, NULL)) != 0) return NULL;
	*res = p_compile(prog, nopts, opts);
	size_t n = 0;
	if (p_log_size(prog, &n) == 0 && n > 0) {
		*log = malloc(n);
		p_log(prog, *log);
	}
	if (*res != 0) {
		p_destroy(&prog);
		return NULL;
	}
	if (!want_ptx) {
		p_destroy(&prog);
		return (char *)src;
	}
	char *ptx = NULL;
	if ((*res = p_ptx_size(prog, &n)) == 0) {
		ptx = malloc(n);
		*res = p_ptx(prog, ptx);
	}
	p_destroy(&prog);
	if (*res != 0) {
		free(ptx);
		return NULL;
	}
	return ptx;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// ErrNotFound is returned when no libnvrtc can be loaded.
var ErrNotFound = errors.New("nvrtc: libnvrtc cannot be loaded (tried sonames 13, 12 and 11.2; GOTRAIN_NVRTC_LIBRARY names a file): install it (pip: nvidia-cuda-nvrtc; Debian: libnvrtc11.2) or add its folder to LD_LIBRARY_PATH")

var (
	once    sync.Once
	loadErr error
	mu      sync.Mutex
)

// Load opens libnvrtc once; later calls return the first result.
func Load() error {
	once.Do(func() {
		o := C.CString(os.Getenv("GOTRAIN_NVRTC_LIBRARY"))
		defer C.free(unsafe.Pointer(o))
		switch missing := C.load(o); {
		case missing == nil:
		case C.GoString(missing) == "lib":
			loadErr = ErrNotFound
		default:
			loadErr = fmt.Errorf("nvrtc: %s has no symbol %s: it is older than gotrain supports", C.GoString(C.lib_path()), C.GoString(missing))
		}
	})
	return loadErr
}

// Library is the path of the loaded libnvrtc ("" before Load).
func Library() string {
	if Load() != nil {
		return ""
	}
	return C.GoString(C.lib_path())
}

// Compile compiles CUDA C source (named name in messages) to PTX for
// compute capability arch, e.g. "90", with extra options.
func Compile(source, arch string, options ...string) (string, error) {
	ptx, _, err := compile(source, "compute_"+arch, true, options)
	return ptx, err
}

// Resources is what ptxas reports for one kernel: the registers each
// thread uses, and the bytes of its stack frame and of the spills to local
// memory (device memory behind the caches) that too few registers cost.
type Resources struct {
	Registers, StackBytes, SpillStoreBytes, SpillLoadBytes int
}

// Assemble compiles CUDA C source to machine code for sm_arch, e.g. "90",
// as the driver does with the PTX at load time, and returns ptxas's
// resource report for each kernel, by name. It needs no GPU.
func Assemble(source, arch string, options ...string) (map[string]Resources, error) {
	_, log, err := compile(source, "sm_"+arch, false, append(options, "-Xptxas", "-v"))
	if err != nil {
		return nil, err
	}
	return parseResources(log)
}

var (
	entryRe = regexp.MustCompile(`Compiling entry function '([^']+)'`)
	frameRe = regexp.MustCompile(`(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads`)
	regsRe  = regexp.MustCompile(`Used (\d+) registers`)
)

// parseResources reads ptxas's verbose report: for each kernel a
// "Compiling entry function" line, then its stack frame and spills, then
// its registers.
func parseResources(log string) (map[string]Resources, error) {
	out := map[string]Resources{}
	cur := ""
	for _, line := range strings.Split(log, "\n") {
		if m := entryRe.FindStringSubmatch(line); m != nil {
			cur = m[1]
			out[cur] = Resources{}
			continue
		}
		if cur == "" {
			continue
		}
		r := out[cur]
		if m := frameRe.FindStringSubmatch(line); m != nil {
			r.StackBytes, _ = strconv.Atoi(m[1])
			r.SpillStoreBytes, _ = strconv.Atoi(m[2])
			r.SpillLoadBytes, _ = strconv.Atoi(m[3])
		}
		if m := regsRe.FindStringSubmatch(line); m != nil {
			r.Registers, _ = strconv.Atoi(m[1])
		}
		out[cur] = r
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("nvrtc: no resource report in the compiler's log (does this libnvrtc take -Xptxas -v?):\n%s", log)
	}
	return out, nil
}

// compile runs NVRTC for --gpu-architecture=arch; it returns the PTX when
// wantPTX, and the compiler's log.
func compile(source, arch string, wantPTX bool, options []string) (ptx, log string, err error) {
	if err := Load(); err != nil {
		return "", "", err
	}
	mu.Lock() // one compilation at a time: cheap, and nothing depends on NVRTC's thread safety
	defer mu.Unlock()
	opts := append([]string{"--gpu-architecture=" + arch}, options...)
	copts := C.malloc(C.size_t(len(opts)) * C.size_t(unsafe.Sizeof(uintptr(0))))
	defer C.free(copts)
	ptrs := unsafe.Slice((**C.char)(copts), len(opts))
	for i, o := range opts {
		ptrs[i] = C.CString(o)
		defer C.free(unsafe.Pointer(ptrs[i]))
	}
	src := C.CString(source)
	defer C.free(unsafe.Pointer(src))
	var clog *C.char
	var res C.int
	want := C.int(0)
	if wantPTX {
		want = 1
	}
	out := C.compile(src, (**C.char)(copts), C.int(len(opts)), want, &clog, &res)
	if clog != nil {
		log = strings.TrimSpace(C.GoString(clog))
		C.free(unsafe.Pointer(clog))
	}
	if out == nil {
		return "", log, fmt.Errorf("nvrtc: compiling for %s: %s (%d)\n%s", arch, C.GoString(C.errstr(res)), int(res), log)
	}
	if wantPTX {
		defer C.free(unsafe.Pointer(out))
		ptx = C.GoString(out)
	}
	return ptx, log, nil
}
