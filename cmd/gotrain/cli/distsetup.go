package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/job"
)

// distFlags are the flags of a data-parallel run.
type distFlags struct {
	backend                string
	rdzvTimeout            time.Duration
	tlsCert, tlsKey, tlsCA string
}

// config is the part of a trainer.Config that job.Join reads, from f.
func (f distFlags) config() trainer.Config {
	return trainer.Config{Backend: f.backend, RdzvTimeout: f.rdzvTimeout, TLSCert: f.tlsCert, TLSKey: f.tlsKey, TLSCA: f.tlsCA}
}

// join makes this process a rank of the job its environment describes
// (job.Join; a one-process job without one), with the CLI's error
// messages: a bad environment or --backend is a usage error.
func join(ctx context.Context, cfg trainer.Config, log *slog.Logger, dev device.Device) (*job.Job, error) {
	j, err := job.Join(ctx, cfg, job.WithLogger(log), job.WithDevice(dev))
	return j, usageError(err)
}

// usageError turns the job package's errors that are the user's to fix
// (the environment, a flag) into usage errors (exit status 2), with the
// messages gotrain has always printed: "usage: rendezvous: RANK=5 ...".
func usageError(err error) error {
	for _, sentinel := range []error{job.ErrEnvironment, trainer.ErrConfig} {
		if errors.Is(err, sentinel) {
			return fmt.Errorf("%w: %s", errUsage, strings.TrimPrefix(err.Error(), sentinel.Error()+": "))
		}
	}
	return err
}

// distJob is a job of several ranks, for the commands that use the
// communicator themselves (bench allreduce).
type distJob struct {
	*job.Job
	comm dist.Communicator
}

// joinJob is join for a command that needs several ranks: with one rank
// it returns nil.
func joinJob(ctx context.Context, f distFlags, log *slog.Logger, dev device.Device) (*distJob, error) {
	j, err := join(ctx, f.config(), log, dev)
	if err != nil {
		return nil, err
	}
	if !j.Distributed() {
		j.Close()
		return nil, nil
	}
	return &distJob{Job: j, comm: j.Communicator()}, nil
}
