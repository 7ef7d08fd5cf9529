package access

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/audit"
	"mailgate/store"
)

func TestActorPermissions(t *testing.T) {
	admin := Actor{Name: "a", Role: RoleAdmin}
	agent := Actor{Name: "b", Role: RoleAgent, Queues: []string{"support", "billing"}}
	auditor := Actor{Name: "c", Role: RoleAuditor, Queues: []string{"support"}}
	bogus := Actor{Name: "d", Role: "root", Queues: []string{"support"}}
	tests := []struct {
		name                     string
		a                        Actor
		q                        string
		inQueue, canWrite, audit bool
	}{
		{"admin any queue", admin, "support", true, true, true},
		{"admin unknown queue", admin, "other", true, true, true},
		{"ctl is admin", Ctl, "support", true, true, true},
		{"agent own queue", agent, "billing", true, true, false},
		{"agent other queue", agent, "sales", false, false, false},
		{"agent empty queue", agent, "", false, false, false},
		{"auditor listed queue", auditor, "support", false, false, true},
		{"unknown role", bogus, "support", false, false, false},
		{"zero actor", Actor{}, "support", false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.a.InQueue(tc.q); got != tc.inQueue {
				t.Errorf("InQueue(%q) = %v", tc.q, got)
			}
			if got := tc.a.CanWrite(tc.q); got != tc.canWrite {
				t.Errorf("CanWrite(%q) = %v", tc.q, got)
			}
			if got := tc.a.CanAudit(); got != tc.audit {
				t.Errorf("CanAudit() = %v", got)
			}
		})
	}
}

func TestPasswordHash(t *testing.T) {
	e := newEnv(t, nil)
	enc := e.s.hashPassword("correct horse battery")
	if !strings.HasPrefix(enc, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("hash %q: want a PHC argon2id string with the configured parameters", enc)
	}
	if enc2 := e.s.hashPassword("correct horse battery"); enc2 == enc {
		t.Fatal("two hashes of one password are equal: the salt is not random")
	}
	tests := []struct {
		name, enc, pw string
		ok, stale     bool
	}{
		{"right", enc, "correct horse battery", true, false},
		{"wrong", enc, "correct horse battery!", false, false},
		{"empty", enc, "", false, false},
		{"case", enc, "Correct horse battery", false, false},
		{"malformed", "$argon2id$v=19$m=64$x$y", "correct horse battery", false, false},
		{"other algorithm", strings.Replace(enc, "argon2id", "argon2i", 1), "correct horse battery", false, false},
		{"huge memory refused", strings.Replace(enc, "m=64,", "m=99999999,", 1), "correct horse battery", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok, stale := e.s.verifyPassword(tc.enc, tc.pw)
			if ok != tc.ok || stale != tc.stale {
				t.Fatalf("verify = %v, stale %v; want %v, %v", ok, stale, tc.ok, tc.stale)
			}
		})
	}
	// Raising the parameters keeps old hashes working and marks them for rehashing.
	e.s.opts.Argon2 = Argon2Params{Time: 2, MemoryKiB: 128, Threads: 1}
	if ok, stale := e.s.verifyPassword(enc, "correct horse battery"); !ok || !stale {
		t.Fatalf("old hash after a parameter change: ok=%v stale=%v, want true, true", ok, stale)
	}
}

func TestLoginRehashesOldParameters(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	e.s.opts.Argon2 = Argon2Params{Time: 2, MemoryKiB: 128, Threads: 1}
	if _, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	r := e.record(t, "alice")
	if !strings.Contains(r.Password, "m=128,t=2,p=1$") {
		t.Fatalf("hash not upgraded: %s", r.Password[:30])
	}
	if _, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1"); err != nil {
		t.Fatalf("login after the upgrade: %v", err)
	}
}

func TestCheckPassword(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent, "support")
	e.add(t, "bob", RoleAgent)
	if err := e.s.Disable(Ctl, "bob"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, user, pw string
		want           error
		result         string
	}{
		{"right", "alice", u.password, nil, audit.OK},
		{"right without dashes is a different password", "alice", strings.ReplaceAll(u.password, "-", ""), ErrBadLogin, audit.Failed},
		{"wrong", "alice", "not the password", ErrBadLogin, audit.Failed},
		{"unknown user", "mallory", u.password, ErrBadLogin, audit.Failed},
		{"invalid name", "Alice\n", u.password, ErrBadLogin, audit.Failed},
		{"disabled, wrong password", "bob", "nope", ErrBadLogin, audit.Failed},
	}
	var msgs []string
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			remote := "192.0.2." + string(rune('1'+i)) + ":4000"
			p, err := e.s.CheckPassword(tc.user, tc.pw, remote)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err != nil {
				msgs = append(msgs, err.Error())
			} else if p.Token == "" || p.Name != tc.user || !p.Expires.After(e.clk.Now()) {
				t.Fatalf("pending %+v", p)
			}
			var evs []audit.Event
			for _, ev := range e.events(t, audit.Filter{Action: "login"}) {
				if ev.Remote == remote {
					evs = append(evs, ev)
				}
			}
			if len(evs) != 1 || evs[0].Result != tc.result {
				t.Fatalf("audit: %v, want one login:%s", results(evs), tc.result)
			}
		})
	}
	for _, m := range msgs[1:] {
		if m != msgs[0] {
			t.Fatalf("error messages differ (%q vs %q): they would tell an unknown user from a wrong password", m, msgs[0])
		}
	}
}

