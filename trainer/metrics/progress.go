package metrics

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"time"
)

// Progress shows how far a run has got. Progress counts "units" of the
// run (samples or steps, the caller's choice): total is the number of
// units in the whole run, and each [Progress.Update] says how many are
// done so far (cumulative across epochs, not reset per epoch).
//
// On a terminal it keeps a single status line, redrawn in place with '\r'
// at most every 100ms (see [WithRedrawInterval]):
//
//	epoch 1/2 [=============>                ]  45% 27000/60000  12345 samples/s  loss 0.2345  ETA 0:33
//
// Anywhere else (a file, a pipe, a CI log) it logs a plain "train" line
// through log/slog instead, on the first update and then whenever 10s have
// passed (see [WithLogInterval] and [WithLogEvery]).
//
// Throughput: the samples/s shown is the caller's samplesPerSec argument
// when it is positive. The ETA does not depend on it: Progress measures
// its own rate of units per second, an exponential moving average over
// the updates (time constant 10s by default, see [WithSmoothing]), and
// ETA = (total − done) / rate, formatted m:ss or h:mm:ss. Without a
// caller rate the display shows that measured rate ("it/s" unless
// [WithUnit] names the unit).
//
// As a [Sink], Progress reads Train.Step as done and Train.Epoch as the
// epoch, so it must then be created with total = the run's number of
// optimizer steps and [WithEpochs]; Eval and Summary records are ignored.
//
// Progress is also an io.Writer: on a terminal, whole lines written to it
// are printed above the status line (which is cleared and redrawn), so a
// slog handler writing to the Progress does not garble the bar; elsewhere
// writes pass straight through. [Progress.Log] prints one message the same
// way. All methods are safe for concurrent use.
type Progress struct {
	w        io.Writer
	total    int64
	cfg      progressConfig
	terminal bool
	logger   *slog.Logger // plain mode

	mu sync.Mutex
	st progressState
}

type progressState struct {
	updated bool // an Update has been seen since creation or Finish
	epoch   int
	epochs  int
	done    int64
	loss    float64
	sps     float64 // caller's samples/s

	rateBase  bool
	baseT     time.Time
	baseDone  int64
	rate      float64 // EMA of units/s
	rateKnown bool
	lastDrawT time.Time
	drawn     bool // the status line is on screen
	lineLen   int
	lastEpoch int
	partial   []byte // terminal mode: written bytes not yet ending in '\n'
	logged    bool   // plain mode: a line has been logged
	lastLogT  time.Time
	lastLogDn int64
	unlogged  bool // plain mode: the latest update has not been logged
}

type progressConfig struct {
	now         func() time.Time
	terminal    *bool
	logger      *slog.Logger
	logInterval time.Duration
	logEvery    int64
	redraw      time.Duration
	epochs      int
	width       int
	barWidth    int
	unit        string
	smoothing   time.Duration
	status      func() string
}

// ProgressOption configures [NewProgress].
type ProgressOption func(*progressConfig)

// WithNow sets the clock (time.Now by default); tests inject a fake one.
func WithNow(now func() time.Time) ProgressOption {
	return func(c *progressConfig) { c.now = now }
}

// WithTerminal forces terminal mode (true) or plain mode (false), instead
// of detecting it: by default a Progress writing to an *os.File for which
// [IsTerminal] is true draws a bar, and any other writer gets log lines.
func WithTerminal(on bool) ProgressOption {
	return func(c *progressConfig) { c.terminal = &on }
}

// WithLogger sets the logger of plain mode (by default a slog text handler
// writing to the Progress's writer).
func WithLogger(l *slog.Logger) ProgressOption {
	return func(c *progressConfig) { c.logger = l }
}

// WithLogInterval sets how often plain mode logs: a line is logged when at
// least d has passed since the previous one (default 10s; 0 turns the
// time trigger off).
func WithLogInterval(d time.Duration) ProgressOption {
	return func(c *progressConfig) { c.logInterval = d }
}

// WithLogEvery makes plain mode also log when at least n units have been
// done since the previous line (default 0: off). With both triggers set, a
// line is logged when either fires.
func WithLogEvery(n int64) ProgressOption {
	return func(c *progressConfig) { c.logEvery = n }
}

// WithRedrawInterval sets the least time between two redraws of the
// terminal status line (default 100ms). The first update, a new epoch,
// completion, Log and Finish draw regardless.
func WithRedrawInterval(d time.Duration) ProgressOption {
	return func(c *progressConfig) { c.redraw = d }
}

// WithEpochs sets the number of epochs of the run, shown as "epoch e/n"
// and used by the Sink method Train. An Update with epochs > 0 overrides
// it.
func WithEpochs(n int) ProgressOption {
	return func(c *progressConfig) { c.epochs = n }
}

