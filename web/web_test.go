package web

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/tickets"
)

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true,
		attach: []attachment{{"a.txt", "text/plain", "hi"}}})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	pages := []struct {
		path     string
		noStore  bool // shows customer data (or could)
		wantCode int
	}{
		{"/login", true, 200},
		{"/tickets", true, 200},
		{"/tickets/" + strconv.FormatUint(id, 10), true, 200},
		{"/tickets/1/messages/1/attachments/0", true, 200},
		{"/account", true, 200},
		{"/audit", true, 403},
		{"/nope", true, 404},
		{"/healthz", true, 200},
		{"/static/style.css", false, 200},
	}
	for _, p := range pages {
		w := c.get(p.path)
		if w.Code != p.wantCode {
			t.Errorf("%s: status %d, want %d", p.path, w.Code, p.wantCode)
		}
		h := w.Header()
		csp := h.Get("Content-Security-Policy")
		if strings.Contains(p.path, "/attachments/") {
			// Downloads get a stricter policy still: sandboxed, nothing loads.
			if !strings.Contains(csp, "sandbox") || !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") {
				t.Errorf("%s: CSP %q", p.path, csp)
			}
		} else if csp != CSP {
			t.Errorf("%s: CSP %q, want %q", p.path, csp, CSP)
		}
		for k, want := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
			if got := h.Get(k); got != want {
				t.Errorf("%s: %s = %q, want %q", p.path, k, got, want)
			}
		}
		if p.noStore && h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", p.path, h.Get("Cache-Control"))
		}
		if h.Get("Strict-Transport-Security") != "" {
			t.Errorf("%s: HSTS over plain HTTP", p.path)
		}
		if h.Get("X-Request-Id") == "" {
			t.Errorf("%s: no request id", p.path)
		}
	}
	// The CSP has no way to run inline script or load anything from elsewhere.
	for _, bad := range []string{"unsafe-inline", "unsafe-eval", "*", "http:", "https:"} {
		if strings.Contains(CSP, bad) {
			t.Errorf("CSP allows %s", bad)
		}
	}
	// Over TLS, HSTS.
	w := c.do(http.MethodGet, "/tickets", nil, func(r *http.Request) { r.TLS = &tls.ConnectionState{} })
	if !strings.HasPrefix(w.Header().Get("Strict-Transport-Security"), "max-age=") {
		t.Errorf("no HSTS over TLS: %q", w.Header().Get("Strict-Transport-Security"))
	}
}

func TestLogin(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	c := e.client()

	// The login form carries a CSRF token bound to a pre-session cookie.
	w := c.get("/login")
	mustContain(t, "login page", w.Body.String(), `name="username"`, `name="password"`, `name="csrf"`)

	w = c.post("/login", url.Values{"username": {"alice"}, "password": {"wrong password!"}})
	if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "Wrong user name, password or code") {
		t.Fatalf("wrong password: %d\n%s", w.Code, w.Body.String())
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "login", Result: audit.Failed}) {
		t.Error("failed login not audited")
	}

	w = c.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login/code" {
		t.Fatalf("password: %d %v", w.Code, w.Header())
	}
	var pending *http.Cookie
	for _, ck := range w.Result().Cookies() {
		if ck.Name == loginCookie {
			pending = ck
		}
	}
	if pending == nil || !pending.HttpOnly || !pending.Secure || pending.SameSite != http.SameSiteStrictMode || pending.MaxAge <= 0 || pending.MaxAge > 300 {
		t.Fatalf("pending cookie: %+v", pending)
	}
	w = c.get("/login/code")
	mustContain(t, "code page", w.Body.String(), `name="code"`, "alice")

	w = c.post("/login/code", url.Values{"code": {"000000"}})
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("wrong code: %d", w.Code)
	}
	if c.cookies[sessionCookie] != "" {
		t.Fatal("session after a wrong code")
	}

	// Plant a session id before login: the login must not keep it (fixation).
	c.cookies[sessionCookie] = "planted-by-an-attacker"
	code := e.code("alice")
	w = c.post("/login/code", url.Values{"code": {code}})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/tickets" {
		t.Fatalf("code: %d %v\n%s", w.Code, w.Header(), w.Body.String())
	}
	var sess *http.Cookie
	for _, ck := range w.Result().Cookies() {
		if ck.Name == sessionCookie {
			sess = ck
		}
	}
	if sess == nil || sess.Value == "planted-by-an-attacker" || len(sess.Value) < 43 {
		t.Fatalf("session cookie: %+v", sess)
	}
	if !sess.HttpOnly || !sess.Secure || sess.SameSite != http.SameSiteStrictMode || sess.Path != "/" || sess.Domain != "" {
		t.Errorf("session cookie attributes: %+v", sess)
	}
	if _, ok := c.cookies[loginCookie]; ok {
		t.Error("pending cookie kept after login")
	}
	if w := c.get("/tickets"); w.Code != http.StatusOK {
		t.Fatalf("tickets after login: %d", w.Code)
	}
	first := c.cookies[sessionCookie]

	// A second login with the same code fails (each TOTP code works once).
	c2 := e.client()
	c2.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}})
	if w := c2.post("/login/code", url.Values{"code": {code}}); w.Code != http.StatusUnauthorized {
		t.Fatalf("replayed code: %d", w.Code)
	}

	// Logging in again rotates the id and ends the old session.
	e.clk.Add(30 * time.Second)
	c.login("alice")
	if c.cookies[sessionCookie] == first {
		t.Fatal("session id not rotated at login")
	}
	if _, err := e.acc.Session(first); !errors.Is(err, access.ErrNoSession) {
		t.Errorf("old session still valid: %v", err)
	}

	// Logout ends the session on the server, not only the cookie.
	id := c.cookies[sessionCookie]
	w = c.post("/logout", url.Values{"csrf": {c.csrf("/account")}})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login" {
		t.Fatalf("logout: %d", w.Code)
	}
	if _, err := e.acc.Session(id); !errors.Is(err, access.ErrNoSession) {
		t.Errorf("session alive after logout: %v", err)
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "logout"}) {
		t.Error("logout not audited")
	}
	c.cookies[sessionCookie] = id
	if w := c.get("/tickets"); w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login" {
		t.Errorf("old cookie after logout: %d", w.Code)
	}

	// Nothing secret reaches the logs.
	logs := e.logs.String()
	for _, secret := range []string{e.pw["alice"], code, first, id, pending.Value} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains a secret %q", secret[:4])
		}
	}
}

