package access

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"mailgate/audit"
)

func TestAddValidation(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.KnownQueue = func(q string) bool { return q == "support" || q == "billing" }
	})
	e.add(t, "taken", RoleAgent)
	tests := []struct {
		name, agent, email string
		role               Role
		queues             []string
		by                 Actor
		want               error
	}{
		{"ok", "alice", "alice@example.com", RoleAgent, []string{"support", "billing", "support"}, Ctl, nil},
		{"ok dots and dashes", "a.b_c-9", "ab@example.com", RoleAuditor, nil, Ctl, nil},
		{"by an admin agent", "carol", "carol@example.com", RoleAdmin, nil, Actor{Name: "taken", Role: RoleAdmin}, nil},
		{"by an agent", "dave", "dave@example.com", RoleAgent, nil, Actor{Name: "taken", Role: RoleAgent}, ErrForbidden},
		{"by an auditor", "dave", "dave@example.com", RoleAgent, nil, Actor{Name: "x", Role: RoleAuditor}, ErrForbidden},
		{"duplicate", "taken", "t@example.com", RoleAgent, nil, Ctl, ErrExists},
		{"upper case", "Alice", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"empty name", "", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"65 characters", strings.Repeat("a", 65), "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"leading dot", ".x", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"dot dot", "..", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"slash", "a/b", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"space", "a b", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"reserved ctl", "ctl", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"reserved mailgate", "mailgate", "a@example.com", RoleAgent, nil, Ctl, ErrInvalid},
		{"email with name", "eve", "Eve <eve@example.com>", RoleAgent, nil, Ctl, ErrInvalid},
		{"email with CRLF", "eve", "eve@example.com\r\nBcc: x@y", RoleAgent, nil, Ctl, ErrInvalid},
		{"no email", "eve", "", RoleAgent, nil, Ctl, ErrInvalid},
		{"bad role", "eve", "eve@example.com", "root", nil, Ctl, ErrInvalid},
		{"unknown queue", "eve", "eve@example.com", RoleAgent, []string{"sales"}, Ctl, ErrInvalid},
		{"empty queue", "eve", "eve@example.com", RoleAgent, []string{""}, Ctl, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.events(t, audit.Filter{Action: "agent.add"}))
			pw, uri, err := e.s.Add(tc.by, tc.agent, tc.email, tc.role, tc.queues)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			evs := e.events(t, audit.Filter{Action: "agent.add"})
			if len(evs) != before+1 {
				t.Fatalf("%d audit events, want one more than %d", len(evs), before)
			}
			ev := evs[len(evs)-1]
			wantResult := audit.OK
			switch {
			case errors.Is(tc.want, ErrForbidden):
				wantResult = audit.Denied
			case tc.want != nil:
				wantResult = audit.Failed
			}
			if ev.Result != wantResult || ev.Actor != tc.by.Name {
				t.Fatalf("audit %+v, want result %s by %s", ev, wantResult, tc.by.Name)
			}
			if err != nil {
				return
			}
			if len(strings.ReplaceAll(pw, "-", "")) < 20 || !strings.HasPrefix(uri, "otpauth://totp/mailgate:"+tc.agent+"?") {
				t.Fatalf("password %d characters, URI %q", len(pw), uri)
			}
			a, err := e.s.Get(tc.agent)
			if err != nil || a.Email != tc.email || a.Role != tc.role || a.MFAEnrolled || a.Disabled {
				t.Fatalf("stored agent %+v, %v", a, err)
			}
			if want := []string{"billing", "support"}; tc.queues != nil && !slices.Equal(a.Queues, want) {
				t.Fatalf("queues %v, want %v (sorted, no duplicates)", a.Queues, want)
			}
		})
	}
}

