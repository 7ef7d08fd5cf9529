// Package outbound owns mail that leaves mailgate: composing replies (go-message), DKIM signing,
// PGP/MIME encryption by policy, the durable delivery queue in bbolt and the relay client.
// It never decides who may reply or what to say; tickets does, through the tickets.Mailer interface.
package outbound

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"mailgate/audit"
	"mailgate/config"
	"mailgate/pgp"
	"mailgate/store"
	"mailgate/tickets"
)

// Encryption policies ([pgp] encrypt).
const (
	EncryptNever     = "never"
	EncryptWhenKnown = "when-key-known"
	EncryptRequired  = "required"
)

// Relay TLS modes ([outbound] relay_tls).
const (
	TLSStartTLS = "starttls"
	TLSImplicit = "tls"
	TLSNone     = "none"
)

// Defaults for the zero Options and for config values left at zero.
const (
	defaultGiveUpAfter    = 120 * time.Hour
	defaultFirstRetry     = 30 * time.Second
	defaultMaxRetry       = time.Hour
	defaultConcurrency    = 4
	defaultDialTimeout    = 30 * time.Second
	defaultCommandTimeout = 2 * time.Minute
	defaultDataTimeout    = 10 * time.Minute // RFC 5321 4.5.3.2.6 asks the client to wait 10 minutes after the final dot
	defaultAutoAckPerHour = 1
)

// Options tunes an Outbound. The zero value is right for production.
type Options struct {
	// RootCAs verifies the relay's certificate; nil means the system pool. Tests pass their own.
	RootCAs *x509.CertPool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives one line per delivery attempt (never bodies or credentials); nil means slog.Default().
	Logger *slog.Logger
	// Concurrency is the number of relay connections used at once; default 4.
	Concurrency int
	// DialTimeout, CommandTimeout and DataTimeout bound the relay conversation (defaults 30s, 2m, 10m).
	DialTimeout, CommandTimeout, DataTimeout time.Duration
	// MaxRetryInterval caps the doubling retry interval; default 1h.
	MaxRetryInterval time.Duration
	// AutoAckPerHour is how many automatic acknowledgements one address may get per hour; default 1.
	AutoAckPerHour int
	// Observe, when set, is called after each recorded delivery attempt (metrics, tests).
	Observe func(Attempt)
}

// Attempt describes one recorded delivery attempt of a queued message.
type Attempt struct {
	Job     uint64
	Ticket  uint64
	Seq     int
	Attempt int // 1 for the first try
	// Sent, Deferred and Failed count the recipients that got 250, a temporary and a
	// permanent error in this attempt.
	Sent, Deferred, Failed int
	// Outcome is "sent" or "failed" when the job is finished, "retry" when it stays queued.
	Outcome string
	Err     string    // the last error, "" on success
	Next    time.Time // the next try, for "retry"
	// Took is how long the SMTP conversation of this attempt lasted.
	Took time.Duration
}

// ticketUpdater is what the queue needs from tickets: an interface so a nil *tickets.Service
// never hides in a non-nil interface.
type ticketUpdater interface {
	SetDelivery(tx *store.Tx, id uint64, seq int, state string) error
	SystemNote(tx *store.Tx, id uint64, text, problem string) error
}

// Outbound composes, signs, queues and delivers mail. It implements tickets.Mailer.
type Outbound struct {
	db      *store.DB
	audit   *audit.Log
	tickets ticketUpdater
	keyring *pgp.Keyring
	gateway *pgp.Key
	opts    Options
	log     *slog.Logger

	hostname string
	keys     []DKIMKey
	policy   string

	relay     string // host:port; "" = outbox
	relayHost string
	relayTLS  string
	username  string
	password  string
	outbox    string

	giveUp, firstRetry time.Duration

	limiter *limiter

	mu       sync.Mutex
	due      map[uint64]time.Time // queued job id → next attempt
	inflight map[uint64]bool
	kick     chan struct{}
	stop     func()
	done     chan struct{}
}

var _ tickets.Mailer = (*Outbound)(nil)

