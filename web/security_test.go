package web

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"mailgate/access"
	"mailgate/audit"
)

// Issue 11.4: an attacker guessing alice's password from 127.0.0.2 locks that address out, not
// alice at 127.0.0.3; many addresses together still hit the per-account ceiling.
func TestLoginLockoutIsNotDenialOfService(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	attacker := e.client()
	attacker.remote = "127.0.0.2:40000"
	locked := false
	for i := range 20 {
		w := attacker.post("/login", url.Values{"username": {"alice"}, "password": {fmt.Sprint("guess ", i)}})
		if w.Code == http.StatusTooManyRequests {
			locked = true
			break
		}
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, w.Code)
		}
	}
	if !locked {
		t.Fatal("the attacker's address was never throttled")
	}
	agent := e.client()
	agent.remote = "127.0.0.3:40001"
	agent.login("alice") // fails the test unless password and code both pass
	if w := agent.get("/tickets"); w.Code != http.StatusOK {
		t.Fatalf("agent's ticket list: %d", w.Code)
	}
	if w := attacker.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}}); w.Code != http.StatusTooManyRequests {
		t.Fatalf("attacker's address with the right password after the agent's login: %d, want 429", w.Code)
	}

	// The ceiling: 5 guesses from each of 12 addresses (each under its own limit of 5) lock
	// alice everywhere, even at a fresh address with the right password.
	for a := 10; a < 22; a++ {
		c := e.client()
		c.remote = fmt.Sprintf("127.0.1.%d:1", a)
		for i := range 5 {
			c.post("/login", url.Values{"username": {"alice"}, "password": {fmt.Sprint("distributed ", i)}})
		}
	}
	fresh := e.client()
	fresh.remote = "127.0.0.4:1"
	if w := fresh.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}}); w.Code != http.StatusTooManyRequests {
		t.Fatalf("fresh address after a distributed attack: %d, want 429", w.Code)
	}
	var ceiling bool
	for _, ev := range e.events(audit.Filter{Action: "login.lockout"}) {
		ceiling = ceiling || strings.Contains(ev.Detail, "account from every address")
	}
	if !ceiling {
		t.Error("no lockout event for the per-account ceiling")
	}
}

// reauth adds name's password and a fresh TOTP code (the clock moves on a step, as each code
// works once) to a form that needs step-up re-authentication.
func (e *env) reauth(name string, f url.Values) url.Values {
	e.clk.Add(30 * time.Second)
	f.Set("reauth_password", e.pw[name])
	f.Set("reauth_code", e.code(name))
	return f
}

