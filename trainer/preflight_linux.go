package trainer

import "golang.org/x/sys/unix"

// diskFree is the room left to an unprivileged writer in dir's file system.
func diskFree(dir string) (uint64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}
