package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"mailgate/audit"
)

type appPasswordJSON struct {
	ID       string `json:"id"`
	Label    string `json:"label"`
	Created  string `json:"created"`
	LastUsed string `json:"last_used"`
}

type agentJSON struct {
	Name     string   `json:"name"`
	Role     string   `json:"role"`
	Queues   []string `json:"queues"`
	Disabled bool     `json:"disabled"`
}

// imapLogin logs in with Python's imaplib, a real IMAP client, and reports whether the server
// took the password.
func imapLogin(t *testing.T, addr, user, password string) bool {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	script := `import imaplib, sys
c = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]))
try:
    c.login(sys.argv[3], sys.argv[4])
except imaplib.IMAP4.error:
    print("refused"); sys.exit(0)
c.logout(); print("ok")`
	out, err := exec.Command("/usr/bin/python3", "-c", script, host, port, user, password).CombinedOutput()
	if err != nil {
		t.Fatalf("imaplib: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out)) == "ok"
}

func agentOf(t *testing.T, dir, name string, extra ...string) agentJSON {
	t.Helper()
	var list []agentJSON
	jsonOut(t, dir, &list, append([]string{"agent", "list"}, extra...)...)
	for _, a := range list {
		if a.Name == name {
			return a
		}
	}
	t.Fatalf("no agent %s in %+v", name, list)
	return agentJSON{}
}

func auditActions(t *testing.T, dir string, extra ...string) map[string][]audit.Event {
	t.Helper()
	r := mailgate(t, dir, append([]string{"audit", "export"}, extra...)...)
	if r.code != 0 {
		t.Fatalf("audit export:\n%s", r)
	}
	out := map[string][]audit.Event{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev audit.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		out[ev.Action] = append(out[ev.Action], ev)
	}
	return out
}

// TestAgentLifecycleCommands drives the agent administration commands through the running
// daemon's control socket and then directly on the stopped data dir, with a real IMAP client
// proving that app passwords, their last use and their revocation are what the commands say.
func TestAgentLifecycleCommands(t *testing.T) {
	dir := t.TempDir()
	d := startServe(t, dir)
	d.waitReady(t)
	imapAddr := d.line(t, `^listening: imap (127\.0\.0\.1:\d+)`)[1]

	var cred map[string]any
	jsonOut(t, dir, &cred, "agent", "add", "-name", "bob", "-email", "bob@example.org", "-role", "agent", "-queue", "support")
	var ap map[string]any
	jsonOut(t, dir, &ap, "agent", "app-password", "bob", "-label", "laptop mutt")
	appPW, _ := ap["password"].(string)
	jsonOut(t, dir, &ap, "agent", "app-password", "bob", "-label", "phone")

	var aps []appPasswordJSON
	jsonOut(t, dir, &aps, "agent", "app-passwords", "bob")
	if len(aps) != 2 || aps[0].Label != "laptop mutt" || aps[1].Label != "phone" || aps[0].ID == "" || aps[0].LastUsed != "" {
		t.Fatalf("app-passwords: %+v", aps)
	}
	if !imapLogin(t, imapAddr, "bob", appPW) {
		t.Fatal("the new app password does not log in over IMAP")
	}
	r := mailgate(t, dir, "agent", "app-passwords", "bob")
	if r.code != 0 || !regexp.MustCompile(`(?m)^`+aps[0].ID+`\s+laptop mutt\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+\d{4}-\d\d-\d\d \d\d:\d\d\s*$`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^`+aps[1].ID+`\s+phone\s+.*never\s*$`).MatchString(r.stdout) {
		t.Fatalf("app-passwords table lacks the last use of %s:\n%s", aps[0].ID, r)
	}
	jsonOut(t, dir, &aps, "agent", "app-passwords", "bob")
	if aps[0].LastUsed == "" {
		t.Fatalf("last use not recorded: %+v", aps)
	}

	if r := mailgate(t, dir, "agent", "revoke-app-password", "bob", aps[0].ID); r.code != 0 || !strings.Contains(r.stdout, "revoked") {
		t.Fatalf("revoke:\n%s", r)
	}
	if imapLogin(t, imapAddr, "bob", appPW) {
		t.Fatal("a revoked app password still logs in")
	}
	if r := mailgate(t, dir, "agent", "revoke-app-password", "bob", aps[0].ID); r.code != 1 || !strings.Contains(r.stderr, `no app password with id "`+aps[0].ID+`"`) || strings.Contains(r.stderr, "no such agent") {
		t.Fatalf("revoking it twice:\n%s", r)
	}
	if r := mailgate(t, dir, "agent", "revoke-app-password", "bob"); r.code != 2 {
		t.Fatalf("revoke without an ID: want usage error:\n%s", r)
	}

	// Role and queues.
	var ag agentJSON
	// (admin, not auditor: an auditor would lose bob's app passwords, issue 11.7)
	jsonOut(t, dir, &ag, "agent", "set", "bob", "-role", "admin")
	if ag.Role != "admin" || strings.Join(ag.Queues, ",") != "support" {
		t.Fatalf("after -role admin: %+v", ag)
	}
	jsonOut(t, dir, &ag, "agent", "set", "bob", "-no-queues", "-role", "agent")
	if ag.Role != "agent" || len(ag.Queues) != 0 {
		t.Fatalf("after -no-queues: %+v", ag)
	}
	if r := mailgate(t, dir, "agent", "set", "bob", "-queue", "nope"); r.code == 0 || !strings.Contains(r.stderr, "nope") {
		t.Fatalf("unknown queue:\n%s", r)
	}
	if r := mailgate(t, dir, "agent", "set", "bob"); r.code != 1 || !strings.Contains(r.stderr, "-role") {
		t.Fatalf("set without a change:\n%s", r)
	}
	if r := mailgate(t, dir, "agent", "set", "admin", "-role", "agent"); r.code == 0 || !strings.Contains(r.stderr, "no enabled admin") {
		t.Fatalf("demoting the last admin:\n%s", r)
	}

	// Disable, enable.
	if r := mailgate(t, dir, "agent", "disable", "bob"); r.code != 0 {
		t.Fatalf("disable:\n%s", r)
	}
	if !agentOf(t, dir, "bob").Disabled {
		t.Fatal("not disabled")
	}
	if r := mailgate(t, dir, "agent", "enable", "bob"); r.code != 0 || !strings.Contains(r.stdout, "enabled") {
		t.Fatalf("enable:\n%s", r)
	}
	if agentOf(t, dir, "bob").Disabled {
		t.Fatal("still disabled after enable")
	}

	// reset-password: the old password no longer gets past the web login's first step.
	webURL := d.line(t, `^listening: web (http://127\.0\.0\.1:\d+)/$`)[1]
	oldPW, _ := cred["password"].(string)
	if !webPasswordOK(t, webURL, "bob", oldPW) {
		t.Fatal("the initial password does not work before the reset")
	}
	var reset map[string]any
	jsonOut(t, dir, &reset, "agent", "reset-password", "bob")
	newPW, _ := reset["password"].(string)
	if newPW == "" || newPW == oldPW {
		t.Fatalf("reset-password: %v", reset)
	}
	if webPasswordOK(t, webURL, "bob", oldPW) || !webPasswordOK(t, webURL, "bob", newPW) {
		t.Fatal("after reset-password the old password works or the new one does not")
	}
	if strings.Contains(d.logs(), newPW) {
		t.Fatal("the new password reached the log")
	}

	evs := auditActions(t, dir)
	for _, a := range []string{"ctl.agent.enable", "ctl.agent.set", "ctl.agent.reset-password", "ctl.agent.app-passwords",
		"ctl.agent.revoke-app-password", "agent.enable", "agent.role", "agent.queues", "agent.password", "apppassword.revoke"} {
		if len(evs[a]) == 0 {
			t.Errorf("no %s event", a)
		}
	}
	for _, ev := range evs["ctl.agent.reset-password"] {
		if strings.Contains(ev.Detail, newPW) {
			t.Error("the new password is in the audit log")
		}
	}
	d.stop(t)

	// The same commands directly on the stopped data dir.
	jsonOut(t, dir, &aps, "agent", "app-passwords", "bob")
	if len(aps) != 1 || aps[0].Label != "phone" {
		t.Fatalf("direct app-passwords: %+v", aps)
	}
	if r := mailgate(t, dir, "agent", "revoke-app-password", "bob", aps[0].ID); r.code != 0 {
		t.Fatalf("direct revoke:\n%s", r)
	}
	jsonOut(t, dir, &ag, "agent", "set", "bob", "-queue", "support", "-role", "admin")
	if ag.Role != "admin" || strings.Join(ag.Queues, ",") != "support" {
		t.Fatalf("direct set: %+v", ag)
	}
	if r := mailgate(t, dir, "agent", "disable", "bob"); r.code != 0 {
		t.Fatalf("direct disable:\n%s", r)
	}
	if r := mailgate(t, dir, "agent", "enable", "bob"); r.code != 0 {
		t.Fatalf("direct enable:\n%s", r)
	}
	jsonOut(t, dir, &reset, "agent", "reset-password", "bob")
	jsonOut(t, dir, &aps, "agent", "app-passwords", "bob")
	if len(aps) != 0 {
		t.Fatalf("after the direct revoke: %+v", aps)
	}
	direct := 0
	for _, a := range []string{"ctl.agent.enable", "ctl.agent.set", "ctl.agent.reset-password", "ctl.agent.app-passwords", "ctl.agent.revoke-app-password"} {
		for _, ev := range auditActions(t, dir)[a] {
			if strings.Contains(ev.Detail, "direct") {
				direct++
				break
			}
		}
	}
	if direct != 5 {
		t.Fatalf("direct commands audited: %d of 5", direct)
	}
}

// webClient is a browser stand-in for the agents' web page: it keeps the __Host- cookies
// (which net/http/cookiejar would not send over plain loopback HTTP) and sends Origin on POST.
type webClient struct {
	t    *testing.T
	base string
	jar  map[string]string
	c    *http.Client
}

func newWebClient(t *testing.T, base string) *webClient {
	return &webClient{t: t, base: base, jar: map[string]string{}, c: &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (w *webClient) do(method, path string, form url.Values) (int, string, http.Header) {
	w.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, w.base+path, body)
	if err != nil {
		w.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", w.base)
	}
	for k, v := range w.jar {
		req.AddCookie(&http.Cookie{Name: k, Value: v})
	}
	resp, err := w.c.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	for _, ck := range resp.Cookies() {
		if ck.MaxAge < 0 {
			delete(w.jar, ck.Name)
		} else {
			w.jar[ck.Name] = ck.Value
		}
	}
	return resp.StatusCode, string(page), resp.Header
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (w *webClient) csrf(path string) string {
	w.t.Helper()
	_, page, _ := w.do(http.MethodGet, path, nil)
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		w.t.Fatalf("no CSRF token on %s:\n%s", path, page)
	}
	return m[1]
}

// password runs the first login step and reports whether it asked for the code.
func (w *webClient) password(name, pw string) bool {
	code, _, h := w.do(http.MethodPost, "/login", url.Values{"csrf": {w.csrf("/login")}, "username": {name}, "password": {pw}})
	return code == http.StatusSeeOther && h.Get("Location") == "/login/code"
}

func webPasswordOK(t *testing.T, base, name, pw string) bool {
	return newWebClient(t, base).password(name, pw)
}

// TestAdminPageOverHTTP logs in as the dev admin (password and TOTP) against the running
// daemon and uses the admin page's forms: role, reset password, app passwords and their
// revocation, each with the page's CSRF token; a POST without it changes nothing.
func TestAdminPageOverHTTP(t *testing.T) {
	dir := t.TempDir()
	d := startServe(t, dir)
	d.waitReady(t)
	webURL := d.line(t, `^listening: web (http://127\.0\.0\.1:\d+)/$`)[1]
	adminPW := d.line(t, `^  admin password: (\S+)$`)[1]
	secret := d.line(t, `^  admin TOTP:     otpauth://totp/\S+secret=([A-Z2-7]+)`)[1]

	var cred map[string]any
	jsonOut(t, dir, &cred, "agent", "add", "-name", "carol", "-email", "carol@example.org", "-role", "agent", "-queue", "support")
	jsonOut(t, dir, &cred, "agent", "app-password", "carol", "-label", "thunderbird")
	var aps []appPasswordJSON
	jsonOut(t, dir, &aps, "agent", "app-passwords", "carol")

	w := newWebClient(t, webURL)
	if !w.password("admin", adminPW) {
		t.Fatal("admin password step")
	}
	code, err := totp.GenerateCode(secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st, page, _ := w.do(http.MethodPost, "/login/code", url.Values{"csrf": {w.csrf("/login/code")}, "code": {code}}); st != http.StatusSeeOther {
		t.Fatalf("code step: %d\n%s", st, page)
	}
	st, page, _ := w.do(http.MethodGet, "/admin/agents", nil)
	if st != http.StatusOK || !strings.Contains(page, "thunderbird") || !strings.Contains(page, aps[0].ID) || !strings.Contains(page, "never") {
		t.Fatalf("admin page does not list carol's app password:\n%s", page)
	}
	tok := csrfRe.FindStringSubmatch(page)[1]
	post := func(f url.Values) (int, string) {
		st, page, _ := w.do(http.MethodPost, "/admin/agents", f)
		return st, page
	}

	// Without the CSRF token: refused, nothing changes.
	if st, _ := post(url.Values{"action": {"role"}, "name": {"carol"}, "role": {"admin"}}); st != http.StatusForbidden && st != http.StatusBadRequest {
		t.Fatalf("role without CSRF: %d", st)
	}
	if agentOf(t, dir, "carol").Role != "agent" {
		t.Fatal("a POST without CSRF changed the role")
	}
	// (admin, not auditor: an auditor would lose carol's app passwords, issue 11.7)
	if st, page := post(url.Values{"csrf": {tok}, "action": {"role"}, "name": {"carol"}, "role": {"admin"}}); st != http.StatusOK {
		t.Fatalf("role: %d\n%s", st, page)
	}
	if agentOf(t, dir, "carol").Role != "admin" {
		t.Fatal("role not changed")
	}
	// Resetting a password asks for the admin's password and a code again (issue 11.7): the
	// next step's code, as the login's may not be used twice.
	next, err := totp.GenerateCode(secret, time.Now().Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := post(url.Values{"csrf": {tok}, "action": {"reset-password"}, "name": {"carol"}}); st != http.StatusForbidden {
		t.Fatalf("reset password without re-entering the password: %d", st)
	}
	st, page = post(url.Values{"csrf": {tok}, "action": {"reset-password"}, "name": {"carol"}, "reauth_password": {adminPW}, "reauth_code": {next}})
	m := regexp.MustCompile(`New password: <code class="big">([a-z0-9-]+)</code>`).FindStringSubmatch(page)
	if st != http.StatusOK || m == nil {
		t.Fatalf("reset password: %d\n%s", st, page)
	}
	if !webPasswordOK(t, webURL, "carol", m[1]) || webPasswordOK(t, webURL, "carol", cred["password"].(string)) {
		t.Fatal("the password shown by the admin page is not carol's password now")
	}
	if _, again, _ := w.do(http.MethodGet, "/admin/agents", nil); strings.Contains(again, m[1]) {
		t.Fatal("the new password is shown twice")
	}
	if st, page := post(url.Values{"csrf": {tok}, "action": {"revoke-app-password"}, "name": {"carol"}, "id": {aps[0].ID}}); st != http.StatusOK {
		t.Fatalf("revoke: %d\n%s", st, page)
	}
	jsonOut(t, dir, &aps, "agent", "app-passwords", "carol")
	if len(aps) != 0 {
		t.Fatalf("still there after the revoke: %+v", aps)
	}
	if st, _ := post(url.Values{"csrf": {tok}, "action": {"revoke-app-password"}, "name": {"carol"}, "id": {"nope"}}); st != http.StatusNotFound && st != http.StatusBadRequest {
		t.Fatalf("revoking an unknown id: %d", st)
	}
	evs := auditActions(t, dir)
	for _, a := range []string{"agent.role", "agent.password", "apppassword.revoke"} {
		found := false
		for _, ev := range evs[a] {
			found = found || ev.Actor == "admin" && ev.Result == audit.OK && ev.Object == "agent/carol"
		}
		if !found {
			t.Errorf("no %s event by admin on carol: %v", a, evs[a])
		}
	}
}
