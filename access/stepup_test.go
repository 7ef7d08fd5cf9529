package access

import (
	"errors"
	"strings"
	"testing"
	"time"

	"mailgate/audit"
	"mailgate/store"
)

func TestStepUp(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.AccountLimit = Limit{Free: 3, Base: time.Minute, Max: time.Hour, Leak: time.Hour}
	})
	u := e.add(t, "alice", RoleAgent)
	a := e.login(t, u, "127.0.0.1:1")
	by := a.Actor("127.0.0.1:2")

	e.clk.Add(30 * time.Second)
	code := rfc6238(u.secret, e.clk.Now())
	for _, tc := range []struct{ pw, code, why string }{
		{"", "", "nothing"},
		{u.password, "", "no code"},
		{"", code, "no password"},
		{"wrong password", code, "wrong password"},
	} {
		if err := e.s.StepUp(by, "apppassword.new", tc.pw, tc.code); !errors.Is(err, ErrStepUp) {
			t.Fatalf("%s: %v, want ErrStepUp", tc.why, err)
		}
	}
	// Four failures at this address: the fourth locked it, and even the right pair waits.
	if err := e.s.StepUp(by, "apppassword.new", u.password, code); !isThrottled(err) {
		t.Fatalf("after 4 failures: %v, want ErrThrottled", err)
	}
	fails := e.events(t, audit.Filter{Action: "stepup", Result: audit.Failed})
	if len(fails) != 4 || !strings.Contains(fails[0].Detail, "for apppassword.new") || fails[0].Actor != "alice" {
		t.Fatalf("failed step-ups audited: %+v", fails)
	}
	if !e.hasLockout(t, "account from address 127.0.0.1") {
		t.Fatal("no lockout for failed step-ups")
	}

	// From another address, the right password and code pass, once per code.
	by.Remote = "127.0.0.5:1"
	if err := e.s.StepUp(by, "mfa.recovery", u.password, code); err != nil {
		t.Fatalf("right password and code: %v", err)
	}
	if err := e.s.StepUp(by, "mfa.recovery", u.password, code); !errors.Is(err, ErrStepUp) {
		t.Fatalf("the same TOTP code again: %v, want ErrStepUp", err)
	}
	// A recovery code works too, once.
	if err := e.s.StepUp(by, "mfa.recovery", u.password, u.codes[0]); err != nil {
		t.Fatalf("recovery code: %v", err)
	}
	if err := e.s.StepUp(by, "mfa.recovery", u.password, u.codes[0]); !errors.Is(err, ErrStepUp) {
		t.Fatalf("recovery code again: %v", err)
	}
	ok := e.events(t, audit.Filter{Action: "stepup", Result: audit.OK})
	if len(ok) != 2 || !strings.Contains(ok[0].Detail, "for mfa.recovery; TOTP") {
		t.Fatalf("step-ups audited: %+v", ok)
	}
	// A disabled agent's session cannot step up.
	if err := e.s.Disable(Ctl, "alice"); err != nil {
		t.Fatal(err)
	}
	e.clk.Add(30 * time.Second)
	if err := e.s.StepUp(by, "mfa.recovery", u.password, rfc6238(u.secret, e.clk.Now())); !errors.Is(err, ErrForbidden) {
		t.Fatalf("disabled: %v, want ErrForbidden", err)
	}
}

func (e *env) hasLockout(t *testing.T, detail string) bool {
	t.Helper()
	for _, ev := range e.events(t, audit.Filter{Action: "login.lockout"}) {
		if strings.Contains(ev.Detail, detail) {
			return true
		}
	}
	return false
}

// Issue 11.7: auditors read the audit log and no ticket mail, so they get no app passwords,
// whoever asks (themselves, an admin, the control socket), and one made earlier stops working.
func TestAuditorHasNoAppPasswords(t *testing.T) {
	e := newEnv(t, nil)
	e.add(t, "eve", RoleAuditor)
	for _, by := range []Actor{Ctl, {Name: "eve", Role: RoleAuditor, Remote: "127.0.0.1:1"}} {
		_, err := e.s.NewAppPassword(by, "eve", "phone")
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "auditors have no app passwords") {
			t.Fatalf("%s making an auditor's app password: %v", by.Name, err)
		}
	}
	if evs := e.events(t, audit.Filter{Action: "apppassword.new", Result: audit.Denied}); len(evs) != 2 {
		t.Fatalf("refusals audited: %+v", evs)
	}
	// An agent with an app password who becomes an auditor loses it.
	e.add(t, "sam", RoleAgent)
	app, err := e.s.NewAppPassword(Ctl, "sam", "laptop")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.SetRole(Ctl, "sam", RoleAuditor); err != nil {
		t.Fatal(err)
	}
	if a, _ := e.s.Get("sam"); len(a.AppPasswords) != 0 {
		t.Fatalf("auditor sam keeps %d app passwords", len(a.AppPasswords))
	}
	if _, err := e.s.CheckAppPassword("sam", app, "127.0.0.1:1"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("former agent's app password after becoming auditor: %v", err)
	}
	// An auditor record that still holds one (written before this rule) is refused too.
	e.add(t, "old", RoleAgent)
	app, err = e.s.NewAppPassword(Ctl, "old", "laptop")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.db.Update(func(tx *store.Tx) error {
		r, err := getRecord(tx, "old")
		if err != nil {
			return err
		}
		r.Role = RoleAuditor
		return putRecord(tx, r)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.CheckAppPassword("old", app, "127.0.0.1:1"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("stored auditor app password: %v", err)
	}
	denied := e.events(t, audit.Filter{Action: "login.app", Result: audit.Denied})
	if len(denied) != 1 || denied[0].Detail != "auditors have no app passwords" {
		t.Fatalf("refused auditor app login audit: %+v", denied)
	}
}