func TestDisabledAgent(t *testing.T) {
	e := newEnv(t, nil)
	e.add(t, "root", RoleAdmin)
	u := e.add(t, "alice", RoleAgent, "support")
	id, _ := e.session(t, u, "127.0.0.1:1")
	p, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1") // a login in flight
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.Disable(Ctl, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Session(id); !errors.Is(err, ErrNoSession) {
		t.Fatalf("session of a disabled agent: %v, want ErrNoSession", err)
	}
	e.clk.Add(30 * time.Second)
	if _, err := e.s.CheckCode(p, rfc6238(u.secret, e.clk.Now()), "127.0.0.1:1"); !errors.Is(err, ErrDisabled) {
		t.Fatalf("code step after disable: %v, want ErrDisabled", err)
	}
	if _, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1"); !errors.Is(err, ErrDisabled) {
		t.Fatalf("password step while disabled: %v, want ErrDisabled", err)
	}
	if evs := e.events(t, audit.Filter{Action: "login", Result: audit.Denied}); len(evs) != 1 || !strings.Contains(evs[0].Detail, "disabled") {
		t.Fatalf("audit of a disabled login: %+v", evs)
	}
	if err := e.s.Enable(Ctl, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Session(id); !errors.Is(err, ErrNoSession) {
		t.Fatalf("old session came back after enable: %v", err)
	}
	e.session(t, u, "127.0.0.1:1") // logging in works again
}

func TestTOTPWindow(t *testing.T) {
	tests := []struct {
		name   string
		offset time.Duration // of the code's time from the server's
		code   func(string) string
		want   error
	}{
		{"now", 0, nil, nil},
		{"one step early", -30 * time.Second, nil, nil},
		{"one step late", 30 * time.Second, nil, nil},
		{"two steps early", -60 * time.Second, nil, ErrBadLogin},
		{"two steps late", 60 * time.Second, nil, ErrBadLogin},
		{"with a space", 0, func(c string) string { return c[:3] + " " + c[3:] }, nil},
		{"wrong digits", 0, func(c string) string { return string('0'+(c[0]-'0'+1)%10) + c[1:] }, ErrBadLogin},
		{"five digits", 0, func(c string) string { return c[:5] }, ErrBadLogin},
		{"empty", 0, func(string) string { return "" }, ErrBadLogin},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			u := e.add(t, "alice", RoleAgent)
			p, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1")
			if err != nil {
				t.Fatal(err)
			}
			code := rfc6238(u.secret, e.clk.Now().Add(tc.offset))
			if tc.code != nil {
				code = tc.code(code)
			}
			a, err := e.s.CheckCode(p, code, "127.0.0.1:1")
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err == nil && (a.Name != "alice" || !a.MFAEnrolled) {
				t.Fatalf("agent %+v", a)
			}
		})
	}
}

func TestTOTPEachCodeOnce(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	now := e.clk.Now()
	steps := []struct {
		name string
		at   time.Time // the code's time
		want error
	}{
		{"fresh code", now, nil},
		{"same code again", now, ErrBadLogin},
		{"older step", now.Add(-30 * time.Second), ErrBadLogin},
		{"next step", now.Add(30 * time.Second), nil},
		{"next step again", now.Add(30 * time.Second), ErrBadLogin},
	}
	for _, st := range steps {
		p, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.s.CheckCode(p, rfc6238(u.secret, st.at), "127.0.0.1:1"); !errors.Is(err, st.want) || (err == nil) != (st.want == nil) {
			t.Fatalf("%s: err = %v, want %v", st.name, err, st.want)
		}
	}
	evs := e.events(t, audit.Filter{Action: "login.code"})
	if got := results(evs); got != "login.code:ok login.code:failed login.code:failed login.code:ok login.code:failed" {
		t.Fatalf("audit: %s", got)
	}
	if !strings.Contains(evs[1].Detail, "already used") {
		t.Fatalf("replay audited as %q", evs[1].Detail)
	}
	// The used step survives a restart: it lives in the store.
	s2 := New(e.db, e.log, e.s.opts)
	p, _ := s2.CheckPassword("alice", u.password, "127.0.0.1:1")
	if _, err := s2.CheckCode(p, rfc6238(u.secret, now.Add(30*time.Second)), "127.0.0.1:1"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("replay after restart: %v", err)
	}
}

