package access

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

const (
	saltLen = 16
	hashLen = 32
	// Passwords longer than this are refused when set; argon2 would take them, but nobody types them.
	maxPasswordLen = 1024
	minPasswordLen = 12
)

// hashPassword returns a PHC-style argon2id string: $argon2id$v=19$m=..,t=..,p=..$salt$hash.
// The parameters travel with the hash so they can be raised later without breaking old ones.
func (s *Service) hashPassword(password string) string {
	salt := make([]byte, saltLen)
	rand.Read(salt)
	p := s.opts.Argon2
	sum := s.argon2(password, salt, p, hashLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.MemoryKiB, p.Time, p.Threads,
		b64.EncodeToString(salt), b64.EncodeToString(sum))
}

// argon2 runs one hash, waiting for a slot so concurrent logins cannot exhaust memory.
func (s *Service) argon2(password string, salt []byte, p Argon2Params, n uint32) []byte {
	s.hashSlots <- struct{}{}
	defer func() { <-s.hashSlots }()
	return argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, n)
}

var errHashFormat = errors.New("stored password hash is malformed")

type phc struct {
	params Argon2Params
	salt   []byte
	sum    []byte
}

func parsePHC(enc string) (phc, error) {
	var h phc
	parts := strings.Split(enc, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return h, errHashFormat
	}
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return h, errHashFormat
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return h, errHashFormat
		}
		switch k {
		case "m":
			h.params.MemoryKiB = uint32(n)
		case "t":
			h.params.Time = uint32(n)
		case "p":
			if n > 255 {
				return h, errHashFormat
			}
			h.params.Threads = uint8(n)
		default:
			return h, errHashFormat
		}
	}
	// Bounds keep a damaged record from turning one login into a 4 GiB allocation.
	p := h.params
	if p.Time == 0 || p.Time > 64 || p.Threads == 0 || p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > 4<<20 {
		return h, errHashFormat
	}
	var err error
	b64 := base64.RawStdEncoding
	if h.salt, err = b64.DecodeString(parts[4]); err != nil || len(h.salt) < 8 {
		return h, errHashFormat
	}
	if h.sum, err = b64.DecodeString(parts[5]); err != nil || len(h.sum) < 16 || len(h.sum) > 64 {
		return h, errHashFormat
	}
	return h, nil
}

// verifyPassword reports whether password matches enc, and whether enc was made with other
// parameters than the current ones (so the caller can rehash it).
func (s *Service) verifyPassword(enc, password string) (ok, stale bool) {
	h, err := parsePHC(enc)
	if err != nil {
		s.dummyHash(password)
		return false, false
	}
	sum := s.argon2(password, h.salt, h.params, uint32(len(h.sum)))
	return subtle.ConstantTimeCompare(sum, h.sum) == 1, h.params != s.opts.Argon2 || len(h.sum) != hashLen
}

// dummyHash spends the same time as a real check, for agents that do not exist: the answer's
// timing must not reveal which names are real.
func (s *Service) dummyHash(password string) {
	var salt [saltLen]byte
	s.argon2(password, salt[:], s.opts.Argon2, hashLen)
}

// checkNewPassword is the policy for passwords people choose (NIST SP 800-63B: length, not
// composition rules).
func checkNewPassword(name, password string) error {
	if !utf8.ValidString(password) {
		return fmt.Errorf("%w password: not valid UTF-8", ErrInvalid)
	}
	if utf8.RuneCountInString(password) < minPasswordLen {
		return fmt.Errorf("%w password: use at least %d characters", ErrInvalid, minPasswordLen)
	}
	if len(password) > maxPasswordLen {
		return fmt.Errorf("%w password: use at most %d bytes", ErrInvalid, maxPasswordLen)
	}
	if strings.EqualFold(password, name) {
		return fmt.Errorf("%w password: must not be the user name", ErrInvalid)
	}
	return nil
}

// alphabet for generated secrets: 32 characters without 0/o/1/l, easy to read aloud and type.
const alphabet = "abcdefghijkmnpqrstuvwxyz23456789"

// randomCode returns groups×size characters from alphabet joined by '-', 5 bits each.
func randomCode(groups, size int) string {
	raw := make([]byte, groups*size)
	rand.Read(raw)
	var b strings.Builder
	for i, c := range raw {
		if i > 0 && i%size == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(alphabet[c&31]) // 256 is a multiple of 32: no modulo bias
	}
	return b.String()
}

// normalizeCode folds what a person might type (upper case, spaces, dashes) into the canonical
// form of a generated code.
func normalizeCode(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r == '-' || r == ' ' || r == '\t':
		case r < utf8.RuneSelf && strings.IndexByte(alphabet, byte(r)) >= 0:
			b.WriteRune(r)
		default:
			return "" // a character no generated code has
		}
	}
	return b.String()
}

// newPassword is a generated login password: 24 characters, 120 bits.
func newPassword() string { return randomCode(4, 6) }

// newAppPassword is a generated app password: 24 characters, 120 bits.
func newAppPassword() string { return randomCode(4, 6) }

// newRecoveryCode is one recovery code: 16 characters, 80 bits.
func newRecoveryCode() string { return randomCode(4, 4) }

// token returns 256 random bits, URL-safe.
func token() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func shortID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// codeMAC is how app passwords and recovery codes are kept: they are server-made with 80+ bits
// of entropy, so a keyed hash (key outside the database file) is as safe as argon2 and fast
// enough for mail clients that log in every few minutes. The agent name is bound in, so a value
// copied to another agent's record never matches.
func (s *Service) codeMAC(purpose, name, code string) string {
	return hex.EncodeToString(s.db.MAC("access "+purpose, []byte(name), []byte(code)))
}

func equalHex(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
