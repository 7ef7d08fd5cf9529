package agentmail

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/outbound"
	"mailgate/pgp"
	"mailgate/store"
	"mailgate/tickets"
)

const (
	testHost  = "mail.example.com"
	customer  = "cust@example.net"
	customer2 = "other@example.org"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// env is one mailgate data dir with the real store, audit log, access, tickets and outbound
// (relay "" writes .eml files to the outbox), plus the IMAP and submission servers on loopback.
type env struct {
	t        testing.TB
	dir      string
	key      []byte
	cfg      *config.Config
	db       *store.DB
	log      *audit.Log
	acc      *access.Service
	tk       *tickets.Service
	ob       *outbound.Outbound
	imap     *IMAPServer
	imapAddr string
	sub      *Submission
	subAddr  string
	tlsCfg   *tls.Config
	pool     *x509.CertPool
	attempts chan outbound.Attempt
	notify   atomic.Pointer[IMAPServer]
	accOpts  access.Options

	// PGP (withPGP): the gateway key and the customers' keyring.
	pgpOn   bool
	gateway *pgp.Key
	keyring *pgp.Keyring

	users map[string]string // agent name → app password
}

type envOpt func(*env)

var (
	gatewayOnce sync.Once
	gatewayKey  *pgp.Key
	gatewayErr  error
)

// withPGP gives outbound a gateway key and a keyring under encrypt = policy.
func withPGP(policy string) envOpt {
	return func(e *env) {
		gatewayOnce.Do(func() {
			armored, err := pgp.GenerateKey("Example Support", "support@example.com")
			if err != nil {
				gatewayErr = err
				return
			}
			gatewayKey, gatewayErr = pgp.ParseKey(armored)
		})
		if gatewayErr != nil {
			e.t.Fatal(gatewayErr)
		}
		e.pgpOn, e.gateway = true, gatewayKey
		e.cfg.PGP.Encrypt = policy
	}
}

// withAccountLimit makes the login throttle lock after free failures, for an hour.
func withAccountLimit(free int) envOpt {
	return func(e *env) {
		e.accOpts.AccountLimit = access.Limit{Free: free, Base: time.Hour, Max: time.Hour, Leak: time.Hour}
	}
}

var (
	dkimOnce sync.Once
	dkimPEM  []byte
	dkimErr  error
)

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	dkimOnce.Do(func() { dkimPEM, _, dkimErr = outbound.GenerateDKIMKey("ed25519") })
	if dkimErr != nil {
		t.Fatal(dkimErr)
	}
	dir := t.TempDir()
	e := &env{t: t, dir: dir, key: make([]byte, store.KeySize), users: map[string]string{}}
	rand.Read(e.key)
	e.accOpts = access.Options{Argon2: access.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}, Logger: quiet}
	keyFile := filepath.Join(dir, "dkim.key")
	if err := os.WriteFile(keyFile, dkimPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Hostname = testHost
	cfg.DataDir = dir
	cfg.Outbound.DKIMDomain = "example.com"
	cfg.Outbound.DKIMKeyFile = ""
	cfg.Outbound.DKIMEd25519KeyFile = keyFile
	cfg.PGP.Encrypt = "never"
	cfg.Queues = []config.Queue{{Name: "support", Address: "support@example.com"}, {Name: "billing", Address: "billing@example.com"}}
	e.cfg = cfg
	for _, o := range opts {
		o(e)
	}
	e.tlsCfg, e.pool = testCert(t)
	e.open()
	t.Cleanup(e.close)
	e.addAgent("alice", access.RoleAgent, "support")
	e.addAgent("carol", access.RoleAgent, "support")
	e.addAgent("bob", access.RoleAgent, "billing")
	return e
}

