package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/rendezvous"
	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/metrics/prom"
)

// ErrEnvironment is returned (wrapped) by [Join] when the environment
// names a job but its variables are incomplete or inconsistent (RANK not
// below WORLD_SIZE, a MASTER_PORT that is not a port, MASTER_ADDR missing
// for a job of several nodes, ...). The message names the variable at
// fault; it is the launcher's or the user's mistake, and retrying does
// not help.
var ErrEnvironment = errors.New("invalid job environment")

// EnvListenHost names the variable that, when set, is the address this
// rank's peers reach it at (the ring's and the parameter server's
// listeners); by default it is this host's address on the route to
// MASTER_ADDR (127.0.0.1 when MASTER_ADDR is a loopback address).
const EnvListenHost = "GOTRAIN_LISTEN_HOST"

// Option configures [Join].
type Option func(*joinOptions)

type joinOptions struct {
	log    *slog.Logger
	dev    device.Device
	getenv func(string) string
}

// WithLogger makes Join log to l (which job it joined, the NCCL library it
// loaded); the default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *joinOptions) { o.log = l } }

// WithDevice names the device this rank trains on. With Config.Backend
// "nccl" the communicator is made on it, and the collectives on host
// buffers are staged through it (NCCL on a GPU reads device memory only);
// [Job.TrainerOptions] then includes trainer.WithDevice(dev). Without it
// the model trains on the CPU, and NCCL's buffers are host memory, which
// only the test stand-in library serves. A nil dev is no device.
func WithDevice(dev device.Device) Option { return func(o *joinOptions) { o.dev = dev } }

// WithEnv makes Join read the job's variables (and the secret and
// [EnvListenHost]) through getenv instead of os.Getenv: for tests, and
// for programs that describe the job themselves.
func WithEnv(getenv func(string) string) Option { return func(o *joinOptions) { o.getenv = getenv } }

// Job is this process's place in a job: its rank and, with several
// ranks, its communicator and its connection to the rendezvous store.
// A Job's methods may be called from several goroutines.
type Job struct {
	env              rendezvous.Env
	sync             string // Config.Sync
	log              *slog.Logger
	dev              device.Device
	comm             dist.Communicator
	store            *rendezvous.Client
	server           *rendezvous.Server // rank 0's
	host             string             // this rank's address for its peers
	srvOpts, cliOpts secure.Options     // the job's handshakes

	mu       sync.Mutex
	optsDone bool
	opts     []trainer.Option
	optsErr  error
	closers  []func() error // what TrainerOptions and ServeMetrics opened
	closed   bool
}