func TestAdminPermissions(t *testing.T) {
	agent := Actor{Name: "alice", Role: RoleAgent, Remote: "192.0.2.1:1"}
	auditor := Actor{Name: "aud", Role: RoleAuditor, Remote: "192.0.2.2:1"}
	admin := Actor{Name: "root", Role: RoleAdmin, Remote: "192.0.2.3:1"}
	ops := []struct {
		action string
		run    func(s *Service, by Actor) error
		self   bool // agents may do it to themselves
	}{
		{"agent.disable", func(s *Service, by Actor) error { return s.Disable(by, "bob") }, false},
		{"agent.enable", func(s *Service, by Actor) error { return s.Enable(by, "bob") }, false},
		{"mfa.reset", func(s *Service, by Actor) error { _, err := s.ResetMFA(by, "bob"); return err }, false},
		{"agent.queues", func(s *Service, by Actor) error { return s.SetQueues(by, "bob", []string{"x"}) }, false},
		{"agent.role", func(s *Service, by Actor) error { return s.SetRole(by, "bob", RoleAuditor) }, false},
		{"agent.password", func(s *Service, by Actor) error { return s.SetPassword(by, "bob", "a new long password") }, false},
		{"mfa.recovery", func(s *Service, by Actor) error { _, err := s.RecoveryCodes(by, "bob"); return err }, true},
		{"apppassword.new", func(s *Service, by Actor) error { _, err := s.NewAppPassword(by, "bob", "x"); return err }, true},
		{"session.end_all", func(s *Service, by Actor) error { return s.EndSessions(by, "bob") }, true},
	}
	for _, op := range ops {
		for _, by := range []Actor{agent, auditor, admin, Ctl, {Name: "bob", Role: RoleAgent}} {
			t.Run(op.action+" by "+by.Name, func(t *testing.T) {
				e := newEnv(t, nil)
				e.add(t, "root", RoleAdmin)
				e.add(t, "bob", RoleAgent)
				err := op.run(e.s, by)
				allowed := by.Role == RoleAdmin || op.self && by.Name == "bob"
				if allowed && err != nil || !allowed && !errors.Is(err, ErrForbidden) {
					t.Fatalf("err = %v, allowed %v", err, allowed)
				}
				evs := e.events(t, audit.Filter{Action: op.action})
				want := audit.OK
				if !allowed {
					want = audit.Denied
				}
				if len(evs) != 1 || evs[0].Result != want || evs[0].Actor != by.Name || evs[0].Object != "agent/bob" || evs[0].Remote != by.Remote {
					t.Fatalf("audit %+v, want one %s event", evs, want)
				}
			})
		}
	}
}

func TestLastAdmin(t *testing.T) {
	e := newEnv(t, nil)
	e.add(t, "root", RoleAdmin)
	e.add(t, "alice", RoleAgent)
	if err := e.s.Disable(Ctl, "root"); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("disable the only admin: %v", err)
	}
	if err := e.s.SetRole(Ctl, "root", RoleAgent); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("demote the only admin: %v", err)
	}
	if err := e.s.SetRole(Ctl, "alice", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Disable(Ctl, "root"); err != nil {
		t.Fatalf("disable one of two admins: %v", err)
	}
	if err := e.s.SetRole(Ctl, "alice", RoleAgent); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("demote the last enabled admin: %v", err)
	}
}

