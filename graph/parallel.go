package graph

import (
	"runtime"
	"sync"
)

// minParallel is the smallest amount of work (elements touched) worth
// splitting across goroutines.
const minParallel = 1 << 15

// parallelFor runs f over [0,n) split into contiguous chunks, one per
// available CPU, when work (an estimate of elements touched) is large
// enough to pay for the goroutines; otherwise it calls f(0, n) inline.
func parallelFor(n, work int, f func(lo, hi int)) {
	p := runtime.GOMAXPROCS(0)
	if p > n {
		p = n
	}
	if p <= 1 || work < minParallel {
		f(0, n)
		return
	}
	var wg sync.WaitGroup
	chunk := (n + p - 1) / p
	for lo := chunk; lo < n; lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			f(lo, hi)
		}(lo, min(lo+chunk, n))
	}
	f(0, min(chunk, n))
	wg.Wait()
}