func TestLoginThrottled(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	c := e.client()
	var w interface{ Result() *http.Response }
	var body string
	for i := 0; i < 10; i++ {
		r := c.post("/login", url.Values{"username": {"alice"}, "password": {"guess number " + strconv.Itoa(i)}})
		w, body = r, r.Body.String()
		if r.Code == http.StatusTooManyRequests {
			break
		}
	}
	if w.Result().StatusCode != http.StatusTooManyRequests {
		t.Fatalf("never throttled: %d", w.Result().StatusCode)
	}
	if !regexp.MustCompile(`try again in \d+ s`).MatchString(body) {
		t.Errorf("throttle message: %s", body)
	}
	// Even the right password waits now.
	if r := c.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}}); r.Code != http.StatusTooManyRequests {
		t.Errorf("right password during lock: %d", r.Code)
	}
	if !e.hasEvent(audit.Filter{Action: "login.lockout"}) {
		t.Error("lockout not audited")
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	path := "/tickets/" + strconv.FormatUint(id, 10)
	note := func(csrf string) int {
		f := url.Values{"action": {"note"}, "body": {"internal"}}
		if csrf != "" {
			f.Set("csrf", csrf)
		}
		return c.do(http.MethodPost, path, f).Code
	}
	if code := note(""); code != http.StatusForbidden {
		t.Errorf("missing token: %d", code)
	}
	if code := note("AAAA" + strings.Repeat("x", 39)); code != http.StatusForbidden {
		t.Errorf("wrong token: %d", code)
	}
	if n := len(e.events(audit.Filter{Actor: "alice", Action: "web.csrf", Result: audit.Denied})); n != 2 {
		t.Errorf("%d web.csrf events, want 2", n)
	}
	_, msgs, _ := e.tk.Get(access.Actor{Name: "test", Role: access.RoleAdmin}, id)
	if len(msgs) != 1 {
		t.Fatalf("a refused form changed the ticket: %d messages", len(msgs))
	}
	// Another session's token is no good either.
	other := e.loggedIn("bob", access.RoleAgent, "support")
	if code := note(other.csrf("/tickets")); code != http.StatusForbidden {
		t.Errorf("another session's token: %d", code)
	}
	if code := note(c.csrf(path)); code != http.StatusSeeOther {
		t.Errorf("right token: %d", code)
	}
	// The login forms need their token too.
	fresh := e.client()
	if w := fresh.do(http.MethodPost, "/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}}); w.Code != http.StatusForbidden {
		t.Errorf("login without token: %d", w.Code)
	}
	if !e.hasEvent(audit.Filter{Actor: "anonymous", Action: "web.csrf"}) {
		t.Error("login CSRF failure not audited")
	}
}

func TestOrigin(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	path := "/tickets/" + strconv.FormatUint(id, 10)
	cases := []struct {
		name string
		opts []reqOpt
		want int
	}{
		{"foreign origin", []reqOpt{withHeader("Origin", "https://evil.example")}, http.StatusForbidden},
		{"look-alike host", []reqOpt{withHeader("Origin", "http://mailgate.test.evil.example")}, http.StatusForbidden},
		{"null origin", []reqOpt{withHeader("Origin", "null")}, http.StatusForbidden},
		{"neither header", []reqOpt{noOrigin()}, http.StatusForbidden},
		{"foreign referer", []reqOpt{noOrigin(), withHeader("Referer", "https://evil.example/x")}, http.StatusForbidden},
		{"own referer", []reqOpt{noOrigin(), withHeader("Referer", "http://mailgate.test/tickets/1")}, http.StatusSeeOther},
		{"own origin", nil, http.StatusSeeOther},
	}
	for _, tc := range cases {
		w := c.post(path, url.Values{"action": {"status"}, "status": {"open"}}, tc.opts...)
		if w.Code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, w.Code, tc.want)
		}
	}
	if n := len(e.events(audit.Filter{Actor: "alice", Action: "web.origin", Result: audit.Denied})); n != 5 {
		t.Errorf("%d web.origin events, want 5", n)
	}
	// Login and logout are checked too.
	fresh := e.client()
	if w := fresh.post("/login", url.Values{"username": {"alice"}, "password": {"x"}}, withHeader("Origin", "https://evil.example")); w.Code != http.StatusForbidden {
		t.Errorf("cross-site login: %d", w.Code)
	}
	if w := c.post("/logout", url.Values{"csrf": {c.csrf("/account")}}, withHeader("Origin", "https://evil.example")); w.Code != http.StatusForbidden {
		t.Errorf("cross-site logout: %d", w.Code)
	}
}

