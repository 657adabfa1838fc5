package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/nccl"
	"github.com/gotrain/gotrain/trainer"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/rendezvous"
	"github.com/gotrain/gotrain/trainer/dist/secure"
	"github.com/gotrain/gotrain/trainer/metrics/prom"
)

// distFlags are the flags of a data-parallel run.
type distFlags struct {
	backend                string
	rdzvTimeout            time.Duration
	tlsCert, tlsKey, tlsCA string
}

// distFlagsOf is what cfg says about joining a job.
func distFlagsOf(cfg trainer.Config) distFlags {
	f := distFlags{backend: cfg.Backend, rdzvTimeout: cfg.RdzvTimeout, tlsCert: cfg.TLSCert, tlsKey: cfg.TLSKey, tlsCA: cfg.TLSCA}
	if f.backend == "" {
		f.backend = "auto"
	}
	return f
}

// job is this process's place in a data-parallel job.
type job struct {
	env              rendezvous.Env
	comm             dist.Communicator
	store            *rendezvous.Client
	server           *rendezvous.Server
	host             string         // this rank's address for its peers
	srvOpts, cliOpts secure.Options // the job's handshakes
}

func (j *job) Close() {
	if j == nil {
		return
	}
	if j.comm != nil {
		j.comm.Close()
	}
	if j.store != nil {
		j.store.Close()
	}
	if j.server != nil {
		j.server.Close()
	}
}

// listenHost is the address of this host that the master can reach:
// the local end of a (packetless) UDP "connection" towards it.
func listenHost(master string) string {
	if h := os.Getenv("GOTRAIN_LISTEN_HOST"); h != "" {
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

// joinJob reads the job's environment (torchrun, Slurm or Kubernetes
// conventions); with more than one rank it starts or reaches the
// rendezvous store (rank 0 serves it at MASTER_ADDR:MASTER_PORT) and
// connects the CPU ring, or NCCL on dev (nil: host memory, which only the
// test stand-in serves). With one rank it returns nil.
func joinJob(ctx context.Context, f distFlags, log *slog.Logger, dev device.Device) (*job, error) {
	env, err := rendezvous.FromEnv(os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	switch f.backend {
	case "cpu", "nccl":
	case "auto":
		// NCCL needs GPUs, which only the gpu build drives; the CPU build
		// always takes the CPU ring.
		f.backend = "cpu"
	default:
		return nil, fmt.Errorf("%w: --backend %q is not a backend (valid: cpu, nccl, auto)", errUsage, f.backend)
	}
	if env.WorldSize <= 1 {
		return nil, nil
	}
	secret, err := secure.SecretFromEnv(os.Getenv)
	if err != nil {
		return nil, err
	}
	opts := secure.Options{Secret: secret} // handshakes within secure.DefaultTimeout
	srvOpts, cliOpts := opts, opts
	if f.tlsCert != "" || f.tlsKey != "" || f.tlsCA != "" {
		s, c, err := secure.LoadTLS(f.tlsCert, f.tlsKey, f.tlsCA)
		if err != nil {
			return nil, err
		}
		srvOpts.TLS, cliOpts.TLS = s, c
	}
	j := &job{env: env, srvOpts: srvOpts, cliOpts: cliOpts}
	addr := net.JoinHostPort(env.MasterAddr, strconv.Itoa(env.MasterPort))
	rctx, cancel := context.WithTimeout(ctx, f.rdzvTimeout)
	defer cancel()
	if env.Rank == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(listenAddrFor(env.MasterAddr), strconv.Itoa(env.MasterPort)))
		if err != nil {
			return nil, fmt.Errorf("rank 0 cannot serve the rendezvous store on port %d: %w (is another job using MASTER_PORT? choose another)", env.MasterPort, err)
		}
		j.server = rendezvous.Serve(ln, srvOpts)
	}
	if j.store, err = rendezvous.Dial(rctx, addr, cliOpts); err != nil {
		j.Close()
		return nil, fmt.Errorf("rank %d: rendezvous with %s: %w", env.Rank, addr, err)
	}
	if f.backend == "nccl" {
		if j.comm, err = joinNCCL(rctx, env, j.store, log, dev); err != nil {
			j.Close()
			return nil, err
		}
		return j, nil
	}
	host := listenHost(env.MasterAddr)
	j.host = host
	j.comm, err = dist.NewRing(rctx, dist.RingConfig{
		Rank: env.Rank, Size: env.WorldSize, Store: j.store, Prefix: "ring/", ListenHost: host,
		Upgrade: func(c net.Conn, server bool) (net.Conn, error) {
			if server {
				return secure.Server(c, srvOpts)
			}
			return secure.Client(c, cliOpts)
		},
		Timeout: f.rdzvTimeout,
	})
	if err != nil {
		j.Close()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, dist.ErrTimeout) {
			return nil, fmt.Errorf("rank %d: not every rank of %d joined within --rdzv-timeout %v: %w", env.Rank, env.WorldSize, f.rdzvTimeout, err)
		}
		return nil, fmt.Errorf("rank %d: connecting the ring: %w", env.Rank, err)
	}
	log.Info("joined job", "rank", env.Rank, "world_size", env.WorldSize, "local_rank", env.LocalRank,
		"source", env.Source, "master", addr, "listen", host, "tls", srvOpts.TLS != nil)
	return j, nil
}

// listenAddrFor is where rank 0 listens for the store: all interfaces,
// unless the master address is a loopback one.
func listenAddrFor(master string) string {
	if ip := net.ParseIP(master); (ip != nil && ip.IsLoopback()) || master == "localhost" {
		return master
	}
	return ""
}

