// Package pgp owns mailgate's OpenPGP side: the gateway key, customers' public keys (admin
// import, Autocrypt, WKD), PGP/MIME encryption, signing, decryption and verification.
// It builds and reads MIME entities but never sends or receives mail itself.
package pgp

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// newConfig is the one place that decides algorithms. Keys are v4 EdDSA/Curve25519 and no AEAD
// preference is advertised, because GnuPG 2.2/2.4 read neither v6 keys nor SEIPDv2.
func newConfig(now time.Time) *packet.Config {
	cfg := &packet.Config{
		Algorithm:     packet.PubKeyAlgoEdDSA,
		Curve:         packet.Curve25519,
		DefaultHash:   crypto.SHA256,
		DefaultCipher: packet.CipherAES256,
	}
	if !now.IsZero() {
		cfg.Time = func() time.Time { return now }
	}
	return cfg
}

// Key is the gateway's own key pair, private part unlocked.
type Key struct {
	entity *openpgp.Entity
}

// GenerateKey creates the gateway key: an Ed25519 primary key that signs and certifies and a
// Curve25519 subkey that encrypts (v4 packets, readable by GnuPG), with one user ID per address
// (email first, then more), so WKD can publish it for every queue address. The result is an
// armored, unencrypted private key block for [pgp] key_file.
func GenerateKey(name, email string, more ...string) ([]byte, error) {
	if strings.ContainsAny(name, "()<>\x00\r\n") {
		return nil, fmt.Errorf("generate key: name %q must not contain ()<> or control characters", name)
	}
	addrs := append([]string{email}, more...)
	for _, a := range addrs {
		if _, _, err := splitAddr(a); err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
	}
	cfg := newConfig(time.Time{})
	e, err := openpgp.NewEntity(name, "", addrs[0], cfg)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	for _, a := range addrs[1:] {
		if err := e.AddUserId(name, "", a, cfg); err != nil {
			return nil, fmt.Errorf("generate key: add user id %s: %w", a, err)
		}
	}
	var out bytes.Buffer
	w, err := armor.Encode(&out, openpgp.PrivateKeyType, nil)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if err := e.SerializePrivate(w, cfg); err != nil {
		return nil, fmt.Errorf("generate key: serialize: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// LoadKey reads the gateway key from file (an armored, unencrypted private key block).
// Checking the file's mode is config's job.
func LoadKey(file string) (*Key, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("load pgp key: %w", err)
	}
	k, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("load pgp key %s: %w", file, err)
	}
	return k, nil
}

// ParseKey reads an armored private key block holding exactly one unencrypted key that can
// sign and decrypt now.
func ParseKey(armored []byte) (*Key, error) {
	if n := bytes.Count(armored, []byte("-----BEGIN PGP")); n > 1 {
		// The armor reader would silently take the first block.
		return nil, fmt.Errorf("the file holds %d armored blocks; it must hold exactly one key", n)
	}
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(armored))
	if err != nil {
		return nil, fmt.Errorf("not an armored OpenPGP private key: %w", err)
	}
	if len(el) != 1 {
		return nil, fmt.Errorf("the file holds %d keys; it must hold exactly one", len(el))
	}
	e := el[0]
	if e.PrivateKey == nil {
		return nil, errors.New("the file holds a public key only; mailgate needs the private key (gpg --export-secret-keys --armor)")
	}
	if e.PrivateKey.Encrypted || anySubkeyEncrypted(e) {
		return nil, errors.New("the private key is protected by a passphrase; export it without one " +
			"(gpg --passwd to remove it, or generate one with mailgate init) and protect the file with mode 0600")
	}
	now := time.Now()
	cfg := newConfig(now)
	if _, ok := e.SigningKey(now, cfg); !ok {
		return nil, errors.New("the key has no usable signing key (expired, revoked or missing)")
	}
	if _, err := e.EncryptionKeyWithError(now, cfg); err != nil {
		return nil, fmt.Errorf("the key cannot receive encrypted mail: %s", describeKeyError(err))
	}
	return &Key{entity: e}, nil
}

func anySubkeyEncrypted(e *openpgp.Entity) bool {
	for _, s := range e.Subkeys {
		if s.PrivateKey != nil && s.PrivateKey.Encrypted {
			return true
		}
	}
	return false
}

// Entity is the underlying go-crypto entity (private parts included): for tests and for
// callers that build their own OpenPGP messages.
func (k *Key) Entity() *openpgp.Entity { return k.entity }

// Fingerprint is the primary key's fingerprint in upper-case hex, as GnuPG prints it.
func (k *Key) Fingerprint() string { return fingerprint(k.entity) }

// ArmoredPublic is the public key, armored, for `mailgate pgp export-public`.
func (k *Key) ArmoredPublic() []byte {
	var out bytes.Buffer
	w, err := armor.Encode(&out, openpgp.PublicKeyType, nil)
	if err != nil {
		return nil
	}
	// Writes into a bytes.Buffer cannot fail.
	_ = k.entity.Serialize(w)
	_ = w.Close()
	out.WriteByte('\n')
	return out.Bytes()
}

// Addresses lists the (lower-cased) email addresses of the key's valid user IDs.
func (k *Key) Addresses() []string {
	seen := map[string]bool{}
	var out []string
	now := time.Now()
	cfg := newConfig(now)
	for _, id := range k.entity.Identities {
		if _, err := id.Verify(now, cfg); err != nil || id.UserId == nil {
			continue
		}
		a := strings.ToLower(id.UserId.Email)
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

func fingerprint(e *openpgp.Entity) string {
	return strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
}

// hasKeyID reports whether the primary key or a subkey of e has the given key id.
func hasKeyID(e *openpgp.Entity, id uint64) bool {
	if e == nil || e.PrimaryKey == nil {
		return false
	}
	if e.PrimaryKey.KeyId == id {
		return true
	}
	for _, s := range e.Subkeys {
		if s.PublicKey != nil && s.PublicKey.KeyId == id {
			return true
		}
	}
	return false
}

// splitAddr splits an addr-spec into local part and lower-cased domain.
func splitAddr(addr string) (local, domain string, err error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || strings.ContainsAny(addr, " \t\r\n<>()\x00") {
		return "", "", fmt.Errorf("%q is not an email address (want local@domain)", addr)
	}
	return addr[:at], strings.ToLower(addr[at+1:]), nil
}

// publicFor serializes the public key (binary) with only the user IDs that carry addr, for WKD
// and Autocrypt: a reader learns nothing about the gateway's other addresses.
func (k *Key) publicFor(addr string) ([]byte, bool) {
	e := *k.entity
	e.PrivateKey = nil
	e.Identities = map[string]*openpgp.Identity{}
	for name, id := range k.entity.Identities {
		if id.UserId != nil && strings.EqualFold(id.UserId.Email, addr) {
			e.Identities[name] = id
		}
	}
	if len(e.Identities) == 0 {
		return nil, false
	}
	var out bytes.Buffer
	if err := e.Serialize(&out); err != nil {
		return nil, false
	}
	return out.Bytes(), true
}
