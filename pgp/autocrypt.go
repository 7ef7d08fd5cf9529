package pgp

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Autocrypt is a parsed Autocrypt header (Autocrypt Level 1, section 2.1).
type Autocrypt struct {
	Addr          string
	PreferEncrypt string // "mutual" or "" (nopreference)
	KeyData       []byte // binary transferable public key
}

// maxAutocryptHeader bounds the header before decoding; real ones are a few KiB.
const maxAutocryptHeader = 64 << 10

// ParseAutocrypt parses `addr=…; [prefer-encrypt=mutual;] keydata=<base64>`. Unknown
// attributes starting with "_" are ignored; any other unknown attribute makes the whole
// header invalid, as the spec requires.
func ParseAutocrypt(value string) (*Autocrypt, error) {
	if len(value) > maxAutocryptHeader {
		return nil, fmt.Errorf("autocrypt header is %d bytes; the limit is %d", len(value), maxAutocryptHeader)
	}
	var ac Autocrypt
	seen := map[string]bool{}
	for _, attr := range strings.Split(value, ";") {
		attr = strings.TrimSpace(attr)
		if attr == "" {
			continue
		}
		name, val, ok := strings.Cut(attr, "=")
		if !ok {
			return nil, fmt.Errorf("autocrypt attribute %q has no value", truncate(attr, 40))
		}
		name = strings.ToLower(strings.TrimSpace(name))
		val = strings.TrimSpace(val)
		if seen[name] {
			return nil, fmt.Errorf("autocrypt attribute %q appears twice", name)
		}
		seen[name] = true
		switch name {
		case "addr":
			ac.Addr = strings.ToLower(val)
		case "prefer-encrypt":
			if val == "mutual" {
				ac.PreferEncrypt = val
			}
		case "keydata":
			// Folding leaves whitespace inside the base64.
			clean := strings.Map(func(r rune) rune {
				if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
					return -1
				}
				return r
			}, val)
			kd, err := base64.StdEncoding.DecodeString(clean)
			if err != nil {
				return nil, fmt.Errorf("autocrypt keydata is not base64: %w", err)
			}
			ac.KeyData = kd
		default:
			if !strings.HasPrefix(name, "_") {
				return nil, fmt.Errorf("autocrypt header has the unknown critical attribute %q", truncate(name, 40))
			}
		}
	}
	if ac.Addr == "" {
		return nil, errors.New("autocrypt header has no addr")
	}
	if _, _, err := splitAddr(ac.Addr); err != nil {
		return nil, fmt.Errorf("autocrypt addr: %w", err)
	}
	if len(ac.KeyData) == 0 {
		return nil, errors.New("autocrypt header has no keydata")
	}
	return &ac, nil
}

// AutocryptHeader renders the gateway's own Autocrypt header value for addr, for outbound mail
// (so the customer's client learns the gateway key), or "" when the key has no user ID for addr.
func (k *Key) AutocryptHeader(addr string) string {
	e, ok := k.publicFor(addr)
	if !ok {
		return ""
	}
	var b strings.Builder
	b.WriteString("addr=")
	b.WriteString(strings.ToLower(addr))
	b.WriteString("; prefer-encrypt=mutual; keydata=")
	// Spaces every 64 characters let a header writer fold the value within 76 columns;
	// Autocrypt readers drop whitespace inside keydata.
	kd := base64.StdEncoding.EncodeToString(e)
	for len(kd) > 64 {
		b.WriteString(kd[:64])
		b.WriteByte(' ')
		kd = kd[64:]
	}
	b.WriteString(kd)
	return b.String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
