package outbound

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// testCert makes a self-signed certificate for 127.0.0.1 and a pool that trusts it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// received is one message a test relay accepted.
type received struct {
	From  string
	Rcpts []string
	Data  []byte
	TLS   bool
	Helo  string
	User  string
}

// goRelay is an in-process go-smtp server standing in for a relay, for the cases smtp-sink
// cannot play: STARTTLS, implicit TLS, AUTH and per-recipient answers.
type goRelay struct {
	Addr string

	mu       sync.Mutex
	msgs     []received
	mails    int            // MAIL commands seen
	sessions int            // EHLOs that started a session
	seen     map[string]int // RCPT count per address
	// rcpt decides the answer to RCPT TO (n = how often this address was offered before).
	rcpt       func(addr string, n int) error
	user, pass string
}

type relayOpts struct {
	mode       string // starttls | tls | none
	cert       *tls.Certificate
	maxVersion uint16
	user, pass string
	rcpt       func(addr string, n int) error
}

func startGoRelay(t testing.TB, o relayOpts) *goRelay {
	t.Helper()
	r := &goRelay{seen: map[string]int{}, rcpt: o.rcpt, user: o.user, pass: o.pass}
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		_, tlsOn := c.TLSConnectionState()
		r.mu.Lock()
		r.sessions++
		r.mu.Unlock()
		return &relaySession{r: r, tls: tlsOn, helo: c.Hostname()}, nil
	}))
	s.Domain = "relay.test"
	s.AllowInsecureAuth = true
	s.ReadTimeout, s.WriteTimeout = time.Minute, time.Minute
	s.MaxMessageBytes = 10 << 20
	var tcfg *tls.Config
	if o.cert != nil {
		tcfg = &tls.Config{Certificates: []tls.Certificate{*o.cert}, MinVersion: tls.VersionTLS10, MaxVersion: o.maxVersion}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	switch o.mode {
	case TLSImplicit:
		l = tls.NewListener(l, tcfg)
	case TLSStartTLS:
		s.TLSConfig = tcfg // nil: STARTTLS not offered
	}
	r.Addr = l.Addr().String()
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return r
}

func (r *goRelay) received() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

func (r *goRelay) sessionCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions
}

func (r *goRelay) mailCommands() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mails
}

type relaySession struct {
	r     *goRelay
	tls   bool
	helo  string
	user  string
	from  string
	rcpts []string
}

func (s *relaySession) AuthMechanisms() []string {
	if s.r.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *relaySession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != s.r.user || pass != s.r.pass {
			return smtp.ErrAuthFailed
		}
		s.user = user
		return nil
	}), nil
}

func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	s.r.mu.Lock()
	s.r.mails++
	s.r.mu.Unlock()
	if s.r.user != "" && s.user == "" {
		return smtp.ErrAuthRequired
	}
	s.from = from
	return nil
}

func (s *relaySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.r.mu.Lock()
	n := s.r.seen[to]
	s.r.seen[to]++
	s.r.mu.Unlock()
	if s.r.rcpt != nil {
		if err := s.r.rcpt(to, n); err != nil {
			return err
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *relaySession) Data(rd io.Reader) error {
	b, err := io.ReadAll(rd)
	if err != nil {
		return err
	}
	s.r.mu.Lock()
	s.r.msgs = append(s.r.msgs, received{From: s.from, Rcpts: s.rcpts, Data: b, TLS: s.tls, Helo: s.helo, User: s.user})
	s.r.mu.Unlock()
	return nil
}

func (s *relaySession) Reset()        { s.from, s.rcpts = "", nil }
func (s *relaySession) Logout() error { return nil }

// freeAddr returns a loopback address nothing listens on (yet).
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

// sink is Debian's postfix smtp-sink, the real SMTP peer.
type sink struct {
	Addr string
	Dir  string
	cmd  *exec.Cmd
}

// startSink runs smtp-sink on addr, dumping each transaction into a file; extra arguments
// come before the address (e.g. "-f", "RCPT" for hard rejects).
func startSink(t testing.TB, addr string, extra ...string) *sink {
	t.Helper()
	return runSink(t, addr, true, extra...)
}

func runSink(t testing.TB, addr string, dump bool, extra ...string) *sink {
	t.Helper()
	bin, err := exec.LookPath("smtp-sink")
	if err != nil {
		bin = "/usr/sbin/smtp-sink"
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("smtp-sink (Debian package postfix) is required: %v", err)
	}
	dir := t.TempDir()
	var args []string
	if dump {
		args = []string{"-d", filepath.Join(dir, "%Y%m%d%H%M%S.")}
	}
	if os.Geteuid() == 0 {
		// smtp-sink refuses to run as root without -u; it only writes into our temp dir.
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "-u", u.Username)
	}
	args = append(append(args, extra...), addr, "100")
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start smtp-sink: %v", err)
	}
	s := &sink{Addr: addr, Dir: dir, cmd: cmd}
	t.Cleanup(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink did not start listening on %s: %v\n%s", addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *sink) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

// sinkMsg is one transaction smtp-sink captured.
type sinkMsg struct {
	Helo, MailFrom string
	Rcpts          []string
	Data           []byte // the message as received, CRLF restored
}

// messages reads every captured transaction.
func (s *sink) messages(t testing.TB) []sinkMsg {
	t.Helper()
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []sinkMsg
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(s.Dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m, err := parseSinkDump(b)
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		out = append(out, m)
	}
	return out
}

// parseSinkDump splits smtp-sink's record headers (X-Client-Addr … and a three-line Received)
// from the message, which it stores with LF line ends and one empty line after it.
func parseSinkDump(b []byte) (sinkMsg, error) {
	var m sinkMsg
	lines := strings.SplitAfter(string(b), "\n")
	i := 0
	for ; i < len(lines); i++ {
		l := strings.TrimRight(lines[i], "\n")
		switch {
		case strings.HasPrefix(l, "X-Helo-Args: "):
			m.Helo = strings.TrimPrefix(l, "X-Helo-Args: ")
		case strings.HasPrefix(l, "X-Mail-Args: "):
			m.MailFrom = strings.Fields(strings.TrimPrefix(l, "X-Mail-Args: "))[0]
		case strings.HasPrefix(l, "X-Rcpt-Args: "):
			m.Rcpts = append(m.Rcpts, strings.Fields(strings.TrimPrefix(l, "X-Rcpt-Args: "))[0])
		case strings.HasPrefix(l, "Received: "):
			i += 3 // the Received header and its two continuation lines
			if i > len(lines) {
				return m, errors.New("truncated dump")
			}
			body := strings.Join(lines[i:], "")
			body = strings.TrimSuffix(body, "\n") // the empty line smtp-sink appends
			m.Data = []byte(strings.ReplaceAll(body, "\n", "\r\n"))
			return m, nil
		}
	}
	return m, errors.New("no Received line in the dump")
}
