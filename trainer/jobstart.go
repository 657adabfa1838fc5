package trainer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/optim"
)

// Joining a job
//
// Every strategy of several ranks starts by making them one job
// (syncStart): the same configuration, rank 0's parameters and, on
// resume, its optimiser state, position and the strategy's own resumed
// state (jobState); collectives run under --timeout (collective).

// jobState is a strategy's state that the job's start carries beyond the
// model's (local SGD's outer optimiser and ranks' optimiser states).
type jobState interface {
	// synced: every rank holds rank 0's parameters now.
	synced()
	// resumed gives every rank rank 0's resumed state; localRanks is
	// the number of ranks whose local optimiser states rank 0 resumed.
	resumed(ctx context.Context, localRanks int) error
}

// collective runs f with the collective timeout.
func (t *Trainer) collective(ctx context.Context, what string, f func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	defer cancel()
	if err := f(cctx); err != nil {
		return fmt.Errorf("rank %d: %s: %w", t.rank(), what, err)
	}
	return nil
}

// fingerprint is what every rank must agree on: the config fields that
// shape the model, the data and the trajectory, and the world size.
func (t *Trainer) fingerprint() []byte {
	c := t.cfg
	// Each rank may train on another kind of device (a mixed cluster).
	c.Resume, c.CheckpointDir, c.MetricsFile, c.Out, c.DataDir, c.Threads, c.Device = "", "", "", "", "", 0, ""
	// Files, addresses and deadlines of this process: they may differ per
	// machine and do not change what is trained.
	c.TLSCert, c.TLSKey, c.TLSCA, c.MetricsAddr, c.CPUProfile, c.RdzvTimeout = "", "", "", "", "", 0
	b, _ := json.Marshal(struct {
		Config    Config `json:"config"`
		WorldSize int    `json:"world_size"`
		Params    int    `json:"params"`
		Train     int    `json:"train_samples"`
	}{c, t.worldSize(), t.Model.NumParams(), t.train.Len()})
	return b
}