// Issue 11.7: minting app passwords and recovery codes, resetting MFA, adding an agent or
// resetting a password (each mints a way in) and exporting the audit log need the password
// and a code again; a session alone (a stolen cookie, an unlocked
// screen) is refused, audited and throttled.
func TestStepUpRequired(t *testing.T) {
	e := newEnv(t)
	e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	alice := e.loggedIn("alice", access.RoleAgent, "support")
	root := e.loggedIn("root", access.RoleAdmin)
	eve := e.loggedIn("eve", access.RoleAuditor)
	e.addAgent("carl", access.RoleAgent, "support")

	type action struct {
		name   string
		c      *client
		who    string
		path   string
		form   func() url.Values
		worked func(w *httptest.ResponseRecorder) bool
	}
	actions := []action{
		{"recovery codes", alice, "alice", "/account", func() url.Values { return url.Values{"action": {"recovery"}} },
			func(w *httptest.ResponseRecorder) bool {
				return strings.Contains(w.Body.String(), `id="recovery-codes"`)
			}},
		{"app password", alice, "alice", "/account", func() url.Values { return url.Values{"action": {"app-new"}, "label": {"phone"}} },
			func(w *httptest.ResponseRecorder) bool { return strings.Contains(w.Body.String(), `id="app-password"`) }},
		{"MFA reset", root, "root", "/admin/agents", func() url.Values { return url.Values{"action": {"reset-mfa"}, "name": {"carl"}, "confirm": {"carl"}} },
			func(w *httptest.ResponseRecorder) bool { return strings.Contains(w.Body.String(), "otpauth://") }},
		{"add agent", root, "root", "/admin/agents", func() url.Values {
			return url.Values{"action": {"add"}, "name": {"mallory"}, "email": {"m@example.com"}, "role": {"admin"}}
		}, func(w *httptest.ResponseRecorder) bool { return strings.Contains(w.Body.String(), "Initial password") }},
		{"reset password", root, "root", "/admin/agents", func() url.Values { return url.Values{"action": {"reset-password"}, "name": {"carl"}} },
			func(w *httptest.ResponseRecorder) bool { return strings.Contains(w.Body.String(), "New password:") }},
		{"audit export (auditor)", eve, "eve", "/audit/export", func() url.Values { return url.Values{} },
			func(w *httptest.ResponseRecorder) bool {
				return strings.Contains(w.Body.String(), `"action":"mail.receive"`)
			}},
		{"audit export (admin)", root, "root", "/audit/export", func() url.Values { return url.Values{"since": {"2026-01-01"}} },
			func(w *httptest.ResponseRecorder) bool {
				return strings.Contains(w.Body.String(), `"action":"mail.receive"`)
			}},
	}
	for i, a := range actions {
		// Each action from its own address, so its three refusals stay under the throttle.
		a.c.remote = fmt.Sprintf("127.0.2.%d:1", i+1)
		e.clk.Add(30 * time.Second)
		for _, bad := range []struct{ why, pw, code string }{
			{"no password or code", "", ""},
			{"wrong password", "not the password", e.code(a.who)},
			{"wrong code", e.pw[a.who], "000000"},
		} {
			f := a.form()
			if bad.pw != "" || bad.code != "" {
				f.Set("reauth_password", bad.pw)
				f.Set("reauth_code", bad.code)
			}
			f.Set("csrf", a.c.csrf("/account"))
			w := a.c.post(a.path, f)
			if w.Code != http.StatusForbidden || a.worked(w) {
				t.Fatalf("%s with %s: %d, want 403 and nothing done\n%s", a.name, bad.why, w.Code, w.Body.String())
			}
			mustContain(t, a.name, w.Body.String(), "password or code is wrong")
		}
		f := e.reauth(a.who, a.form())
		f.Set("csrf", a.c.csrf("/account"))
		w := a.c.post(a.path, f)
		if w.Code != http.StatusOK || !a.worked(w) {
			t.Fatalf("%s with password and code: %d\n%s", a.name, w.Code, w.Body.String())
		}
	}
	if n := len(e.events(audit.Filter{Action: "stepup", Result: audit.Failed})); n != 3*len(actions) {
		t.Errorf("%d failed step-ups audited, want %d", n, 3*len(actions))
	}
	if n := len(e.events(audit.Filter{Action: "stepup", Result: audit.OK})); n != len(actions) {
		t.Errorf("%d step-ups audited, want %d", n, len(actions))
	}
	if n := len(e.events(audit.Filter{Action: "audit.export", Result: audit.OK})); n != 2 {
		t.Errorf("%d audit exports audited, want 2", n)
	}
	// Only what needed it was done: carl's MFA was reset once, alice has one app password.
	if n := len(e.events(audit.Filter{Action: "mfa.reset", Result: audit.OK})); n != 1 {
		t.Errorf("%d MFA resets, want 1", n)
	}
	if a, _ := e.acc.Get("alice"); len(a.AppPasswords) != 1 {
		t.Errorf("alice has %d app passwords, want 1", len(a.AppPasswords))
	}

	// Failed step-ups count toward the login throttle: two more failures (five in all at this
	// address) lock it, and then even the right password and code wait.
	alice.remote = "127.0.2.1:1"
	for range 3 {
		alice.post("/account", url.Values{"action": {"recovery"}, "reauth_password": {"guess"}, "reauth_code": {"123456"}})
	}
	// (The lock is 1 s: the right code is taken at the same instant, not a step later.)
	right := url.Values{"action": {"recovery"}, "reauth_password": {e.pw["alice"]}, "reauth_code": {e.code("alice")}}
	if w := alice.post("/account", right); w.Code != http.StatusTooManyRequests {
		t.Fatalf("step-up after 6 failures: %d, want 429", w.Code)
	}
	if !e.hasEvent(audit.Filter{Action: "login.lockout", Actor: "alice"}) {
		t.Error("no lockout event for failed step-ups")
	}
	// The agent refused an export is audited as denied.
	if w := alice.post("/audit/export", e.reauth("alice", url.Values{"csrf": {alice.csrf("/account")}})); w.Code != http.StatusForbidden {
		t.Errorf("agent's audit export: %d", w.Code)
	}
	if !e.hasEvent(audit.Filter{Action: "audit.export", Actor: "alice", Result: audit.Denied}) {
		t.Error("refused audit export not audited")
	}
}

