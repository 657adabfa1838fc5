// Package job makes a Go program one rank of a data-parallel training
// job: what `gotrain train` does to join a job, for any program that
// builds a trainer.Config and runs trainer.New. The program is started
// once per rank by a launcher — `gotrain launch -- ./myprog`, torchrun,
// Slurm's srun, a Kubernetes Indexed Job — and [Join] reads where it
// stands from the environment that launcher sets; started by hand, it is
// a one-process job and trains alone.
//
// # The environment
//
// [Join] reads the job's layout through trainer/dist/rendezvous.FromEnv;
// the first of these that applies wins (see that package for details):
//
//  1. torchrun's variables, which `gotrain launch` sets too: RANK and
//     WORLD_SIZE (required), LOCAL_RANK (default 0), LOCAL_WORLD_SIZE
//     (default 1), MASTER_ADDR (default 127.0.0.1 for a job on one node)
//     and MASTER_PORT (default 29500).
//  2. Slurm's, under srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
//     SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE; the master is
//     MASTER_ADDR or else the first host of SLURM_JOB_NODELIST.
//  3. A Kubernetes Indexed Job's: JOB_COMPLETION_INDEX is the rank;
//     WORLD_SIZE and MASTER_ADDR are required.
//  4. None of them: a one-process job, rank 0 of 1. So is WORLD_SIZE=1.
//
// A job of several ranks also needs a secret shared by all its processes,
// in GOTRAIN_JOB_SECRET or in the file GOTRAIN_JOB_SECRET_FILE names
// (`gotrain launch` makes one): every connection of the job — the
// rendezvous store, the ring, the parameter server — is authenticated
// with it (trainer/dist/secure), and encrypted with mutual TLS when the
// Config names certificates (TLSCert, TLSKey, TLSCA). GOTRAIN_LISTEN_HOST
// ([EnvListenHost]) overrides the address a rank's peers reach it at.
// NCCL's own variables (NCCL_LIBRARY, NCCL_DEBUG, NCCL_SOCKET_IFNAME, ...)
// reach the library untouched. [WithEnv] replaces the environment.
//
// # What Join does
//
// With several ranks, rank 0 serves the rendezvous store on
// MASTER_ADDR:MASTER_PORT and every rank connects to it; then the ranks
// connect the communicator that Config.Backend names: "cpu" (the
// pure-Go ring over TCP, trainer/dist; "auto" and "" mean it in this
// build) or "nccl" (on the device given with [WithDevice]). Every rank
// must join within Config.RdzvTimeout. The [Job] then gives:
//
//   - [Job.Rank], [Job.World], [Job.LocalRank] (the GPU to use),
//     [Job.LocalWorld], [Job.Distributed];
//   - [Job.TrainerOptions]: the options that make trainer.New train as
//     this rank (the communicator; with Config.Sync "async" the
//     connection to rank 0's parameter server; the device);
//   - [Job.ServeMetrics]: a Prometheus endpoint per rank, at the given
//     port plus the local rank;
//   - [Job.Abort], for a rank whose training failed, and [Job.Close].
//
// # A program, end to end
//
//	func main() {
//		cfg := trainer.Default()
//		cfg.Dataset, cfg.SyntheticSize, cfg.Epochs = "synthetic", 6000, 2
//		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
//		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//		defer stop()
//		if err := train(ctx, cfg, log); err != nil {
//			log.Error("training failed", "err", err)
//			os.Exit(1)
//		}
//	}
//
//	func train(ctx context.Context, cfg trainer.Config, log *slog.Logger) error {
//		j, err := job.Join(ctx, cfg, job.WithLogger(log))
//		if err != nil {
//			return err
//		}
//		defer j.Close()
//		opts, err := j.TrainerOptions(ctx)
//		if err != nil {
//			return err
//		}
//		t, err := trainer.New(cfg, append(opts, trainer.WithLogger(log))...)
//		if err != nil {
//			return err
//		}
//		res, err := t.Run(ctx)
//		if err != nil {
//			j.Abort(err) // the other ranks stop now, not at their deadline
//			return err
//		}
//		if j.Rank() == 0 {
//			fmt.Printf("test accuracy %.2f%% on %d ranks\n", 100*res.TestAccuracy, j.World())
//		}
//		return nil
//	}
//
// Run as `go build -o myprog . && gotrain launch --standalone
// --nproc-per-node 4 -- ./myprog`, every rank ends with the same weights,
// those of one process with the same global batch (Config.BatchSize is
// the job's, split among the ranks). Run as `./myprog` it trains alone.
// The Config must be the same on every rank (the trainer compares them at
// the start and refuses a mismatch), and the one given to Join must be
// the one given to trainer.New.
//
// # Errors
//
// Join's errors say what to change:
//
//   - [ErrEnvironment]: the launcher's variables are incomplete or
//     inconsistent (WORLD_SIZE=2 with RANK=5; MASTER_PORT=0); the message
//     names the variable. Retrying does not help.
//   - trainer.ErrConfig: Config.Backend is not a backend; for
//     ServeMetrics, an address that is not HOST:PORT.
//   - A missing secret names GOTRAIN_JOB_SECRET; unreadable or mismatched
//     certificates name the file or the certificate.
//   - "rank 0 cannot serve the rendezvous store on port P": MASTER_PORT is
//     in use; choose another.
//   - "not every rank of N joined within --rdzv-timeout": a rank did not
//     start or cannot reach the master (it wraps dist.ErrTimeout or
//     context.DeadlineExceeded); ctx's end stops Join too.
//   - A rank whose secret is not rank 0's is refused: its error wraps
//     secure.ErrAuth.
//
// Once the job runs, the trainer's errors are the communicator's
// (trainer/dist: a rank lost or stalled is named, within Config.Timeout).
// Nothing in this package panics on a bad environment or configuration,
// and a Job is safe to Close in every state.
package job
