package launch

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Environment variables the launcher reads (the job secret) and sets for
// every worker.
const (
	EnvRank           = "RANK"
	EnvWorldSize      = "WORLD_SIZE"
	EnvLocalRank      = "LOCAL_RANK"
	EnvLocalWorldSize = "LOCAL_WORLD_SIZE"
	EnvGroupRank      = "GROUP_RANK"
	EnvGroupWorldSize = "GROUP_WORLD_SIZE"
	EnvMasterAddr     = "MASTER_ADDR"
	EnvMasterPort     = "MASTER_PORT"
	EnvSecret         = "GOTRAIN_JOB_SECRET"
	EnvSecretFile     = "GOTRAIN_JOB_SECRET_FILE"
	// EnvRestartCount is torchrun's count of the group's restarts (0 for
	// the first start); `gotrain train` resumes from its --checkpoint-dir
	// when it is above 0.
	EnvRestartCount = "TORCHELASTIC_RESTART_COUNT"
)

// Defaults.
const (
	DefaultMasterAddr = "127.0.0.1"
	DefaultMasterPort = 29500
	DefaultGrace      = 10 * time.Second
)

// maxLine bounds how much of one output line is held back waiting for its
// newline; longer lines are passed on in pieces of this size.
const maxLine = 1 << 20

// drainTimeout bounds how long the launcher waits, after every worker has
// exited, for their output pipes to reach end of file (a grandchild the
// worker left behind may still hold them open).
const drainTimeout = 2 * time.Second

var errUsage = errors.New("usage")

// gotrainCommands are gotrain's commands: a first word after "--" that is
// one of them (or that starts with "-", a flag of gotrain's such as
// --version) makes the workers gotrain itself; any other first word is a
// program. cmd/gotrain's tests check the list against its commands.
var gotrainCommands = []string{"train", "eval", "bench", "plot", "devices", "version", "help", "launch"}

// GotrainCommands returns the words after "--" that run gotrain itself
// (besides those starting with "-"); any other first word is a program.
func GotrainCommands() []string { return slices.Clone(gotrainCommands) }

// isGotrainCommand says whether the words after "--" starting with word
// are a gotrain command line rather than a program's.
func isGotrainCommand(word string) bool {
	return strings.HasPrefix(word, "-") || slices.Contains(gotrainCommands, word)
}

// Bounds on a job's size: beyond them a launcher would only exhaust the
// machine's processes (or overflow a rank number) before any worker ran.
const (
	MaxProcsPerNode = 1024
	MaxNodes        = 1 << 16
)

const usageText = `Usage: gotrain launch --nproc-per-node N [flags] -- COMMAND [ARGS...]
       gotrain launch --nproc-per-node N [flags] -- PROGRAM [ARGS...]

Starts N local workers with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, GROUP_RANK and GOTRAIN_JOB_SECRET set, prefixes
their output with [rankR], and stops them all when one fails or the launcher
is interrupted. A worker runs 'gotrain COMMAND ARGS...' when the first word
after "--" is a gotrain command (train, eval, bench, ...; for example
'-- train --epochs 2'), and any other PROGRAM otherwise: a path, or a name
looked up in PATH (for example '-- ./myprog --lr 0.1'). See
'go doc github.com/gotrain/gotrain/cmd/gotrain/launch'.

Flags:
`

// options are the parsed launcher flags.
type options struct {
	nproc  int
	nnodes int
	// elastic: --nnodes MIN:MAX; node ranks come from the rendezvous.
	elastic            bool
	minNodes, maxNodes int
	settle             time.Duration
	joinTimeout        time.Duration
	backend            string   // --rdzv-backend: "store" or "etcd"
	etcd               []string // etcd client endpoints
	rdzvID             string
	nodeRank           int
	endpoint           string
	standalone         bool
	masterPort         int
	secretFile         string
	grace              time.Duration
	restarts           int // --max-restarts
	cpuBind            string
	// program is the executable the workers run when the first word after
	// "--" is not a gotrain command (resolved through PATH); "" runs
	// gotrain itself. command is its arguments (the words after "--",
	// less the program).
	program string
	command []string

	masterAddr string  // resolved
	port       int     // resolved; 0 = pick a free one (--standalone)
	cpus       [][]int // resolved: each local worker's CPUs; nil: unbound
}

