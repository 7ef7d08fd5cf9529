package pgp

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// What outbound does with this file, for a reply to customer C whose key K is known
// (Keyring.Lookup(C) returned K without error):
//
//	inner := pgp.ProtectedInner(subject, from, to, date, msgID, text) // the real headers, inside
//	body, ct, err := pgp.Encrypt(inner, K, gatewayKey)                 // signed by the gateway, then encrypted
//	outer headers: From, To, Date, Message-ID, In-Reply-To, References as usual,
//	               Subject: pgp.OuterSubject ("..."), MIME-Version: 1.0, Content-Type: ct
//	outer body:    body (7-bit, CRLF), then DKIM-sign the whole outer message.
//	Every reply (encrypted or not) may carry Autocrypt: gatewayKey.AutocryptHeader(queueAddress).
//
// With [pgp] encrypt = "required" and Lookup failing, refuse the reply and show the error
// (ErrNoKey, or a *KeyError whose Reason says "expired", "revoked", ...).

// OuterSubject replaces the real Subject on the outside of an encrypted message (RFC 9788).
const OuterSubject = "..."

// Encrypt signs inner (a complete MIME entity: header, blank line, body) with signer and
// encrypts it to `to` in one OpenPGP message, framed as RFC 3156 multipart/encrypted. It
// returns the outer body and the Content-Type header value for it. signer may be nil (encrypt
// only). Bare LF in inner becomes CRLF, the canonical form of MIME.
func Encrypt(inner []byte, to *openpgp.Entity, signer *Key) ([]byte, string, error) {
	return EncryptTo(inner, []*openpgp.Entity{to}, signer)
}

// EncryptTo is Encrypt for several recipients (a reply with Cc'd participants): every key must
// be usable, so nobody on the message is left unable to read it.
func EncryptTo(inner []byte, recipients []*openpgp.Entity, signer *Key) ([]byte, string, error) {
	if len(recipients) == 0 {
		return nil, "", errors.New("encrypt: no recipient key")
	}
	now := time.Now()
	for _, to := range recipients {
		if to == nil {
			return nil, "", errors.New("encrypt: no recipient key")
		}
		if err := checkRecipient(to, "", now); err != nil {
			return nil, "", fmt.Errorf("encrypt: %w", err)
		}
	}
	cfg := newConfig(now)
	params := &openpgp.EncryptParams{Config: cfg}
	if signer != nil {
		params.Signers = []*openpgp.Entity{signer.entity}
	}

	var armored bytes.Buffer
	aw, err := armor.Encode(&armored, openpgp.MessageType, nil)
	if err != nil {
		return nil, "", fmt.Errorf("encrypt: %w", err)
	}
	pw, err := openpgp.EncryptWithParams(aw, recipients, nil, params)
	if err != nil {
		return nil, "", fmt.Errorf("encrypt to %s: %w", fingerprint(recipients[0]), err)
	}
	if _, err := pw.Write(crlf(inner)); err != nil {
		return nil, "", fmt.Errorf("encrypt: %w", err)
	}
	// Plaintext writer first (writes signature and MDC), then the armor (writes the checksum).
	if err := pw.Close(); err != nil {
		return nil, "", fmt.Errorf("encrypt: %w", err)
	}
	if err := aw.Close(); err != nil {
		return nil, "", fmt.Errorf("encrypt: %w", err)
	}

	boundary := newBoundary()
	var b bytes.Buffer
	b.Grow(armored.Len() + 512)
	b.WriteString("This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n")
	b.WriteString("--" + boundary + "\r\n")
	b.WriteString("Content-Type: application/pgp-encrypted\r\n")
	b.WriteString("Content-Description: PGP/MIME version identification\r\n\r\n")
	b.WriteString("Version: 1\r\n\r\n")
	b.WriteString("--" + boundary + "\r\n")
	b.WriteString("Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n")
	b.WriteString("Content-Description: OpenPGP encrypted message\r\n")
	b.WriteString("Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n")
	b.Write(crlf(armored.Bytes()))
	b.WriteString("\r\n--" + boundary + "--\r\n")
	ct := `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="` + boundary + `"`
	return b.Bytes(), ct, nil
}

// ProtectedInner builds the entity to encrypt for a text reply: text/plain (UTF-8,
// quoted-printable, so it is 7-bit clean) marked protected-headers="v1", carrying the real
// From, To, Subject, Date and Message-ID. Header values are stripped of CR/LF (no header
// injection), non-ASCII is RFC 2047 encoded, and empty values are left out. date should be
// RFC 5322 (time.RFC1123Z); messageID may come with or without angle brackets.
func ProtectedInner(subject, from, to, date, messageID string, textPart []byte) []byte {
	var b bytes.Buffer
	b.WriteString("Content-Type: text/plain; charset=\"utf-8\"; protected-headers=\"v1\"\r\n")
	b.WriteString("Content-Transfer-Encoding: quoted-printable\r\n")
	writeHeader(&b, "From", addressValue(from))
	writeHeader(&b, "To", addressValue(to))
	writeHeader(&b, "Subject", mime.QEncoding.Encode("utf-8", oneLine(subject)))
	writeHeader(&b, "Date", oneLine(date))
	if id := strings.Trim(oneLine(messageID), "<> "); id != "" {
		writeHeader(&b, "Message-ID", "<"+id+">")
	}
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	// Writes into a bytes.Buffer cannot fail.
	_, _ = qp.Write(crlf(textPart))
	_ = qp.Close()
	if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// addressValue re-renders an address list (names RFC 2047 encoded); unparsable input is kept
// as one line.
func addressValue(v string) string {
	v = oneLine(v)
	list, err := mail.ParseAddressList(v)
	if err != nil || len(list) == 0 {
		return v
	}
	parts := make([]string, len(list))
	for i, a := range list {
		parts[i] = a.String()
	}
	return strings.Join(parts, ", ")
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\r\n", " ")
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s))
}

// writeHeader writes name: value folded at spaces near 76 columns.
func writeHeader(b *bytes.Buffer, name, value string) {
	if value == "" {
		return
	}
	line := name + ":"
	for _, word := range strings.Fields(value) {
		if len(line)+1+len(word) > 76 && strings.Contains(line, " ") {
			b.WriteString(line + "\r\n")
			line = ""
		}
		line += " " + word
	}
	b.WriteString(line + "\r\n")
}

// crlf turns bare LF into CRLF.
func crlf(p []byte) []byte {
	n := bytes.Count(p, []byte("\n")) - bytes.Count(p, []byte("\r\n"))
	if n == 0 {
		return p
	}
	out := make([]byte, 0, len(p)+n)
	for i, c := range p {
		if c == '\n' && (i == 0 || p[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

func newBoundary() string {
	var r [12]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails (Go 1.24+)
	return "=-mailgate-" + hex.EncodeToString(r[:])
}
