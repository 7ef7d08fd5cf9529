package inbound

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"mailgate/config"
	"mailgate/internal/connlimit"
	"mailgate/tickets"
)

// Server is mailgate's inbound SMTP server (the MX): go-smtp with every limit set, the sender
// checks of Verifier, the policy of [verify], and tickets.Ingest behind the 250.
type Server struct {
	cfg    *config.Config
	tk     *tickets.Service
	v      Verifier // a copy: MaxSignatures and AuthservID come from the config
	opts   ServerOptions
	log    *slog.Logger
	smtp   *smtp.Server
	queues map[string]string // lowercased address → queue name

	conns     *connlimit.Limiter
	rate      *rateLimit
	refused   connlimit.Log // refusals are logged at most every 10 s
	lastSweep atomic.Int64  // unix ns of the last shortenIdle

	// ctx ends when the server closes; transactions derive from it.
	ctx    context.Context
	cancel context.CancelFunc

	draining atomic.Bool

	mu        sync.Mutex
	listeners []net.Listener
	live      map[*conn]struct{}
	idle      chan struct{} // closed when live becomes empty during a drain

	// DATA handlers still running: Close waits for them, so that nothing writes to the store
	// after the server said it was closed (the caller closes the store next).
	dataMu     sync.Mutex
	dataCond   *sync.Cond
	dataActive int
	dataClosed bool
}

// ServerOptions wires a Server to what cmd/mailgate owns.
type ServerOptions struct {
	// Logger gets one line per connection event, with the connection id; never bodies.
	Logger *slog.Logger
	// TLSConfig offers STARTTLS when set; MinVersion is raised to TLS 1.2.
	TLSConfig *tls.Config
	// Now is the clock (Received: dates, rate limits); nil means time.Now.
	Now func() time.Time
	// Metrics receives counters; nil means none.
	Metrics Metrics
	// OnRefused is told about every message refused or deferred at the end of DATA, so it
	// can be audited (tickets.Ingest audits the accepted ones). It runs before the reply is
	// sent and must not block for long. nil means no record.
	OnRefused func(Refusal)
}

// Metrics receives the server's counters; a Prometheus adapter implements it. The methods
// must be cheap and safe for concurrent use.
type Metrics interface {
	// Connection counts a TCP connection: "accepted", "too_many" (per-client or per-/48
	// limit), "full" (max_conns) or "shutting_down".
	Connection(result string)
	// Command counts MAIL and RCPT outcomes: cmd "mail" with "ok", "rate_limited",
	// "shutting_down"; cmd "rcpt" with "ok", "unknown".
	Command(cmd, result string)
	// Message counts the end of a DATA transaction with one of the Result* values, the size
	// as received, and the time from the end of DATA to the reply (verification + commit).
	Message(result string, size int, d time.Duration)
}

// Outcomes of a DATA transaction, for Metrics and logs.
const (
	ResultAccepted     = "accepted"
	ResultQuarantined  = "quarantined"
	ResultTooLarge     = "too_large"
	ResultBareNewline  = "bare_newline"
	ResultNUL          = "nul"
	ResultDMARCReject  = "dmarc_reject"
	ResultDNSDefer     = "dns_defer"
	ResultStorageError = "storage_error"
	ResultReadError    = "read_error"
)

// Refusal describes a message refused or deferred at the end of DATA.
type Refusal struct {
	Remote   string // client ip:port
	ConnID   string // as in the logs
	HELO     string
	MailFrom string // "" for the null sender
	Queues   []string
	Code     int    // SMTP reply code: 5xx refused, 4xx deferred
	Result   string // one of the Result* values
	Reason   string // the reply text
	Verdict  *Verdict
}

// VerdictMetrics is an optional addition to Metrics: it counts every verification verdict.
type VerdictMetrics interface {
	Verdict(spf, dkim, dmarc string)
}

type nopMetrics struct{}

func (nopMetrics) Connection(string)                  {}
func (nopMetrics) Command(string, string)             {}
func (nopMetrics) Message(string, int, time.Duration) {}