// Join makes this process a rank of the job its environment describes,
// as rendezvous.FromEnv reads it (torchrun's RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; Slurm's;
// a Kubernetes Indexed Job's: see the package documentation). With more
// than one rank, rank 0 serves the rendezvous store at
// MASTER_ADDR:MASTER_PORT, every rank connects to it, and the ranks
// connect cfg.Backend's communicator: the CPU ring ("cpu", and "auto" or
// "" in this build) or NCCL ("nccl", on [WithDevice]'s device). Every
// connection passes the job's handshake: the secret from
// GOTRAIN_JOB_SECRET or GOTRAIN_JOB_SECRET_FILE, and mutual TLS when
// cfg.TLSCert, TLSKey or TLSCA is set. Every rank must have joined within
// cfg.RdzvTimeout (zero: trainer.Default's, 5 minutes), or ctx's end.
//
// Without such an environment (or with WORLD_SIZE=1) Join returns a
// one-process job (Rank 0, World 1) and no error: the same program runs
// alone or as a rank of a job.
//
// The cfg given to Join must be the one the trainer gets: Join reads its
// Backend, RdzvTimeout, TLS files and Sync. Close the Job when done.
func Join(ctx context.Context, cfg trainer.Config, opts ...Option) (*Job, error) {
	o := joinOptions{getenv: os.Getenv}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.getenv == nil {
		o.getenv = os.Getenv
	}
	env, err := rendezvous.FromEnv(o.getenv)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEnvironment, err)
	}
	backend := cfg.Backend
	switch backend {
	case "cpu", "nccl":
	case "auto", "":
		// NCCL needs GPUs, which only the gpu build drives; the CPU build
		// always takes the CPU ring.
		backend = "cpu"
	default:
		return nil, fmt.Errorf("%w: --backend %q is not a backend (valid: cpu, nccl, auto)", trainer.ErrConfig, backend)
	}
	timeout := cfg.RdzvTimeout
	if timeout <= 0 {
		timeout = trainer.Default().RdzvTimeout
	}
	j := &Job{env: env, sync: cfg.Sync, log: o.log, dev: o.dev}
	if env.WorldSize <= 1 {
		return j, nil
	}
	secret, err := secure.SecretFromEnv(o.getenv)
	if err != nil {
		return nil, err
	}
	sopts := secure.Options{Secret: secret} // handshakes within secure.DefaultTimeout
	j.srvOpts, j.cliOpts = sopts, sopts
	if cfg.TLSCert != "" || cfg.TLSKey != "" || cfg.TLSCA != "" {
		s, c, err := secure.LoadTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA)
		if err != nil {
			return nil, err
		}
		j.srvOpts.TLS, j.cliOpts.TLS = s, c
	}
	addr := net.JoinHostPort(env.MasterAddr, strconv.Itoa(env.MasterPort))
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if env.Rank == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(listenAddrFor(env.MasterAddr), strconv.Itoa(env.MasterPort)))
		if err != nil {
			return nil, fmt.Errorf("rank 0 cannot serve the rendezvous store on port %d: %w (is another job using MASTER_PORT? choose another)", env.MasterPort, err)
		}
		j.server = rendezvous.Serve(ln, j.srvOpts)
	}
	if j.store, err = rendezvous.Dial(rctx, addr, j.cliOpts); err != nil {
		j.Close()
		return nil, fmt.Errorf("rank %d: rendezvous with %s: %w", env.Rank, addr, err)
	}
	if backend == "nccl" {
		if j.comm, err = joinNCCL(rctx, env, j.store, o.log, o.dev); err != nil {
			j.Close()
			return nil, err
		}
		return j, nil
	}
	j.host = listenHost(env.MasterAddr, o.getenv)
	j.comm, err = dist.NewRing(rctx, dist.RingConfig{
		Rank: env.Rank, Size: env.WorldSize, Store: j.store, Prefix: "ring/", ListenHost: j.host,
		Upgrade: func(c net.Conn, server bool) (net.Conn, error) {
			if server {
				return secure.Server(c, j.srvOpts)
			}
			return secure.Client(c, j.cliOpts)
		},
		Timeout: timeout,
	})
	if err != nil {
		j.Close()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, dist.ErrTimeout) {
			return nil, fmt.Errorf("rank %d: not every rank of %d joined within --rdzv-timeout %v: %w", env.Rank, env.WorldSize, timeout, err)
		}
		return nil, fmt.Errorf("rank %d: connecting the ring: %w", env.Rank, err)
	}
	o.log.Info("joined job", "rank", env.Rank, "world_size", env.WorldSize, "local_rank", env.LocalRank,
		"source", env.Source, "master", addr, "listen", j.host, "tls", j.srvOpts.TLS != nil)
	return j, nil
}

// Rank is this process's rank, from 0 to World()-1.
func (j *Job) Rank() int { return j.env.Rank }

// World is the number of ranks of the job (1 for a one-process job).
func (j *Job) World() int { return j.env.WorldSize }

// LocalRank is this process's rank among those on its host: the index of
// the GPU it should train on.
func (j *Job) LocalRank() int { return j.env.LocalRank }

// LocalWorld is the number of ranks on this host.
func (j *Job) LocalWorld() int { return j.env.LocalWorldSize }

// Distributed reports whether the job has more than one rank.
func (j *Job) Distributed() bool { return j.comm != nil }

// Env is the job's layout as read from the environment, with the source
// it came from ("torchrun", "slurm", "kubernetes" or "default").
func (j *Job) Env() rendezvous.Env { return j.env }

// Communicator is the job's communicator, for collectives of a program's
// own; nil for a one-process job. The trainer gets it from
// [Job.TrainerOptions]. Close the Job, not the communicator.
func (j *Job) Communicator() dist.Communicator { return j.comm }

