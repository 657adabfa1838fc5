package executor

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/gotrain/gotrain/gpu/device"
)

// Profile is where a device's time goes, op by op: each timed piece of
// work (an op of a program with its input shapes, the dropout masks, the
// batch's upload, an optimiser step) is run with the device idle before
// and waited for after, and its wall time added to its row. Waiting after
// every op keeps the host from running ahead, so a profiled step is slower
// than a plain one, and launch overheads show in full; the shares say
// where to look. Attach one to programs (Program.Profile) and time other
// work with Time.
type Profile struct {
	mu   sync.Mutex
	rows map[string]*ProfileRow
}

// ProfileRow is one kind of work: how often it ran, for how long in all,
// and its matrix products' FLOPs in all (0 for other work).
type ProfileRow struct {
	Name    string
	Calls   int
	Seconds float64
	FLOPs   int64
}

// NewProfile returns an empty profile.
func NewProfile() *Profile { return &Profile{rows: map[string]*ProfileRow{}} }

// Time runs fn on dev as the work name (of flops FLOPs) and adds its time:
// from an idle device to the end of fn's work.
func (p *Profile) Time(dev device.Device, name string, flops int64, fn func() error) error {
	if err := dev.Sync(); err != nil {
		return err
	}
	t0 := time.Now()
	if err := fn(); err != nil {
		return err
	}
	if err := dev.Sync(); err != nil {
		return err
	}
	p.add(name, time.Since(t0), flops)
	return nil
}

func (p *Profile) add(name string, d time.Duration, flops int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.rows[name]
	if !ok {
		r = &ProfileRow{Name: name}
		p.rows[name] = r
	}
	r.Calls++
	r.Seconds += d.Seconds()
	r.FLOPs += flops
}

// Rows are the profile's rows, most time first.
func (p *Profile) Rows() []ProfileRow {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ProfileRow, 0, len(p.rows))
	for _, r := range p.rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b ProfileRow) int {
		if c := cmp.Compare(b.Seconds, a.Seconds); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out
}

// Write prints the rows as a table, most time first, each with its share
// of the total, its time per call and, for matrix products, the rate.
func (p *Profile) Write(w io.Writer) error {
	rows := p.Rows()
	total := 0.0
	for _, r := range rows {
		total += r.Seconds
	}
	if _, err := fmt.Fprintf(w, "%6s %8s %10s %10s %9s  %s\n", "share", "calls", "total ms", "µs/call", "GFLOP/s", "work"); err != nil {
		return err
	}
	for _, r := range rows {
		rate := "-"
		if r.FLOPs > 0 && r.Seconds > 0 {
			rate = fmt.Sprintf("%.0f", float64(r.FLOPs)/r.Seconds/1e9)
		}
		share := 0.0
		if total > 0 {
			share = 100 * r.Seconds / total
		}
		if _, err := fmt.Fprintf(w, "%5.1f%% %8d %10.3f %10.1f %9s  %s\n", share, r.Calls, 1e3*r.Seconds,
			1e6*r.Seconds/float64(r.Calls), rate, r.Name); err != nil {
			return err
		}
	}
	return nil
}

// opName names an op node for a profile: its kind and input shapes, with
// the attributes that change its work.
func opName(op *Op, in [][]int, attrs map[string]any) string {
	name := fmt.Sprintf("%s %v", op.Kind, in)
	for _, k := range []string{"stride", "pad", "trans_a", "trans_b", "kernel"} {
		if v, ok := attrs[k]; ok {
			name += fmt.Sprintf(" %s=%v", k, v)
		}
	}
	return name
}
