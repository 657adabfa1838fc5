package launch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gotrain/gotrain/trainer/dist/rendezvous"
	"github.com/gotrain/gotrain/trainer/dist/rendezvous/etcdstore"
	"github.com/gotrain/gotrain/trainer/dist/secure"
)

// Elastic jobs (--nnodes MIN:MAX)
//
// The launchers meet in a store of their own at --rdzv-endpoint: the
// launcher that can listen on that address serves it (node 0's host), the
// others connect. They form the group in numbered rounds. In round r each
// launcher joins (an Add on elastic/r/joined gives its place); the first
// one waits until MIN have joined, then --rdzv-settle more (or until MAX
// have), and closes the round with its size. The launchers with places
// below the size are its nodes, in place order (node rank = place); the
// others wait for a later round. The round's node 0 picks the workers'
// master port on its host and publishes it; every launcher then starts its
// workers with ranks node·nproc+local of size·nproc and
// TORCHELASTIC_RESTART_COUNT = the restarts so far, so that gotrain train
// resumes from its checkpoints, with its per-rank batch recomputed for the
// new world size (the global batch stays --batch-size).
//
// When a worker fails, its launcher stops its workers and marks the round
// failed (elastic/r/failed); the other launchers see the mark and stop
// theirs; every launcher still alive joins round r+1. A node that died
// does not join, so the group re-forms with the nodes left (at least MIN);
// a node that starts late joins the next round. After --max-restarts
// failed rounds the launchers give up and print what happened. The store
// lives in the launcher of the endpoint's host: if that node dies, the
// job ends.
//
// When a round's workers finish, its launchers mark it done
// (elastic/r/end), and every launcher that joined it, a node of it or one
// waiting for a later round, counts itself out (elastic/r/left) and
// exits. The launcher serving the store waits for all of them, up to
// exitBarrier, before it closes the store, as torchrun's agents wait at
// their exit barrier: otherwise a launcher still waiting for the round's
// end could lose the store before it read the end, and fail a job that
// finished.

// elasticStore is where the launchers meet: the built-in store
// (rendezvous.Client) or etcd (etcdstore.Store).
type elasticStore interface {
	Set(ctx context.Context, key string, value []byte) error
	Get(ctx context.Context, key string) ([]byte, error)
	Add(ctx context.Context, key string, delta int64) (int64, error)
	Wait(ctx context.Context, keys ...string) error
}

// A round's "end" key says how it ended: endDone, or why it failed.
const endDone = "done"

// exitBarrier bounds how long the launcher serving the store waits, once
// the job is done, for the launchers that joined the last round to see
// the end (a launcher that died on the way never counts itself out).
var exitBarrier = 30 * time.Second

// errNotFormed: too few nodes joined a round in time.
var errNotFormed = errors.New("the group did not form")

// errJobDone: the job finished in a round this launcher was not part of.
var errJobDone = errors.New("the job finished without this node")

// storeKey names an elastic key of round r.
func storeKey(r int, name string) string { return fmt.Sprintf("elastic/%d/%s", r, name) }

