package inbound

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"mailgate/internal/dnsmock"
	"mailgate/internal/testutil"
)

// loadTXTZone reads a "<name> <TXT value>" file (Mail::DKIM's FAKE_DNS.dat format): the value
// may be NXDOMAIN, ~~Query timed out~~ or ~~SERVFAIL~~; '""' is an empty record; lines
// starting with '#' or ';' are comments.
func loadTXTZone(t *testing.T, path string) *dnsmock.Resolver {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := &dnsmock.Resolver{TXT: map[string][]string{}, Fail: map[string]bool{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		name, value, _ := strings.Cut(line, " ")
		value = strings.TrimSpace(value)
		switch value {
		case "NXDOMAIN":
			// absent from the maps: not found
		case "~~Query timed out~~", "~~SERVFAIL~~":
			r.Fail[name] = true
		case `""`:
			r.TXT[name] = append(r.TXT[name], "")
		default:
			r.TXT[name] = append(r.TXT[name], value)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestDKIMCorpus runs Mail::DKIM's verifier corpus through Verify and compares the DKIM
// result with the strict RFC 6376 + RFC 8301 column of expected.tsv.
func TestDKIMCorpus(t *testing.T) {
	dir := testutil.Testdata(t, "dkim/mail-dkim")
	v := &Verifier{Resolver: loadTXTZone(t, filepath.Join(dir, "FAKE_DNS.dat")), AuthservID: "mx.test"}
	tsv, err := os.ReadFile(filepath.Join(dir, "expected.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	col := -1
	agree, total := 0, 0
	for line := range strings.SplitSeq(string(tsv), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cols := strings.Split(line, "\t")
		if col < 0 {
			col = slices.Index(cols, "rfc6376+8301")
			if col < 0 {
				t.Fatalf("expected.tsv header has no rfc6376+8301 column: %q", line)
			}
			continue
		}
		name := cols[0]
		want, _, _ := strings.Cut(cols[col], " ")
		raw, err := os.ReadFile(filepath.Join(dir, "corpus", name))
		if err != nil {
			t.Fatal(err)
		}
		total++
		vd := v.Verify(context.Background(), nil, raw)
		if vd.DKIM != want {
			t.Errorf("%s: dkim=%s, want %s (%s)", name, vd.DKIM, want, cols[col])
			continue
		}
		agree++
	}
	t.Logf("Mail::DKIM corpus: %d/%d agree with the strict RFC 6376+8301 column", agree, total)
	if total != 79 {
		t.Fatalf("%d messages in expected.tsv, want 79", total)
	}
}

// TestDKIMRFCExamples: the signed examples of RFC 6376 A.3 and RFC 8463 A.3 (two signatures,
// ed25519-sha256 and rsa-sha256) all pass.
func TestDKIMRFCExamples(t *testing.T) {
	dir := testutil.Testdata(t, "dkim/rfc-examples")
	v := &Verifier{Resolver: loadTXTZone(t, filepath.Join(dir, "zone.txt")), AuthservID: "mx.test"}
	for _, tc := range []struct {
		file    string
		domains []string
	}{
		{"rfc6376-appendix-a3.eml", []string{"example.com"}},
		{"rfc8463-appendix-a3.eml", []string{"football.example.com", "football.example.com"}},
	} {
		raw, err := os.ReadFile(filepath.Join(dir, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		vd := v.Verify(context.Background(), nil, raw)
		if vd.DKIM != "pass" || !slices.Equal(vd.DKIMDomains, tc.domains) {
			t.Errorf("%s: dkim=%s domains=%v, want pass %v\n%s", tc.file, vd.DKIM, vd.DKIMDomains, tc.domains, vd.AuthResults)
		}
		if n := strings.Count(vd.AuthResults, "dkim=pass"); n != len(tc.domains) {
			t.Errorf("%s: %d dkim=pass in %q, want one per signature", tc.file, n, vd.AuthResults)
		}
	}
}

// TestDKIMEd25519Dkimpy follows dkimpy's ed25519 tests with its data: messages signed here
// with its Ed25519 seeds verify against its DNS records; its RFC 8463 double-signed message and
// the Exim-signed one verify as they are.
func TestDKIMEd25519Dkimpy(t *testing.T) {
	dir := testutil.Testdata(t, "dkim/dkimpy")
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	txt := func(name string) string { return strings.TrimSpace(string(read(name))) }
	res := &dnsmock.Resolver{TXT: map[string][]string{
		"sel._domainkey.example.com":               {txt("ed25519test.dns")},
		"brisbane._domainkey.football.example.com": {"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="},
		"test._domainkey.football.example.com":     {txt("test.txt")},
		"sed._domainkey.test.ex":                   {txt("eximtest.dns")},
	}}
	v := &Verifier{Resolver: res, AuthservID: "mx.test"}
	msg := read("rfc6376.msg")

	for _, tc := range []struct {
		keyFile, domain, selector, dnsPub string
	}{
		{"ed25519test.key", "example.com", "sel", txt("ed25519test.dns")},
		{"rfc8032_7_1.key", "football.example.com", "brisbane", "p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="},
	} {
		seed, err := base64.StdEncoding.DecodeString(txt(tc.keyFile))
		if err != nil || len(seed) != ed25519.SeedSize {
			t.Fatalf("%s: bad seed: %v", tc.keyFile, err)
		}
		key := ed25519.NewKeyFromSeed(seed)
		pub := base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
		if !strings.Contains(tc.dnsPub, "p="+pub) {
			t.Fatalf("%s: public key %s is not the one in DNS (%s)", tc.keyFile, pub, tc.dnsPub)
		}
		for _, c := range []dkim.Canonicalization{dkim.CanonicalizationSimple, dkim.CanonicalizationRelaxed} {
			var signed bytes.Buffer
			err := dkim.Sign(&signed, bytes.NewReader(msg), &dkim.SignOptions{
				Domain: tc.domain, Selector: tc.selector, Signer: key, Hash: crypto.SHA256,
				HeaderCanonicalization: c, BodyCanonicalization: c,
			})
			if err != nil {
				t.Fatal(err)
			}
			if vd := v.Verify(context.Background(), nil, signed.Bytes()); vd.DKIM != "pass" {
				t.Errorf("%s %s: dkim=%s\n%s", tc.keyFile, c, vd.DKIM, vd.AuthResults)
			}
			tampered := bytes.Replace(signed.Bytes(), []byte("hungry"), []byte("angry!"), 1)
			if vd := v.Verify(context.Background(), nil, tampered); vd.DKIM != "fail" {
				t.Errorf("%s %s: tampered body gives dkim=%s, want fail", tc.keyFile, c, vd.DKIM)
			}
		}
	}

	vd := v.Verify(context.Background(), nil, read("rfc6376.signed.msg"))
	if vd.DKIM != "pass" || len(vd.DKIMDomains) != 2 {
		t.Errorf("rfc6376.signed.msg: dkim=%s domains=%v, want both signatures to pass\n%s", vd.DKIM, vd.DKIMDomains, vd.AuthResults)
	}
	vd = v.Verify(context.Background(), nil, read("ed25519test2.msg"))
	if vd.DKIM != "pass" {
		t.Errorf("ed25519test2.msg (Exim): dkim=%s\n%s", vd.DKIM, vd.AuthResults)
	}
}

// TestDKIMRealPeer has Debian's python3-dkim (dkimpy) sign a message with a fresh RSA key;
// Verify must pass it, with DMARC aligned, and fail it once the body changes.
func TestDKIMRealPeer(t *testing.T) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("%s is needed (Debian python3 with python3-dkim): %v", python, err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.pem")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	msg := "From: Alice Customer <alice@peer.example>\r\n" +
		"To: support@mailgate.test\r\n" +
		"Subject: Printer on fire\r\n" +
		"Date: Mon, 02 Feb 2026 10:00:00 +0000\r\n" +
		"Message-ID: <peer-1@peer.example>\r\n" +
		"\r\n" +
		"Hello,\r\n\r\nthe printer is on fire again.\r\n"
	msgFile := filepath.Join(dir, "msg.eml")
	if err := os.WriteFile(msgFile, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	script := `import dkim, sys
msg = open(sys.argv[1], 'rb').read()
key = open(sys.argv[2], 'rb').read()
sig = dkim.sign(msg, b'peer2026', b'peer.example', key,
                canonicalize=(b'relaxed', b'simple'),
                include_headers=[b'from', b'to', b'subject', b'date', b'message-id'])
sys.stdout.buffer.write(sig + msg)
`
	out, err := exec.Command(python, "-c", script, msgFile, keyFile).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("python3-dkim sign: %v\n%s", err, stderr)
	}
	pkix, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	res := &dnsmock.Resolver{TXT: map[string][]string{
		"peer2026._domainkey.peer.example": {"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pkix)},
		"_dmarc.peer.example":              {"v=DMARC1; p=reject"},
	}}
	v := &Verifier{Resolver: res, AuthservID: "mx.mailgate.test"}
	vd := v.Verify(context.Background(), nil, out)
	if vd.DKIM != "pass" || vd.DMARC != "pass" || !vd.Verified || !slices.Equal(vd.DKIMDomains, []string{"peer.example"}) {
		t.Fatalf("dkimpy-signed message: %+v", vd)
	}
	tampered := bytes.Replace(out, []byte("on fire"), []byte("fine!!!"), 1)
	vd = v.Verify(context.Background(), nil, tampered)
	if vd.DKIM != "fail" || vd.Verified || vd.Disposition != "reject" {
		t.Fatalf("tampered dkimpy-signed message: %+v", vd)
	}
}
