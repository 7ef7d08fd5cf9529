package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailgate/config"
	"mailgate/store"
	"mailgate/tickets"
)

// Fetching mail from an upstream mailbox ([[fetch.account]]): for companies whose support
// address lives at an existing provider. One Fetcher per account keeps one IMAP connection,
// waits in IDLE (or polls), and files every new message through the same verification and
// tickets.Ingest path as SMTP mail. Its only state is a cursor (UIDVALIDITY, last UID) in its
// own store bucket; it never writes ticket data itself.

// FetchOptions wires a Fetcher to what cmd/mailgate owns.
type FetchOptions struct {
	// Logger gets connection events and one line per message (never bodies or passwords).
	Logger *slog.Logger
	// TLSConfig overrides the TLS client settings (tests set RootCAs). ServerName defaults
	// to the URL's host and MinVersion is raised to TLS 1.2.
	TLSConfig *tls.Config
	// Now is the clock for Received: dates and Status times; nil means time.Now.
	Now func() time.Time
	// OnStatus, when set, is called with the new status after every change. It runs on the
	// fetch goroutine and must not block.
	OnStatus func(FetchStatus)
	// CommandTimeout bounds each IMAP command, the dial and the TLS handshake; a command
	// without an answer by then closes the connection (the client library has no timeout of
	// its own). A message body gets five times as long. 0 means 2 minutes.
	CommandTimeout time.Duration
	// IdleRecheck is how often a sync runs while idling anyway, which also proves the
	// connection alive (servers drop IDLE after about 29 minutes). 0 means 10 minutes.
	IdleRecheck time.Duration
}

// FetchStatus is what /healthz and /metrics show about one account.
type FetchStatus struct {
	// Account names the upstream mailbox without secrets: scheme://user@host:port/mailbox.
	Account string
	Queue   string
	// Connected is true while logged in with the mailbox selected.
	Connected bool
	// LastError is the most recent failure (connection, login, command, storage); it is
	// cleared when a later sync pass succeeds.
	LastError   string
	LastErrorAt time.Time
	// LastSuccess is the end of the last sync pass that worked.
	LastSuccess time.Time
	// Fetched counts messages handed to tickets, Duplicates those tickets already had.
	Fetched    uint64
	Duplicates uint64
	// Skipped counts messages left upstream (over max_message_bytes), flagged there;
	// LastSkipped says which and why.
	Skipped     uint64
	LastSkipped string
	// Warnings counts commands the server refused after a message was stored (\Seen,
	// MOVE); such a message is not fetched again, but stays unread or in place upstream.
	Warnings    uint64
	LastWarning string
	// Failures counts failed sessions since start; each is followed by a backoff.
	Failures uint64
	// NextRetry is when the next connection attempt is due while disconnected.
	NextRetry time.Time
}

// Backoff between reconnections: doubled after each failure, reset after a sync that worked.
const (
	fetchMinBackoff = time.Second
	fetchMaxBackoff = 5 * time.Minute

	defaultCommandTimeout = 2 * time.Minute
	defaultIdleRecheck    = 10 * time.Minute
	defaultMaxMessage     = 25 << 20
	fetchBucket           = "fetch_state"
)

// Fetcher pulls new mail from one upstream mailbox into one queue.
type Fetcher struct {
	cfg  *config.Config
	acct config.FetchAccount
	tk   *tickets.Service
	v    Verifier // a copy: AuthservID and MaxSignatures come from the config
	db   *store.DB
	opts FetchOptions
	log  *slog.Logger

	// From the URL; urlErr is set when it cannot be used (config validation prevents it).
	host, addr, mailbox, account string
	cursorKey                    []byte
	urlErr                       error

	running atomic.Bool

	mu     sync.Mutex
	status FetchStatus

	// Test hooks (nil in production).
	// afterIngest runs after Ingest committed and before the cursor is written; an error
	// ends the session there, as a crash would.
	afterIngest func(uid uint32) error
	// afterPass runs after every sync pass that worked, with the messages it handled.
	afterPass func(n int)
	// sleep waits out a backoff; nil means a timer. It returns ctx.Err() when ctx ends.
	sleep func(ctx context.Context, d time.Duration) error
}