// Run parses the launcher flags in args (everything before "--"), then
// starts the worker command after "--" (e.g. ["train", "--epochs", "2"]) as
// child processes of the executable exe (normally os.Executable(), i.e.
// gotrain itself), and supervises them. When the first word after "--" is
// neither one of [GotrainCommands] nor starts with "-", it is a program
// instead (a path, or a name looked up in PATH, as exec does), and the
// workers run it with the words after it; a program that is not found is a
// usage error. It returns the exit code the
// launcher should exit with: 0 when every worker exited 0, 2 on a usage
// error, the failing worker's exit status (1 if it was killed by a signal)
// when a worker failed, 128+signal number when the launcher was stopped by
// a signal or by ctx, and 1 when a worker could not be started.
//
// Cancelling ctx stops the workers as SIGTERM would; when ctx comes from
// signal.NotifyContext the signal it received (SIGINT or SIGTERM) is the
// one forwarded. Run also catches SIGINT and SIGTERM itself while it runs,
// so a second signal sends SIGKILL at once. getenv (os.Getenv when nil)
// supplies GOTRAIN_JOB_SECRET and GOTRAIN_JOB_SECRET_FILE; the workers
// inherit the rest of the process environment.
func Run(ctx context.Context, exe string, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if getenv == nil {
		getenv = os.Getenv
	}
	opts, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		if !errors.Is(err, errFlagPrinted) {
			fmt.Fprintf(stderr, "gotrain launch: %v (see 'gotrain launch -h')\n", err)
		}
		return 2
	}
	secret, err := resolveSecret(opts, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "gotrain launch: %v\n", err)
		return 2
	}
	if opts.cpus, err = resolveBinding(opts.cpuBind, opts.nproc); err != nil {
		fmt.Fprintf(stderr, "gotrain launch: %v\n", err)
		return 2
	}
	if opts.port == 0 {
		if opts.port, err = freePort(opts.masterAddr); err != nil {
			fmt.Fprintf(stderr, "gotrain launch: --standalone: finding a free port: %v\n", err)
			return 1
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintf(stderr, "gotrain launch: cancelled before the workers started\n")
		return 1
	}
	if opts.program != "" {
		exe = opts.program
	}
	s := &supervisor{
		opts:   opts,
		exe:    exe,
		secret: secret,
		out:    &lineWriter{w: stdout},
		stderr: stderr,
	}
	s.out.mu = &s.mu
	s.errOut = &lineWriter{w: stderr, mu: &s.mu}
	if opts.cpus != nil {
		parts := make([]string, len(opts.cpus))
		for i, b := range opts.cpus {
			parts[i] = fmt.Sprintf("local rank %d on CPU %s", i, formatCPUs(b))
		}
		s.logf("binding the workers (--cpu-bind %s): %s", opts.cpuBind, strings.Join(parts, ", "))
	}
	if opts.elastic {
		return s.runElastic(ctx)
	}
	return s.run(ctx)
}

// errFlagPrinted marks errors the flag package has already printed.
var errFlagPrinted = errors.New("flag error printed")

