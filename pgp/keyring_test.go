package pgp

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	pgperr "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"mailgate/store"
)

// clock is a settable time source for the keyring.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestKeyring(t *testing.T) (*Keyring, *store.DB, *clock, *[]Change) {
	t.Helper()
	db := openStore(t)
	clk := &clock{t: time.Now()}
	var changes []Change
	kr := NewKeyring(db, KeyringOptions{
		Now: clk.now,
		OnChange: func(tx *store.Tx, c Change) error {
			if !tx.Writable() {
				t.Error("OnChange outside a write transaction")
			}
			changes = append(changes, c)
			return nil
		},
	})
	return kr, db, clk, &changes
}

func autocryptFor(t *testing.T, addr string, e *openpgp.Entity) string {
	t.Helper()
	var b bytes.Buffer
	if err := e.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	kd := base64.StdEncoding.EncodeToString(b.Bytes())
	// Folded the way a mail header arrives, whitespace inside keydata.
	return "addr=" + addr + "; prefer-encrypt=mutual; keydata=" + kd[:40] + "\r\n " + kd[40:]
}

func TestImportAndLookup(t *testing.T) {
	kr, _, _, changes := newTestKeyring(t)
	carol := customer(t, "carol@example.net", time.Now(), 0)

	fp, err := kr.Import("Carol@Example.NET", armoredPublic(t, carol), "admin:alice")
	if err != nil {
		t.Fatal(err)
	}
	if fp != fingerprint(carol) {
		t.Errorf("fingerprint %s", fp)
	}
	e, info, err := kr.Lookup("carol@example.net")
	if err != nil {
		t.Fatal(err)
	}
	if fingerprint(e) != fp || e.PrivateKey != nil {
		t.Error("lookup returned another key, or a private one")
	}
	if info.Source != "admin:alice" || info.Fingerprint != fp || info.Addr != "carol@example.net" || info.Learned.IsZero() {
		t.Errorf("info %+v", info)
	}
	if len(*changes) != 1 || (*changes)[0].NewFingerprint != fp || (*changes)[0].OldFingerprint != "" {
		t.Errorf("changes %+v", *changes)
	}

	// An import always replaces, and the change names both keys.
	carol2 := customer(t, "carol@example.net", time.Now(), 0)
	fp2, err := kr.Import("carol@example.net", armoredPublic(t, carol2), "cli")
	if err != nil {
		t.Fatal(err)
	}
	if c := (*changes)[1]; c.OldFingerprint != fp || c.NewFingerprint != fp2 || c.Source != "cli" {
		t.Errorf("change %+v", c)
	}

	if _, _, err := kr.Lookup("dave@example.net"); !errors.Is(err, ErrNoKey) {
		t.Errorf("unknown address: %v", err)
	}
}