// joinNCCL makes the job's NCCL communicator: rank 0 creates the unique ID
// and publishes it in the rendezvous store, every rank reads it and calls
// ncclCommInitRank, on a GPU with that GPU's context current (NCCL takes
// the current device as the communicator's). NCCL's own environment
// (NCCL_DEBUG, NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) reaches the library
// untouched. With a device, the collectives on host buffers (the
// parameters' broadcast, loss and evaluation sums, pipeline activations)
// go through two staging buffers on it (device.Staging), since NCCL on a
// GPU reads device memory only; the gradient buckets are device memory
// already. Without one the buffers are host memory, which only the test
// stand-in library serves.
func joinNCCL(ctx context.Context, env rendezvous.Env, store *rendezvous.Client, log *slog.Logger, dev device.Device) (dist.Communicator, error) {
	lib, err := nccl.Load("")
	if err != nil {
		return nil, fmt.Errorf("--backend nccl: %w", err)
	}
	major, minor, patch, _, err := lib.Version()
	if err != nil {
		return nil, err
	}
	log.Info("nccl", "library", lib.Path(), "version", fmt.Sprintf("%d.%d.%d", major, minor, patch))
	const key = "nccl/unique_id"
	var id nccl.UniqueID
	if env.Rank == 0 {
		if id, err = lib.GetUniqueID(); err != nil {
			return nil, err
		}
		b, _ := id.MarshalBinary()
		if err := store.Set(ctx, key, b); err != nil {
			return nil, fmt.Errorf("rank 0: publishing the NCCL unique ID: %w", err)
		}
	} else {
		b, err := store.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("rank %d: reading the NCCL unique ID from rank 0: %w", env.Rank, err)
		}
		if err := id.UnmarshalBinary(b); err != nil {
			return nil, err
		}
	}
	var comm *nccl.Comm
	initRank := func() error {
		var err error
		comm, err = lib.InitRank(env.WorldSize, id, env.Rank)
		return err
	}
	if d, ok := dev.(interface{ Do(func() error) error }); ok {
		err = d.Do(initRank) // the GPU's context current on this thread
	} else {
		err = initRank()
	}
	if err != nil {
		return nil, fmt.Errorf("rank %d: ncclCommInitRank: %w", env.Rank, err)
	}
	c, err := nccl.NewCommunicator(comm)
	if err != nil {
		return nil, err
	}
	if dev != nil {
		c.UseStaging(device.NewStaging(dev))
		log.Info("nccl: host buffers staged through the device", "device", dev.Name())
	}
	return c, nil
}

var _ nccl.Staging = (*device.Staging)(nil)

// serveMetrics starts the Prometheus endpoint of this rank: ranks on one
// host serve on consecutive ports (the given port plus the local rank).
func serveMetrics(addr string, rank, world, localRank int) (*prom.Exporter, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("%w: --metrics-addr %q: want HOST:PORT", errUsage, addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return nil, "", fmt.Errorf("%w: --metrics-addr %q: bad port", errUsage, addr)
	}
	if p != 0 {
		p += localRank
	}
	exp := prom.New(rank, world)
	actual, err := exp.Serve(net.JoinHostPort(host, strconv.Itoa(p)))
	if err != nil {
		return nil, "", err
	}
	return exp, actual, nil
}

// psAddrKey is where rank 0 publishes its parameter server's address.
const psAddrKey = "ps/addr"

// asyncTransport connects this rank to the parameter server of an
// asynchronous job: rank 0 listens on its host (port chosen by the system)
// and publishes the address in the rendezvous store; the other ranks read
// it and connect. Every connection passes the job's handshake (secret,
// TLS when set), like the ring's.
func (j *job) asyncTransport(ctx context.Context) (trainer.AsyncTransport, func(), error) {
	if j.env.Rank == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(j.host, "0"))
		if err != nil {
			return trainer.AsyncTransport{}, nil, fmt.Errorf("rank 0 cannot listen for the parameter server on %s: %w", j.host, err)
		}
		if err := j.store.Set(ctx, psAddrKey, []byte(ln.Addr().String())); err != nil {
			ln.Close()
			return trainer.AsyncTransport{}, nil, fmt.Errorf("rank 0: publishing the parameter server's address: %w", err)
		}
		return trainer.AsyncTransport{Listener: ln, Upgrade: func(c net.Conn) (net.Conn, error) { return secure.Server(c, j.srvOpts) }},
			func() { ln.Close() }, nil
	}
	return trainer.AsyncTransport{Dial: func(ctx context.Context) (net.Conn, error) {
		addr, err := j.store.Get(ctx, psAddrKey)
		if err != nil {
			return nil, fmt.Errorf("reading the parameter server's address: %w", err)
		}
		// The server refuses connections while its handshake cap is full
		// (secure.Gate): retry those, for at most psDialTimeout.
		ctx, cancel := context.WithTimeout(ctx, psDialTimeout)
		defer cancel()
		backoff := 20 * time.Millisecond
		for {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", string(addr))
			if err == nil {
				if c, err = secure.Client(c, j.cliOpts); err == nil {
					return c, nil
				}
			}
			if !secure.Retryable(err) {
				return nil, err
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("%w (gave up after %v: %w)", err, psDialTimeout, ctx.Err())
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}}, func() {}, nil
}

// psDialTimeout bounds a worker's attempts to reach the parameter server.
const psDialTimeout = 2 * time.Minute
