package pgp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"

	"mailgate/store"
)

// Bucket and index kind of customer keys in the store.
const (
	keyBucket = "pgp_keys"
	keyIndex  = "pgpaddr"
)

// Sources of a stored customer key.
const (
	SourceAutocrypt = "autocrypt"
	SourceWKD       = "wkd"
)

var (
	// ErrNoKey means no key is stored for the address.
	ErrNoKey = errors.New("no OpenPGP key is known for this address")
	// ErrNotLearned is matched by LearnAutocrypt errors that are policy refusals (unverified
	// sender, addr not matching From, a malformed header or an unusable key), as opposed to
	// storage failures. Callers usually log these and go on.
	ErrNotLearned = errors.New("autocrypt key not learned")
)

// KeyInfo describes a stored customer key.
type KeyInfo struct {
	Addr        string
	Fingerprint string
	Source      string    // what Import was given ("admin:alice", "cli"), or SourceAutocrypt, SourceWKD
	Learned     time.Time // when mailgate stored it
	// Effective is the time a newer Autocrypt header must beat to replace this key: the
	// Date of the message that taught it (clamped to the time it arrived), or the import time.
	Effective time.Time
}

// Change is one replacement of an address's key; the caller writes it to the audit log (the
// OnChange callback runs inside the same transaction, so both commit together or not at all).
type Change struct {
	Addr           string
	Source         string
	OldFingerprint string // "" when the address had no key
	NewFingerprint string
	Time           time.Time
}

// KeyringOptions tunes NewKeyring; the zero value works.
type KeyringOptions struct {
	// OnChange runs inside the write transaction that replaces a key, typically
	// audit.Log.AppendTx. An error aborts the change.
	OnChange func(tx *store.Tx, c Change) error
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Keyring holds customers' public keys, sealed in the store, one per address.
type Keyring struct {
	db       *store.DB
	onChange func(tx *store.Tx, c Change) error
	now      func() time.Time
}

// NewKeyring returns the customer keyring backed by db.
func NewKeyring(db *store.DB, opts KeyringOptions) *Keyring {
	k := &Keyring{db: db, onChange: opts.OnChange, now: opts.Now}
	if k.now == nil {
		k.now = time.Now
	}
	return k
}

// record is the sealed value; Armored holds the public key only.
type record struct {
	Armored   string    `json:"armored"`
	Source    string    `json:"source"`
	Learned   time.Time `json:"learned"`
	Effective time.Time `json:"effective"`
	Addr      string    `json:"addr"`
}

func normAddr(addr string) (string, error) {
	addr = strings.ToLower(strings.TrimSpace(addr))
	if _, _, err := splitAddr(addr); err != nil {
		return "", err
	}
	return addr, nil
}

// Import stores a customer's key for addr, replacing any key known before (an admin's word
// beats every automatic source). armored may be armored or binary; it must hold exactly one
// public key, valid for encryption now, with a user ID for addr. Only the public parts are kept.
func (k *Keyring) Import(addr string, armored []byte, source string) (string, error) {
	addr, err := normAddr(addr)
	if err != nil {
		return "", fmt.Errorf("import key: %w", err)
	}
	e, err := readOneKey(armored)
	if err != nil {
		return "", fmt.Errorf("import key for %s: %w", addr, err)
	}
	now := k.now()
	if err := checkRecipient(e, addr, now); err != nil {
		return "", fmt.Errorf("import key: %w", err)
	}
	if source == "" {
		source = "import"
	}
	rec, err := newRecord(e, addr, source, now, now)
	if err != nil {
		return "", fmt.Errorf("import key for %s: %w", addr, err)
	}
	err = k.db.Update(func(tx *store.Tx) error {
		old, err := k.get(tx, addr)
		if err != nil {
			return err
		}
		return k.put(tx, addr, old, rec, fingerprint(e))
	})
	if err != nil {
		return "", fmt.Errorf("import key for %s: %w", addr, err)
	}
	return fingerprint(e), nil
}

// LearnAutocrypt learns the key in an Autocrypt header (headerValue) of a message from
// fromAddr dated msgDate. verified must be true only when that message's From passed DMARC
// (aligned); otherwise nothing is learned. The header's addr must equal From. A key already
// known is replaced only when msgDate (clamped to now) is later than the stored key's
// Effective time, so a replayed old message cannot roll a key back, and an admin import is
// replaced only by a message written after it. The caller passes exactly one Autocrypt header
// (the spec says to ignore them all when there are several).
func (k *Keyring) LearnAutocrypt(fromAddr string, verified bool, headerValue string, msgDate time.Time) (bool, error) {
	if !verified {
		return false, fmt.Errorf("%w: the sender's domain is not DMARC-verified", ErrNotLearned)
	}
	from, err := normAddr(fromAddr)
	if err != nil {
		return false, fmt.Errorf("%w: From: %v", ErrNotLearned, err)
	}
	ac, err := ParseAutocrypt(headerValue)
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrNotLearned, err)
	}
	if !strings.EqualFold(ac.Addr, from) {
		return false, fmt.Errorf("%w: Autocrypt addr %s does not match From %s", ErrNotLearned, ac.Addr, from)
	}
	if msgDate.IsZero() {
		return false, fmt.Errorf("%w: the message has no Date", ErrNotLearned)
	}
	now := k.now()
	if msgDate.After(now) {
		// A future Date must not pin a key against every later header.
		msgDate = now
	}
	e, err := readOneKey(ac.KeyData)
	if err != nil {
		return false, fmt.Errorf("%w: keydata: %v", ErrNotLearned, err)
	}
	if err := checkRecipient(e, from, now); err != nil {
		return false, fmt.Errorf("%w: %v", ErrNotLearned, err)
	}
	rec, err := newRecord(e, from, SourceAutocrypt, now, msgDate)
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrNotLearned, err)
	}
	fp := fingerprint(e)
	changed := false
	err = k.db.Update(func(tx *store.Tx) error {
		changed = false
		old, err := k.get(tx, from)
		if err != nil {
			return err
		}
		if old != nil && !msgDate.After(old.Effective) {
			return nil // stale or replayed header
		}
		if old != nil && old.fp == fp {
			// Same key, newer message: remember the date so an older header cannot win later.
			old.Effective = msgDate
			return k.putRecord(tx, from, &old.record)
		}
		changed = true
		return k.put(tx, from, old, rec, fp)
	})
	if err != nil {
		return false, fmt.Errorf("learn autocrypt key for %s: %w", from, err)
	}
	return changed, nil
}

