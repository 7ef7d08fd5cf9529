// Package web owns the agents' pages: login with password and TOTP, ticket work, account and
// admin pages, the audit view, CSRF and Origin checks, security headers and sanitising HTML mail.
// It must not bypass access (who may do what) or audit (every look at customer data is recorded).
package web

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/microcosm-cc/bluemonday"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/internal/connlimit"
	"mailgate/store"
	"mailgate/tickets"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options wires a Server. Config, Access, Tickets, Audit and DB are required.
type Options struct {
	Config  *config.Config
	Access  *access.Service
	Tickets *tickets.Service
	Audit   *audit.Log
	DB      *store.DB
	// WKD serves /.well-known/openpgpkey/ (pgp.WKDHandler) when a gateway key exists; nil: not mounted.
	WKD http.Handler
	// Health says whether mailgate can take work (store writable, listeners up); nil: DB.Writable.
	// /healthz answers only ok or not: the reason is for the metrics listener and the log.
	Health func() error
	Logger *slog.Logger
	// Now is the clock for what web shows and decides itself (pagination of "since", cookie
	// lifetimes); access and tickets have their own clocks. nil: time.Now.
	Now func() time.Time
}

// Server is the agents' web page. Handler is usable on its own (tests, a caller's own
// http.Server); Serve adds TLS and the listener policy.
type Server struct {
	opts     Options
	log      *slog.Logger
	pages    map[string]*template.Template
	policy   *bluemonday.Policy
	handler  http.Handler
	preKey   []byte // MAC key binding the login forms' CSRF token to the pre-session cookie
	mu       sync.Mutex
	servers  []*http.Server
	stopped  bool // Shutdown ran: a later Serve returns at once instead of serving forever
	verified verifyCache
	viewers  viewTracker
	prefs    prefCache
	anon     anonLimit
	conns    *connlimit.Limiter // [web] max_conns, all Serve calls together
	hosts    map[string]bool    // hostname and [web] allowed_hosts, lower case
}

// New checks opts and builds the handler tree.
func New(opts Options) (*Server, error) {
	switch {
	case opts.Config == nil:
		return nil, errors.New("web: Options.Config is required")
	case opts.Access == nil:
		return nil, errors.New("web: Options.Access is required")
	case opts.Tickets == nil:
		return nil, errors.New("web: Options.Tickets is required")
	case opts.Audit == nil:
		return nil, errors.New("web: Options.Audit is required")
	case opts.DB == nil:
		return nil, errors.New("web: Options.DB is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Health == nil {
		opts.Health = opts.DB.Writable
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:   opts,
		log:    opts.Logger.With("component", "web"),
		pages:  pages,
		policy: newPolicy(),
		preKey: make([]byte, 32),
		conns:  connlimit.New(connlimit.Limits{Total: opts.Config.Web.MaxConns}),
		hosts:  allowedHosts(opts.Config),
	}
	rand.Read(s.preKey)
	s.handler = s.routes()
	return s, nil
}

// Handler returns the whole page tree with its security headers, request ids and logging.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", staticHandler(static)))
	mux.HandleFunc("GET /healthz", s.healthz)
	if s.opts.WKD != nil {
		mux.Handle("/.well-known/openpgpkey/", s.opts.WKD)
	}
	mux.HandleFunc("GET /{$}", s.authed(s.root))
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.checkOrigin(s.loginPassword))
	mux.HandleFunc("GET /login/code", s.codePage)
	mux.HandleFunc("POST /login/code", s.checkOrigin(s.loginCode))
	mux.HandleFunc("POST /logout", s.checkOrigin(s.authed(s.logout)))
	mux.HandleFunc("GET /tickets", s.authed(s.ticketList))
	mux.HandleFunc("GET /tickets/{id}", s.authed(s.ticketPage))
	mux.HandleFunc("POST /tickets/{id}", s.checkOrigin(s.authed(s.ticketPost)))
	mux.HandleFunc("GET /tickets/{id}/messages/{seq}/attachments/{i}", s.authed(s.attachment))
	mux.HandleFunc("GET /account", s.authed(s.accountPage))
	mux.HandleFunc("POST /account", s.checkOrigin(s.authed(s.accountPost)))
	mux.HandleFunc("POST /account/timezone", s.checkOrigin(s.authed(s.timezonePost)))
	mux.HandleFunc("GET /admin/agents", s.authed(s.adminPage))
	mux.HandleFunc("POST /admin/agents", s.checkOrigin(s.authed(s.adminPost)))
	mux.HandleFunc("GET /admin/canned", s.authed(s.cannedPage))
	mux.HandleFunc("POST /admin/canned", s.checkOrigin(s.authed(s.cannedPost)))
	mux.HandleFunc("GET /audit", s.authed(s.auditPage))
	mux.HandleFunc("POST /audit/export", s.checkOrigin(s.authed(s.auditExport)))
	mux.HandleFunc("/", s.notFound)
	return s.observe(secure(s.checkHost(mux)))
}

