package inbound

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/internal/dnsmock"
	"mailgate/internal/testutil"
	"mailgate/store"
	"mailgate/tickets"
)

// The server tests run a real Server on 127.0.0.1:0 in front of a real tickets.Service on a
// temporary store, with the in-memory DNS below. The client's address is 127.0.0.1.

const srvHost = "mx.mailgate.test"

// srvDKIMKey signs the Go-signed test messages (selector "s1").
var srvDKIMKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))

func srvResolver() *dnsmock.Resolver {
	pub := base64.StdEncoding.EncodeToString(srvDKIMKey.Public().(ed25519.PublicKey))
	return &dnsmock.Resolver{
		TXT: map[string][]string{
			"good.example":                 {"v=spf1 ip4:127.0.0.1 -all"},
			"_dmarc.good.example":          {"v=DMARC1; p=reject"},
			"spoof.example":                {"v=spf1 -all"},
			"_dmarc.spoof.example":         {"v=DMARC1; p=reject"},
			"quar.example":                 {"v=spf1 -all"},
			"_dmarc.quar.example":          {"v=DMARC1; p=quarantine"},
			"lax.example":                  {"v=spf1 -all"},
			"_dmarc.lax.example":           {"v=DMARC1; p=none"},
			"signed.example":               {"v=spf1 -all"},
			"_dmarc.signed.example":        {"v=DMARC1; p=reject"},
			"s1._domainkey.signed.example": {"v=DKIM1; k=ed25519; p=" + pub},
			"_dmarc.temp.example":          {"v=DMARC1; p=reject"},
		},
		Fail: map[string]bool{"TXT temp.example": true},
	}
}

type srvEnv struct {
	cfg  *config.Config
	db   *store.DB
	tk   *tickets.Service
	dns  *dnsmock.Resolver
	srv  *Server
	addr string
	now  *fakeClock

	metrics *countMetrics

	mu      sync.Mutex
	refused []Refusal
}

// countMetrics counts what the server reports.
type countMetrics struct {
	mu sync.Mutex
	n  map[string]int
}

func (m *countMetrics) add(k string) {
	m.mu.Lock()
	m.n[k]++
	m.mu.Unlock()
}

func (m *countMetrics) get(k string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n[k]
}

func (m *countMetrics) Connection(result string)                      { m.add("conn " + result) }
func (m *countMetrics) Command(cmd, result string)                    { m.add(cmd + " " + result) }
func (m *countMetrics) Message(result string, _ int, _ time.Duration) { m.add("message " + result) }
func (m *countMetrics) Verdict(spf, dkim, dmarc string)               { m.add("verdict dmarc=" + dmarc) }

type fakeClock = testutil.Clock

func srvConfig() *config.Config {
	cfg := config.Default()
	cfg.Hostname = srvHost
	cfg.Queues = []config.Queue{
		{Name: "support", Address: "support@example.com"},
		{Name: "sales", Address: "Sales@Example.com"},
	}
	cfg.SMTP.MaxMessageBytes = 1 << 20
	cfg.SMTP.MaxRecipients = 10
	cfg.SMTP.MaxLineLength = 2000
	cfg.SMTP.ReadTimeout = config.Duration{Duration: time.Minute}
	cfg.SMTP.WriteTimeout = config.Duration{Duration: time.Minute}
	cfg.SMTP.MaxConnsPerIP = 100
	cfg.SMTP.MessagesPerMinutePerIP = 10000
	cfg.SMTP.MaxDKIMSignatures = 5
	return cfg
}

// newSrvEnv starts a server; mod adjusts the config and tlsCfg (may be nil) turns STARTTLS on.
func newSrvEnv(t testing.TB, mod func(*config.Config), tlsCfg *tls.Config) *srvEnv {
	t.Helper()
	return newSrvEnvDNS(t, mod, tlsCfg, nil)
}