// WithWidth sets the terminal width in columns; the status line is fitted
// into width−1 columns (shrinking, then dropping, the bar). By default the
// width of the terminal is asked for at each redraw ($COLUMNS, else 80,
// where it cannot be); 0 means no limit.
func WithWidth(cols int) ProgressOption {
	return func(c *progressConfig) { c.width = cols }
}

// WithUnit names the unit of total and done (e.g. "steps", "samples") for
// the measured rate shown when the caller gives no samples/s (default "it").
func WithUnit(unit string) ProgressOption {
	return func(c *progressConfig) { c.unit = unit }
}

// WithSmoothing sets the time constant of the moving average of the
// measured rate (default 10s): an update Δt after the previous one weighs
// 1−exp(−Δt/tau) against the history. 0 or less means no smoothing: the
// rate over the last interval.
func WithSmoothing(tau time.Duration) ProgressOption {
	return func(c *progressConfig) { c.smoothing = tau }
}

// WithStatus appends f's text to every status line (and, in plain mode,
// logs it as "devices"): the GPU figures of the rank's device, for
// example "gpu0 87% 12.3/80.0GiB 61C". f is called at every redraw and
// log line and must be quick; "" adds nothing.
func WithStatus(f func() string) ProgressOption {
	return func(c *progressConfig) { c.status = f }
}

// NewProgress returns a Progress for a run of total units (samples or
// steps), writing to w (nil discards). total ≤ 0 means unknown: no bar,
// percentage or ETA.
func NewProgress(w io.Writer, total int64, opts ...ProgressOption) *Progress {
	cfg := progressConfig{
		now:         time.Now,
		logInterval: 10 * time.Second,
		redraw:      100 * time.Millisecond,
		width:       -1, // auto
		barWidth:    30,
		unit:        "it",
		smoothing:   10 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if w == nil {
		w = io.Discard
	}
	p := &Progress{w: w, total: total, cfg: cfg}
	if cfg.terminal != nil {
		p.terminal = *cfg.terminal
	} else if f, ok := w.(*os.File); ok {
		p.terminal = IsTerminal(f)
	}
	p.logger = cfg.logger
	if p.logger == nil {
		p.logger = slog.New(slog.NewTextHandler(w, nil))
	}
	return p
}

var _ Sink = (*Progress)(nil)

// Terminal reports whether p draws a status line (true) or logs (false).
func (p *Progress) Terminal() bool { return p.terminal }

// Update records the state of the run: the 1-based epoch of epochs (0:
// use [WithEpochs]), done units of the run's total, the current loss and
// the caller's throughput in samples/s (≤ 0: show the measured rate). On a
// terminal the line is redrawn if the redraw interval has passed; in plain
// mode a line is logged if a log trigger fires.
func (p *Progress) Update(epoch, epochs int, done int64, loss, samplesPerSec float64) {
	p.mu.Lock()
	now := p.cfg.now()
	s := &p.st
	if epochs <= 0 {
		epochs = p.cfg.epochs
	}
	first := !s.updated
	newEpoch := s.updated && epoch != s.lastEpoch
	s.updated = true
	s.epoch, s.epochs, s.done, s.loss, s.sps = epoch, epochs, done, loss, samplesPerSec
	s.lastEpoch = epoch
	p.measure(now, done)

	if p.terminal {
		complete := p.total > 0 && done >= p.total
		if first || newEpoch || complete || !s.drawn || now.Sub(s.lastDrawT) >= p.cfg.redraw {
			p.draw(now)
		}
		p.mu.Unlock()
		return
	}
	s.unlogged = true
	log := !s.logged ||
		(p.cfg.logInterval > 0 && now.Sub(s.lastLogT) >= p.cfg.logInterval) ||
		(p.cfg.logEvery > 0 && done-s.lastLogDn >= p.cfg.logEvery)
	var attrs []slog.Attr
	if log {
		attrs = p.logAttrs()
		s.logged, s.lastLogT, s.lastLogDn, s.unlogged = true, now, done, false
	}
	p.mu.Unlock()
	if log {
		// Outside the lock: the logger may write to p.
		p.logger.LogAttrs(context.Background(), slog.LevelInfo, KindTrain, attrs...)
	}
}

// measure folds the progress since the last measurement into the rate.
func (p *Progress) measure(now time.Time, done int64) {
	s := &p.st
	if !s.rateBase || done < s.baseDone {
		s.rateBase, s.baseT, s.baseDone = true, now, done
		return
	}
	dt := now.Sub(s.baseT).Seconds()
	if dt <= 0 {
		return // same instant: keep the base, measure over a longer span next time
	}
	inst := float64(done-s.baseDone) / dt
	if !s.rateKnown || p.cfg.smoothing <= 0 {
		s.rate = inst
	} else {
		a := 1 - math.Exp(-dt/p.cfg.smoothing.Seconds())
		s.rate = a*inst + (1-a)*s.rate
	}
	s.rateKnown = true
	s.baseT, s.baseDone = now, done
}

// Rate returns the measured rate in units per second, and whether it is
// known yet (it needs two updates at different times).
func (p *Progress) Rate() (float64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.rate, p.st.rateKnown
}

// ETA returns the estimated time until done reaches total, and whether it
// is known (a positive measured rate and a known total).
func (p *Progress) ETA() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.eta()
}

