package pgp

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
)

// Interop with GnuPG (Debian's gnupg 2.2): the peer customers actually use. Each test has its
// own GNUPGHOME and stops its own gpg-agent at the end.

type gnupg struct {
	t    *testing.T
	home string
}

func newGnuPG(t *testing.T) *gnupg {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Fatalf("gpg is required for the interop tests (Debian package gnupg): %v", err)
	}
	// Short path: the agent's socket path must fit in sun_path.
	home, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	g := &gnupg{t: t, home: home}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	return g
}

// run runs gpg with the test's home and batch options; status lines go to the returned status.
func (g *gnupg) run(stdin []byte, args ...string) (stdout []byte, status string, err error) {
	g.t.Helper()
	base := []string{"--homedir", g.home, "--batch", "--no-tty", "--pinentry-mode", "loopback",
		"--passphrase", "", "--trust-model", "always", "--status-fd", "2"}
	cmd := exec.Command("gpg", append(base, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

func (g *gnupg) must(stdin []byte, args ...string) ([]byte, string) {
	g.t.Helper()
	out, status, err := g.run(stdin, args...)
	if err != nil {
		g.t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, status)
	}
	return out, status
}

// genKey makes an ed25519/cv25519 key (GnuPG's future-default) and returns its fingerprint.
func (g *gnupg) genKey(uid, expire string) string {
	g.t.Helper()
	g.must(nil, "--quick-generate-key", uid, "future-default", "default", expire)
	out, _ := g.must(nil, "--with-colons", "--list-keys", uid)
	m := regexp.MustCompile(`(?m)^fpr:+([0-9A-F]{40}):`).FindSubmatch(out)
	if m == nil {
		g.t.Fatalf("no fingerprint for %s in\n%s", uid, out)
	}
	return string(m[1])
}

func (g *gnupg) file(name string, data []byte) string {
	g.t.Helper()
	p := filepath.Join(g.home, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		g.t.Fatal(err)
	}
	return p
}

// (a) gpg makes a customer key; mailgate imports it, encrypts a signed reply; gpg decrypts the
// PGP/MIME payload and verifies the gateway's signature.
func TestGnuPGReadsOurReply(t *testing.T) {
	g := newGnuPG(t)
	carolFP := g.genKey("Carol <carol@example.net>", "never")
	pub, _ := g.must(nil, "--armor", "--export", "carol@example.net")

	kr, _, _, _ := newTestKeyring(t)
	fp, err := kr.Import("carol@example.net", pub, "cli")
	if err != nil || fp != carolFP {
		t.Fatalf("import gpg's key: %s %v (gpg says %s)", fp, err, carolFP)
	}
	to, _, err := kr.Lookup("carol@example.net")
	if err != nil {
		t.Fatal(err)
	}
	gw := testGateway(t)
	inner := ProtectedInner("Your refund [#42]", "Example Support <support@example.com>", "Carol <carol@example.net>",
		"Mon, 02 Jan 2006 15:04:05 +0000", "<reply-42@example.com>", []byte("Hello Carol,\n\nyour refund was sent today.\n"))
	body, ct, err := Encrypt(inner, to, gw)
	if err != nil {
		t.Fatal(err)
	}
	outer := append([]byte("From: support@example.com\r\nTo: carol@example.net\r\nSubject: "+OuterSubject+
		"\r\nMIME-Version: 1.0\r\nContent-Type: "+ct+"\r\n\r\n"), body...)

	// Take the message apart as a mail client would.
	ent, err := message.Read(bytes.NewReader(outer))
	if err != nil {
		t.Fatal(err)
	}
	mr := ent.MultipartReader()
	if mr == nil {
		t.Fatal("outer message is not multipart")
	}
	var payload []byte
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if typ, _, _ := p.Header.ContentType(); typ == "application/octet-stream" {
			payload, _ = io.ReadAll(p.Body)
		}
	}
	if payload == nil {
		t.Fatal("no application/octet-stream part")
	}

	g.must(gw.ArmoredPublic(), "--import")
	plain, status := g.must(payload, "--decrypt")
	for _, want := range []string{"[GNUPG:] DECRYPTION_OKAY", "[GNUPG:] GOODSIG ", "[GNUPG:] VALIDSIG " + gw.Fingerprint()} {
		if !strings.Contains(status, want) {
			t.Errorf("gpg status lacks %q:\n%s", want, status)
		}
	}
	if strings.Contains(status, "BADSIG") || strings.Contains(status, "ERRSIG") {
		t.Errorf("gpg status:\n%s", status)
	}
	if !bytes.Equal(plain, inner) {
		t.Errorf("gpg decrypted\n%q\nwant\n%q", plain, inner)
	}
	if !bytes.Contains(plain, []byte("Subject: Your refund [#42]")) || bytes.Contains(outer, []byte("refund")) {
		t.Error("the real subject must be inside only")
	}
}

// (b) gpg encrypts and signs a PGP/MIME mail to the gateway key; Decrypt reads it and names the
// customer's key. A multipart/signed mail from gpg verifies too.
func TestGnuPGWritesToUs(t *testing.T) {
	g := newGnuPG(t)
	carolFP := g.genKey("Carol <carol@example.net>", "never")
	pub, _ := g.must(nil, "--armor", "--export", "carol@example.net")
	gw := testGateway(t)
	g.must(gw.ArmoredPublic(), "--import")

	kr, _, _, _ := newTestKeyring(t)
	if _, err := kr.Import("carol@example.net", pub, "cli"); err != nil {
		t.Fatal(err)
	}
	inner := "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHallo, mein Drucker brennt. Grüße, Carol\r\n"
	armored, _ := g.must([]byte(inner), "--armor", "--encrypt", "--sign", "-r", "support@example.com", "-u", "carol@example.net")
	raw := customerMail("carol@example.net", `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="gpg"`,
		[]byte("--gpg\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--gpg\r\nContent-Type: application/octet-stream\r\n\r\n"+
			strings.ReplaceAll(string(armored), "\n", "\r\n")+"\r\n--gpg--\r\n"))

	res, err := Decrypt(raw, gw, kr.KnownFor("carol@example.net"))
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Inner) != inner {
		t.Errorf("inner %q", res.Inner)
	}
	if !res.Encrypted || !res.Signed || res.SignedBy != carolFP || res.SignatureErr != "" {
		t.Errorf("encrypted=%v signed=%v by=%q (want %s) err=%q", res.Encrypted, res.Signed, res.SignedBy, carolFP, res.SignatureErr)
	}
	// Without Carol's key on file the signature is reported, not trusted.
	res, err = Decrypt(raw, gw, nil)
	if err != nil || res.SignedBy != "" || res.SignatureErr == "" {
		t.Errorf("unknown signer: %+v %v", res.SignatureErr, err)
	}

	// multipart/signed (detached), as Enigmail/Thunderbird send unencrypted signed mail.
	part := "Content-Type: text/plain; charset=us-ascii\r\n\r\nPlease call me back.\r\n"
	sig, _ := g.must([]byte(part), "--armor", "--detach-sign", "--digest-algo", "SHA256", "-u", "carol@example.net")
	signed := customerMail("carol@example.net", `multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; boundary="s"`,
		[]byte("--s\r\n"+part+"\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\n"+strings.ReplaceAll(string(sig), "\n", "\r\n")+"\r\n--s--\r\n"))
	v, err := VerifySigned(signed, kr.KnownFor("carol@example.net"))
	if err != nil || v.SignedBy != carolFP || string(v.Inner) != part {
		t.Errorf("multipart/signed from gpg: %+v %v", v, err)
	}
}