// newSrvEnvDNS is newSrvEnv with dnsMod adding records before the server starts (the mock's
// maps must not change while lookups run).
func newSrvEnvDNS(t testing.TB, mod func(*config.Config), tlsCfg *tls.Config, dnsMod func(*dnsmock.Resolver)) *srvEnv {
	t.Helper()
	cfg := srvConfig()
	if mod != nil {
		mod(cfg)
	}
	db, err := store.Open(filepath.Join(t.TempDir(), "mailgate.db"), bytes.Repeat([]byte{3}, 32), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	alog, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	var qs []tickets.Queue
	for _, q := range cfg.Queues {
		qs = append(qs, tickets.Queue{Name: q.Name, Address: q.Address})
	}
	e := &srvEnv{cfg: cfg, db: db, dns: srvResolver(), now: testutil.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
		metrics: &countMetrics{n: map[string]int{}}}
	if dnsMod != nil {
		dnsMod(e.dns)
	}
	e.tk = tickets.New(db, alog, tickets.Options{Hostname: srvHost, Queues: qs})
	v := &Verifier{Resolver: e.dns, Timeout: 10 * time.Second}
	e.srv = NewServer(cfg, e.tk, v, ServerOptions{
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		TLSConfig: tlsCfg,
		Now:       e.now.Now,
		Metrics:   e.metrics,
		OnRefused: func(r Refusal) {
			e.mu.Lock()
			e.refused = append(e.refused, r)
			e.mu.Unlock()
		},
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(l) }()
	t.Cleanup(func() {
		e.srv.Close()
		if err := <-done; err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

var srvAdmin = access.Actor{Name: "test", Role: access.RoleAdmin, Remote: "test"}

// storedMsg is one inbound message as the store holds it.
type storedMsg struct {
	tickets.Message
	Queue string
	Raw   []byte
}

// stored returns every message in every ticket.
func (e *srvEnv) stored(t testing.TB) []storedMsg {
	t.Helper()
	list, err := e.tk.List(srvAdmin, tickets.Filter{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	var out []storedMsg
	for _, tk := range list {
		_, msgs, err := e.tk.Get(srvAdmin, tk.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			_, raw, err := e.tk.Raw(srvAdmin, tk.ID, m.Seq, "test.read")
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, storedMsg{Message: m, Queue: tk.Queue, Raw: raw})
		}
	}
	return out
}

func (e *srvEnv) refusals() []Refusal {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Refusal(nil), e.refused...)
}

// srvMail builds a CRLF message.
func srvMail(from, subject, msgid string, extra ...string) []byte {
	var b strings.Builder
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "From: Customer <%s>\r\nTo: support@example.com\r\nSubject: %s\r\nDate: Fri, 02 Jan 2026 03:04:05 +0000\r\nMessage-ID: <%s>\r\n\r\nHello,\r\nmy order did not arrive.\r\n", from, subject, msgid)
	return []byte(b.String())
}

// signMail DKIM-signs msg for signed.example with srvDKIMKey.
func signMail(t testing.TB, msg []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(msg), &dkim.SignOptions{
		Domain: "signed.example", Selector: "s1", Signer: srvDKIMKey,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// send delivers msg with go-smtp's client and returns the first error (an *smtp.SMTPError for
// a refusal).
func send(addr, helo, from string, to []string, msg []byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return sendOn(c, helo, from, to, msg)
}

func sendOn(c *smtp.Client, helo, from string, to []string, msg []byte) error {
	if err := c.Hello(helo); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// code returns the reply code and enhanced code of err, or 250 for nil.
func code(err error) string {
	if err == nil {
		return "250"
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return "error: " + err.Error()
}

// rawConn speaks SMTP byte by byte, for what a well-behaved client would never send.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second)) // a hung test fails instead of hanging
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (r *rawConn) reply() string {
	r.t.Helper()
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			return "EOF: " + err.Error()
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

func (r *rawConn) write(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

// cmd sends one command line and returns the reply.
func (r *rawConn) cmd(line string) string {
	r.t.Helper()
	r.write(line + "\r\n")
	return r.reply()
}

func (r *rawConn) expect(got, prefix string) {
	r.t.Helper()
	if !strings.HasPrefix(got, prefix) {
		r.t.Fatalf("got %q, want %q…", got, prefix)
	}
}

func TestServerDeliversAndPrependsHeaders(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	msg := srvMail("alice@good.example", "Order 17", "m1@good.example")
	if err := send(e.addr, "client.good.example", "alice@good.example", []string{"support@example.com"}, msg); err != nil {
		t.Fatalf("send: %v", err)
	}
	got := e.stored(t)
	if len(got) != 1 {
		t.Fatalf("stored %d messages, want 1", len(got))
	}
	m := got[0]
	if m.Queue != "support" || m.Auth == nil || m.Auth.SPF != "pass" || m.Auth.DMARC != "pass" || !m.Verified || m.Quarantined {
		t.Fatalf("stored %+v auth %+v", m.Message, m.Auth)
	}
	// Stored = our Authentication-Results, our Received:, then the bytes as received.
	if !bytes.HasSuffix(m.Raw, msg) {
		t.Fatalf("stored message does not end with the bytes as received:\n%s", m.Raw)
	}
	head := string(m.Raw[:len(m.Raw)-len(msg)])
	if !strings.HasPrefix(head, "Authentication-Results: "+srvHost+";") {
		t.Fatalf("first field is not ours:\n%s", head)
	}
	recv := regexp.MustCompile(`\r\nReceived: from client\.good\.example \(\[127\.0\.0\.1\]\)\r\n\tby mx\.mailgate\.test \(mailgate\) with ESMTP\r\n\tid [0-9a-f]{12}\.1;\r\n\tFri, 02 Jan 2026 03:04:05 \+0000\r\n$`)
	if !recv.MatchString(head) {
		t.Fatalf("Received: field missing or malformed:\n%s", head)
	}
	if m.Auth.Results == "" || !strings.HasPrefix(head, m.Auth.Results+"\r\n") {
		t.Fatalf("the verdict's Authentication-Results is not the stored field: %q", m.Auth.Results)
	}
}

func TestServerRecipients(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	r := dialRaw(t, e.addr)
	r.expect(r.reply(), "220 "+srvHost)
	r.expect(r.cmd("EHLO client.good.example"), "250 ")
	r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250 ")
	for _, c := range []struct{ rcpt, want string }{
		{"<nobody@example.com>", "550 5.1.1"},
		{"<support@other.example>", "550 5.1.1"},
		{"<SUPPORT@EXAMPLE.COM>", "250 "},         // case-insensitive
		{"<support+order17@example.com>", "250 "}, // sub-addressing reaches the queue
		{"<sales@example.com>", "250 "},           // the config wrote it Sales@Example.com
		{"<+x@example.com>", "550 5.1.1"},
	} {
		r.expect(r.cmd("RCPT TO:"+c.rcpt), c.want)
	}
	r.expect(r.cmd("DATA"), "354")
	r.write(string(srvMail("alice@good.example", "two queues", "m2@good.example")) + ".\r\n")
	r.expect(r.reply(), "250 ")
	r.expect(r.cmd("QUIT"), "221")

	got := e.stored(t)
	queues := map[string]int{}
	for _, m := range got {
		queues[m.Queue]++
	}
	// Three accepted recipients in two queues: one copy per queue.
	if len(got) != 2 || queues["support"] != 1 || queues["sales"] != 1 {
		t.Fatalf("stored %v, want one message in support and one in sales", queues)
	}
}

func TestServerNullSenderBounce(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	dsn := "From: MAILER-DAEMON@good.example\r\nTo: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n" +
		"Message-ID: <dsn1@good.example>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n" +
		"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; good.example\r\n\r\nFinal-Recipient: rfc822; x@y.example\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
		"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: support@example.com\r\nMessage-ID: <mg.1.abc@" + srvHost + ">\r\n" +
		"--b--\r\n"
	// A bounce comes with the null sender: SPF checks postmaster@<HELO> (RFC 7208 2.4).
	if err := send(e.addr, "good.example", "", []string{"support@example.com"}, []byte(dsn)); err != nil {
		t.Fatalf("null sender: %v", err)
	}
	got := e.stored(t)
	if len(got) != 1 || got[0].Kind != KindBounce {
		t.Fatalf("stored %d messages, kind %q; want one bounce", len(got), got[0].Kind)
	}
}

func TestServerPolicy(t *testing.T) {
	cases := []struct {
		name        string
		mod         func(*config.Config)
		from        string
		want        string // reply
		stored      bool
		verified    bool
		quarantined bool
	}{
		{"dmarc pass", nil, "alice@good.example", "250", true, true, false},
		{"p=reject fail", nil, "mallory@spoof.example", "550 5.7.1", false, false, false},
		{"p=reject fail, configured to quarantine", func(c *config.Config) { c.Verify.DMARCReject = "quarantine" }, "mallory@spoof.example", "250", true, false, true},
		{"p=quarantine fail", nil, "eve@quar.example", "250", true, false, true},
		{"p=quarantine fail, configured to accept", func(c *config.Config) { c.Verify.DMARCQuarantine = "accept" }, "eve@quar.example", "250", true, false, false},
		{"p=none fail", nil, "bob@lax.example", "250", true, false, false},
		{"dns temperror, accept", nil, "tim@temp.example", "250", true, false, false},
		{"dns temperror, defer", func(c *config.Config) { c.Verify.TempError = "defer" }, "tim@temp.example", "451 4.4.3", false, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newSrvEnv(t, c.mod, nil)
			err := send(e.addr, "client.test", c.from, []string{"support@example.com"}, srvMail(c.from, "policy", "p1@x.example"))
			if got := code(err); !strings.HasPrefix(got, c.want) {
				t.Fatalf("reply %s, want %s", got, c.want)
			}
			got := e.stored(t)
			if !c.stored {
				if len(got) != 0 {
					t.Fatalf("refused message was stored")
				}
				ref := e.refusals()
				if len(ref) != 1 || ref[0].Verdict == nil || ref[0].Queues[0] != "support" {
					t.Fatalf("refusal not reported: %+v", ref)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("stored %d, want 1", len(got))
			}
			m := got[0]
			if m.Verified != c.verified || m.Quarantined != c.quarantined || m.Auth.Verified != c.verified || m.Auth.Quarantined != c.quarantined {
				t.Fatalf("verified=%v quarantined=%v auth=%+v; want %v %v", m.Verified, m.Quarantined, m.Auth, c.verified, c.quarantined)
			}
		})
	}
}

func TestServerDKIMSigned(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	msg := signMail(t, srvMail("carol@signed.example", "signed", "s1@signed.example"))
	// SPF fails for signed.example (-all): only the aligned DKIM signature can verify it.
	if err := send(e.addr, "client.test", "carol@signed.example", []string{"support@example.com"}, msg); err != nil {
		t.Fatal(err)
	}
	got := e.stored(t)
	if len(got) != 1 || got[0].Auth.DKIM != "pass" || got[0].Auth.SPF != "fail" || !got[0].Verified {
		t.Fatalf("got %+v", got[0].Auth)
	}
	// The same message with the body changed in transit.
	bad := bytes.Replace(msg, []byte("did not arrive"), []byte("did arrive"), 1)
	bad = bytes.Replace(bad, []byte("s1@signed.example"), []byte("s2@signed.example"), 1)
	if err := send(e.addr, "client.test", "carol@signed.example", []string{"support@example.com"}, bad); code(err) != "550 5.7.1" {
		t.Fatalf("tampered signed mail under p=reject: %s", code(err))
	}
}

func TestServerForgedAuthResults(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	msg := srvMail("bob@lax.example", "trust me", "f1@lax.example",
		"Authentication-Results: "+srvHost+"; dkim=pass header.d=lax.example; dmarc=pass header.from=lax.example",
		"Authentication-Results: (comment) MX.MAILGATE.TEST;\r\n\tspf=pass smtp.mailfrom=lax.example",
		"Authentication-Results: relay.other.example; spf=pass smtp.mailfrom=lax.example")
	if err := send(e.addr, "client.test", "bob@lax.example", []string{"support@example.com"}, msg); err != nil {
		t.Fatal(err)
	}
	got := e.stored(t)
	if len(got) != 1 {
		t.Fatalf("stored %d", len(got))
	}
	raw := string(got[0].Raw)
	if n := strings.Count(strings.ToLower(raw), "authentication-results: "+srvHost); n != 1 {
		t.Fatalf("%d Authentication-Results fields claim %s, want only ours:\n%s", n, srvHost, raw)
	}
	if strings.Contains(raw, "(comment) MX.MAILGATE.TEST") || strings.Contains(raw, "dkim=pass header.d=lax.example") {
		t.Fatalf("a forged field survived:\n%s", raw)
	}
	if !strings.Contains(raw, "Authentication-Results: relay.other.example;") {
		t.Fatalf("another host's field was removed:\n%s", raw)
	}
	if got[0].Verified || got[0].Auth.DMARC != "fail" {
		t.Fatalf("forged header counted: %+v", got[0].Auth)
	}
}

func TestServerTooLarge(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.MaxMessageBytes = 4096 }, nil)
	big := srvMail("alice@good.example", "big", "big@good.example")
	big = append(big, bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n"), 200)...)
	c, err := smtp.Dial(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := sendOn(c, "client.good.example", "alice@good.example", []string{"support@example.com"}, big); code(err) != "552 5.3.4" {
		t.Fatalf("oversize: %s", code(err))
	}
	if n := len(e.stored(t)); n != 0 {
		t.Fatalf("stored %d messages after 552", n)
	}
	// The session goes on: the rest of the big body was read as data, not as commands.
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alice@good.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("support@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, _ := c.Data()
	w.Write(srvMail("alice@good.example", "small", "small@good.example"))
	if err := w.Close(); err != nil {
		t.Fatalf("small message after a big one: %v", err)
	}
	if n := len(e.stored(t)); n != 1 {
		t.Fatalf("stored %d, want 1", n)
	}
	if r := e.refusals(); len(r) != 1 || r[0].Result != ResultTooLarge || r[0].Code != 552 {
		t.Fatalf("refusals %+v", r)
	}
	if e.metrics.get("message too_large") != 1 || e.metrics.get("message accepted") != 1 {
		t.Fatalf("metrics %v", e.metrics.n)
	}
	// Only the message that was read in full was verified.
	verdicts := 0
	for k, n := range e.metrics.n {
		if strings.HasPrefix(k, "verdict ") {
			verdicts += n
		}
	}
	if verdicts != 1 {
		t.Fatalf("verdicts counted %d, want 1 (%v)", verdicts, e.metrics.n)
	}
}

func TestServerLongLine(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.MaxLineLength = 1000 }, nil)
	msg := srvMail("alice@good.example", "long", "long@good.example")
	msg = append(msg, strings.Repeat("x", 3000)+"\r\n"...)
	err := send(e.addr, "client.good.example", "alice@good.example", []string{"support@example.com"}, msg)
	if c := code(err); !strings.HasPrefix(c, "5") {
		t.Fatalf("long line: %s", c)
	}
	if n := len(e.stored(t)); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

// TestServerSmuggling tries to end DATA early with bare LF and bare CR variants of the end
// marker and to start a second transaction inside the first message. Whatever happens to the
// first message, the smuggled one must never exist. Every variant, and a NUL byte, is refused
// with a reply that says why.
func TestServerSmuggling(t *testing.T) {
	smuggled := "MAIL FROM:<mallory@spoof.example>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n" +
		"From: mallory@good.example\r\nSubject: SMUGGLED\r\n\r\nI am a second message.\r\n"
	const bare, nul = "550 5.6.0 message refused: it holds a bare CR or LF", "550 5.6.0 message refused: it holds a NUL byte"
	for _, c := range []struct {
		end, reply string
	}{
		{"\n.\n", bare},
		{"\n.\r\n", bare},
		{"\r\n.\n", bare},
		{"\r.\r", bare},
		{"\r.\r\n", bare},
		// Upstream go-smtp drops the "." and the CR of CRLF "." CR "M": the message arrived as
		// "hello\r\nMAIL FROM…" and was accepted (issue 11.9). The patched copy keeps the CR.
		{"\r\n.\r", bare},
		{"\r\n.\r\r\n", bare},
		{"\r\n.\r.\r\n", bare},
		{"\x00", nul},
		{"\r\n\x00.\r\n", nul},
		{"\r\n.\x00\r\n", nul},
	} {
		t.Run(fmt.Sprintf("%q", c.end), func(t *testing.T) {
			e := newSrvEnv(t, nil, nil)
			r := dialRaw(t, e.addr)
			r.expect(r.reply(), "220")
			r.expect(r.cmd("EHLO client.good.example"), "250")
			r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250")
			r.expect(r.cmd("RCPT TO:<support@example.com>"), "250")
			r.expect(r.cmd("DATA"), "354")
			first := "From: alice@good.example\r\nSubject: first\r\nMessage-ID: <first@good.example>\r\n\r\nhello" + c.end + smuggled + ".\r\n"
			r.write(first)
			// One reply for everything up to the real CRLF.CRLF: the smuggled commands were data.
			r.expect(r.reply(), c.reply)
			// The connection is in a clean state: a proper message goes through.
			r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250")
			r.expect(r.cmd("RCPT TO:<support@example.com>"), "250")
			r.expect(r.cmd("DATA"), "354")
			r.write("From: alice@good.example\r\nSubject: second\r\nMessage-ID: <second@good.example>\r\n\r\nfine\r\n.\r\n")
			r.expect(r.reply(), "250")
			r.expect(r.cmd("QUIT"), "221")
			var subj []string
			for _, m := range e.stored(t) {
				subj = append(subj, m.Subject)
				if m.Subject == "first" && !strings.Contains(string(m.Raw), "MAIL FROM:<mallory@spoof.example>\r\n") {
					t.Errorf("the first message lost the attempt's text:\n%s", m.Raw)
				}
			}
			if strings.Join(subj, ",") != "second" {
				t.Fatalf("stored %q, want only the second message", subj)
			}
		})
	}
}

// TestServerSmugglingUnderTLS: the CRLF "." CR form inside STARTTLS, where nothing below
// go-smtp sees the plaintext: the patched dot reader is what catches it.
func TestServerSmugglingUnderTLS(t *testing.T) {
	e := newSrvEnv(t, nil, &tls.Config{Certificates: []tls.Certificate{selfSigned(t, srvHost)}})
	r := dialRaw(t, e.addr)
	r.expect(r.reply(), "220")
	r.expect(r.cmd("EHLO client.good.example"), "250")
	r.expect(r.cmd("STARTTLS"), "220")
	tc := tls.Client(r.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r = &rawConn{t: t, c: tc, br: bufio.NewReader(tc)}
	r.expect(r.cmd("EHLO client.good.example"), "250")
	for _, c := range []struct{ end, reply string }{
		{"\r\n.\rMAIL FROM:<x@y>\r\n", "550 5.6.0 message refused: it holds a bare CR or LF"},
		{"\x00\r\n", "550 5.6.0 message refused: it holds a NUL byte"},
	} {
		r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250")
		r.expect(r.cmd("RCPT TO:<support@example.com>"), "250")
		r.expect(r.cmd("DATA"), "354")
		r.write("From: alice@good.example\r\nSubject: tls\r\n\r\nhello" + c.end + ".\r\n")
		r.expect(r.reply(), c.reply)
	}
	r.expect(r.cmd("QUIT"), "221")
	if n := len(e.stored(t)); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

// TestServerBDATRefusesBareCRAndNUL: CHUNKING is offered (go-smtp always offers it); BDAT
// chunks carry no dot-stuffing, and pass through the same checks as DATA.
func TestServerBDATRefusesBareCRAndNUL(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	r := dialRaw(t, e.addr)
	r.expect(r.reply(), "220")
	r.write("EHLO client.good.example\r\n")
	chunking := false
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		chunking = chunking || strings.HasPrefix(line, "250-CHUNKING") || strings.HasPrefix(line, "250 CHUNKING")
		if line[3] == ' ' {
			break
		}
	}
	if !chunking {
		t.Fatal("CHUNKING not offered: this test would prove nothing")
	}
	for _, c := range []struct{ name, body, reply string }{
		{"bare CR after a dot line", "Subject: b1\r\n\r\nhello\r\n.\rMAIL FROM:<x@y>\r\n", "550 5.6.0 message refused: it holds a bare CR or LF"},
		{"bare CR across chunks", "Subject: b2\r\n\r\nhello\r", "550 5.6.0 message refused: it holds a bare CR or LF"},
		{"NUL", "Subject: b3\r\n\r\nhel\x00lo\r\n", "550 5.6.0 message refused: it holds a NUL byte"},
		{"clean", "Subject: b4\r\nMessage-ID: <b4@good.example>\r\nFrom: alice@good.example\r\n\r\nhello\r\n", "250"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250")
			r.expect(r.cmd("RCPT TO:<support@example.com>"), "250")
			body := c.body
			if c.name == "bare CR across chunks" {
				// The CR ends the first chunk; the LAST chunk starts with something else.
				r.write(fmt.Sprintf("BDAT %d\r\n%s", len(body), body))
				r.expect(r.reply(), "250")
				body = "X\r\n"
			}
			r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
			r.expect(r.reply(), c.reply)
		})
	}
	r.expect(r.cmd("QUIT"), "221")
	var subj []string
	for _, m := range e.stored(t) {
		subj = append(subj, m.Subject)
	}
	if strings.Join(subj, ",") != "b4" {
		t.Fatalf("stored %q, want only b4", subj)
	}
}

func TestServerSTARTTLS(t *testing.T) {
	cert := selfSigned(t, srvHost)
	e := newSrvEnv(t, nil, &tls.Config{Certificates: []tls.Certificate{cert}})
	if e.srv.v.MaxSignatures != 5 || e.srv.v.AuthservID != srvHost || e.srv.smtp.MaxLineLength != 2000 || e.srv.smtp.MaxMessageBytes != 1<<20 {
		t.Fatalf("limits not taken from the config: %+v", e.srv.smtp)
	}
	if e.srv.smtp.TLSConfig.MinVersion != tls.VersionTLS12 {
		t.Fatalf("MinVersion %x", e.srv.smtp.TLSConfig.MinVersion)
	}
	c, err := smtp.DialStartTLS(e.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := sendOn(c, "client.good.example", "alice@good.example", []string{"support@example.com"}, srvMail("alice@good.example", "tls", "tls@good.example")); err != nil {
		t.Fatal(err)
	}
	got := e.stored(t)
	if len(got) != 1 || !strings.Contains(string(got[0].Raw), "with ESMTPS (TLS 1.3 ") {
		t.Fatalf("no TLS in Received:\n%s", got[0].Raw)
	}
	// TLS 1.1 is refused.
	old, err := smtp.DialStartTLS(e.addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11})
	if err == nil {
		err = old.Hello("client.good.example")
		old.Close()
	}
	if err == nil {
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
}

func TestServerConnLimit(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.MaxConnsPerIP = 2 }, nil)
	a, b := dialRaw(t, e.addr), dialRaw(t, e.addr)
	a.expect(a.reply(), "220")
	b.expect(b.reply(), "220")
	c := dialRaw(t, e.addr)
	c.expect(c.reply(), "421 4.7.0")
	if got := c.reply(); !strings.HasPrefix(got, "EOF") {
		t.Fatalf("refused connection still open: %q", got)
	}
	if n := e.metrics.get("conn too_many"); n != 1 {
		t.Fatalf("too_many counted %d times", n)
	}
	a.expect(a.cmd("QUIT"), "221")
	// a's slot is free once the server has closed it: wait for that by reading to EOF.
	a.expect(a.reply(), "EOF")
	var d *rawConn
	for range 100 { // the close on the server side races with our dial; no timing assumed
		d = dialRaw(t, e.addr)
		if got := d.reply(); strings.HasPrefix(got, "220") {
			break
		}
		d = nil
		time.Sleep(10 * time.Millisecond)
	}
	if d == nil {
		t.Fatal("no slot after a connection closed")
	}
	d.expect(d.cmd("EHLO x.example"), "250")
}

func TestServerRateLimit(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.MessagesPerMinutePerIP = 3 }, nil)
	r := dialRaw(t, e.addr)
	r.expect(r.reply(), "220")
	r.expect(r.cmd("EHLO client.good.example"), "250")
	for range 3 {
		r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250")
		r.expect(r.cmd("RSET"), "250")
	}
	r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "451 4.7.0")
	if e.metrics.get("mail rate_limited") != 1 || e.metrics.get("mail ok") != 3 {
		t.Fatalf("metrics %v", e.metrics.n)
	}
	e.now.Add(20 * time.Second) // a third of a minute: one token back
	r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250")
	r.expect(r.cmd("RSET"), "250")
	r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "451 4.7.0")
}

func TestServerStorageFailure(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	e.db.Close() // the disk is gone under the server
	err := send(e.addr, "client.good.example", "alice@good.example", []string{"support@example.com"}, srvMail("alice@good.example", "x", "x@good.example"))
	if code(err) != "451 4.3.0" {
		t.Fatalf("storage failure answered %s, want 451 4.3.0", code(err))
	}
}

func TestServerReadTimeout(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.ReadTimeout = config.Duration{Duration: 300 * time.Millisecond} }, nil)
	r := dialRaw(t, e.addr)
	r.expect(r.reply(), "220")
	r.expect(r.cmd("EHLO client.good.example"), "250")
	r.expect(r.cmd("MAIL FROM:<alice@good.example>"), "250")
	r.expect(r.cmd("RCPT TO:<support@example.com>"), "250")
	r.expect(r.cmd("DATA"), "354")
	r.write("Subject: slow\r\n\r\nthe client stalls here")
	r.expect(r.reply(), "451 4.4.2")
	if n := len(e.stored(t)); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

func TestServerConcurrentSessions(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			msg := srvMail("alice@good.example", fmt.Sprintf("concurrent %d", i), fmt.Sprintf("c%d@good.example", i))
			errs[i] = send(e.addr, "client.good.example", "alice@good.example", []string{"support@example.com"}, msg)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	seen := map[string]int{}
	for _, m := range e.stored(t) {
		seen[m.Subject]++
	}
	for i := range n {
		if s := fmt.Sprintf("concurrent %d", i); seen[s] != 1 {
			t.Fatalf("%q stored %d times", s, seen[s])
		}
	}
	if len(seen) != n {
		t.Fatalf("stored %d distinct messages, want %d", len(seen), n)
	}
}

func TestServerShutdownDrains(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	idle := dialRaw(t, e.addr)
	idle.expect(idle.reply(), "220")
	idle.expect(idle.cmd("EHLO idle.example"), "250")

	busy := dialRaw(t, e.addr)
	busy.expect(busy.reply(), "220")
	busy.expect(busy.cmd("EHLO client.good.example"), "250")
	busy.expect(busy.cmd("MAIL FROM:<alice@good.example>"), "250")
	busy.expect(busy.cmd("RCPT TO:<support@example.com>"), "250")

	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()

	// The idle session is told at once, without sending anything.
	idle.expect(idle.reply(), "421 4.")
	// A new connection is answered 421 and closed.
	late := dialRaw(t, e.addr)
	late.expect(late.reply(), "421 4.3.2")
	// The transaction under way finishes and is stored.
	busy.expect(busy.cmd("DATA"), "354")
	busy.write(string(srvMail("alice@good.example", "in flight", "flight@good.example")) + ".\r\n")
	busy.expect(busy.reply(), "250")
	// Then that session ends too.
	busy.expect(busy.cmd("MAIL FROM:<alice@good.example>"), "421 4.")
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := e.stored(t); len(got) != 1 || got[0].Subject != "in flight" {
		t.Fatalf("stored %d", len(got))
	}
}

func TestServerShutdownContextEnds(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	busy := dialRaw(t, e.addr)
	busy.expect(busy.reply(), "220")
	busy.expect(busy.cmd("EHLO client.good.example"), "250")
	busy.expect(busy.cmd("MAIL FROM:<alice@good.example>"), "250")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctx) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v", err)
	}
	// The stuck transaction was cut off.
	if got := busy.reply(); !strings.HasPrefix(got, "EOF") && !strings.HasPrefix(got, "421") {
		t.Fatalf("connection after forced shutdown: %q", got)
	}
}

func TestServerListenAndServe(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	s := NewServer(e.cfg, e.tk, &Verifier{Resolver: e.dns}, ServerOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe([]string{"127.0.0.1:0", "[::1]:0"}) }()
	var addrs []net.Addr
	for range 500 {
		if addrs = s.Addrs(); len(addrs) == 2 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(addrs) != 2 {
		t.Fatalf("Addrs %v", addrs)
	}
	for _, a := range addrs {
		if err := send(a.String(), "client.lax.example", "bob@lax.example", []string{"support@example.com"}, srvMail("bob@lax.example", a.String(), "l"+a.String()+"@lax.example")); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("ListenAndServe after Shutdown: %v", err)
	}
	// A bad address fails at once.
	if err := NewServer(e.cfg, e.tk, nil, ServerOptions{}).ListenAndServe([]string{"127.0.0.1:0", "256.0.0.1:25"}); err == nil {
		t.Fatal("bad listen address accepted")
	}
}

// selfSigned makes a throwaway certificate for host.
func selfSigned(t testing.TB, host string) tls.Certificate {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// pipeListener hands net.Pipe connections to the server (fuzzing without sockets).
type pipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.ch:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *pipeListener) Close() error   { p.once.Do(func() { close(p.done) }); return nil }
func (p *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "pipe"} }

// FuzzServerConversation feeds whole client conversations to the server: whatever arrives, it
// must greet and answer, and never hit a panic (go-smtp would hide one behind "421 Internal
// server error").
func FuzzServerConversation(f *testing.F) {
	e := newSrvEnv(f, nil, nil)
	pl := &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
	go e.srv.Serve(pl)
	seeds := []string{
		"EHLO a.example\r\nMAIL FROM:<alice@good.example>\r\nRCPT TO:<support@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
		"EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<support+x@EXAMPLE.com>\r\nDATA\r\nFrom: MAILER-DAEMON@x\r\n\r\nhi\n.\nMAIL FROM:<x@y>\r\n.\r\n",
		"HELO [127.0.0.1]\r\nMAIL FROM:<a@b> SIZE=99999999999\r\nRCPT TO:<nobody@example.com>\r\nRSET\r\nNOOP\r\n",
		"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<support@example.com>\r\nBDAT 5 LAST\r\nab\ncd",
		"EHLO a\r\nSTARTTLS\r\nAUTH PLAIN AGFAYg==\r\nVRFY x\r\nEXPN y\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		defer client.Close()
		client.SetDeadline(time.Now().Add(5 * time.Second))
		select {
		case pl.ch <- server:
		case <-time.After(5 * time.Second):
			t.Fatal("server does not accept")
		}
		go func() {
			client.Write(in)
			client.Write([]byte("\r\n.\r\nQUIT\r\n"))
		}()
		out, _ := io.ReadAll(client)
		if !bytes.HasPrefix(out, []byte("220 ")) {
			t.Fatalf("no greeting: %q", out)
		}
		if bytes.Contains(out, []byte("Internal server error")) {
			t.Fatalf("handler panicked:\n%s", out)
		}
	})
}

// TestServerDKIMSignatureCap: [smtp] max_dkim_signatures bounds the signatures checked. The
// one good signature sits below five that point at a missing key; with a cap of five it is
// never checked and p=reject refuses the mail, with six it verifies.
func TestServerDKIMSignatureCap(t *testing.T) {
	msg := signMail(t, srvMail("carol@signed.example", "many signatures", "cap@signed.example"))
	for range 5 {
		var out bytes.Buffer
		err := dkim.Sign(&out, bytes.NewReader(msg), &dkim.SignOptions{
			Domain: "signed.example", Selector: "nokey", Signer: srvDKIMKey,
			HeaderKeys: []string{"From", "Subject"},
		})
		if err != nil {
			t.Fatal(err)
		}
		msg = out.Bytes()
	}
	for _, c := range []struct {
		max  int
		want string
	}{{5, "550 5.7.1"}, {6, "250"}} {
		e := newSrvEnv(t, func(cfg *config.Config) { cfg.SMTP.MaxDKIMSignatures = c.max }, nil)
		err := send(e.addr, "client.test", "carol@signed.example", []string{"support@example.com"}, msg)
		if got := code(err); got != c.want {
			t.Fatalf("max_dkim_signatures=%d: %s, want %s", c.max, got, c.want)
		}
	}
}

// TestServerDurableAfter250: what was answered 250 is in the file: the server is closed, the
// database closed and opened again (as after a restart), and the message is there.
func TestServerDurableAfter250(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	if err := send(e.addr, "client.good.example", "alice@good.example", []string{"support@example.com"}, srvMail("alice@good.example", "durable", "d1@good.example")); err != nil {
		t.Fatal(err)
	}
	e.srv.Close()
	path := e.db.Path()
	if err := e.db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(path, bytes.Repeat([]byte{3}, 32), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	alog, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	e.db, e.tk = db, tickets.New(db, alog, tickets.Options{Hostname: srvHost, Queues: []tickets.Queue{{Name: "support", Address: "support@example.com"}}})
	if got := e.stored(t); len(got) != 1 || got[0].Subject != "durable" {
		t.Fatalf("after reopening: %d messages", len(got))
	}
}
