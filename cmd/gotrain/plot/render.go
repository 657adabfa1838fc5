package plot

import (
	"fmt"
	"image/color"
	"io"
	"sort"
	"strconv"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	_ "gonum.org/v1/plot/vg/vgimg" // registers png, jpg, tiff
	_ "gonum.org/v1/plot/vg/vgpdf" // registers pdf
	_ "gonum.org/v1/plot/vg/vgsvg" // registers svg
)

// layout is the geometry of a figure: panels stacked top to bottom under
// an optional title band.
type layout struct {
	width, panelHeight, titleHeight vg.Length
	panels                          int
}

func (l layout) height() vg.Length { return l.titleHeight + vg.Length(l.panels)*l.panelHeight }

// titleBand is the height reserved for the figure title.
const titleBand = 0.4 * vg.Inch

// panels builds the plots for r, top to bottom.
func panels(r *run) ([]*gplot.Plot, error) {
	var ps []*gplot.Plot

	// Loss.
	p := newPanel("Loss", "step", "loss")
	if err := addLine(p, "train", r.trainLoss, 0, false); err != nil {
		return nil, err
	}
	if len(r.testLoss) > 0 {
		if err := addLine(p, "test (end of epoch)", r.testLoss, 1, true); err != nil {
			return nil, err
		}
	}
	if logScaleFits(r.trainLoss, r.testLoss) {
		p.Y.Scale = gplot.LogScale{}
		p.Y.Tick.Marker = gplot.LogTicks{Prec: -1}
		p.Y.Label.Text = "loss (log scale)"
	}
	ps = append(ps, p)

	// Accuracy per epoch.
	if len(r.testAcc) > 0 {
		p := newPanel("Test accuracy", "epoch", "accuracy (%)")
		if err := addLine(p, "", r.testAcc, 1, true); err != nil {
			return nil, err
		}
		p.X.Tick.Marker = integerTicks{}
		ps = append(ps, p)
	}

	// Throughput.
	if len(r.throughput) > 0 {
		p := newPanel("Throughput", "step", "samples/s")
		if err := addLine(p, "", r.throughput, 2, false); err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}

	// GPUs and batch shares, when the file has them.
	for _, s := range []struct {
		title, ylabel, legend string
		series                map[int][]point
	}{
		{"GPU utilisation", "utilisation (%)", "gpu %d", r.gpuUtil},
		{"GPU memory used", "GiB", "gpu %d", r.gpuMem},
		{"Batch shares", "share of the global batch", "rank %d", r.shares},
	} {
		if len(s.series) == 0 {
			continue
		}
		p := newPanel(s.title, "step", s.ylabel)
		keys := make([]int, 0, len(s.series))
		for k := range s.series {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		for i, k := range keys {
			if err := addLine(p, fmt.Sprintf(s.legend, k), s.series[k], i, false); err != nil {
				return nil, err
			}
		}
		ps = append(ps, p)
	}
	return ps, nil
}

func newPanel(title, xlabel, ylabel string) *gplot.Plot {
	p := gplot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	p.X.Tick.Marker = plainTicks{}
	p.Y.Tick.Marker = plainTicks{}
	p.Add(plotter.NewGrid())
	return p
}

// addLine adds pts as a line in colour i (with a point per sample when
// points is set, for sparse series) and a legend entry unless name is "".
func addLine(p *gplot.Plot, name string, pts []point, i int, points bool) error {
	if len(pts) == 0 {
		return nil
	}
	xys := make(plotter.XYs, len(pts))
	for j, q := range pts {
		xys[j] = plotter.XY{X: q.x, Y: q.y}
	}
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.Color = plotutil.Color(i)
	l.Width = vg.Points(1.2)
	p.Add(l)
	thumbs := []gplot.Thumbnailer{l}
	if points || len(pts) == 1 {
		s, err := plotter.NewScatter(xys)
		if err != nil {
			return err
		}
		s.Color = plotutil.Color(i)
		s.Shape = draw.CircleGlyph{}
		s.Radius = vg.Points(2.5)
		p.Add(s)
		thumbs = append(thumbs, s)
	}
	if name != "" {
		p.Legend.Add(name, thumbs...)
	}
	return nil
}

// logScaleFits reports whether the loss is positive throughout and spans
// more than a factor of 20, where a log scale shows the late, slow
// progress that a linear one flattens.
func logScaleFits(series ...[]point) bool {
	lo, hi, n := 0.0, 0.0, 0
	for _, s := range series {
		for _, q := range s {
			if q.y <= 0 {
				return false
			}
			if n == 0 || q.y < lo {
				lo = q.y
			}
			if n == 0 || q.y > hi {
				hi = q.y
			}
			n++
		}
	}
	return n > 1 && hi > 20*lo
}

// plainTicks are gonum's default ticks, labelled with the shortest
// decimal that represents them (37500, not 37500.00).
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []gplot.Tick {
	ticks := gplot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			// Round away float noise such as 0.30000000000000004.
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'g', 10, 64)
		}
	}
	return ticks
}

// integerTicks marks whole numbers only (epochs), at most about ten.
type integerTicks struct{}

func (integerTicks) Ticks(min, max float64) []gplot.Tick {
	var ticks []gplot.Tick
	stride := 1
	for (max-min)/float64(stride) > 10 {
		stride *= 2
	}
	for v := int(min); float64(v) <= max; v += stride {
		if float64(v) >= min {
			ticks = append(ticks, gplot.Tick{Value: float64(v), Label: fmt.Sprint(v)})
		}
	}
	return ticks
}

// render draws ps stacked in l and writes the figure to w in format
// (an extension without the dot: png, svg, pdf, jpg, tiff...).
func render(w io.Writer, ps []*gplot.Plot, title string, l layout, format string) error {
	c, err := draw.NewFormattedCanvas(l.width, l.height(), format)
	if err != nil {
		return err
	}
	dc := draw.New(c)
	if title != "" {
		sty := text.Style{
			Color:   color.Black,
			Font:    font.From(gplot.DefaultFont, 14),
			XAlign:  draw.XCenter,
			YAlign:  draw.YCenter,
			Handler: gplot.DefaultTextHandler,
		}
		dc.FillText(sty, vg.Point{X: l.width / 2, Y: l.height() - l.titleHeight/2}, title)
		dc = draw.Crop(dc, 0, 0, 0, -l.titleHeight)
	}
	rows := make([][]*gplot.Plot, len(ps))
	for i, p := range ps {
		rows[i] = []*gplot.Plot{p}
	}
	tiles := draw.Tiles{
		Rows: len(ps), Cols: 1,
		PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter,
		PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter,
	}
	canvases := gplot.Align(rows, tiles, dc)
	for i, p := range ps {
		p.Draw(canvases[i][0])
	}
	_, err = c.WriteTo(w)
	return err
}