func TestOtherQueueIsNotFound(t *testing.T) {
	e := newEnv(t)
	billing := e.ingest(mail{queue: "billing", from: "dan@customer.example", subject: "Invoice", verified: true,
		attach: []attachment{{"invoice.pdf", "application/pdf", "%PDF-1.4"}}})
	support := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	b := strconv.FormatUint(billing, 10)

	w := c.get("/tickets")
	mustContain(t, "list", w.Body.String(), `href="/tickets/`+strconv.FormatUint(support, 10)+`"`)
	mustNotContain(t, "list", w.Body.String(), "Invoice", "dan@customer.example")

	for _, path := range []string{"/tickets/" + b, "/tickets/" + b + "/messages/1/attachments/0", "/tickets/999"} {
		w := c.get(path)
		if w.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, w.Code)
		}
		mustNotContain(t, path, w.Body.String(), "Invoice", "dan@customer.example", "%PDF")
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "ticket.view", Object: "ticket/" + b, Result: audit.Denied}) {
		t.Error("no denied ticket.view event")
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "attachment.download", Object: "ticket/" + b, Result: audit.Denied}) {
		t.Error("no denied attachment.download event")
	}
	for _, action := range []string{"note", "reply", "status", "assign", "link"} {
		f := url.Values{"action": {action}, "body": {"x"}, "status": {"closed"}, "assignee": {""}, "other": {strconv.FormatUint(support, 10)}}
		f.Set("csrf", c.csrf("/tickets"))
		if w := c.post("/tickets/"+b, f); w.Code != http.StatusNotFound {
			t.Errorf("POST %s to another queue: %d, want 404", action, w.Code)
		}
	}
	if e.mailer.texts() != nil {
		t.Error("a reply to another queue's ticket was sent")
	}
	// Filtering on a queue one is not in is refused, not an empty list.
	if w := c.get("/tickets?queue=billing"); w.Code != http.StatusNotFound {
		t.Errorf("foreign queue filter: %d", w.Code)
	}
}

func TestRoles(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	path := "/tickets/" + strconv.FormatUint(id, 10)
	aud := e.loggedIn("eve", access.RoleAuditor)
	agent := e.loggedIn("alice", access.RoleAgent, "support")
	admin := e.loggedIn("root", access.RoleAdmin)

	// Auditors: the audit log yes, tickets no, and nothing that changes them.
	if w := aud.get("/audit"); w.Code != http.StatusOK {
		t.Errorf("auditor /audit: %d", w.Code)
	}
	if w := aud.get("/tickets"); w.Code != http.StatusForbidden {
		t.Errorf("auditor /tickets: %d", w.Code)
	}
	if w := aud.get(path); w.Code != http.StatusNotFound {
		t.Errorf("auditor ticket page: %d", w.Code)
	}
	for _, action := range []string{"note", "reply", "status", "assign", "link"} {
		f := url.Values{"action": {action}, "body": {"x"}, "status": {"closed"}, "other": {"1"}, "csrf": {aud.csrf("/account")}}
		if w := aud.post(path, f); w.Code != http.StatusForbidden {
			t.Errorf("auditor POST %s: %d, want 403", action, w.Code)
		}
	}
	if !e.hasEvent(audit.Filter{Actor: "eve", Action: "ticket.note", Result: audit.Denied}) {
		t.Error("auditor's refused note not audited")
	}
	if w := aud.get("/admin/agents"); w.Code != http.StatusForbidden {
		t.Errorf("auditor /admin: %d", w.Code)
	}
	if w := aud.get("/"); w.Header().Get("Location") != "/audit" {
		t.Errorf("auditor home: %s", w.Header().Get("Location"))
	}
	_, msgs, _ := e.tk.Get(access.Actor{Name: "test", Role: access.RoleAdmin}, id)
	if len(msgs) != 1 {
		t.Fatalf("auditor changed the ticket: %d messages", len(msgs))
	}

	// Agents: no audit log, no admin.
	if w := agent.get("/audit"); w.Code != http.StatusForbidden {
		t.Errorf("agent /audit: %d", w.Code)
	}
	if w := agent.get("/admin/agents"); w.Code != http.StatusForbidden {
		t.Errorf("agent /admin: %d", w.Code)
	}
	f := url.Values{"action": {"add"}, "name": {"mallory"}, "email": {"m@example.com"}, "role": {"admin"}, "csrf": {agent.csrf("/account")}}
	if w := agent.post("/admin/agents", f); w.Code != http.StatusForbidden {
		t.Errorf("agent adds an admin: %d", w.Code)
	}
	if _, err := e.acc.Get("mallory"); err == nil {
		t.Error("an agent created an account")
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "audit.view", Result: audit.Denied}) {
		t.Error("agent's refused audit view not audited")
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "admin.view", Result: audit.Denied}) {
		t.Error("agent's refused admin page not audited")
	}
	// Admins: everything.
	for _, p := range []string{"/audit", "/admin/agents", "/tickets", path} {
		if w := admin.get(p); w.Code != http.StatusOK {
			t.Errorf("admin %s: %d", p, w.Code)
		}
	}
	// Without a session: the login page, for pages and forms alike.
	anon := e.client()
	for _, p := range []string{"/tickets", path, "/audit", "/admin/agents", "/account", "/"} {
		if w := anon.get(p); w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login" {
			t.Errorf("anonymous %s: %d %s", p, w.Code, w.Header().Get("Location"))
		}
	}
	if w := anon.do(http.MethodPost, path, url.Values{"action": {"note"}, "body": {"x"}}); w.Code != http.StatusSeeOther {
		t.Errorf("anonymous POST: %d", w.Code)
	}
}