// (c) A key made by GenerateKey imports into gpg (public and secret), has the expected
// algorithms there, and gpg encrypts to it.
func TestGnuPGAcceptsGeneratedKey(t *testing.T) {
	g := newGnuPG(t)
	armored, err := GenerateKey("Example Support", "support@example.com")
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKey(armored)
	if err != nil {
		t.Fatal(err)
	}
	_, status := g.must(armored, "--import")
	if !strings.Contains(status, "[GNUPG:] IMPORT_OK") || !strings.Contains(status, "[GNUPG:] IMPORT_RES") {
		t.Fatalf("import status:\n%s", status)
	}
	m := regexp.MustCompile(`\[GNUPG:\] IMPORT_RES (\d+) (?:\d+ ){8}(\d+) (\d+)`).FindStringSubmatch(status)
	if m == nil || m[1] != "1" || m[2] != "1" || m[3] != "1" {
		t.Errorf("want 1 key and 1 secret key read and imported, status:\n%s", status)
	}
	out, _ := g.must(nil, "--with-colons", "--list-secret-keys", "support@example.com")
	list := string(out)
	// sec: algo 22 (EdDSA) ed25519, capabilities sign+certify; ssb: algo 18 (ECDH) cv25519, encrypt.
	if !regexp.MustCompile(`(?m)^sec:[^:]*:255:22:[0-9A-F]{16}:[^\n]*:sc[ESC]*:[^\n]*:ed25519:`).MatchString(list) ||
		!regexp.MustCompile(`(?m)^ssb:[^:]*:255:18:[0-9A-F]{16}:[^\n]*:e:[^\n]*:cv25519:`).MatchString(list) ||
		!strings.Contains(list, "fpr:::::::::"+k.Fingerprint()+":") {
		t.Errorf("gpg's view of the key:\n%s", list)
	}

	plain := "Content-Type: text/plain\r\n\r\nencrypted by gpg to a mailgate key\r\n"
	enc, _ := g.must([]byte(plain), "--armor", "--encrypt", "-r", "support@example.com")
	raw := customerMail("dave@example.org", "text/plain", enc) // inline PGP this time
	res, err := Decrypt(raw, k, nil)
	if err != nil || !res.Inline || !bytes.HasSuffix(res.Inner, []byte(plain)) {
		t.Errorf("decrypt gpg's message: %v", err)
	}
	// And gpg decrypts with the imported secret key what mailgate encrypts to it.
	body, _, err := Encrypt([]byte(plain), publicOnly(t, k.Entity()), k)
	if err != nil {
		t.Fatal(err)
	}
	got, st := g.must(armorBlock(body, "PGP MESSAGE"), "--decrypt")
	if string(got) != plain || !strings.Contains(st, "[GNUPG:] GOODSIG") {
		t.Errorf("gpg with our secret key: %q\n%s", got, st)
	}
}