// TrainerOptions are the trainer options that make a trainer.New run as
// this rank: trainer.WithCommunicator with the job's communicator, and
// with Config.Sync "async" trainer.WithAsync with the connection to the
// parameter server (rank 0 listens and publishes its address in the
// rendezvous store; the other ranks connect through the job's handshake);
// trainer.WithDevice with [WithDevice]'s device, if one was given. For a
// one-process job only the last, if any. The options are made once: later
// calls return the same ones (or the same error). What they open is closed
// by [Job.Close].
func (j *Job) TrainerOptions(ctx context.Context) ([]trainer.Option, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil, errors.New("job: TrainerOptions after Close")
	}
	if !j.optsDone {
		j.optsDone = true
		j.opts, j.optsErr = j.trainerOptions(ctx)
	}
	return append([]trainer.Option(nil), j.opts...), j.optsErr
}

func (j *Job) trainerOptions(ctx context.Context) ([]trainer.Option, error) {
	var opts []trainer.Option
	if j.comm != nil {
		opts = append(opts, trainer.WithCommunicator(j.comm))
		if j.sync == "async" {
			tr, closeTr, err := j.asyncTransport(ctx)
			if err != nil {
				return nil, err
			}
			j.closers = append(j.closers, closeTr)
			opts = append(opts, trainer.WithAsync(tr))
		}
	}
	if j.dev != nil {
		opts = append(opts, trainer.WithDevice(j.dev))
	}
	return opts, nil
}

// ServeMetrics serves this rank's Prometheus metrics at addr (HOST:PORT)
// under /metrics: ranks on one host serve on consecutive ports, PORT plus
// the local rank (port 0: one the system chooses). It returns the
// exporter, to be given to the trainer as a sink (trainer.WithSink; its
// series carry the labels rank and world_size), and the address it
// listens at. A malformed addr is an error wrapping trainer.ErrConfig.
// [Job.Close] closes the exporter.
func (j *Job) ServeMetrics(addr string) (*prom.Exporter, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("%w: --metrics-addr %q: want HOST:PORT", trainer.ErrConfig, addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return nil, "", fmt.Errorf("%w: --metrics-addr %q: bad port", trainer.ErrConfig, addr)
	}
	if p != 0 {
		p += j.env.LocalRank
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil, "", errors.New("job: ServeMetrics after Close")
	}
	exp := prom.New(j.env.Rank, j.env.WorldSize)
	actual, err := exp.Serve(net.JoinHostPort(host, strconv.Itoa(p)))
	if err != nil {
		return nil, "", err
	}
	j.closers = append(j.closers, exp.Close)
	return exp, actual, nil
}

// Abort tears the job's communicator down at once, telling the other
// ranks why (err), so that they fail within their collective's deadline
// instead of waiting for it: what a rank does when its training fails.
// Close must still be called. Abort does nothing on a one-process job.
func (j *Job) Abort(err error) {
	if j != nil && j.comm != nil {
		j.comm.Abort(err)
	}
}

// Close releases what the job holds: the parameter server's listener,
// the metrics exporters, the communicator (telling the peers), the
// connection to the rendezvous store and, on rank 0, the store. It may be
// called more than once (later calls return nil) and on a one-process or
// nil job. Its error reports what did not close cleanly (a connection
// the other side closed first is no error); everything is released
// either way.
func (j *Job) Close() error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	closers := j.closers
	j.closers = nil
	j.mu.Unlock()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		errs = append(errs, closers[i]())
	}
	if j.comm != nil {
		errs = append(errs, j.comm.Close())
	}
	if j.store != nil {
		errs = append(errs, j.store.Close())
	}
	if j.server != nil {
		errs = append(errs, j.server.Close())
	}
	for i, err := range errs {
		if errors.Is(err, net.ErrClosed) {
			errs[i] = nil // closed already, by the peer that went first
		}
	}
	return errors.Join(errs...)
}

// listenHost is the address of this host that the master can reach:
// EnvListenHost if set, else the local end of a (packetless) UDP
// "connection" towards it.
func listenHost(master string, getenv func(string) string) string {
	if h := getenv(EnvListenHost); h != "" {
		return h
	}
	if ip := net.ParseIP(master); ip != nil && ip.IsLoopback() || master == "localhost" {
		return "127.0.0.1"
	}
	c, err := net.Dial("udp", net.JoinHostPort(master, "9"))
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

// listenAddrFor is where rank 0 listens for the store: all interfaces,
// unless the master address is a loopback one.
func listenAddrFor(master string) string {
	if ip := net.ParseIP(master); (ip != nil && ip.IsLoopback()) || master == "localhost" {
		return master
	}
	return ""
}