func TestSessionExpiry(t *testing.T) {
	e := newEnv(t)
	c := e.loggedIn("alice", access.RoleAgent, "support")
	e.clk.Add(29 * time.Minute)
	if w := c.get("/tickets"); w.Code != http.StatusOK {
		t.Fatalf("within idle limit: %d", w.Code)
	}
	e.clk.Add(31 * time.Minute)
	w := c.get("/tickets")
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login" {
		t.Fatalf("after idle limit: %d %s", w.Code, w.Header().Get("Location"))
	}
	if _, ok := c.cookies[sessionCookie]; ok {
		t.Error("expired session cookie not cleared")
	}
	// Absolute limit: active all day, still out after 12 h.
	c.login("alice")
	for i := 1; i < 12*4; i++ {
		e.clk.Add(15 * time.Minute)
		if w := c.get("/account"); w.Code != http.StatusOK {
			t.Fatalf("active session ended after %d min: %d", i*15, w.Code)
		}
	}
	e.clk.Add(15 * time.Minute)
	if w := c.get("/account"); w.Code != http.StatusSeeOther {
		t.Errorf("past the absolute limit: %d", w.Code)
	}
}

func TestTicketWork(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true, body: "Where is order 42?"})
	e.ingest(mail{from: "mallory@evil.example", subject: "Re: Order late [#1]", verified: false}) // a new ticket, linked
	un := e.ingest(mail{from: "frank@customer.example", subject: "Password", verified: false, body: "Send me my password"})
	q := e.ingest(mail{from: "gina@customer.example", subject: "Quarantined", verified: true, quarantined: true})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	e.addAgent("bob", access.RoleAgent, "support")
	e.addAgent("zed", access.RoleAgent, "billing")
	path := "/tickets/" + strconv.FormatUint(id, 10)

	w := c.get(path)
	body := w.Body.String()
	mustContain(t, "verified ticket", body, "verified sender", "Where is order 42?", `name="body"`,
		`name="action" value="reply"`, `name="action" value="note"`, `name="status"`, `value="bob"`)
	mustNotContain(t, "verified ticket", body, "could not verify", `value="zed"`)
	for _, tid := range []uint64{un, q} {
		w := c.get("/tickets/" + strconv.FormatUint(tid, 10))
		mustContain(t, "unverified ticket", w.Body.String(), "mailgate could not verify this sender: do not disclose account data")
		mustNotContain(t, "unverified ticket", w.Body.String(), "verified sender</span>")
	}

	post := func(f url.Values) int {
		t.Helper()
		return c.post(path, f).Code
	}
	if code := post(url.Values{"action": {"note"}, "body": {"Checked the warehouse."}}); code != http.StatusSeeOther {
		t.Fatalf("note: %d", code)
	}
	if code := post(url.Values{"action": {"reply"}, "body": {"Your order ships today."}}); code != http.StatusSeeOther {
		t.Fatalf("reply: %d", code)
	}
	if got := e.mailer.texts(); len(got) != 1 || got[0] != "Your order ships today." {
		t.Fatalf("mailer got %q", got)
	}
	if code := post(url.Values{"action": {"status"}, "status": {"solved"}}); code != http.StatusSeeOther {
		t.Fatalf("status: %d", code)
	}
	if code := post(url.Values{"action": {"status"}, "status": {"bogus"}}); code != http.StatusBadRequest {
		t.Errorf("bad status: %d", code)
	}
	if code := post(url.Values{"action": {"assign"}, "assignee": {"bob"}}); code != http.StatusSeeOther {
		t.Fatalf("assign: %d", code)
	}
	if code := post(url.Values{"action": {"assign"}, "assignee": {"zed"}}); code != http.StatusBadRequest {
		t.Errorf("assign to an agent of another queue: %d", code)
	}
	if code := post(url.Values{"action": {"link"}, "other": {"#" + strconv.FormatUint(un, 10)}}); code != http.StatusSeeOther {
		t.Fatalf("link: %d", code)
	}
	if code := post(url.Values{"action": {"link"}, "other": {"1e3"}}); code != http.StatusBadRequest {
		t.Errorf("bad link: %d", code)
	}
	if code := post(url.Values{"action": {"note"}, "body": {"  "}}); code != http.StatusBadRequest {
		t.Errorf("empty note: %d", code)
	}
	if code := post(url.Values{"action": {"delete"}}); code != http.StatusBadRequest {
		t.Errorf("unknown action: %d", code)
	}

	tk, msgs, err := e.tk.Get(access.Actor{Name: "test", Role: access.RoleAdmin}, id)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Status != tickets.StatusSolved || tk.Assignee != "bob" || len(tk.Links) == 0 || len(msgs) != 3 {
		t.Fatalf("ticket after work: %+v, %d messages", tk, len(msgs))
	}
	body = c.get(path).Body.String()
	mustContain(t, "ticket after work", body, "Checked the warehouse.", "Your order ships today.", "internal note by alice",
		"reply by alice", `<option value="solved" selected>`, `<option value="bob" selected>`, `href="/tickets/`+strconv.FormatUint(un, 10)+`"`)
	for _, action := range []string{"ticket.note", "ticket.reply", "ticket.status", "ticket.assign", "ticket.link", "ticket.view"} {
		if !e.hasEvent(audit.Filter{Actor: "alice", Action: action, Object: "ticket/" + strconv.FormatUint(id, 10), Result: audit.OK}) {
			t.Errorf("%s not audited", action)
		}
	}
}

