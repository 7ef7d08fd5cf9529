package pgp

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

const notmuchFP = "9A3AFE6C60065A148FD4B58A7E6ABE924645CC60"

// notmuchExpect is what each sample of testdata/pgp-mime/notmuch yields when the
// notmuch test key is both the gateway key and the sender's known key.
var notmuchExpect = map[string]struct {
	err      error  // nil: decrypts
	contains string // in Inner, or in the error text
	signed   bool
	wrapped  bool
	verify   bool // VerifySigned succeeds with the notmuch key
}{
	"crypto--basic-encrypted.eml":                                        {contains: `The password is "abcd1234!"`},
	"crypto--encrypted-rfc822-attachment":                                {contains: "Content-Type: message/rfc822"},
	"crypto--encrypted-signed.eml":                                       {contains: "keeper of the Eddystone Light", signed: true},
	"crypto--simple-encrypted":                                           {err: ErrUndecryptable, contains: "not encrypted to the gateway key"},
	"protected-headers--double-wrapped-with-phony-protected-header.eml":  {contains: "Subject: this should not show up"},
	"protected-headers--encrypted-message-with-forwarded-attachment.eml": {contains: "This is a simple forwarded message"},
	"protected-headers--encrypted-signed-not-masked.eml":                 {contains: "My Rhinoceros likes donuts", signed: true},
	"protected-headers--encrypted-signed.eml":                            {contains: "Subject: Rhinoceros dinner", signed: true},
	"protected-headers--misplaced-protected-header.eml":                  {contains: "wrongly-placed"},
	"protected-headers--nested-rfc822-message.eml":                       {contains: "Thanks, Alexey Melnikov!"},
	"protected-headers--no-protected-header-attribute.eml":               {contains: "This is the sekrit message"},
	"protected-headers--phony-protected-header-bad-encryption.eml":       {err: ErrUndecryptable, contains: "malformed"},
	"protected-headers--protected-header.eml":                            {contains: "Subject: This is a protected header"},
	"protected-headers--protected-with-legacy-display.eml":               {contains: "protected-headers=\"v1\"", signed: true},
	"protected-headers--signed-protected-header.eml":                     {err: ErrNotEncrypted, verify: true},
	"protected-headers--simple-signed-mail.eml":                          {err: ErrNotEncrypted, verify: true},
	"protected-headers--smime-enc+legacy-disp.eml":                       {err: ErrUndecryptable, contains: "S/MIME"},
	"protected-headers--smime-multipart-signed.eml":                      {err: ErrNotEncrypted},
	"protected-headers--smime-onepart-signed.eml":                        {err: ErrNotEncrypted},
	"protected-headers--smime-sign+enc+legacy-disp.eml":                  {err: ErrUndecryptable, contains: "S/MIME"},
	"protected-headers--smime-sign+enc.eml":                              {err: ErrUndecryptable, contains: "S/MIME"},
	"protected-headers--subjectless-protected-header.eml":                {contains: "This is the sekrit message"},
	"protected-headers--wrapped-protected-header.eml":                    {contains: "Subject: This is a protected header", wrapped: true},
}