// Issue 11.7: auditors get no app passwords; the page offers none and a forged form is refused.
func TestAuditorNoAppPasswordOnWeb(t *testing.T) {
	e := newEnv(t)
	eve := e.loggedIn("eve", access.RoleAuditor)
	mustNotContain(t, "auditor's account page", eve.get("/account").Body.String(), `value="app-new"`)
	w := eve.post("/account", e.reauth("eve", url.Values{"action": {"app-new"}, "label": {"phone"}}))
	if w.Code != http.StatusForbidden || strings.Contains(w.Body.String(), `id="app-password"`) {
		t.Fatalf("auditor's app password: %d\n%s", w.Code, w.Body.String())
	}
	if a, _ := e.acc.Get("eve"); len(a.AppPasswords) != 0 {
		t.Fatal("the auditor got an app password")
	}
	if !e.hasEvent(audit.Filter{Action: "apppassword.new", Actor: "eve", Result: audit.Denied}) {
		t.Error("refusal not audited")
	}
}

// Issue 11.8: every refusal on the web page is in the audit log as denied: cross-queue link and
// assign (which used to leave no trace), other queues' tickets and attachments, roles.
func TestEveryWebRefusalIsAudited(t *testing.T) {
	e := newEnv(t)
	billing := e.ingest(mail{queue: "billing", from: "dan@customer.example", subject: "Invoice", verified: true,
		attach: []attachment{{"invoice.pdf", "application/pdf", "%PDF-1.4"}}})
	support := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	e.addAgent("bob", access.RoleAgent, "billing")
	alice := e.loggedIn("alice", access.RoleAgent, "support")
	root := e.loggedIn("root", access.RoleAdmin)
	eve := e.loggedIn("eve", access.RoleAuditor)
	s, b := fmt.Sprint(support), fmt.Sprint(billing)

	for _, tc := range []struct {
		name   string
		c      *client
		actor  string
		action string
		object string
		status int
		do     func(c *client) *httptest.ResponseRecorder
	}{
		{"link to another queue's ticket", alice, "alice", "ticket.link", "ticket/" + s, http.StatusBadRequest, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+s, url.Values{"action": {"link"}, "other": {b}, "csrf": {c.csrf("/tickets")}})
		}},
		{"link to a missing ticket", alice, "alice", "ticket.link", "ticket/" + s, http.StatusBadRequest, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+s, url.Values{"action": {"link"}, "other": {"999"}, "csrf": {c.csrf("/tickets")}})
		}},
		{"assign to an agent of another queue", alice, "alice", "ticket.assign", "ticket/" + s, http.StatusBadRequest, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+s, url.Values{"action": {"assign"}, "assignee": {"bob"}, "csrf": {c.csrf("/tickets")}})
		}},
		{"admin assigns to an agent of another queue", root, "root", "ticket.assign", "ticket/" + s, http.StatusBadRequest, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+s, url.Values{"action": {"assign"}, "assignee": {"bob"}, "csrf": {c.csrf("/tickets")}})
		}},
		{"status in another queue", alice, "alice", "ticket.status", "ticket/" + b, http.StatusNotFound, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+b, url.Values{"action": {"status"}, "status": {"closed"}, "csrf": {c.csrf("/tickets")}})
		}},
		{"note in another queue", alice, "alice", "ticket.note", "ticket/" + b, http.StatusNotFound, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+b, url.Values{"action": {"note"}, "body": {"x"}, "csrf": {c.csrf("/tickets")}})
		}},
		{"reply in another queue", alice, "alice", "ticket.reply", "ticket/" + b, http.StatusNotFound, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+b, url.Values{"action": {"reply"}, "body": {"x"}, "csrf": {c.csrf("/tickets")}})
		}},
		{"assign in another queue", alice, "alice", "ticket.assign", "ticket/" + b, http.StatusNotFound, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+b, url.Values{"action": {"assign"}, "assignee": {""}, "csrf": {c.csrf("/tickets")}})
		}},
		{"link in another queue", alice, "alice", "ticket.link", "ticket/" + b, http.StatusNotFound, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+b, url.Values{"action": {"link"}, "other": {s}, "csrf": {c.csrf("/tickets")}})
		}},
		{"attachment in another queue", alice, "alice", "attachment.download", "ticket/" + b, http.StatusNotFound, func(c *client) *httptest.ResponseRecorder {
			return c.get("/tickets/" + b + "/messages/1/attachments/0")
		}},
		{"missing attachment", alice, "alice", "attachment.download", "ticket/" + s, http.StatusNotFound, func(c *client) *httptest.ResponseRecorder {
			return c.get("/tickets/" + s + "/messages/1/attachments/3")
		}},
		{"auditor changes a ticket", eve, "eve", "ticket.status", "/tickets/" + s, http.StatusForbidden, func(c *client) *httptest.ResponseRecorder {
			return c.post("/tickets/"+s, url.Values{"action": {"status"}, "status": {"closed"}, "csrf": {c.csrf("/account")}})
		}},
		{"agent on the admin page", alice, "alice", "admin.view", "/admin/agents", http.StatusForbidden, func(c *client) *httptest.ResponseRecorder {
			return c.post("/admin/agents", url.Values{"action": {"disable"}, "name": {"root"}, "csrf": {c.csrf("/tickets")}})
		}},
		{"agent reads the audit log", alice, "alice", "audit.view", "/audit", http.StatusForbidden, func(c *client) *httptest.ResponseRecorder {
			return c.get("/audit")
		}},
	} {
		before := len(e.events(audit.Filter{Result: audit.Denied, Limit: 1000}))
		if w := tc.do(tc.c); w.Code != tc.status {
			t.Fatalf("%s: %d, want %d\n%s", tc.name, w.Code, tc.status, w.Body.String())
		}
		after := e.events(audit.Filter{Result: audit.Denied, Limit: 1000})
		if len(after) != before+1 {
			t.Fatalf("%s: %d new denied events, want 1", tc.name, len(after)-before)
		}
		if ev := after[0]; ev.Actor != tc.actor || ev.Action != tc.action || ev.Object != tc.object || ev.Remote != tc.c.remote {
			t.Errorf("%s: denied event %+v", tc.name, ev)
		}
	}
	if tk, _, err := e.tk.Get(access.Ctl, support); err != nil || len(tk.Links) != 0 || tk.Assignee != "" {
		t.Errorf("a refused action changed the ticket: %+v %v", tk, err)
	}
}

