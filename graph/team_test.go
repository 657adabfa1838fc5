package graph

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// within fails the test when f does not return within d (a lost wake-up
// would hang it).
func within(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("did not return within %v", d)
	}
}

// The team runs every part of a loop once, part 0 on the caller; after
// its workers have parked (idle past spinFor), the next loop wakes them.
func TestTeamRunsEveryPartOnce(t *testing.T) {
	within(t, 20*time.Second, func() {
		for _, parts := range []int{2, 3, 5, 2} {
			for round := 0; round < 200; round++ {
				var counts [8]atomic.Int32
				var caller atomic.Bool
				ran := onTeam(parts, func(part int) {
					counts[part].Add(1)
					if part == 0 {
						caller.Store(true)
					}
				})
				require.True(t, ran, "an idle team takes the loop")
				require.True(t, caller.Load())
				for p := range counts {
					want := int32(0)
					if p < parts {
						want = 1
					}
					require.Equal(t, want, counts[p].Load(), "parts %d round %d: part %d", parts, round, p)
				}
				if round%50 == 0 {
					time.Sleep(3 * spinFor) // the workers park
				}
			}
		}
	})
	useTeam = false
	require.False(t, onTeam(2, func(int) { t.Fatal("ran with the team off") }))
	useTeam = true
	require.False(t, onTeam(1, func(int) { t.Fatal("one part is the caller's alone") }))
}

// Loops from several goroutines at once, and loops inside loops, give
// the sums of one goroutine: one takes the team, the others start
// goroutines; none waits for another.
func TestParallelLoopsConcurrentAndNested(t *testing.T) {
	prev := runtime.GOMAXPROCS(4)
	defer runtime.GOMAXPROCS(prev)
	const n = 1 << 16
	within(t, 60*time.Second, func() {
		var wg sync.WaitGroup
		for g := 0; g < 6; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := make([]int64, n)
				for round := 0; round < 50; round++ {
					parallelFor(n, n, func(lo, hi int) {
						for i := lo; i < hi; i++ {
							out[i] += int64(i)
						}
						// A nested loop over the chunk.
						parallelParts(hi-lo, n, func(_, a, b int) {
							for i := lo + a; i < lo+b; i++ {
								out[i]++
							}
						})
					})
				}
				for i, v := range out {
					if v != 50*int64(i+1) {
						t.Errorf("out[%d] = %d, want %d", i, v, 50*(i+1))
						return
					}
				}
			}()
		}
		wg.Wait()
	})
}
