// Command csvmlp is gotrain used as a library: a model of its own, written
// with package graph/nn, trained on a CSV file of its own, as one process
// or as a rank of a job (gotrain launch, torchrun, Slurm, Kubernetes).
//
//	csvmlp gendata DIR                  write DIR/train.csv and DIR/test.csv: 20 float features, 12 classes
//	csvmlp train --data DIR [flags]     train (csvmlp train -h); a rank of a job when started by a launcher
//	csvmlp eval --checkpoint PATH ...   gotrain eval, with this program's model registered
//
// Under a launcher:
//
//	gotrain launch --nproc-per-node 2 -- ./csvmlp train --data DIR --out w.safetensors
//
// The model, "csvmlp", is an MLP with its own widths (96, 48), activation
// (tanh) and dropout (0.1) between the layers; cmd/examples/csvmlp/peer_torch.py
// trains the same model on the same files with PyTorch.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/gotrain/gotrain/cmd/gotrain/cli"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/graph/nn"
	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/data"
	"github.com/gotrain/gotrain/trainer/job"
)

// MLP is the example's model: Linear-tanh-Dropout per hidden width, then a
// Linear to the classes. Its parameters are named as PyTorch's
// state_dict names the attributes hidden (an nn.ModuleList) and head.
type MLP struct {
	hidden []*nn.Linear
	head   *nn.Linear
	act    nn.Module
	drop   nn.Dropout
}

// Widths, activation and dropout of the example's MLP.
var (
	widths  = []int{96, 48}
	actName = "tanh"
	dropP   = 0.1
)

// NewMLP is the model's graph.ModelFunc: spec gives the data's input
// shape and class count.
func NewMLP(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
	act, err := nn.Activation(actName)
	if err != nil {
		return nil, err
	}
	m := &MLP{act: act, drop: nn.Dropout{P: dropP}}
	in := spec.InC * spec.InH * spec.InW
	for i, w := range widths {
		m.hidden = append(m.hidden, nn.NewLinear(s.Sub("hidden").Index(i), in, w))
		in = w
	}
	m.head = nn.NewLinear(s.Sub("head"), in, spec.Classes)
	return m, nil
}

// Forward is the model's computation, once per compiled program.
func (m *MLP) Forward(c nn.Ctx, x nn.T) nn.T {
	for _, l := range m.hidden {
		x = m.drop.Forward(c, m.act.Forward(c, l.Forward(c, x)))
	}
	return m.head.Forward(c, x)
}

func main() {
	if err := graph.Register("csvmlp", NewMLP); err != nil {
		fmt.Fprintln(os.Stderr, "csvmlp:", err)
		os.Exit(1)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  csvmlp gendata DIR [--train N] [--test N] [--seed S]
  csvmlp train --data DIR [flags]   (csvmlp train -h)
  csvmlp eval --checkpoint PATH [--data-dir DIR]   (gotrain eval)
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "gendata":
		err = cmdGenData(args[1:])
	case "train":
		err = cmdTrain(args[1:], stdout, stderr)
	case "eval":
		// gotrain eval itself: this binary has the model registered.
		return cli.Main(args, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		return 2
	}
	var usageErr usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usageErr):
		fmt.Fprintf(stderr, "csvmlp: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "csvmlp: %v\n", err)
	return 1
}

type usageError struct{ error }

func cmdGenData(args []string) error {
	fs := flag.NewFlagSet("csvmlp gendata", flag.ContinueOnError)
	nTrain := fs.Int("train", 24000, "training rows")
	nTest := fs.Int("test", 12000, "test rows")
	seed := fs.Uint64("seed", 1, "seed")
	if len(args) == 0 {
		return usageError{errors.New("gendata: want a directory")}
	}
	dir := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err}
	}
	if *nTrain < 1 || *nTest < 1 || *nTrain > 1e7 || *nTest > 1e7 {
		return usageError{fmt.Errorf("gendata: --train and --test must be from 1 to 10000000")}
	}
	return genData(dir, *nTrain, *nTest, *seed)
}

func cmdTrain(args []string, stdout, stderr io.Writer) error {
	cfg := trainer.Default()
	cfg.Model, cfg.Dataset = "csvmlp", "csv"
	cfg.Epochs, cfg.BatchSize, cfg.LR, cfg.Schedule, cfg.Optimizer = 8, 64, 1e-3, "constant", "adam"
	cfg.LogEvery = 0
	fs := flag.NewFlagSet("csvmlp train", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.DataDir, "data", "", "directory with train.csv and test.csv (label column \"label\")")
	fs.IntVar(&cfg.Epochs, "epochs", cfg.Epochs, "epochs")
	fs.IntVar(&cfg.BatchSize, "batch-size", cfg.BatchSize, "samples per step (global: split across the ranks)")
	fs.Float64Var(&cfg.LR, "lr", cfg.LR, "Adam's learning rate")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the initial weights, the order of the samples and dropout")
	fs.Int64Var(&cfg.MaxSteps, "max-steps", 0, "stop after this many steps (0: all epochs)")
	fs.StringVar(&cfg.CheckpointDir, "checkpoint-dir", "", "write checkpoints here (each epoch)")
	fs.StringVar(&cfg.Resume, "resume", "", "resume from a checkpoint, or the newest in a directory")
	fs.StringVar(&cfg.Out, "out", "", "write the final weights here (safetensors)")
	fs.IntVar(&cfg.Threads, "threads", 0, "threads (0: one per CPU)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if cfg.DataDir == "" || fs.NArg() > 0 {
		return usageError{errors.New("train: want --data DIR (see csvmlp gendata)")}
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The data: the program's own reading of its CSV files, standardised
	// by the training split's constants (recorded in the checkpoint, where
	// gotrain eval finds them).
	train, err := data.LoadCSV(filepath.Join(cfg.DataDir, "train.csv"), data.CSVOptions{Label: "label"})
	if err != nil {
		return err
	}
	train.Standardize()
	test, err := data.LoadCSV(filepath.Join(cfg.DataDir, "test.csv"), data.CSVOptions{Label: "label", Classes: train.Classes})
	if err != nil {
		return err
	}
	if err := test.SetNorm(train.Mean, train.Std); err != nil {
		return err
	}

	// This process as a rank of its job (one process without a launcher).
	j, err := job.Join(ctx, cfg, job.WithLogger(log))
	if err != nil {
		return err
	}
	defer j.Close()
	opts, err := j.TrainerOptions(ctx)
	if err != nil {
		return err
	}
	opts = append(opts, trainer.WithSource(train, test), trainer.WithLogger(log))
	t, err := trainer.New(cfg, opts...)
	if err != nil {
		return err
	}
	res, err := t.Run(ctx)
	if err != nil {
		j.Abort(err)
		return err
	}
	if j.Rank() == 0 {
		fmt.Fprintf(stdout, "csvmlp: rank 0 of %d: test accuracy %.2f%% (loss %.4f) after %d steps; %.0f samples/s\n",
			j.World(), 100*res.TestAccuracy, res.TestLoss, res.Steps, res.TrainSamplesPerSec)
	}
	return nil
}
