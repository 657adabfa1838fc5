package graph

import (
	"runtime"
	"sync"
	"sync/atomic"
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
	chunk := (n + p - 1) / p
	parts := (n + chunk - 1) / chunk
	if onTeam(parts, func(part int) { f(part*chunk, min((part+1)*chunk, n)) }) {
		return
	}
	var wg sync.WaitGroup
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

// splitWork is how parallelFor splits n items: parts chunks of chunk
// items (the last one shorter).
func splitWork(n, work int) (parts, chunk int) {
	p := min(runtime.GOMAXPROCS(0), n)
	if p <= 1 || work < minParallel {
		return 1, n
	}
	chunk = (n + p - 1) / p
	return (n + chunk - 1) / chunk, chunk
}

// parallelParts runs f over [0,n) on up to splitWork(n, work) workers,
// telling f which worker runs it (0 ≤ part < parts, for per-worker
// scratch). The workers claim the items one at a time, so that a worker
// whose CPU is taken away for a while (a shared machine, another
// process) holds up the others by one item at most, not by half the
// batch; f must therefore not depend on which worker computes which item.
func parallelParts(n, work int, f func(part, lo, hi int)) {
	parts, _ := splitWork(n, work)
	if parts <= 1 {
		f(0, 0, n)
		return
	}
	var next atomic.Int64
	run := func(part int) {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			f(part, i, i+1)
		}
	}
	if onTeam(parts, run) {
		return
	}
	var wg sync.WaitGroup
	for i := 1; i < parts; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			run(i)
		}(i)
	}
	run(0)
	wg.Wait()
}
