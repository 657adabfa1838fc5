package trainer

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/gpu/device"
)

// TestDevicePrefetchMatchesTheCPU: one process on a device with page-locked
// memory and copies made late takes its batches from the prefetcher (two
// epochs, the last batch of each partial, evaluation between them) and
// ends where the CPU ends: every batch went up from a slot the prefetcher
// did not touch until the device was done with it.
func TestDevicePrefetchMatchesTheCPU(t *testing.T) {
	cfg := deviceConfig(t, "adamw")
	cfg.MaxSteps = 0
	cfg.Epochs = 2
	cfg.BatchSize = 48
	ref := newTrainer(t, cfg)
	want, err := ref.Run(context.Background())
	require.NoError(t, err)
	dev := &lazyHost{}
	tr := newTrainer(t, cfg, WithDevice(dev))
	got, err := tr.Run(context.Background())
	require.NoError(t, err)
	steps := int(tr.Step())
	require.Equal(t, 2*tr.batchesPerEpoch(), steps)
	require.NotZero(t, tr.train.Len()%cfg.BatchSize, "the epoch ends on a partial batch")
	require.Equal(t, steps, tr.devr.runs)
	require.GreaterOrEqual(t, dev.async, 2*steps, "each batch's inputs and labels went up from page-locked memory")
	require.Equal(t, steps, tr.devr.fetched, "every batch came from the prefetcher")
	d := maxAbsDiff(params(ref), params(tr))
	t.Logf("%d steps with prefetched batches: max |Δ| against the CPU %g; test accuracy %.3f (CPU %.3f)", steps, d, got.TestAccuracy, want.TestAccuracy)
	require.Less(t, d, 1e-5)
	require.Equal(t, want.TestAccuracy, got.TestAccuracy)

	// --pin-memory=false: the prefetcher's slots are ordinary memory, so
	// no upload is queued; --prefetch=false: the loop decodes each batch
	// itself. Neither changes the run.
	for _, tc := range []struct{ prefetch, pin bool }{{true, false}, {false, true}} {
		c := cfg
		c.Prefetch, c.PinMemory = tc.prefetch, tc.pin
		dev := &lazyHost{}
		other := newTrainer(t, c, WithDevice(dev))
		_, err := other.Run(context.Background())
		require.NoError(t, err)
		require.Zero(t, dev.async, "prefetch %v, pin memory %v: no upload from page-locked memory", tc.prefetch, tc.pin)
		if tc.prefetch {
			require.Equal(t, steps, other.devr.fetched, "every batch came from the prefetcher")
		} else {
			require.Zero(t, other.devr.fetched, "no batch came from a prefetcher")
		}
		require.Equal(t, params(tr), params(other), "prefetch %v, pin memory %v", tc.prefetch, tc.pin)
	}
}

// TestPrefetcherRunsAhead: while the loop holds batch i, the prefetcher
// decodes batch i+1 into the other slot, and never a third batch before a
// slot comes back.
func TestPrefetcherRunsAhead(t *testing.T) {
	p, err := newPrefetcher(device.Host{}, 4, 3, true)
	require.NoError(t, err)
	defer p.close()
	filled := make(chan int, 8)
	spans := [][2]int{{0, 4}, {4, 8}, {8, 10}}
	p.start(spans, func(lo, hi int, x, y []float32) error {
		for i := range y {
			y[i] = float32(lo + i)
		}
		require.Len(t, x, 3*(hi-lo))
		filled <- lo
		return nil
	})
	b0, err := p.next(0, 4)
	require.NoError(t, err)
	require.Equal(t, []float32{0, 1, 2, 3}, b0.y)
	select {
	case lo := <-filled:
		require.Equal(t, 0, lo)
	case <-time.After(10 * time.Second):
		t.Fatal("batch 0 was never filled")
	}
	select {
	case lo := <-filled:
		require.Equal(t, 4, lo, "batch 1 decoded while the loop holds batch 0")
	case <-time.After(10 * time.Second):
		t.Fatal("the prefetcher did not run ahead")
	}
	select {
	case lo := <-filled:
		t.Fatalf("batch from %d decoded with both slots taken", lo)
	case <-time.After(50 * time.Millisecond):
	}
	p.release(b0)
	b1, err := p.next(4, 8)
	require.NoError(t, err)
	require.Equal(t, []float32{4, 5, 6, 7}, b1.y)
	p.release(b1)
	_, err = p.next(9, 10)
	require.ErrorContains(t, err, "the loop wants rows [9, 10), the prefetcher prepared [8, 10)")
	_, err = p.next(10, 12)
	require.ErrorContains(t, err, "has prepared every batch of the epoch", "an error, not a wait for ever")
	p.stop()
}