// LearnWKD asks the address's domain by WKD (see LookupWKD) and stores the
// key only when none is known yet or the known one came from WKD itself: a domain's web
// server does not outrank an admin import or a verified Autocrypt header.
func (k *Keyring) LearnWKD(ctx context.Context, client *http.Client, baseURL, addr string) (bool, error) {
	addr, err := normAddr(addr)
	if err != nil {
		return false, fmt.Errorf("wkd: %w", err)
	}
	var known *stored
	if err := k.db.View(func(tx *store.Tx) error {
		known, err = k.get(tx, addr)
		return err
	}); err != nil {
		return false, fmt.Errorf("wkd %s: %w", addr, err)
	}
	if known != nil && known.Source != SourceWKD {
		return false, nil
	}
	e, err := LookupWKD(ctx, client, baseURL, addr)
	if err != nil {
		return false, err
	}
	now := k.now()
	if err := checkRecipient(e, addr, now); err != nil {
		return false, fmt.Errorf("wkd %s: %w", addr, err)
	}
	fp := fingerprint(e)
	rec, err := newRecord(e, addr, SourceWKD, now, now)
	if err != nil {
		return false, fmt.Errorf("wkd %s: %w", addr, err)
	}
	changed := false
	err = k.db.Update(func(tx *store.Tx) error {
		changed = false
		old, err := k.get(tx, addr)
		if err != nil {
			return err
		}
		if old != nil && (old.Source != SourceWKD || old.fp == fp) {
			return nil
		}
		changed = true
		return k.put(tx, addr, old, rec, fp)
	})
	if err != nil {
		return false, fmt.Errorf("wkd %s: %w", addr, err)
	}
	return changed, nil
}

// Lookup returns the key stored for addr, checked for use now. Without a key it returns
// ErrNoKey; with a key that has expired or been revoked since, it returns a *KeyError
// (errors.Is(err, ErrUnusableKey)) together with the KeyInfo, so the reason can be shown.
func (k *Keyring) Lookup(addr string) (*openpgp.Entity, KeyInfo, error) {
	addr, err := normAddr(addr)
	if err != nil {
		return nil, KeyInfo{}, fmt.Errorf("pgp key lookup: %w", err)
	}
	var s *stored
	if err := k.db.View(func(tx *store.Tx) error {
		s, err = k.get(tx, addr)
		return err
	}); err != nil {
		return nil, KeyInfo{}, fmt.Errorf("pgp key lookup %s: %w", addr, err)
	}
	if s == nil {
		return nil, KeyInfo{}, fmt.Errorf("%s: %w", addr, ErrNoKey)
	}
	info := s.info(addr)
	if err := checkRecipient(s.entity, addr, k.now()); err != nil {
		return nil, info, err
	}
	return s.entity, info, nil
}

