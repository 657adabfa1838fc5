package etcdstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/dist/rendezvous/etcdstore"
	"github.com/gotrain/gotrain/trainer/dist/rendezvous/etcdstore/etcdtest"
)

func TestStoreOnARealEtcd(t *testing.T) {
	addr := etcdtest.StartEtcd(t)
	ctx := context.Background()
	a, err := etcdstore.Dial(ctx, []string{addr}, "job1")
	require.NoError(t, err)
	defer a.Close()
	b, err := etcdstore.Dial(ctx, []string{addr}, "job1")
	require.NoError(t, err)
	defer b.Close()
	other, err := etcdstore.Dial(ctx, []string{addr}, "job2")
	require.NoError(t, err)
	defer other.Close()

	// A blocking Get is answered by another client's Set.
	got := make(chan []byte)
	go func() { v, _ := b.Get(ctx, "master"); got <- v }()
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, a.Set(ctx, "master", []byte("10.0.0.1:1234")))
	require.Equal(t, "10.0.0.1:1234", string(<-got))
	// Jobs do not see each other's keys.
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = other.Get(sctx, "master")
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// Add is atomic across clients.
	var wg sync.WaitGroup
	for _, s := range []*etcdstore.Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				_, err := s.Add(ctx, "joined", 1)
				require.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	n, err := a.Add(ctx, "joined", 0)
	require.NoError(t, err)
	require.Equal(t, int64(100), n)
	_, err = a.Add(ctx, "master", 1)
	require.ErrorContains(t, err, "not a counter")
	require.NoError(t, a.Wait(ctx, "master", "joined"))
	require.NoError(t, a.Clean(ctx))
	n, err = b.Add(ctx, "joined", 0)
	require.NoError(t, err)
	require.Zero(t, n, "cleaned")
}

func TestDialNamesTheEndpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := etcdstore.Dial(ctx, []string{"127.0.0.1:1"}, "job")
	require.ErrorContains(t, err, "no etcd member answers at 127.0.0.1:1")
	_, err = etcdstore.Dial(ctx, []string{"127.0.0.1:1"}, "a/b")
	require.ErrorContains(t, err, "without '/'")
}
