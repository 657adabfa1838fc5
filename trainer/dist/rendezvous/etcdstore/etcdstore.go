// Package etcdstore keeps gotrain's rendezvous keys in an etcd cluster
// (go.etcd.io/etcd/client/v3), for elastic jobs whose store must outlive
// any node: `gotrain launch --rdzv-backend etcd --rdzv-endpoint
// HOST:PORT[,HOST:PORT...] --rdzv-id JOB`.
//
// A [Store] has the operations of rendezvous.Client that the launchers use:
// Set, Get (blocking until the key exists), Add (an atomic counter, kept as
// decimal text like the built-in store's) and Wait. Keys live under
// /gotrain/<job id>/, so jobs do not see each other's keys; use a new job
// id for every job (a job's keys are left for inspection, or deleted with
// Clean).
//
// # Errors
//
// Dial fails with an error naming the endpoints when no etcd member
// answers within its context. Blocking calls return ctx's error when it
// ends first. etcd's own authentication and TLS protect the store; the job
// secret protects the workers' connections as before.
package etcdstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Store is a job's rendezvous keys in etcd. It is safe for concurrent use.
type Store struct {
	c      *clientv3.Client
	prefix string
}

// Dial connects to the etcd members at endpoints ("host:port", or URLs)
// for job id.
func Dial(ctx context.Context, endpoints []string, id string) (*Store, error) {
	if id == "" || strings.Contains(id, "/") {
		return nil, fmt.Errorf("etcdstore: job id %q must be non-empty and without '/'", id)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second, Logger: nopLogger()})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: %v: %w", endpoints, err)
	}
	s := &Store{c: c, prefix: "/gotrain/" + id + "/"}
	// Reach a member now, so that a wrong endpoint fails here, by name.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Get(sctx, s.prefix+"probe"); err != nil {
		c.Close()
		return nil, fmt.Errorf("etcdstore: no etcd member answers at %s: %w (is etcd running, and is --rdzv-endpoint its client address?)", strings.Join(endpoints, ","), err)
	}
	return s, nil
}

// Close closes the connection.
func (s *Store) Close() error { return s.c.Close() }

// Set stores value under key.
func (s *Store) Set(ctx context.Context, key string, value []byte) error {
	_, err := s.c.Put(ctx, s.prefix+key, string(value))
	return wrap("Set", key, err)
}

// Get returns key's value, waiting until it is set or ctx ends.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	k := s.prefix + key
	for {
		resp, err := s.c.Get(ctx, k)
		if err != nil {
			return nil, wrap("Get", key, err)
		}
		if len(resp.Kvs) > 0 {
			return resp.Kvs[0].Value, nil
		}
		wctx, cancel := context.WithCancel(ctx)
		ch := s.c.Watch(wctx, k, clientv3.WithRev(resp.Header.Revision+1))
		for wr := range ch {
			if err := wr.Err(); err != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					cancel()
					return ev.Kv.Value, nil
				}
			}
		}
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, wrap("Get", key, err)
		}
	}
}

// Add adds delta to the counter at key (0 when missing) and returns the
// new value; concurrent Adds from any number of clients are atomic.
func (s *Store) Add(ctx context.Context, key string, delta int64) (int64, error) {
	k := s.prefix + key
	for {
		resp, err := s.c.Get(ctx, k)
		if err != nil {
			return 0, wrap("Add", key, err)
		}
		var cur int64
		cmp := clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
		if len(resp.Kvs) > 0 {
			if cur, err = strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64); err != nil {
				return 0, fmt.Errorf("etcdstore: Add %s: the key holds %q, not a counter", key, resp.Kvs[0].Value)
			}
			cmp = clientv3.Compare(clientv3.ModRevision(k), "=", resp.Kvs[0].ModRevision)
		}
		next := cur + delta
		tr, err := s.c.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, strconv.FormatInt(next, 10))).Commit()
		if err != nil {
			return 0, wrap("Add", key, err)
		}
		if tr.Succeeded {
			return next, nil
		}
	}
}

// Wait returns when every key exists, or ctx ends.
func (s *Store) Wait(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if _, err := s.Get(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// Clean deletes the job's keys.
func (s *Store) Clean(ctx context.Context) error {
	_, err := s.c.Delete(ctx, s.prefix, clientv3.WithPrefix())
	return wrap("Clean", "", err)
}

func wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("etcdstore: %s %s: %w", op, key, err)
}