func TestNotmuchCorpus(t *testing.T) {
	dir := notmuchDir(t)
	k := notmuchKey(t)
	known := knownOnly(k.entity)
	files, err := filepath.Glob(filepath.Join(dir, "*--*"))
	if err != nil || len(files) != len(notmuchExpect) {
		t.Fatalf("found %d samples, the table has %d (%v)", len(files), len(notmuchExpect), err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		want, ok := notmuchExpect[name]
		if !ok {
			t.Errorf("%s: not in the table", name)
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Decrypt(raw, k, known)
		switch {
		case want.err != nil:
			if !errors.Is(err, want.err) || !strings.Contains(err.Error(), want.contains) {
				t.Errorf("%s: err %v, want %v mentioning %q", name, err, want.err, want.contains)
			}
		case err != nil:
			t.Errorf("%s: %v", name, err)
		default:
			if !res.Encrypted || !bytes.Contains(res.Inner, []byte(want.contains)) {
				t.Errorf("%s: encrypted=%v, inner lacks %q:\n%s", name, res.Encrypted, want.contains, res.Inner)
			}
			if res.Signed != want.signed || res.Wrapped != want.wrapped {
				t.Errorf("%s: signed=%v wrapped=%v, want %v %v", name, res.Signed, res.Wrapped, want.signed, want.wrapped)
			}
			if want.signed && (res.SignedBy != notmuchFP || res.SignatureErr != "") {
				t.Errorf("%s: signed by %q (%s)", name, res.SignedBy, res.SignatureErr)
			}
			if !want.signed && (res.SignedBy != "" || res.SignatureErr != "") {
				t.Errorf("%s: unsigned yet SignedBy=%q SignatureErr=%q", name, res.SignedBy, res.SignatureErr)
			}
		}
		v, err := VerifySigned(raw, known)
		if want.verify {
			if err != nil || !v.Signed || v.SignedBy != notmuchFP || v.SignatureErr != "" {
				t.Errorf("%s: VerifySigned %+v %v", name, v, err)
			}
		} else if !errors.Is(err, ErrNotSigned) {
			t.Errorf("%s: VerifySigned err %v, want ErrNotSigned", name, err)
		}
	}
}

// A signature by a key nobody vouched for is reported, never turned into SignedBy.
func TestNotmuchSignedByUnknownKey(t *testing.T) {
	k := notmuchKey(t)
	raw, err := os.ReadFile(filepath.Join(notmuchDir(t), "crypto--encrypted-signed.eml"))
	if err != nil {
		t.Fatal(err)
	}
	other := customer(t, "test_suite@notmuchmail.org", time.Now(), 0)
	for name, known := range map[string]KnownKeys{"nil": nil, "another key": knownOnly(other)} {
		res, err := Decrypt(raw, k, known)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Signed || res.SignedBy != "" || !strings.Contains(res.SignatureErr, "not the key known") {
			t.Errorf("%s: signed=%v by=%q err=%q", name, res.Signed, res.SignedBy, res.SignatureErr)
		}
	}
}

// customerSends is a customer's client: sign with its key, encrypt to the gateway, frame RFC 3156.
func customerSends(t *testing.T, cust *openpgp.Entity, gw *Key, inner string) []byte {
	t.Helper()
	body, ct, err := Encrypt([]byte(inner), publicOnly(t, gw.Entity()), asKey(cust))
	if err != nil {
		t.Fatal(err)
	}
	return customerMail("carol@example.net", ct, body)
}

func TestDecryptFromCustomer(t *testing.T) {
	gw := testGateway(t)
	carol := customer(t, "carol@example.net", time.Now(), 0)
	inner := "Content-Type: text/plain; charset=utf-8\r\n\r\nMy order #1234 never arrived.\r\n"
	raw := customerSends(t, carol, gw, inner)

	res, err := Decrypt(raw, gw, knownOnly(publicOnly(t, carol)))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Encrypted || !res.Signed || res.SignedBy != fingerprint(carol) || res.SignatureErr != "" || res.Inline || res.Wrapped {
		t.Errorf("result %+v", res)
	}
	if string(res.Inner) != inner {
		t.Errorf("inner %q", res.Inner)
	}

	// Through the keyring, as inbound would: the sender's stored key.
	kr, _, _, _ := newTestKeyring(t)
	if _, err := kr.Import("carol@example.net", armoredPublic(t, carol), "cli"); err != nil {
		t.Fatal(err)
	}
	res, err = Decrypt(raw, gw, kr.KnownFor("Carol@example.net"))
	if err != nil || res.SignedBy != fingerprint(carol) {
		t.Errorf("with KnownFor: %+v %v", res, err)
	}
	// Someone else's key for that address means the signature is not Carol's.
	res, err = Decrypt(raw, gw, kr.KnownFor("dave@example.net"))
	if err != nil || res.SignedBy != "" || res.SignatureErr == "" {
		t.Errorf("unknown sender: %+v %v", res, err)
	}
}

func TestDecryptInline(t *testing.T) {
	gw := testGateway(t)
	var armored bytes.Buffer
	aw, _ := armor.Encode(&armored, openpgp.MessageType, nil)
	pw, err := openpgp.Encrypt(aw, []*openpgp.Entity{publicOnly(t, gw.Entity())}, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(pw, "Grüße, inline.\n")
	pw.Close()
	aw.Close()
	text := "Hi,\n\n" + armored.String() + "\n-- \nsig\n"

	res, err := Decrypt(customerMail("carol@example.net", "text/plain; charset=utf-8", []byte(text)), gw, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Inline || !res.Encrypted || res.Signed {
		t.Errorf("result %+v", res)
	}
	if want := "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, inline.\n"; string(res.Inner) != want {
		t.Errorf("inner %q", res.Inner)
	}

	// The same inside a quoted-printable part of a multipart/alternative.
	body := "--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		strings.ReplaceAll(text, "=", "=3D") + "\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--b--\r\n"
	res, err = Decrypt(customerMail("carol@example.net", `multipart/alternative; boundary="b"`, []byte(body)), gw, nil)
	if err != nil || !res.Inline || !bytes.Contains(res.Inner, []byte("charset=iso-8859-1")) {
		t.Errorf("in multipart: %+v %v", res, err)
	}
}

// reframe decodes Encrypt's armored payload, lets mutate change the binary, and frames it again.
func reframe(t *testing.T, raw []byte, mutate func([]byte) []byte) []byte {
	t.Helper()
	blk := armorBlock(raw, "PGP MESSAGE")
	ab, err := armor.Decode(bytes.NewReader(blk))
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := io.ReadAll(ab.Body)
	bin = mutate(bin)
	var out bytes.Buffer
	aw, _ := armor.Encode(&out, openpgp.MessageType, nil)
	aw.Write(bin)
	aw.Close()
	return bytes.Replace(raw, blk, bytes.ReplaceAll(out.Bytes(), []byte("\n"), []byte("\r\n")), 1)
}

func TestDecryptDamaged(t *testing.T) {
	gw := testGateway(t)
	carol := customer(t, "carol@example.net", time.Now(), 0)
	raw := customerSends(t, carol, gw, "Content-Type: text/plain\r\n\r\n"+strings.Repeat("secret text ", 200)+"\r\n")

	flipped := reframe(t, raw, func(b []byte) []byte {
		b = bytes.Clone(b)
		b[len(b)-30] ^= 0x40 // inside the encrypted data, near the MDC
		return b
	})
	truncated := reframe(t, raw, func(b []byte) []byte { return b[:len(b)/2] })
	// A line of base64 lost in transit.
	lines := strings.Split(string(raw), "\r\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "-----BEGIN PGP MESSAGE") {
			lines = append(lines[:i+5], lines[i+6:]...)
			break
		}
	}
	armorBroken := []byte(strings.Join(lines, "\r\n"))

	for name, c := range map[string]struct {
		raw  []byte
		want string
	}{
		"no boundary":     {customerMail("c@example.net", "multipart/encrypted", []byte("hi\r\n")), "structure is broken"},
		"no payload part": {customerMail("c@example.net", `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`, []byte("--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b--\r\n")), "structure is broken"},
		"bit flip":        {flipped, "changed or damaged"},
		"truncated":       {truncated, "changed or damaged"},
		"broken armor":    {armorBroken, ""},
		"not a message":   {customerMail("c@example.net", `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`, []byte("--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nAAAA\r\n-----END PGP MESSAGE-----\r\n--b--\r\n")), ""},
	} {
		res, err := Decrypt(c.raw, gw, nil)
		var ue *UndecryptableError
		if !errors.As(err, &ue) || !errors.Is(err, ErrUndecryptable) || ue.Reason == "" || res != nil {
			t.Errorf("%s: result %v, err %v", name, res != nil, err)
			continue
		}
		t.Logf("%s: %s", name, ue.Reason)
		if !strings.Contains(ue.Reason, c.want) {
			t.Errorf("%s: reason %q, want %q", name, ue.Reason, c.want)
		}
	}
}

func TestDecryptNotForUs(t *testing.T) {
	gw := testGateway(t)
	other := customer(t, "other@example.org", time.Now(), 0)
	body, ct, err := Encrypt([]byte("Content-Type: text/plain\r\n\r\nhi\r\n"), publicOnly(t, other), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Decrypt(customerMail("c@example.net", ct, body), gw, nil)
	if !errors.Is(err, ErrUndecryptable) || !strings.Contains(err.Error(), other.Subkeys[0].PublicKey.KeyIdString()) {
		t.Errorf("err %v, want it to name the recipient key %s", err, other.Subkeys[0].PublicKey.KeyIdString())
	}
}

func TestDecryptNotEncrypted(t *testing.T) {
	gw := testGateway(t)
	for name, raw := range map[string][]byte{
		"plain":   customerMail("c@example.net", "text/plain", []byte("hello\r\n")),
		"empty":   nil,
		"no body": []byte("From: x@example.net\r\n"),
		"junk":    []byte("\x00\xff\xfe-----BEGIN PGP MESSAGE-----"),
		"html":    customerMail("c@example.net", "text/html", []byte("-----BEGIN PGP MESSAGE-----\r\n")),
		"mixed":   customerMail("c@example.net", `multipart/mixed; boundary="x"`, []byte("--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n")),
	} {
		if _, err := Decrypt(raw, gw, nil); !errors.Is(err, ErrNotEncrypted) {
			t.Errorf("%s: %v, want ErrNotEncrypted", name, err)
		}
	}
}

func TestDecryptOnlySigned(t *testing.T) {
	gw := testGateway(t)
	carol := customer(t, "carol@example.net", time.Now(), 0)
	var armored bytes.Buffer
	aw, _ := armor.Encode(&armored, openpgp.MessageType, nil)
	w, err := openpgp.SignWithParams(aw, []*openpgp.Entity{carol}, &openpgp.SignParams{})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "Content-Type: text/plain\r\n\r\nnot secret\r\n")
	w.Close()
	aw.Close()
	raw := customerMail("carol@example.net", "text/plain", armored.Bytes())
	if _, err := Decrypt(raw, gw, nil); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("signed-only PGP MESSAGE: %v", err)
	}
}

func TestDecryptCompressionBomb(t *testing.T) {
	// A gateway key that asks for compression, so the sender compresses.
	cfg := newConfig(time.Time{})
	cfg.DefaultCompressionAlgo = packet.CompressionZLIB
	ent, err := openpgp.NewEntity("GW", "", "support@example.com", cfg)
	if err != nil {
		t.Fatal(err)
	}
	gw := asKey(ent)
	send := func(size int) []byte {
		var armored bytes.Buffer
		aw, _ := armor.Encode(&armored, openpgp.MessageType, nil)
		scfg := newConfig(time.Time{})
		scfg.DefaultCompressionAlgo = packet.CompressionZLIB
		scfg.CompressionConfig = &packet.CompressionConfig{Level: 9}
		pw, err := openpgp.Encrypt(aw, []*openpgp.Entity{publicOnly(t, ent)}, nil, nil, nil, scfg)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(pw, "Content-Type: text/plain\r\n\r\n")
		pw.Write(make([]byte, size))
		pw.Close()
		aw.Close()
		return customerMail("c@example.net", "text/plain", armored.Bytes())
	}
	old := maxDecrypted
	maxDecrypted = 1 << 20
	defer func() { maxDecrypted = old }()

	small := send(100 << 10)
	if len(small) > 10<<10 {
		t.Fatalf("the message is not compressed (%d bytes)", len(small))
	}
	if res, err := Decrypt(small, gw, nil); err != nil || len(res.Inner) < 100<<10 {
		t.Fatalf("compressed message: %v", err)
	}
	bomb := send(8 << 20)
	_, err = Decrypt(bomb, gw, nil)
	if !errors.Is(err, ErrUndecryptable) || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("bomb (%d bytes expanding to 8 MiB): %v", len(bomb), err)
	}
}

// signedEntity builds an RFC 3156 multipart/signed entity over part, signed by signer.
func signedEntity(t *testing.T, signer *openpgp.Entity, part string) []byte {
	t.Helper()
	var sig bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&sig, []*openpgp.Entity{signer}, strings.NewReader(part), &openpgp.SignParams{}); err != nil {
		t.Fatal(err)
	}
	return []byte("Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"sig\"\r\n\r\n" +
		"--sig\r\n" + part + "\r\n--sig\r\nContent-Type: application/pgp-signature\r\n\r\n" +
		strings.ReplaceAll(sig.String(), "\n", "\r\n") + "\r\n--sig--\r\n")
}