// joinStore serves the launchers' store when this host owns the endpoint
// address, and connects to it.
func (s *supervisor) joinStore(ctx context.Context, opt secure.Options) (elasticStore, func(), error) {
	o := s.opts
	if o.backend == "etcd" {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		st, err := etcdstore.Dial(dctx, o.etcd, o.rdzvID)
		if err != nil {
			return nil, nil, err
		}
		s.logf("elastic rendezvous in etcd at %s, job id %s", strings.Join(o.etcd, ","), o.rdzvID)
		return st, func() { st.Close() }, nil
	}
	addr := net.JoinHostPort(o.masterAddr, strconv.Itoa(o.port))
	closeSrv := func() {}
	if ln, err := net.Listen("tcp", addr); err == nil {
		srv := rendezvous.Serve(ln, opt)
		closeSrv = func() { srv.Close() }
		s.servesStore = true
		s.logf("serving the elastic rendezvous store on %s", addr)
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := rendezvous.Dial(dctx, addr, opt)
	if err != nil {
		closeSrv()
		return nil, nil, fmt.Errorf("reaching the elastic rendezvous store on %s: %w", addr, err)
	}
	return c, func() { c.Close(); closeSrv() }, nil
}

// round is one formed group.
type round struct {
	n, size, node int
	master        string // host:port of the workers' rank 0
}

// form joins rounds from r on until this launcher is a node of one.
func (s *supervisor) form(ctx context.Context, st elasticStore, r int, endpointHost string) (round, error) {
	for ; ; r++ {
		n, err := st.Add(ctx, storeKey(r, "joined"), 1)
		if err != nil {
			return round{}, err
		}
		place := int(n - 1)
		if place == 0 {
			cctx, cancel := context.WithTimeout(ctx, s.opts.joinTimeout)
			err := s.closeRound(cctx, st, r)
			cancel()
			if err != nil && ctx.Err() == nil {
				// Too few nodes: the round does not form, for anyone.
				_ = st.Set(ctx, storeKey(r, "size"), []byte("0"))
			} else if err != nil {
				return round{}, err
			}
		}
		b, err := st.Get(ctx, storeKey(r, "size"))
		if err != nil {
			return round{}, err
		}
		size, _ := strconv.Atoi(string(b))
		if size == 0 {
			joined, _ := st.Add(ctx, storeKey(r, "joined"), 0)
			return round{}, fmt.Errorf("%w: round %d: %d node(s) joined, --nnodes needs at least %d within --rdzv-join-timeout %v", errNotFormed, r, joined, s.opts.minNodes, s.opts.joinTimeout)
		}
		if place >= size {
			s.logf("round %d formed with %d node(s) without this one; waiting for the next round", r, size)
			end, err := st.Get(ctx, storeKey(r, "end"))
			if err != nil {
				return round{}, err
			}
			if string(end) == endDone {
				// Counted out, so that the store's launcher can close it.
				_, _ = st.Add(ctx, storeKey(r, "left"), 1)
				return round{}, errJobDone
			}
			continue
		}
		rd := round{n: r, size: size, node: place}
		if place == 0 {
			host := hostFor(endpointHost)
			port, err := freePort(host)
			if err != nil {
				return round{}, fmt.Errorf("round %d: a port for rank 0: %w", r, err)
			}
			if err := st.Set(ctx, storeKey(r, "master"), []byte(net.JoinHostPort(host, strconv.Itoa(port)))); err != nil {
				return round{}, err
			}
		}
		m, err := st.Get(ctx, storeKey(r, "master"))
		if err != nil {
			return round{}, err
		}
		rd.master = string(m)
		return rd, nil
	}
}

// awaitLeft (the launcher serving the store, at the end of the job) waits
// until every launcher that joined round r has counted itself out, for
// at most exitBarrier.
func (s *supervisor) awaitLeft(ctx context.Context, st elasticStore, r int) {
	deadline := time.Now().Add(exitBarrier)
	for {
		joined, err := st.Add(ctx, storeKey(r, "joined"), 0)
		if err != nil {
			return
		}
		left, err := st.Add(ctx, storeKey(r, "left"), 0)
		if err != nil {
			return
		}
		if left >= joined {
			s.logf("round %d: all %d launcher(s) saw the job end", r, joined)
			return
		}
		if time.Now().After(deadline) {
			s.logf("round %d: %d of %d launcher(s) saw the job end within %v; closing the store", r, left, joined, exitBarrier)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// closeRound (place 0 of round r) waits for MIN launchers, then for more
// during the settle time or until MAX, and publishes the size.
func (s *supervisor) closeRound(ctx context.Context, st elasticStore, r int) error {
	o := s.opts
	var settleEnd time.Time
	for {
		n, err := st.Add(ctx, storeKey(r, "joined"), 0)
		if err != nil {
			return err
		}
		switch {
		case int(n) >= o.maxNodes:
			return st.Set(ctx, storeKey(r, "size"), []byte(strconv.Itoa(o.maxNodes)))
		case int(n) >= o.minNodes && settleEnd.IsZero():
			settleEnd = time.Now().Add(o.settle)
		case !settleEnd.IsZero() && time.Now().After(settleEnd):
			return st.Set(ctx, storeKey(r, "size"), []byte(strconv.Itoa(min(int(n), o.maxNodes))))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// hostFor is this host's address as the others reach it: the local end of
// a route towards the endpoint.
func hostFor(endpoint string) string {
	if ip := net.ParseIP(endpoint); ip != nil && ip.IsLoopback() || endpoint == "localhost" {
		return "127.0.0.1"
	}
	c, err := net.Dial("udp", net.JoinHostPort(endpoint, "9"))
	if err != nil {
		return endpoint
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

// runElastic runs rounds until the workers of one finish (0), the
// launcher is stopped, or --max-restarts rounds have failed.
func (s *supervisor) runElastic(ctx context.Context) int {
	o := s.opts
	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigCh)
	secret, err := secure.SecretFromEnv(func(k string) string {
		if k == secure.EnvSecret {
			return s.secret
		}
		return ""
	})
	if err != nil {
		s.logf("%v", err)
		return 2
	}
	st, closeStore, err := s.joinStore(ctx, secure.Options{Secret: secret}) // handshakes within secure.DefaultTimeout
	if err != nil {
		s.logf("%v", err)
		return 1
	}
	defer closeStore()
	endpointHost := o.masterAddr
	endpoint := net.JoinHostPort(o.masterAddr, strconv.Itoa(o.port))
	var history []string
	r := 0
	for {
		rd, err := s.form(ctx, st, r, endpointHost)
		if errors.Is(err, errJobDone) {
			s.logf("round %d: %v", r, err)
			return 0
		}
		if err != nil {
			if ctx.Err() != nil {
				s.logf("stopped while forming round %d", r)
				return 130
			}
			if errors.Is(err, errNotFormed) {
				s.logf("%v", err)
				return 1
			}
			where := fmt.Sprintf("the store lives in the launcher at %s: if that node is gone, the job cannot go on (--rdzv-backend etcd keeps it elsewhere)", endpoint)
			if o.backend == "etcd" {
				where = "is etcd reachable?"
			}
			s.logf("round %d: %v (%s)", r, err, where)
			return 1
		}
		r = rd.n
		host, port, _ := net.SplitHostPort(rd.master)
		o.nodeRank, o.nnodes, o.masterAddr = rd.node, rd.size, host
		o.port, _ = strconv.Atoi(port)
		s.restart = len(history)
		s.logf("round %d: node %d of %d", r, rd.node, rd.size)
		// Another node's failure stops this group.
		wctx, cancelWatch := context.WithCancel(ctx)
		peer := make(chan string, 1)
		go func() {
			if err := st.Wait(wctx, storeKey(r, "failed")); err == nil {
				v, _ := st.Get(wctx, storeKey(r, "failed"))
				peer <- "round " + strconv.Itoa(r) + " failed: " + string(v)
			}
		}()
		s.peerFail = peer
		s.workers = nil
		code, failure := s.group(ctx, sigCh)
		cancelWatch()
		if failure == "" {
			if code == 0 {
				// Launchers waiting for a later round can stop.
				dctx := context.WithoutCancel(ctx)
				_ = st.Set(dctx, storeKey(r, "end"), []byte(endDone))
				_, _ = st.Add(dctx, storeKey(r, "left"), 1)
				if s.servesStore {
					s.awaitLeft(ctx, st, r)
				}
			}
			return code
		}
		if !strings.HasPrefix(failure, "round ") {
			// This node's worker failed: tell the others.
			why := []byte(fmt.Sprintf("node %d: %s", rd.node, failure))
			_ = st.Set(context.WithoutCancel(ctx), storeKey(r, "failed"), why)
			_ = st.Set(context.WithoutCancel(ctx), storeKey(r, "end"), why)
		}
		history = append(history, fmt.Sprintf("round %d (%d nodes): %s", r, rd.size, failure))
		if len(history) > o.restarts {
			s.logf("giving up after %d restart(s) (--max-restarts %d): %s", len(history)-1, o.restarts, strings.Join(history, "; "))
			return code
		}
		s.logf("re-forming the group (restart %d of %d)", len(history), o.restarts)
		r++
	}
}
