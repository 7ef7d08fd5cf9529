package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/tickets"
)

// CSP allows only the page's own stylesheet and images (plus data: images kept in sanitised
// mail); no script at all, so even markup that slipped past the sanitiser cannot run.
const CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; img-src 'self' data:"

// Cookie names. The __Host- prefix makes browsers insist on Secure, Path=/ and no Domain, so a
// neighbouring subdomain cannot plant or overwrite them.
const (
	sessionCookie = "__Host-mailgate"
	loginCookie   = "__Host-mailgate-login" // the pending state between password and code
	preCookie     = "__Host-mailgate-pre"   // binds the login forms' CSRF token before a session exists
)

// maxFormBytes bounds a posted form: a reply or note is at most tickets.MaxTextBytes, which
// URL-encoding can triple.
const maxFormBytes = 4 << 20

// secure sets the headers every response carries. Cache-Control no-store is the default because
// nearly every page shows customer data; the stylesheet overrides it.
//
// Referrer-Policy: no-referrer alone would make browsers send "Origin: null" on every form post
// (Fetch standard, "append a request Origin header"; chromium does it), which the Origin check
// must refuse. So layout.html also carries <meta name="referrer" content="same-origin">: the
// page's own forms name their origin, and nothing (no Referer, no Origin) goes to other sites.
// The browser test fails without that tag.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

// allowedHosts are the names the page answers to by Host: hostname and [web] allowed_hosts.
func allowedHosts(cfg *config.Config) map[string]bool {
	m := map[string]bool{}
	for _, h := range append([]string{cfg.Hostname}, cfg.Web.AllowedHosts...) {
		if h = strings.TrimSuffix(strings.ToLower(h), "."); h != "" {
			m[h] = true
		}
	}
	return m
}

// checkHost answers 421 Misdirected Request to a request whose Host is not this server: not
// hostname or one of [web] allowed_hosts, not the IP address the client connected to, and not
// "localhost" on a loopback connection. This stops DNS rebinding, where a hostile page points
// its own name at this server (or at 127.0.0.1 on an agent's machine) and reads the answers as
// same-origin: the browser then sends the hostile name in Host. A request without Host (HTTP/1.0
// tools) is no browser and passes. The WKD keys are public and are fetched under the mail
// domain's names (openpgpkey.example.com), so they are exempt.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.hostAllowed(r) || strings.HasPrefix(r.URL.Path, "/.well-known/openpgpkey/") {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusMisdirectedRequest)
		fmt.Fprint(w, "this server does not answer to that host name; an administrator can add it to [web] allowed_hosts\n")
	})
}

func (s *Server) hostAllowed(r *http.Request) bool {
	host := r.Host
	if host == "" {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")), ".")
	if s.hosts[host] {
		return true
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr)
	if local == nil {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.Equal(local.IP) // an address literal cannot be rebound to another server
	}
	return host == "localhost" && local.IP.IsLoopback()
}

// reqInfo is what the middleware learns about a request; handlers read it from the context.
type reqInfo struct {
	id     string
	sessID string
	sess   *access.Session
	actor  access.Actor
}

type ctxKey struct{}

func info(r *http.Request) *reqInfo {
	if ri, ok := r.Context().Value(ctxKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{}
}

var (
	metricsOnce sync.Once
	reqCount    *prometheus.CounterVec
	reqSeconds  prometheus.Histogram
)

// registerMetrics registers the web metrics once per process (tests build many Servers).
func registerMetrics() {
	metricsOnce.Do(func() {
		reqCount = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_web_requests_total", Help: "Web requests answered, by status code.",
		}, []string{"code"})
		reqSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mailgate_web_request_seconds", Help: "Time to answer a web request.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		})
		reg := func(c prometheus.Collector) prometheus.Collector {
			if err := prometheus.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if errors.As(err, &are) {
					return are.ExistingCollector
				}
			}
			return c
		}
		reqCount = reg(reqCount).(*prometheus.CounterVec)
		reqSeconds = reg(reqSeconds).(prometheus.Histogram)
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// observe gives each request an id (in the logs and the X-Request-Id header), logs one line per
// request without query strings, bodies or cookies, and turns a panic into a 500.
func (s *Server) observe(next http.Handler) http.Handler {
	registerMetrics()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var b [8]byte
		rand.Read(b[:])
		ri := &reqInfo{id: hex.EncodeToString(b[:])}
		w.Header().Set("X-Request-Id", ri.id)
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("handler panic", "rid", ri.id, "path", r.URL.Path, "panic", p)
				if sw.code == 0 {
					http.Error(sw, "internal error", http.StatusInternalServerError)
				}
			}
			if sw.code == 0 {
				sw.code = http.StatusOK
			}
			d := time.Since(start)
			reqCount.WithLabelValues(strconv.Itoa(sw.code)).Inc()
			reqSeconds.Observe(d.Seconds())
			s.log.Info("request", "rid", ri.id, "method", r.Method, "path", r.URL.Path, "status", sw.code,
				"agent", ri.actor.Name, "remote", r.RemoteAddr, "ms", d.Milliseconds())
		}()
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, ri)))
	})
}

