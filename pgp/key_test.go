package pgp

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

func TestGenerateKeyShape(t *testing.T) {
	k := testGateway(t)
	e := k.Entity()
	if e.PrimaryKey.Version != 4 || e.PrimaryKey.PubKeyAlgo != packet.PubKeyAlgoEdDSA {
		t.Errorf("primary key: version %d algo %d, want v4 EdDSA", e.PrimaryKey.Version, e.PrimaryKey.PubKeyAlgo)
	}
	if len(e.Subkeys) != 1 || e.Subkeys[0].PublicKey.PubKeyAlgo != packet.PubKeyAlgoECDH {
		t.Fatalf("want one ECDH subkey, got %d subkeys", len(e.Subkeys))
	}
	if c, _ := e.Subkeys[0].PublicKey.Curve(); c != packet.Curve25519 {
		t.Errorf("subkey curve %s, want Curve25519", c)
	}
	now := time.Now()
	if _, ok := e.SigningKey(now, nil); !ok {
		t.Error("no signing key")
	}
	enc, err := e.EncryptionKeyWithError(now, nil)
	if err != nil || enc.PublicKey.KeyId != e.Subkeys[0].PublicKey.KeyId {
		t.Errorf("encryption key: %v (want the subkey)", err)
	}
	if !regexp.MustCompile(`^[0-9A-F]{40}$`).MatchString(k.Fingerprint()) {
		t.Errorf("fingerprint %q", k.Fingerprint())
	}
	if got := strings.Join(k.Addresses(), ","); got != "billing@example.com,support@example.com" {
		t.Errorf("addresses %s", got)
	}

	pub := k.ArmoredPublic()
	if !bytes.HasPrefix(pub, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----")) {
		t.Fatalf("ArmoredPublic starts %q", pub[:40])
	}
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(pub))
	if err != nil || len(el) != 1 {
		t.Fatalf("read public: %v", err)
	}
	if el[0].PrivateKey != nil {
		t.Fatal("ArmoredPublic leaks the private key")
	}
	if fingerprint(el[0]) != k.Fingerprint() {
		t.Error("public key has another fingerprint")
	}
}

func TestGenerateKeyRejects(t *testing.T) {
	for _, c := range []struct{ name, email string }{
		{"Evil <x>", "support@example.com"},
		{"Support", "not-an-address"},
		{"Support", "a@b\r\nBcc: x@y"},
	} {
		if _, err := GenerateKey(c.name, c.email); err == nil {
			t.Errorf("GenerateKey(%q, %q) succeeded", c.name, c.email)
		}
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	armored, err := GenerateKey("Support", "support@example.com")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "gateway.asc")
	if err := os.WriteFile(file, armored, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKey(file)
	if err != nil {
		t.Fatal(err)
	}
	if k.Entity().PrivateKey == nil || k.Entity().PrivateKey.Encrypted {
		t.Fatal("loaded key cannot sign")
	}
	if _, err := LoadKey(filepath.Join(dir, "missing.asc")); err == nil {
		t.Error("LoadKey of a missing file succeeded")
	}
}

func TestParseKeyRejects(t *testing.T) {
	e := customer(t, "x@example.com", time.Now(), 0)
	locked := customer(t, "y@example.com", time.Now(), 0)
	if err := locked.EncryptPrivateKeys([]byte("secret"), nil); err != nil {
		t.Fatal(err)
	}
	var lockedArmor bytes.Buffer
	lockedArmor.Write(armoredPrivateRaw(t, locked))
	expired := customer(t, "z@example.com", time.Now().Add(-48*time.Hour), 3600)

	cases := []struct {
		name, data, want string
	}{
		{"public only", string(armoredPublic(t, e)), "public key only"},
		{"passphrase", lockedArmor.String(), "passphrase"},
		{"two keys", string(armoredPrivate(t, e)) + string(armoredPrivate(t, expired)), "exactly one key"},
		{"expired", string(armoredPrivate(t, expired)), "signing key"},
		{"garbage", "hello", "not an armored"},
	}
	for _, c := range cases {
		_, err := ParseKey([]byte(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
	}
}

// armoredPrivateRaw serializes without re-signing (a locked key cannot sign).
func armoredPrivateRaw(t *testing.T, e *openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := e.SerializePrivateWithoutSigning(&b, nil); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w, _ := armor.Encode(&out, openpgp.PrivateKeyType, nil)
	w.Write(b.Bytes())
	w.Close()
	return out.Bytes()
}
