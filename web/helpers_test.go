package web

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/internal/testutil"
	"mailgate/store"
	"mailgate/tickets"
)

type clock = testutil.Clock

// fakeMailer records replies instead of sending them (the real composer is outbound's).
type fakeMailer struct {
	mu   sync.Mutex
	sent []tickets.Outgoing
}

func (f *fakeMailer) Compose(o tickets.Outgoing) ([]byte, bool, error) {
	f.mu.Lock()
	f.sent = append(f.sent, o)
	f.mu.Unlock()
	return []byte("Message-ID: <" + o.MessageID + ">\r\nSubject: " + o.Subject + "\r\n\r\n" + o.Text), false, nil
}

func (f *fakeMailer) EnqueueTx(tx *store.Tx, ticket uint64, seq int, from string, to []string, raw []byte) error {
	return tx.PutPlain("fakequeue", store.Key(store.U64(ticket), store.U64(uint64(seq))), raw)
}

func (f *fakeMailer) Kick() {}

func (f *fakeMailer) texts() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, o := range f.sent {
		out = append(out, o.Text)
	}
	return out
}

// lockedBuffer collects log output from concurrent handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	t       testing.TB
	cfg     *config.Config
	db      *store.DB
	log     *audit.Log
	acc     *access.Service
	tk      *tickets.Service
	srv     *Server
	clk     *clock
	mailer  *fakeMailer
	logs    *lockedBuffer
	secrets map[string]string // agent → TOTP secret
	pw      map[string]string // agent → password
	health  error
	mails   int // inbound messages so far, for unique Message-IDs
}

// fastArgon2 keeps logins quick in tests; access's own tests cover the real parameters.
var fastArgon2 = access.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

var testQueues = []tickets.Queue{{Name: "support", Address: "support@example.com"}, {Name: "billing", Address: "billing@example.com"}}

