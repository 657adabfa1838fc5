// Package secure authenticates, and optionally encrypts, the TCP
// connections of one gotrain job (the rendezvous store and any other
// control-plane connection between its processes).
//
// # The handshake
//
// Every process of a job holds the same per-job secret (see
// [SecretFromEnv] and [NewSecret]). When a connection is set up, [Client]
// (the dialing side) and [Server] (the accepting side) run a mutual
// challenge-response over it:
//
//  1. the client sends the preamble "GOTRAIN-AUTH/1\n"; anything else is
//     rejected at once with [ErrHandshake];
//  2. the server answers with the same preamble and a 32-byte random nonce ns;
//  3. the client answers with its own 32-byte random nonce nc and
//     HMAC-SHA256(secret, "client" || ns || nc);
//  4. the server checks that MAC in constant time; on a mismatch it sends a
//     rejection byte, closes the connection and returns [ErrAuth];
//     otherwise it sends an acceptance byte and
//     HMAC-SHA256(secret, "server" || nc || ns);
//  5. the client checks that MAC in constant time ([ErrAuth] on a mismatch).
//
// Every read has a fixed size and the whole handshake runs under one
// deadline (Options.Timeout, [DefaultTimeout] = 5s by default), so garbage,
// truncated or never-finishing peers end in an error within the timeout. On
// success the deadline is cleared and the returned connection is ready for
// use; on failure the connection has been closed.
//
// # Bounding the unauthenticated
//
// Until a handshake ends, the peer is nobody: anyone who can reach the port
// can open connections and stall in the middle of one. Each costs the
// server a file descriptor and a goroutine, so every accept loop that runs
// the handshake (the rendezvous store's, which the elastic launchers use
// too, the CPU ring's and the parameter server's) passes its connections
// through a [Gate]: at most [DefaultMaxHandshakes] (128) handshakes in
// progress per listener, each for at most the deadline. A connection beyond
// the cap is closed at once, and the gate logs a warning at most once per
// [WarnInterval]; the job is not otherwise affected. Established,
// authenticated connections hold no slot. The processes of the job retry a
// refused connection ([Retryable]), so a rank that connects during a flood
// gets in at the latest when the flood's connections reach their deadline.
// [LimitListener] applies a Gate to all of a listener's connections; the
// Prometheus endpoint (trainer/metrics/prom) uses it.
//
// With Options.TLS set, the TLS handshake runs first and the HMAC exchange
// then runs inside the TLS session. [LoadTLS] builds mutual-TLS
// configurations from PEM files and a job CA.
//
// # What is and is not protected
//
//   - The HMAC exchange authenticates the peer at connection set-up only:
//     it proves that the other end holds this job's secret, and the secret
//     itself never crosses the wire. A process without the secret cannot
//     open a working connection to the job, nor pose as its server.
//   - Without TLS, the stream after the handshake is neither encrypted nor
//     integrity-protected: an attacker on the network path can read it, and
//     could alter or inject data into an already authenticated connection.
//     Use the plain mode only on networks you trust.
//   - With TLS, the whole stream is encrypted and integrity-protected, and
//     with mutual TLS ([LoadTLS] with a CA) both ends also prove they hold a
//     certificate issued by the job's CA.
//   - NCCL's own traffic (the collective operations between GPUs, over
//     sockets or InfiniBand) is not covered by any of this: NCCL opens its
//     own connections, unauthenticated and unencrypted. Keep it on a
//     trusted network.
//   - The secret is only as safe as the place it is kept: prefer
//     GOTRAIN_JOB_SECRET_FILE (a file readable only by the job's user) to
//     the environment variable, which other processes of the same user can
//     read.
package secure