// NewServer builds the server for cfg's [smtp], [verify] and [[queue]] tables. v does the
// sender checks; its AuthservID is replaced by cfg.Hostname and its MaxSignatures by
// [smtp] max_dkim_signatures (v itself is not changed).
func NewServer(cfg *config.Config, tk *tickets.Service, v *Verifier, opts ServerOptions) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Metrics == nil {
		opts.Metrics = nopMetrics{}
	}
	s := &Server{
		cfg:    cfg,
		tk:     tk,
		opts:   opts,
		log:    opts.Logger.With("component", "smtp"),
		queues: map[string]string{},
		conns: connlimit.New(connlimit.Limits{
			Total: cfg.SMTP.MaxConns, PerClient: cfg.SMTP.MaxConnsPerIP, PerNet48: cfg.SMTP.MaxConnsPerIPv6Net48,
		}),
		rate: newRateLimit(cfg.SMTP.MessagesPerMinutePerIP, opts.Now),
		live: map[*conn]struct{}{},
	}
	s.refused.Every = 10 * time.Second
	if v != nil {
		s.v = *v
	}
	s.v.AuthservID = cfg.Hostname
	if cfg.SMTP.MaxDKIMSignatures > 0 {
		s.v.MaxSignatures = cfg.SMTP.MaxDKIMSignatures
	}
	// Queue addresses, their aliases, and postmaster (config.Recipients says which queue).
	s.queues = cfg.Recipients()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.dataCond = sync.NewCond(&s.dataMu)

	srv := smtp.NewServer(backend{s})
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.SMTP.MaxMessageBytes
	srv.MaxRecipients = cfg.SMTP.MaxRecipients
	srv.MaxLineLength = cfg.SMTP.MaxLineLength
	// go-smtp sets ReadTimeout before each command line; conn.SetReadDeadline turns it into
	// the idle timeout of the moment, and Data extends it to read_timeout for the message.
	srv.ReadTimeout = cfg.SMTP.IdleTimeout.Duration
	if srv.ReadTimeout <= 0 {
		srv.ReadTimeout = 5 * time.Minute
	}
	srv.WriteTimeout = cfg.SMTP.WriteTimeout.Duration
	srv.ErrorLog = slogAdapter{s.log}
	// Submission (AUTH) is a separate listener of cmd/mailgate; the MX offers no AUTH at all,
	// and no BINARYMIME, whose chunks would bypass the line checks.
	srv.AllowInsecureAuth = false
	if opts.TLSConfig != nil {
		tc := opts.TLSConfig.Clone()
		if tc.MinVersion < tls.VersionTLS12 {
			tc.MinVersion = tls.VersionTLS12
		}
		srv.TLSConfig = tc
	}
	s.smtp = srv
	return s
}

// Serve answers SMTP on l until Shutdown or Close. It returns nil after those, else the
// listener's error.
func (s *Server) Serve(l net.Listener) error {
	if s.draining.Load() {
		l.Close()
		return smtp.ErrServerClosed
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	err := s.smtp.Serve(&listener{Listener: l, s: s})
	if errors.Is(err, net.ErrClosed) && s.draining.Load() {
		return nil
	}
	return err
}

// ListenAndServe binds every address (the [smtp] listen list) and serves them all. A bind
// error closes what was bound and is returned at once; after Shutdown or Close it returns nil.
func (s *Server) ListenAndServe(addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("smtp: no listen address (set [smtp] listen)")
	}
	var ls []net.Listener
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			for _, o := range ls {
				o.Close()
			}
			return fmt.Errorf("smtp: listen on %s: %w", a, err)
		}
		ls = append(ls, l)
	}
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- s.Serve(l) }()
	}
	var first error
	for range ls {
		if err := <-errc; err != nil && !errors.Is(err, smtp.ErrServerClosed) && first == nil {
			first = err
			s.Close() // one listener failed: stop the others rather than run half a server
		}
	}
	return first
}

// Conns returns the connection limiter of the MX listeners (metrics, tests).
func (s *Server) Conns() *connlimit.Limiter { return s.conns }

// idleTimeout is how long a client may take to send its next command: [smtp] idle_timeout, or
// busy_idle_timeout outside a transaction while 3/4 of max_conns are taken, so that a flood of
// idle connections drains in seconds while a real client, which sends its next command at once,
// does not notice.
func (s *Server) idleTimeout(inTx bool) time.Duration {
	d := s.cfg.SMTP.IdleTimeout.Duration
	if d <= 0 {
		d = 5 * time.Minute
	}
	if b := s.cfg.SMTP.BusyIdleTimeout.Duration; !inTx && b > 0 && b < d && s.conns.Busy() {
		return b
	}
	return d
}