// New builds an Outbound from the [outbound] and [pgp] config. keyring and gateway may be nil
// (no PGP); tk may be nil only in tools that never deliver (then delivery states are not kept).
// Start must be called to deliver.
func New(cfg *config.Config, db *store.DB, log *audit.Log, tk *tickets.Service, keyring *pgp.Keyring, gateway *pgp.Key, opts Options) (*Outbound, error) {
	if cfg == nil || db == nil || log == nil {
		return nil, errors.New("outbound: config, store and audit log are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	setDefault(&opts.Concurrency, defaultConcurrency)
	setDefault(&opts.AutoAckPerHour, defaultAutoAckPerHour)
	setDefault(&opts.DialTimeout, defaultDialTimeout)
	setDefault(&opts.CommandTimeout, defaultCommandTimeout)
	setDefault(&opts.DataTimeout, defaultDataTimeout)
	setDefault(&opts.MaxRetryInterval, defaultMaxRetry)

	oc := cfg.Outbound
	o := &Outbound{
		db: db, audit: log, keyring: keyring, gateway: gateway, opts: opts,
		log:        opts.Logger.With("component", "outbound"),
		hostname:   cfg.Hostname,
		relay:      oc.Relay,
		relayTLS:   strings.ToLower(oc.RelayTLS),
		username:   oc.RelayUsername,
		giveUp:     oc.GiveUpAfter.Duration,
		firstRetry: oc.FirstRetry.Duration,
		limiter:    newLimiter(opts.AutoAckPerHour, time.Hour),
		due:        map[uint64]time.Time{},
		inflight:   map[uint64]bool{},
		kick:       make(chan struct{}, 1),
	}
	if tk != nil {
		o.tickets = tk
	}
	o.limiter.db, o.limiter.log = db, o.log
	if err := o.limiter.load(opts.Now()); err != nil {
		return nil, err
	}
	setDefault(&o.giveUp, defaultGiveUpAfter)
	setDefault(&o.firstRetry, defaultFirstRetry)
	if o.hostname == "" {
		return nil, errors.New("outbound: hostname is empty; set hostname in mailgate.toml (the HELO name and Message-ID domain)")
	}

	if err := o.loadKeys(oc); err != nil {
		return nil, err
	}
	if err := o.setPolicy(cfg.PGP.Encrypt); err != nil {
		return nil, err
	}
	if err := o.setRelay(oc, cfg.DataDir); err != nil {
		return nil, err
	}
	return o, nil
}

func setDefault[T int | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

func (o *Outbound) loadKeys(oc config.Outbound) error {
	add := func(file, selector, field string) error {
		if file == "" {
			return nil
		}
		if oc.DKIMDomain == "" {
			return fmt.Errorf("outbound: %s is set but dkim_domain is empty; set dkim_domain to your From domain", field)
		}
		if selector == "" {
			return fmt.Errorf("outbound: %s is set but its selector is empty", field)
		}
		k, err := LoadDKIMKey(file)
		if err != nil {
			return fmt.Errorf("outbound: %s: %w", field, err)
		}
		o.keys = append(o.keys, DKIMKey{Domain: strings.ToLower(oc.DKIMDomain), Selector: selector, Signer: k})
		return nil
	}
	if err := add(oc.DKIMKeyFile, oc.DKIMSelector, "dkim_key_file"); err != nil {
		return err
	}
	return add(oc.DKIMEd25519KeyFile, oc.DKIMEd25519Selector, "dkim_ed25519_key_file")
}

func (o *Outbound) setPolicy(p string) error {
	switch p = strings.ToLower(p); p {
	case "":
		p = EncryptNever
		if o.gateway != nil && o.keyring != nil {
			p = EncryptWhenKnown
		}
	case EncryptNever, EncryptWhenKnown:
	case EncryptRequired:
		if o.gateway == nil || o.keyring == nil {
			return errors.New("outbound: encrypt = \"required\" in [pgp] needs the gateway key (key_file); set it or write encrypt = \"when-key-known\"")
		}
	default:
		return fmt.Errorf("outbound: encrypt = %q in [pgp] is not never, when-key-known or required", p)
	}
	o.policy = p
	return nil
}

func (o *Outbound) setRelay(oc config.Outbound, dataDir string) error {
	if o.relay == "" {
		if dataDir == "" {
			return errors.New("outbound: relay is empty (dev mode) but data_dir is not set, so there is no outbox")
		}
		o.outbox = filepath.Join(dataDir, "outbox")
		if err := os.MkdirAll(o.outbox, 0o700); err != nil {
			return fmt.Errorf("outbound: outbox: %w", err)
		}
		return nil
	}
	host, _, err := net.SplitHostPort(o.relay)
	if err != nil {
		return fmt.Errorf("outbound: relay %q: %w; write e.g. relay = \"smtp.example.com:587\"", o.relay, err)
	}
	o.relayHost = host
	switch o.relayTLS {
	case "":
		o.relayTLS = TLSStartTLS
	case TLSStartTLS, TLSImplicit:
	case TLSNone:
		// Plain text only where nobody else can listen in.
		if !isLoopbackHost(host) {
			return fmt.Errorf("outbound: relay_tls = \"none\" is allowed only for a loopback relay, not %q; use \"starttls\" or \"tls\"", o.relay)
		}
	default:
		return fmt.Errorf("outbound: relay_tls = %q is not starttls, tls or none", oc.RelayTLS)
	}
	if oc.RelayUsername != "" {
		if oc.RelayPasswordFile == "" {
			return errors.New("outbound: relay_username is set but relay_password_file is not")
		}
		b, err := os.ReadFile(oc.RelayPasswordFile)
		if err != nil {
			return fmt.Errorf("outbound: relay password: %w", err)
		}
		o.password = strings.TrimRight(string(b), "\r\n")
		if o.password == "" {
			return fmt.Errorf("outbound: relay_password_file %s is empty", oc.RelayPasswordFile)
		}
	}
	return nil
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DKIMKeys returns the configured signing keys, for printing their DNS records.
func (o *Outbound) DKIMKeys() []DKIMKey { return append([]DKIMKey(nil), o.keys...) }

// Outbox is the dev-mode folder that receives .eml files ("" when a relay is configured).
func (o *Outbound) Outbox() string { return o.outbox }

func (o *Outbound) now() time.Time { return o.opts.Now() }
