package pgp

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	"github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"
)

// parseEncrypted checks the RFC 3156 framing of Encrypt's output with go-message and returns
// the armored payload.
func parseEncrypted(t *testing.T, body []byte, ct string) []byte {
	t.Helper()
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" || params["boundary"] == "" {
		t.Fatalf("Content-Type %q: %v", ct, err)
	}
	for i, line := range strings.Split(string(body), "\r\n") {
		if len(line) > 78 || strings.Contains(line, "\n") {
			t.Fatalf("line %d not 7-bit mail safe: %q", i, line)
		}
	}
	for _, c := range body {
		if c >= 0x80 {
			t.Fatal("8-bit byte in the outer body")
		}
	}
	ent, err := message.Read(bytes.NewReader(wrapBody(ct, body)))
	if err != nil {
		t.Fatal(err)
	}
	mr := ent.MultipartReader()
	var parts [][]byte
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		typ, _, _ := p.Header.ContentType()
		parts = append(parts, b)
		types = append(types, typ)
	}
	if len(parts) != 2 || types[0] != "application/pgp-encrypted" || types[1] != "application/octet-stream" {
		t.Fatalf("parts %v", types)
	}
	if strings.TrimSpace(string(parts[0])) != "Version: 1" {
		t.Errorf("control part %q", parts[0])
	}
	return parts[1]
}

func wrapBody(ct string, body []byte) []byte {
	return append([]byte("MIME-Version: 1.0\r\nContent-Type: "+ct+"\r\n\r\n"), body...)
}

func TestEncryptCustomerReadsIt(t *testing.T) {
	gw := testGateway(t)
	carol := customer(t, "carol@example.net", time.Now(), 0)
	inner := ProtectedInner("Your ticket [#42]", "Example Support <support@example.com>", "carol@example.net",
		"Mon, 02 Jan 2006 15:04:05 +0000", "reply-1@example.com", []byte("Hello Carol,\nthe fix is out.\n"))

	body, ct, err := Encrypt(inner, publicOnly(t, carol), gw)
	if err != nil {
		t.Fatal(err)
	}
	payload := parseEncrypted(t, body, ct)
	if bytes.Contains(body, []byte("Your ticket")) || bytes.Contains(body, []byte("Carol,")) {
		t.Fatal("plaintext visible outside")
	}

	// Carol's side, with go-crypto directly: decrypt with her key, verify the gateway's signature.
	blk, err := armor.Decode(bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	ring := openpgp.EntityList{carol, publicOnly(t, gw.Entity())}
	md, err := openpgp.ReadMessage(blk.Body, ring, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatal(err)
	}
	if !md.IsEncrypted || !md.IsSigned || md.SignatureError != nil || md.SignedBy == nil ||
		fingerprint(md.SignedBy.Entity) != gw.Fingerprint() {
		t.Fatalf("encrypted=%v signed=%v sigerr=%v", md.IsEncrypted, md.IsSigned, md.SignatureError)
	}
	if !bytes.Equal(plain, inner) {
		t.Errorf("plaintext differs from the inner entity:\n%q\n%q", plain, inner)
	}
}

func TestEncryptRefusesUnusableKeys(t *testing.T) {
	gw := testGateway(t)
	expired := customer(t, "x@example.net", time.Now().Add(-72*time.Hour), 3600)
	if _, _, err := Encrypt([]byte("Content-Type: text/plain\r\n\r\nhi\r\n"), publicOnly(t, expired), gw); !errors.Is(err, ErrUnusableKey) {
		t.Errorf("expired: %v", err)
	}
	if _, _, err := Encrypt([]byte("x"), nil, gw); err == nil {
		t.Error("nil recipient accepted")
	}
}

func TestProtectedInner(t *testing.T) {
	inner := ProtectedInner("Grüße zu Ticket [#7]\r\nBcc: evil@example.org",
		"Jürgen Support <support@example.com>", "carol@example.net, \"Dave D.\" <dave@example.net>",
		"Mon, 02 Jan 2006 15:04:05 +0000", "<abc@example.com>",
		[]byte("Zeile eins\nZeile zwei mit Ümlaut und einer sehr langen Zeile, die umbrochen werden muss, weil sie länger als sechsundsiebzig Zeichen ist.\n"))

	for _, c := range inner {
		if c >= 0x80 {
			t.Fatal("inner entity is not 7-bit")
		}
	}
	if bytes.Contains(inner, []byte("\nBcc:")) {
		t.Fatal("header injection through the subject")
	}
	r, err := gomail.CreateReader(bytes.NewReader(inner))
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := r.Header.Subject()
	if subj != "Grüße zu Ticket [#7] Bcc: evil@example.org" {
		t.Errorf("subject %q", subj)
	}
	ct, params, _ := r.Header.ContentType()
	if ct != "text/plain" || params["protected-headers"] != "v1" || params["charset"] != "utf-8" {
		t.Errorf("content type %s %v", ct, params)
	}
	from, _ := r.Header.AddressList("From")
	to, _ := r.Header.AddressList("To")
	if len(from) != 1 || from[0].Name != "Jürgen Support" || len(to) != 2 || to[1].Address != "dave@example.net" {
		t.Errorf("from %v to %v", from, to)
	}
	if id, _ := r.Header.MessageID(); id != "abc@example.com" {
		t.Errorf("message-id %q", id)
	}
	if d, err := r.Header.Date(); err != nil || d.Year() != 2006 {
		t.Errorf("date %v %v", d, err)
	}
	p, err := r.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(p.Body)
	if !strings.Contains(string(text), "Zeile zwei mit Ümlaut") || !strings.Contains(string(text), "sechsundsiebzig Zeichen ist.") {
		t.Errorf("text %q", text)
	}
}
