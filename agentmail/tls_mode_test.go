package agentmail

import (
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 12.4: the TLS mode of a listener is set, not guessed from the port.

// portListener is a loopback listener that reports a public address with the given port, so
// the server treats it as a listener on that port while the test stays on 127.0.0.1.
type portListener struct {
	net.Listener
	port int
}

func (l portListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: l.port}
}

func listenAs(t *testing.T, port int) (net.Listener, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return portListener{l, port}, l.Addr().String()
}

// tlsClient connects as Python's smtplib/imaplib do with implicit TLS or STARTTLS, verifying
// the certificate, and logs in.
const tlsClient = `
import sys, ssl, smtplib, imaplib
kind, addr, cafile, user, pw, timeout = sys.argv[1:7]
host, port = addr.rsplit(':', 1)
timeout = float(timeout)
ctx = ssl.create_default_context(cafile=cafile)
if kind == 'smtp-implicit':
    s = smtplib.SMTP_SSL(host, int(port), context=ctx, timeout=timeout); s.ehlo('client.example.com'); s.login(user, pw); s.quit()
elif kind == 'smtp-starttls':
    s = smtplib.SMTP(host, int(port), timeout=timeout); s.ehlo('client.example.com'); s.starttls(context=ctx); s.ehlo('client.example.com'); s.login(user, pw); s.quit()
elif kind == 'imap-implicit':
    c = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=timeout); c.login(user, pw); c.select('support'); c.logout()
elif kind == 'imap-starttls':
    c = imaplib.IMAP4(host, int(port), timeout=timeout); c.starttls(ssl_context=ctx); c.login(user, pw); c.select('support'); c.logout()
print('logged in')
`

// tlsLogin runs the client; a client speaking the wrong way waits for a greeting that never
// comes, so the expected failures get a short timeout (a failure either way, not a speed check).
func (e *env) tlsLogin(t *testing.T, kind, addr, timeout string) (string, error) {
	t.Helper()
	ca := filepath.Join(e.dir, "ca.pem")
	if _, err := os.Stat(ca); err != nil {
		b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.tlsCfg.Certificates[0].Certificate[0]})
		if err := os.WriteFile(ca, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(tool(t, python), "-c", tlsClient, kind, addr, ca, "alice", e.users["alice"], timeout).CombinedOutput()
	return string(out), err
}

// TestListenerTLSModes drives each mode with Python's clients on ports that, by the old
// port rule, would speak the other way: implicit TLS on 2465/1993, STARTTLS on 465/993. Each
// listener answers only in its mode, and says which it serves.
func TestListenerTLSModes(t *testing.T) {
	e := newEnv(t)
	type srv struct {
		name, mode string
		port       int
		ok, bad    string // the client kind that must log in, and one that must fail
		want       string // TLSMode's description
	}
	for _, tc := range []srv{
		{"submission implicit", TLSImplicit, 2465, "smtp-implicit", "smtp-starttls", "implicit TLS"},
		{"submission starttls on 465", TLSStartTLS, 465, "smtp-starttls", "smtp-implicit", "STARTTLS"},
		{"submission auto on 465", TLSAuto, 465, "smtp-implicit", "smtp-starttls", "implicit TLS"},
		{"submission auto on 587", "", 587, "smtp-starttls", "smtp-implicit", "STARTTLS"},
		{"imap implicit", TLSImplicit, 1993, "imap-implicit", "imap-starttls", "implicit TLS"},
		{"imap starttls on 993", TLSStartTLS, 993, "imap-starttls", "imap-implicit", "STARTTLS"},
		{"imap auto on 993", TLSAuto, 993, "imap-implicit", "imap-starttls", "implicit TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, addr := listenAs(t, tc.port)
			var desc string
			if strings.HasPrefix(tc.name, "submission") {
				s := NewSubmission(SubmissionOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, TLSMode: tc.mode, Hostname: testHost, Logger: quiet})
				t.Cleanup(func() { s.Close() })
				go s.Serve(l)
				desc = s.TLSMode(l.Addr())
			} else {
				s := NewIMAP(IMAPOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, TLSMode: tc.mode, Hostname: testHost, Logger: quiet})
				t.Cleanup(func() { s.Close() })
				go s.Serve(l)
				desc = s.TLSMode(l.Addr())
			}
			if desc != tc.want {
				t.Errorf("TLSMode = %q, want %q", desc, tc.want)
			}
			if out, err := e.tlsLogin(t, tc.ok, addr, "60"); err != nil || !strings.Contains(out, "logged in") {
				t.Fatalf("%s: %v\n%s", tc.ok, err, out)
			}
			if out, err := e.tlsLogin(t, tc.bad, addr, "2"); err == nil {
				t.Fatalf("%s worked against a %s listener:\n%s", tc.bad, tc.want, out)
			}
		})
	}

	// Without a certificate: loopback only, in plain text, and "implicit" is refused.
	s := NewSubmission(SubmissionOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSMode: TLSImplicit, Hostname: testHost, Logger: quiet})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err == nil || !strings.Contains(err.Error(), "implicit TLS needs a certificate") {
		t.Fatalf("implicit without a certificate: %v", err)
	}
	if d := s.TLSMode(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 587}); d != "plain text: loopback only, no certificate" {
		t.Fatalf("TLSMode without a certificate = %q", d)
	}
	bad := NewIMAP(IMAPOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, TLSMode: "ssl", Hostname: testHost, Logger: quiet})
	l2, _ := listenAs(t, 993)
	if err := bad.Serve(l2); err == nil || !strings.Contains(err.Error(), `unknown TLS mode "ssl"`) {
		t.Fatalf("unknown mode: %v", err)
	}
}

