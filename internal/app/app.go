// Package app wires mailgate together: it opens the config's store, audit log and services,
// runs the daemon (listeners, control socket, signals), and holds the admin command handlers
// that the control socket and the direct (daemon stopped) path share. It owns no mail logic.
package app

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"os"
	"time"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/internal/metrics"
	"mailgate/outbound"
	"mailgate/pgp"
	"mailgate/store"
	"mailgate/tickets"

	berrors "go.etcd.io/bbolt/errors"
)

// DBFile is the database's name inside data_dir.
const DBFile = "mailgate.db"

// IDFile, inside data_dir, counts the ticket ids handed out, apart from the database, so a
// restored database never hands one out twice (tickets.CheckIDs).
const IDFile = "ticket-ids"

// SocketFile is the control socket's name inside data_dir.
const SocketFile = "control.sock"

// DBPath returns where cfg's database lives.
func DBPath(cfg *config.Config) string { return cfg.DataPath(DBFile) }

// SocketPath returns where cfg's control socket lives.
func SocketPath(cfg *config.Config) string { return cfg.DataPath(SocketFile) }

// App is an open mailgate: config, store, audit log and the services built on them. The
// daemon adds listeners around it; an admin command opens one for a single call.
type App struct {
	Cfg     *config.Config
	DB      *store.DB
	Audit   *audit.Log
	Access  *access.Service
	Tickets *tickets.Service
	Keyring *pgp.Keyring
	Gateway *pgp.Key // nil when [pgp] key_file is ""
	// Outbound composes and queues replies; only the daemon starts its delivery, so a reply
	// made by an admin command while the daemon is stopped waits in the queue until it runs.
	Outbound *outbound.Outbound
	Log      *slog.Logger

	notify func(queue string) // set by the daemon (IMAP IDLE)

	closers []func() error
}

// Options tunes Open.
type Options struct {
	Logger *slog.Logger
	// LockTimeout bounds the wait for the database lock; admin commands use a short one.
	LockTimeout time.Duration
}

// ErrRunning says the database is held by another process: a daemon (or another command).
var ErrRunning = errors.New("already running")

// OpenStore opens cfg's database with its key, turning the store's errors into messages
// that say what to do.
func OpenStore(cfg *config.Config, lockTimeout time.Duration) (*store.DB, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	}
	key, err := store.LoadKey(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	path := DBPath(cfg)
	db, err := store.Open(path, key, store.Options{LockTimeout: lockTimeout, OnCommit: metrics.StoreCommit})
	switch {
	case errors.Is(err, store.ErrLocked):
		return nil, fmt.Errorf("mailgate is %w on data dir %s: the database %s is locked by another process; stop it first, or use another data_dir", ErrRunning, cfg.DataDir, path)
	case errors.Is(err, store.ErrWrongKey):
		return nil, fmt.Errorf("key_file %s does not open the database %s (it belongs to another installation, or the key file was replaced): point key_file at the key this database was created with: %w", cfg.KeyFile, path, err)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%w: the database file is damaged or not a mailgate database; restore %s from a backup (README: Backup and restore)", err, path)
	case err != nil:
		return nil, err
	}
	return db, nil
}

