package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// testCA is a throw-away certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cdc test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serverCert issues a certificate for 127.0.0.1 and localhost.
func (ca *testCA) serverCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// withTLS returns dsn with sslmode=verify-full and sslrootcert=root.
func withTLS(t *testing.T, dsn, root string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", root)
	u.RawQuery = q.Encode()
	return u.String()
}

// TestRun_TLSVerifyFull runs the sync against a server with a self-signed
// certificate authority and sslmode=verify-full in both DSNs: every cdc
// session (the walsender's included) is encrypted; a DSN trusting another
// authority is refused at start with exit 2 and what to check.
func TestRun_TLSVerifyFull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ca := newCA(t)
	crt, key := ca.serverCert(t)
	srv, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Settings: map[string]string{"ssl": "on"},
		Files: map[string][]byte{"server.crt": crt, "server.key": key}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	dir := t.TempDir()
	root := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(root, ca.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	p := pgtest.NewPairOn(t, srv, 1000)
	env := with(p.Env(), "SOURCE_DATABASE_URL", withTLS(t, p.SourceURL, root), "CHAT_DATABASE_URL", withTLS(t, p.ChatURL, root))
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'over tls', updated_at = now() WHERE email LIKE 'user1%'`)
	p.WaitEqual(t, 30*time.Second)
	// The test's own pools use sslmode=disable: encrypted sessions are cdc's.
	var encrypted int
	err = p.Source.QueryRow(ctx, `SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
WHERE s.ssl AND a.backend_type = 'client backend'`).Scan(&encrypted)
	if err != nil {
		t.Fatal(err)
	}
	var walsender bool
	if err := p.Source.QueryRow(ctx, `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)`).Scan(&walsender); err != nil {
		t.Fatal(err)
	}
	if !walsender {
		t.Error("the replication connection is not encrypted")
	}
	if encrypted == 0 {
		t.Error("no encrypted cdc session found on the source")
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// A DSN that trusts another authority is refused at start.
	other := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(other, newCA(t).pem, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runCDC(t, with(env, "SOURCE_DATABASE_URL", withTLS(t, p.SourceURL, other)), "run")
	if code != exitUsage || !strings.Contains(out, "SOURCE_DATABASE_URL") || !strings.Contains(out, "TLS certificate failed verification") {
		t.Fatalf("wrong CA: exit %d\n%s", code, out)
	}
}
