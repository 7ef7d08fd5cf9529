package access

import (
	"crypto/subtle"
	"fmt"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
	"github.com/pquerna/otp/totp"
)

// TOTP as authenticator apps take it: RFC 6238, 30 s steps, 6 digits, HMAC-SHA1.
const (
	totpPeriod = 30
	totpSkew   = 1 // steps accepted either side of now, for clock drift and typing time
)

// newTOTP makes a secret (160 bits, RFC 4226's recommendation) and its otpauth:// URI.
func (s *Service) newTOTP(name string) (secret, uri string, err error) {
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer:      s.opts.Issuer,
		AccountName: name,
		Period:      totpPeriod,
		SecretSize:  20,
		Digits:      otp.DigitsSix,
		Algorithm:   otp.AlgorithmSHA1,
	})
	if err != nil {
		return "", "", fmt.Errorf("new TOTP secret: %w", err)
	}
	return key.Secret(), key.URL(), nil
}

// totpCode returns the digits of code when it looks like a TOTP code ("123456", "123 456").
func totpCode(code string) (string, bool) {
	c := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, code)
	if len(c) != 6 {
		return "", false
	}
	for i := 0; i < len(c); i++ {
		if c[i] < '0' || c[i] > '9' {
			return "", false
		}
	}
	return c, true
}

// checkTOTP finds the time step of code within ±totpSkew of now. Steps at or before last were
// used already (RFC 6238 section 5.2: a verifier must not accept the same code twice), so a
// match there reports replay instead.
func checkTOTP(secret, code string, now time.Time, last uint64) (step uint64, ok, replay bool, err error) {
	cur := now.Unix() / totpPeriod
	for d := int64(-totpSkew); d <= totpSkew; d++ {
		st := cur + d
		if st < 0 {
			continue
		}
		want, err := hotp.GenerateCodeCustom(secret, uint64(st), hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			return 0, false, false, fmt.Errorf("TOTP secret: %w", err)
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) != 1 {
			continue
		}
		if uint64(st) > last {
			step, ok = uint64(st), true
		} else {
			replay = true
		}
	}
	if ok {
		replay = false
	}
	return step, ok, replay, nil
}
