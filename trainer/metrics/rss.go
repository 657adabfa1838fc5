package metrics

// PeakRSSBytes returns the peak resident set size of this process so far,
// in bytes: the most physical memory it has held at once (its "high water
// mark"). It is read with getrusage(RUSAGE_SELF), whose ru_maxrss is in
// KiB on Linux and the BSDs and in bytes on macOS. It returns 0 where the
// platform does not report it.
func PeakRSSBytes() int64 {
	return peakRSS()
}