// RFC 6238 appendix B (SHA1 rows; 6 digits are the last 6 of the 8 shown there).
func TestTOTPVectors(t *testing.T) {
	secret := base32NoPad("12345678901234567890")
	for _, v := range []struct {
		unix int64
		code string
		step uint64
	}{
		{59, "287082", 1},
		{1111111109, "081804", 37037036},
		{1111111111, "050471", 37037037},
		{1234567890, "005924", 41152263},
		{2000000000, "279037", 66666666},
	} {
		step, ok, replay, err := checkTOTP(secret, v.code, time.Unix(v.unix, 0), 0)
		if err != nil || !ok || replay || step != v.step {
			t.Errorf("T=%d code %s: step %d ok %v replay %v err %v; want step %d", v.unix, v.code, step, ok, replay, err, v.step)
		}
		if _, ok, replay, _ := checkTOTP(secret, v.code, time.Unix(v.unix, 0), v.step); ok || !replay {
			t.Errorf("T=%d: a used step was accepted again", v.unix)
		}
	}
}

func base32NoPad(s string) string {
	const a = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	var out strings.Builder
	var buf, bits uint
	for _, c := range []byte(s) {
		buf, bits = buf<<8|uint(c), bits+8
		for bits >= 5 {
			out.WriteByte(a[buf>>(bits-5)&31])
			bits -= 5
		}
	}
	if bits > 0 {
		out.WriteByte(a[buf<<(5-bits)&31])
	}
	return out.String()
}

func TestConcurrentSameCode(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	code := rfc6238(u.secret, e.clk.Now())
	var ps []*Pending
	for range 8 {
		p, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.s.CheckCode(p, code, "127.0.0.1:1"); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("one TOTP code logged in %d times, want once", ok)
	}
}

func TestRecoveryCodes(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	if len(u.codes) != 10 {
		t.Fatalf("%d recovery codes, want 10", len(u.codes))
	}
	codeStep := func(code string) error {
		p, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.s.CheckCode(p, code, "127.0.0.1:1")
		return err
	}
	typed := strings.ToUpper(strings.ReplaceAll(u.codes[0], "-", " "))
	steps := []struct {
		name, code string
		want       error
	}{
		{"as typed (upper case, spaces)", typed, nil},
		{"same code again", u.codes[0], ErrBadLogin},
		{"another code", u.codes[1], nil},
		{"made up", "abcd-efgh-ijkm-npqr", ErrBadLogin},
		{"garbage", "<script>", ErrBadLogin},
	}
	for _, st := range steps {
		if err := codeStep(st.code); !errors.Is(err, st.want) || (err == nil) != (st.want == nil) {
			t.Fatalf("%s: err = %v, want %v", st.name, err, st.want)
		}
	}
	if a, _ := e.s.Get("alice"); a.RecoveryCodesLeft != 8 {
		t.Fatalf("%d codes left, want 8", a.RecoveryCodesLeft)
	}
	// Another agent's code never works for alice.
	bob := e.add(t, "bob", RoleAgent)
	if err := codeStep(bob.codes[0]); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("bob's code for alice: %v", err)
	}
	// Regenerating voids the old ones; agents may do it themselves, not for others.
	alice, _ := e.s.Get("alice")
	if _, err := e.s.RecoveryCodes(Actor{Name: "bob", Role: RoleAgent}, "alice"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("bob regenerating alice's codes: %v", err)
	}
	fresh, err := e.s.RecoveryCodes(alice.Actor("127.0.0.1:1"), "alice")
	if err != nil || len(fresh) != 10 {
		t.Fatalf("regenerate: %v, %d codes", err, len(fresh))
	}
	if err := codeStep(u.codes[2]); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("old code after regeneration: %v", err)
	}
	if err := codeStep(fresh[9]); err != nil {
		t.Fatalf("new code: %v", err)
	}
}

func TestPendingLimits(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AccountLimit = Limit{Free: 100} })
	u := e.add(t, "alice", RoleAgent)
	p, err := e.s.CheckPassword("alice", u.password, "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.s.ResumeLogin(p.Token); err != nil || got.Name != "alice" {
		t.Fatalf("resume: %+v %v", got, err)
	}
	for i := range maxCodeTries {
		if _, err := e.s.CheckCode(&Pending{Token: p.Token}, "000000", "127.0.0.1:1"); !errors.Is(err, ErrBadLogin) {
			t.Fatalf("wrong code %d: %v", i, err)
		}
	}
	if _, err := e.s.CheckCode(p, rfc6238(u.secret, e.clk.Now()), "127.0.0.1:1"); !errors.Is(err, ErrLoginExpired) {
		t.Fatalf("after %d wrong codes: %v, want ErrLoginExpired", maxCodeTries, err)
	}
	p, _ = e.s.CheckPassword("alice", u.password, "127.0.0.1:1")
	e.clk.Add(5*time.Minute + time.Second)
	if _, err := e.s.CheckCode(p, rfc6238(u.secret, e.clk.Now()), "127.0.0.1:1"); !errors.Is(err, ErrLoginExpired) {
		t.Fatalf("after 5 minutes: %v, want ErrLoginExpired", err)
	}
	for _, tok := range []string{"", "x", p.Token + "x"} {
		if _, err := e.s.CheckCode(&Pending{Token: tok}, "123456", "127.0.0.1:1"); !errors.Is(err, ErrLoginExpired) {
			t.Fatalf("forged token %q: %v", tok, err)
		}
	}
	if _, err := e.s.CheckCode(nil, "123456", ""); !errors.Is(err, ErrLoginExpired) {
		t.Fatalf("nil pending: %v", err)
	}
}