func parseArgs(args []string, stderr io.Writer) (*options, error) {
	o := &options{nnodes: 1, grace: DefaultGrace}
	fs := flag.NewFlagSet("gotrain launch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.nproc, "nproc-per-node", 0, "workers to start on this node (required, at least 1)")
	nnodes := "1"
	fs.StringVar(&nnodes, "nnodes", nnodes, "nodes in the job: N, or MIN:MAX for an elastic job that re-forms with the nodes left when one fails")
	fs.DurationVar(&o.settle, "rdzv-settle", 3*time.Second, "elastic: how long a rendezvous round waits for more nodes once MIN have joined")
	fs.DurationVar(&o.joinTimeout, "rdzv-join-timeout", 10*time.Minute, "elastic: how long a round waits for MIN nodes before the launcher gives up")
	fs.StringVar(&o.backend, "rdzv-backend", "store", "elastic: where the launchers meet: store (served by the launcher that owns --rdzv-endpoint) or etcd (--rdzv-endpoint lists etcd client addresses, HOST:PORT[,HOST:PORT...])")
	fs.StringVar(&o.rdzvID, "rdzv-id", "", "elastic with etcd: the job's id, new for every job (its keys live under /gotrain/ID/)")
	fs.IntVar(&o.nodeRank, "node-rank", 0, "this node's rank, 0 to nnodes-1")
	fs.StringVar(&o.endpoint, "rdzv-endpoint", "", "HOST[:PORT] of node 0, where rank 0 listens (default 127.0.0.1:29500 on one node; required with --nnodes > 1)")
	fs.BoolVar(&o.standalone, "standalone", false, "single-node job on 127.0.0.1 and a free port picked by the launcher")
	fs.IntVar(&o.masterPort, "master-port", 0, "port of rank 0 (default: the port of --rdzv-endpoint, else 29500; with --standalone, a free one)")
	fs.StringVar(&o.secretFile, "secret-file", "", "file holding the job secret shared by all nodes (default: $GOTRAIN_JOB_SECRET)")
	fs.DurationVar(&o.grace, "grace", o.grace, "time between SIGTERM (or SIGINT) and SIGKILL when stopping the workers")
	fs.StringVar(&o.cpuBind, "cpu-bind", BindAuto, "bind each worker to its own block of this launcher's CPUs: cores, none, or auto (cores when there are at least 2 workers and a CPU for each)")
	fs.IntVar(&o.restarts, "max-restarts", 0, "when a worker fails, stop the others and start the group again, up to this many times (the workers resume from their --checkpoint-dir)")

	flagArgs := args
	var command []string
	sawDash := false
	for i, a := range args {
		if a == "--" {
			flagArgs, command, sawDash = args[:i], args[i+1:], true
			break
		}
	}
	if err := fs.Parse(flagArgs); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errFlagPrinted
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if lo, hi, ok := strings.Cut(nnodes, ":"); ok {
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || a < 1 || b < a {
			return nil, fmt.Errorf("%w: --nnodes %q: want MIN:MAX with 1 <= MIN <= MAX", errUsage, nnodes)
		}
		if set["node-rank"] {
			return nil, fmt.Errorf("%w: --nnodes %s is elastic: node ranks are assigned by the rendezvous; drop --node-rank", errUsage, nnodes)
		}
		o.elastic, o.minNodes, o.maxNodes, o.nnodes = true, a, b, b
		switch o.backend {
		case "store":
		case "etcd":
			if o.rdzvID == "" {
				return nil, fmt.Errorf("%w: --rdzv-backend etcd needs --rdzv-id, new for every job (the rounds of an earlier job with the same id would be joined)", errUsage)
			}
			if o.endpoint == "" {
				return nil, fmt.Errorf("%w: --rdzv-backend etcd needs --rdzv-endpoint, the etcd client address(es) HOST:PORT[,HOST:PORT...]", errUsage)
			}
			o.etcd = strings.Split(o.endpoint, ",")
			o.endpoint = o.etcd[0] // its host tells which local address the others reach
		default:
			return nil, fmt.Errorf("%w: --rdzv-backend %q is not a backend (valid: store, etcd)", errUsage, o.backend)
		}
	} else {
		n, err := strconv.Atoi(nnodes)
		if err != nil {
			return nil, fmt.Errorf("%w: --nnodes %q is not a number of nodes (N or MIN:MAX)", errUsage, nnodes)
		}
		o.nnodes = n
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("%w: unexpected argument %q before \"--\"", errUsage, fs.Arg(0))
	case !set["nproc-per-node"]:
		return nil, fmt.Errorf("%w: --nproc-per-node is required", errUsage)
	case o.nproc < 1 || o.nproc > MaxProcsPerNode:
		return nil, fmt.Errorf("%w: --nproc-per-node must be from 1 to %d, not %d", errUsage, MaxProcsPerNode, o.nproc)
	case o.nnodes < 1 || o.nnodes > MaxNodes:
		return nil, fmt.Errorf("%w: --nnodes must be from 1 to %d, not %d", errUsage, MaxNodes, o.nnodes)
	case o.nodeRank < 0 || o.nodeRank >= o.nnodes:
		return nil, fmt.Errorf("%w: --node-rank %d is out of range for --nnodes %d (want 0 to %d)", errUsage, o.nodeRank, o.nnodes, o.nnodes-1)
	case o.grace < 0:
		return nil, fmt.Errorf("%w: --grace must not be negative", errUsage)
	case o.restarts < 0:
		return nil, fmt.Errorf("%w: --max-restarts must not be negative", errUsage)
	case o.cpuBind != BindAuto && o.cpuBind != BindNone && o.cpuBind != BindCores:
		return nil, fmt.Errorf("%w: --cpu-bind %q is not a policy (valid: auto, none, cores)", errUsage, o.cpuBind)
	case set["master-port"] && (o.masterPort < 1 || o.masterPort > 65535):
		return nil, fmt.Errorf("%w: --master-port %d is not a port (1 to 65535)", errUsage, o.masterPort)
	case !sawDash || len(command) == 0:
		return nil, fmt.Errorf("%w: no worker command: put it after \"--\", e.g. gotrain launch --nproc-per-node 2 -- train --epochs 2", errUsage)
	}
	o.command = command
	if !isGotrainCommand(command[0]) {
		path, err := exec.LookPath(command[0])
		if e := (*exec.Error)(nil); errors.As(err, &e) {
			err = e.Err // without exec's repetition of the name
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %q after \"--\" is neither a gotrain command (%s) nor a program to run: %v",
				errUsage, command[0], strings.Join(gotrainCommands, ", "), err)
		}
		o.program, o.command = path, command[1:]
	}

	switch {
	case o.standalone:
		if o.nnodes != 1 || o.elastic {
			return nil, fmt.Errorf("%w: --standalone is for one node, not --nnodes %s", errUsage, nnodes)
		}
		if o.endpoint != "" {
			return nil, fmt.Errorf("%w: --standalone picks its own endpoint; drop --rdzv-endpoint", errUsage)
		}
		o.masterAddr, o.port = DefaultMasterAddr, o.masterPort // 0: a free port, picked later
	case o.endpoint == "":
		if o.nnodes > 1 || o.elastic {
			return nil, fmt.Errorf("%w: --nnodes %d needs --rdzv-endpoint HOST:PORT, the address of node 0 that every node can reach", errUsage, o.nnodes)
		}
		o.masterAddr, o.port = DefaultMasterAddr, DefaultMasterPort
		if o.masterPort != 0 {
			o.port = o.masterPort
		}
	default:
		host, port, err := parseEndpoint(o.endpoint)
		if err != nil {
			return nil, fmt.Errorf("%w: --rdzv-endpoint: %v", errUsage, err)
		}
		switch {
		case port == 0 && o.masterPort != 0:
			port = o.masterPort
		case port == 0:
			port = DefaultMasterPort
		case o.masterPort != 0 && o.masterPort != port:
			return nil, fmt.Errorf("%w: --master-port %d contradicts the port of --rdzv-endpoint %s", errUsage, o.masterPort, o.endpoint)
		}
		o.masterAddr, o.port = host, port
	}
	return o, nil
}

