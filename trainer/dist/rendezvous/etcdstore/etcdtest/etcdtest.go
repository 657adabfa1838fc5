// Package etcdtest starts a real etcd server for tests.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gotrain/gotrain/trainer/dist/rendezvous/etcdstore"
)

// StartEtcd starts a one-member etcd (Debian's etcd-server, the etcd
// binary on PATH) on loopback for a test and returns its client address;
// it skips the test, saying why, when no etcd binary is installed. The
// server is stopped when the test ends.
func StartEtcd(t testing.TB) string { return StartEtcdAt(t, "127.0.0.1", nil) }

// StartEtcdAt is StartEtcd listening on host, its command line prefixed by
// wrap (for example "ip netns exec NS" to run it in a network namespace).
func StartEtcdAt(t testing.TB, host string, wrap []string) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd binary: install Debian's etcd-server (CI does) to test the etcd rendezvous")
	}
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	client, peer := net.JoinHostPort(host, fmt.Sprint(port())), net.JoinHostPort(host, fmt.Sprint(port()))
	dir := t.TempDir()
	argv := append(append(append([]string(nil), wrap...), bin), "--name", "test", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "test=http://"+peer)
	cmd := exec.Command(argv[0], argv[1:]...)
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if len(wrap) > 0 {
		// Not reachable from here (another namespace): wait for its log.
		for ctx.Err() == nil {
			if b, _ := os.ReadFile(filepath.Join(dir, "etcd.log")); strings.Contains(string(b), "ready to serve client requests") {
				return client
			}
			time.Sleep(100 * time.Millisecond)
		}
		log, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
		t.Fatalf("etcd did not start:\n%s", log)
	}
	for {
		s, err := etcdstore.Dial(ctx, []string{client}, "probe")
		if err == nil {
			s.Close()
			return client
		}
		if ctx.Err() != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			t.Fatalf("etcd did not start: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
