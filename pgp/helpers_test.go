package pgp

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"mailgate/internal/testutil"
	"mailgate/store"
)

// gatewayOnce caches one generated gateway key: key generation is cheap, but tests that
// compare fingerprints want the same one.
var (
	gatewayOnce sync.Once
	gatewayKey  *Key
	gatewayErr  error
)

func testGateway(t testing.TB) *Key {
	t.Helper()
	gatewayOnce.Do(func() {
		armored, err := GenerateKey("Example Support", "support@example.com", "billing@example.com")
		if err != nil {
			gatewayErr = err
			return
		}
		gatewayKey, gatewayErr = ParseKey(armored)
	})
	if gatewayErr != nil {
		t.Fatal(gatewayErr)
	}
	return gatewayKey
}

// customer makes a customer's key pair with go-crypto; created and lifetime let a test build
// keys that have expired by now.
func customer(t testing.TB, email string, created time.Time, lifetime uint32) *openpgp.Entity {
	t.Helper()
	cfg := newConfig(created)
	cfg.KeyLifetimeSecs = lifetime
	e, err := openpgp.NewEntity("Customer", "", email, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// publicOnly re-reads the public half of e, as a customer would send it.
func publicOnly(t testing.TB, e *openpgp.Entity) *openpgp.Entity {
	t.Helper()
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(armoredPublic(t, e)))
	if err != nil || len(el) != 1 {
		t.Fatalf("re-read public key: %v (%d keys)", err, len(el))
	}
	return el[0]
}

func armoredPublic(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func armoredPrivate(t testing.TB, e *openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PrivateKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SerializePrivate(w, newConfig(time.Time{})); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// asKey wraps a customer's key pair as a *Key so Encrypt can sign with it (the customer's side
// of a test).
func asKey(e *openpgp.Entity) *Key { return &Key{entity: e} }

func knownOnly(e *openpgp.Entity) KnownKeys {
	return func(id uint64) *openpgp.Entity {
		if hasKeyID(e, id) {
			return e
		}
		return nil
	}
}

func openStore(t testing.TB) *store.DB {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(filepath.Join(t.TempDir(), "mailgate.db"), key, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func notmuchDir(t testing.TB) string {
	t.Helper()
	return testutil.Testdata(t, "pgp-mime/notmuch")
}

// notmuchKey is the published (insecure) test key of notmuch's suite; it decrypts the samples.
func notmuchKey(t testing.TB) *Key {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(notmuchDir(t), "openpgp4-secret-key.asc"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// customerMail wraps a body and its Content-Type into a complete message from a customer.
func customerMail(from, contentType string, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString("From: " + from + "\r\nTo: support@example.com\r\nSubject: ...\r\n")
	b.WriteString("Date: Mon, 02 Jan 2006 15:04:05 +0000\r\nMessage-ID: <t1@example.net>\r\nMIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: " + contentType + "\r\n\r\n")
	b.Write(body)
	return b.Bytes()
}
