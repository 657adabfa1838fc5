// Package faulttest gives tests the storage faults an operator meets, on
// real file systems: a tmpfs mounted read-only, or small enough to fill.
//
//	dir := faulttest.Tmpfs(t, "size=64k") // skips, saying why, unless root may mount
//	blocker := faulttest.Fill(t, dir)    // now every write there fails with ENOSPC
//	os.Remove(blocker)                   // and the disk has room again
//
// Mounts need root (CI and the developers' machines run as root); a test
// that cannot mount skips with the reason.
package faulttest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Tmpfs mounts a tmpfs with the mount options opts ("ro,size=1m",
// "size=64k") on a new temporary directory, unmounted at the test's end.
func Tmpfs(t testing.TB, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("needs a tmpfs mount (root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Fill writes a file in dir until its file system is full, and returns
// the file's path: removing it gives the room back.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "blocker")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for n := len(buf); n > 0; {
		if _, err := f.Write(buf[:n]); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			n /= 2 // the last partial block
		}
	}
	return path
}
