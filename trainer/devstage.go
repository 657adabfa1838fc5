package trainer

import (
	"context"

	"github.com/gotrain/gotrain/gpu/device"
	gpuexec "github.com/gotrain/gotrain/gpu/executor"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/trainer/dist"
)

// devStage is the device executor's pipeline stage: the stage's programs
// on the device (by the host program they were compiled from), only the
// stage's parameters, its optimiser state and its summed gradients (per
// Stage.Params) there. Activations and input gradients travel through
// the host, or with a backend that sends device memory (NCCL) device to
// device (devLink): stageIn then holds each micro-batch's input as
// received, for the backward pass's recomputation.
type devStage struct {
	d       *devRun
	progs   map[*graph.StageProgram]*gpuexec.Program
	acc     []gpuexec.Tensor
	host    [][]float32 // the summed gradients downloaded (replicas' sum)
	out     []float32   // a host buffer for what goes to a neighbour
	p2p     dist.DeviceSendRecver
	stageIn []device.Buffer
}

func newDevStage(d *devRun, only []int) (*devStage, error) {
	s := &devStage{d: d, progs: map[*graph.StageProgram]*gpuexec.Program{}}
	for _, pi := range only {
		p := d.t.Model.Params[pi]
		b, err := d.dev.Alloc(p.Size())
		if err != nil {
			s.free()
			return nil, d.err("allocating a stage gradient", err)
		}
		s.acc = append(s.acc, gpuexec.Tensor{Buf: b, Shape: p.Shape})
		s.host = append(s.host, make([]float32, p.Size()))
	}
	return s, nil
}

func (s *devStage) free() {
	d := s.d
	for _, e := range s.progs {
		e.Free()
	}
	for _, g := range s.acc {
		d.dev.Free(g.Buf)
	}
	for _, b := range s.stageIn {
		if b != nil {
			d.dev.Free(b)
		}
	}
	s.progs, s.acc, s.stageIn = nil, nil, nil
}

// program returns a stage program compiled for the device.
func (s *devStage) program(p *graph.StageProgram) (*gpuexec.Program, error) {
	d := s.d
	if e, ok := s.progs[p]; ok {
		return e, nil
	}
	if len(s.progs) >= 2*graph.MaxStagePrograms {
		// The stage compiled programs anew (it keeps a bounded number):
		// start over rather than keep the old ones' memory.
		for _, e := range s.progs {
			e.Free()
		}
		clear(s.progs)
	}
	e, err := gpuexec.CompileStage(d.dev, p, d.params, d.prec)
	if err != nil {
		return nil, d.err("compiling a stage program", err)
	}
	s.progs[p] = e
	return e, nil
}

// direct reports whether the stage passes its activations and input
// gradients device to device.
func (s *devStage) direct() bool { return s.p2p != nil }

// loadInput puts micro-batch j's input into e's input buffer: x from the
// host on the first stage or without direct transfers, else the device
// copy the link received.
func (s *devStage) loadInput(e *gpuexec.Program, x []float32, j int, fromPeer bool) error {
	d := s.d
	if !s.direct() || !fromPeer {
		if err := device.WriteAsync(d.dev, e.Input().Buf, x); err != nil {
			return d.err("uploading a stage input", err)
		}
		return nil
	}
	n := e.Input().Size()
	if err := d.dev.Launch("copy_f32", n, s.stageIn[j], e.Input().Buf, n); err != nil {
		return d.err("copying a received input", err)
	}
	return nil
}

func (s *devStage) forward(fp *graph.StageProgram, x []float32, j int, fromPeer bool, seed, stream uint64) (stageData, error) {
	d := s.d
	e, err := s.program(fp)
	if err != nil {
		return stageData{}, err
	}
	if err := s.loadInput(e, x, j, fromPeer); err != nil {
		return stageData{}, err
	}
	if _, err := e.RunStageLoaded(nil, seed, stream); err != nil {
		return stageData{}, d.err("running a stage program", err)
	}
	d.runs++
	if s.direct() {
		return stageData{dev: e.Out()}, nil
	}
	out, err := d.read(e.Out(), &s.out)
	return stageData{host: out}, err
}

func (s *devStage) backward(tp *graph.StageProgram, x []float32, j int, fromPeer bool, seed, stream uint64, scale float32, first bool) (float32, stageData, error) {
	d := s.d
	e, err := s.program(tp)
	if err != nil {
		return 0, stageData{}, err
	}
	if err := s.loadInput(e, x, j, fromPeer); err != nil {
		return 0, stageData{}, err
	}
	if tp.G != nil && !s.direct() {
		if err := device.WriteAsync(d.dev, e.Upstream().Buf, tp.G); err != nil {
			return 0, stageData{}, d.err("uploading an output gradient", err)
		}
	}
	l, err := e.RunStageLoaded(tp.Y, seed, stream)
	if err != nil {
		return 0, stageData{}, d.err("running a stage program", err)
	}
	d.runs++
	d.stale = true
	for i := range s.acc {
		n := e.Grad(i).Size()
		if err := d.dev.Launch("axpy_at", n, e.Grad(i).Buf, s.acc[i].Buf, n, 0, scale, !first); err != nil {
			return 0, stageData{}, d.err("summing the stage gradients", err)
		}
	}
	switch {
	case !fromPeer:
		return l, stageData{}, nil
	case s.direct():
		return l, stageData{dev: e.DX()}, nil
	}
	dx, err := d.read(e.DX(), &s.out)
	return l, stageData{host: dx}, err
}

