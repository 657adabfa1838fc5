// Package plot is 'gotrain plot', which draws the curves of a training
// run from its metrics file:
//
//	gotrain train --metrics-file run.jsonl ...
//	gotrain plot run.jsonl                    # writes run.png
//	gotrain plot run.jsonl -o curves.svg --title "MLP, Adam 2e-3"
//
// The command line calls [Run].
//
// # Flags
//
//	-o, --out FILE     output file (default: the input with .png instead of its
//	                   extension); the extension picks the format: .png, .svg,
//	                   .pdf (also .jpg, .jpeg, .tif, .tiff); "-" writes PNG to
//	                   standard output
//	--width L          figure width (default 8in)
//	--height L         height of each panel (default 2.5in); the figure is
//	                   panels × L tall, plus 0.4in for the title
//	--title T          title above the panels (default: the file name and, if
//	                   the run finished, its final test accuracy); --title ''
//	                   for none
//	--rank N           plot the train and eval records of rank N (default: the
//	                   lowest rank found; a note on standard error says so when
//	                   the file holds several)
//	-h, --help         usage
//
// Lengths take a unit: in, cm, mm or pt (8in, 20cm, 576pt), between 0.5in
// and 100in. Raster formats are drawn at 96 dots per inch, so the defaults
// give a PNG 768 pixels wide and 240 pixels tall per panel. Flags may come
// before or after the file name; after "--" everything is a file name.
//
// # Panels
//
// Top to bottom; a panel with no data is left out, except the first:
//
//  1. Loss against step: the train records' loss, and the eval records'
//     test loss, each drawn at the step that ended its epoch (the largest
//     step of the train records of that epoch, or of the latest earlier
//     epoch that has any). When every loss is positive and they span more
//     than a factor of 20, the loss axis is logarithmic.
//  2. Test accuracy (percent) against epoch, from the eval records.
//  3. Throughput (samples per second) against step, from the train records.
//  4. GPU utilisation (percent) against step, one line per device, from the
//     "gpu" arrays of the train records (field util_gpu_percent).
//  5. GPU memory used (GiB) against step, one line per device (field
//     mem_used_bytes of the same arrays).
//  6. Batch share against step, one line per rank, from "balance" records:
//     {"kind":"balance","step":S,"shares":[s0,s1,...]}, shares[i] being the
//     fraction of the global batch rank i gets.
//
// # Input
//
// The file is JSON Lines as written by gotrain's --metrics-file (see
// package trainer/metrics): one object per line, selected by its "kind".
// Kinds other than train, eval, summary and balance are ignored, and so
// are fields not listed above and blank lines. A null value (how the
// metrics file writes NaN and ±Inf) or a missing field drops that value
// only: a train record with a null loss still adds its throughput. When
// several records have one step (train, balance) or one epoch (eval), as
// after a resumed run appended to the file, the last one wins. Train and
// eval records of ranks other than the one plotted are skipped (a record
// without "rank" is rank 0).
//
// # Errors
//
// Exit status 0 on success, 1 on a failure, 2 on a usage error (a bad
// flag or length, no file or more than one, an output extension that is
// not a supported format). Failures name the file: a line that is not a
// JSON object, or whose known fields have the wrong type, is reported with
// its line number (run.jsonl:17: malformed record: ...); an empty file and
// a file without train records are reported as such; nothing is written
// then.
package plot