func TestPasswordChanges(t *testing.T) {
	e := newEnv(t, nil)
	e.add(t, "root", RoleAdmin)
	u := e.add(t, "alice", RoleAgent)
	alice := Actor{Name: "alice", Role: RoleAgent, Remote: "127.0.0.1:7"}
	id, _ := e.session(t, u, "127.0.0.1:7")

	tests := []struct {
		name     string
		old, new string
		want     error
	}{
		{"wrong old", "not it", "a brand new password", ErrBadLogin},
		{"too short", u.password, "short", ErrInvalid},
		{"the user name", u.password, "ALICEaliceALICE"[:5], ErrInvalid},
		{"ok", u.password, "a brand new password", nil},
	}
	for _, tc := range tests {
		if err := e.s.ChangePassword(alice, tc.old, tc.new); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Fatalf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:7"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("old password after change: %v", err)
	}
	u.password = "a brand new password"
	e.login(t, u, "127.0.0.1:7")
	if _, err := e.s.Session(id); err != nil {
		t.Fatalf("ChangePassword ended the agent's session: %v", err)
	}
	if got := results(e.events(t, audit.Filter{Action: "password.change"})); got != "password.change:failed password.change:failed password.change:failed password.change:ok" {
		t.Fatalf("audit: %s", got)
	}

	// Own password through SetPassword is refused, even for an admin.
	if err := e.s.SetPassword(Actor{Name: "root", Role: RoleAdmin}, "root", "another long password"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("admin SetPassword on itself: %v", err)
	}
	// An admin reset ends the agent's sessions.
	if err := e.s.SetPassword(Ctl, "alice", "set by the admin!"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Session(id); !errors.Is(err, ErrNoSession) {
		t.Fatalf("session after an admin password reset: %v", err)
	}
	u.password = "set by the admin!"
	e.login(t, u, "127.0.0.1:7")
}

func TestResetMFA(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	id, _ := e.session(t, u, "127.0.0.1:1")
	if a, _ := e.s.Get("alice"); !a.MFAEnrolled {
		t.Fatal("MFAEnrolled false after a TOTP login")
	}
	uri, err := e.s.ResetMFA(Ctl, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := e.s.Get("alice"); a.MFAEnrolled || a.RecoveryCodesLeft != 0 {
		t.Fatalf("after reset: %+v", a)
	}
	if _, err := e.s.Session(id); !errors.Is(err, ErrNoSession) {
		t.Fatalf("session after MFA reset: %v", err)
	}
	old := *u
	e.clk.Add(30 * time.Second)
	p, _ := e.s.CheckPassword("alice", u.password, "127.0.0.1:1")
	if _, err := e.s.CheckCode(p, rfc6238(old.secret, e.clk.Now()), "127.0.0.1:1"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("old TOTP secret after reset: %v", err)
	}
	if _, err := e.s.CheckCode(p, u.codes[0], "127.0.0.1:1"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("old recovery code after reset: %v", err)
	}
	u.secret = secretOf(t, uri)
	e.login(t, u, "127.0.0.1:1")
	if evs := e.events(t, audit.Filter{Action: "mfa.reset"}); len(evs) != 1 || evs[0].Result != audit.OK || evs[0].Actor != "ctl" {
		t.Fatalf("audit: %+v", evs)
	}
}

func TestEnsureAdmin(t *testing.T) {
	e := newEnv(t, nil)
	pw, uri, created, err := e.s.EnsureAdmin("admin", "admin@localhost")
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	u := &user{name: "admin", password: pw, uri: uri, secret: secretOf(t, uri)}
	a := e.login(t, u, "127.0.0.1:1")
	if a.Role != RoleAdmin {
		t.Fatalf("role %s", a.Role)
	}
	pw2, uri2, created, err := e.s.EnsureAdmin("admin2", "admin2@localhost")
	if err != nil || created || pw2 != "" || uri2 != "" {
		t.Fatalf("second start: created %v, %v", created, err)
	}
	if list, _ := e.s.List(); len(list) != 1 {
		t.Fatalf("%d agents, want 1", len(list))
	}
	if evs := e.events(t, audit.Filter{Action: "agent.add"}); len(evs) != 1 || evs[0].Actor != "mailgate" {
		t.Fatalf("audit: %+v", evs)
	}
}

func TestList(t *testing.T) {
	e := newEnv(t, nil)
	for _, n := range []string{"zoe", "adam", "mia"} {
		e.add(t, n, RoleAgent, "support")
	}
	list, err := e.s.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range list {
		names = append(names, a.Name)
	}
	if strings.Join(names, ",") != "adam,mia,zoe" {
		t.Fatalf("list %v", names)
	}
	if _, err := e.s.Get("nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get unknown: %v", err)
	}
	if err := e.s.Disable(Ctl, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Disable unknown: %v", err)
	}
}

// No password, code, session id or secret ends up in the audit log (whose details are sealed
// too, but exported as plain JSON lines).
func TestAuditHasNoSecrets(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AccountLimit = Limit{Free: 1} })
	u := e.add(t, "alice", RoleAgent)
	id, csrf := e.session(t, u, "127.0.0.1:1")
	app, _ := e.s.NewAppPassword(Ctl, "alice", "phone")
	e.s.CheckAppPassword("alice", app, "127.0.0.1:1")
	codes, _ := e.s.RecoveryCodes(Ctl, "alice")
	p, _ := e.s.CheckPassword("alice", u.password, "127.0.0.1:2")
	e.s.CheckCode(p, codes[0], "127.0.0.1:2")
	e.s.ChangePassword(Actor{Name: "alice", Role: RoleAgent}, "guessed wrong old", "the new long password")
	e.s.SetPassword(Ctl, "alice", "admin-chosen secret")
	e.s.CheckPassword("alice", "typo in the secret", "127.0.0.1:3")
	e.s.CheckPassword("alice", "typo in the secret", "127.0.0.1:3")
	uri, _ := e.s.ResetMFA(Ctl, "alice")
	e.s.EndSession(id, "127.0.0.1:1")
	var buf bytes.Buffer
	if err := e.log.Export(&buf, audit.Filter{}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, need := range []string{`"login"`, `"login.code"`, `"login.app"`, `"login.lockout"`, `"logout"`, `"mfa.reset"`, `"agent.password"`, `"password.change"`} {
		if !strings.Contains(out, need) {
			t.Errorf("audit lacks %s", need)
		}
	}
	secret := secretOf(t, uri)
	for what, s := range map[string]string{
		"password": u.password, "session id": id, "CSRF": csrf, "app password": app, "recovery code": codes[0],
		"new password": "the new long password", "admin password": "admin-chosen secret", "typed password": "typo in the secret",
		"old guess": "guessed wrong old", "TOTP secret": base32NoPad(string(secret)), "TOTP URI": uri,
	} {
		if strings.Contains(out, s) {
			t.Errorf("audit export contains the %s", what)
		}
	}
}

