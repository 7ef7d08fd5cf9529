package outbound

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// signedHeaders are the fields every signature covers, each listed twice (over-signed, RFC
// 6376 8.15): a verifier hashes the bottom-most instance first and an empty value for the
// second, so a From, To, Cc, Subject or threading field added in transit breaks the signature
// instead of being shown to the reader. Fields a message lacks are listed too, which signs
// their absence: nobody can add a Reply-To, Sender or Cc later.
var signedHeaders = oversign("From", "Reply-To", "Sender", "To", "Cc", "Subject", "Date", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Auto-Submitted")

func oversign(keys ...string) []string {
	out := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		out = append(out, k, k)
	}
	return out
}

// minRSABits is what verifiers accept (RFC 8301 3.2 requires 1024; go-msgauth refuses less).
const minRSABits = 1024

// DKIMKey is one configured signing key.
type DKIMKey struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// Algorithm returns "rsa" or "ed25519".
func (k DKIMKey) Algorithm() string { return keyAlgorithm(k.Signer.Public()) }

// RecordName is where the key's TXT record lives: <selector>._domainkey.<domain>.
func (k DKIMKey) RecordName() string { return k.Selector + "._domainkey." + k.Domain }

// Record is the TXT record to publish for the key.
func (k DKIMKey) Record() string { return DNSRecord(k.Signer.Public()) }

// ZoneLine renders the record as one zone-file line, split into the 255-byte strings a TXT
// record is made of (an RSA-2048 key does not fit in one):
// mailgate._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=MIIB…" "…" )
func (k DKIMKey) ZoneLine() string { return ZoneLine(k.RecordName(), k.Record()) }

// ZoneLine renders a TXT record for name as a zone-file line in 255-byte strings.
func ZoneLine(name, txt string) string {
	var b strings.Builder
	b.WriteString(strings.TrimSuffix(name, ".") + ". IN TXT (")
	for len(txt) > 0 {
		n := min(255, len(txt))
		b.WriteString(` "` + strings.ReplaceAll(strings.ReplaceAll(txt[:n], `\`, `\\`), `"`, `\"`) + `"`)
		txt = txt[n:]
	}
	b.WriteString(" )")
	return b.String()
}

// LoadDKIMKey reads a PEM private key for DKIM: PKCS#1 RSA ("RSA PRIVATE KEY"), or PKCS#8
// ("PRIVATE KEY") holding RSA or Ed25519. The kind is detected from the contents, so either
// config field may hold either kind.
func LoadDKIMKey(file string) (crypto.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("dkim key: %w", err)
	}
	k, err := ParseDKIMKey(data)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s: %w", file, err)
	}
	return k, nil
}

// ParseDKIMKey parses what LoadDKIMKey reads.
func ParseDKIMKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found; write a PEM private key (mailgate init makes one)")
	}
	if b, _ := pem.Decode(rest); b != nil {
		return nil, errors.New("more than one PEM block; the file must hold exactly one private key")
	}
	if len(block.Headers) > 0 || strings.Contains(block.Type, "ENCRYPTED") {
		return nil, errors.New("the key is encrypted; mailgate needs an unencrypted key file with mode 0600")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key; write a PKCS#1 or PKCS#8 RSA key or a PKCS#8 Ed25519 key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key has %d bits; receivers ignore signatures under %d bits, make a 2048-bit key", k.N.BitLen(), minRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T; DKIM keys are RSA or Ed25519", key)
}

// GenerateDKIMKey makes a new signing key for `mailgate init`: kind "rsa" (2048 bits) or
// "ed25519". It returns the key as PKCS#8 PEM and the TXT record to publish for it.
func GenerateDKIMKey(kind string) (pemBytes []byte, dnsTXT string, err error) {
	var key crypto.Signer
	switch strings.ToLower(kind) {
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, "", fmt.Errorf("generate dkim key: kind %q is neither \"rsa\" nor \"ed25519\"", kind)
	}
	if err != nil {
		return nil, "", fmt.Errorf("generate dkim key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, "", fmt.Errorf("generate dkim key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), DNSRecord(key.Public()), nil
}

// DNSRecord returns the DKIM TXT record value for a public key (RFC 6376 3.6.1, RFC 8463):
// "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" or "v=DKIM1; k=ed25519; p=<base64 32 bytes>".
// A crypto.Signer is accepted too. Other key types give "".
func DNSRecord(key crypto.PublicKey) string {
	if s, ok := key.(crypto.Signer); ok {
		key = s.Public()
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return ""
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k)
	}
	return ""
}

func keyAlgorithm(pub crypto.PublicKey) string {
	switch pub.(type) {
	case *rsa.PublicKey:
		return "rsa"
	case ed25519.PublicKey:
		return "ed25519"
	}
	return "unknown"
}

// sign prepends one DKIM-Signature per key to msg, which must be the exact CRLF bytes that will
// be sent. Signatures are computed independently over the unsigned message, so their order
// does not matter to verifiers.
func sign(msg []byte, keys []DKIMKey) ([]byte, error) {
	if len(keys) == 0 {
		return msg, nil
	}
	var sigs bytes.Buffer
	for _, k := range keys {
		s, err := dkim.NewSigner(&dkim.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 k.Signer,
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             signedHeaders,
		})
		if err != nil {
			return nil, fmt.Errorf("dkim %s: %w", k.RecordName(), err)
		}
		if _, err := s.Write(msg); err != nil {
			s.Close()
			return nil, fmt.Errorf("dkim %s: %w", k.RecordName(), err)
		}
		// Signature panics unless Close succeeded, so check it first.
		if err := s.Close(); err != nil {
			return nil, fmt.Errorf("dkim %s: %w", k.RecordName(), err)
		}
		sigs.WriteString(s.Signature())
	}
	out := make([]byte, 0, sigs.Len()+len(msg))
	return append(append(out, sigs.Bytes()...), msg...), nil
}