// (d) Keys from gpg through the policy: Autocrypt from an unverified sender teaches nothing; a
// key that gpg made to expire in a day is refused once the day is over; a key gpg revoked is
// refused by import and by Autocrypt.
func TestGnuPGKeysThroughPolicy(t *testing.T) {
	g := newGnuPG(t)
	kr, _, clk, changes := newTestKeyring(t)

	carolFP := g.genKey("Carol <carol@example.net>", "never")
	bin, _ := g.must(nil, "--export", "carol@example.net")
	header := "addr=carol@example.net; prefer-encrypt=mutual; keydata=" + base64.StdEncoding.EncodeToString(bin)
	if changed, err := kr.LearnAutocrypt("carol@example.net", false, header, clk.t); changed || !errors.Is(err, ErrNotLearned) {
		t.Fatalf("unverified: %v %v", changed, err)
	}
	if _, _, err := kr.Lookup("carol@example.net"); !errors.Is(err, ErrNoKey) {
		t.Fatalf("unverified Autocrypt taught a key: %v", err)
	}
	if len(*changes) != 0 {
		t.Fatal("change recorded for an unverified header")
	}
	if changed, err := kr.LearnAutocrypt("carol@example.net", true, header, clk.t); !changed || err != nil {
		t.Fatalf("verified: %v %v", changed, err)
	}
	if _, info, err := kr.Lookup("carol@example.net"); err != nil || info.Fingerprint != carolFP {
		t.Fatalf("lookup: %+v %v", info, err)
	}

	// Expires in a day (gpg); checked two days on.
	g.genKey("Eve <eve@example.net>", "1d")
	evePub, _ := g.must(nil, "--armor", "--export", "eve@example.net")
	clk.t = time.Now().Add(48 * time.Hour)
	if _, err := kr.Import("eve@example.net", evePub, "cli"); !errors.Is(err, ErrUnusableKey) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired gpg key: %v", err)
	}
	clk.t = time.Now()
	if _, err := kr.Import("eve@example.net", evePub, "cli"); err != nil {
		t.Errorf("the same key before it expires: %v", err)
	}

	// Revoked with the certificate gpg writes at key generation.
	revFP := g.genKey("Rev <rev@example.net>", "never")
	cert, err := os.ReadFile(filepath.Join(g.home, "openpgp-revocs.d", revFP+".rev"))
	if err != nil {
		t.Fatal(err)
	}
	// gpg guards the block with a leading ':' so it is not imported by accident.
	cert = bytes.Replace(cert, []byte(":-----BEGIN PGP PUBLIC KEY BLOCK-----"), []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----"), 1)
	g.must(cert, "--import")
	revPub, _ := g.must(nil, "--armor", "--export", "rev@example.net")
	if _, err := kr.Import("rev@example.net", revPub, "cli"); !errors.Is(err, ErrUnusableKey) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked gpg key: %v", err)
	}
	revBin, _ := g.must(nil, "--export", "rev@example.net")
	hdr := "addr=rev@example.net; keydata=" + base64.StdEncoding.EncodeToString(revBin)
	if changed, err := kr.LearnAutocrypt("rev@example.net", true, hdr, clk.t); changed || !strings.Contains(fmtErr(err), "revoked") {
		t.Errorf("revoked key by Autocrypt: %v %v", changed, err)
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