func (p *Progress) eta() (time.Duration, bool) {
	s := &p.st
	if p.total <= 0 || !s.rateKnown {
		return 0, false
	}
	left := p.total - s.done
	if left <= 0 {
		return 0, true
	}
	if s.rate <= 0 {
		return 0, false
	}
	secs := float64(left) / s.rate
	if secs > float64(math.MaxInt64/int64(time.Second)) {
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

// Train shows r: Update(r.Epoch, 0, r.Step, r.Loss, r.SamplesPerSec). See
// the type's documentation for what total must then be.
func (p *Progress) Train(r Train) {
	p.Update(r.Epoch, 0, r.Step, r.Loss, r.SamplesPerSec)
}

// Eval does nothing: evaluation results go to the other sinks.
func (p *Progress) Eval(Eval) {}

// Summary does nothing: the summary goes to the other sinks.
func (p *Progress) Summary(Summary) {}

// Finish ends the display: on a terminal it draws the latest state and
// ends the status line with a newline; in plain mode it logs the latest
// update if it has not been logged. A later Update starts afresh (a new
// line, a first log line), keeping the measured rate.
func (p *Progress) Finish() {
	p.mu.Lock()
	s := &p.st
	var attrs []slog.Attr
	if p.terminal {
		if len(s.partial) > 0 {
			p.clear()
			p.write(append(s.partial, '\n'))
			s.partial = nil
		}
		if s.updated {
			p.draw(p.cfg.now())
		}
		if s.drawn {
			p.write([]byte{'\n'})
		}
		s.drawn, s.lineLen = false, 0
	} else if s.unlogged {
		attrs = p.logAttrs()
	}
	s.updated, s.unlogged, s.logged = false, false, false
	p.mu.Unlock()
	if attrs != nil {
		p.logger.LogAttrs(context.Background(), slog.LevelInfo, KindTrain, attrs...)
	}
}

// Close calls Finish; it makes a Progress an io.Closer for [Close] and
// [Multi].
func (p *Progress) Close() error {
	p.Finish()
	return nil
}

// Log prints msg on its own line. On a terminal the status line is
// cleared, msg printed, and the status line redrawn below it; in plain
// mode msg is logged at level Info.
func (p *Progress) Log(msg string) {
	if !p.terminal {
		p.logger.Info(msg)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.printLines([]byte(strings.TrimSuffix(msg, "\n") + "\n"))
}

// Write implements io.Writer. On a terminal, complete lines are printed
// above the status line (see [Progress.Log]) and a trailing partial line
// is held until its newline arrives (or Finish). In plain mode b is
// written to the underlying writer unchanged.
func (p *Progress) Write(b []byte) (int, error) {
	if !p.terminal {
		return p.w.Write(b)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &p.st
	s.partial = append(s.partial, b...)
	i := bytes.LastIndexByte(s.partial, '\n')
	if i < 0 {
		return len(b), nil
	}
	lines := s.partial[:i+1]
	rest := append([]byte(nil), s.partial[i+1:]...)
	err := p.printLines(lines)
	s.partial = rest
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// printLines prints complete lines above the status line. Caller holds mu.
func (p *Progress) printLines(lines []byte) error {
	wasDrawn := p.st.drawn
	p.clear()
	err := p.write(lines)
	if wasDrawn {
		p.draw(p.cfg.now())
	}
	return err
}

// clear erases the status line, leaving the cursor at its start.
func (p *Progress) clear() {
	s := &p.st
	if !s.drawn {
		return
	}
	_ = p.write([]byte("\r" + strings.Repeat(" ", s.lineLen) + "\r"))
	s.drawn, s.lineLen = false, 0
}

// draw (re)draws the status line. Caller holds mu.
func (p *Progress) draw(now time.Time) {
	s := &p.st
	line := p.render(p.columns())
	out := "\r" + line
	if pad := s.lineLen - len(line); pad > 0 {
		out += strings.Repeat(" ", pad)
	}
	_ = p.write([]byte(out))
	s.drawn, s.lineLen, s.lastDrawT = true, len(line), now
}

func (p *Progress) write(b []byte) error {
	_, err := p.w.Write(b)
	return err
}

// columns is the width to fit the status line in (0: unlimited).
func (p *Progress) columns() int {
	if p.cfg.width >= 0 {
		return p.cfg.width
	}
	if f, ok := p.w.(*os.File); ok {
		return terminalWidth(f)
	}
	return 0
}

// render formats the status line, fitted into cols−1 columns if cols > 0.
func (p *Progress) render(cols int) string {
	s := &p.st
	var pre, post strings.Builder
	if s.epoch > 0 {
		if s.epochs > 0 {
			fmt.Fprintf(&pre, "epoch %d/%d ", s.epoch, s.epochs)
		} else {
			fmt.Fprintf(&pre, "epoch %d ", s.epoch)
		}
	}
	frac := 0.0
	if p.total > 0 {
		frac = min(max(float64(s.done)/float64(p.total), 0), 1)
		fmt.Fprintf(&post, " %3d%% %d/%d", int(frac*100), s.done, p.total)
	} else {
		fmt.Fprintf(&post, "%d", s.done)
	}
	if s.sps > 0 && !math.IsInf(s.sps, 0) {
		fmt.Fprintf(&post, "  %s samples/s", formatRate(s.sps))
	} else if s.rateKnown {
		fmt.Fprintf(&post, "  %s %s/s", formatRate(s.rate), p.cfg.unit)
	}
	fmt.Fprintf(&post, "  loss %.4f", s.loss)
	if p.cfg.status != nil {
		if st := p.cfg.status(); st != "" {
			post.WriteString("  " + st)
		}
	}
	if p.total > 0 {
		d, ok := p.eta()
		fmt.Fprintf(&post, "  ETA %s", formatETA(d, ok))
	}
	if p.total <= 0 {
		return fitLine(pre.String()+post.String(), cols)
	}
	bw := p.cfg.barWidth
	if cols > 0 {
		bw = min(bw, cols-1-pre.Len()-post.Len()-2)
	}
	if bw < 10 {
		return fitLine(pre.String()+strings.TrimPrefix(post.String(), " "), cols)
	}
	return pre.String() + "[" + bar(frac, bw) + "]" + post.String()
}

func fitLine(s string, cols int) string {
	if cols > 0 && len(s) > cols-1 {
		return s[:max(cols-1, 0)]
	}
	return s
}

// bar draws frac (0..1) as width characters: "=====>    ".
func bar(frac float64, width int) string {
	filled := int(frac * float64(width))
	if filled >= width {
		return strings.Repeat("=", width)
	}
	return strings.Repeat("=", filled) + ">" + strings.Repeat(" ", width-filled-1)
}

// formatRate prints a rate with about three significant digits.
func formatRate(r float64) string {
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f", r)
	case r >= 10:
		return fmt.Sprintf("%.1f", r)
	default:
		return fmt.Sprintf("%.2f", r)
	}
}

// formatETA formats d as m:ss, or h:mm:ss from an hour up, rounding to the
// second; "--:--" when unknown.
func formatETA(d time.Duration, known bool) string {
	if !known || d < 0 {
		return "--:--"
	}
	secs := int64(d.Round(time.Second) / time.Second)
	h, m, sec := secs/3600, secs/60%60, secs%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, sec)
	}
	return fmt.Sprintf("%d:%02d", m, sec)
}

// logAttrs describes the latest update for plain mode. Caller holds mu.
func (p *Progress) logAttrs() []slog.Attr {
	s := &p.st
	attrs := []slog.Attr{slog.Int("epoch", s.epoch)}
	if s.epochs > 0 {
		attrs = append(attrs, slog.Int("epochs", s.epochs))
	}
	attrs = append(attrs, slog.Int64("done", s.done)) // in units (see WithUnit) of total
	if p.total > 0 {
		attrs = append(attrs, slog.Int64("total", p.total))
	}
	attrs = append(attrs, floatAttr("loss", s.loss))
	if s.sps > 0 && !math.IsInf(s.sps, 0) {
		attrs = append(attrs, floatAttr("samples_per_sec", s.sps))
	} else if s.rateKnown {
		attrs = append(attrs, floatAttr(p.cfg.unit+"_per_sec", s.rate))
	}
	if p.cfg.status != nil {
		if st := p.cfg.status(); st != "" {
			attrs = append(attrs, slog.String("devices", st))
		}
	}
	if p.total > 0 {
		d, ok := p.eta()
		attrs = append(attrs, slog.String("eta", formatETA(d, ok)))
	}
	return attrs
}
