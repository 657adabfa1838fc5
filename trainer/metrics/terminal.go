package metrics

import (
	"os"
	"strconv"
)

// IsTerminal reports whether f is a terminal: a character device (by
// f.Stat) that, on Linux, also answers the terminal ioctl TCGETS, which
// rules out /dev/null and other non-terminal devices. It returns false for
// nil, regular files and pipes.
func IsTerminal(f *os.File) bool {
	if f == nil {
		return false
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	return isTTY(f)
}

// terminalWidth returns the width of the terminal f in columns: from the
// terminal itself where the platform allows, else from $COLUMNS, else 80.
func terminalWidth(f *os.File) int {
	if f != nil {
		if w := ttyWidth(f); w > 0 {
			return w
		}
	}
	if w, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && w > 0 {
		return w
	}
	return 80
}
