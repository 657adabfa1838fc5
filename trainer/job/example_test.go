package job_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/job"
)

// A program that trains alone when started by hand and as one rank of a
// job when started by a launcher:
//
//	go build -o myprog . && gotrain launch --standalone --nproc-per-node 2 -- ./myprog
func Example() {
	cfg := trainer.Default()
	cfg.Dataset, cfg.SyntheticSize, cfg.Epochs = "synthetic", 6000, 2
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := runRank(context.Background(), cfg, log); err != nil {
		log.Error("training failed", "err", err)
		os.Exit(1)
	}
}

// runRank joins the job, trains as its rank, and leaves it.
func runRank(ctx context.Context, cfg trainer.Config, log *slog.Logger) error {
	j, err := job.Join(ctx, cfg, job.WithLogger(log))
	if err != nil {
		return err // job.ErrEnvironment: fix the launcher's variables
	}
	defer j.Close()
	opts, err := j.TrainerOptions(ctx)
	if err != nil {
		return err
	}
	t, err := trainer.New(cfg, append(opts, trainer.WithLogger(log))...)
	if err != nil {
		return err
	}
	res, err := t.Run(ctx)
	if err != nil {
		j.Abort(err) // the other ranks stop now, not at their deadline
		return err
	}
	if j.Rank() == 0 {
		fmt.Printf("test accuracy %.2f%% after %d steps on %d ranks\n", 100*res.TestAccuracy, res.Steps, j.World())
	}
	return nil
}
