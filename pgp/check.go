package pgp

import (
	"errors"
	"fmt"
	"strings"
	"time"

	pgperr "github.com/ProtonMail/go-crypto/openpgp/errors"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// ErrUnusableKey is matched (errors.Is) by every *KeyError.
var ErrUnusableKey = errors.New("the OpenPGP key cannot be used")

// KeyError says why a customer's key cannot be used for an address. It unwraps to the
// go-crypto cause (pgperr.ErrKeyExpired, pgperr.ErrKeyRevoked) when there is one.
type KeyError struct {
	Addr        string
	Fingerprint string
	Reason      string // for people: "expired", "revoked", "has no user ID for bob@example.com", ...
	Err         error
}

func (e *KeyError) Error() string {
	s := "key"
	if e.Fingerprint != "" {
		s += " " + e.Fingerprint
	}
	if e.Addr != "" {
		s += " for " + e.Addr
	}
	return s + " cannot be used: " + e.Reason
}

func (e *KeyError) Unwrap() error { return e.Err }

// Is lets errors.Is(err, ErrUnusableKey) match any KeyError.
func (e *KeyError) Is(target error) bool { return target == ErrUnusableKey }

// checkRecipient returns nil when mail to addr can be encrypted to e at now: the primary key
// and an encryption subkey are valid (self-signatures verify, not expired, not revoked, strong
// enough algorithms) and a valid, unrevoked user ID carries addr.
func checkRecipient(e *openpgp.Entity, addr string, now time.Time) error {
	err := checkRecipientAt(e, addr, now)
	// A key made a moment ago on a machine whose clock runs ahead carries self-signatures
	// "from the future"; a few minutes of skew must not make a fresh key unusable.
	if err != nil && checkRecipientAt(e, addr, now.Add(clockSkew)) == nil {
		return nil
	}
	return err
}

// clockSkew is how far ahead of ours a customer's clock may run.
const clockSkew = 10 * time.Minute

func checkRecipientAt(e *openpgp.Entity, addr string, now time.Time) error {
	if e == nil || e.PrimaryKey == nil {
		return &KeyError{Addr: addr, Reason: "no key"}
	}
	fp := fingerprint(e)
	if e.PrivateKey != nil {
		// Never store or publish a customer's secret: they sent the wrong file.
		return &KeyError{Addr: addr, Fingerprint: fp, Reason: "this is a private key; send the public key (gpg --export --armor) instead"}
	}
	cfg := newConfig(now)
	if _, err := e.EncryptionKeyWithError(now, cfg); err != nil {
		return &KeyError{Addr: addr, Fingerprint: fp, Reason: describeKeyError(err), Err: keyCause(err)}
	}
	if addr != "" && !hasValidUID(e, addr, now) {
		return &KeyError{Addr: addr, Fingerprint: fp, Reason: "it has no valid user ID for " + addr}
	}
	return nil
}

// hasValidUID reports whether e has a self-certified, unrevoked user ID for addr.
func hasValidUID(e *openpgp.Entity, addr string, now time.Time) bool {
	cfg := newConfig(now)
	for _, id := range e.Identities {
		if id.UserId == nil || !strings.EqualFold(id.UserId.Email, addr) {
			continue
		}
		if _, err := id.Verify(now, cfg); err == nil {
			return true
		}
	}
	return false
}

// keepUIDsFor drops the user IDs that do not carry addr (WKD: a domain vouches only for its
// own address) and reports whether any is left.
func keepUIDsFor(e *openpgp.Entity, addr string) bool {
	for name, id := range e.Identities {
		if id.UserId == nil || !strings.EqualFold(id.UserId.Email, addr) {
			delete(e.Identities, name)
		}
	}
	return len(e.Identities) > 0
}

// selectionError pulls the fields out of go-crypto's key-selection error, which comes as a
// value (primary key problems) or a pointer (subkey problems) and has no Unwrap.
func selectionError(err error) (pgperr.ErrEncryptionKeySelection, bool) {
	switch v := err.(type) {
	case pgperr.ErrEncryptionKeySelection:
		return v, true
	case *pgperr.ErrEncryptionKeySelection:
		if v != nil {
			return *v, true
		}
	}
	return pgperr.ErrEncryptionKeySelection{}, false
}

// keyCause is the underlying cause of a key-selection error, so errors.Is works on it.
func keyCause(err error) error {
	sel, ok := selectionError(err)
	if !ok {
		return err
	}
	if sel.PrimaryKeyErr != nil {
		return sel.PrimaryKeyErr
	}
	return sel.EncSelectionErr
}

func describeKeyError(err error) string {
	sel, ok := selectionError(err)
	if !ok {
		return plainReason(err)
	}
	if sel.PrimaryKeyErr != nil {
		return "the primary key " + sel.PrimaryKeyId + " is " + plainReason(sel.PrimaryKeyErr)
	}
	if sel.EncSelectionKeyId != nil {
		return "the encryption subkey " + *sel.EncSelectionKeyId + " is " + plainReason(sel.EncSelectionErr) +
			" and there is no other encryption subkey"
	}
	return "it has no encryption subkey"
}

func plainReason(err error) string {
	switch {
	case err == nil:
		return "unusable"
	case errors.Is(err, pgperr.ErrKeyExpired):
		return "expired"
	case errors.Is(err, pgperr.ErrKeyRevoked):
		return "revoked"
	}
	var weak pgperr.WeakAlgorithmError
	if errors.As(err, &weak) {
		return "using a weak algorithm (" + string(weak) + ")"
	}
	return fmt.Sprintf("invalid (%v)", err)
}
