// Package ps is gotrain's parameter server for asynchronous training
// (`--sync async`): workers never wait for each other.
//
// # How it works
//
// A [Server] holds the model's parameters (flat, in the model's parameter
// order), the optimiser and the work of the run: every epoch's batches,
// numbered 0..Batches(epoch)-1. A worker connects, says hello, and is sent
// the current parameters and a batch to compute; it pushes the gradient of
// that batch and gets back fresh parameters and its next batch, until the
// run's batches are all done. Fast workers therefore take more batches than
// slow ones, and the run ends when the last batch is pushed: a straggler
// delays only its own batches.
//
// Each push is applied at once (the optimiser steps the parameters; the
// version counts the steps). A gradient computed on version b and applied
// at version v has staleness v-b; with DownWeight it is scaled by
// 1/(1+staleness). MaxStaleness bounds how far a worker may run ahead: the
// server holds a worker's reply while its version is more than
// MaxStaleness ahead of the oldest version another live worker computes
// on, so that no gradient gets too stale; the time held is the worker's
// wait, reported with the staleness in [Stats].
//
// A worker that leaves (its connection closes or fails) is dropped: its
// unfinished batch goes back to the queue for another worker, and workers
// held for it are released. The server ends when every batch is done, or
// when every worker is gone ([Server.Wait] says which). A worker that has
// nothing left to take while batches are still out with others is held
// until they are pushed (it is sent the end) or one comes back to the
// queue (it takes it), so no batch is left without a worker.
//
// # Deadline
//
// A worker that stops without leaving (a stopped process, a hung device, a
// cut network) keeps its connection open. With Config.Timeout set, a
// worker that has held a batch for longer than Timeout without pushing it
// is declared lost: it is logged by number with the time it was silent,
// listed in [Stats] (Lost and TimedOut), its batch goes back to the queue
// and the staleness bound no longer waits for it. Time enters only through
// [Server.Tick], TicksPerTimeout ticks a Timeout, so a worker is declared
// lost between Timeout and Timeout·(1+1/TicksPerTimeout) after it was
// handed its batch; NewServer starts a ticker for it, unless ManualTick
// (tests tick by hand). A server that is itself stopped does not tick, so
// it does not declare its workers lost for its own silence. A lost worker
// is sent a "lost" reply as soon as it is declared (it finds it when it
// runs again, even after the server has gone), and any later push or hello
// of it is answered the same way: a batch is applied exactly once.
//
// # Wire format
//
// After the connection's authentication (see trainer/dist/secure), all
// integers little endian:
//
//	hello  (worker→server): "GTPS" u8 version(1) u32 worker u32 nparams
//	push   (worker→server): u8 kind(2) u64 base version u32 samples u32 epoch u32 batch u32 n, n float32 gradient
//	reply  (server→worker): u8 kind(1 work, 2 end, 3 refused, 4 lost) u64 version u32 epoch u32 batch u64 waited ns u32 n, n float32 parameters
//
// A refused or lost reply carries a UTF-8 message in place of the
// parameters (n bytes). Frames are checked against the model's size before anything is
// allocated; bad bytes end the connection with an error naming them.
//
// # Errors
//
// Server methods return errors for a wrong parameter count (a worker with
// another model is refused with a reply that says so); Client methods wrap
// ErrRefused, ErrLost, ErrProtocol and the connection's errors.
package ps

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Version is the protocol version in the hello frame (2: the lost reply).
const Version = 2

const magic = "GTPS"

// Frame kinds.
const (
	kindPush    = 2
	kindWork    = 1
	kindEnd     = 2
	kindRefused = 3
	kindLost    = 4
)

var (
	// ErrProtocol means the peer sent bytes that are not this protocol.
	ErrProtocol = errors.New("ps: protocol error")
	// ErrRefused means the server refused the worker (another model, a
	// duplicate worker number).
	ErrRefused = errors.New("ps: refused by the parameter server")
	// ErrLost is returned by Client.Push and Join to a worker that the
	// server declared lost (it held a batch for longer than the server's
	// Timeout without pushing it): its batches were given to the others,
	// and the server takes nothing more from it.
	ErrLost = errors.New("ps: declared lost by the parameter server")
)

// Hello is a worker's first frame.
type Hello struct {
	Worker  uint32
	NParams uint32
}

// Push is a worker's gradient for one batch.
type Push struct {
	BaseVersion uint64 // the parameter version the gradient was computed on
	Samples     uint32
	Epoch       uint32
	Batch       uint32
	Grad        []float32
}

// Reply is the server's answer to a hello or a push.
type Reply struct {
	Kind        uint8
	Version     uint64
	Epoch       uint32
	Batch       uint32
	WaitedNanos uint64
	Params      []float32 // work: the parameters at Version
	Message     string    // refused, lost: why
}

func writeHello(w *bufio.Writer, h Hello) error {
	var b [13]byte
	copy(b[:4], magic)
	b[4] = Version
	binary.LittleEndian.PutUint32(b[5:], h.Worker)
	binary.LittleEndian.PutUint32(b[9:], h.NParams)
	if _, err := w.Write(b[:]); err != nil {
		return err
	}
	return w.Flush()
}

func readHello(r io.Reader) (Hello, error) {
	var b [13]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Hello{}, fmt.Errorf("%w: reading hello: %v", ErrProtocol, err)
	}
	if string(b[:4]) != magic {
		return Hello{}, fmt.Errorf("%w: hello starts %q, not %q (is this a gotrain worker?)", ErrProtocol, b[:4], magic)
	}
	if b[4] != Version {
		return Hello{}, fmt.Errorf("%w: protocol version %d, this server speaks %d (mixed gotrain versions?)", ErrProtocol, b[4], Version)
	}
	return Hello{Worker: binary.LittleEndian.Uint32(b[5:]), NParams: binary.LittleEndian.Uint32(b[9:])}, nil
}