func TestStrictIDs(t *testing.T) {
	e := newEnv(t)
	e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true, attach: []attachment{{"a.txt", "text/plain", "x"}}})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	for _, p := range []string{"/tickets/01", "/tickets/+1", "/tickets/1x", "/tickets/0", "/tickets/-1", "/tickets/%201",
		"/tickets/99999999999999999999", "/tickets/0x1", "/tickets/1/messages/01/attachments/0", "/tickets/1/messages/1/attachments/00",
		"/tickets/1/messages/0/attachments/0", "/tickets/1/messages/1/attachments/-1", "/tickets/1/messages/1/attachments/1"} {
		if w := c.get(p); w.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, w.Code)
		}
	}
	for _, p := range []string{"/tickets/1", "/tickets/1/messages/1/attachments/0"} {
		if w := c.get(p); w.Code != http.StatusOK {
			t.Errorf("%s: %d, want 200", p, w.Code)
		}
	}
	for _, p := range []string{"/tickets?page=0", "/tickets?page=x", "/tickets?status=lost", "/tickets/1?html=x"} {
		if w := c.get(p); w.Code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", p, w.Code)
		}
	}
}

func TestTicketListPages(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 55; i++ {
		e.ingest(mail{from: "c" + strconv.Itoa(i) + "@customer.example", subject: "Question " + strconv.Itoa(i+1), verified: true})
	}
	c := e.loggedIn("alice", access.RoleAgent, "support", "billing")
	rows := regexp.MustCompile(`<tr class="status-`)
	w := c.get("/tickets")
	body := w.Body.String()
	if n := len(rows.FindAllString(body, -1)); n != pageSize {
		t.Fatalf("page 1: %d rows", n)
	}
	// The customer waiting longest first: they all wait since the same minute, so by number.
	if strings.Index(body, "Question 1<") > strings.Index(body, "Question 2<") || strings.Index(body, "Question 1<") < 0 {
		t.Error("not the longest waiting first")
	}
	mustContain(t, "page 1", body, `href="/tickets?page=2"`, `rel="last"`, "page 1 of 2 · 55 tickets")
	w = c.get("/tickets?page=2")
	if n := len(rows.FindAllString(w.Body.String(), -1)); n != 5 {
		t.Errorf("page 2: %d rows", n)
	}
	mustContain(t, "page 2", w.Body.String(), "Question 55<", `href="/tickets"`, "page 2 of 2")
	// Newest first on request.
	w = c.get("/tickets?sort=number")
	if b := w.Body.String(); strings.Index(b, "Question 55<") > strings.Index(b, "Question 54<") || strings.Index(b, "Question 55<") < 0 {
		t.Error("sort=number is not newest first")
	}
	if err := e.tk.SetStatus(access.Actor{Name: "x", Role: access.RoleAdmin}, 3, tickets.StatusClosed); err != nil {
		t.Fatal(err)
	}
	w = c.get("/tickets?status=closed&queue=support")
	if n := len(rows.FindAllString(w.Body.String(), -1)); n != 1 {
		t.Errorf("status filter: %d rows", n)
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "ticket.list", Result: audit.OK}) {
		t.Error("list view not audited")
	}
}