// Issue 11.7 in a real browser: the app password form asks for the password and a code; a
// wrong code is refused with a message, the right pair shows the new password once.
func TestBrowserStepUp(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	t.Cleanup(func() { e.srv.Shutdown(context.Background()) })
	base := "http://" + l.Addr().String()
	ctx := browser(t)

	submit(t, ctx, "open login", chromedp.Navigate(base+"/login"))
	submit(t, ctx, "password step",
		chromedp.SendKeys(chromedp.ID("username"), "alice"),
		chromedp.SendKeys(chromedp.ID("password"), e.pw["alice"]),
		chromedp.Submit(chromedp.ID("login")))
	resp := submit(t, ctx, "code step",
		chromedp.SendKeys(chromedp.ID("code"), e.code("alice")),
		chromedp.Submit(chromedp.ID("code-form")))
	if !strings.HasSuffix(resp.URL, "/tickets") {
		t.Fatalf("login: %d %s", resp.Status, resp.URL)
	}
	const form = `form:has(button[value="app-new"]) `
	fill := func(code string) *network.Response {
		submit(t, ctx, "account page", chromedp.Navigate(base+"/account"))
		return submit(t, ctx, "create app password",
			chromedp.SendKeys(chromedp.CSS(form+`input[name="label"]`), "thunderbird"),
			chromedp.SendKeys(chromedp.CSS(form+`input[name="reauth_password"]`), e.pw["alice"]),
			chromedp.SendKeys(chromedp.CSS(form+`input[name="reauth_code"]`), code),
			chromedp.Click(chromedp.CSS(form+`button[value="app-new"]`)))
	}
	e.clk.Add(30 * time.Second)
	if resp := fill("000000"); resp.Status != http.StatusForbidden || !strings.Contains(bodyText(t, ctx), "password or code is wrong") {
		t.Fatalf("wrong code: %d\n%s", resp.Status, bodyText(t, ctx))
	}
	if a, _ := e.acc.Get("alice"); len(a.AppPasswords) != 0 {
		t.Fatal("an app password was made with a wrong code")
	}
	if resp := fill(e.code("alice")); resp.Status != http.StatusOK {
		t.Fatalf("right password and code: %d\n%s", resp.Status, bodyText(t, ctx))
	}
	pw := step(t, ctx, "new app password", chromedp.Text(chromedp.CSS("#app-password code.big")))
	if _, err := e.acc.CheckAppPassword("alice", pw, "127.0.0.1:1"); err != nil {
		t.Fatalf("the app password shown does not work: %v", err)
	}
}
