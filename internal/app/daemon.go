package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mailgate/agentmail"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/inbound"
	"mailgate/internal/connlimit"
	"mailgate/internal/metrics"
	"mailgate/pgp"
	"mailgate/web"
)

// ServeOptions are `mailgate serve`'s flags.
type ServeOptions struct {
	// ConfigPath is -config; "" is dev mode with its data in ./mailgate-data.
	ConfigPath string
	// Listen overrides listener addresses by service ("smtp", "submission", "web", "imap",
	// "metrics"),
	// for tests and for dev mode on a machine where its fixed ports are taken; "none" turns
	// a service off. A port of 0 takes any free port; serve prints what it bound.
	Listen map[string]string
	// Version is printed at start and audited.
	Version string
	// Stdout gets what a person reads: listeners, first-start credentials. Logs go to Logs.
	Stdout io.Writer
	Logs   io.Writer
	// DrainTimeout bounds the graceful shutdown; default 30s.
	DrainTimeout time.Duration
}

// Serve runs the daemon until SIGTERM/SIGINT (or ctx ends): it loads the config (refusing to
// start on any problem), opens the store, starts every listener and the control socket, and
// on a signal drains them, saves the delivery queue's state and closes the store.
func Serve(ctx context.Context, o ServeOptions) error {
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Logs == nil {
		o.Logs = os.Stderr
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	var cfg *config.Config
	var dev *DevSetup
	var err error
	if o.ConfigPath == "" {
		dir, err := filepath.Abs(DevDataDir)
		if err != nil {
			return err
		}
		if cfg, err = DevConfig(dir); err != nil {
			return err
		}
	} else if cfg, err = config.Load(o.ConfigPath); err != nil {
		return err
	}
	if err := applyListen(cfg, o.Listen); err != nil {
		return err
	}
	if cfg.Dev {
		if dev, err = PrepareDev(cfg); err != nil {
			return err
		}
	} else if err := config.Validate(cfg); err != nil {
		return err
	}
	// The same file checks as check-config, before anything is created or opened.
	if err := Preflight(cfg); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	levelVar := new(slog.LevelVar)
	log := newLogger(o.Logs, cfg.Log, levelVar)
	applyConnBudget(cfg, connlimit.FileLimit(), log)

	a, err := Open(cfg, Options{Logger: log, LockTimeout: time.Second})
	if err != nil {
		return err
	}
	defer a.Close()
	d := &daemon{app: a, cfg: cfg, log: log, opts: o, level: levelVar, dev: dev}
	return d.run(ctx)
}

// applyListen applies the -listen-* overrides.
func applyListen(cfg *config.Config, m map[string]string) error {
	list := func(v string) []string {
		if v == "none" {
			return []string{}
		}
		return strings.Split(v, ",")
	}
	for k, v := range m {
		if v == "" {
			continue
		}
		switch k {
		case "smtp":
			cfg.SMTP.Listen = list(v)
		case "submission":
			cfg.SMTP.SubmissionListen = list(v)
		case "imap":
			cfg.IMAP.Listen = list(v)
		case "web":
			if v == "none" {
				v = ""
			}
			cfg.Web.Listen = v
		case "metrics":
			if v == "none" {
				v = ""
			}
			cfg.Metrics.Listen = v
		default:
			return fmt.Errorf("unknown listener %q", k)
		}
	}
	return nil
}

// applyConnBudget fills every max_conns left at 0 with the service's share of the open-file
// limit nofile (connlimit.Split), and warns when the caps together leave too little for the rest
// of the process: then a flood of every listener at once could still exhaust the descriptors.
func applyConnBudget(cfg *config.Config, nofile int, log *slog.Logger) {
	b := connlimit.Split(nofile)
	for _, f := range []struct {
		v   *int
		def int
	}{{&cfg.SMTP.MaxConns, b.SMTP}, {&cfg.SMTP.SubmissionMaxConns, b.Submission}, {&cfg.IMAP.MaxConns, b.IMAP}, {&cfg.Web.MaxConns, b.Web}} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
	sum := cfg.SMTP.MaxConns + cfg.SMTP.SubmissionMaxConns + cfg.IMAP.MaxConns + cfg.Web.MaxConns
	attrs := []any{"smtp", cfg.SMTP.MaxConns, "submission", cfg.SMTP.SubmissionMaxConns, "imap", cfg.IMAP.MaxConns,
		"web", cfg.Web.MaxConns, "open_file_limit", nofile}
	if nofile > 0 && sum > nofile-128 {
		log.Warn("the max_conns settings add up to more than the open-file limit allows; raise the limit (LimitNOFILE= in systemd) or lower max_conns", attrs...)
		return
	}
	log.Info("connection caps", attrs...)
}

func newLogger(w io.Writer, lc config.Log, level *slog.LevelVar) *slog.Logger {
	setLevel(level, lc.Level)
	opts := &slog.HandlerOptions{Level: level}
	if lc.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func setLevel(v *slog.LevelVar, s string) {
	switch s {
	case "debug":
		v.Set(slog.LevelDebug)
	case "warn":
		v.Set(slog.LevelWarn)
	case "error":
		v.Set(slog.LevelError)
	default:
		v.Set(slog.LevelInfo)
	}
}

type daemon struct {
	app   *App
	cfg   *config.Config
	log   *slog.Logger
	opts  ServeOptions
	level *slog.LevelVar
	dev   *DevSetup

	smtp       *inbound.Server
	submission *agentmail.Submission
	imap       *agentmail.IMAPServer
	fetchers   []*inbound.Fetcher
	web        *web.Server
	metricsSrv *http.Server
	ctl        *Control
	cancel     context.CancelFunc // ends the fetchers
	up         atomic.Bool        // every listener is serving

	wg     sync.WaitGroup
	errc   chan error
	lines  []string // what serve prints about its listeners
	webURL string
}

// event audits what the daemon does by itself (start, stop, config loads).
func (d *daemon) event(action, object, result, detail string) {
	d.record(audit.Event{Actor: "mailgate", Action: action, Object: object, Result: result, Detail: detail})
}

func (d *daemon) record(ev audit.Event) {
	if err := d.app.Audit.Append(ev); err != nil {
		d.log.Error("audit append failed", "action", ev.Action, "err", err)
	}
}

func (d *daemon) run(ctx context.Context) error {
	a, cfg := d.app, d.cfg
	src := cfg.Path
	if cfg.Dev {
		src = "dev default"
	}
	d.event("daemon.start", "mailgate", audit.OK, fmt.Sprintf("version=%s data_dir=%s", d.opts.Version, cfg.DataDir))
	d.event("config.load", "config", audit.OK, "source="+src)

	var creds [2]string
	if cfg.Dev {
		pw, uri, created, err := a.Access.EnsureAdmin(DevAdminName, DevAdminEmail)
		if err != nil {
			return fmt.Errorf("first admin: %w", err)
		}
		if created {
			creds = [2]string{pw, uri}
		}
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	d.errc = make(chan error, 16)
	if err := d.start(); err != nil {
		d.stop("start failed")
		d.event("daemon.stop", "mailgate", audit.Failed, err.Error())
		return err
	}
	d.printBanner(creds)
	creds = [2]string{}
	d.log.Info("mailgate started", "version", d.opts.Version, "data_dir", cfg.DataDir, "config", src)

	var reason string
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			reason = "context done"
			break loop
		case err := <-d.errc:
			d.up.Store(false)
			reason, runErr = "listener failed", err
			d.log.Error("a listener failed; shutting down", "err", err)
			break loop
		case s := <-sigs:
			if s == syscall.SIGHUP {
				d.reload()
				continue
			}
			reason = "signal " + s.String()
			break loop
		}
	}
	d.log.Info("shutting down", "reason", reason)
	d.stop(reason)
	result := audit.OK
	if runErr != nil {
		result = audit.Failed
	}
	d.event("daemon.stop", "mailgate", result, reason)
	d.log.Info("mailgate stopped")
	fmt.Fprintln(d.opts.Stdout, "stopped")
	return runErr
}

// listen binds addr, so the printed address is the real one even for port 0.
func (d *daemon) listen(service, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", service, addr, err)
	}
	return l, nil
}

