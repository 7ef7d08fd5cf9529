package outbound

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"mailgate/config"
)

func TestDKIMSignsWhatIsSentGo(t *testing.T) {
	e := newEnv(t, nil)
	raw, _, err := e.ob.Compose(outgoing())
	if err != nil {
		t.Fatal(err)
	}
	vs := verifyGo(t, raw, e.dnsRecords(), 2)
	want := "from:from:reply-to:reply-to:sender:sender:to:to:cc:cc:subject:subject:date:date:message-id:message-id:" +
		"in-reply-to:in-reply-to:references:references:mime-version:mime-version:content-type:content-type:" +
		"content-transfer-encoding:content-transfer-encoding:auto-submitted:auto-submitted"
	for _, v := range vs {
		if got := strings.ToLower(strings.Join(v.HeaderKeys, ":")); got != want {
			t.Errorf("h= %s, want %s", got, want)
		}
		if v.Domain != testDomain {
			t.Errorf("d= %s", v.Domain)
		}
	}
	for _, sig := range bytes.Split(raw, []byte("DKIM-Signature:"))[1:] {
		if !bytes.Contains(sig[:200], []byte("c=relaxed/relaxed")) {
			t.Errorf("signature is not relaxed/relaxed: %.120s", sig)
		}
	}
	// A second From, an added Cc, Reply-To or Subject, or a changed Subject or body must break
	// both signatures.
	for _, tamper := range []func([]byte) []byte{
		func(b []byte) []byte {
			return bytes.Replace(b, []byte("\r\nFrom:"), []byte("\r\nFrom: evil@evil.example\r\nFrom:"), 1)
		},
		func(b []byte) []byte {
			return bytes.Replace(b, []byte("\r\nTo:"), []byte("\r\nCc: evil@evil.example\r\nTo:"), 1)
		},
		func(b []byte) []byte {
			return bytes.Replace(b, []byte("\r\nTo:"), []byte("\r\nReply-To: evil@evil.example\r\nTo:"), 1)
		},
		func(b []byte) []byte {
			return bytes.Replace(b, []byte("\r\nTo:"), []byte("\r\nSubject: Pay here\r\nTo:"), 1)
		},
		func(b []byte) []byte { return bytes.Replace(b, []byte("Subject: "), []byte("Subject: X"), 1) },
		func(b []byte) []byte { return bytes.Replace(b, []byte("Hallo"), []byte("Hello"), 1) },
	} {
		vs := goVerify(t, tamper(raw), e.dnsRecords())
		for _, v := range vs {
			if v.Err == nil {
				t.Errorf("a tampered message still verifies (signature h=%v)", v.HeaderKeys)
			}
		}
	}
}

// TestDKIMPythonVerifies is the independent check: Debian's python3-dkim verifies the RSA and
// the Ed25519 signature over a reply and rejects a changed one.
func TestDKIMPythonVerifies(t *testing.T) {
	e := newEnv(t, nil)
	og := outgoing()
	og.AutoReply = true
	raw, _, err := e.ob.Compose(og)
	if err != nil {
		t.Fatal(err)
	}
	requireBothVerify(t, raw, e.dnsRecords())
	bad := bytes.Replace(raw, []byte("Hallo"), []byte("Hello"), 1)
	for _, r := range pythonVerify(t, bad, e.dnsRecords()) {
		if r.OK {
			t.Errorf("python3-dkim verifies a changed body with %s", r.A)
		}
	}
}

