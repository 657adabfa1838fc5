//go:build !linux

package metrics

import "os"

// isTTY trusts the character-device test of IsTerminal on this platform.
func isTTY(*os.File) bool { return true }

// ttyWidth is unknown on this platform: terminalWidth falls back to $COLUMNS.
func ttyWidth(*os.File) int { return 0 }