func (d *daemon) serve(name string, l net.Listener, fn func(net.Listener) error) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := fn(l); err != nil {
			err = fmt.Errorf("%s on %s: %w", name, l.Addr(), err)
			select {
			case d.errc <- err: // the first failure stops the daemon
			default:
				d.log.Error("listener failed", "err", err)
			}
		}
	}()
}

func (d *daemon) start() error {
	a, cfg := d.app, d.cfg
	var err error

	// Control socket first: admin commands work as soon as the store is open.
	ln, err := ListenControl(SocketPath(cfg))
	if err != nil {
		return err
	}
	d.ctl = a.ServeControl(ln)

	tlsCfg, err := loadTLS("smtp", cfg.SMTP.TLSCert, cfg.SMTP.TLSKey)
	if err != nil {
		return err
	}
	imapTLS, err := loadTLS("imap", cfg.IMAP.TLSCert, cfg.IMAP.TLSKey)
	if err != nil {
		return err
	}
	metrics.BuildInfo(d.opts.Version)
	metrics.Store(a.DB.Stats)
	metrics.QueueDepth(a.Outbound.Queued)
	a.Audit.OnAppend = func(ev audit.Event) {
		metrics.AuditEvent(ev.Action, ev.Result)
		// tickets audits each filed message once, after its commit, with where it went;
		// counting here cannot double-count a Batch retry as a hook inside the tx could.
		if ev.Action == "mail.receive" {
			if o := detailField(ev.Detail, "outcome"); o != "" {
				metrics.Threading(o)
			}
		}
	}

	// Tickets stored by an older version get the work-queue fields and the sealed search index
	// before anyone lists or searches them.
	if n, err := a.Tickets.Prepare(); err != nil {
		return fmt.Errorf("tickets: %w", err)
	} else if n > 0 {
		d.log.Info("tickets indexed for search", "tickets", n)
	}

	// Delivery of queued replies resumes where the last run stopped.
	if err := a.Outbound.Start(context.Background()); err != nil {
		return fmt.Errorf("outbound queue: %w", err)
	}
	go a.Tickets.SendAutoAcks()

	// Inbound SMTP (MX).
	// One verifier for SMTP and fetched mail: it holds no per-message state.
	v := &inbound.Verifier{Resolver: inbound.NewResolver(cfg.DNS.Resolver, cfg.DNS.Timeout.Duration), Timeout: cfg.DNS.Timeout.Duration}
	if len(cfg.SMTP.Listen) > 0 {
		d.smtp = inbound.NewServer(cfg, a.Tickets, v, inbound.ServerOptions{
			Logger:    d.log,
			TLSConfig: tlsCfg,
			Metrics:   metrics.SMTP{},
			OnRefused: d.refused,
		})
		connMetrics("smtp", d.smtp.Conns())
		for _, addr := range cfg.SMTP.Listen {
			l, err := d.listen("smtp", addr)
			if err != nil {
				return err
			}
			note := ""
			if tlsCfg != nil {
				note = " (STARTTLS)"
			}
			d.lines = append(d.lines, fmt.Sprintf("listening: smtp %s%s", l.Addr(), note))
			d.serve("smtp", l, d.smtp.Serve)
		}
	}

	// Agents' mail clients: submission of replies, and the IMAP view of the queues.
	if len(cfg.SMTP.SubmissionListen) > 0 {
		d.submission = agentmail.NewSubmission(agentmail.SubmissionOptions{
			Tickets: a.Tickets, Access: a.Access, Audit: a.Audit, TLSConfig: tlsCfg, TLSMode: cfg.SMTP.SubmissionTLS, Hostname: cfg.Hostname, Logger: d.log,
			MaxConns: cfg.SMTP.SubmissionMaxConns,
		})
		connMetrics("submission", d.submission.Conns())
		for _, addr := range cfg.SMTP.SubmissionListen {
			l, err := d.listen("submission", addr)
			if err != nil {
				return err
			}
			d.lines = append(d.lines, fmt.Sprintf("listening: submission %s (%s)", l.Addr(), d.submission.TLSMode(l.Addr())))
			d.serve("submission", l, d.submission.Serve)
		}
	}
	if len(cfg.IMAP.Listen) > 0 {
		d.imap = agentmail.NewIMAP(agentmail.IMAPOptions{
			Tickets: a.Tickets, Access: a.Access, Audit: a.Audit, TLSConfig: imapTLS, TLSMode: cfg.IMAP.TLS, Hostname: cfg.Hostname, Logger: d.log,
			MaxConns: cfg.IMAP.MaxConns,
		})
		connMetrics("imap", d.imap.Conns())
		a.notify = d.imap.Notify
		for _, addr := range cfg.IMAP.Listen {
			l, err := d.listen("imap", addr)
			if err != nil {
				return err
			}
			d.lines = append(d.lines, fmt.Sprintf("listening: imap %s (%s)", l.Addr(), d.imap.TLSMode(l.Addr())))
			d.serve("imap", l, d.imap.Serve)
		}
	}

	// Upstream mailboxes to fetch from.
	var fctx context.Context
	fctx, d.cancel = context.WithCancel(context.Background())
	for _, acct := range cfg.Fetch.Accounts {
		f := inbound.NewFetcher(cfg, acct, a.Tickets, v, a.DB, inbound.FetchOptions{
			Logger: d.log,
			OnStatus: func(s inbound.FetchStatus) {
				metrics.Fetch(metrics.FetchState{Account: s.Account, Connected: s.Connected, LastSuccess: s.LastSuccess,
					LastError: s.LastErrorAt, Fetched: s.Fetched, Duplicates: s.Duplicates, Skipped: s.Skipped, Failures: s.Failures})
			},
		})
		d.fetchers = append(d.fetchers, f)
		d.lines = append(d.lines, fmt.Sprintf("fetching: %s into queue %s", f.Account(), acct.Queue))
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			// Run reconnects with backoff by itself; it returns only when told to stop or
			// when the account cannot work at all (a bad URL), which /healthz then shows.
			if err := f.Run(fctx); err != nil && fctx.Err() == nil {
				d.log.Error("fetch stopped", "account", f.Account(), "err", err)
			}
		}()
	}

	// Agents' web page (and WKD for the gateway key).
	if cfg.Web.Listen != "" {
		wo := web.Options{Config: cfg, Access: a.Access, Tickets: a.Tickets, Audit: a.Audit, DB: a.DB, Logger: d.log,
			Health: d.health}
		if a.Gateway != nil {
			var addrs []string
			for _, q := range cfg.Queues {
				addrs = append(addrs, q.Address)
			}
			wo.WKD = pgp.WKDHandler(a.Gateway, addrs)
		}
		d.web, err = web.New(wo)
		if err != nil {
			return err
		}
		connMetrics("web", d.web.Conns())
		l, err := d.listen("web", cfg.Web.Listen)
		if err != nil {
			return err
		}
		scheme := "http"
		if cfg.Web.TLSCert != "" {
			scheme = "https"
		}
		d.webURL = fmt.Sprintf("%s://%s/", scheme, l.Addr())
		d.lines = append(d.lines, "listening: web "+d.webURL)
		d.serve("web", l, d.web.Serve)
	}
	if cfg.Metrics.Listen != "" {
		if err := d.startMetrics(); err != nil {
			return err
		}
	}
	if age := cfg.Retention.ClosedAfter.Duration; age > 0 {
		d.wg.Add(1)
		go d.retention(fctx, age)
	}
	d.wg.Add(1)
	go d.compactSegments(fctx)
	d.lines = append(d.lines, "control socket: "+SocketPath(cfg))
	d.up.Store(true)
	return nil
}