// Open opens the store, the audit log and the services for cfg. Listeners are the daemon's.
func Open(cfg *config.Config, opts Options) (*App, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	db, err := OpenStore(cfg, opts.LockTimeout)
	if err != nil {
		return nil, err
	}
	a := &App{Cfg: cfg, DB: db, Log: opts.Logger}
	a.closers = append(a.closers, db.Close)
	fail := func(err error) (*App, error) {
		a.Close()
		return nil, err
	}
	a.Audit, err = audit.New(db, cfg.Audit.File)
	if err != nil {
		return fail(err)
	}
	a.closers = append(a.closers, a.Audit.Close)
	if a.Audit.MirrorRotated != "" {
		// The first line of the new segment says where the old one went and why.
		a.Log.Warn("the audit mirror held events the database does not (restored from a backup?): it was kept under another name and a new segment begins",
			"old", a.Audit.MirrorRotated, "old_last_seq", a.Audit.MirrorAhead)
		if err := a.Audit.Append(audit.Event{Actor: "mailgate", Action: "audit.mirror", Object: "audit", Result: audit.OK,
			Detail: fmt.Sprintf("new mirror segment: the previous file held events up to seq %d, which the database does not have (restored from a backup?); it is kept as %s", a.Audit.MirrorAhead, a.Audit.MirrorRotated)}); err != nil {
			return fail(err)
		}
	}

	queueNames := map[string]bool{}
	var queues []tickets.Queue
	for _, q := range cfg.Queues {
		queueNames[q.Name] = true
		queues = append(queues, tickets.Queue{Name: q.Name, Address: q.Address, AutoAck: q.AutoAck, AutoAckText: q.AutoAckText, AutoAckTexts: q.AutoAckTexts, Aliases: q.Aliases})
	}
	a.Access = access.New(db, a.Audit, access.Options{
		Issuer:     "mailgate " + cfg.Hostname,
		KnownQueue: func(n string) bool { return queueNames[n] },
		Logger:     a.Log,
	})
	a.Keyring = pgp.NewKeyring(db, pgp.KeyringOptions{
		OnChange: func(tx *store.Tx, c pgp.Change) error {
			return a.Audit.AppendTx(tx, audit.Event{
				Actor: "mailgate", Action: "pgp.key", Object: "pgpkey/" + c.Addr, Result: audit.OK,
				Detail: fmt.Sprintf("source=%s old=%s new=%s", c.Source, c.OldFingerprint, c.NewFingerprint),
			})
		},
	})
	if cfg.PGP.KeyFile != "" {
		a.Gateway, err = pgp.LoadKey(cfg.PGP.KeyFile)
		if err != nil {
			return fail(err)
		}
	}
	topts := tickets.Options{
		Hostname: cfg.Hostname,
		Queues:   queues,
		// outbound needs the ticket service and the ticket service asks outbound; the
		// closure reads a.Outbound once both exist.
		AutoAck: func(p *tickets.Parsed, in tickets.Incoming) bool {
			return a.Outbound != nil && a.Outbound.AutoAck(p, in)
		},
		Notify: func(q string) {
			if a.notify != nil {
				a.notify(q)
			}
		},
	}
	if a.Gateway != nil {
		topts.Decrypt = a.decrypt
	}
	topts.IDFile = cfg.DataPath(IDFile)
	a.Tickets = tickets.New(db, a.Audit, topts)
	if after, err := a.Tickets.CheckIDs(); err != nil {
		return fail(err)
	} else if after > 0 {
		a.Log.Warn("ticket ids handed out before are not in the database (restored from a backup, or a crash): new tickets continue after them", "after", after)
	}
	a.closers = append(a.closers, a.Tickets.CloseIDs)
	a.Outbound, err = outbound.New(cfg, db, a.Audit, a.Tickets, a.Keyring, a.Gateway, outbound.Options{Logger: a.Log, AutoAckPerHour: cfg.Outbound.AutoAckPerHour,
		Observe: func(at outbound.Attempt) { metrics.Delivery(at.Outcome, at.Sent, at.Deferred, at.Failed, at.Took) }})
	if err != nil {
		return fail(err)
	}
	a.Tickets.SetMailer(a.Outbound)
	return a, nil
}

// decrypt reads PGP-encrypted inbound mail with the gateway key, checking a signature only
// against the key stored for the message's From address.
func (a *App) decrypt(raw []byte) (*tickets.Decrypted, error) {
	res, err := pgp.Decrypt(raw, a.Gateway, a.Keyring.KnownFor(headerFrom(raw)))
	if errors.Is(err, pgp.ErrNotEncrypted) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &tickets.Decrypted{Inner: res.Inner, Signed: res.Signed, SignedBy: res.SignedBy}, nil
}

// headerFrom returns the address in raw's From header, or "".
func headerFrom(raw []byte) string {
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return ""
	}
	addr, err := mail.ParseAddress(m.Header.Get("From"))
	if err != nil {
		return ""
	}
	return addr.Address
}

// Close closes everything Open opened, newest first.
func (a *App) Close() error {
	var errs []error
	for i := len(a.closers) - 1; i >= 0; i-- {
		errs = append(errs, a.closers[i]())
	}
	a.closers = nil
	return errors.Join(errs...)
}
