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