func TestImportRefusesUnusableKeys(t *testing.T) {
	kr, _, _, changes := newTestKeyring(t)
	now := time.Now()

	expired := customer(t, "x@example.net", now.Add(-72*time.Hour), 24*3600)

	revoked := customer(t, "x@example.net", now, 0)
	if err := revoked.Revoke(packet.KeyCompromised, "lost laptop", nil); err != nil {
		t.Fatal(err)
	}

	subRevoked := customer(t, "x@example.net", now, 0)
	if err := subRevoked.Subkeys[0].Revoke(packet.KeySuperseded, "", nil); err != nil {
		t.Fatal(err)
	}

	noSub := customer(t, "x@example.net", now, 0)
	noSub.Subkeys = nil

	private := customer(t, "x@example.net", now, 0)

	for _, c := range []struct {
		name   string
		data   []byte
		reason string
		cause  error
	}{
		{"expired", armoredPublic(t, expired), "expired", pgperr.ErrKeyExpired},
		{"revoked", armoredPublic(t, revoked), "revoked", pgperr.ErrKeyRevoked},
		{"subkey revoked", armoredPublic(t, subRevoked), "revoked", nil},
		{"no encryption subkey", armoredPublic(t, noSub), "no encryption subkey", nil},
		{"other address", armoredPublic(t, customer(t, "y@example.net", now, 0)), "no valid user ID for x@example.net", nil},
		{"private key", armoredPrivate(t, private), "private key", nil},
		{"garbage", []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"), "not an OpenPGP key", nil},
	} {
		_, err := kr.Import("x@example.net", c.data, "cli")
		if err == nil {
			t.Errorf("%s: imported", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: %v, want %q", c.name, err, c.reason)
		}
		if c.cause != nil && !errors.Is(err, c.cause) {
			t.Errorf("%s: errors.Is(%v) false", c.name, c.cause)
		}
		if c.cause != nil && !errors.Is(err, ErrUnusableKey) {
			t.Errorf("%s: not ErrUnusableKey", c.name)
		}
	}
	if len(*changes) != 0 {
		t.Errorf("refused imports recorded changes: %+v", *changes)
	}
	if _, _, err := kr.Lookup("x@example.net"); !errors.Is(err, ErrNoKey) {
		t.Errorf("after refused imports: %v", err)
	}
}

func TestLookupReportsKeyExpiredSince(t *testing.T) {
	kr, _, clk, _ := newTestKeyring(t)
	e := customer(t, "x@example.net", clk.t, 3600)
	if _, err := kr.Import("x@example.net", armoredPublic(t, e), "cli"); err != nil {
		t.Fatal(err)
	}
	clk.t = clk.t.Add(2 * time.Hour)
	got, info, err := kr.Lookup("x@example.net")
	var ke *KeyError
	if got != nil || !errors.As(err, &ke) || ke.Reason == "" || !errors.Is(err, pgperr.ErrKeyExpired) {
		t.Fatalf("lookup of an expired key: %v %v", got, err)
	}
	if info.Fingerprint != fingerprint(e) {
		t.Errorf("info not returned with the error: %+v", info)
	}
	// Signatures made while it was valid still verify: KnownFor hands it out.
	if kf := kr.KnownFor("x@example.net"); kf == nil || kf(e.PrimaryKey.KeyId) == nil {
		t.Error("KnownFor dropped the expired key")
	}
}

func TestLearnAutocrypt(t *testing.T) {
	kr, _, clk, changes := newTestKeyring(t)
	start := clk.t
	k1 := customer(t, "carol@example.net", start.Add(-time.Hour), 0)
	k2 := customer(t, "carol@example.net", start.Add(-time.Hour), 0)
	k3 := customer(t, "carol@example.net", start.Add(-time.Hour), 0)
	h1, h2, h3 := autocryptFor(t, "carol@example.net", k1), autocryptFor(t, "carol@example.net", k2), autocryptFor(t, "carol@example.net", k3)

	// Unverified sender: nothing learned, and the error says it is policy.
	changed, err := kr.LearnAutocrypt("carol@example.net", false, h1, start)
	if changed || !errors.Is(err, ErrNotLearned) {
		t.Fatalf("unverified: changed=%v err=%v", changed, err)
	}
	if _, _, err := kr.Lookup("carol@example.net"); !errors.Is(err, ErrNoKey) {
		t.Fatal("an unverified Autocrypt header taught a key")
	}
	// addr must be From.
	if changed, err := kr.LearnAutocrypt("mallory@example.net", true, h1, start); changed || !errors.Is(err, ErrNotLearned) {
		t.Fatalf("addr mismatch: changed=%v err=%v", changed, err)
	}

	step := func(name string, hdr string, date time.Time, want bool) {
		t.Helper()
		changed, err := kr.LearnAutocrypt("Carol@example.net", true, hdr, date)
		if err != nil || changed != want {
			t.Fatalf("%s: changed=%v err=%v, want changed=%v", name, changed, err, want)
		}
	}
	current := func() string {
		e, _, err := kr.Lookup("carol@example.net")
		if err != nil {
			t.Fatal(err)
		}
		return fingerprint(e)
	}

	step("first", h1, start.Add(-30*time.Minute), true)
	step("same key again", h1, start.Add(-20*time.Minute), false)
	step("older message with another key", h2, start.Add(-25*time.Minute), false)
	if current() != fingerprint(k1) {
		t.Fatal("an older header replaced the key")
	}
	step("newer message with another key", h2, start.Add(-10*time.Minute), true)
	if current() != fingerprint(k2) {
		t.Fatal("a newer header did not replace the key")
	}
	_, info, _ := kr.Lookup("carol@example.net")
	if info.Source != SourceAutocrypt || !info.Effective.Equal(start.Add(-10*time.Minute)) {
		t.Errorf("info %+v", info)
	}

	// A Date in the future is clamped to now, so it cannot pin the key forever.
	step("future date", h3, start.Add(24*365*time.Hour), true)
	clk.t = start.Add(time.Hour)
	step("later real message", h1, start.Add(30*time.Minute), true)

	// An admin import beats Autocrypt; only a message written after it replaces it.
	clk.t = start.Add(2 * time.Hour)
	if _, err := kr.Import("carol@example.net", armoredPublic(t, k2), "admin:alice"); err != nil {
		t.Fatal(err)
	}
	step("header older than the import", h3, start.Add(90*time.Minute), false)
	if current() != fingerprint(k2) {
		t.Fatal("Autocrypt replaced an admin import with an older date")
	}
	clk.t = start.Add(4 * time.Hour)
	step("header newer than the import", h3, start.Add(3*time.Hour), true)

	var sources []string
	for _, c := range *changes {
		sources = append(sources, c.Source)
	}
	if got := strings.Join(sources, ","); got != "autocrypt,autocrypt,autocrypt,autocrypt,admin:alice,autocrypt" {
		t.Errorf("changes by source: %s", got)
	}
}

func TestLearnAutocryptRefusesBadKeys(t *testing.T) {
	kr, _, _, _ := newTestKeyring(t)
	now := time.Now()
	expired := customer(t, "carol@example.net", now.Add(-72*time.Hour), 3600)
	other := customer(t, "dave@example.net", now, 0)
	for name, hdr := range map[string]string{
		"expired":      autocryptFor(t, "carol@example.net", expired),
		"uid mismatch": autocryptFor(t, "carol@example.net", other),
		"no keydata":   "addr=carol@example.net",
		"critical":     autocryptFor(t, "carol@example.net", other) + "; unknown=1",
		"not base64":   "addr=carol@example.net; keydata=!!!",
		"not a key":    "addr=carol@example.net; keydata=AAAA",
	} {
		changed, err := kr.LearnAutocrypt("carol@example.net", true, hdr, now)
		if changed || !errors.Is(err, ErrNotLearned) {
			t.Errorf("%s: changed=%v err=%v", name, changed, err)
		}
	}
	if changed, err := kr.LearnAutocrypt("carol@example.net", true, autocryptFor(t, "carol@example.net", customer(t, "carol@example.net", now, 0)), time.Time{}); changed || !errors.Is(err, ErrNotLearned) {
		t.Errorf("no Date: changed=%v err=%v", changed, err)
	}
}

func TestOnChangeErrorAbortsTheChange(t *testing.T) {
	db := openStore(t)
	kr := NewKeyring(db, KeyringOptions{OnChange: func(*store.Tx, Change) error { return errors.New("audit log full") }})
	e := customer(t, "x@example.net", time.Now(), 0)
	if _, err := kr.Import("x@example.net", armoredPublic(t, e), "cli"); err == nil || !strings.Contains(err.Error(), "audit log full") {
		t.Fatalf("import: %v", err)
	}
	if _, _, err := kr.Lookup("x@example.net"); !errors.Is(err, ErrNoKey) {
		t.Errorf("key stored although its audit event failed: %v", err)
	}
}

// TestKeysAreSealed reads the database file: neither the address nor the key may appear.
func TestKeysAreSealed(t *testing.T) {
	kr, db, _, _ := newTestKeyring(t)
	e := customer(t, "sealed.customer@example.net", time.Now(), 0)
	if _, err := kr.Import("sealed.customer@example.net", armoredPublic(t, e), "cli"); err != nil {
		t.Fatal(err)
	}
	var pub bytes.Buffer
	e.PrimaryKey.Serialize(&pub)
	raw, err := os.ReadFile(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	for name, needle := range map[string][]byte{
		"address":     []byte("sealed.customer"),
		"armored key": []byte("PGP PUBLIC KEY"),
		"key packet":  pub.Bytes()[4:40],
	} {
		if bytes.Contains(raw, needle) {
			t.Errorf("the database file holds the %s in the clear", name)
		}
	}
}

func TestLearnWKDStoresOnlyWhenNothingBetterIsKnown(t *testing.T) {
	kr, _, _, changes := newTestKeyring(t)
	srvURL, stop := wkdServerFor(t, "carol@example.net")
	defer stop()
	changed, err := kr.LearnWKD(t.Context(), nil, srvURL, "carol@example.net")
	if err != nil || !changed {
		t.Fatalf("wkd: changed=%v err=%v", changed, err)
	}
	_, info, err := kr.Lookup("carol@example.net")
	if err != nil || info.Source != SourceWKD {
		t.Fatalf("lookup: %+v %v", info, err)
	}
	// An admin import is not overridden by the web server.
	admin := customer(t, "carol@example.net", time.Now().Add(-time.Minute), 0)
	if _, err := kr.Import("carol@example.net", armoredPublic(t, admin), "cli"); err != nil {
		t.Fatal(err)
	}
	if changed, err := kr.LearnWKD(t.Context(), nil, srvURL, "carol@example.net"); changed || err != nil {
		t.Errorf("wkd over an import: changed=%v err=%v", changed, err)
	}
	if len(*changes) != 2 {
		t.Errorf("changes %+v", *changes)
	}
}

// wkdServerFor serves a fresh key for addr by WKD on loopback.
func wkdServerFor(t *testing.T, addr string) (string, func()) {
	t.Helper()
	e := customer(t, addr, time.Now().Add(-time.Hour), 0)
	srv := httptest.NewServer(WKDHandler(asKey(e), []string{addr}, nil))
	return srv.URL, srv.Close
}

// TestKeyFromAClockAhead: a customer whose clock runs a few minutes fast makes a key whose
// self-signatures lie in our future; it must still be importable.
func TestKeyFromAClockAhead(t *testing.T) {
	kr, _, _, _ := newTestKeyring(t)
	ahead := customer(t, "dave@example.net", time.Now().Add(3*time.Minute), 0)
	if _, err := kr.Import("dave@example.net", armoredPublic(t, ahead), "cli"); err != nil {
		t.Fatalf("key 3 minutes ahead: %v", err)
	}
	far := customer(t, "erin@example.net", time.Now().Add(2*time.Hour), 0)
	if _, err := kr.Import("erin@example.net", armoredPublic(t, far), "cli"); err == nil {
		t.Fatal("key from 2 hours in the future accepted")
	}
}
