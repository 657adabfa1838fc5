package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/gotrain/gotrain/gpu/cuda"
	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/trainer/dist"
)

// parseBytes reads sizes like 1K, 64M, 256M, 1G (powers of 1024) or plain bytes.
func parseBytes(s string) (int64, error) {
	u := strings.ToUpper(strings.TrimSuffix(strings.TrimSpace(s), "B"))
	mult := int64(1)
	if u != "" {
		switch u[len(u)-1] {
		case 'K':
			mult, u = 1<<10, u[:len(u)-1]
		case 'M':
			mult, u = 1<<20, u[:len(u)-1]
		case 'G':
			mult, u = 1<<30, u[:len(u)-1]
		}
	}
	n, err := strconv.ParseInt(u, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size like 1K, 64M or 4096", s)
	}
	return n * mult, nil
}

type allreduceFlags struct {
	nproc         int
	minB, maxB    int64
	factor        int
	iters, warmup int
	check         bool
	device        string // cpu: host buffers; gpu, host: device buffers (NCCL)
	df            distFlags
}

// cmdBenchAllReduce runs `gotrain bench allreduce`: with --nproc N it starts
// N local worker processes (itself), which measure all-reduce (sum, float32)
// over the CPU ring for sizes from --min-bytes to --max-bytes and print an
// nccl-tests style table from rank 0. Run under a job environment (RANK,
// WORLD_SIZE, ... as set by 'gotrain launch', srun or Kubernetes) it is one
// of the workers.
func cmdBenchAllReduce(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gotrain bench allreduce", flag.ContinueOnError)
	fs.SetOutput(clipWriter{stderr})
	var f allreduceFlags
	var minS, maxS string
	fs.IntVar(&f.nproc, "nproc", 2, "worker processes to start on this host (ignored under a job environment)")
	fs.StringVar(&minS, "min-bytes", "1K", "smallest buffer")
	fs.StringVar(&maxS, "max-bytes", "256M", "largest buffer")
	fs.IntVar(&f.factor, "step-factor", 2, "size multiplier between rows")
	fs.IntVar(&f.iters, "iters", 10, "timed iterations per size")
	fs.IntVar(&f.warmup, "warmup", 3, "untimed iterations per size")
	fs.BoolVar(&f.check, "check", true, "verify every result")
	fs.StringVar(&f.df.backend, "backend", "cpu", "backend: cpu or nccl")
	fs.StringVar(&f.device, "device", "cpu", "where the buffers are: cpu (host memory), gpu (GPU LOCAL_RANK; --backend nccl), host (the host device's memory, for tests; --backend nccl)")
	fs.DurationVar(&f.df.rdzvTimeout, "rdzv-timeout", time.Minute, "deadline for every rank to join")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	var err error
	if f.minB, err = parseBytes(minS); err != nil {
		return fmt.Errorf("%w: --min-bytes: %v", errUsage, err)
	}
	if f.maxB, err = parseBytes(maxS); err != nil {
		return fmt.Errorf("%w: --max-bytes: %v", errUsage, err)
	}
	if f.minB > f.maxB || f.factor < 2 || f.iters < 1 || f.warmup < 0 || f.nproc < 1 {
		return fmt.Errorf("%w: want --min-bytes <= --max-bytes, --step-factor >= 2, --iters >= 1, --nproc >= 1", errUsage)
	}
	switch f.device {
	case "cpu":
	case "gpu", "host":
		if f.df.backend != "nccl" {
			return fmt.Errorf("%w: --device %s all-reduces device memory, which --backend %s cannot: use --backend nccl", errUsage, f.device, f.df.backend)
		}
	default:
		return fmt.Errorf("%w: --device %q is not one of cpu, gpu, host", errUsage, f.device)
	}
	if os.Getenv("WORLD_SIZE") == "" {
		return spawnBench(args, f.nproc, stdout, stderr)
	}
	return benchWorker(f, stdout, stderr)
}