func TestAttachmentDownload(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(mail{from: "carol@customer.example", subject: "Files", verified: true, attach: []attachment{
		{"evil.html", "text/html", "<script>alert(1)</script>"},
		{"résumé \"final\".pdf", "application/pdf", "%PDF-1.4 test"},
		{"pic.svg", "image/svg+xml", "<svg onload=alert(1)></svg>"},
	}})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	base := "/tickets/" + strconv.FormatUint(id, 10) + "/messages/1/attachments/"
	page := c.get("/tickets/" + strconv.FormatUint(id, 10)).Body.String()
	mustContain(t, "ticket page", page, `href="`+base+`0"`, `href="`+base+`1"`)
	cases := []struct {
		i     string
		ctype string
		disp  string
	}{
		{"0", "application/octet-stream", `attachment; filename="evil.html"; filename*=UTF-8''evil.html`},
		{"1", "application/pdf", `attachment; filename="r_sum_ final.pdf"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf`},
		{"2", "application/octet-stream", `attachment; filename="pic.svg"; filename*=UTF-8''pic.svg`},
	}
	for _, tc := range cases {
		w := c.get(base + tc.i)
		if w.Code != http.StatusOK {
			t.Fatalf("attachment %s: %d", tc.i, w.Code)
		}
		h := w.Header()
		if h.Get("Content-Type") != tc.ctype {
			t.Errorf("attachment %s: Content-Type %q, want %q", tc.i, h.Get("Content-Type"), tc.ctype)
		}
		if h.Get("Content-Disposition") != tc.disp {
			t.Errorf("attachment %s: Content-Disposition %q, want %q", tc.i, h.Get("Content-Disposition"), tc.disp)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("attachment %s: no nosniff", tc.i)
		}
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "attachment.download", Result: audit.OK}) {
		t.Error("download not audited")
	}
}