// shortenIdle gives the connections already waiting for a command the busy timeout once the
// server is busy, counted from when they began to wait: otherwise a flood opened slowly would
// keep the long timeout it got while the server was quiet. It runs at most once a second.
func (s *Server) shortenIdle() {
	b := s.idleTimeout(false)
	if b >= s.idleTimeout(true) {
		return // not busy (any more), or no shorter timeout configured
	}
	now := time.Now().UnixNano()
	last := s.lastSweep.Load()
	if now-last < int64(time.Second) || !s.lastSweep.CompareAndSwap(last, now) {
		return
	}
	s.mu.Lock()
	live := make([]*conn, 0, len(s.live))
	for c := range s.live {
		live = append(live, c)
	}
	s.mu.Unlock()
	for _, c := range live {
		if w := c.waitSince.Load(); w != 0 && !c.busy() {
			c.Conn.SetReadDeadline(time.Unix(0, w).Add(b))
		}
	}
}

// Addrs returns the addresses being served.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]net.Addr, 0, len(s.listeners))
	for _, l := range s.listeners {
		out = append(out, l.Addr())
	}
	return out
}

// Shutdown drains the server (SIGTERM): new connections are answered 421 and closed, idle
// sessions get 421 at their next command, transactions under way (MAIL given) run to their
// end, and then their connections get 421 too. It returns when every connection is gone, or
// closes the rest and returns ctx's error when ctx ends first.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.draining.CompareAndSwap(false, true) {
		return smtp.ErrServerClosed
	}
	s.mu.Lock()
	idle := make(chan struct{})
	s.idle = idle
	if len(s.live) == 0 {
		close(idle)
	}
	live := make([]*conn, 0, len(s.live))
	for c := range s.live {
		live = append(live, c)
	}
	s.mu.Unlock()
	for _, c := range live {
		c.kickIfIdle()
	}
	s.log.Info("draining", "connections", len(live))
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.cancel()
	s.smtp.Close() // the listeners, and whatever connection outlived ctx
	s.waitData()
	return err
}

// Close stops the server now: listeners and connections are closed, transactions lost
// (their clients never got a 250, so they send again). It returns once no DATA handler runs.
func (s *Server) Close() error {
	s.draining.Store(true)
	s.cancel()
	err := s.smtp.Close()
	s.waitData()
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// beginData registers a DATA handler; false once the server is closed.
func (s *Server) beginData() bool {
	s.dataMu.Lock()
	defer s.dataMu.Unlock()
	if s.dataClosed {
		return false
	}
	s.dataActive++
	return true
}

func (s *Server) endData() {
	s.dataMu.Lock()
	s.dataActive--
	if s.dataActive == 0 {
		s.dataCond.Broadcast()
	}
	s.dataMu.Unlock()
}

// waitData refuses new DATA handlers and waits for the running ones.
func (s *Server) waitData() {
	s.dataMu.Lock()
	s.dataClosed = true
	for s.dataActive > 0 {
		s.dataCond.Wait()
	}
	s.dataMu.Unlock()
}

func (s *Server) track(c *conn) {
	s.mu.Lock()
	s.live[c] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.live, c)
	if s.idle != nil && len(s.live) == 0 {
		select {
		case <-s.idle:
		default:
			close(s.idle)
		}
	}
	s.mu.Unlock()
}

// queueFor maps a recipient to a queue name. Addresses match without regard to case (the
// domain is case-insensitive by RFC 5321 2.4; a local part that differed only in case would
// be a trap for customers). Sub-addressing is accepted: "support+anything@example.com" reaches
// the queue "support@example.com" unless a queue has that exact address, because people and
// tools add tags to addresses they were given and a bounce back to them would lose the mail.
func (s *Server) queueFor(rcpt string) (string, bool) {
	addr := strings.ToLower(strings.TrimSpace(rcpt))
	if q, ok := s.queues[addr]; ok {
		return q, true
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 {
		return "", false
	}
	local, domain := addr[:at], addr[at:]
	if plus := strings.IndexByte(local, '+'); plus > 0 {
		q, ok := s.queues[local[:plus]+domain]
		return q, ok
	}
	return "", false
}

// newID returns a short random id for a connection (logs, Received: id).
func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// listener applies the limits that must act before the 220 greeting: draining and the
// connection caps (max_conns, per client, per IPv6 /48). go-smtp has no hook there, hence the
// wrapper. A refused client is told so with 421 and closed at once, never left hanging.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s := l.s
		ip := remoteIP(nc)
		key := ipKey(ip)
		if s.draining.Load() {
			s.opts.Metrics.Connection("shutting_down")
			refuse(nc, "421 4.3.2 "+s.cfg.Hostname+" is shutting down, try again later")
			continue
		}
		release, why := s.conns.Acquire(ip)
		if why != connlimit.None {
			s.refuse(nc, why)
			continue
		}
		s.opts.Metrics.Connection("accepted")
		c := &conn{Conn: nc, s: s, key: key, ip: ip, id: newID(), release: release}
		s.track(c)
		if s.conns.Busy() {
			s.shortenIdle()
		}
		return c, nil
	}
}

