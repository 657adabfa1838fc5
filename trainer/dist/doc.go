// Package dist is gotrain's collective-communication layer: the
// Communicator interface that data-parallel training uses to average
// gradients, and the pure-Go CPU backend over TCP (NewRing), the role Gloo
// plays for PyTorch. Other backends (NCCL) implement the same interface and
// pass the same conformance suite, trainer/dist/disttest.
//
// # The interface
//
// A Communicator is one rank (0..Size()-1) of a group. Collectives —
// AllReduce, Broadcast, AllGather, ReduceScatter, Barrier — must be called by
// every rank, in the same order, with buffers of the same element type and
// matching lengths; Send/Recv pair one rank with another. Buffers are
// []float32 or []float64; Broadcast, AllGather, Send and Recv also take
// []byte. Calls on one communicator are not meant to overlap, except Send and
// Recv to different directions on separate goroutines.
//
//   - AllReduce(send, recv, op): recv = op over all ranks' send, on every
//     rank. send may be recv (in place); otherwise send is left untouched.
//   - Broadcast(buf, root): root's buf is copied into everyone's buf.
//   - AllGather(send, recv): len(recv) == Size()*len(send); rank r's send
//     lands at recv[r*len(send):]. send may be that block of recv.
//   - ReduceScatter(send, recv, op): len(send) == Size()*len(recv); rank r
//     gets block r of the reduction. send is left untouched.
//   - Barrier: returns once every rank has entered it.
//   - Send(buf, peer) / Recv(buf, peer): one message; Recv's buffer must have
//     the sender's type and length, else ErrBadBuffer (the ring backend
//     discards the message and stays usable).
//
// Ops are Sum, Avg, Max and Min. Avg is Sum followed by a division by
// Size() (a true division, not a multiplication by 1/Size()). Max and Min
// propagate NaN.
//
// Determinism: every rank ends an AllReduce with bitwise-identical results,
// because each block is reduced on exactly one rank and then the same bytes
// are copied to all others. The summation order is fixed by the group size
// and the buffer length, so the same inputs give the same bits run after
// run; it is not the order of a naive left-to-right sum, so results can
// differ from such a sum in the last bits.
//
// # Failures and the error policy
//
// Every error a Communicator returns is an *OpError naming the rank that
// returns it and the operation, e.g.
//
//	rank 2: AllReduce: lost connection to rank 3 (connection closed (EOF))
//	rank 0: Barrier: timed out waiting for rank 1 (context deadline exceeded)
//
// and matches one of the sentinels with errors.Is:
//
//   - ErrBadBuffer / ErrInvalidArg: caught before anything is sent; the
//     communicator stays usable.
//   - ErrTimeout (and context.DeadlineExceeded), or context.Canceled: the
//     call's ctx ended. A half-done collective leaves the peers out of step,
//     so the communicator aborts itself; the error names the peer(s) waited on.
//   - ErrPeerLost: a peer's connection closed or reset, or the peer closed or
//     aborted its communicator; the error names the peer (and, when the peer
//     said why, its reason, which names the rank at the origin of a chain of
//     failures).
//   - ErrProtocol: a peer sent something that is not a valid frame; names
//     the peer.
//   - ErrAborted: the communicator was aborted before or during the call
//     (by Abort, Close — wrapping ErrClosed —, a deadline, or an earlier
//     failure); it also wraps the original cause.
//
// Any failure during a collective aborts the communicator: pending and later
// calls fail at once, and the peers are told (a best-effort abort frame,
// then the connections close), so their pending calls fail with ErrPeerLost
// instead of waiting. Nothing hangs forever given a ctx with a deadline, and
// no input from the network can make the backend panic or allocate beyond
// fixed caps. Recovery is to build a new group (new Prefix).
//
// # The ring backend
//
// NewRing listens on an ephemeral TCP port on RingConfig.ListenHost,
// publishes "host:port" under Prefix+"addr/<rank>" in the Store, dials every
// lower rank and accepts every higher one: a full mesh, established before
// NewRing returns, with TCP_NODELAY and 4 MiB socket buffers. Each connection
// first passes through RingConfig.Upgrade (authentication/encryption, if
// set), then a handshake: the dialer sends hello (rank, size, prefix), the
// acceptor checks them and answers with its own hello, or with a reject
// frame giving the reason (wrong group, wrong size) and closes. Stray
// connections are refused without disturbing setup: at most
// RingConfig.MaxHandshakes (secure.DefaultMaxHandshakes) run at once on
// each listener, each within secure.DefaultTimeout, and a connection beyond
// them is closed at once (secure.Gate). A dialing rank whose connection is
// closed or reset during the upgrade or the hello retries, with a back-off
// up to 1s; a reject frame or a refused secret ends it. Setup fails after
// RingConfig.Timeout with ErrTimeout naming the ranks that never connected.
//
// AllReduce is the bandwidth-optimal ring: the buffer is cut into Size()
// blocks (sizes differ by at most one element; some are empty when the
// buffer is shorter than the group). In n-1 reduce-scatter steps rank r sends
// block r-s-1 to rank r+1 while receiving block r-s-2 from rank r-1 and
// reducing it with its own contribution, so that block r ends fully reduced
// on rank r (and divided by n for Avg); n-1 all-gather steps then pass the
// finished blocks around. Each rank sends and receives 2(n-1)/n of the
// buffer. Blocks travel as frames of at most ChunkBytes, written by one
// goroutine while another receives and reduces, so sending and receiving
// overlap and large buffers stream through a ChunkBytes scratch buffer with
// no whole-buffer copy. Floats go on the wire little-endian straight from
// the caller's slice (reinterpreted in place on little-endian machines,
// encoded otherwise) and are received straight into it. ReduceScatter is the
// first half of this algorithm; AllGather the second; Broadcast a chain from
// the root around the ring, forwarding each frame as soon as it arrives;
// Barrier a dissemination barrier (ceil(log2 n) rounds of empty frames over
// the mesh); Send is a header frame (element type and count) and data frames.
// With Size 1 every operation is local.
//
// # Wire format
//
// Each connection direction is a sequence of frames: a 12-byte header then
// the payload.
//
//	byte 0     magic 0xD7
//	byte 1     version 1
//	byte 2     op: 1 hello, 2 reject, 3 bye, 4 abort, 10 AllReduce,
//	           11 Broadcast, 12 AllGather, 13 ReduceScatter, 14 Barrier,
//	           15 Send header, 16 Send data
//	byte 3     flags, 0
//	bytes 4-7  sequence number, uint32 LE, 0 for the hello, +1 per frame
//	bytes 8-11 payload length, uint32 LE
//
// The decoder rejects a bad magic or version, unknown op or flags, an
// out-of-order sequence number, a frame of another collective than the one
// running, and any length above what the caller's buffer still expects (and
// above 64 MiB for data, 4 KiB for control frames) with ErrProtocol, before
// reading the payload. Bye and abort frames carry a reason text and end the
// peer's stream.
//
// # Example
//
//	store := dist.NewMemStore() // or the TCP store of trainer/dist/rendezvous
//	comm, err := dist.NewRing(ctx, dist.RingConfig{
//		Rank: rank, Size: world, Store: store, Prefix: "job42/ring/",
//		ListenHost: nodeIP, Timeout: time.Minute,
//	})
//	if err != nil {
//		return err
//	}
//	defer comm.Close()
//	stepCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
//	defer cancel()
//	if err := comm.AllReduce(stepCtx, grads, grads, dist.Avg); err != nil {
//		return err // errors.Is(err, dist.ErrPeerLost) etc.; the group is gone
//	}
//
// Tune ChunkBytes with BenchmarkRingAllReduce64MiB (it reports algbw and
// busbw = algbw·2(n-1)/n).
package dist