func newEnv(t testing.TB) *env {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "mailgate.db"), bytes.Repeat([]byte{9}, 32), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	// Start on a TOTP step boundary so a test knows which codes are fresh.
	clk := testutil.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := &env{t: t, db: db, log: l, clk: clk, mailer: &fakeMailer{}, logs: logs,
		secrets: map[string]string{}, pw: map[string]string{}}
	e.acc = access.New(db, l, access.Options{Now: clk.Now, Argon2: fastArgon2, Logger: logger,
		KnownQueue: func(q string) bool { return q == "support" || q == "billing" }})
	e.tk = tickets.New(db, l, tickets.Options{Hostname: "mail.example.com", Queues: testQueues, Mailer: e.mailer, Now: clk.Now})
	e.cfg = config.Default()
	e.cfg.Hostname = "mailgate.test" // the Host the test client sends
	e.cfg.Web.Listen = "127.0.0.1:0"
	e.srv, err = New(Options{Config: e.cfg, Access: e.acc, Tickets: e.tk, Audit: l, DB: db, Logger: logger, Now: clk.Now,
		Health: func() error {
			if e.health != nil {
				return e.health
			}
			return db.Writable()
		}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// addAgent creates an agent through access as the control socket would, keeping its secrets.
func (e *env) addAgent(name string, role access.Role, queues ...string) {
	e.t.Helper()
	pw, uri, err := e.acc.Add(access.Ctl, name, name+"@example.com", role, queues)
	if err != nil {
		e.t.Fatal(err)
	}
	key, err := otp.NewKeyFromURL(uri)
	if err != nil {
		e.t.Fatal(err)
	}
	e.pw[name], e.secrets[name] = pw, key.Secret()
}

func (e *env) code(name string) string {
	e.t.Helper()
	c, err := totp.GenerateCode(e.secrets[name], e.clk.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// mail is one inbound test message.
type mail struct {
	queue, from, subject, body string
	verified, quarantined      bool
	html                       string
	attach                     []attachment
}

type attachment struct{ name, ctype, data string }

func (m mail) raw(n int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Customer <%s>\r\nTo: %s@example.com\r\nSubject: %s\r\nMessage-ID: <m%d.%s>\r\nDate: Mon, 02 Mar 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n",
		m.from, m.queue, m.subject, n, m.from)
	if m.html == "" && len(m.attach) == 0 {
		fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n", m.body)
		return []byte(b.String())
	}
	b.WriteString("Content-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n")
	fmt.Fprintf(&b, "--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n", m.body)
	if m.html != "" {
		fmt.Fprintf(&b, "--BOUND\r\nContent-Type: text/html; charset=utf-8\r\n\r\n%s\r\n", m.html)
	}
	for _, a := range m.attach {
		fmt.Fprintf(&b, "--BOUND\r\nContent-Type: %s\r\nContent-Disposition: attachment; filename*=UTF-8''%s\r\n\r\n%s\r\n",
			a.ctype, url.PathEscape(a.name), a.data)
	}
	b.WriteString("--BOUND--\r\n")
	return []byte(b.String())
}

// ingest files m as inbound mail with the given verdict and returns its ticket id.
func (e *env) ingest(m mail) uint64 {
	e.t.Helper()
	if m.queue == "" {
		m.queue = "support"
	}
	if m.body == "" {
		m.body = "Hello, my order is late."
	}
	auth := tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}
	if !m.verified {
		auth = tickets.Auth{SPF: "fail", DKIM: "none", DMARC: "fail"}
	}
	auth.Quarantined = m.quarantined
	e.mails++
	r, err := e.tk.Ingest(tickets.Incoming{Queue: m.queue, Raw: m.raw(e.mails), Auth: auth, Via: "smtp", Remote: "192.0.2.9:25"})
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Ticket
}

// events returns the audit events that match f.
func (e *env) events(f audit.Filter) []audit.Event {
	e.t.Helper()
	evs, err := e.log.Query(f, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

func (e *env) hasEvent(f audit.Filter) bool {
	e.t.Helper()
	return len(e.events(f)) > 0
}

// client is a browser stand-in: it keeps cookies (all of them, Secure or not: the test talks to
// the handler directly) and sends the Origin a browser would.
type client struct {
	e       *env
	cookies map[string]string
	remote  string
	host    string
}

func (e *env) client() *client {
	return &client{e: e, cookies: map[string]string{}, remote: "198.51.100.7:40000", host: "mailgate.test"}
}

type reqOpt func(*http.Request)

func withHeader(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }
func noOrigin() reqOpt              { return func(r *http.Request) { r.Header.Del("Origin") } }

func (c *client) do(method, path string, form url.Values, opts ...reqOpt) *httptest.ResponseRecorder {
	c.e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r := httptest.NewRequest(method, "http://"+c.host+path, body)
	r.RemoteAddr = c.remote
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if method == http.MethodPost {
		r.Header.Set("Origin", "http://"+c.host)
	}
	for k, v := range c.cookies {
		r.AddCookie(&http.Cookie{Name: k, Value: v})
	}
	for _, o := range opts {
		o(r)
	}
	w := httptest.NewRecorder()
	c.e.srv.Handler().ServeHTTP(w, r)
	for _, ck := range w.Result().Cookies() {
		if ck.MaxAge < 0 {
			delete(c.cookies, ck.Name)
		} else {
			c.cookies[ck.Name] = ck.Value
		}
	}
	return w
}

func (c *client) get(path string) *httptest.ResponseRecorder { return c.do(http.MethodGet, path, nil) }

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf loads path and returns the CSRF token of its forms.
func (c *client) csrf(path string) string {
	c.e.t.Helper()
	w := c.get(path)
	m := csrfRe.FindStringSubmatch(w.Body.String())
	if m == nil {
		c.e.t.Fatalf("GET %s: %d, no CSRF token in the page:\n%s", path, w.Code, w.Body.String())
	}
	return m[1]
}

// post sends a form with the page's CSRF token.
func (c *client) post(path string, form url.Values, opts ...reqOpt) *httptest.ResponseRecorder {
	c.e.t.Helper()
	page := path
	if strings.HasPrefix(path, "/login") {
		page = "/login"
	}
	if form.Get("csrf") == "" {
		form.Set("csrf", c.csrf(page))
	}
	return c.do(http.MethodPost, path, form, opts...)
}

// login logs name in with password and the current TOTP code, failing the test otherwise.
func (c *client) login(name string) {
	c.e.t.Helper()
	w := c.post("/login", url.Values{"username": {name}, "password": {c.e.pw[name]}})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login/code" {
		c.e.t.Fatalf("password step: %d %s\n%s", w.Code, w.Header().Get("Location"), w.Body.String())
	}
	w = c.post("/login/code", url.Values{"code": {c.e.code(name)}})
	if w.Code != http.StatusSeeOther || c.cookies[sessionCookie] == "" {
		c.e.t.Fatalf("code step: %d %s\n%s", w.Code, w.Header().Get("Location"), w.Body.String())
	}
}

// loggedIn returns a client logged in as a new agent of the given role and queues.
func (e *env) loggedIn(name string, role access.Role, queues ...string) *client {
	e.t.Helper()
	e.addAgent(name, role, queues...)
	c := e.client()
	c.login(name)
	return c
}

func mustContain(t testing.TB, what, body string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(body, s) {
			t.Errorf("%s: missing %q", what, s)
		}
	}
}

func mustNotContain(t testing.TB, what, body string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if strings.Contains(strings.ToLower(body), strings.ToLower(s)) {
			t.Errorf("%s: must not contain %q", what, s)
		}
	}
}
