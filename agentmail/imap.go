package agentmail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/internal/connlimit"
	"mailgate/tickets"
)

// IMAPOptions wires an IMAPServer.
type IMAPOptions struct {
	Tickets *tickets.Service
	Access  *access.Service
	Audit   *audit.Log
	// TLSConfig carries the [imap] certificate; without it only loopback listeners are served.
	TLSConfig *tls.Config
	// TLSMode is TLSAuto (""; implicit TLS on port 993, STARTTLS elsewhere), TLSImplicit or
	// TLSStartTLS, for every listener ([imap] tls).
	TLSMode string
	// Hostname names the server in Message-IDs of rendered notes (cfg.Hostname).
	Hostname string
	Logger   *slog.Logger
	// MaxConnsPerIP caps connections per client address (IPv6: per /64, and three times this
	// per /48); default 20.
	MaxConnsPerIP int
	// MaxConns caps all the listeners' connections together ([imap] max_conns); 0: no cap.
	MaxConns int
	// FetchWindow is how many messages one FETCH reads ahead, so their audited reads share
	// commits; default 16 (each may hold a whole message in memory until written).
	FetchWindow int
}

// IMAPServer is the read-only IMAP view of the queues for agents' mail clients.
//
// The view: one mailbox per queue the agent may see, named after the queue, plus an always
// empty INBOX because RFC 3501 requires one and several clients refuse to work without it (a
// queue named "inbox" is served as INBOX instead). Messages never disappear from a mailbox, so
// sequence numbers only grow and no EXPUNGE is ever sent. Only \Seen can be changed, per agent.
type IMAPServer struct {
	opts   IMAPOptions
	log    *slog.Logger
	render *renderer
	seen   seenStore

	secure *imapserver.Server // non-loopback listeners: authentication only over TLS
	local  *imapserver.Server // loopback listeners: plaintext login allowed

	conns   *connlimit.Limiter
	refused func(connlimit.Reason)

	mu       sync.Mutex
	watchers map[string]map[*selected]struct{} // queue → selected mailboxes of live sessions
	closed   bool
}

// NewIMAP returns an IMAPServer; call Serve for each listener.
func NewIMAP(opts IMAPOptions) *IMAPServer {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxConnsPerIP == 0 {
		opts.MaxConnsPerIP = 20
	}
	if opts.FetchWindow <= 0 {
		opts.FetchWindow = 16
	}
	if opts.Hostname == "" {
		opts.Hostname = "localhost"
	}
	opts.TLSConfig = tlsConfig(opts.TLSConfig)
	s := &IMAPServer{
		opts:     opts,
		log:      opts.Logger.With("component", "imap"),
		seen:     seenStore{db: opts.Tickets.DB()},
		watchers: map[string]map[*selected]struct{}{},
	}
	s.render = &renderer{hostname: opts.Hostname, queueAddr: s.queueAddr}
	s.conns = connlimit.New(limits(opts.MaxConns, opts.MaxConnsPerIP))
	s.refused = refusalLog(s.log, s.conns)
	mk := func(insecure bool) *imapserver.Server {
		return imapserver.New(&imapserver.Options{
			NewSession: s.newSession,
			// IMAP4rev1 only: no NAMESPACE, MOVE, UIDPLUS or UNAUTHENTICATE is advertised, so
			// no session interface beyond Session (and SessionAppendLimit) is needed.
			Caps:         imap.CapSet{imap.CapIMAP4rev1: {}},
			TLSConfig:    opts.TLSConfig,
			InsecureAuth: insecure,
			Logger:       imapLogger{s.log},
		})
	}
	s.secure, s.local = mk(false), mk(true)
	return s
}

// Serve answers IMAP on l until Close. A loopback listener allows plaintext login; any other
// needs the TLS certificate (implicit TLS or STARTTLS by TLSMode; login only after TLS).
func (s *IMAPServer) Serve(l net.Listener) error { return s.serve(l, s.opts.TLSMode) }

// ServeTLS is Serve with TLS from the first byte whatever the port and mode.
func (s *IMAPServer) ServeTLS(l net.Listener) error { return s.serve(l, TLSImplicit) }

// TLSMode describes what a listener on addr speaks: "implicit TLS", "STARTTLS", or why neither.
func (s *IMAPServer) TLSMode(addr net.Addr) string {
	return describeTLS(s.opts.TLSConfig, s.opts.TLSMode, addr, implicitTLSIMAP)
}

func (s *IMAPServer) serve(l net.Listener, mode string) error {
	pl, _, loop, err := prepare(l, s.opts.TLSConfig, implicitTLSIMAP, mode, s.conns,
		"* BYE too many connections, try later", s.refused)
	if err != nil {
		l.Close()
		return fmt.Errorf("imap: %w", err)
	}
	srv := s.secure
	if loop {
		srv = s.local
	}
	if err := srv.Serve(pl); err != nil && !errors.Is(err, net.ErrClosed) {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return nil
		}
		return fmt.Errorf("imap on %s: %w", l.Addr(), err)
	}
	return nil
}

// Conns returns the connection limiter of the IMAP listeners (metrics, tests).
func (s *IMAPServer) Conns() *connlimit.Limiter { return s.conns }

// Close stops the listeners and ends every connection.
func (s *IMAPServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err1 := s.secure.Close()
	err2 := s.local.Close()
	return errors.Join(err1, err2)
}

// Notify tells the sessions that have queue selected that messages were added (wire it to
// tickets.Options.Notify). It never blocks: a pending wake-up is enough for any number of
// messages, because the session reads what is new from the index when it wakes.
func (s *IMAPServer) Notify(queue string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sel := range s.watchers[queue] {
		sel.wakeUp()
	}
}

func (s *IMAPServer) watch(sel *selected) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.watchers[sel.queue]
	if m == nil {
		m = map[*selected]struct{}{}
		s.watchers[sel.queue] = m
	}
	m[sel] = struct{}{}
}

func (s *IMAPServer) unwatch(sel *selected) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.watchers[sel.queue], sel)
	if len(s.watchers[sel.queue]) == 0 {
		delete(s.watchers, sel.queue)
	}
}

// flagsChanged hands a \Seen change to the agent's other sessions on the same queue.
func (s *IMAPServer) flagsChanged(from *selected, ch []flagChange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sel := range s.watchers[from.queue] {
		if sel != from && sel.agent == from.agent {
			sel.queueFlags(ch)
		}
	}
}

func (s *IMAPServer) queueAddr(queue string) string {
	if q, ok := s.opts.Tickets.Queue(queue); ok {
		return q.Address
	}
	return "mailgate@" + s.opts.Hostname
}

// auditEvent appends an event in its own commit. A failed audit write fails the command: a
// look at customer data must not go unrecorded.
func (s *IMAPServer) auditEvent(ev audit.Event) error {
	if err := s.opts.Audit.Append(ev); err != nil {
		return fmt.Errorf("audit %s: %w", ev.Action, err)
	}
	return nil
}

// imapLogger sends go-imap's messages (mostly "failed to read command" on every disconnect)
// to debug level; they never hold credentials (DebugWriter, which would, is never set).
type imapLogger struct{ l *slog.Logger }

func (l imapLogger) Printf(format string, args ...any) {
	level := slog.LevelDebug
	if strings.Contains(format, "panic") {
		level = slog.LevelError // a recovered panic: a bug of ours or the library's
	}
	l.l.Log(context.Background(), level, fmt.Sprintf(format, args...))
}