// TestMsmtpAsREADME sends a reply with msmtp configured as the README's example (implicit TLS,
// tls_starttls off, AUTH PLAIN, recipients from the header with -t) to an implicit-TLS
// submission listener on a public-looking address.
func TestMsmtpAsREADME(t *testing.T) {
	msmtp := tool(t, "msmtp")
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	s := NewSubmission(SubmissionOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, TLSMode: TLSImplicit, Hostname: testHost, Logger: quiet})
	t.Cleanup(func() { s.Close() })
	l, addr := listenAs(t, 2465)
	go s.Serve(l)
	host, port, _ := strings.Cut(addr, ":")
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.tlsCfg.Certificates[0].Certificate[0]}), 0o600)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte(e.users["alice"]), 0o600)
	rc := filepath.Join(dir, "msmtprc")
	conf := "account mailgate\nhost " + host + "\nport " + port + "\ntls on\ntls_starttls off\ntls_trust_file " + ca +
		"\nauth plain\nuser alice\npasswordeval \"cat " + pw + "\"\nfrom alice@example.com\naccount default : mailgate\n"
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(msmtp, "-C", rc, "-t")
	cmd.Stdin = strings.NewReader(agentReply("alice@example.com", customer, "o1@example.net", "m1@example.com", "Sent with msmtp over implicit TLS.\r\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("msmtp: %v\n%s", err, out)
	}
	if out := e.delivered(id, 2); !contains(decodedBody(t, out), "Sent with msmtp over implicit TLS.") {
		t.Fatalf("delivered:\n%s", out)
	}
}

// TestMbsyncAsREADME pulls the queues into a Maildir with mbsync (isync) configured as the
// README's example, over implicit TLS: the ticket's message arrives with mailgate's headers.
func TestMbsyncAsREADME(t *testing.T) {
	mbsync := tool(t, "mbsync")
	e := newEnv(t)
	e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	s := NewIMAP(IMAPOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, TLSConfig: e.tlsCfg, TLSMode: TLSImplicit, Hostname: testHost, Logger: quiet})
	t.Cleanup(func() { s.Close() })
	l, addr := listenAs(t, 1993)
	go s.Serve(l)
	_, port, _ := strings.Cut(addr, ":")
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.tlsCfg.Certificates[0].Certificate[0]}), 0o600)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte(e.users["alice"]), 0o600)
	mail := filepath.Join(dir, "Mail") + "/"
	if err := os.MkdirAll(mail, 0o700); err != nil { // mbsync creates folders, not the store
		t.Fatal(err)
	}
	rc := filepath.Join(dir, "mbsyncrc")
	conf := "IMAPAccount mailgate\nHost localhost\nPort " + port + "\nSSLType IMAPS\nCertificateFile " + ca + "\nUser alice\nPassCmd \"cat " + pw + "\"\n\n" +
		"IMAPStore mailgate-remote\nAccount mailgate\n\n" +
		"MaildirStore mailgate-local\nPath " + mail + "\nInbox " + mail + "INBOX\nSubFolders Verbatim\n\n" +
		"Channel mailgate\nFar :mailgate-remote:\nNear :mailgate-local:\nPatterns *\nSync Pull\nCreate Near\n"
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mbsync, "-c", rc, "mailgate")
	cmd.Env = append(os.Environ(), "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mbsync: %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(mail, "support", "*", "*"))
	if len(files) != 1 {
		t.Fatalf("Maildir support holds %v, want one message", files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if !contains(b, "X-Mailgate-Ticket: 1") || !contains(b, "Hello, my order is late.") {
		t.Fatalf("pulled message:\n%s", b)
	}
}