func TestThrottleAccount(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.AccountLimit = Limit{Free: 3, Base: time.Second, Max: time.Minute, Leak: time.Hour}
	})
	u := e.add(t, "alice", RoleAgent)
	const attacker = "198.51.100.1:4444"
	for i := range 4 {
		if _, err := e.s.CheckPassword("alice", "wrong", attacker); !errors.Is(err, ErrBadLogin) {
			t.Fatalf("failure %d: %v", i+1, err)
		}
	}
	// The 4th failure locked alice at the attacker's address for 1 s: even the right password waits.
	_, err := e.s.CheckPassword("alice", u.password, attacker)
	wait, ok := RetryAfter(err)
	if !ok || wait != time.Second {
		t.Fatalf("right password during the lock: %v (wait %v), want ErrThrottled 1s", err, wait)
	}
	var te ErrThrottled
	if !errors.As(err, &te) || te.RetryAfter != time.Second {
		t.Fatalf("errors.As ErrThrottled: %v", err)
	}
	lock := e.events(t, audit.Filter{Action: "login.lockout"})
	if len(lock) != 1 || lock[0].Result != audit.Denied || lock[0].Object != "agent/alice" || !strings.Contains(lock[0].Detail, "account from address 198.51.100.1 locked for 1s after 4 failures") {
		t.Fatalf("lockout audit: %+v", lock)
	}
	if evs := e.events(t, audit.Filter{Action: "login", Result: audit.Denied}); len(evs) != 1 || !strings.Contains(evs[0].Detail, "throttled: account from this address") {
		t.Fatalf("refused attempt audit: %+v", evs)
	}
	// More attempts during the lock: refused, and not one audit event each.
	for range 5 {
		e.s.CheckPassword("alice", u.password, attacker)
	}
	if evs := e.events(t, audit.Filter{Action: "login", Result: audit.Denied}); len(evs) != 1 {
		t.Fatalf("%d denied events for one lock, want 1", len(evs))
	}
	e.clk.Add(time.Second)
	if _, err := e.s.CheckPassword("alice", "wrong", attacker); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("after the lock: %v", err)
	}
	if _, err := e.s.CheckPassword("alice", u.password, attacker); err == nil {
		t.Fatal("the 5th failure did not lock again")
	} else if wait, _ := RetryAfter(err); wait != 2*time.Second {
		t.Fatalf("second lock %v, want 2s (doubling)", wait)
	}
	lock = e.events(t, audit.Filter{Action: "login.lockout"})
	if len(lock) != 2 || !strings.Contains(lock[1].Detail, "5 more attempts were refused") {
		t.Fatalf("second lockout: %+v", lock)
	}
	// An unknown name is throttled exactly like a real one: nothing to tell them apart.
	for range 4 {
		e.s.CheckPassword("nobody", "wrong", "192.0.2.77:1")
	}
	if _, err := e.s.CheckPassword("nobody", "wrong", "192.0.2.77:2"); !isThrottled(err) {
		t.Fatalf("unknown name not throttled: %v", err)
	}
	// A full login resets the count of the address it came from.
	e.clk.Add(2 * time.Second)
	e.login(t, u, attacker)
	for i := range 3 {
		if _, err := e.s.CheckPassword("alice", "wrong", attacker); !errors.Is(err, ErrBadLogin) {
			t.Fatalf("failure %d after a good login: %v", i+1, err)
		}
	}
}