// connMetrics reports a service's connection limiter as mailgate_connections_*.
func connMetrics(service string, l *connlimit.Limiter) {
	metrics.Connections(service, func() metrics.ConnStats {
		refused := map[string]uint64{}
		for r, n := range l.Refused() {
			refused[string(r)] = n
		}
		return metrics.ConnStats{Open: l.Open(), Max: l.Limits().Total, Refused: refused}
	})
}

// metricsToken reads [metrics] token_file ("" without one); Preflight reads it the same way.
func metricsToken(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("[metrics] token_file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("[metrics] token_file %s is empty; write a long random token into it (e.g. openssl rand -hex 32)", file)
	}
	return token, nil
}

// metricsMaxConns caps the metrics listener: a scraper or two, and an operator's curl.
const metricsMaxConns = 16

// startMetrics serves /metrics and the detailed /healthz on [metrics] listen: plain HTTP on
// loopback, else (check-config insists on a token there) TLS with the [web] certificate.
func (d *daemon) startMetrics() error {
	cfg := d.cfg
	token, err := metricsToken(cfg.Metrics.TokenFile)
	if err != nil {
		return err
	}
	l, err := d.listen("metrics", cfg.Metrics.Listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           metrics.ListenerHandler(metrics.HandlerOptions{Token: token, Health: d.health, Hostname: cfg.Hostname}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if tcp, ok := l.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		tc, err := loadTLS("web", cfg.Web.TLSCert, cfg.Web.TLSKey)
		if err != nil {
			l.Close()
			return err
		}
		if tc == nil {
			l.Close()
			return fmt.Errorf("metrics: refusing plain HTTP on %s: set [web] tls_cert, or listen on 127.0.0.1", l.Addr())
		}
		srv.TLSConfig, scheme = tc, "https"
	}
	l = &connlimit.Listener{Listener: l, Limiter: connlimit.New(connlimit.Limits{Total: metricsMaxConns})}
	d.metricsSrv = srv
	d.lines = append(d.lines, fmt.Sprintf("listening: metrics %s://%s/metrics", scheme, l.Addr()))
	d.serve("metrics", l, func(l net.Listener) error {
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(l, "", "")
		} else {
			err = srv.Serve(l)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	return nil
}

// retention destroys tickets closed for longer than age: at start, then every hour.
func (d *daemon) retention(ctx context.Context, age time.Duration) {
	defer d.wg.Done()
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		n, err := d.app.Tickets.PurgeClosed(age)
		switch {
		case err != nil:
			d.log.Error("retention: purging closed tickets failed", "err", err)
		case n > 0:
			d.log.Info("retention: closed tickets purged", "count", n, "closed_after", age.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// compactSegments frees, every hour, the segment space of blobs nothing references any more
// (purged tickets, rewritten records, delivered outbound mail).
func (d *daemon) compactSegments(ctx context.Context) {
	defer d.wg.Done()
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st, err := d.app.DB.CompactSegments()
		switch {
		case err != nil:
			d.log.Error("segment compaction failed", "err", err)
		case st.Segments > 0:
			d.log.Info("segments compacted", "segments", st.Segments, "blobs_moved", st.Moved, "bytes_freed", st.Reclaimed)
		}
	}
}

// detailField returns the value of key=value in an audit detail.
func detailField(detail, key string) string {
	for _, f := range strings.Fields(detail) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func loadTLS(section, cert, key string) (*tls.Config, error) {
	if cert == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("[%s] tls_cert and tls_key: %w", section, err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}, nil
}

// health is /healthz: the store takes a durable write, every listener serves, and every
// upstream mailbox is reachable.
func (d *daemon) health() error {
	if !d.up.Load() {
		return errors.New("listeners are not all up")
	}
	if err := d.app.DB.Writable(); err != nil {
		return fmt.Errorf("store not writable: %w", err)
	}
	for _, f := range d.fetchers {
		if s := f.Status(); !s.Connected && s.LastError != "" {
			return fmt.Errorf("fetch %s: %s", s.Account, s.LastError)
		}
	}
	return nil
}

// refused audits mail refused or deferred at the end of DATA (accepted mail is audited by
// tickets.Ingest in the same transaction as the message).
func (d *daemon) refused(r inbound.Refusal) {
	host, _, _ := net.SplitHostPort(r.Remote)
	result := audit.Denied
	if r.Code >= 400 && r.Code < 500 {
		result = audit.Failed
	}
	detail := fmt.Sprintf("code=%d result=%s conn=%s", r.Code, r.Result, r.ConnID)
	if r.Verdict != nil {
		detail += fmt.Sprintf(" spf=%s dkim=%s dmarc=%s", r.Verdict.SPF, r.Verdict.DKIM, r.Verdict.DMARC)
	}
	d.record(audit.Event{Actor: "smtp:" + host, Action: "mail.refuse", Object: "queue/" + strings.Join(r.Queues, ","),
		Remote: r.Remote, Result: result, Detail: detail})
}

// stop drains in order: no new mail or requests, in-flight SMTP transactions finish (new
// connections get 421), then delivery stops with its queue state saved, then the control
// socket; the store is closed by the caller.
func (d *daemon) stop(reason string) {
	d.up.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), d.opts.DrainTimeout)
	defer cancel()
	if d.cancel != nil {
		d.cancel()
	}
	var wg sync.WaitGroup
	if d.submission != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.submission.Shutdown(ctx); err != nil {
				d.log.Warn("submission drain", "err", err)
			}
		}()
	}
	if d.imap != nil {
		// IMAP sessions only read; ending them loses nothing.
		d.imap.Close()
	}
	if d.smtp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.smtp.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
				d.log.Warn("smtp drain", "err", err)
			}
		}()
	}
	if d.web != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.web.Shutdown(ctx); err != nil {
				d.log.Warn("web drain", "err", err)
			}
		}()
	}
	if d.metricsSrv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.metricsSrv.Shutdown(ctx)
		}()
	}
	wg.Wait()
	d.app.Outbound.Stop()
	if d.ctl != nil {
		d.ctl.Close()
	}
	d.wg.Wait()
}