// diffJSON names the top-level fields whose values differ.
func diffJSON(a, b []byte) string {
	var ma, mb map[string]any
	_ = json.Unmarshal(a, &ma)
	_ = json.Unmarshal(b, &mb)
	flat := func(m map[string]any) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				for k2, v2 := range sub {
					vb, _ := json.Marshal(v2)
					out[k2] = string(vb)
				}
				continue
			}
			vb, _ := json.Marshal(v)
			out[k] = string(vb)
		}
		return out
	}
	fa, fb := flat(ma), flat(mb)
	var diffs []string
	for k, v := range fa {
		if fb[k] != v {
			diffs = append(diffs, fmt.Sprintf("%s: %s here, %s on rank 0", k, v, fb[k]))
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}

// syncStart makes the ranks one job: they check that they run the same
// configuration, take rank 0's parameters (and, on resume, its optimiser
// state and position), and verify that they now hold identical models.
//
// own is the strategy's state beyond the model's (nil: none): it hears
// when rank 0's parameters have arrived, and on resume gives every rank
// rank 0's resumed part.
func (t *Trainer) syncStart(ctx context.Context, c dist.Communicator, own jobState) error {
	w, r := c.Size(), c.Rank()
	// 1. Configuration: rank 0's fingerprint against everyone's.
	mine := t.fingerprint()
	var length [8]byte
	binary.LittleEndian.PutUint64(length[:], uint64(len(mine)))
	if err := t.collective(ctx, "broadcast of the configuration", func(ctx context.Context) error {
		return c.Broadcast(ctx, length[:], 0)
	}); err != nil {
		return err
	}
	ref := make([]byte, min(binary.LittleEndian.Uint64(length[:]), 1<<20))
	if r == 0 {
		ref = slices.Clone(mine)
	}
	if err := t.collective(ctx, "broadcast of the configuration", func(ctx context.Context) error {
		return c.Broadcast(ctx, ref, 0)
	}); err != nil {
		return err
	}
	ok := []byte{1}
	diff := ""
	if !bytes.Equal(ref, mine) {
		ok[0] = 0
		diff = diffJSON(mine, ref)
	}
	oks := make([]byte, w)
	if err := t.collective(ctx, "configuration check", func(ctx context.Context) error { return c.AllGather(ctx, ok, oks) }); err != nil {
		return err
	}
	var bad []string
	for i, v := range oks {
		if v == 0 {
			bad = append(bad, fmt.Sprint(i))
		}
	}
	if len(bad) > 0 {
		if diff != "" {
			return fmt.Errorf("%w: rank %d runs another configuration than rank 0 (%s); start every rank with the same flags", ErrReplicas, r, diff)
		}
		return fmt.Errorf("%w: ranks %s run another configuration than rank 0; start every rank with the same flags", ErrReplicas, strings.Join(bad, ", "))
	}
	// 2. Rank 0's state.
	var pos [7]int64
	resumed := t.resumedFrom != ""
	if r == 0 {
		pos = [7]int64{t.pos.step, int64(t.pos.epoch), int64(t.pos.batch), 0, 0, int64(len(t.localStates)), int64(len(t.resumeShares))}
		if resumed {
			pos[3] = 1
			_, pos[4] = t.opt.State()
		}
	}
	posBytes := make([]byte, 8*len(pos))
	for i, v := range pos {
		binary.LittleEndian.PutUint64(posBytes[8*i:], uint64(v))
	}
	if err := t.collective(ctx, "broadcast of the start position", func(ctx context.Context) error {
		return c.Broadcast(ctx, posBytes, 0)
	}); err != nil {
		return err
	}
	for i := range pos {
		pos[i] = int64(binary.LittleEndian.Uint64(posBytes[8*i:]))
	}
	for _, p := range t.Model.Params {
		if err := t.collective(ctx, "broadcast of "+p.Name, func(ctx context.Context) error {
			return c.Broadcast(ctx, p.Data, 0)
		}); err != nil {
			return err
		}
	}
	if own != nil {
		own.synced()
	}
	if pos[3] == 1 {
		if err := t.broadcastOptState(ctx, t.opt, pos[4], "optimiser state "); err != nil {
			return err
		}
		if own != nil {
			if err := own.resumed(ctx, int(pos[5])); err != nil {
				return err
			}
		}
		if n := pos[6]; n > 0 && n <= 1<<16 {
			shares := make([]float64, n)
			if r == 0 {
				copy(shares, t.resumeShares)
			}
			if err := t.collective(ctx, "broadcast of the balancer's shares", func(ctx context.Context) error {
				return c.Broadcast(ctx, shares, 0)
			}); err != nil {
				return err
			}
			t.resumeShares = shares
		}
		t.pos = position{step: pos[0], epoch: int(pos[1]), batch: int(pos[2])}
		t.savedStep = t.pos.step
	}
	// 3. Identical replicas.
	return t.verifyReplicas(ctx, "at start")
}

// verifyReplicas checks that every rank holds bitwise-identical parameters.
func (t *Trainer) verifyReplicas(ctx context.Context, when string) error {
	if t.comm == nil || t.worldSize() == 1 {
		return nil
	}
	h := sha256.New()
	for _, p := range t.Model.Params {
		_ = binary.Write(h, binary.LittleEndian, p.Data)
	}
	sum := h.Sum(nil)
	all := make([]byte, len(sum)*t.worldSize())
	if err := t.collective(ctx, "parameter checksum", func(ctx context.Context) error {
		return t.comm.AllGather(ctx, sum, all)
	}); err != nil {
		return err
	}
	var bad []string
	for i := 0; i < t.worldSize(); i++ {
		if !bytes.Equal(all[i*len(sum):(i+1)*len(sum)], all[:len(sum)]) {
			bad = append(bad, fmt.Sprint(i))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s, the parameters of ranks %s differ from rank 0's", ErrReplicas, when, strings.Join(bad, ", "))
	}
	return nil
}

// broadcastOptState gives every rank rank 0's state of opt (which has
// taken step steps on rank 0).
func (t *Trainer) broadcastOptState(ctx context.Context, opt optim.Optimizer, step int64, what string) error {
	c := t.comm
	st, _ := opt.State()
	names := slices.Sorted(maps.Keys(st))
	for _, k := range names {
		if err := t.collective(ctx, "broadcast of "+what+k, func(ctx context.Context) error {
			return c.Broadcast(ctx, st[k], 0)
		}); err != nil {
			return err
		}
	}
	stepBuf := []float64{float64(step)}
	if err := t.collective(ctx, "broadcast of "+what+"step", func(ctx context.Context) error {
		return c.Broadcast(ctx, stepBuf, 0)
	}); err != nil {
		return err
	}
	if c.Rank() != 0 {
		return opt.LoadState(st, int64(stepBuf[0]))
	}
	return nil
}
