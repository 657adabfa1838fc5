//go:build !(linux || darwin || ios || freebsd || netbsd || openbsd || dragonfly)

package metrics

func peakRSS() int64 { return 0 }