// reload (SIGHUP) re-reads the config file. Only the log level changes at run time; a change
// to anything else is reported as needing a restart. A bad file changes nothing.
func (d *daemon) reload() {
	if d.cfg.Dev {
		d.log.Info("SIGHUP: dev mode has no config file to reload")
		return
	}
	cfg, err := config.Load(d.cfg.Path)
	if err != nil {
		d.log.Error("SIGHUP: config not reloaded; fix it and send SIGHUP again", "problems", err.Error())
		d.event("config.reload", "config", audit.Failed, clip(err.Error(), 500))
		return
	}
	setLevel(d.level, cfg.Log.Level)
	d.log.Info("SIGHUP: config reloaded; log level applied, other changes take effect at the next restart", "level", cfg.Log.Level)
	d.event("config.reload", "config", audit.OK, "source="+d.cfg.Path+" level="+cfg.Log.Level)
}

func (d *daemon) printBanner(creds [2]string) {
	w := d.opts.Stdout
	cfg := d.cfg
	mode := "config " + cfg.Path
	if cfg.Dev {
		mode = "dev mode"
	}
	fmt.Fprintf(w, "mailgate %s (%s), data in %s\n", d.opts.Version, mode, cfg.DataDir)
	for _, l := range d.lines {
		fmt.Fprintln(w, l)
	}
	if fp := d.fingerprint(); fp != "" {
		fmt.Fprintf(w, "tls certificate sha256: %s\n", fp)
	}
	if cfg.Dev {
		for _, q := range cfg.Queues {
			fmt.Fprintf(w, "queue %s: mail to <%s>\n", q.Name, q.Address)
		}
		fmt.Fprintf(w, "outbound mail is written to %s (no relay in dev mode)\n", cfg.DataPath("outbox"))
	}
	if creds[0] != "" {
		fmt.Fprintf(w, `
First start: an admin account was created. This is shown ONCE and never logged:
  admin user:     %s
  admin password: %s
  admin TOTP:     %s
Add the TOTP URI to an authenticator app (or type in its secret), then log in at
%slogin with the user name, the password and the 6-digit code.
`, DevAdminName, creds[0], creds[1], d.webURL)
	}
	fmt.Fprintln(w, "ready")
}

func (d *daemon) fingerprint() string {
	if d.dev != nil {
		return d.dev.TLSFingerprint
	}
	if d.cfg.SMTP.TLSCert == "" {
		return ""
	}
	fp, err := CertFingerprint(d.cfg.SMTP.TLSCert)
	if err != nil {
		return ""
	}
	return fp
}