func TestContentDisposition(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a.txt", `attachment; filename="a.txt"; filename*=UTF-8''a.txt`},
		{"x\r\nSet-Cookie: a=b", `attachment; filename="x__Set-Cookie: a=b"; filename*=UTF-8''x%0D%0ASet-Cookie%3A%20a%3Db`},
		{`a";b.txt`, `attachment; filename="a__b.txt"; filename*=UTF-8''a%22%3Bb.txt`},
		{"100%.txt", `attachment; filename="100_.txt"; filename*=UTF-8''100%25.txt`},
		{"日本.txt", `attachment; filename="__.txt"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt`},
		{"日本", `attachment; filename="attachment"; filename*=UTF-8''%E6%97%A5%E6%9C%AC`},
	} {
		if got := contentDisposition(tc.in); got != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

func TestHTMLMailShownOnRequest(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(mail{from: "carol@customer.example", subject: "Newsletter", verified: true, body: "plain version",
		html: `<p>Hello <b>there</b></p><img src="https://tracker.example/pixel.gif"><script>document.title="pwned"</script><a href="javascript:alert(1)">x</a>`})
	c := e.loggedIn("alice", access.RoleAgent, "support")
	path := "/tickets/" + strconv.FormatUint(id, 10)
	body := c.get(path).Body.String()
	mustContain(t, "text view", body, "plain version", `href="`+path+`?html=1#m1"`, "Show HTML")
	mustNotContain(t, "text view", body, "<b>there</b>")
	body = c.get(path + "?html=1").Body.String()
	mustContain(t, "HTML view", body, "Hello <b>there</b>", "Show text")
	mustNotContain(t, "HTML view", body, "tracker.example", "<script", "pwned", "javascript:")
}

func TestAccountPage(t *testing.T) {
	e := newEnv(t)
	c := e.loggedIn("alice", access.RoleAgent, "support")
	w := c.get("/account")
	mustContain(t, "account", w.Body.String(), "alice@example.com", "support")

	post := func(f url.Values) (int, string) {
		w := c.post("/account", f)
		return w.Code, w.Body.String()
	}
	code, body := post(url.Values{"action": {"password"}, "old_password": {"not it at all"}, "new_password": {"a new long password"}, "new_password2": {"a new long password"}})
	if code != http.StatusBadRequest || !strings.Contains(body, "current password is wrong") {
		t.Errorf("wrong old password: %d", code)
	}
	code, _ = post(url.Values{"action": {"password"}, "old_password": {e.pw["alice"]}, "new_password": {"a new long password"}, "new_password2": {"another one"}})
	if code != http.StatusBadRequest {
		t.Errorf("mismatched new passwords: %d", code)
	}
	code, body = post(url.Values{"action": {"password"}, "old_password": {e.pw["alice"]}, "new_password": {"short"}, "new_password2": {"short"}})
	if code != http.StatusBadRequest || !strings.Contains(body, "at least 12") {
		t.Errorf("short password: %d", code)
	}
	code, _ = post(url.Values{"action": {"password"}, "old_password": {e.pw["alice"]}, "new_password": {"a new long password"}, "new_password2": {"a new long password"}})
	if code != http.StatusOK {
		t.Fatalf("change password: %d", code)
	}
	e.pw["alice"] = "a new long password"

	code, body = post(e.reauth("alice", url.Values{"action": {"recovery"}}))
	codes := regexp.MustCompile(`<li><code>([a-z0-9-]+)</code></li>`).FindAllStringSubmatch(body, -1)
	if code != http.StatusOK || len(codes) != 10 {
		t.Fatalf("recovery codes: %d, %d codes", code, len(codes))
	}
	if strings.Contains(c.get("/account").Body.String(), codes[0][1]) {
		t.Error("recovery codes shown again")
	}

	code, body = post(e.reauth("alice", url.Values{"action": {"app-new"}, "label": {"thunderbird"}}))
	pw := regexp.MustCompile(`<code class="big">([a-z0-9-]+)</code>`).FindStringSubmatch(body)
	if code != http.StatusOK || pw == nil {
		t.Fatalf("app password: %d", code)
	}
	if _, err := e.acc.CheckAppPassword("alice", pw[1], "127.0.0.1:1"); err != nil {
		t.Fatalf("app password does not work: %v", err)
	}
	page := c.get("/account").Body.String()
	if strings.Contains(page, pw[1]) {
		t.Error("app password shown again")
	}
	m := regexp.MustCompile(`name="id" value="([0-9a-f]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no revoke form")
	}
	if code, _ := post(url.Values{"action": {"app-revoke"}, "id": {m[1]}}); code != http.StatusOK {
		t.Fatalf("revoke: %d", code)
	}
	if _, err := e.acc.CheckAppPassword("alice", pw[1], "127.0.0.1:1"); err == nil {
		t.Error("revoked app password still works")
	}

	// A recovery code logs in instead of TOTP, once.
	c2 := e.client()
	c2.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}})
	if w := c2.post("/login/code", url.Values{"code": {codes[3][1]}}); w.Code != http.StatusSeeOther {
		t.Fatalf("recovery code login: %d", w.Code)
	}
	for _, a := range []string{"password.change", "mfa.recovery", "apppassword.new", "apppassword.revoke"} {
		if !e.hasEvent(audit.Filter{Actor: "alice", Action: a, Result: audit.OK}) {
			t.Errorf("%s not audited", a)
		}
	}
}

func TestAdminPage(t *testing.T) {
	e := newEnv(t)
	c := e.loggedIn("root", access.RoleAdmin)
	w := c.post("/admin/agents", e.reauth("root", url.Values{"action": {"add"}, "name": {"carl"}, "email": {"carl@example.com"}, "role": {"agent"}, "queue": {"support", "billing"}}))
	body := w.Body.String()
	if w.Code != http.StatusOK {
		t.Fatalf("add: %d\n%s", w.Code, body)
	}
	pw := regexp.MustCompile(`Initial password: <code class="big">([a-z0-9-]+)</code>`).FindStringSubmatch(body)
	uri := regexp.MustCompile(`<code class="wrap">(otpauth://[^<]+)</code>`).FindStringSubmatch(body)
	if pw == nil || uri == nil || !strings.Contains(body, `src="data:image/png;base64,`) {
		t.Fatalf("secrets not shown:\n%s", body)
	}
	if strings.Contains(c.get("/admin/agents").Body.String(), pw[1]) {
		t.Error("initial password shown again")
	}
	ag, err := e.acc.Get("carl")
	if err != nil || strings.Join(ag.Queues, ",") != "billing,support" {
		t.Fatalf("carl: %+v %v", ag, err)
	}
	if w := c.post("/admin/agents", e.reauth("root", url.Values{"action": {"add"}, "name": {"carl"}, "email": {"carl@example.com"}, "role": {"agent"}})); w.Code != http.StatusConflict {
		t.Errorf("duplicate: %d", w.Code)
	}
	if w := c.post("/admin/agents", e.reauth("root", url.Values{"action": {"add"}, "name": {"Bad Name"}, "email": {"x@example.com"}, "role": {"agent"}})); w.Code != http.StatusBadRequest {
		t.Errorf("bad name: %d", w.Code)
	}
	if w := c.post("/admin/agents", url.Values{"action": {"queues"}, "name": {"carl"}, "queue": {"billing"}}); w.Code != http.StatusOK {
		t.Fatalf("queues: %d", w.Code)
	}
	if ag, _ := e.acc.Get("carl"); strings.Join(ag.Queues, ",") != "billing" {
		t.Errorf("queues now %v", ag.Queues)
	}
	w = c.post("/admin/agents", e.reauth("root", url.Values{"action": {"reset-mfa"}, "name": {"carl"}, "confirm": {"carl"}}))
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "otpauth://") || strings.Contains(w.Body.String(), uri[1]) {
		t.Errorf("reset MFA: %d", w.Code)
	}
	if w := c.post("/admin/agents", url.Values{"action": {"disable"}, "name": {"carl"}, "confirm": {"carl"}}); w.Code != http.StatusOK {
		t.Fatalf("disable: %d", w.Code)
	}
	if ag, _ := e.acc.Get("carl"); !ag.Disabled {
		t.Error("not disabled")
	}
	if w := c.post("/admin/agents", url.Values{"action": {"disable"}, "name": {"root"}, "confirm": {"root"}}); w.Code != http.StatusBadRequest {
		t.Errorf("disabling the last admin: %d", w.Code)
	}
	for _, a := range []string{"agent.add", "agent.queues", "mfa.reset", "agent.disable"} {
		if !e.hasEvent(audit.Filter{Actor: "root", Action: a, Result: audit.OK}) {
			t.Errorf("%s not audited", a)
		}
	}
}

func TestAuditPage(t *testing.T) {
	e := newEnv(t)
	e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	agent := e.loggedIn("alice", access.RoleAgent, "support")
	agent.get("/tickets/1")
	aud := e.loggedIn("eve", access.RoleAuditor)
	w := aud.get("/audit")
	body := w.Body.String()
	mustContain(t, "audit", body, "Chain intact", "ticket.view", "mail.receive", "audit.view")
	w = aud.get("/audit?actor=alice&action=ticket.view&result=ok")
	body = w.Body.String()
	mustContain(t, "filtered", body, "ticket/1")
	mustNotContain(t, "filtered", body, "mail.receive")
	for _, p := range []string{"/audit?since=yesterday", "/audit?result=maybe", "/audit?page=0"} {
		if w := aud.get(p); w.Code != http.StatusBadRequest {
			t.Errorf("%s: %d", p, w.Code)
		}
	}
	w = aud.get("/audit?since=2030-01-01")
	mustContain(t, "since", w.Body.String(), "No events match")
	if !e.hasEvent(audit.Filter{Actor: "eve", Action: "audit.view", Result: audit.OK}) {
		t.Error("audit view not audited")
	}
}

// TestHealthAndMetrics: the public /healthz says ok or unavailable and never why, and /metrics
// is not on the agents' page at all (it lives on the [metrics] listener).
func TestHealthAndMetrics(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	w := c.get("/healthz")
	if w.Code != http.StatusOK || w.Body.String() != "ok\n" {
		t.Fatalf("healthz: %d %q", w.Code, w.Body.String())
	}
	e.health = errors.New("smtp listener down; 3 failed logins")
	w = c.get("/healthz")
	if w.Code != http.StatusServiceUnavailable || w.Body.String() != "unavailable\n" {
		t.Errorf("unhealthy: %d %q, want 503 and no reason", w.Code, w.Body.String())
	}
	if !strings.Contains(e.logs.String(), "smtp listener down") {
		t.Error("the reason is not in the log")
	}
	w = c.get("/metrics")
	if w.Code != http.StatusNotFound || strings.Contains(w.Body.String(), "mailgate_") {
		t.Errorf("metrics on the public page: %d\n%s", w.Code, w.Body.String())
	}
}

func TestAnonymousRefusalsBounded(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	for i := 0; i < 30; i++ {
		if w := c.do(http.MethodPost, "/login", url.Values{"username": {"x"}}); w.Code != http.StatusForbidden {
			t.Fatalf("forged login %d: %d", i, w.Code)
		}
	}
	evs := e.events(audit.Filter{Actor: "anonymous", Action: "web.csrf"})
	if len(evs) != anonPerWindow {
		t.Fatalf("%d events for 30 forged posts, want %d", len(evs), anonPerWindow)
	}
	// Another address is counted on its own.
	c2 := e.client()
	c2.remote = "203.0.113.5:1000"
	c2.do(http.MethodPost, "/login", url.Values{"username": {"x"}})
	if n := len(e.events(audit.Filter{Actor: "anonymous", Action: "web.csrf"})); n != anonPerWindow+1 {
		t.Errorf("second address: %d events", n)
	}
	// The next window's first event says how many were left out.
	e.clk.Add(anonWindow)
	c.do(http.MethodPost, "/login", url.Values{"username": {"x"}})
	evs = e.events(audit.Filter{Actor: "anonymous", Action: "web.csrf", Limit: 1})
	if len(evs) != 1 || !strings.Contains(evs[0].Detail, "20 more") {
		t.Errorf("summary event: %+v", evs)
	}
	// Agents' refusals are never dropped.
	a := e.loggedIn("alice", access.RoleAgent, "support")
	for i := 0; i < 15; i++ {
		a.do(http.MethodPost, "/account", url.Values{"action": {"recovery"}})
	}
	if n := len(e.events(audit.Filter{Actor: "alice", Action: "web.csrf"})); n != 15 {
		t.Errorf("agent refusals: %d events, want 15", n)
	}
}

func TestWKDMounted(t *testing.T) {
	e := newEnv(t)
	var got string
	srv, err := New(Options{Config: e.cfg, Access: e.acc, Tickets: e.tk, Audit: e.log, DB: e.db,
		WKD: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got = r.URL.Path
			w.Write([]byte("key"))
		})})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	w := e.client().get("/.well-known/openpgpkey/hu/abc?l=support")
	if w.Code != http.StatusOK || got != "/.well-known/openpgpkey/hu/abc" || w.Body.String() != "key" {
		t.Errorf("WKD: %d %q %q", w.Code, got, w.Body.String())
	}
	// Without a gateway key nothing is mounted there.
	e2 := newEnv(t)
	if w := e2.client().get("/.well-known/openpgpkey/hu/abc"); w.Code != http.StatusNotFound {
		t.Errorf("WKD without key: %d", w.Code)
	}
}