// parseEndpoint splits HOST[:PORT] (IPv6 hosts in brackets); port 0 means
// none was given.
func parseEndpoint(ep string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(ep)
	if err != nil {
		// No port: a bare host name or address (an IPv6 address may come
		// bracketed or not).
		h, p = strings.TrimSuffix(strings.TrimPrefix(ep, "["), "]"), ""
		if strings.ContainsAny(h, "[]/ ") || (strings.Contains(h, ":") && net.ParseIP(h) == nil) {
			return "", 0, fmt.Errorf("%q is not HOST:PORT", ep)
		}
	}
	if h == "" {
		return "", 0, fmt.Errorf("%q has no host", ep)
	}
	if p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", 0, fmt.Errorf("%q: bad port %q", ep, p)
		}
		port = n
	}
	return h, port, nil
}

// resolveSecret returns the job secret, from --secret-file,
// GOTRAIN_JOB_SECRET or GOTRAIN_JOB_SECRET_FILE in that order, or a fresh
// random one for a single-node job. Errors never contain the secret.
func resolveSecret(o *options, getenv func(string) string) (string, error) {
	readFile := func(what, path string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("reading the job secret from %s: %w", what, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("the job secret file %s (%s) is empty", path, what)
		}
		return v, nil
	}
	if o.secretFile != "" {
		return readFile("--secret-file", o.secretFile)
	}
	if v := strings.TrimSpace(getenv(EnvSecret)); v != "" {
		return v, nil
	}
	if f := getenv(EnvSecretFile); f != "" {
		return readFile(EnvSecretFile, f)
	}
	if o.nnodes > 1 {
		return "", fmt.Errorf("%w: a job of %d nodes needs a job secret shared by all nodes: set %s to the same value on every node "+
			"(for example the output of `openssl rand -hex 32`), or pass --secret-file FILE", errUsage, o.nnodes, EnvSecret)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating the job secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// freePort asks the kernel for a free TCP port on addr. Another process may
// take it before rank 0 listens on it; the window is short.
func freePort(addr string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// lineWriter writes whole prefixed lines to w; mu (shared by the stdout and
// stderr writers, which may be the same) keeps lines whole.
type lineWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lineWriter) writeLine(prefix string, line []byte) {
	buf := make([]byte, 0, len(prefix)+len(line)+1)
	buf = append(buf, prefix...)
	buf = append(buf, line...)
	if buf[len(buf)-1] != '\n' {
		buf = append(buf, '\n')
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(buf)
}

// pump copies r to dst line by line, each line prefixed; a last line
// without a newline gets one.
func pump(r io.Reader, prefix string, dst *lineWriter) {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) && len(line) < maxLine {
			continue
		}
		if len(line) > 0 {
			dst.writeLine(prefix, line)
			line = line[:0]
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

type worker struct {
	local, rank int
	cmd         *exec.Cmd
	pid         int
	exited      bool
	readers     []*os.File
}

type exitEvent struct {
	w   *worker
	err error
}

type supervisor struct {
	opts        *options
	exe         string
	secret      string
	mu          sync.Mutex // one line at a time on stdout and stderr
	out, errOut *lineWriter
	stderr      io.Writer
	workers     []*worker
	pumps       sync.WaitGroup
	restart     int // restarts so far
	// peerFail, when set, delivers another node's failure (elastic jobs):
	// the group stops as if one of its own workers had failed.
	peerFail <-chan string
	// servesStore: this launcher serves the elastic store (it waits for
	// the others to see the job end before it closes it).
	servesStore bool
}

// logf writes a launcher message to stderr, whole, between worker lines.
func (s *supervisor) logf(format string, a ...any) {
	msg := fmt.Sprintf("gotrain launch: "+format+"\n", a...)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = io.WriteString(s.stderr, msg)
}

func (s *supervisor) env(local int) []string {
	o := s.opts
	rank := o.nodeRank*o.nproc + local
	return append(os.Environ(),
		EnvRank+"="+strconv.Itoa(rank),
		EnvWorldSize+"="+strconv.Itoa(o.nnodes*o.nproc),
		EnvLocalRank+"="+strconv.Itoa(local),
		EnvLocalWorldSize+"="+strconv.Itoa(o.nproc),
		EnvGroupRank+"="+strconv.Itoa(o.nodeRank),
		EnvGroupWorldSize+"="+strconv.Itoa(o.nnodes),
		EnvMasterAddr+"="+o.masterAddr,
		EnvMasterPort+"="+strconv.Itoa(o.port),
		EnvSecret+"="+s.secret,
		EnvRestartCount+"="+strconv.Itoa(s.restart),
	)
}

// start starts local worker i with its output pipes and pumps.
func (s *supervisor) start(i int) (*worker, error) {
	o := s.opts
	w := &worker{local: i, rank: o.nodeRank*o.nproc + i}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd := exec.Command(s.exe, o.command...)
	cmd.Env = s.env(i)
	cmd.Stdout, cmd.Stderr = outW, errW // *os.File: no copying goroutines in exec
	cmd.SysProcAttr = sysProcAttr()
	if o.cpus != nil {
		err = startBound(cmd, o.cpus[i])
	} else {
		err = cmd.Start()
	}
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	w.cmd, w.pid, w.readers = cmd, cmd.Process.Pid, []*os.File{outR, errR}
	prefix := fmt.Sprintf("[rank%d] ", w.rank)
	s.pumps.Add(2)
	go func() { defer s.pumps.Done(); pump(outR, prefix, s.out) }()
	go func() { defer s.pumps.Done(); pump(errR, prefix, s.errOut) }()
	return w, nil
}

func (s *supervisor) run(ctx context.Context) int {
	// Catch SIGINT and SIGTERM for the whole run, before any worker exists,
	// so that none is orphaned by the launcher dying of one.
	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigCh)
	var history []string
	for {
		code, failure := s.group(ctx, sigCh)
		if failure == "" {
			return code
		}
		history = append(history, fmt.Sprintf("start %d: %s", s.restart+1, failure))
		if s.restart >= s.opts.restarts {
			if s.opts.restarts > 0 {
				s.logf("giving up after %d restart(s) (--max-restarts %d): %s", s.restart, s.opts.restarts, strings.Join(history, "; "))
			}
			return code
		}
		s.restart++
		if s.opts.standalone {
			// A new rendezvous round on a fresh port: the old one may linger.
			port, err := freePort(s.opts.masterAddr)
			if err != nil {
				s.logf("restart %d: finding a free port: %v", s.restart, err)
				return 1
			}
			s.opts.port = port
		}
		resume := "; they resume from their checkpoints"
		if s.opts.program != "" {
			resume = "" // a program of the user's: we cannot say
		}
		s.logf("restarting the workers (restart %d of %d)%s", s.restart, s.opts.restarts, resume)
		s.workers = nil
	}
}

// group starts the worker group and supervises it until every worker has
// exited. It returns the launcher's exit code and, when the group ended
// because a worker failed (not because the launcher was stopped), what
// happened.
func (s *supervisor) group(ctx context.Context, sigCh chan os.Signal) (code int, failure string) {
	o := s.opts
	world := o.nnodes * o.nproc
	first := o.nodeRank * o.nproc
	of := ""
	if o.program != "" {
		of = " of " + o.program
	}
	s.logf("starting %d worker(s)%s, ranks %d to %d of %d, master %s", o.nproc, of, first, first+o.nproc-1, world,
		net.JoinHostPort(o.masterAddr, strconv.Itoa(o.port)))

	exits := make(chan exitEvent, o.nproc)
	stopping, interrupted := false, false
	var graceTimer *time.Timer
	var graceC <-chan time.Time
	// Rank 0 finished the job: the result is its own (it writes the
	// weights, the metrics and the test accuracy), so workers still
	// running --grace later, such as an asynchronous rank stopped
	// (SIGSTOP) and declared lost, are stopped and are not failures.
	var doneTimer *time.Timer
	var doneC <-chan time.Time
	running := 0

	stop := func(sig syscall.Signal) {
		if stopping {
			return
		}
		stopping = true
		for _, w := range s.workers {
			if !w.exited {
				signalGroup(w.cmd.Process, sig)
			}
		}
		graceTimer = time.NewTimer(o.grace)
		graceC = graceTimer.C
	}
	killAll := func(why string) {
		for _, w := range s.workers {
			if !w.exited {
				s.logf("rank %d (local %d, pid %d) still running %s; sending SIGKILL", w.rank, w.local, w.pid, why)
				signalGroup(w.cmd.Process, syscall.SIGKILL)
			}
		}
	}

	for i := 0; i < o.nproc; i++ {
		w, err := s.start(i)
		if err != nil {
			s.logf("starting rank %d (local %d): %v; stopping the other workers", first+i, i, err)
			code = 1
			stop(syscall.SIGTERM)
			break
		}
		s.workers = append(s.workers, w)
		running++
		go func() { exits <- exitEvent{w, w.cmd.Wait()} }()
	}

	ctxDone := ctx.Done()
	signals := 0
	for running > 0 {
		select {
		case ev := <-exits:
			running--
			ev.w.exited = true
			ok, desc, wcode := describeExit(ev.w.cmd.ProcessState, ev.err)
			switch {
			case !ok && !stopping:
				s.logf("rank %d (local %d, pid %d) %s; stopping the other workers", ev.w.rank, ev.w.local, ev.w.pid, desc)
				code = wcode
				failure = fmt.Sprintf("rank %d %s", ev.w.rank, desc)
				stop(syscall.SIGTERM)
			case ok && ev.w.rank == 0 && running > 0 && !stopping:
				doneTimer = time.NewTimer(o.grace)
				doneC = doneTimer.C
			}
		case <-doneC:
			doneC = nil
			if !stopping {
				for _, w := range s.workers {
					if !w.exited {
						s.logf("rank %d (local %d, pid %d) still running %v after rank 0 finished the job; stopping it (SIGKILL after %v)", w.rank, w.local, w.pid, o.grace, o.grace)
						signalGroup(w.cmd.Process, syscall.SIGCONT) // a stopped worker takes the signal
					}
				}
				stop(syscall.SIGTERM)
			}
		case <-ctxDone:
			ctxDone = nil
			interrupted = true
			if !stopping {
				sig := causeSignal(ctx)
				s.logf("%s; stopping the workers (SIGKILL after %v)", reason(ctx, sig), o.grace)
				code = 128 + int(sig)
				stop(sig)
			}
		case sv := <-sigCh:
			signals++
			interrupted = true
			sig, _ := sv.(syscall.Signal)
			switch {
			case !stopping:
				s.logf("received %s; stopping the workers (SIGKILL after %v)", signalName(sig), o.grace)
				code = 128 + int(sig)
				stop(sig)
			case signals >= 2:
				killAll("after a second signal")
			}
		case msg := <-s.peerFail:
			s.peerFail = nil
			if !stopping {
				s.logf("%s; stopping the workers", msg)
				code, failure = 1, msg
				stop(syscall.SIGTERM)
			}
		case <-graceC:
			graceC = nil
			killAll(fmt.Sprintf("after the %v grace", o.grace))
		}
	}
	if graceTimer != nil {
		graceTimer.Stop()
	}
	if doneTimer != nil {
		doneTimer.Stop()
	}
	if stopping {
		// Leave nothing behind: whatever the workers started in their
		// process groups goes too.
		for _, w := range s.workers {
			signalGroup(w.cmd.Process, syscall.SIGKILL)
		}
	}
	s.drain()
	if interrupted {
		failure = "" // the launcher was stopped: no restart
	}
	return code, failure
}

// drain waits for the output pumps to reach end of file, or closes their
// pipes after drainTimeout.
func (s *supervisor) drain() {
	done := make(chan struct{})
	go func() { s.pumps.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drainTimeout):
		for _, w := range s.workers {
			for _, r := range w.readers {
				r.Close()
			}
		}
		<-done
	}
	for _, w := range s.workers {
		for _, r := range w.readers {
			r.Close()
		}
	}
}

// describeExit says how a worker ended: ok, a description ("exited with
// status 3", "killed by signal SIGKILL") and the launcher exit code it
// implies.
func describeExit(ps *os.ProcessState, err error) (ok bool, desc string, code int) {
	if ps == nil {
		return false, fmt.Sprintf("failed: %v", err), 1
	}
	if ws, isWS := ps.Sys().(syscall.WaitStatus); isWS && ws.Signaled() {
		return false, "killed by signal " + signalName(ws.Signal()), 1
	}
	c := ps.ExitCode()
	switch {
	case c == 0 && err == nil:
		return true, "exited with status 0", 0
	case c > 0:
		return false, fmt.Sprintf("exited with status %d", c), c
	default:
		return false, fmt.Sprintf("failed: %v", err), 1
	}
}

// causeSignal is the signal that cancelled ctx when it came from
// signal.NotifyContext (SIGINT or SIGTERM), else SIGTERM.
func causeSignal(ctx context.Context) syscall.Signal {
	if c := context.Cause(ctx); c != nil && c.Error() == syscall.SIGINT.String()+" signal received" {
		return syscall.SIGINT
	}
	return syscall.SIGTERM
}

func reason(ctx context.Context, sig syscall.Signal) string {
	if c := context.Cause(ctx); c != nil && strings.HasSuffix(c.Error(), " signal received") {
		return "received " + signalName(sig)
	}
	return "cancelled"
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT", syscall.SIGILL: "SIGILL",
	syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE",
	syscall.SIGKILL: "SIGKILL", syscall.SIGSEGV: "SIGSEGV", syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM",
	syscall.SIGTERM: "SIGTERM",
}

func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return fmt.Sprintf("%d (%v)", int(s), s)
}
