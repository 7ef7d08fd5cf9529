package app

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"mailgate/config"
	"mailgate/outbound"
	"mailgate/pgp"
	"mailgate/store"
)

// Files dev mode keeps in its data dir beside the database (dev.toml names the others).
const (
	devTLSCert = "tls.crt"
	devTLSKey  = "tls.key"
)

// DevAdmin is the first admin dev mode creates.
const (
	DevAdminName  = "admin"
	DevAdminEmail = "admin@localhost"
)

// DevConfig is the embedded dev default with its data under dir (absolute), plus the
// self-signed certificate dev mode offers for STARTTLS.
func DevConfig(dir string) (*config.Config, error) {
	cfg, err := config.Dev(dir)
	if err != nil {
		return nil, err
	}
	cfg.SMTP.TLSCert = cfg.DataPath(devTLSCert)
	cfg.SMTP.TLSKey = cfg.DataPath(devTLSKey)
	return cfg, nil
}

// DevSetup is what PrepareDev made or found.
type DevSetup struct {
	Created        []string // files created on this start
	TLSFingerprint string   // SHA-256 of the STARTTLS certificate
}

// PrepareDev creates, on first start, the data dir (0700), the data key, the DKIM key, the
// gateway's PGP key and a self-signed certificate, each only when missing: a later start
// reuses them, so the database stays readable and published keys stay valid.
func PrepareDev(cfg *config.Config) (*DevSetup, error) {
	s := &DevSetup{}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("dev data dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("dev data dir: %w", err)
	}
	missing := func(f string) bool {
		_, err := os.Stat(f)
		return errors.Is(err, fs.ErrNotExist)
	}
	if missing(cfg.KeyFile) {
		if _, err := os.Stat(DBPath(cfg)); err == nil {
			// A new key would not open the old database; say so instead of making one.
			return nil, fmt.Errorf("the data key %s is missing but the database %s exists: restore the key file, or move the database away to start afresh", cfg.KeyFile, DBPath(cfg))
		}
		if err := store.WriteNewKey(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("dev data key: %w", err)
		}
		s.Created = append(s.Created, cfg.KeyFile)
	}
	if f := cfg.Outbound.DKIMKeyFile; f != "" && missing(f) {
		pem, _, err := outbound.GenerateDKIMKey("ed25519")
		if err == nil {
			err = writeNew(f, pem, 0o600)
		}
		if err != nil {
			return nil, fmt.Errorf("dev DKIM key: %w", err)
		}
		s.Created = append(s.Created, f)
	}
	if f := cfg.PGP.KeyFile; f != "" && missing(f) {
		var addrs []string
		for _, q := range cfg.Queues {
			addrs = append(addrs, q.Address)
		}
		if len(addrs) == 0 {
			addrs = []string{"support@localhost"}
		}
		armored, err := pgp.GenerateKey("mailgate dev", addrs[0], addrs[1:]...)
		if err == nil {
			err = writeNew(f, armored, 0o600)
		}
		if err != nil {
			return nil, fmt.Errorf("dev PGP key: %w", err)
		}
		s.Created = append(s.Created, f)
	}
	if cfg.SMTP.TLSCert != "" && missing(cfg.SMTP.TLSCert) {
		os.Remove(cfg.SMTP.TLSKey) // a key without its certificate is of no use
		if _, err := WriteSelfSignedCert(cfg.SMTP.TLSCert, cfg.SMTP.TLSKey,
			[]string{cfg.Hostname, "127.0.0.1", "::1"}, 5*365*24*time.Hour); err != nil {
			return nil, fmt.Errorf("dev TLS certificate: %w", err)
		}
		s.Created = append(s.Created, cfg.SMTP.TLSCert)
	}
	if cfg.SMTP.TLSCert != "" {
		fp, err := CertFingerprint(cfg.SMTP.TLSCert)
		if err != nil {
			return nil, fmt.Errorf("dev TLS certificate: %w", err)
		}
		s.TLSFingerprint = fp
	}
	if err := config.Validate(cfg); err != nil {
		return nil, err
	}
	return s, nil
}
