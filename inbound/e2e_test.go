package inbound

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"mailgate/config"
	"mailgate/internal/dnsmock"
)

// End-to-end tests: real SMTP clients against the server on 127.0.0.1:0. Debian's swaks
// speaks plain SMTP (this swaks has no TLS: libnet-ssleay-perl is not installed), and Python's
// smtplib (Debian's /usr/bin/python3) speaks STARTTLS; python3-dkim signs as an independent
// DKIM implementation. A missing tool fails the test: these are the real-peer proofs.

const (
	swaksPath  = "/usr/bin/swaks"
	pythonPath = "/usr/bin/python3"
)

func needTool(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is needed for this end-to-end test (Debian package; see .ci): %v", path, err)
	}
}

// swaks runs swaks against e with a message file and returns its transcript and exit code.
func (e *srvEnv) swaks(t *testing.T, from, to string, msg []byte, extra ...string) (string, int) {
	t.Helper()
	needTool(t, swaksPath)
	host, port, _ := net.SplitHostPort(e.addr)
	file := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(file, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--server", host, "--port", port, "--timeout", "60",
		"--helo", "client.good.example", "--from", from, "--to", to, "--data", "@" + file, "--suppress-data"}, extra...)
	out, err := exec.Command(swaksPath, args...).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("swaks: %v", err)
	}
	return string(out), code
}

// swaksReply finds the server's reply with the given code in a swaks transcript.
func swaksReply(out, reply string) bool {
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "<-  "+reply) || strings.HasPrefix(l, "<** "+reply) {
			return true
		}
	}
	return false
}

func e2eMail(from, subject string, extra ...string) []byte {
	return srvMail(from, subject, strings.ReplaceAll(subject, " ", ".")+"@e2e.example", extra...)
}

