package secure

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type result struct {
	conn net.Conn
	err  error
}

// handshake runs Server and Client over a loopback TCP connection.
func handshake(t *testing.T, so, co Options) (srv, cli result) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		sc, err := Server(c, so)
		done <- result{sc, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	cc, cerr := Client(c, co)
	srv = <-done
	t.Cleanup(func() {
		if srv.conn != nil {
			srv.conn.Close()
		}
		if cc != nil {
			cc.Close()
		}
	})
	return srv, result{cc, cerr}
}

// echoWorks checks that data flows both ways after the handshake and that
// no deadline is left on the connections.
func echoWorks(t *testing.T, a, b net.Conn) {
	t.Helper()
	go func() {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(a, buf); err == nil {
			a.Write(buf)
		}
	}()
	_, err := b.Write([]byte("hello"))
	require.NoError(t, err)
	buf := make([]byte, 5)
	_, err = io.ReadFull(b, buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf))
}

type pki struct {
	caFile, certFile, keyFile      string
	otherCert, otherKey            string // issued by another CA
	serverTLS, clientTLS, rogueTLS *tls.Config
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

func newCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert, key, der
}

func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"gotrain-node"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", kder)
	return certFile, keyFile
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{caFile: filepath.Join(dir, "ca.crt")}
	ca, caKey, caDER := newCA(t, "job CA")
	writePEM(t, p.caFile, "CERTIFICATE", caDER)
	p.certFile, p.keyFile = newLeaf(t, ca, caKey, dir, "node")
	other, otherKey, otherDER := newCA(t, "rogue CA")
	writePEM(t, filepath.Join(dir, "rogue-ca.crt"), "CERTIFICATE", otherDER)
	p.otherCert, p.otherKey = newLeaf(t, other, otherKey, dir, "rogue")
	var err error
	p.serverTLS, p.clientTLS, err = LoadTLS(p.certFile, p.keyFile, p.caFile)
	require.NoError(t, err)
	_, p.rogueTLS, err = LoadTLS(p.otherCert, p.otherKey, filepath.Join(dir, "rogue-ca.crt"))
	require.NoError(t, err)
	return p
}

func TestHandshake(t *testing.T) {
	secret := []byte("job-secret")
	p := newPKI(t)
	noCert := p.clientTLS.Clone()
	noCert.Certificates = nil
	cases := []struct {
		name           string
		so, co         Options
		srvErr, cliErr error
	}{
		{name: "plain", so: Options{Secret: secret}, co: Options{Secret: secret}},
		{name: "mutual TLS", so: Options{Secret: secret, TLS: p.serverTLS}, co: Options{Secret: secret, TLS: p.clientTLS}},
		{name: "wrong secret", so: Options{Secret: secret}, co: Options{Secret: []byte("other")}, srvErr: ErrAuth, cliErr: ErrAuth},
		{name: "wrong secret under TLS", so: Options{Secret: secret, TLS: p.serverTLS}, co: Options{Secret: []byte("other"), TLS: p.clientTLS}, srvErr: ErrAuth, cliErr: ErrAuth},
		{name: "no client cert under mutual TLS", so: Options{Secret: secret, TLS: p.serverTLS}, co: Options{Secret: secret, TLS: noCert}, srvErr: ErrAuth},
		{name: "client cert from another CA", so: Options{Secret: secret, TLS: p.serverTLS}, co: Options{Secret: secret, TLS: p.rogueTLS}, srvErr: ErrAuth, cliErr: ErrAuth},
		{name: "plain client to TLS server", so: Options{Secret: secret, TLS: p.serverTLS, Timeout: time.Second}, co: Options{Secret: secret, Timeout: time.Second}, srvErr: ErrHandshake, cliErr: ErrHandshake},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, cli := handshake(t, tc.so, tc.co)
			if tc.srvErr == nil && tc.cliErr == nil {
				require.NoError(t, srv.err)
				require.NoError(t, cli.err)
				echoWorks(t, srv.conn, cli.conn)
				echoWorks(t, cli.conn, srv.conn)
				if tc.so.TLS != nil {
					_, ok := srv.conn.(*tls.Conn)
					require.True(t, ok, "server side should be a TLS connection")
				}
				return
			}
			if tc.srvErr != nil {
				require.ErrorIs(t, srv.err, tc.srvErr)
				require.Nil(t, srv.conn)
			}
			if tc.cliErr != nil {
				require.ErrorIs(t, cli.err, tc.cliErr)
			}
			// The client must not end up with a working connection.
			require.True(t, cli.err != nil || srv.err != nil)
			if cli.err == nil {
				// TLS 1.3 client may only learn of the rejection on first read.
				cli.conn.SetDeadline(time.Now().Add(2 * time.Second))
				_, err := cli.conn.Read(make([]byte, 1))
				require.Error(t, err)
			}
		})
	}
}