// webEvent records what only web knows (a refused Origin or CSRF token, a page refused for the
// role) in the audit log. Refusals of anonymous requests are limited per address (see
// anonLimit), so a flood of forged posts cannot grow the log without bound; agents' refusals are
// always recorded.
func (s *Server) webEvent(r *http.Request, actor, action, result, detail string) {
	if actor == "" {
		actor = "anonymous"
		record, suppressed := s.anon.allow(r.RemoteAddr, s.opts.Now())
		if !record {
			return
		}
		if suppressed > 0 {
			detail += fmt.Sprintf(" (%d more such events from this address were not recorded)", suppressed)
		}
	}
	ev := audit.Event{Actor: actor, Action: action, Object: clip(r.URL.Path, 200), Remote: r.RemoteAddr, Result: result, Detail: detail}
	if err := s.opts.Audit.Append(ev); err != nil {
		s.log.Error("audit append failed", "rid", info(r).id, "action", action, "err", err)
	}
}

// sessionName names the agent behind r's session cookie, for audit events written before (or
// instead of) authentication; "" when there is no live session.
func (s *Server) sessionName(r *http.Request) string {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return ""
	}
	sess, err := s.opts.Access.Session(c.Value)
	if err != nil {
		return ""
	}
	return sess.Agent.Name
}

// checkOrigin refuses a POST whose Origin (or, without one, Referer) names another host than the
// request's own. A request with neither is refused too: every browser that runs these forms
// sends Origin on POST (the pages set a same-origin referrer policy so it is not "null").
// Only the host is compared, not the scheme, so a TLS-terminating proxy in front of a loopback
// listener still works.
func (s *Server) checkOrigin(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		src, from := r.Header.Get("Origin"), "Origin"
		if src == "" {
			src, from = r.Header.Get("Referer"), "Referer"
		}
		ok := false
		if src != "" && src != "null" {
			if u, err := url.Parse(src); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" {
				ok = strings.EqualFold(u.Host, r.Host)
			}
		}
		if !ok {
			detail := "no Origin or Referer"
			if src != "" {
				detail = from + " " + strconv.QuoteToASCII(clip(src, 200)) + " is not " + strconv.QuoteToASCII(clip(r.Host, 100))
			}
			s.webEvent(r, s.sessionName(r), "web.origin", audit.Denied, detail)
			s.errorPage(w, r, http.StatusForbidden, "This form was not sent from this site. Reload the page and try again.")
			return
		}
		next(w, r)
	}
}

// authed requires a live session. On POST it also parses the form and checks its CSRF token
// against the session's in constant time.
func (s *Server) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ri := info(r)
		c, err := r.Cookie(sessionCookie)
		var sess *access.Session
		if err == nil {
			sess, err = s.opts.Access.Session(c.Value)
		}
		if err != nil {
			if c != nil && !errors.Is(err, access.ErrNoSession) {
				s.log.Error("session lookup failed", "rid", ri.id, "err", err)
				s.errorPage(w, r, http.StatusInternalServerError, "mailgate could not check your session. Try again shortly.")
				return
			}
			if c != nil {
				s.clearCookie(w, sessionCookie)
			}
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		ri.sessID, ri.sess = c.Value, sess
		ri.actor = sess.Agent.Actor(r.RemoteAddr)
		if r.Method == http.MethodPost {
			if !s.parseForm(w, r) {
				return
			}
			if !equalToken(r.PostForm.Get("csrf"), sess.CSRF) {
				s.webEvent(r, ri.actor.Name, "web.csrf", audit.Denied, "missing or wrong CSRF token")
				s.errorPage(w, r, http.StatusForbidden, "This form has expired. Reload the page and try again.")
				return
			}
		}
		next(w, r)
	}
}