// KnownFor returns the verification keys for a message from addr: the stored key of that
// address and nothing else, so "signed by" always means "signed by the key we hold for the
// sender". The key is not checked for use now (an expired key still verifies old mail;
// go-crypto checks it at the signature's time). Pass the result to Decrypt or VerifySigned.
func (k *Keyring) KnownFor(addr string) KnownKeys {
	addr, err := normAddr(addr)
	if err != nil {
		return nil
	}
	var s *stored
	if err := k.db.View(func(tx *store.Tx) error { s, err = k.get(tx, addr); return err }); err != nil || s == nil {
		return nil
	}
	return func(id uint64) *openpgp.Entity {
		if hasKeyID(s.entity, id) {
			return s.entity
		}
		return nil
	}
}

// stored is a decoded record.
type stored struct {
	record
	entity *openpgp.Entity
	fp     string
}

func (s *stored) info(addr string) KeyInfo {
	return KeyInfo{Addr: addr, Fingerprint: s.fp, Source: s.Source, Learned: s.Learned, Effective: s.Effective}
}

func (k *Keyring) get(tx *store.Tx, addr string) (*stored, error) {
	raw, err := tx.Get(keyBucket, k.db.Index(keyIndex, addr))
	if err != nil || raw == nil {
		return nil, err
	}
	var s stored
	if err := json.Unmarshal(raw, &s.record); err != nil {
		return nil, fmt.Errorf("decode stored key of %s: %w", addr, err)
	}
	el, err := openpgp.ReadArmoredKeyRing(strings.NewReader(s.Armored))
	if err != nil || len(el) != 1 {
		return nil, fmt.Errorf("decode stored key of %s: %d keys, %v", addr, len(el), err)
	}
	s.entity = el[0]
	s.fp = fingerprint(s.entity)
	return &s, nil
}

func (k *Keyring) putRecord(tx *store.Tx, addr string, rec *record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Put(keyBucket, k.db.Index(keyIndex, addr), b)
}

// put writes rec and, when the fingerprint changes, reports the change inside tx.
func (k *Keyring) put(tx *store.Tx, addr string, old *stored, rec *record, fp string) error {
	if err := k.putRecord(tx, addr, rec); err != nil {
		return err
	}
	c := Change{Addr: addr, Source: rec.Source, NewFingerprint: fp, Time: rec.Learned}
	if old != nil {
		c.OldFingerprint = old.fp
	}
	if k.onChange != nil {
		if err := k.onChange(tx, c); err != nil {
			return fmt.Errorf("record key change: %w", err)
		}
	}
	return nil
}

func newRecord(e *openpgp.Entity, addr, source string, learned, effective time.Time) (*record, error) {
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		return nil, err
	}
	if err := e.Serialize(w); err != nil {
		return nil, fmt.Errorf("serialize key: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return &record{Armored: buf.String(), Source: source, Learned: learned.UTC(), Effective: effective.UTC(), Addr: addr}, nil
}

// maxKeyBytes bounds any key mailgate reads from outside.
const maxKeyBytes = 1 << 20

// readOneKey parses exactly one key, armored or binary.
func readOneKey(data []byte) (*openpgp.Entity, error) {
	if len(data) > maxKeyBytes {
		return nil, fmt.Errorf("key is %d bytes; the limit is %d", len(data), maxKeyBytes)
	}
	var (
		el  openpgp.EntityList
		err error
	)
	if n := bytes.Count(data, []byte("-----BEGIN PGP")); n > 1 {
		return nil, fmt.Errorf("found %d armored blocks; expected exactly one key", n)
	} else if n == 1 {
		el, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	} else {
		el, err = openpgp.ReadKeyRing(bytes.NewReader(data))
	}
	if err != nil {
		return nil, fmt.Errorf("not an OpenPGP key: %w", err)
	}
	if len(el) != 1 {
		return nil, fmt.Errorf("found %d keys; expected exactly one", len(el))
	}
	return el[0], nil
}