func writeFloats(w *bufio.Writer, xs []float32) error {
	var b [4]byte
	for _, x := range xs {
		binary.LittleEndian.PutUint32(b[:], math.Float32bits(x))
		if _, err := w.Write(b[:]); err != nil {
			return err
		}
	}
	return nil
}

// readFloats fills dst from r.
func readFloats(r io.Reader, dst []float32, scratch []byte) error {
	for len(dst) > 0 {
		n := min(len(dst), len(scratch)/4)
		if _, err := io.ReadFull(r, scratch[:4*n]); err != nil {
			return err
		}
		for i := range n {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(scratch[4*i:]))
		}
		dst = dst[n:]
	}
	return nil
}

func writePush(w *bufio.Writer, p Push) error {
	var b [21]byte
	b[0] = kindPush
	binary.LittleEndian.PutUint64(b[1:], p.BaseVersion)
	binary.LittleEndian.PutUint32(b[9:], p.Samples)
	binary.LittleEndian.PutUint32(b[13:], p.Epoch)
	binary.LittleEndian.PutUint32(b[17:], p.Batch)
	if _, err := w.Write(b[:]); err != nil {
		return err
	}
	var nb [4]byte
	binary.LittleEndian.PutUint32(nb[:], uint32(len(p.Grad)))
	if _, err := w.Write(nb[:]); err != nil {
		return err
	}
	if err := writeFloats(w, p.Grad); err != nil {
		return err
	}
	return w.Flush()
}

// readPush reads a push whose gradient must have len(grad) values, into
// grad. It allocates nothing.
func readPush(r io.Reader, grad []float32, buf []byte) (Push, error) {
	var b [25]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Push{}, err
	}
	if b[0] != kindPush {
		return Push{}, fmt.Errorf("%w: frame kind %d where a push (%d) was expected", ErrProtocol, b[0], kindPush)
	}
	p := Push{
		BaseVersion: binary.LittleEndian.Uint64(b[1:]),
		Samples:     binary.LittleEndian.Uint32(b[9:]),
		Epoch:       binary.LittleEndian.Uint32(b[13:]),
		Batch:       binary.LittleEndian.Uint32(b[17:]),
	}
	if n := binary.LittleEndian.Uint32(b[21:]); int64(n) != int64(len(grad)) {
		return Push{}, fmt.Errorf("%w: a gradient of %d values for a model of %d", ErrProtocol, n, len(grad))
	}
	if err := readFloats(r, grad, buf); err != nil {
		return Push{}, fmt.Errorf("%w: reading a gradient: %v", ErrProtocol, err)
	}
	p.Grad = grad
	return p, nil
}

func writeReply(w *bufio.Writer, rp Reply) error {
	var b [29]byte
	b[0] = rp.Kind
	binary.LittleEndian.PutUint64(b[1:], rp.Version)
	binary.LittleEndian.PutUint32(b[9:], rp.Epoch)
	binary.LittleEndian.PutUint32(b[13:], rp.Batch)
	binary.LittleEndian.PutUint64(b[17:], rp.WaitedNanos)
	switch rp.Kind {
	case kindWork:
		binary.LittleEndian.PutUint32(b[25:], uint32(len(rp.Params)))
	case kindRefused, kindLost:
		binary.LittleEndian.PutUint32(b[25:], uint32(len(rp.Message)))
	}
	if _, err := w.Write(b[:]); err != nil {
		return err
	}
	switch rp.Kind {
	case kindWork:
		if err := writeFloats(w, rp.Params); err != nil {
			return err
		}
	case kindRefused, kindLost:
		if _, err := w.WriteString(rp.Message); err != nil {
			return err
		}
	}
	return w.Flush()
}

// maxMessage bounds a refusal's text.
const maxMessage = 4096

// readReply reads a reply; work replies fill params (which must have the
// model's size).
func readReply(r io.Reader, params []float32, buf []byte) (Reply, error) {
	var b [29]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Reply{}, err
	}
	rp := Reply{Kind: b[0], Version: binary.LittleEndian.Uint64(b[1:]), Epoch: binary.LittleEndian.Uint32(b[9:]),
		Batch: binary.LittleEndian.Uint32(b[13:]), WaitedNanos: binary.LittleEndian.Uint64(b[17:])}
	n := binary.LittleEndian.Uint32(b[25:])
	switch rp.Kind {
	case kindWork:
		if int64(n) != int64(len(params)) {
			return Reply{}, fmt.Errorf("%w: %d parameters for a model of %d", ErrProtocol, n, len(params))
		}
		if err := readFloats(r, params, buf); err != nil {
			return Reply{}, fmt.Errorf("%w: reading parameters: %v", ErrProtocol, err)
		}
		rp.Params = params
	case kindEnd:
	case kindRefused, kindLost:
		if n > maxMessage {
			return Reply{}, fmt.Errorf("%w: a refusal of %d bytes", ErrProtocol, n)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return Reply{}, fmt.Errorf("%w: reading a refusal: %v", ErrProtocol, err)
		}
		rp.Message = string(msg)
	default:
		return Reply{}, fmt.Errorf("%w: reply kind %d", ErrProtocol, rp.Kind)
	}
	return rp, nil
}