// spawnBench starts nproc copies of this command as one local job and
// copies rank 0's table to stdout.
func spawnBench(args []string, nproc int, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	cmds := make([]*exec.Cmd, nproc)
	for r := range cmds {
		c := exec.Command(exe, append([]string{"bench", "allreduce"}, args...)...)
		c.Env = append(os.Environ(), "RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(nproc),
			"LOCAL_RANK="+strconv.Itoa(r), "LOCAL_WORLD_SIZE="+strconv.Itoa(nproc),
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT="+strconv.Itoa(port), "GOTRAIN_JOB_SECRET="+hex.EncodeToString(secret))
		c.Stderr = stderr
		if r == 0 {
			c.Stdout = stdout
		}
		if err := c.Start(); err != nil {
			return err
		}
		cmds[r] = c
	}
	var firstErr error
	for r, c := range cmds {
		if err := c.Wait(); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("bench worker rank %d: %w", r, err)
			for _, o := range cmds {
				if o.ProcessState == nil {
					o.Process.Kill()
				}
			}
		}
	}
	return firstErr
}

func benchWorker(f allreduceFlags, stdout, stderr io.Writer) error {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx := context.Background()
	var dev device.Device
	switch f.device {
	case "host":
		dev = device.Host{}
	case "gpu":
		d, err := cuda.Open(localRank())
		if err != nil {
			return fmt.Errorf("--device gpu: %w", err)
		}
		defer d.Close()
		dev = d
	}
	j, err := joinJob(ctx, f.df, logger, dev)
	if err != nil {
		return err
	}
	if j == nil {
		return fmt.Errorf("%w: bench allreduce needs WORLD_SIZE >= 2", errUsage)
	}
	defer j.Close()
	c := j.comm
	n, r := c.Size(), c.Rank()
	w := bufio.NewWriter(stdout)
	if r == 0 {
		where := "host memory"
		if dev != nil {
			where = dev.Name() + " memory"
		}
		fmt.Fprintf(w, "# gotrain bench allreduce: %d ranks, backend %s, float32 sum, buffers in %s\n", n, f.df.backend, where)
		fmt.Fprintf(w, "#%67s%40s\n", "out-of-place", "in-place")
		fmt.Fprintf(w, "#%12s %12s %8s %6s %8s %8s %8s %6s %8s %8s %8s %6s\n", "size", "count", "type", "redop", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong")
		fmt.Fprintf(w, "#%12s %12s %8s %6s %8s %8s %8s %6s %8s %8s %8s %6s\n", "(B)", "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "")
		w.Flush()
	}
	maxCount := int(f.maxB / 4)
	bufs, err := newBenchBuffers(c, dev, maxCount)
	if err != nil {
		return err
	}
	defer bufs.free()
	var totalBus float64
	var rows int
	for size := f.minB; size <= f.maxB; size *= int64(f.factor) {
		count := int(max(size/4, 1))
		var res [2]struct {
			us, alg, bus float64
			wrong        int
		}
		for mode := 0; mode < 2; mode++ {
			inPlace := mode == 1
			run := func() error {
				if err := bufs.fill(count, r); err != nil {
					return err
				}
				cctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				return bufs.reduce(cctx, count, inPlace)
			}
			for i := 0; i < f.warmup; i++ {
				if err := run(); err != nil {
					return err
				}
			}
			if err := c.Barrier(ctx); err != nil {
				return err
			}
			var elapsed time.Duration
			for i := 0; i < f.iters; i++ {
				if err := bufs.fill(count, r); err != nil {
					return err
				}
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, time.Minute)
				err := bufs.reduce(cctx, count, inPlace)
				cancel()
				elapsed += time.Since(t0)
				if err != nil {
					return err
				}
			}
			if f.check {
				out, err := bufs.result(count, inPlace)
				if err != nil {
					return err
				}
				want := func(i int) float32 { return float32(n*(n+1)/2 + n*(i%7)) }
				for i, v := range out {
					if v != want(i) {
						res[mode].wrong++
					}
				}
			}
			// The slowest rank's time is the collective's time.
			tm := []float64{elapsed.Seconds() / float64(f.iters)}
			if err := c.AllReduce(ctx, tm, tm, dist.Max); err != nil {
				return err
			}
			res[mode].us = tm[0] * 1e6
			res[mode].alg = float64(count*4) / tm[0] / 1e9
			res[mode].bus = res[mode].alg * 2 * float64(n-1) / float64(n)
		}
		if r == 0 {
			fmt.Fprintf(w, " %12d %12d %8s %6s %8.1f %8.2f %8.2f %6d %8.1f %8.2f %8.2f %6d\n", count*4, count, "float", "sum",
				res[0].us, res[0].alg, res[0].bus, res[0].wrong, res[1].us, res[1].alg, res[1].bus, res[1].wrong)
			w.Flush()
		}
		totalBus += res[0].bus
		rows++
		if res[0].wrong+res[1].wrong > 0 {
			return fmt.Errorf("rank %d: %d wrong results at %d bytes", r, res[0].wrong+res[1].wrong, count*4)
		}
	}
	if r == 0 {
		fmt.Fprintf(w, "# Out of bounds values : 0 OK\n# Avg bus bandwidth    : %.4f GB/s\n", totalBus/float64(rows))
		w.Flush()
	}
	return c.Barrier(ctx)
}

// benchBuffers are the all-reduce benchmark's send and receive buffers:
// host slices through the communicator's AllReduce, or device memory
// through NCCL's device all-reduce, timed until the device is done.
type benchBuffers struct {
	c          dist.Communicator
	send, recv []float32 // host buffers, or the host side of the device's
	dev        device.Device
	dsend      device.Buffer
	drecv      device.Buffer
	devRed     interface {
		AllReduceDeviceTo(ctx context.Context, send, recv uintptr, count int, bf16 bool, op dist.Op, stream uintptr) error
		WaitDevice(ctx context.Context, done func() (bool, error)) error
	}
}

func newBenchBuffers(c dist.Communicator, dev device.Device, n int) (*benchBuffers, error) {
	b := &benchBuffers{c: c, dev: dev, send: make([]float32, n), recv: make([]float32, n)}
	if dev == nil {
		return b, nil
	}
	var ok bool
	if b.devRed, ok = c.(interface {
		AllReduceDeviceTo(ctx context.Context, send, recv uintptr, count int, bf16 bool, op dist.Op, stream uintptr) error
		WaitDevice(ctx context.Context, done func() (bool, error)) error
	}); !ok {
		return nil, fmt.Errorf("%w: device buffers need --backend nccl", errUsage)
	}
	var err error
	if b.dsend, err = dev.Alloc(max(n, 1)); err != nil {
		return nil, err
	}
	if b.drecv, err = dev.Alloc(max(n, 1)); err != nil {
		dev.Free(b.dsend)
		return nil, err
	}
	if _, ok := b.dsend.(device.Addresser); !ok {
		b.free()
		return nil, fmt.Errorf("%s's buffers have no address NCCL can take", dev.Name())
	}
	return b, nil
}

// fill writes rank r's values into the first count of send (and of recv,
// for the in-place run).
func (b *benchBuffers) fill(count, r int) error {
	in := b.send[:count]
	for i := range in {
		in[i] = float32(r + 1 + i%7)
	}
	if b.dev == nil {
		return nil
	}
	if err := b.dev.Write(b.dsend, in); err != nil {
		return err
	}
	return b.dev.Write(b.drecv, in)
}

// reduce all-reduces count values, in place or from send into recv, and
// returns once the result is there.
func (b *benchBuffers) reduce(ctx context.Context, count int, inPlace bool) error {
	if b.dev == nil {
		in, out := b.send[:count], b.recv[:count]
		if inPlace {
			out = in
		}
		return b.c.AllReduce(ctx, in, out, dist.Sum)
	}
	send, recv := b.dsend.(device.Addresser).Addr(), b.drecv.(device.Addresser).Addr()
	if inPlace {
		send = recv
	}
	if err := b.devRed.AllReduceDeviceTo(ctx, send, recv, count, false, dist.Sum, 0); err != nil {
		return err
	}
	return b.devRed.WaitDevice(ctx, func() (bool, error) { return device.IdleOf(b.dev) })
}

// result is the last reduction's output.
func (b *benchBuffers) result(count int, inPlace bool) ([]float32, error) {
	if b.dev == nil {
		if inPlace {
			return b.send[:count], nil
		}
		return b.recv[:count], nil
	}
	out := b.recv[:count]
	return out, b.dev.Read(out, b.drecv)
}

func (b *benchBuffers) free() {
	if b.dev != nil {
		b.dev.Free(b.dsend)
		b.dev.Free(b.drecv)
	}
}
