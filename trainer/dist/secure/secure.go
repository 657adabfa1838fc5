package secure

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Preamble is the magic and protocol version the client sends first.
const Preamble = "GOTRAIN-AUTH/1\n"

// NonceSize is the size of each side's random challenge.
const NonceSize = 32

// DefaultTimeout bounds a whole handshake when Options.Timeout is zero. A
// real handshake (TLS included) takes milliseconds even on a loaded
// machine; the bound is short because every handshake in progress holds a
// slot of its listener's [Gate], so it is also how long a peer that
// connects and then stalls can keep a slot.
const DefaultTimeout = 5 * time.Second

const (
	statusReject = 0x00
	statusAccept = 0x01
)

// Environment variables read by SecretFromEnv.
const (
	EnvSecret     = "GOTRAIN_JOB_SECRET"
	EnvSecretFile = "GOTRAIN_JOB_SECRET_FILE"
)

var (
	// ErrAuth means the peer does not hold this job's secret (or its
	// certificate was refused).
	ErrAuth = errors.New("secure: authentication failed")
	// ErrHandshake means the peer did not speak the protocol: garbage, a
	// wrong version, a truncated exchange or a timeout.
	ErrHandshake = errors.New("secure: handshake failed")
)

// Options configures a handshake.
type Options struct {
	// Secret is the per-job secret; required.
	Secret []byte
	// TLS, when set, encrypts the connection: the TLS handshake runs first,
	// then the HMAC exchange inside it. Server uses it as a server config,
	// Client as a client config.
	TLS *tls.Config
	// Timeout bounds the whole handshake (DefaultTimeout when zero).
	Timeout time.Duration
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

func authErr(side string) error {
	return fmt.Errorf("%w: %s does not hold this job's secret; check that every process of the job has the same %s (or %s)",
		ErrAuth, side, EnvSecret, EnvSecretFile)
}

func handshakeErr(what string, err error) error {
	if err == nil {
		return fmt.Errorf("%w: %s", ErrHandshake, what)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: peer closed the connection: %v", ErrHandshake, what, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %s: timed out: %v", ErrHandshake, what, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrHandshake, what, err)
}

func mac(secret []byte, label string, a, b []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write(a)
	m.Write(b)
	return m.Sum(nil)
}

// Server runs the accepting side of the handshake on c. On success it
// returns the connection to use (c itself, or the TLS connection over it)
// with no deadline set. On failure it closes c and returns an error that
// wraps ErrAuth or ErrHandshake.
func Server(c net.Conn, o Options) (net.Conn, error) {
	conn, err := server(c, o)
	if err != nil {
		c.Close()
		return nil, err
	}
	return conn, nil
}

func server(c net.Conn, o Options) (net.Conn, error) {
	if len(o.Secret) == 0 {
		return nil, errors.New("secure: empty secret: jobs are always authenticated; set " + EnvSecret + " or " + EnvSecretFile)
	}
	deadline := time.Now().Add(o.timeout())
	if err := c.SetDeadline(deadline); err != nil {
		return nil, handshakeErr("setting deadline", err)
	}
	conn := c
	if o.TLS != nil {
		tc := tls.Server(c, o.TLS)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return nil, tlsErr(err)
		}
		conn = tc
	}
	// Read the preamble as it arrives, rejecting a wrong prefix at once
	// rather than waiting for all of its bytes.
	pre := make([]byte, len(Preamble))
	for got := 0; got < len(pre); {
		n, err := conn.Read(pre[got:])
		got += n
		if !bytes.Equal(pre[:got], []byte(Preamble[:got])) {
			return nil, handshakeErr(fmt.Sprintf("peer is not a gotrain process of a compatible version (got %q, want %q)", pre[:got], Preamble), nil)
		}
		if err != nil && got < len(pre) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, handshakeErr("reading preamble", err)
		}
	}
	ns := make([]byte, NonceSize)
	if _, err := rand.Read(ns); err != nil {
		return nil, err
	}
	if _, err := conn.Write(append([]byte(Preamble), ns...)); err != nil {
		return nil, handshakeErr("sending challenge", err)
	}
	resp := make([]byte, NonceSize+sha256.Size)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return nil, handshakeErr("reading response", err)
	}
	nc, got := resp[:NonceSize], resp[NonceSize:]
	want := mac(o.Secret, "client", ns, nc)
	if subtle.ConstantTimeCompare(got, want) != 1 {
		conn.Write([]byte{statusReject}) // best effort: tell the client why
		return nil, authErr("the connecting peer " + peerName(c))
	}
	if _, err := conn.Write(append([]byte{statusAccept}, mac(o.Secret, "server", nc, ns)...)); err != nil {
		return nil, handshakeErr("sending proof", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, handshakeErr("clearing deadline", err)
	}
	return conn, nil
}