func TestVerifySigned(t *testing.T) {
	carol := customer(t, "carol@example.net", time.Now(), 0)
	part := "Content-Type: text/plain; charset=utf-8\r\n\r\nPlease close my account.\r\n"
	raw := append([]byte("From: carol@example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n"), signedEntity(t, carol, part)...)
	known := knownOnly(publicOnly(t, carol))

	res, err := VerifySigned(raw, known)
	if err != nil || !res.Signed || res.SignedBy != fingerprint(carol) || res.SignatureErr != "" || string(res.Inner) != part {
		t.Fatalf("%+v %v", res, err)
	}
	// Stored with bare LF (a maildir, a mail client's export): still the signed bytes.
	lf := bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	if res, err := VerifySigned(lf, known); err != nil || res.SignedBy != fingerprint(carol) {
		t.Errorf("LF copy: %+v %v", res, err)
	}
	tampered := bytes.Replace(raw, []byte("close"), []byte("clone"), 1)
	if res, err := VerifySigned(tampered, known); err != nil || res.SignedBy != "" || !strings.Contains(res.SignatureErr, "does not verify") {
		t.Errorf("tampered: %+v %v", res, err)
	}
	if res, err := VerifySigned(raw, nil); err != nil || res.SignedBy != "" || !strings.Contains(res.SignatureErr, "not the key known") {
		t.Errorf("unknown key: %+v %v", res, err)
	}
	noSig := bytes.Replace(raw, []byte("Content-Type: application/pgp-signature\r\n\r\n"), []byte("Content-Type: application/pgp-signature\r\n\r\nxx"), 1)
	if res, err := VerifySigned(noSig, known); err != nil || res.SignedBy != "" || res.SignatureErr == "" {
		t.Errorf("damaged signature: %+v %v", res, err)
	}
	broken := bytes.Replace(raw, []byte("--sig--"), []byte("--zzz--"), 1)
	broken = bytes.Replace(broken, []byte("\r\n--sig\r\nContent-Type: application/pgp-signature"), []byte("\r\nContent-Type: application/pgp-signature"), 1)
	if _, err := VerifySigned(broken, known); !errors.Is(err, ErrNotSigned) {
		t.Errorf("broken structure: %v", err)
	}

	// Signed, then encrypted as a whole (RFC 3156 6.1): Decrypt reports the inner signature.
	gw := testGateway(t)
	body, ct, err := Encrypt(signedEntity(t, carol, part), publicOnly(t, gw.Entity()), nil)
	if err != nil {
		t.Fatal(err)
	}
	dres, err := Decrypt(customerMail("carol@example.net", ct, body), gw, known)
	if err != nil || !dres.Encrypted || !dres.Signed || dres.SignedBy != fingerprint(carol) {
		t.Errorf("signed then encrypted: %+v %v", dres, err)
	}
}