func TestWrongSecretMessages(t *testing.T) {
	srv, cli := handshake(t, Options{Secret: []byte("a")}, Options{Secret: []byte("b")})
	require.ErrorContains(t, srv.err, "does not hold this job's secret")
	require.ErrorContains(t, srv.err, EnvSecret)
	require.ErrorContains(t, cli.err, "does not hold the job's secret")
	require.ErrorContains(t, cli.err, EnvSecret)
}

func TestEmptySecret(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	_, err := Server(a, Options{})
	require.ErrorContains(t, err, "empty secret")
	_, err = Client(b, Options{})
	require.ErrorContains(t, err, "empty secret")
}

// A server impersonator that does not hold the secret but claims success.
func TestClientRejectsImpostorServer(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		defer a.Close()
		io.ReadFull(a, make([]byte, len(Preamble)))
		a.Write(append([]byte(Preamble), make([]byte, NonceSize)...))
		io.ReadFull(a, make([]byte, 64))
		a.Write(append([]byte{statusAccept}, make([]byte, 32)...))
	}()
	_, err := Client(b, Options{Secret: []byte("s"), Timeout: 2 * time.Second})
	require.ErrorIs(t, err, ErrAuth)
	require.ErrorContains(t, err, "the server")
}

func TestHostilePeers(t *testing.T) {
	secret := []byte("s")
	const timeout = 300 * time.Millisecond
	cases := []struct {
		name string
		peer func(c net.Conn) // plays the client against Server
		want error
	}{
		{"garbage", func(c net.Conn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }, ErrHandshake},
		{"wrong version", func(c net.Conn) { c.Write([]byte("GOTRAIN-AUTH/9\n")) }, ErrHandshake},
		{"short garbage then stall", func(c net.Conn) { c.Write([]byte("XY")) }, ErrHandshake},
		{"closes at once", func(c net.Conn) { c.Close() }, ErrHandshake},
		{"truncated preamble", func(c net.Conn) { c.Write([]byte("GOTRAIN")); c.Close() }, ErrHandshake},
		{"truncated response", func(c net.Conn) {
			c.Write([]byte(Preamble))
			io.ReadFull(c, make([]byte, len(Preamble)+NonceSize))
			c.Write(make([]byte, 40))
			c.Close()
		}, ErrHandshake},
		{"silent", func(c net.Conn) {}, ErrHandshake},
		{"slowloris", func(c net.Conn) {
			for _, b := range []byte(Preamble) {
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(timeout / 5)
			}
		}, ErrHandshake},
		{"never reads challenge", func(c net.Conn) { c.Write([]byte(Preamble)) }, ErrHandshake},
		{"zero response", func(c net.Conn) {
			c.Write([]byte(Preamble))
			io.ReadFull(c, make([]byte, len(Preamble)+NonceSize))
			c.Write(make([]byte, 64))
		}, ErrAuth},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe() // unbuffered: a peer that never reads blocks writes too
			defer b.Close()
			go tc.peer(b)
			start := time.Now()
			conn, err := Server(a, Options{Secret: secret, Timeout: timeout})
			require.ErrorIs(t, err, tc.want)
			require.Nil(t, conn)
			require.Less(t, time.Since(start), timeout+time.Second)
			// The server closed its end.
			_, werr := a.Write([]byte{1})
			require.Error(t, werr)
		})
	}
}

func TestHostileServers(t *testing.T) {
	const timeout = 300 * time.Millisecond
	cases := []struct {
		name string
		peer func(c net.Conn) // plays the server against Client
	}{
		{"garbage", func(c net.Conn) { io.ReadFull(c, make([]byte, len(Preamble))); c.Write(make([]byte, 64)) }},
		{"silent", func(c net.Conn) { io.ReadFull(c, make([]byte, len(Preamble))) }},
		{"bad verdict", func(c net.Conn) {
			io.ReadFull(c, make([]byte, len(Preamble)))
			c.Write(append([]byte(Preamble), make([]byte, NonceSize)...))
			io.ReadFull(c, make([]byte, 64))
			c.Write([]byte{7})
		}},
		{"truncated proof", func(c net.Conn) {
			io.ReadFull(c, make([]byte, len(Preamble)))
			c.Write(append([]byte(Preamble), make([]byte, NonceSize)...))
			io.ReadFull(c, make([]byte, 64))
			c.Write([]byte{statusAccept, 1, 2})
			c.Close()
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			go tc.peer(a)
			start := time.Now()
			conn, err := Client(b, Options{Secret: []byte("s"), Timeout: timeout})
			require.ErrorIs(t, err, ErrHandshake)
			require.Nil(t, conn)
			require.Less(t, time.Since(start), timeout+time.Second)
		})
	}
}

