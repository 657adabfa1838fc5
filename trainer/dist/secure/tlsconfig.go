package secure

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// LoadTLS builds the server and client TLS configurations of a job from
// PEM files: certFile and keyFile hold this process's certificate and key.
//
// With caFile set, TLS is mutual: the server requires a client certificate
// and verifies it against the CA, and the client verifies the server's
// certificate chain against the CA (and presents its own certificate). The
// server's host name is not checked, since the CA is the job's own: any
// certificate it issued is a member of the job. A certificate used on both
// sides needs both the server and client auth extended key usages (or none).
//
// Without caFile the server asks for no client certificate and the client
// verifies the server against the system roots, host name included.
//
// Errors name the file at fault.
func LoadTLS(certFile, keyFile, caFile string) (server, client *tls.Config, err error) {
	if certFile == "" || keyFile == "" {
		return nil, nil, errors.New("secure: LoadTLS needs both a certificate file and a key file")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("secure: loading TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	server = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	client = &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return server, client, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("secure: reading TLS CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("secure: TLS CA file %s holds no PEM certificate", caFile)
	}
	server.ClientAuth = tls.RequireAndVerifyClientCert
	server.ClientCAs = pool
	client.Certificates = []tls.Certificate{cert}
	client.RootCAs = pool
	// Verify the chain against the job CA, without the host name.
	client.InsecureSkipVerify = true
	client.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("secure: the server presented no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			Roots:         pool,
			Intermediates: inter,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return fmt.Errorf("secure: the server's certificate is not issued by the job CA %s: %w", caFile, err)
		}
		return nil
	}
	return server, client, nil
}