// Issue 11.4: guesses from one address must not lock the real agent out at another. Fails on
// a per-account-only throttle.
func TestThrottleLockoutIsNotDenialOfService(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.AccountLimit = Limit{Free: 3, Base: 15 * time.Minute, Max: 15 * time.Minute, Leak: time.Hour}
	})
	u := e.add(t, "alice", RoleAgent)
	app, err := e.s.NewAppPassword(Ctl, "alice", "phone")
	if err != nil {
		t.Fatal(err)
	}
	const attacker = "127.0.0.2:5000"
	for range 10 {
		e.s.CheckPassword("alice", "guess", attacker)
		e.s.CheckAppPassword("alice", "guess", attacker)
	}
	if _, err := e.s.CheckPassword("alice", u.password, attacker); !isThrottled(err) {
		t.Fatalf("attacker's address: %v, want ErrThrottled", err)
	}
	if _, err := e.s.CheckAppPassword("alice", app, attacker); !isThrottled(err) {
		t.Fatalf("attacker's address, app password: %v, want ErrThrottled", err)
	}
	// The agent at another address logs in at once, on the web and with the app password.
	e.login(t, u, "127.0.0.3:6000")
	if _, err := e.s.CheckAppPassword("alice", app, "127.0.0.3:6001"); err != nil {
		t.Fatalf("app password from another address: %v", err)
	}
	// ...and the agent's success does not free the attacker's address.
	if _, err := e.s.CheckPassword("alice", u.password, attacker); !isThrottled(err) {
		t.Fatalf("attacker's address after the agent's login: %v, want ErrThrottled", err)
	}
	// One IPv6 /64 is one address: moving within it does not escape the lock.
	for range 4 {
		e.s.CheckPassword("alice", "guess", "[2001:db8:5:6::1]:1")
	}
	if _, err := e.s.CheckPassword("alice", u.password, "[2001:db8:5:6:ffff::9]:1"); !isThrottled(err) {
		t.Fatalf("same /64: %v, want ErrThrottled", err)
	}
	if _, err := e.s.CheckPassword("alice", u.password, "[2001:db8:5:7::1]:1"); err != nil {
		t.Fatalf("another /64: %v", err)
	}
}

// The ceiling: guessing from many addresses, each under its own limit, still locks the account.
func TestThrottleAccountCeiling(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.AccountLimit = Limit{Free: 3, Base: time.Minute, Max: time.Hour, Leak: time.Hour}
		o.AccountCeiling = Limit{Free: 30, Base: time.Minute, Max: time.Hour, Leak: time.Hour}
	})
	u := e.add(t, "alice", RoleAgent)
	for i := range 31 { // 2 guesses from each address: no address reaches its own limit
		remote := fmt.Sprintf("198.51.100.%d:1", 1+i/2)
		if _, err := e.s.CheckPassword("alice", "guess", remote); !errors.Is(err, ErrBadLogin) {
			t.Fatalf("guess %d from %s: %v", i+1, remote, err)
		}
	}
	_, err := e.s.CheckPassword("alice", u.password, "203.0.113.50:1")
	if wait, ok := RetryAfter(err); !ok || wait != time.Minute {
		t.Fatalf("fresh address after 31 distributed failures: %v, want ErrThrottled 1m", err)
	}
	lock := e.events(t, audit.Filter{Action: "login.lockout"})
	if len(lock) != 1 || !strings.Contains(lock[0].Detail, "account from every address locked for 1m0s after 31 failures") {
		t.Fatalf("ceiling lockout audit: %+v", lock)
	}
	if evs := e.events(t, audit.Filter{Action: "login", Result: audit.Denied}); len(evs) != 1 || !strings.Contains(evs[0].Detail, "account from every address") {
		t.Fatalf("refused attempt audit: %+v", evs)
	}
	e.clk.Add(time.Minute)
	e.login(t, u, "203.0.113.50:1")
}

// The default ceiling is far above the per-address limit.
func TestThrottleDefaults(t *testing.T) {
	var o Options
	o.defaults()
	if o.AccountCeiling.Free < 10*o.AccountLimit.Free {
		t.Fatalf("ceiling %d free, per address %d: want at least 10x", o.AccountCeiling.Free, o.AccountLimit.Free)
	}
}

func isThrottled(err error) bool { _, ok := RetryAfter(err); return ok }

func TestThrottleIP(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.IPLimit = Limit{Free: 5, Base: time.Minute, Max: time.Hour, Leak: time.Hour}
	})
	u := e.add(t, "alice", RoleAgent)
	// Password spraying: one guess per name from one /64.
	for i := range 6 {
		remote := "[2001:db8:1:2::" + string(rune('a'+i)) + "]:5555"
		if _, err := e.s.CheckPassword("user"+string(rune('a'+i)), "Winter2026!", remote); !errors.Is(err, ErrBadLogin) {
			t.Fatalf("guess %d: %v", i+1, err)
		}
	}
	if _, err := e.s.CheckPassword("alice", u.password, "[2001:db8:1:2:ffff::1]:1"); !isThrottled(err) {
		t.Fatalf("same /64: %v, want ErrThrottled", err)
	}
	if _, err := e.s.CheckPassword("alice", u.password, "[2001:db8:1:3::1]:1"); err != nil {
		t.Fatalf("another /64 is not throttled: %v", err)
	}
	lock := e.events(t, audit.Filter{Action: "login.lockout"})
	if len(lock) != 1 || !strings.Contains(lock[0].Detail, "address 2001:db8:1:2::/64 locked for 1m0s after 6 failures") {
		t.Fatalf("lockout audit: %+v", lock)
	}
	// The IP limit covers the mail clients' logins too.
	if _, err := e.s.CheckAppPassword("alice", "x", "[2001:db8:1:2::1]:143"); !isThrottled(err) {
		t.Fatalf("app login from a locked address: %v", err)
	}
	// IPv4-mapped and plain IPv4 are one address.
	for range 6 {
		e.s.CheckPassword("zed", "x", "[::ffff:192.0.2.1]:1")
	}
	if _, err := e.s.CheckPassword("alice", u.password, "192.0.2.1:2"); !isThrottled(err) {
		t.Fatalf("IPv4 after IPv4-mapped failures: %v", err)
	}
}

