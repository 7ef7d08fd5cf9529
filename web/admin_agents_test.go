package web

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"mailgate/access"
	"mailgate/audit"
)

// TestAdminPageAgentLifecycle: role, password reset, app passwords (listed with label and last
// use, revoked) from the admin page, each audited as the admin; agents cannot do any of it.
func TestAdminPageAgentLifecycle(t *testing.T) {
	e := newEnv(t)
	c := e.loggedIn("root", access.RoleAdmin)
	e.addAgent("dora", access.RoleAgent, "support")
	if _, err := e.acc.NewAppPassword(access.Ctl, "dora", "k9 mail"); err != nil {
		t.Fatal(err)
	}
	ag, _ := e.acc.Get("dora")
	id := ag.AppPasswords[0].ID
	page := c.get("/admin/agents").Body.String()
	mustContain(t, "admin page", page, "k9 mail", id, "never", `value="revoke-app-password"`, `value="reset-password"`, `value="role"`)

	// An agent posting the same forms is refused and changes nothing.
	agent := e.loggedIn("ann", access.RoleAgent, "support")
	for _, f := range []url.Values{
		{"action": {"role"}, "name": {"ann"}, "role": {"admin"}},
		{"action": {"reset-password"}, "name": {"dora"}},
		{"action": {"revoke-app-password"}, "name": {"dora"}, "id": {id}},
	} {
		f.Set("csrf", agent.csrf("/account"))
		if w := agent.post("/admin/agents", f); w.Code != http.StatusForbidden {
			t.Errorf("agent %s: %d", f.Get("action"), w.Code)
		}
	}
	if a, _ := e.acc.Get("ann"); a.Role != access.RoleAgent {
		t.Fatal("an agent made itself admin")
	}

	if w := c.post("/admin/agents", url.Values{"action": {"revoke-app-password"}, "name": {"dora"}, "id": {id}}); w.Code != http.StatusOK {
		t.Fatalf("revoke: %d", w.Code)
	}
	if a, _ := e.acc.Get("dora"); len(a.AppPasswords) != 0 {
		t.Errorf("still %d app passwords", len(a.AppPasswords))
	}
	if w := c.post("/admin/agents", url.Values{"action": {"revoke-app-password"}, "name": {"dora"}, "id": {id}}); w.Code != http.StatusNotFound {
		t.Errorf("revoking it again: %d", w.Code)
	}
	// Made an auditor, dora would lose app passwords anyway (auditors have none: issue 11.7).
	if _, err := e.acc.NewAppPassword(access.Ctl, "dora", "thunderbird"); err != nil {
		t.Fatal(err)
	}
	if w := c.post("/admin/agents", url.Values{"action": {"role"}, "name": {"dora"}, "role": {"auditor"}}); w.Code != http.StatusOK {
		t.Fatalf("role: %d", w.Code)
	}
	if a, _ := e.acc.Get("dora"); a.Role != access.RoleAuditor || len(a.AppPasswords) != 0 {
		t.Errorf("role now %s, %d app passwords", a.Role, len(a.AppPasswords))
	}
	if w := c.post("/admin/agents", url.Values{"action": {"role"}, "name": {"root"}, "role": {"agent"}}); w.Code != http.StatusBadRequest {
		t.Errorf("demoting the last admin: %d", w.Code)
	}
	w := c.post("/admin/agents", e.reauth("root", url.Values{"action": {"reset-password"}, "name": {"dora"}}))
	m := regexp.MustCompile(`New password: <code class="big">([a-z0-9-]+)</code>`).FindStringSubmatch(w.Body.String())
	if w.Code != http.StatusOK || m == nil || strings.Contains(w.Body.String(), "otpauth://") {
		t.Fatalf("reset password: %d\n%s", w.Code, w.Body.String())
	}
	if _, err := e.acc.CheckPassword("dora", m[1], "127.0.0.1"); err != nil {
		t.Errorf("the shown password does not work: %v", err)
	}
	for _, a := range []string{"agent.role", "agent.password", "apppassword.revoke"} {
		if !e.hasEvent(audit.Filter{Actor: "root", Action: a, Result: audit.OK}) {
			t.Errorf("%s not audited", a)
		}
	}
}