func (s *devStage) zeroGrads() error {
	d := s.d
	for _, a := range s.acc {
		if err := d.dev.Launch("fill", a.Size(), a.Buf, float32(0), a.Size()); err != nil {
			return d.err("zeroing the stage gradients", err)
		}
	}
	return nil
}

func (s *devStage) hostGrads() ([][]float32, error) {
	d := s.d
	for i, a := range s.acc {
		if err := d.dev.Read(s.host[i], a.Buf); err != nil {
			return nil, d.err("downloading the stage gradients", err)
		}
	}
	return s.host, nil
}

func (s *devStage) putHostGrads() error {
	d := s.d
	for i, a := range s.acc {
		if err := d.dev.Write(a.Buf, s.host[i]); err != nil {
			return d.err("uploading the stage gradients", err)
		}
	}
	return nil
}

func (s *devStage) useGrads() { s.d.cur = s.acc }

func (s *devStage) eval(fp *graph.StageProgram) (float32, []float32, error) {
	d := s.d
	e, err := s.program(fp)
	if err != nil {
		return 0, nil, err
	}
	l, err := e.RunStage(fp.X, fp.Y, nil, 0, 0)
	if err != nil {
		return 0, nil, d.err("evaluation", err)
	}
	d.evals++
	out, err := d.read(e.Out(), &s.out)
	return l, out, err
}

// link passes the stage's data device to device where the backend sends
// device memory and the device's buffers have addresses; through the
// host otherwise.
func (s *devStage) link(c dist.Communicator) stageLink {
	if r, ok := c.(dist.DeviceSendRecver); ok && len(s.acc) > 0 {
		if _, ok := s.acc[0].Buf.(device.Addresser); ok {
			s.p2p = r
			s.d.t.log.Info("pipeline stages pass activations device to device", "device", s.d.dev.Name())
			return devLink{s}
		}
	}
	return hostLink{s.d.t, c}
}

// devLink passes a stage's data device to device (NCCL's Send and Recv).
type devLink struct{ s *devStage }

// p2p runs a device Send or Recv (f) under the job's deadline and then
// waits for the device, under NCCL's watchdog, so that a neighbour that
// never comes is an error naming what, not a hang.
func (l devLink) p2p(ctx context.Context, what string, f func(ctx context.Context) error) error {
	d := l.s.d
	return d.t.collective(ctx, what, func(ctx context.Context) error {
		if err := f(ctx); err != nil {
			return err
		}
		return l.s.p2p.WaitDevice(ctx, func() (bool, error) { return device.IdleOf(d.dev) })
	})
}

// recvInput receives micro-batch j's input from peer into the stage's
// device buffer for it.
func (l devLink) recvInput(ctx context.Context, j int, x []float32, peer int) error {
	s, d := l.s, l.s.d
	n := len(x)
	for len(s.stageIn) <= j {
		s.stageIn = append(s.stageIn, nil)
	}
	if err := device.Grow(d.dev, &s.stageIn[j], n); err != nil {
		return d.err("allocating a received input", err)
	}
	addr := s.stageIn[j].(device.Addresser).Addr()
	return l.p2p(ctx, "pipeline receive of activations", func(ctx context.Context) error {
		return s.p2p.RecvDevice(ctx, addr, n, peer, 0)
	})
}

// recvUpstream receives the gradient of tp's output from peer into its
// device program's Upstream buffer.
func (l devLink) recvUpstream(ctx context.Context, tp *graph.StageProgram, peer int) error {
	e, err := l.s.program(tp)
	if err != nil {
		return err
	}
	up := e.Upstream()
	addr := up.Buf.(device.Addresser).Addr()
	return l.p2p(ctx, "pipeline receive of gradients", func(ctx context.Context) error {
		return l.s.p2p.RecvDevice(ctx, addr, up.Size(), peer, 0)
	})
}

// send sends a device tensor to peer.
func (l devLink) send(ctx context.Context, what string, v stageData, peer int) error {
	addr := v.dev.Buf.(device.Addresser).Addr()
	return l.p2p(ctx, what, func(ctx context.Context) error {
		return l.s.p2p.SendDevice(ctx, addr, v.dev.Size(), peer, 0)
	})
}
