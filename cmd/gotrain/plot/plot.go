package plot

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Defaults of the size flags.
const (
	DefaultWidth       = "8in"
	DefaultPanelHeight = "2.5in"
)

const usageText = `usage: gotrain plot [flags] FILE.jsonl

Plots a metrics file (written by gotrain train --metrics-file) as stacked
panels: loss (train, and test at each epoch's end), test accuracy per epoch,
throughput, and, when the file has them, GPU utilisation and memory per
device and the batch share per rank. The output format follows the
extension of -o: .png, .svg, .pdf (also .jpg, .tif). Flags may come before
or after FILE.

flags:
`

// options are the parsed command line.
type options struct {
	in, out, format string
	title           string
	titleSet        bool
	width, height   vg.Length
	rank            int
}

// errUsage marks usage errors (exit status 2).
var errUsage = errors.New("usage")

// errFlagPrinted marks errors the flag package has already printed.
var errFlagPrinted = errors.New("flag error printed")

// Run implements `gotrain plot [flags] FILE.jsonl`: reads a metrics file
// (JSON Lines, records with "kind": "train" (epoch, step, loss, lr,
// samples_per_sec), "eval" (epoch, test_loss, test_accuracy), "summary",
// optional "gpu": [{"index":..,"util_gpu_percent":..,"mem_used_bytes":..}]
// on train records, and "balance" records
// {"kind":"balance","step":..,"shares":[..]}) and writes a PNG (or SVG/PDF
// by the -o extension) with stacked panels: training loss vs step (and test
// loss per epoch mapped to the step at the epoch's end), test accuracy vs
// epoch, throughput (samples/s) vs step, and — when present — GPU
// utilisation per device vs step and batch shares per rank vs step.
// Returns an exit code (0 ok, 1 failure, 2 usage).
func Run(args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errFlagPrinted):
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "gotrain plot: %v (see 'gotrain plot -h')\n", err)
		return 2
	}
	r, err := readRun(o.in, o.rank)
	if err != nil {
		fmt.Fprintf(stderr, "gotrain plot: %v\n", err)
		return 1
	}
	if o.rank < 0 && len(r.ranks) > 1 {
		fmt.Fprintf(stderr, "gotrain plot: %s holds ranks %v; plotting rank %d (choose with --rank)\n", o.in, r.ranks, r.rank)
	}
	ps, err := panels(r)
	if err != nil {
		fmt.Fprintf(stderr, "gotrain plot: %s: %v\n", o.in, err)
		return 1
	}
	title := o.title
	if !o.titleSet {
		title = filepath.Base(o.in)
		if r.finalAcc != nil {
			title += fmt.Sprintf(": test accuracy %.2f%%", 100**r.finalAcc)
		}
	}
	l := layout{width: o.width, panelHeight: o.height, panels: len(ps)}
	if title != "" {
		l.titleHeight = titleBand
	}
	var buf bytes.Buffer
	if err := render(&buf, ps, title, l, o.format); err != nil {
		fmt.Fprintf(stderr, "gotrain plot: drawing %s: %v\n", o.out, err)
		return 1
	}
	if o.out == "-" {
		if _, err := stdout.Write(buf.Bytes()); err != nil {
			fmt.Fprintf(stderr, "gotrain plot: writing to standard output: %v\n", err)
			return 1
		}
		return 0
	}
	if err := os.WriteFile(o.out, buf.Bytes(), 0o644); err != nil {
		fmt.Fprintf(stderr, "gotrain plot: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (%d panels, %s by %s)\n", o.out, len(ps), fmtLen(l.width), fmtLen(l.height()))
	return 0
}

func fmtLen(l vg.Length) string {
	return fmt.Sprintf("%.3gin", float64(l/vg.Inch))
}

func parseArgs(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	var width, height string
	fs := flag.NewFlagSet("gotrain plot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.out, "o", "", "output file; its extension picks the format; - for standard output (PNG) (default: FILE with .png)")
	fs.StringVar(&o.out, "out", "", "same as -o")
	fs.StringVar(&width, "width", DefaultWidth, "figure width, with a unit: in, cm, mm or pt")
	fs.StringVar(&height, "height", DefaultPanelHeight, "height of each panel, with a unit: in, cm, mm or pt")
	fs.StringVar(&o.title, "title", "", "figure title; --title '' for none (default: the file name and the final test accuracy)")
	fs.IntVar(&o.rank, "rank", -1, "plot the train and eval records of this rank (default: the lowest rank in the file)")

	// Flags may follow the file name: parse, take one argument, repeat.
	// After "--" every argument is a file name.
	var pos []string
	rest := args
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errFlagPrinted
		}
		if consumed := len(rest) - fs.NArg(); consumed > 0 && rest[consumed-1] == "--" {
			pos = append(pos, fs.Args()...)
			break
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "title" {
			o.titleSet = true
		}
	})
	switch len(pos) {
	case 0:
		return nil, fmt.Errorf("%w: no metrics file given: gotrain plot [flags] FILE.jsonl", errUsage)
	case 1:
	default:
		return nil, fmt.Errorf("%w: one metrics file, not %d (%s)", errUsage, len(pos), strings.Join(pos, " "))
	}
	o.in = pos[0]
	if o.in == "-" {
		return nil, fmt.Errorf("%w: the metrics file must be a file, not standard input", errUsage)
	}
	var err error
	if o.width, err = parseLength("--width", width); err != nil {
		return nil, err
	}
	if o.height, err = parseLength("--height", height); err != nil {
		return nil, err
	}
	if o.out == "" {
		o.out = strings.TrimSuffix(o.in, filepath.Ext(o.in)) + ".png"
		if o.out == o.in { // FILE.png given as the input
			return nil, fmt.Errorf("%w: %s would be overwritten by the plot; name the output with -o", errUsage, o.in)
		}
	}
	if o.out == "-" {
		o.format = "png"
		return o, nil
	}
	ext := strings.TrimPrefix(strings.ToLower(filepath.Ext(o.out)), ".")
	if ext == "" {
		return nil, fmt.Errorf("%w: -o %s has no extension to choose the format by (.png, .svg or .pdf)", errUsage, o.out)
	}
	supported := false
	for _, f := range draw.Formats() {
		supported = supported || f == ext
	}
	if !supported || ext == "tex" || ext == "eps" {
		return nil, fmt.Errorf("%w: -o %s: unsupported format %q; use .png, .svg or .pdf (or .jpg, .tif)", errUsage, o.out, ext)
	}
	o.format = ext
	return o, nil
}

// maxLength bounds each size flag: 100in at 96 dpi is 9600 pixels.
const maxLength = 100 * vg.Inch

func parseLength(name, s string) (vg.Length, error) {
	l, err := vg.ParseLength(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%w: %s %q is not a length such as 8in, 20cm, 150mm or 600pt", errUsage, name, s)
	case l < vg.Inch/2:
		return 0, fmt.Errorf("%w: %s %s is too small (at least 0.5in)", errUsage, name, s)
	case l > maxLength:
		return 0, fmt.Errorf("%w: %s %s is too large (at most 100in)", errUsage, name, s)
	}
	return l, nil
}
