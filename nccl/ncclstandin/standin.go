// Package ncclstandin builds the NCCL test double in nccl/testdata/standin
// (a libnccl.so.2 over host memory, see its README.md) for tests that load
// NCCL with dlopen on machines without a GPU.
package ncclstandin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	once     sync.Once
	libPath  string
	skipMsg  string
	buildErr error
)

// SourceDir is the directory holding standin.c, driver.c and README.md.
func SourceDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("..", "testdata", "standin")
	}
	return filepath.Join(filepath.Dir(file), "..", "testdata", "standin")
}

// Compiler is the C compiler used: $CC's first word if set, else gcc. It
// returns "" if that is not on PATH.
func Compiler() string {
	cc := "gcc"
	if f := strings.Fields(os.Getenv("CC")); len(f) > 0 {
		cc = f[0]
	}
	p, err := exec.LookPath(cc)
	if err != nil {
		return ""
	}
	return p
}

// Build compiles the stand-in with gcc into dir/libnccl.so.2 and returns its
// path; it skips the test (t.Skip) if no C compiler is installed. The build
// is done once per test process and cached between processes in a directory
// under os.TempDir() named after the hash of the source and the compiler.
func Build(t testing.TB) string {
	t.Helper()
	once.Do(func() { libPath, skipMsg, buildErr = build() })
	if skipMsg != "" {
		t.Skip(skipMsg)
	}
	if buildErr != nil {
		t.Fatalf("ncclstandin: %v", buildErr)
	}
	return libPath
}

func build() (path, skip string, err error) {
	cc := Compiler()
	if cc == "" {
		return "", "ncclstandin: no C compiler (gcc or $CC) on PATH; skipping the tests that need the NCCL stand-in", nil
	}
	src := filepath.Join(SourceDir(), "standin.c")
	code, err := os.ReadFile(src)
	if err != nil {
		return "", "", fmt.Errorf("reading the stand-in source: %w", err)
	}
	h := sha256.New()
	h.Write(code)
	h.Write([]byte{0})
	h.Write([]byte(cc))
	dir := filepath.Join(os.TempDir(), "gotrain-ncclstandin-"+hex.EncodeToString(h.Sum(nil))[:16])
	lib := filepath.Join(dir, "libnccl.so.2")
	if st, err := os.Stat(lib); err == nil && st.Mode().IsRegular() {
		return lib, "", nil
	}
	if err := CompileInto(dir, "libnccl.so.2", src, "-shared", "-fPIC", "-lpthread", "-lrt", "-ldl"); err != nil {
		return "", "", err
	}
	return lib, "", nil
}

// CompileInto compiles the C source src with Compiler() -O2 and extra flags into
// dir/name. It builds in a fresh sibling directory and renames it into place,
// so concurrent test processes building the same dir never see a partial
// file. If dir already exists it is left as it is.
func CompileInto(dir, name, src string, flags ...string) error {
	cc := Compiler()
	if cc == "" {
		return errors.New("no C compiler (gcc or $CC) on PATH")
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var args []string
	if f := strings.Fields(os.Getenv("CC")); len(f) > 1 {
		args = append(args, f[1:]...)
	}
	args = append(args, "-O2", "-o", filepath.Join(tmp, name), src)
	args = append(args, flags...)
	out, err := exec.Command(cc, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", cc, strings.Join(args, " "), err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
			return nil // another process won the race
		} else if !errors.Is(serr, fs.ErrNotExist) {
			return serr
		}
		return err
	}
	return nil
}