// refuse answers a connection over a cap with 421 and closes it.
func (s *Server) refuse(nc net.Conn, why connlimit.Reason) {
	line, result := "421 4.7.0 too many connections, try later", "full"
	switch why {
	case connlimit.Client:
		line, result = "421 4.7.0 too many connections from your address, try again later", "too_many"
	case connlimit.Net48:
		line, result = "421 4.7.0 too many connections from your network, try again later", "too_many"
	}
	s.opts.Metrics.Connection(result)
	if ok, n := s.refused.Refused(time.Now()); ok {
		lim := s.conns.Limits()
		s.log.Warn("connections refused", "reason", string(why), "refused", n, "last_remote", nc.RemoteAddr().String(),
			"open", s.conns.Open(), "max_conns", lim.Total, "max_conns_per_ip", lim.PerClient, "max_conns_per_ipv6_48", lim.PerNet48)
	}
	refuse(nc, line)
}

// refuse answers a connection that will not be served and closes it. A fresh socket's send
// buffer takes the line at once; the deadline only guards against a peer that is not reading.
func refuse(nc net.Conn, line string) {
	nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	nc.Write([]byte(line + "\r\n"))
	nc.Close()
}

// conn is an accepted connection: it holds the per-client slot and knows whether a
// transaction is under way, which is what draining needs.
type conn struct {
	net.Conn
	s       *Server
	key     string
	ip      net.IP
	id      string
	release func() // the connection's slot in s.conns
	// waitSince is when go-smtp began to wait for a command (unix ns); 0 once bytes arrived.
	waitSince atomic.Int64

	mu        sync.Mutex
	inTx      bool
	closeOnce sync.Once
}

// errDraining is what a read returns once an idle connection must end: go-smtp answers a
// read timeout with "421 4.4.2" and closes, on plain and TLS connections alike.
type errDraining struct{}

func (errDraining) Error() string   { return "server shutting down" }
func (errDraining) Timeout() bool   { return true }
func (errDraining) Temporary() bool { return true }

func (c *conn) Read(b []byte) (int, error) {
	if c.s.draining.Load() && !c.busy() {
		return 0, errDraining{}
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.waitSince.Store(0)
	}
	return n, err
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.release()
		c.s.untrack(c)
	})
	return err
}

// SetReadDeadline is how go-smtp starts waiting for a command (with ReadTimeout, before each
// line and before a TLS handshake): the deadline becomes the idle timeout of the moment.
func (c *conn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		return c.Conn.SetReadDeadline(t)
	}
	now := time.Now()
	c.waitSince.Store(now.UnixNano())
	return c.Conn.SetReadDeadline(now.Add(c.s.idleTimeout(c.busy())))
}

// beginData gives the message itself [smtp] read_timeout, from the 354 on.
func (c *conn) beginData() {
	if d := c.s.cfg.SMTP.ReadTimeout.Duration; d > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(d))
	}
}

func (c *conn) busy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inTx
}

// setTx marks a transaction as begun (MAIL accepted) or ended (reset, DATA done).
func (c *conn) setTx(on bool) {
	c.mu.Lock()
	c.inTx = on
	c.mu.Unlock()
	if !on {
		c.kickIfIdle()
	}
}

// kickIfIdle wakes a read blocked waiting for the next command once the server drains, so
// that the client gets its 421 now rather than at the idle timeout.
func (c *conn) kickIfIdle() {
	if !c.s.draining.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.inTx {
		c.Conn.SetReadDeadline(time.Now())
	}
}

// slogAdapter is go-smtp's ErrorLog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Println(v ...any)               { a.l.Warn(strings.TrimSpace(fmt.Sprintln(v...))) }