func TestE2ESwaksPlainDelivery(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	out, code := e.swaks(t, "alice@good.example", "support@example.com", e2eMail("alice@good.example", "swaks plain"))
	if code != 0 || !swaksReply(out, "250 2.0.0") {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	got := e.stored(t)
	if len(got) != 1 || got[0].Subject != "swaks plain" || !got[0].Verified || got[0].Auth.SPF != "pass" {
		t.Fatalf("stored %+v", got)
	}
}

func TestE2ESwaksUnknownRecipient(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	out, code := e.swaks(t, "alice@good.example", "nobody@example.com", e2eMail("alice@good.example", "nobody"))
	if code != 24 || !swaksReply(out, "550 5.1.1") {
		t.Fatalf("swaks exit %d, want 24 (no RCPT accepted) after 550 5.1.1:\n%s", code, out)
	}
	if n := len(e.stored(t)); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

func TestE2ESwaksOversize(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.MaxMessageBytes = 64 << 10 }, nil)
	msg := e2eMail("alice@good.example", "too big")
	msg = append(msg, bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog, again and again.\r\n"), 4000)...)
	out, code := e.swaks(t, "alice@good.example", "support@example.com", msg)
	if code != 26 || !swaksReply(out, "552 5.3.4") {
		t.Fatalf("swaks exit %d, want 26 after 552 5.3.4:\n%s", code, out)
	}
	if n := len(e.stored(t)); n != 0 {
		t.Fatalf("stored %d after 552", n)
	}
}

func TestE2ESwaksDMARCReject(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	// spoof.example publishes p=reject and an SPF record that does not allow 127.0.0.1.
	out, code := e.swaks(t, "mallory@spoof.example", "support@example.com", e2eMail("ceo@spoof.example", "pay this invoice"))
	if code != 26 || !swaksReply(out, "550 5.7.1") {
		t.Fatalf("swaks exit %d, want 26 after 550 5.7.1:\n%s", code, out)
	}
	if n := len(e.stored(t)); n != 0 {
		t.Fatalf("stored %d", n)
	}
	if r := e.refusals(); len(r) != 1 || r[0].Result != ResultDMARCReject || r[0].Verdict.DMARC != "fail" {
		t.Fatalf("refusal %+v", r)
	}
}

func TestE2ESwaksQuarantine(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	out, code := e.swaks(t, "eve@quar.example", "support@example.com", e2eMail("eve@quar.example", "quarantine me"))
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	got := e.stored(t)
	if len(got) != 1 || !got[0].Quarantined || got[0].Verified || got[0].Auth.DMARC != "fail" {
		t.Fatalf("stored %+v auth %+v", got, got[0].Auth)
	}
}

func TestE2ESwaksForgedAuthResults(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	msg := e2eMail("bob@lax.example", "forged verdict",
		"Authentication-Results: "+srvHost+"; spf=pass smtp.mailfrom=lax.example; dkim=pass header.d=lax.example; dmarc=pass header.from=lax.example")
	out, code := e.swaks(t, "bob@lax.example", "support@example.com", msg)
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	got := e.stored(t)
	if len(got) != 1 {
		t.Fatalf("stored %d", len(got))
	}
	raw := string(got[0].Raw)
	if strings.Contains(raw, "dkim=pass header.d=lax.example") || strings.Count(raw, "Authentication-Results: "+srvHost) != 1 {
		t.Fatalf("forged field kept:\n%s", raw)
	}
	if got[0].Verified || got[0].Auth.DMARC != "fail" || got[0].Auth.SPF != "fail" {
		t.Fatalf("forged verdict counted: %+v", got[0].Auth)
	}
}

func TestE2ESwaksStorageFailure(t *testing.T) {
	e := newSrvEnv(t, nil, nil)
	e.db.Close() // the store goes away under the running server
	out, code := e.swaks(t, "alice@good.example", "support@example.com", e2eMail("alice@good.example", "no disk"))
	if code != 26 || !swaksReply(out, "451 4.3.0") {
		t.Fatalf("swaks exit %d, want 26 after 451 4.3.0 (temporary, never 5xx):\n%s", code, out)
	}
}

// pySend delivers msg over STARTTLS with Python's smtplib (certificate not verified: it is
// self-signed) and returns what the script printed.
const pySend = `
import smtplib, ssl, sys
host, port, mfrom, rcpt, path = sys.argv[1:6]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, int(port), local_hostname="client.good.example", timeout=60)
s.ehlo()
s.starttls(context=ctx)
s.ehlo()
try:
    s.sendmail(mfrom, [rcpt], open(path, "rb").read())
except smtplib.SMTPResponseException as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
    sys.exit(3)
print("sent", s.sock.version())
s.quit()
`

func (e *srvEnv) pySend(t *testing.T, from, to string, msg []byte) (string, error) {
	t.Helper()
	needTool(t, pythonPath)
	host, port, _ := net.SplitHostPort(e.addr)
	file := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(file, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(pythonPath, "-c", pySend, host, port, from, to, file).CombinedOutput()
	return string(out), err
}

func TestE2EPythonSTARTTLS(t *testing.T) {
	e := newSrvEnv(t, nil, &tls.Config{Certificates: []tls.Certificate{selfSigned(t, srvHost)}})
	out, err := e.pySend(t, "alice@good.example", "support@example.com", e2eMail("alice@good.example", "over tls"))
	if err != nil || !strings.HasPrefix(out, "sent TLSv1.") {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	got := e.stored(t)
	if len(got) != 1 || !strings.Contains(string(got[0].Raw), "with ESMTPS (TLS 1.") || !got[0].Verified {
		t.Fatalf("stored %d; Received: shows no TLS or not verified", len(got))
	}
}

// pySign DKIM-signs the message file with python3-dkim (relaxed/relaxed, RSA-SHA256).
const pySign = `
import dkim, sys
msg = open(sys.argv[1], "rb").read()
key = open(sys.argv[2], "rb").read()
sig = dkim.sign(msg, b"py", b"signed.example", key, canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
sys.stdout.buffer.write(sig + msg)
`

func TestE2EPythonDKIMSigned(t *testing.T) {
	needTool(t, pythonPath)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	e := newSrvEnvDNS(t, nil, nil, func(r *dnsmock.Resolver) {
		r.TXT["py._domainkey.signed.example"] = []string{"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub)}
	})
	dir := t.TempDir()
	keyFile, msgFile := filepath.Join(dir, "key.pem"), filepath.Join(dir, "msg.eml")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	os.WriteFile(msgFile, e2eMail("carol@signed.example", "python signed"), 0o600)
	signed, err := exec.Command(pythonPath, "-c", pySign, msgFile, keyFile).Output()
	if err != nil || !bytes.HasPrefix(signed, []byte("DKIM-Signature: ")) {
		t.Fatalf("python3-dkim: %v\n%s", err, signed)
	}
	// signed.example's SPF refuses 127.0.0.1: only the DKIM signature can make DMARC pass.
	out, code := e.swaks(t, "carol@signed.example", "support@example.com", signed)
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	got := e.stored(t)
	if len(got) != 1 {
		t.Fatalf("stored %d", len(got))
	}
	a := got[0].Auth
	if a.DKIM != "pass" || a.SPF != "fail" || a.DMARC != "pass" || !a.Verified || !got[0].Verified {
		t.Fatalf("auth %+v", a)
	}
	if !strings.Contains(a.Results, "header.d=signed.example") {
		t.Fatalf("Authentication-Results %q", a.Results)
	}
	// The same signature on a changed body fails, and p=reject refuses it.
	tampered := bytes.Replace(signed, []byte("did not arrive"), []byte("arrived, thanks"), 1)
	out, code = e.swaks(t, "carol@signed.example", "support@example.com", tampered)
	if code != 26 || !swaksReply(out, "550 5.7.1") {
		t.Fatalf("tampered: swaks exit %d:\n%s", code, out)
	}
}