// maxUploadBytes bounds a multipart form (a reply with attachments): the text and every
// attachment tickets accepts, with room for the multipart framing.
const maxUploadBytes = maxFormBytes + tickets.MaxAttachmentBytes + 1<<20

// parseForm reads a urlencoded or multipart body of bounded size. A multipart body is kept in
// memory whole (the memory limit is the body limit): uploads are customer data and must never
// sit unsealed in a temporary file.
func (s *Server) parseForm(w http.ResponseWriter, r *http.Request) bool {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "multipart/form-data" {
		r.Body = http.MaxBytesReader(w, r.Body, maxUploadBytes)
		if err := r.ParseMultipartForm(maxUploadBytes); err != nil {
			s.errorPage(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("The form could not be read: attachments may add up to %d MB.", tickets.MaxAttachmentBytes>>20))
			return false
		}
		return true
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		s.errorPage(w, r, http.StatusBadRequest, "The form could not be read: it is too large or malformed.")
		return false
	}
	return true
}

func equalToken(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// preToken is the CSRF token of the login forms: a MAC of the pre-session cookie, so a form
// works only in the browser that loaded it.
func (s *Server) preToken(pre string) string {
	m := hmac.New(sha256.New, s.preKey)
	m.Write([]byte("login form\x00"))
	m.Write([]byte(pre))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// ensurePre returns the pre-session cookie's value, setting a new one when there is none.
func (s *Server) ensurePre(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(preCookie); err == nil && len(c.Value) == 43 {
		return c.Value
	}
	var b [32]byte
	rand.Read(b[:])
	v := base64.RawURLEncoding.EncodeToString(b[:])
	s.setCookie(w, preCookie, v, 0)
	return v
}

// checkPre checks a login form's CSRF token against the pre-session cookie.
func (s *Server) checkPre(r *http.Request) bool {
	c, err := r.Cookie(preCookie)
	if err != nil || c.Value == "" {
		return false
	}
	return equalToken(r.PostForm.Get("csrf"), s.preToken(c.Value))
}

// setCookie sets a __Host- cookie: Secure (browsers accept Secure cookies from
// http://127.0.0.1 and http://localhost, the only plain-HTTP origins Serve allows), HttpOnly,
// SameSite=Strict, Path=/ and no Domain. maxAge 0 means a browser-session cookie.
func (s *Server) setCookie(w http.ResponseWriter, name, value string, maxAge time.Duration) {
	c := &http.Cookie{Name: name, Value: value, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode}
	if maxAge > 0 {
		c.MaxAge = int(maxAge / time.Second)
	}
	http.SetCookie(w, c)
}

func (s *Server) clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

// anonLimit counts anonymous refusals per client address in memory: at most anonPerWindow are
// audited per anonWindow, the rest are counted into the next recorded one.
type anonLimit struct {
	mu sync.Mutex
	m  map[string]*anonCount
}

type anonCount struct {
	start      time.Time
	n          int
	suppressed int
}

const (
	anonPerWindow  = 10
	anonWindow     = time.Minute
	anonMaxEntries = 10000
)

func (l *anonLimit) allow(remote string, now time.Time) (record bool, suppressed int) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = clip(remote, 64)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil || len(l.m) >= anonMaxEntries {
		l.m = map[string]*anonCount{} // memory wins over remembering every flooding address
	}
	c := l.m[host]
	if c == nil || now.Sub(c.start) >= anonWindow || now.Before(c.start) {
		prev := 0
		if c != nil {
			prev = c.suppressed
		}
		c = &anonCount{start: now, suppressed: prev}
		l.m[host] = c
	}
	if c.n >= anonPerWindow {
		c.suppressed++
		return false, 0
	}
	c.n++
	suppressed, c.suppressed = c.suppressed, 0
	return true, suppressed
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
