// Package launch is 'gotrain launch', the multi-process launcher: in the
// spirit of PyTorch's torchrun, it starts one worker process per device (or
// per slice of the CPU) on a node, tells each its place in the job through
// environment variables, and supervises them so that a job either finishes
// on every worker or stops on every worker.
//
// The command line calls [Run] with gotrain's own executable. When the
// first word after "--" is a gotrain command (train, eval, bench, ...: see
// [GotrainCommands]) or starts with "-", the workers are gotrain itself,
// running that command; any other first word is a program, which the
// workers run instead, with the same environment, output, restarts and
// signals, as torchrun runs any program:
//
//	gotrain launch --nproc-per-node N [flags] -- COMMAND [ARGS...]   # gotrain COMMAND ARGS...
//	gotrain launch --nproc-per-node N [flags] -- PROGRAM [ARGS...]   # PROGRAM ARGS...
//
// PROGRAM is a path (./myprog, /usr/bin/python3) or a name looked up in
// PATH (python3), resolved once, before any worker starts; a program named
// like a gotrain command is run by its path (./train). A user's Go program
// becomes a rank of the job by reading the variables below.
//
// # Flags
//
//	--nproc-per-node N      workers on this node (required, at least 1)
//	--nnodes M              nodes in the job (default 1)
//	--node-rank K           this node's rank, 0 to M-1 (default 0)
//	--rdzv-endpoint H[:P]   address of node 0, where rank 0 listens; every node
//	                        must be able to reach it (default 127.0.0.1:29500 on
//	                        one node; required when --nnodes > 1; port 29500 when
//	                        none is given; IPv6 as [addr]:port)
//	--standalone            a single-node job on 127.0.0.1 and a free port the
//	                        launcher picks (so that several jobs can share a
//	                        machine); not with --rdzv-endpoint or --nnodes > 1
//	--master-port P         rank 0's port (with --standalone: instead of a free
//	                        one; with --rdzv-endpoint H: the port; it must agree
//	                        with a port given in --rdzv-endpoint)
//	--secret-file FILE      file holding the job secret (see below)
//	--grace D               time between SIGTERM (or SIGINT) and SIGKILL when
//	                        the workers are stopped (default 10s)
//	-h, --help              usage
//
// Usage errors (a missing or bad flag, --node-rank outside 0..nnodes-1,
// --nnodes > 1 without --rdzv-endpoint or without a secret, no command after
// "--", a program that is not found or not executable) print a message and
// exit with status 2 before any worker starts.
//
// # The workers' environment
//
// Each worker inherits the launcher's environment plus torchrun's variables.
// For local worker i (0..N-1) on node K of M:
//
//	RANK              K*N + i, the global rank (0..M*N-1)
//	WORLD_SIZE        M*N, the number of workers in the job
//	LOCAL_RANK        i, the rank on this node (pick the GPU with it)
//	LOCAL_WORLD_SIZE  N
//	GROUP_RANK        K, the node's rank
//	GROUP_WORLD_SIZE  M
//	MASTER_ADDR       the host of the endpoint (where rank 0 listens)
//	MASTER_PORT       its port
//	GOTRAIN_JOB_SECRET the job secret
//
// A worker's standard input is /dev/null; it runs in a process group of its
// own, so that a terminal's Ctrl-C reaches only the launcher, which forwards
// it (below), and signals sent to a worker reach whatever it started too.
//
// # Output
//
// Every line a worker writes to its standard output goes to the launcher's
// standard output, and every line to its standard error to the launcher's
// standard error, prefixed with its global rank:
//
//	[rank0] epoch 1: loss 0.41
//	[rank1] epoch 1: loss 0.43
//
// Lines are passed on whole (lines from different workers never mix within
// a line), as soon as their newline arrives; a last line without a newline is
// passed on, with one, when the worker's output ends. Lines longer than 1 MiB
// are passed on in 1 MiB pieces. The launcher's own messages start with
// "gotrain launch: " and go to standard error.
//
// # Failures and signals
//
// The launcher waits for every worker. When all exit with status 0 it exits
// with 0. When a worker exits with another status, or is killed by a signal,
// the launcher prints, for example,
//
//	gotrain launch: rank 1 (local 1, pid 4242) exited with status 3; stopping the other workers
//	gotrain launch: rank 1 (local 1, pid 4242) killed by signal SIGKILL; stopping the other workers
//
// sends SIGTERM to the other workers (to their process groups), sends
// SIGKILL to those still running --grace later, and exits with the failing
// worker's status (1 when it was killed by a signal). A worker that cannot
// be started stops the others the same way, and the launcher exits with 1.
//
// With --max-restarts R the launcher then starts the group again, up to R
// times: the same ranks, a fresh port under --standalone, and
// TORCHELASTIC_RESTART_COUNT set to the number of restarts so far (as
// torchrun sets it). gotrain train, restarted, resumes from the newest
// checkpoint in its --checkpoint-dir (or starts afresh when none was
// written yet). After the last restart fails the launcher prints what
// happened at each start and exits with the failing worker's status.
// Without restarts a failed job is resumed by running it again with
// --resume.
//
// With --nnodes MIN:MAX the job is elastic: the launchers form the group in
// rounds through a store of their own at --rdzv-endpoint (served by the
// launcher that owns that address), node ranks are assigned per round, and
// a failed round is followed by one of the nodes still alive, at least MIN
// (see elastic.go for the protocol).
//
// SIGINT or SIGTERM sent to the launcher is forwarded, as received, to every
// worker; those still running --grace later get SIGKILL, and the launcher
// exits with 128 plus the signal's number (130 for SIGINT, 143 for SIGTERM).
// A second signal sends SIGKILL at once. gotrain train writes a checkpoint
// when it receives either signal (with --checkpoint-dir), so give --grace
// enough time for that. [Run] takes a context: cancelling it (the command
// line passes a signal.NotifyContext context) stops the workers in the same
// way, with the signal the context received or SIGTERM.
//
// On Linux each worker also gets SIGKILL from the kernel should the launcher
// die without stopping it (killed with SIGKILL itself, say), and after a
// stop the launcher kills whatever is left in the workers' process groups:
// no worker is left behind.
//
// # The job secret
//
// The workers authenticate one another with a secret shared by the whole job
// (see trainer/dist/secure), passed to them as GOTRAIN_JOB_SECRET. The
// launcher takes it from, in order: --secret-file FILE (its contents, white
// space trimmed), the launcher's GOTRAIN_JOB_SECRET, or the file named by
// GOTRAIN_JOB_SECRET_FILE. Without any of them a single-node job gets a fresh
// random one (32 random bytes, in hex) for its workers, and a job of several
// nodes is refused (exit status 2): every node must be given the same secret,
// for example
//
//	export GOTRAIN_JOB_SECRET=$(openssl rand -hex 32)   # once, then copy it to every node
//	# or: openssl rand -hex 32 > secret; chmod 600 secret; --secret-file secret
//
// The launcher never prints the secret. Keep it out of shell history and
// shared logs; a file readable only by the job's user is safer than the
// variable, which other processes of the same user can read.
//
// # Examples
//
// Four workers on one machine, on a free port:
//
//	gotrain launch --standalone --nproc-per-node 4 -- train --epochs 2 --checkpoint-dir ckpt
//
// Two workers of a program of your own, each told its rank:
//
//	gotrain launch --standalone --nproc-per-node 2 -- ./myprog --lr 0.1
//	gotrain launch --nproc-per-node 2 -- sh -c 'echo rank $RANK of $WORLD_SIZE'
//
// Two nodes of four workers each (ranks 0-3 on node0, 4-7 on node1); run
// the same command on both nodes, changing only --node-rank:
//
//	export GOTRAIN_JOB_SECRET=...   # the same value on both nodes
//	node0$ gotrain launch --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-endpoint node0:29500 -- train --epochs 2
//	node1$ gotrain launch --nnodes 2 --node-rank 1 --nproc-per-node 4 --rdzv-endpoint node0:29500 -- train --epochs 2
//
// Under Slurm you don't need the launcher: srun starts one task per worker
// and supervises them itself, and gotrain train reads its place in the job
// from Slurm's variables (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, ...,
// MASTER_ADDR defaulting to the first node of SLURM_JOB_NODELIST; see
// trainer/dist/rendezvous). Run it directly, one task per GPU:
//
//	export GOTRAIN_JOB_SECRET=$(openssl rand -hex 32)   # srun passes it to every task
//	srun --nodes 2 --ntasks-per-node 4 gotrain train --epochs 2
package launch