// Client runs the dialing side of the handshake on c. On success it returns
// the connection to use with no deadline set. On failure it closes c and
// returns an error that wraps ErrAuth or ErrHandshake.
//
// With Options.TLS and no ServerName in it (and InsecureSkipVerify unset),
// the server's name is taken from c's remote address.
func Client(c net.Conn, o Options) (net.Conn, error) {
	conn, err := client(c, o)
	if err != nil {
		c.Close()
		return nil, err
	}
	return conn, nil
}

func client(c net.Conn, o Options) (net.Conn, error) {
	if len(o.Secret) == 0 {
		return nil, errors.New("secure: empty secret: jobs are always authenticated; set " + EnvSecret + " or " + EnvSecretFile)
	}
	deadline := time.Now().Add(o.timeout())
	if err := c.SetDeadline(deadline); err != nil {
		return nil, handshakeErr("setting deadline", err)
	}
	conn := c
	if o.TLS != nil {
		cfg := o.TLS
		if cfg.ServerName == "" && !cfg.InsecureSkipVerify && c.RemoteAddr() != nil {
			cfg = cfg.Clone()
			host, _, err := net.SplitHostPort(c.RemoteAddr().String())
			if err != nil {
				host = c.RemoteAddr().String()
			}
			cfg.ServerName = host
		}
		tc := tls.Client(c, cfg)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return nil, tlsErr(err)
		}
		conn = tc
	}
	if _, err := conn.Write([]byte(Preamble)); err != nil {
		return nil, handshakeErr("sending preamble", err)
	}
	chal := make([]byte, len(Preamble)+NonceSize)
	if _, err := io.ReadFull(conn, chal); err != nil {
		return nil, handshakeErr("reading challenge", err)
	}
	if !bytes.Equal(chal[:len(Preamble)], []byte(Preamble)) {
		return nil, handshakeErr(fmt.Sprintf("server %s is not a gotrain process of a compatible version (got %q, want %q)",
			peerName(c), chal[:len(Preamble)], Preamble), nil)
	}
	ns := chal[len(Preamble):]
	nc := make([]byte, NonceSize)
	if _, err := rand.Read(nc); err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(append([]byte{}, nc...), mac(o.Secret, "client", ns, nc)...)); err != nil {
		return nil, handshakeErr("sending response", err)
	}
	status := make([]byte, 1)
	if _, err := io.ReadFull(conn, status); err != nil {
		return nil, handshakeErr("reading verdict", err)
	}
	switch status[0] {
	case statusReject:
		return nil, fmt.Errorf("%w: the server %s rejected this process: this process does not hold the job's secret; check that every process of the job has the same %s (or %s)",
			ErrAuth, peerName(c), EnvSecret, EnvSecretFile)
	case statusAccept:
	default:
		return nil, handshakeErr(fmt.Sprintf("bad verdict byte 0x%02x", status[0]), nil)
	}
	proof := make([]byte, sha256.Size)
	if _, err := io.ReadFull(conn, proof); err != nil {
		return nil, handshakeErr("reading server proof", err)
	}
	if subtle.ConstantTimeCompare(proof, mac(o.Secret, "server", nc, ns)) != 1 {
		return nil, authErr("the server " + peerName(c))
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, handshakeErr("clearing deadline", err)
	}
	return conn, nil
}

func peerName(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return "(unknown address)"
}

func tlsErr(err error) error {
	var ne net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return handshakeErr("TLS handshake", err)
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		// The server closed the connection before answering, as it does
		// when its Gate is full: not a certificate problem.
		return handshakeErr("TLS handshake", err)
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		return handshakeErr("TLS handshake (peer is not speaking TLS)", err)
	}
	// Certificate problems: the peer is not a member of the job.
	return fmt.Errorf("%w: TLS handshake: %v", ErrAuth, err)
}

// NewSecret returns 32 random bytes, hex-encoded: a fresh job secret.
func NewSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("secure: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// SecretFromEnv returns the job secret from GOTRAIN_JOB_SECRET or, when
// that is unset, from the file named by GOTRAIN_JOB_SECRET_FILE (its
// contents with surrounding white space trimmed). A value that is valid hex
// (as written by NewSecret) is decoded; anything else is used as raw bytes.
// Both sources decode the same way, so a secret may reach some processes by
// variable and others by file.
func SecretFromEnv(getenv func(string) string) ([]byte, error) {
	if v := strings.TrimSpace(getenv(EnvSecret)); v != "" {
		return decodeSecret(v), nil
	}
	if f := getenv(EnvSecretFile); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("secure: reading the job secret from %s=%s: %w", EnvSecretFile, f, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return nil, fmt.Errorf("secure: the job secret file %s (from %s) is empty", f, EnvSecretFile)
		}
		return decodeSecret(v), nil
	}
	return nil, fmt.Errorf("secure: no job secret: set %s to the same value for every process of the job "+
		"(for example the output of `openssl rand -hex 32`), or %s to a file holding it", EnvSecret, EnvSecretFile)
}

func decodeSecret(v string) []byte {
	if len(v)%2 == 0 {
		if b, err := hex.DecodeString(v); err == nil {
			return b
		}
	}
	return []byte(v)
}