func (s *Server) root(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, home(info(r).actor.Role), http.StatusSeeOther)
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	s.errorPage(w, r, http.StatusNotFound, "There is no such page.")
}

// healthz says ok or unavailable and nothing more: the page is public, and why mailgate is
// unwell (which listener, which account) is for the operator, on the metrics listener and in
// the log.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.opts.Health(); err != nil {
		s.log.Warn("healthz: unavailable", "rid", info(r).id, "err", err)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, "unavailable\n")
		return
	}
	fmt.Fprint(w, "ok\n")
}

// Conns returns the connection limiter of the web listeners (metrics, tests).
func (s *Server) Conns() *connlimit.Limiter { return s.conns }

// staticHandler serves the embedded stylesheet. It holds no customer data, so it may be cached.
func staticHandler(fsys fs.FS) http.Handler {
	files := http.FileServer(http.FS(fsys))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	})
}

// Serve answers on l until Shutdown. With [web] tls_cert it speaks HTTPS (TLS 1.2 or newer);
// without, it refuses any listener that is not on a loopback address, because session cookies
// and customer data must not cross a network in clear text (a reverse proxy on the same host
// may terminate TLS instead).
func (s *Server) Serve(l net.Listener) error {
	web := s.opts.Config.Web
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      120 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if web.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(web.TLSCert, web.TLSKey)
		if err != nil {
			return fmt.Errorf("web: load TLS certificate %s: %w", web.TLSCert, err)
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	} else if !loopback(l.Addr()) {
		return fmt.Errorf("web: refusing plain HTTP on %s: set [web] tls_cert and tls_key, or listen on 127.0.0.1 behind a TLS proxy", l.Addr())
	}
	// Over [web] max_conns a plain-HTTP client reads 503; a TLS client is closed at once, since
	// answering it would cost a handshake per refused connection.
	refuse := func(c net.Conn, _ connlimit.Reason) { c.Close() }
	if srv.TLSConfig == nil {
		refuse = func(c net.Conn, _ connlimit.Reason) { connlimit.ReplyHTTP(c) }
	}
	l = &connlimit.Listener{Listener: l, Limiter: s.conns, Refuse: refuse}
	// While 3/4 of max_conns are taken, keep-alive is off: idle connections are closed and
	// every answer closes its connection, so a flood cannot park connections between requests.
	var (
		mu             sync.Mutex
		busy, stopping bool
	)
	srv.ConnState = func(_ net.Conn, st http.ConnState) {
		if st != http.StateNew && st != http.StateClosed && st != http.StateHijacked {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if b := s.conns.Busy(); b != busy && !stopping {
			busy = b
			srv.SetKeepAlivesEnabled(!b)
		}
	}
	srv.RegisterOnShutdown(func() {
		mu.Lock()
		stopping = true
		mu.Unlock()
	})
	s.mu.Lock()
	if s.stopped {
		// A SIGTERM between start-up and this point: Shutdown has already walked the list,
		// so serving now would never be stopped.
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.servers = append(s.servers, srv)
	s.mu.Unlock()
	s.log.Info("web listening", "addr", l.Addr().String(), "tls", web.TLSCert != "", "max_conns", s.conns.Limits().Total)
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(l, "", "") // certificates come from TLSConfig; ServeTLS adds HTTP/2
	} else {
		err = srv.Serve(l)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops every Serve, letting requests in flight finish until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.stopped = true
	s.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func loopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