func TestThrottleAppSeparateFromWeb(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	// A phone with a revoked app password retries for a long time.
	for range 30 {
		e.s.CheckAppPassword("alice", "revoked-old-password", "198.51.100.1:993")
		e.clk.Add(time.Second)
	}
	if _, err := e.s.CheckAppPassword("alice", "x", "198.51.100.1:993"); !isThrottled(err) {
		t.Fatalf("app logins not throttled per account: %v", err)
	}
	// ...which must not lock its owner out of the web page, even from the same address.
	e.s.ips.success(ipKey("198.51.100.1:1")) // the address limit is shared; only the account's are apart
	e.login(t, u, "198.51.100.1:443")
}

func TestThrottleUnit(t *testing.T) {
	lim := Limit{Free: 2, Base: time.Second, Max: 5 * time.Second, Leak: time.Minute}
	th := newThrottle(lim)
	now := time.Unix(1000, 0)
	var locks []time.Duration
	for range 7 {
		lock, _, _ := th.fail("k", now)
		locks = append(locks, lock)
	}
	want := []time.Duration{0, 0, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i := range want {
		if locks[i] != want[i] {
			t.Fatalf("locks %v, want %v", locks, want)
		}
	}
	if w, report := th.check("k", now); w != 5*time.Second || !report {
		t.Fatalf("check: %v %v", w, report)
	}
	if _, report := th.check("k", now); report {
		t.Fatal("second refusal of one lock reported again")
	}
	if w, _ := th.check("other", now); w != 0 {
		t.Fatal("an unrelated key is locked")
	}
	// Failures leak away at one a minute: 7 - 5 + 1 = 3, one past Free.
	now = now.Add(5 * time.Minute)
	if lock, n, _ := th.fail("k", now); lock != time.Second || n != 3 {
		t.Fatalf("after 5 quiet minutes: lock %v n %d, want 1s, 3", lock, n)
	}
	// A flood of made-up keys stays bounded.
	for i := range maxThrottleEntries + 10_000 {
		th.fail(string(rune(i))+"flood", now)
	}
	if n := len(th.m); n >= maxThrottleEntries {
		t.Fatalf("%d entries after a flood, want < %d", n, maxThrottleEntries)
	}
}

func TestIPKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:25":                  "192.0.2.1",
		"[::ffff:192.0.2.1]:25":         "192.0.2.1",
		"[2001:db8::1]:25":              "2001:db8::/64",
		"[2001:db8::dead:beef:1:2]:443": "2001:db8::/64",
		"[fe80::1%eth0]:1":              "fe80::/64",
		"192.0.2.1":                     "192.0.2.1",
		"ctl":                           "raw:ctl",
		"":                              "raw:",
	} {
		if got := ipKey(in); got != want {
			t.Errorf("ipKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSessions(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent, "support")
	id1, csrf1 := e.session(t, u, "127.0.0.1:1")
	id2, csrf2 := e.session(t, u, "127.0.0.1:2")
	if id1 == id2 || csrf1 == csrf2 {
		t.Fatal("two logins got the same session id or CSRF token")
	}
	for _, id := range []string{id1, id2} {
		if raw, err := base64.RawURLEncoding.DecodeString(id); err != nil || len(raw) != 32 {
			t.Fatalf("session id %q is not 256 bits", id)
		}
	}
	s, err := e.s.Session(id1)
	if err != nil || s.Agent.Name != "alice" || s.CSRF != csrf1 || !s.Agent.Actor("").InQueue("support") {
		t.Fatalf("session: %+v %v", s, err)
	}
	if !s.CheckCSRF(csrf1) || s.CheckCSRF(csrf2) || s.CheckCSRF("") || (*Session)(nil).CheckCSRF("") {
		t.Fatal("CheckCSRF accepts the wrong token")
	}
	if err := e.s.EndSession(id1, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Session(id1); !errors.Is(err, ErrNoSession) {
		t.Fatalf("after logout: %v", err)
	}
	if err := e.s.EndSession(id1, "127.0.0.1:1"); !errors.Is(err, ErrNoSession) {
		t.Fatalf("second logout: %v", err)
	}
	if _, err := e.s.Session(id2); err != nil {
		t.Fatalf("the other login's session ended with the first: %v", err)
	}
	if evs := e.events(t, audit.Filter{Action: "logout"}); len(evs) != 1 || evs[0].Actor != "alice" || evs[0].Remote != "127.0.0.1:1" || evs[0].Result != audit.OK {
		t.Fatalf("logout audit: %+v", evs)
	}
	// Changes to the agent apply to live sessions at once.
	if err := e.s.SetQueues(Ctl, "alice", []string{"billing"}); err != nil {
		t.Fatal(err)
	}
	if s, _ := e.s.Session(id2); s.Agent.Actor("").InQueue("support") || !s.Agent.Actor("").InQueue("billing") {
		t.Fatalf("queues in the session: %v", s.Agent.Queues)
	}
	for _, bad := range []string{"", "x", id2[:42], id2 + "A", strings.Repeat("A", 43), "../../etc/passwd"} {
		if _, err := e.s.Session(bad); !errors.Is(err, ErrNoSession) {
			t.Fatalf("session %q: %v", bad, err)
		}
	}
	// EndSessions: log out everywhere.
	id3, _ := e.session(t, u, "127.0.0.1:3")
	if err := e.s.EndSessions(Actor{Name: "alice", Role: RoleAgent}, "alice"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{id2, id3} {
		if _, err := e.s.Session(id); !errors.Is(err, ErrNoSession) {
			t.Fatalf("after EndSessions: %v", err)
		}
	}
}

func TestSessionExpiry(t *testing.T) {
	tests := []struct {
		name  string
		steps []time.Duration // clock moves, each followed by a Session call
		last  error           // the result of the last call; the others succeed
	}{
		{"idle just under 30 min", []time.Duration{29*time.Minute + 59*time.Second}, nil},
		{"idle 30 min", []time.Duration{30 * time.Minute}, ErrNoSession},
		{"activity keeps it alive", []time.Duration{25 * time.Minute, 25 * time.Minute, 25 * time.Minute}, nil},
		{"absolute 12 h despite activity", repeat(20*time.Minute, 36), ErrNoSession},
		{"just under 12 h", append(repeat(20*time.Minute, 35), 19*time.Minute), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			u := e.add(t, "alice", RoleAgent)
			id, _ := e.session(t, u, "127.0.0.1:1")
			for i, d := range tc.steps {
				e.clk.Add(d)
				_, err := e.s.Session(id)
				want := error(nil)
				if i == len(tc.steps)-1 {
					want = tc.last
				}
				if !errors.Is(err, want) || (err == nil) != (want == nil) {
					t.Fatalf("step %d (+%v): %v, want %v", i, d, err, want)
				}
			}
			if tc.last != nil { // an expired session stays dead and is gone from the store
				e.clk.Add(-time.Hour)
				if _, err := e.s.Session(id); !errors.Is(err, ErrNoSession) {
					t.Fatalf("expired session revived: %v", err)
				}
			}
		})
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

func TestSessionLastSeenWrites(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	id, _ := e.session(t, u, "127.0.0.1:1")
	key, _ := sessionKey(id)
	raw := func() []byte { // the sealed bytes: any rewrite changes them (fresh nonce)
		var v []byte
		e.db.View(func(tx *store.Tx) error { v, _ = tx.GetPlain(sessionsBucket, key); return nil })
		return v
	}
	before := raw()
	e.clk.Add(59 * time.Second)
	s, err := e.s.Session(id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, raw()) {
		t.Fatal("Session wrote LastSeen within a minute of the last write")
	}
	e.clk.Add(2 * time.Second)
	s, err = e.s.Session(id)
	if err != nil || !s.LastSeen.Equal(e.clk.Now()) {
		t.Fatalf("LastSeen %v, want %v (%v)", s.LastSeen, e.clk.Now(), err)
	}
	if bytes.Equal(before, raw()) {
		t.Fatal("LastSeen not refreshed after a minute")
	}
}

func TestPruneSessions(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	e.session(t, u, "127.0.0.1:1")
	e.clk.Add(20 * time.Minute)
	live, _ := e.session(t, u, "127.0.0.1:1")
	e.clk.Add(15 * time.Minute)
	n, err := e.s.PruneSessions()
	if err != nil || n != 1 {
		t.Fatalf("pruned %d (%v), want 1", n, err)
	}
	if _, err := e.s.Session(live); err != nil {
		t.Fatalf("live session pruned: %v", err)
	}
}

func TestNewSessionNeedsCodeStep(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	pw, err := e.s.NewAppPassword(Ctl, "alice", "phone")
	if err != nil {
		t.Fatal(err)
	}
	fromGet, _ := e.s.Get("alice")
	fromApp, err := e.s.CheckAppPassword("alice", pw, "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	forged := *fromGet
	for name, a := range map[string]*Agent{"Get": fromGet, "CheckAppPassword": fromApp, "literal": &forged, "nil": nil} {
		if _, _, err := e.s.NewSession(a, "127.0.0.1:1"); !errors.Is(err, ErrNotLoggedIn) {
			t.Errorf("NewSession with an Agent from %s: %v, want ErrNotLoggedIn", name, err)
		}
	}
	a := e.login(t, u, "127.0.0.1:1")
	e.clk.Add(6 * time.Minute)
	if _, _, err := e.s.NewSession(a, "127.0.0.1:1"); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("NewSession 6 minutes after the code step: %v", err)
	}
}

func TestSecretsNotInFile(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent, "support")
	id, csrf := e.session(t, u, "127.0.0.1:1")
	app, err := e.s.NewAppPassword(Ctl, "alice", "phone")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.CheckAppPassword("alice", app, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	path := e.db.Path()
	e.db.Close()
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rawID, _ := base64.RawURLEncoding.DecodeString(id)
	key, _ := sessionKey(id)
	if !bytes.Contains(file, key) {
		t.Fatal("the session's hashed key is not in the file: the test reads the wrong file")
	}
	if !bytes.Contains(file, []byte("alice")) {
		t.Fatal("the agent key is not in the file: the test reads the wrong file")
	}
	secrets := map[string][]byte{
		"session id": []byte(id), "raw session id": rawID, "CSRF token": []byte(csrf),
		"password": []byte(u.password), "TOTP secret": u.secret, "TOTP secret (base32)": []byte(base32NoPad(string(u.secret))),
		"app password": []byte(app), "recovery code": []byte(u.codes[3]), "email": []byte("alice@example.com"),
		"queue": []byte("support"),
	}
	for what, s := range secrets {
		if bytes.Contains(file, s) {
			t.Errorf("the database file contains the %s in plain", what)
		}
	}
}

func TestAppPasswords(t *testing.T) {
	e := newEnv(t, nil)
	u := e.add(t, "alice", RoleAgent)
	e.add(t, "bob", RoleAgent)
	alice := Actor{Name: "alice", Role: RoleAgent, Remote: "127.0.0.1:9"}
	pw, err := e.s.NewAppPassword(alice, "alice", "laptop thunderbird")
	if err != nil {
		t.Fatal(err)
	}
	if len(strings.ReplaceAll(pw, "-", "")) < 20 {
		t.Fatalf("app password %d characters", len(pw))
	}
	tests := []struct {
		name, user, pw string
		want           error
	}{
		{"app password", "alice", pw, nil},
		{"app password typed without dashes, upper case", "alice", strings.ToUpper(strings.ReplaceAll(pw, "-", "")), nil},
		{"web password is refused", "alice", u.password, ErrBadLogin},
		{"other agent's name", "bob", pw, ErrBadLogin},
		{"unknown agent", "carol", pw, ErrBadLogin},
		{"empty", "alice", "", ErrBadLogin},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := e.s.CheckAppPassword(tc.user, tc.pw, "127.0.0.1:143")
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err == nil && a.Name != tc.user {
				t.Fatalf("agent %s", a.Name)
			}
		})
	}
	if _, err := e.s.CheckPassword("alice", pw, "127.0.0.1:443"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("app password on the web login: %v, want ErrBadLogin", err)
	}
	a, _ := e.s.Get("alice")
	if len(a.AppPasswords) != 1 || a.AppPasswords[0].Label != "laptop thunderbird" || !a.AppPasswords[0].LastUsed.Equal(e.clk.Now()) {
		t.Fatalf("app passwords: %+v", a.AppPasswords)
	}
	id := a.AppPasswords[0].ID
	if err := e.s.RevokeAppPassword(Actor{Name: "bob", Role: RoleAgent}, "alice", id); !errors.Is(err, ErrForbidden) {
		t.Fatalf("bob revoking alice's: %v", err)
	}
	if _, err := e.s.NewAppPassword(Actor{Name: "bob", Role: RoleAgent}, "alice", "x"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("bob making one for alice: %v", err)
	}
	if err := e.s.RevokeAppPassword(alice, "alice", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown id: %v", err)
	}
	if err := e.s.RevokeAppPassword(alice, "alice", id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.CheckAppPassword("alice", pw, "127.0.0.1:143"); !errors.Is(err, ErrBadLogin) {
		t.Fatalf("revoked app password: %v", err)
	}
	if err := e.s.Disable(Ctl, "alice"); err != nil {
		t.Fatal(err)
	}
	pw2, _ := e.s.NewAppPassword(Ctl, "alice", "again")
	if _, err := e.s.CheckAppPassword("alice", pw2, "127.0.0.1:143"); !errors.Is(err, ErrDisabled) {
		t.Fatalf("disabled agent's app password: %v", err)
	}
	got := results(e.events(t, audit.Filter{Object: "agent/alice"}))
	for _, want := range []string{"apppassword.new:ok", "login.app:ok", "login.app:failed", "apppassword.revoke:denied", "apppassword.new:denied", "apppassword.revoke:failed", "apppassword.revoke:ok", "login.app:denied"} {
		if !strings.Contains(got, want) {
			t.Errorf("audit lacks %s: %s", want, got)
		}
	}
}