func TestDeadlineCleared(t *testing.T) {
	srv, cli := handshake(t, Options{Secret: []byte("s"), Timeout: 200 * time.Millisecond}, Options{Secret: []byte("s"), Timeout: 200 * time.Millisecond})
	require.NoError(t, srv.err)
	require.NoError(t, cli.err)
	time.Sleep(300 * time.Millisecond)
	echoWorks(t, srv.conn, cli.conn)
}

func TestNewSecret(t *testing.T) {
	a, b := NewSecret(), NewSecret()
	require.Len(t, a, 64)
	require.NotEqual(t, a, b)
	_, err := hex.DecodeString(a)
	require.NoError(t, err)
}

func TestSecretFromEnv(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	require.NoError(t, os.WriteFile(file, []byte("  abcd\n"), 0o600))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
	cases := []struct {
		name    string
		env     map[string]string
		want    []byte
		errText string
	}{
		{name: "hex", env: map[string]string{EnvSecret: "00ff"}, want: []byte{0, 0xff}},
		{name: "raw", env: map[string]string{EnvSecret: "hunter2"}, want: []byte("hunter2")},
		{name: "file hex", env: map[string]string{EnvSecretFile: file}, want: []byte{0xab, 0xcd}},
		{name: "variable wins over file", env: map[string]string{EnvSecret: "raw!", EnvSecretFile: file}, want: []byte("raw!")},
		{name: "neither", env: nil, errText: "set GOTRAIN_JOB_SECRET"},
		{name: "missing file", env: map[string]string{EnvSecretFile: filepath.Join(dir, "nope")}, errText: "nope"},
		{name: "empty file", env: map[string]string{EnvSecretFile: empty}, errText: "is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SecretFromEnv(func(k string) string { return tc.env[k] })
			if tc.errText != "" {
				require.ErrorContains(t, err, tc.errText)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestLoadTLSErrors(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello"), 0o600))
	cases := []struct {
		name                   string
		cert, key, ca, errText string
	}{
		{"missing cert", filepath.Join(dir, "x.crt"), p.keyFile, "", "x.crt"},
		{"missing key", p.certFile, filepath.Join(dir, "x.key"), "", "x.key"},
		{"missing ca", p.certFile, p.keyFile, filepath.Join(dir, "x-ca.crt"), "x-ca.crt"},
		{"ca not PEM", p.certFile, p.keyFile, notPEM, "ca.txt"},
		{"mismatched key", p.certFile, p.otherKey, "", "node.crt"},
		{"empty names", "", "", "", "needs both"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := LoadTLS(tc.cert, tc.key, tc.ca)
			require.ErrorContains(t, err, tc.errText)
		})
	}
	s, c, err := LoadTLS(p.certFile, p.keyFile, "")
	require.NoError(t, err)
	require.Equal(t, tls.NoClientCert, s.ClientAuth)
	require.Nil(t, c.RootCAs)
	require.False(t, c.InsecureSkipVerify)
	require.Equal(t, tls.RequireAndVerifyClientCert, p.serverTLS.ClientAuth)
}

// FuzzServer feeds arbitrary bytes to Server as the client's side of the
// handshake: it must return an error (never a panic or a hang).
func FuzzServer(f *testing.F) {
	f.Add([]byte(Preamble))
	f.Add(append([]byte(Preamble), make([]byte, 64)...))
	f.Add([]byte("GOTRAIN-AUTH/1"))
	f.Add([]byte{})
	f.Add([]byte("\x16\x03\x01\x00\xa5"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		go io.Copy(io.Discard, b) // drain whatever the server sends
		go func() {
			b.Write(data)
			b.Close() // then hang up: the server sees the stream end
		}()
		conn, err := Server(a, Options{Secret: []byte("fuzz"), Timeout: 100 * time.Millisecond})
		if err == nil {
			conn.Close()
			t.Fatalf("handshake accepted %q", data)
		}
	})
}

func TestGarbageRejectedAtOnce(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go b.Write([]byte("XY")) // then stall
	start := time.Now()
	_, err := Server(a, Options{Secret: []byte("s"), Timeout: 5 * time.Second})
	require.ErrorIs(t, err, ErrHandshake)
	require.ErrorContains(t, err, "not a gotrain process")
	require.Less(t, time.Since(start), time.Second, "a wrong prefix is rejected without waiting for the timeout")
}