func TestDKIMKeyFormats(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	pubDER, _ := x509.MarshalPKIXPublicKey(rsaKey.Public())
	good := []struct {
		name, alg string
		pem       []byte
	}{
		{"pkcs1 rsa", "rsa", pkcs1},
		{"pkcs8 rsa", "rsa", pkcs8(rsaKey)},
		{"pkcs8 ed25519", "ed25519", pkcs8(edKey)},
		{"pkcs8 ed25519 with text around", "ed25519", append([]byte("# made by hand\n"), pkcs8(edKey)...)},
	}
	for _, g := range good {
		k, err := ParseDKIMKey(g.pem)
		if err != nil {
			t.Errorf("%s: %v", g.name, err)
			continue
		}
		if a := keyAlgorithm(k.Public()); a != g.alg {
			t.Errorf("%s: detected %s", g.name, a)
		}
	}
	bad := map[string][]byte{
		"empty":      nil,
		"garbage":    []byte("not a key"),
		"public key": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}),
		"two keys":   append(pkcs8(edKey), pkcs8(edKey)...),
		"encrypted":  pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}}),
		"bad der":    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}),
		"legacy enc": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}),
	}
	for name, b := range bad {
		if _, err := ParseDKIMKey(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGenerateDKIMKey(t *testing.T) {
	for _, kind := range []string{"rsa", "ed25519"} {
		p, txt, err := GenerateDKIMKey(kind)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ParseDKIMKey(p)
		if err != nil {
			t.Fatalf("%s: generated key does not load: %v", kind, err)
		}
		if txt != DNSRecord(k) || txt != DNSRecord(k.Public()) {
			t.Errorf("%s: record %q differs from DNSRecord", kind, txt)
		}
		prefix := "v=DKIM1; k=" + kind + "; p="
		if !strings.HasPrefix(txt, prefix) {
			t.Fatalf("%s: record %q", kind, txt)
		}
		der, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(txt, prefix))
		if err != nil {
			t.Fatal(err)
		}
		switch kind {
		case "rsa":
			pub, err := x509.ParsePKIXPublicKey(der)
			if err != nil || pub.(*rsa.PublicKey).N.BitLen() != 2048 {
				t.Errorf("rsa record: %v", err)
			}
		case "ed25519":
			if len(der) != ed25519.PublicKeySize {
				t.Errorf("ed25519 record holds %d bytes", len(der))
			}
		}
	}
	if _, _, err := GenerateDKIMKey("dsa"); err == nil {
		t.Error("dsa accepted")
	}
	if DNSRecord("nonsense") != "" {
		t.Error("record for a non-key")
	}
}

// TestDKIMKindDetected puts each key into the other's config field: the kind comes from the
// file, and both still sign and verify.
func TestDKIMKindDetected(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	rsaFile, edFile := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	os.WriteFile(rsaFile, rsaPEM, 0o600)
	os.WriteFile(edFile, edPEM, 0o600)
	e := newEnv(t, func(c *config.Config) {
		c.Outbound.DKIMKeyFile = edFile
		c.Outbound.DKIMEd25519KeyFile = rsaFile
	})
	keys := e.ob.DKIMKeys()
	if len(keys) != 2 || keys[0].Algorithm() != "ed25519" || keys[0].Selector != "mailgate" || keys[1].Algorithm() != "rsa" {
		t.Fatalf("keys %+v", keys)
	}
	raw, _, err := e.ob.Compose(outgoing())
	if err != nil {
		t.Fatal(err)
	}
	verifyGo(t, raw, e.dnsRecords(), 2)
	requireBothVerify(t, raw, e.dnsRecords())
}

func TestDKIMOneKeyOrNone(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Outbound.DKIMKeyFile = "" })
	raw, _, err := e.ob.Compose(outgoing())
	if err != nil {
		t.Fatal(err)
	}
	vs := verifyGo(t, raw, e.dnsRecords(), 1)
	if !strings.Contains(string(raw[:300]), "a=ed25519-sha256") || len(vs) != 1 {
		t.Error("want one ed25519 signature")
	}
	e = newEnv(t, func(c *config.Config) { c.Outbound.DKIMKeyFile, c.Outbound.DKIMEd25519KeyFile = "", "" })
	raw, _, err = e.ob.Compose(outgoing())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("DKIM-Signature")) {
		t.Error("signed without a key")
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	testKeys(t)
	cases := map[string]func(c *config.Config){
		"none to a remote relay":   func(c *config.Config) { c.Outbound.Relay, c.Outbound.RelayTLS = "192.0.2.1:25", "none" },
		"unknown tls mode":         func(c *config.Config) { c.Outbound.Relay, c.Outbound.RelayTLS = "127.0.0.1:25", "maybe" },
		"relay without port":       func(c *config.Config) { c.Outbound.Relay = "smtp.example.com" },
		"username without file":    func(c *config.Config) { c.Outbound.Relay, c.Outbound.RelayUsername = "127.0.0.1:25", "u" },
		"required without gateway": func(c *config.Config) { c.PGP.Encrypt = "required" },
		"unknown policy":           func(c *config.Config) { c.PGP.Encrypt = "sometimes" },
		"key without domain":       func(c *config.Config) { c.Outbound.DKIMDomain = "" },
		"missing key file":         func(c *config.Config) { c.Outbound.DKIMKeyFile = "/nonexistent/dkim.key" },
		"no hostname":              func(c *config.Config) { c.Hostname = "" },
	}
	for name, mut := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			cfg := *e.cfg
			mut(&cfg)
			if _, err := New(&cfg, e.db, e.log, e.tk, nil, nil, Options{}); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestZoneLine(t *testing.T) {
	testKeys(t)
	k, err := ParseDKIMKey(rsaPEM)
	if err != nil {
		t.Fatal(err)
	}
	line := DKIMKey{Domain: "example.com", Selector: "mailgate", Signer: k}.ZoneLine()
	if !strings.HasPrefix(line, "mailgate._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; p=") || !strings.HasSuffix(line, "\" )") {
		t.Fatalf("zone line %q", line)
	}
	parts := regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(line, -1)
	var joined string
	for _, p := range parts {
		if len(p[1]) > 255 {
			t.Errorf("a string of %d bytes", len(p[1]))
		}
		joined += p[1]
	}
	if len(parts) < 2 || joined != rsaTXT {
		t.Errorf("%d strings joining to a different record", len(parts))
	}
}