// NewFetcher prepares a fetcher for acct (one of cfg.Fetch.Accounts). v does the sender
// checks; its AuthservID becomes cfg.Hostname and MaxSignatures [smtp] max_dkim_signatures
// (v itself is not changed). db holds the cursor in the bucket "fetch_state".
func NewFetcher(cfg *config.Config, acct config.FetchAccount, tk *tickets.Service, v *Verifier, db *store.DB, opts FetchOptions) *Fetcher {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = defaultCommandTimeout
	}
	if opts.IdleRecheck <= 0 {
		opts.IdleRecheck = defaultIdleRecheck
	}
	f := &Fetcher{cfg: cfg, acct: acct, tk: tk, db: db, opts: opts}
	if v != nil {
		f.v = *v
	}
	f.v.AuthservID = cfg.Hostname
	if cfg.SMTP.MaxDKIMSignatures > 0 {
		f.v.MaxSignatures = cfg.SMTP.MaxDKIMSignatures
	}
	f.parseURL()
	f.log = opts.Logger.With("component", "fetch", "account", f.account)
	f.status = FetchStatus{Account: f.account, Queue: acct.Queue}
	if f.urlErr == nil {
		// The cursor belongs to the mailbox, not to the URL's spelling: imaps://h/INBOX and
		// imaps://h:993/INBOX share it. A keyed hash, so the bucket does not name the account.
		f.cursorKey = db.Index("fetch-cursor", strings.ToLower(f.addr)+"/"+f.mailbox+"\x00"+acct.Username)
	}
	return f
}

// parseURL reads host, port and mailbox from the account's URL.
func (f *Fetcher) parseURL() {
	u, err := url.Parse(f.acct.URL)
	if err != nil || u.Hostname() == "" || (u.Scheme != "imap" && u.Scheme != "imaps") {
		f.urlErr = fmt.Errorf("fetch: url %q is not imap://host[:port]/mailbox or imaps://...", f.acct.URL)
		f.account = "invalid url"
		return
	}
	f.host = u.Hostname()
	port := u.Port()
	if port == "" {
		port = "143"
		if u.Scheme == "imaps" {
			port = "993"
		}
	}
	f.addr = net.JoinHostPort(f.host, port)
	f.mailbox = strings.TrimPrefix(u.Path, "/")
	if f.mailbox == "" {
		f.mailbox = "INBOX"
	}
	shown := url.URL{Scheme: u.Scheme, User: url.User(f.acct.Username), Host: f.addr, Path: "/" + f.mailbox}
	f.account = shown.String()
	switch f.acct.TLS {
	case "implicit", "starttls":
	case "none":
		if !loopbackHost(f.host) {
			f.urlErr = fmt.Errorf("fetch %s: tls = \"none\" is allowed only for a loopback host", f.account)
		}
	default:
		f.urlErr = fmt.Errorf("fetch %s: tls = %q; use implicit, starttls or none", f.account, f.acct.TLS)
	}
}

func loopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Account names the upstream mailbox as Status does.
func (f *Fetcher) Account() string { return f.account }

// Status returns the current state, for /healthz and /metrics. Safe for concurrent use.
func (f *Fetcher) Status() FetchStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// update changes the status under the lock and tells OnStatus.
func (f *Fetcher) update(fn func(s *FetchStatus)) {
	f.mu.Lock()
	fn(&f.status)
	s := f.status
	f.mu.Unlock()
	if f.opts.OnStatus != nil {
		f.opts.OnStatus(s)
	}
}

// Run fetches until ctx ends, reconnecting with exponential backoff (1s doubling to 5 min)
// after any failure. It returns nil once ctx ends, and an error only when the account
// cannot work at all (an unusable url or tls setting) or Run is already running.
func (f *Fetcher) Run(ctx context.Context) error {
	if f.urlErr != nil {
		f.update(func(s *FetchStatus) { s.LastError, s.LastErrorAt = f.urlErr.Error(), f.opts.Now() })
		return f.urlErr
	}
	if !f.running.CompareAndSwap(false, true) {
		return fmt.Errorf("fetch %s: already running", f.account)
	}
	defer f.running.Store(false)
	var delay time.Duration
	for {
		progressed, err := f.session(ctx)
		if ctx.Err() != nil {
			f.update(func(s *FetchStatus) { s.Connected = false })
			return nil
		}
		if progressed {
			delay = 0
		}
		delay = nextBackoff(delay)
		if err == nil {
			err = errors.New("connection ended")
		}
		now := f.opts.Now()
		f.update(func(s *FetchStatus) {
			s.Connected = false
			s.LastError, s.LastErrorAt = err.Error(), now
			s.Failures++
			s.NextRetry = now.Add(delay)
		})
		f.log.Warn("fetch failed; retrying", "err", err, "retry_in", delay)
		if err := f.wait(ctx, delay); err != nil {
			f.update(func(s *FetchStatus) { s.NextRetry = time.Time{} })
			return nil
		}
		f.update(func(s *FetchStatus) { s.NextRetry = time.Time{} })
	}
}

// nextBackoff doubles the previous delay within [fetchMinBackoff, fetchMaxBackoff].
func nextBackoff(prev time.Duration) time.Duration {
	switch {
	case prev < fetchMinBackoff:
		return fetchMinBackoff
	case prev >= fetchMaxBackoff/2:
		return fetchMaxBackoff
	}
	return prev * 2
}

func (f *Fetcher) wait(ctx context.Context, d time.Duration) error {
	if f.sleep != nil {
		return f.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
