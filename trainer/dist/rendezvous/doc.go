// Package rendezvous is the key-value store a multi-process job uses to set
// itself up (like PyTorch's TCPStore), and the reading of the job's layout
// from the environment.
//
// # The store
//
// Rank 0 runs a [Server] ([Serve]); every process, rank 0 included,
// connects a [Client] ([Dial]). Every connection must first pass the job's
// authentication (trainer/dist/secure): a process without the job's secret
// can neither read nor write anything. At most secure.DefaultMaxHandshakes
// handshakes are in progress at once, each within its deadline; a
// connection beyond them is closed at once (secure.Gate), and [Dial]
// retries it, so a flood of connections that never finish the handshake
// holds a bounded number of the server's file descriptors and delays a real
// client by at most the deadline. Clients then Set, Get, Add and Wait
// on keys. A Get or Wait for a key that is not there yet blocks on the
// server until some client sets it or the caller's ctx ends; the client
// then tells the server to stop waiting, and every waiter on the server is
// tied to its connection, so nothing outlives a client that goes away.
//
// Requests and responses are length-prefixed binary frames (see
// protocol.go). The server checks every length against fixed limits
// ([MaxKeyLen], [MaxValueLen], [MaxStoreSize], [MaxWaitKeys],
// [MaxPendingPerConn]) before it allocates anything, answers a malformed
// request with an error and closes that connection; other clients are not
// affected. Reaching the store's size limit fails the Set, not the
// connection.
//
// Add keeps integers as decimal text, as TCPStore does: after Add(k, 3),
// Get(k) returns "3".
//
// # The environment
//
// [FromEnv] finds rank, world size, local rank, local world size and the
// master's address in this order; the first source that applies wins:
//
//  1. torchrun (or any launcher using its names), when RANK is set (or
//     WORLD_SIZE alone, without Slurm or Kubernetes variables): RANK and
//     WORLD_SIZE are required; LOCAL_RANK defaults to 0, LOCAL_WORLD_SIZE
//     to 1; MASTER_ADDR is required when the job spans several nodes,
//     otherwise it defaults to 127.0.0.1.
//  2. Slurm, when SLURM_PROCID is set: SLURM_PROCID is the rank,
//     SLURM_NTASKS the world size, SLURM_LOCALID the local rank (default
//     0); the local world size is SLURM_NTASKS_PER_NODE or else this node's
//     entry (SLURM_NODEID) of SLURM_TASKS_PER_NODE ("4(x2),2"), else 1.
//     MASTER_ADDR, when set, wins; otherwise it is the first host of
//     SLURM_JOB_NODELIST (or SLURM_NODELIST), a compressed list such as
//     "node[01-04,07],gpu5" (see [ExpandNodeList]).
//  3. A Kubernetes Indexed Job, when JOB_COMPLETION_INDEX is set: it is the
//     rank; WORLD_SIZE and MASTER_ADDR are required; LOCAL_RANK and
//     LOCAL_WORLD_SIZE default to 0 and 1.
//  4. Otherwise a single process: rank 0 of 1, at MASTER_ADDR or 127.0.0.1.
//
// In every case MASTER_PORT, when set, is the port (default 29500). The
// result is validated (rank below world size, local rank below local world
// size, port in 1-65535, ...), and errors name the variable at fault.
package rendezvous