func TestSetQueuesAndRoleValidation(t *testing.T) {
	e := newEnv(t, nil)
	e.add(t, "alice", RoleAgent)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"queue with space", e.s.SetQueues(Ctl, "alice", []string{"a b"})},
		{"queue with comma", e.s.SetQueues(Ctl, "alice", []string{"a,b"})},
		{"bad role", e.s.SetRole(Ctl, "alice", "superuser")},
		{"long label", func() error { _, err := e.s.NewAppPassword(Ctl, "alice", strings.Repeat("x", 65)); return err }()},
		{"label with newline", func() error { _, err := e.s.NewAppPassword(Ctl, "alice", "a\nb"); return err }()},
	} {
		if !errors.Is(tc.err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", tc.name, tc.err)
		}
	}
	for i := range maxAppPasswords {
		if _, err := e.s.NewAppPassword(Ctl, "alice", fmt.Sprint("device ", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.s.NewAppPassword(Ctl, "alice", "one too many"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("app password %d: %v", maxAppPasswords+1, err)
	}
}

// BenchmarkCheckPassword measures the password step with the production argon2id parameters
// (RFC 9106 second option), including its audit commit.
func BenchmarkCheckPassword(b *testing.B) {
	for _, bc := range []struct {
		name string
		p    Argon2Params
	}{
		{"default", DefaultArgon2},
		{"owasp_m19MiB_t2_p1", Argon2Params{Time: 2, MemoryKiB: 19 * 1024, Threads: 1}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, func(o *Options) {
				o.Argon2 = bc.p
				o.AccountLimit.Free = 1 << 30
				o.AccountCeiling.Free = 1 << 30
				o.IPLimit.Free = 1 << 30
			})
			u := e.add(b, "alice", RoleAgent)
			b.Run("known", func(b *testing.B) {
				for b.Loop() {
					if _, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1"); err != nil {
						b.Fatal(err)
					}
				}
			})
			// An unknown name must cost the same (the dummy hash), or timing tells names apart.
			b.Run("unknown", func(b *testing.B) {
				for b.Loop() {
					if _, err := e.s.CheckPassword("nobody", u.password, "127.0.0.1:1"); !errors.Is(err, ErrBadLogin) {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// FuzzLoginInputs throws arbitrary client input at every entry point that takes it: none may
// panic, and none may let anything in.
func FuzzLoginInputs(f *testing.F) {
	e := newEnv(f, func(o *Options) {
		o.AccountLimit.Free = 1 << 30
		o.AccountCeiling.Free = 1 << 30
		o.IPLimit.Free = 1 << 30
	})
	u := e.add(f, "alice", RoleAgent)
	app, _ := e.s.NewAppPassword(Ctl, "alice", "x")
	f.Add("alice", "123456", strings.Repeat("A", 43), "127.0.0.1:1")
	f.Add("alice", u.codes[0]+"x", app[:10], "[::1]:1")
	f.Add("\x00", "\xff\xfe", "", "")
	f.Add(strings.Repeat("a", 200), "1 2 3 4 5 6", "%%%", "ctl")
	f.Fuzz(func(t *testing.T, name, code, id, remote string) {
		p, err := e.s.CheckPassword(name, code, remote)
		if err == nil || p != nil {
			t.Fatalf("password %q for %q accepted", code, name)
		}
		if _, err := e.s.CheckAppPassword(name, code, remote); err == nil {
			t.Fatalf("app password %q for %q accepted", code, name)
		}
		if _, err := e.s.CheckCode(&Pending{Token: id}, code, remote); err == nil {
			t.Fatalf("code %q with token %q accepted", code, id)
		}
		if _, err := e.s.Session(id); err == nil {
			t.Fatalf("session %q accepted", id)
		}
		e.s.EndSession(id, remote)
		e.s.ResumeLogin(id)
	})
}
