package graph

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The team: persistent worker goroutines for parallelFor and
// parallelParts.
//
// A goroutine started for each parallel loop begins some 50 µs after the
// go statement on this machine (a virtual machine: the runtime wakes an
// idle thread with a futex, the hypervisor an idle vCPU), and a ResNet-20
// step has some 200 such loops: about 11 ms of the second CPU's time a
// step went that way, and as much again of the first one's waiting for
// the late half. OpenMP, which PyTorch runs on, keeps its threads
// spinning for a while after each loop instead. So does the team: a
// worker that finishes its part spins for spinFor, watching for the next
// loop, before it parks, and the loop's caller spins as long for the
// workers' parts before it parks; either way the next loop starts, and
// the last part ends, in about a microsecond while loops follow each
// other closely. The spinning yields the processor (runtime.Gosched) to
// any other goroutine that waits for one, and lasts spinFor at most
// after each loop.
//
// One loop runs on the team at a time; a loop started while it is busy
// (from another goroutine, or from inside a loop) starts goroutines, as
// before.

// spinFor is how long an idle worker, or a caller waiting for the
// workers, spins before parking.
const spinFor = 50 * time.Microsecond

// useTeam turns the team on (tests turn it off to compare).
var useTeam = true

type teamLoop struct {
	gen     uint64
	run     func(part int)
	parts   int          // participants, the caller's part 0 included
	left    atomic.Int32 // the workers' parts not yet done
	waiting atomic.Bool  // the caller parked
	done    chan struct{}
}

type teamWorker struct {
	part   int // the part it runs (1, 2, ...)
	asleep atomic.Bool
	wake   chan struct{}
}

var team struct {
	mu      sync.Mutex // held by the loop running on the team
	gen     atomic.Uint64
	loop    atomic.Pointer[teamLoop]
	workers []*teamWorker
}

// onTeam runs run(part) for every part in [0, parts), part 0 on the
// calling goroutine, the others on the team's workers, and returns when
// all have returned. It reports false, having run nothing, when the team
// is busy or off.
func onTeam(parts int, run func(part int)) bool {
	if !useTeam || parts < 2 || !team.mu.TryLock() {
		return false
	}
	defer team.mu.Unlock()
	for len(team.workers) < parts-1 {
		w := &teamWorker{part: len(team.workers) + 1, wake: make(chan struct{}, 1)}
		team.workers = append(team.workers, w)
		go w.work(team.gen.Load())
	}
	l := &teamLoop{gen: team.gen.Load() + 1, run: run, parts: parts, done: make(chan struct{}, 1)}
	l.left.Store(int32(parts - 1))
	team.loop.Store(l)
	team.gen.Store(l.gen)
	for _, w := range team.workers[:parts-1] {
		if w.asleep.Load() {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
	run(0)
	spin(func() bool { return l.left.Load() == 0 }, func() {
		l.waiting.Store(true)
		if l.left.Load() > 0 {
			<-l.done
		}
	})
	return true
}

// spin calls ready until it reports true, yielding the processor between
// calls, for spinFor at most; then park, which returns once ready holds.
func spin(ready func() bool, park func()) {
	var deadline time.Time
	for i := 0; !ready(); i++ {
		if i&31 == 31 {
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(spinFor)
			} else if now.After(deadline) {
				park()
				return
			}
		}
		runtime.Gosched()
	}
}

// work runs the team's loops, each once: seen is the last loop's
// generation it has looked at.
func (w *teamWorker) work(seen uint64) {
	for {
		for team.gen.Load() == seen {
			spin(func() bool { return team.gen.Load() != seen }, func() {
				w.asleep.Store(true)
				if team.gen.Load() == seen {
					<-w.wake // (a token left by an earlier loop wakes it early: it looks again)
				}
				w.asleep.Store(false)
			})
		}
		l := team.loop.Load()
		seen = l.gen
		if w.part >= l.parts {
			continue
		}
		l.run(w.part)
		if l.left.Add(-1) == 0 && l.waiting.Load() {
			select {
			case l.done <- struct{}{}:
			default:
			}
		}
	}
}
