package dist

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Op is a reduction operator.
type Op int

// The reduction operators.
const (
	Sum Op = iota // element-wise sum
	Avg           // element-wise sum divided by Size()
	Max           // element-wise maximum
	Min           // element-wise minimum
)

// String returns the operator's name ("Sum", "Avg", "Max", "Min").
func (o Op) String() string {
	switch o {
	case Sum:
		return "Sum"
	case Avg:
		return "Avg"
	case Max:
		return "Max"
	case Min:
		return "Min"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

func (o Op) valid() bool { return o >= Sum && o <= Min }

// Communicator is a group of Size() processes (ranks 0..Size()-1) that run
// collectives together. Every rank must call the same collectives, with the
// same element type and matching lengths, in the same order. Calls on one
// Communicator are not meant to run concurrently, except that Send and Recv
// to/from peers may run on separate goroutines (e.g. a Send to the right
// neighbour while a Recv from the left one is pending).
//
// Buffers are []float32 or []float64; Broadcast, AllGather, Send and Recv also
// take []byte. Any other type, or mismatched types/lengths, returns an error
// wrapping ErrBadBuffer before anything is sent.
type Communicator interface {
	// Rank is this process's rank in [0, Size()).
	Rank() int
	// Size is the number of ranks in the group.
	Size() int
	// AllReduce reduces send element-wise over all ranks with op and leaves
	// the result in recv on every rank. len(send) == len(recv); send may be
	// the same slice as recv (in place). Every rank ends with bitwise-
	// identical recv.
	AllReduce(ctx context.Context, send, recv any, op Op) error
	// Broadcast copies root's buf into buf on every other rank.
	Broadcast(ctx context.Context, buf any, root int) error
	// AllGather concatenates every rank's send, in rank order, into recv:
	// len(recv) == Size()*len(send) and rank r's data lands at
	// recv[r*len(send):(r+1)*len(send)].
	AllGather(ctx context.Context, send, recv any) error
	// ReduceScatter reduces send element-wise over all ranks and leaves block
	// r (recv-sized) of the result in rank r's recv:
	// len(send) == Size()*len(recv).
	ReduceScatter(ctx context.Context, send, recv any, op Op) error
	// Barrier returns once every rank has entered it.
	Barrier(ctx context.Context) error
	// Send sends buf to peer, which must call Recv with a buffer of the same
	// type and length.
	Send(ctx context.Context, buf any, peer int) error
	// Recv fills buf with the data of a matching Send from peer. A length or
	// type mismatch is an error (wrapping ErrBadBuffer).
	Recv(ctx context.Context, buf any, peer int) error
	// Close shuts the communicator down in order: peers are told, so their
	// next collective fails with ErrPeerLost instead of waiting.
	Close() error
	// Abort tears the communicator down now: every pending and later call
	// returns an error wrapping ErrAborted and err; peers' pending calls fail
	// with ErrPeerLost.
	Abort(err error)
}

// Sentinel errors. Errors returned by a Communicator are *OpError values
// whose Kind is one of these, so errors.Is(err, ErrPeerLost) etc. work.
var (
	// ErrAborted: returned by every call pending or started after Abort, Close
	// or a failed collective (a failed collective aborts the communicator,
	// because the peers are out of step). It wraps the original cause.
	ErrAborted = errors.New("dist: communicator aborted")
	// ErrBadBuffer: returned before any communication for a buffer of an
	// unsupported type, mismatched types, or wrong lengths; also by Recv when
	// the peer sent a message of another type or length (the message is
	// discarded and the communicator stays usable).
	ErrBadBuffer = errors.New("dist: bad buffer")
	// ErrInvalidArg: a bad root, peer or Op; returned before any communication.
	ErrInvalidArg = errors.New("dist: invalid argument")
	// ErrPeerLost: a peer's connection closed or reset, the peer closed or
	// aborted its communicator, or (at setup) a peer never connected.
	// The error names the peer's rank.
	ErrPeerLost = errors.New("dist: peer lost")
	// ErrTimeout: the context's deadline passed during a call (the error also
	// wraps context.DeadlineExceeded), or connection setup exceeded
	// RingConfig.Timeout. The error names the rank(s) waited on.
	ErrTimeout = errors.New("dist: timeout")
	// ErrProtocol: a peer sent bytes that are not a valid frame (bad magic or
	// version, unknown op, out-of-order sequence, oversize length, a frame of
	// another collective) or failed the handshake. The error names the peer.
	ErrProtocol = errors.New("dist: protocol error")
	// ErrClosed: the cause wrapped (with ErrAborted) by calls after Close.
	ErrClosed = errors.New("dist: communicator closed")
)

// OpError describes a failed call. Kind is one of the sentinel errors (or
// context.Canceled for a cancelled context); Err is the underlying cause.
// errors.Is matches both Kind and the chain of Err.
type OpError struct {
	Rank  int    // the rank that returns the error
	Op    string // "AllReduce", "Recv", "setup", ...
	Peers []int  // the peer(s) involved, if any
	Kind  error
	Err   error
}

func (e *OpError) peerList() string {
	s := make([]string, len(e.Peers))
	for i, p := range e.Peers {
		s[i] = fmt.Sprint(p)
	}
	if len(s) == 1 {
		return "rank " + s[0]
	}
	return "ranks " + strings.Join(s, ", ")
}

func (e *OpError) Error() string {
	prefix := fmt.Sprintf("rank %d: %s: ", e.Rank, e.Op)
	cause := "<nil>"
	if e.Err != nil {
		cause = e.Err.Error()
	}
	switch {
	case e.Kind == ErrPeerLost && len(e.Peers) > 0:
		return prefix + "lost connection to " + e.peerList() + " (" + cause + ")"
	case (e.Kind == ErrTimeout || e.Kind == context.Canceled) && len(e.Peers) > 0:
		what := "timed out"
		if e.Kind == context.Canceled {
			what = "cancelled"
		}
		return prefix + what + " waiting for " + e.peerList() + " (" + cause + ")"
	case e.Kind == ErrProtocol && len(e.Peers) > 0:
		return prefix + "protocol error from " + e.peerList() + ": " + cause
	case e.Kind == ErrAborted:
		return prefix + "communicator aborted: " + cause
	}
	if e.Kind != nil && e.Kind != e.Err {
		return prefix + e.Kind.Error() + ": " + cause
	}
	return prefix + cause
}

// Unwrap returns Kind and Err.
func (e *OpError) Unwrap() []error {
	if e.Kind == e.Err {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Store is the key/value store ranks use to find each other.
type Store interface {
	Set(ctx context.Context, key string, value []byte) error
	// Get blocks until the key exists or ctx ends.
	Get(ctx context.Context, key string) ([]byte, error)
}

// NewMemStore returns an in-process Store, for tests and single-process groups.
func NewMemStore() Store {
	return &memStore{m: map[string][]byte{}, wait: map[string]chan struct{}{}}
}

type memStore struct {
	mu   sync.Mutex
	m    map[string][]byte
	wait map[string]chan struct{}
}

func (s *memStore) Set(ctx context.Context, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = append([]byte(nil), value...)
	if ch, ok := s.wait[key]; ok {
		close(ch)
		delete(s.wait, key)
	}
	return nil
}

func (s *memStore) Get(ctx context.Context, key string) ([]byte, error) {
	for {
		s.mu.Lock()
		if v, ok := s.m[key]; ok {
			s.mu.Unlock()
			return append([]byte(nil), v...), nil
		}
		ch, ok := s.wait[key]
		if !ok {
			ch = make(chan struct{})
			s.wait[key] = ch
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("store: get %q: %w", key, ctx.Err())
		}
	}
}

// DeviceAllReducer is a Communicator that can also all-reduce memory of a
// compute device in place (NCCL): ptr holds count float32 values, or
// bfloat16 values when bf16. The trainer keeps its gradient buckets on the
// device with such a backend.
type DeviceAllReducer interface {
	// AllReduceDevice queues the all-reduce on the device stream (a
	// CUstream; 0: the default stream, after the work queued there). It
	// may return before the device has done it: WaitDevice waits.
	AllReduceDevice(ctx context.Context, ptr uintptr, count int, bf16 bool, op Op, stream uintptr) error
	// WaitDevice waits until done reports that the device's work is done
	// (a query of the stream the collectives were queued on), under the
	// same deadline and watchdog as the collectives: a peer that never
	// joins is an error, not a hang.
	WaitDevice(ctx context.Context, done func() (bool, error)) error
}

// DeviceSendRecver is a DeviceAllReducer that also sends and receives
// device memory between two ranks (NCCL's Send and Recv): pipeline stages
// on GPUs pass their activations and input gradients that way, without a
// copy through the host. count float32 values at ptr, queued on stream;
// WaitDevice waits for them.
type DeviceSendRecver interface {
	DeviceAllReducer
	SendDevice(ctx context.Context, ptr uintptr, count, peer int, stream uintptr) error
	RecvDevice(ctx context.Context, ptr uintptr, count, peer int, stream uintptr) error
}