// open starts everything on the data dir (again, after close: a restart).
func (e *env) open() {
	t := e.t
	t.Helper()
	db, err := store.Open(filepath.Join(e.dir, "mailgate.db"), e.key, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	if e.log, err = audit.New(db, ""); err != nil {
		t.Fatal(err)
	}
	e.acc = access.New(db, e.log, e.accOpts)
	var qs []tickets.Queue
	for _, q := range e.cfg.Queues {
		qs = append(qs, tickets.Queue{Name: q.Name, Address: q.Address})
	}
	e.tk = tickets.New(db, e.log, tickets.Options{
		Hostname: testHost, Queues: qs,
		Notify: func(q string) {
			if s := e.notify.Load(); s != nil {
				s.Notify(q)
			}
		},
	})
	e.attempts = make(chan outbound.Attempt, 100)
	var gw *pgp.Key
	e.keyring = nil
	if e.pgpOn {
		gw, e.keyring = e.gateway, pgp.NewKeyring(db, pgp.KeyringOptions{})
	}
	e.ob, err = outbound.New(e.cfg, db, e.log, e.tk, e.keyring, gw, outbound.Options{Logger: quiet, Observe: func(a outbound.Attempt) { e.attempts <- a }})
	if err != nil {
		t.Fatal(err)
	}
	e.tk.SetMailer(e.ob)
	if err := e.ob.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.imap = NewIMAP(IMAPOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, Hostname: testHost, Logger: quiet})
	e.notify.Store(e.imap)
	e.imapAddr = e.serve(e.imap.Serve)
	e.sub = NewSubmission(SubmissionOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, Hostname: testHost, Logger: quiet})
	e.subAddr = e.serve(e.sub.Serve)
}

func (e *env) serve(fn func(net.Listener) error) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	go fn(l)
	return l.Addr().String()
}

func (e *env) close() {
	if e.db == nil {
		return
	}
	e.notify.Store(nil)
	e.imap.Close()
	e.sub.Close()
	e.ob.Stop()
	e.db.Close()
	e.db = nil
}

func (e *env) restart() {
	e.close()
	e.open()
}

func (e *env) addAgent(name string, role access.Role, queues ...string) {
	t := e.t
	t.Helper()
	if _, err := e.acc.Create(access.Ctl, name, name+"@example.com", role, queues); err != nil {
		t.Fatal(err)
	}
	pw, err := e.acc.NewAppPassword(access.Ctl, name, "mail client")
	if err != nil {
		t.Fatal(err)
	}
	e.users[name] = pw
}

// webPassword makes a web password for name that the test knows.
func (e *env) webPassword(name string) string {
	pw := "correct horse battery staple " + name
	if err := e.acc.SetPassword(access.Ctl, name, pw); err != nil {
		e.t.Fatal(err)
	}
	return pw
}

// ingest files a customer message in queue and returns its ticket.
func (e *env) ingest(queue, from, subject, msgid, body string, extraHeaders ...string) uint64 {
	e.t.Helper()
	raw := customerMail(from, queue+"@example.com", subject, msgid, body, extraHeaders...)
	res, err := e.tk.Ingest(tickets.Incoming{Queue: queue, Raw: raw, Via: "smtp",
		Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}})
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Ticket
}

func customerMail(from, to, subject, msgid, body string, extraHeaders ...string) []byte {
	h := fmt.Sprintf("From: Customer <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s>\r\nDate: Mon, 02 Feb 2026 15:04:05 +0000\r\n", from, to, subject, msgid)
	for _, x := range extraHeaders {
		h += x + "\r\n"
	}
	return []byte(h + "\r\n" + body)
}

// events returns the audit events with action, oldest first.
func (e *env) events(action string) []audit.Event {
	e.t.Helper()
	evs, err := e.log.Query(audit.Filter{Action: action, Limit: 10000}, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
	return evs
}

// imapClient logs in over plain TCP on loopback.
func (e *env) imapClient(name string, h *imapclient.UnilateralDataHandler) *imapclient.Client {
	e.t.Helper()
	c := e.dialIMAP(h)
	if err := c.Login(name, e.users[name]).Wait(); err != nil {
		e.t.Fatalf("login %s: %v", name, err)
	}
	return c
}

func (e *env) dialIMAP(h *imapclient.UnilateralDataHandler) *imapclient.Client {
	e.t.Helper()
	c, err := imapclient.DialInsecure(e.imapAddr, &imapclient.Options{UnilateralDataHandler: h})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// testCert is a self-signed certificate for 127.0.0.1 and localhost.
func testCert(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailgate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}}}, pool
}

// publicListener makes a loopback listener look like a public one, so the server treats it as
// such (authentication only after TLS) while the test stays on 127.0.0.1.
type publicListener struct{ net.Listener }

func (l publicListener) Addr() net.Addr {
	a := l.Listener.Addr().(*net.TCPAddr)
	return &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: a.Port}
}

func listenPublic(t testing.TB) (net.Listener, string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return publicListener{l}, l.Addr().String()
}

func contains(b []byte, s string) bool { return bytes.Contains(b, []byte(s)) }
