package app

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"mailgate/config"
	"mailgate/outbound"
	"mailgate/pgp"
	"mailgate/store"
)

// Preflight opens every key, certificate and password file of cfg the way serve uses it, as
// the user running it: the data key (mode, length), the DKIM keys, the relay and fetch
// passwords, the gateway's PGP key and each TLS pair. serve runs it before it opens the
// database and check-config runs the same function, so "ok" from check-config means serve gets
// past its files, and both print the same message for the same problem. All problems are
// reported, not just the first.
func Preflight(cfg *config.Config) error {
	var errs []error
	if _, err := store.LoadKey(cfg.KeyFile); err != nil {
		errs = append(errs, err)
	}
	oc := cfg.Outbound
	for _, k := range []struct{ field, file string }{
		{"dkim_key_file", oc.DKIMKeyFile}, {"dkim_ed25519_key_file", oc.DKIMEd25519KeyFile},
	} {
		if k.file == "" {
			continue
		}
		if _, err := outbound.LoadDKIMKey(k.file); err != nil {
			errs = append(errs, fmt.Errorf("outbound: %s: %w", k.field, err))
		}
	}
	if oc.Relay != "" && oc.RelayUsername != "" && oc.RelayPasswordFile != "" {
		if err := readSecret(oc.RelayPasswordFile); err != nil {
			errs = append(errs, fmt.Errorf("outbound: relay password: %w", err))
		}
	}
	for i, acct := range cfg.Fetch.Accounts {
		if err := readSecret(acct.PasswordFile); err != nil {
			errs = append(errs, fmt.Errorf("[[fetch.account]] #%d password_file: %w", i+1, err))
		}
	}
	if _, err := metricsToken(cfg.Metrics.TokenFile); err != nil {
		errs = append(errs, err)
	}
	if cfg.PGP.KeyFile != "" {
		if _, err := pgp.LoadKey(cfg.PGP.KeyFile); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []struct{ section, cert, key string }{
		{"smtp", cfg.SMTP.TLSCert, cfg.SMTP.TLSKey},
		{"imap", cfg.IMAP.TLSCert, cfg.IMAP.TLSKey},
		{"web", cfg.Web.TLSCert, cfg.Web.TLSKey},
	} {
		if _, err := loadTLS(p.section, p.cert, p.key); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// readSecret reads a password file as its user does: it must be readable and hold a password.
func readSecret(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if strings.TrimRight(string(b), "\r\n") == "" {
		return fmt.Errorf("%s is empty", file)
	}
	return nil
}
