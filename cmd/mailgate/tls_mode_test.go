package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"
)

// TestServeListenerTLSMode is issue 12.4 on the real binary: submission_tls = "implicit" and
// [imap] tls = "starttls" in the config that init wrote; serve prints the mode each listener
// really serves, and clients get exactly that on ports the old port rule would have served
// the other way (neither is 465 or 993).
func TestServeListenerTLSMode(t *testing.T) {
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	orig, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`(?m)^submission_tls = "auto"`).ReplaceAllString(string(orig), `submission_tls = "implicit"`)
	text = regexp.MustCompile(`(?m)^tls = "auto"`).ReplaceAllString(text, `tls = "starttls"`)
	if text == string(orig) || !strings.Contains(text, `tls = "starttls"`) {
		t.Fatalf("init's config has no submission_tls/tls lines to change:\n%s", orig)
	}
	os.WriteFile(cfg, []byte(text), 0o640)
	if r := mailgate(t, ".", "check-config", "-config", cfg); r.code != 0 {
		t.Fatalf("check-config:\n%s", r)
	}

	d := startServe(t, dir, "-config", cfg)
	d.waitReady(t)
	sub := d.line(t, `^listening: submission (127\.0\.0\.1:\d+) \(implicit TLS\)$`)[1]
	imapAddr := d.line(t, `^listening: imap (127\.0\.0\.1:\d+) \(STARTTLS\)$`)[1]

	pem, err := os.ReadFile(filepath.Join(dir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tc := &tls.Config{RootCAs: pool, ServerName: "mail.example.com"}

	conn, err := tls.Dial("tcp", sub, tc)
	if err != nil {
		t.Fatalf("implicit TLS to submission: %v", err)
	}
	c := smtp.NewClient(conn)
	if err := c.Hello("client.example.org"); err != nil {
		t.Fatal(err)
	}
	if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") {
		t.Fatalf("AUTH over implicit TLS: %v %q", ok, mechs)
	}
	c.Quit()

	ic, err := imapclient.DialStartTLS(imapAddr, &imapclient.Options{TLSConfig: tc})
	if err != nil {
		t.Fatalf("STARTTLS to imap: %v", err)
	}
	caps, err := ic.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !caps.Has(imap.AuthCap("PLAIN")) {
		t.Fatalf("capabilities after STARTTLS: %v", caps)
	}
	ic.Logout().Wait()
	ic.Close()
	d.stop(t)
}
