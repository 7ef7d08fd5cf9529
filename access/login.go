package access

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"mailgate/audit"
	"mailgate/store"
)

// maxCodeTries is how many wrong codes one Pending survives; then the password is needed again.
const maxCodeTries = 5

// Pending is the state between the password and the code step. Token is 256 random bits,
// safe for a hidden form field or a cookie; the server keeps the rest in memory for
// Options.PendingTTL (5 min), so a restart means entering the password again. CheckCode reads
// only Token, so &Pending{Token: t} from a form value is a valid argument.
type Pending struct {
	Token   string
	Name    string // the agent, for "enter the code for alice"
	Expires time.Time
}

type pendingLogin struct {
	name    string
	expires time.Time
	tries   int
}

// throttleKeys name the three counters one login attempt touches. The web login's keys are
// apart from the mail clients' (appKeys): a phone retrying a revoked app password every minute
// must not lock its owner out of the web.
type throttleKeys struct {
	pair    string // this account from this address: the limit an attacker at one address hits
	account string // this account from anywhere: the ceiling against distributed guessing
	ip      string // this address, any account: against spraying one password over many names
}

func loginKeys(kind, name, remote string) throttleKeys {
	ip := ipKey(remote)
	acc := kind + "\x00" + clip(name, 128)
	return throttleKeys{pair: acc + "\x00" + ip, account: acc, ip: ip}
}

func webKeys(name, remote string) throttleKeys { return loginKeys("web", name, remote) }
func appKeys(name, remote string) throttleKeys { return loginKeys("app", name, remote) }

// CheckPassword is the first login step. It answers ErrBadLogin for an unknown agent and a wrong
// password alike (an unknown agent costs the same argon2 run), ErrThrottled while the account or
// the address is paused, and ErrDisabled only after a right password.
func (s *Service) CheckPassword(name, password, remote string) (*Pending, error) {
	const action = "login"
	now := s.now()
	by := Actor{Name: name, Remote: remote}
	keys := webKeys(name, remote)
	if err := s.throttled(keys, action, name, remote, now); err != nil {
		return nil, err
	}
	var r *record
	if err := s.db.View(func(tx *store.Tx) error {
		var err error
		r, err = getRecord(tx, name)
		return err
	}); err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	ok, stale := false, false
	if r == nil {
		s.dummyHash(password)
	} else {
		ok, stale = s.verifyPassword(r.Password, password)
	}
	if !ok {
		detail := "wrong password"
		if r == nil {
			detail = "no such agent"
		}
		s.loginFailed(keys, by, action, name, detail)
		return nil, ErrBadLogin
	}
	if r.Disabled {
		s.appendEvents(event(by, action, name, audit.Denied, "account disabled"))
		return nil, ErrDisabled
	}
	var rehash string
	if stale { // the hash predates the current argon2 parameters: upgrade it while we know the password
		rehash = s.hashPassword(password)
	}
	err := s.db.Batch(func(tx *store.Tx) error {
		if rehash != "" {
			cur, err := getRecord(tx, name)
			if err != nil {
				return err
			}
			if cur != nil && cur.Password == r.Password {
				cur.Password = rehash
				if err := putRecord(tx, cur); err != nil {
					return err
				}
			}
		}
		return s.log.AppendTx(tx, event(by, action, name, audit.OK, "password right; code required"))
	})
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	p := &Pending{Token: token(), Name: name, Expires: now.Add(s.opts.PendingTTL)}
	s.mu.Lock()
	for t, pl := range s.pending { // only right passwords get here, so the map stays small
		if !now.Before(pl.expires) {
			delete(s.pending, t)
		}
	}
	s.pending[p.Token] = &pendingLogin{name: name, expires: p.Expires}
	s.mu.Unlock()
	return p, nil
}

// ResumeLogin returns the Pending of token, or ErrLoginExpired (for showing the code form).
func (s *Service) ResumeLogin(token string) (*Pending, error) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	pl := s.pending[token]
	if pl == nil || !now.Before(pl.expires) {
		delete(s.pending, token)
		return nil, ErrLoginExpired
	}
	return &Pending{Token: token, Name: pl.name, Expires: pl.expires}, nil
}

// CheckCode is the second login step: a TOTP code (each works once: the agent's last accepted
// time step is kept in the store) or a recovery code (single use). The Agent it returns is the
// only kind NewSession accepts.
func (s *Service) CheckCode(p *Pending, code, remote string) (*Agent, error) {
	const action = "login.code"
	now := s.now()
	if p == nil {
		return nil, ErrLoginExpired
	}
	s.mu.Lock()
	pl := s.pending[p.Token]
	if pl != nil && !now.Before(pl.expires) {
		delete(s.pending, p.Token)
		pl = nil
	}
	var name string
	if pl != nil {
		name = pl.name
	}
	s.mu.Unlock()
	if pl == nil {
		return nil, ErrLoginExpired
	}
	by := Actor{Name: name, Remote: remote}
	keys := webKeys(name, remote)
	if err := s.throttled(keys, action, name, remote, now); err != nil {
		return nil, err
	}
	var out *Agent
	r, detail, bad, err := s.useSecondFactor(by, action, name, code, "", now)
	if err != nil {
		return nil, fmt.Errorf("login code: %w", err)
	}
	switch bad {
	case nil:
		out = r.agent()
		out.loggedIn = now
	case errNoAgent:
		bad = ErrBadLogin // to the client, like any wrong login
	}
	switch bad {
	case nil:
		s.mu.Lock()
		delete(s.pending, p.Token)
		s.mu.Unlock()
		s.pairs.success(keys.pair)
		return out, nil
	case ErrDisabled:
		s.dropPending(p.Token)
		s.appendEvents(event(by, action, name, audit.Denied, detail))
		return nil, ErrDisabled
	}
	s.mu.Lock()
	if pl.tries++; pl.tries >= maxCodeTries {
		delete(s.pending, p.Token)
	}
	s.mu.Unlock()
	s.loginFailed(keys, by, action, name, detail)
	return nil, bad
}

// useSecondFactor checks code as name's second factor and uses it up in one transaction that
// also audits the success as action (detail after note). bad is errNoAgent for a removed agent, ErrDisabled for a disabled one, or secondFactor's verdict; detail says which.
func (s *Service) useSecondFactor(by Actor, action, name, code, note string, now time.Time) (r *record, detail string, bad, err error) {
	err = s.db.Update(func(tx *store.Tx) error {
		var err error
		if r, err = getRecord(tx, name); err != nil {
			return err
		}
		if r == nil {
			bad, detail = errNoAgent, "agent removed"
			return nil
		}
		if r.Disabled {
			bad, detail = ErrDisabled, "account disabled"
			return nil
		}
		if detail, bad, err = s.secondFactor(r, code, now); err != nil || bad != nil {
			return err
		}
		if err := putRecord(tx, r); err != nil {
			return err
		}
		return s.log.AppendTx(tx, event(by, action, name, audit.OK, note+detail))
	})
	return r, detail, bad, err
}

// errNoAgent: the agent was removed between the steps of a login or a step-up.
var errNoAgent = errors.New("agent removed")

// secondFactor checks a TOTP code (each works once: the last accepted time step is kept in r)
// or a recovery code (single use: it is taken out of r) against r, which the caller stores.
// bad is ErrBadLogin for a wrong, reused or malformed code; detail says which for the audit.
// err is a broken stored secret, not the caller's fault.
func (s *Service) secondFactor(r *record, code string, now time.Time) (detail string, bad, err error) {
	if c, isTOTP := totpCode(code); isTOTP {
		step, ok, replay, err := checkTOTP(r.TOTPSecret, c, now, r.TOTPLast)
		switch {
		case err != nil:
			return "", nil, err
		case replay:
			return "TOTP code already used", ErrBadLogin, nil
		case !ok:
			return "wrong TOTP code", ErrBadLogin, nil
		}
		r.TOTPLast, r.TOTPConfirmed = step, true
		return "TOTP", nil, nil
	}
	c := normalizeCode(code)
	i := -1
	if len(c) == recoveryCodeLength {
		h := s.codeMAC("recovery", r.Name, c)
		for j, stored := range r.Recovery {
			if equalHex(stored, h) {
				i = j
			}
		}
	}
	if i < 0 {
		return "wrong recovery code", ErrBadLogin, nil
	}
	r.Recovery = slices.Delete(r.Recovery, i, i+1)
	return fmt.Sprintf("recovery code; %d left", len(r.Recovery)), nil, nil
}

func (s *Service) dropPending(tok string) {
	s.mu.Lock()
	delete(s.pending, tok)
	s.mu.Unlock()
}

// CheckAppPassword checks a mail client's login (IMAP, SMTP submission). Only app passwords
// match: the web password never does. Throttled like the web login, audited as "login.app".
func (s *Service) CheckAppPassword(name, password, remote string) (*Agent, error) {
	const action = "login.app"
	now := s.now()
	by := Actor{Name: name, Remote: remote}
	keys := appKeys(name, remote)
	if err := s.throttled(keys, action, name, remote, now); err != nil {
		return nil, err
	}
	h := s.codeMAC("app", name, normalizeCode(password)) // computed for unknown names too: same timing
	var r *record
	if err := s.db.View(func(tx *store.Tx) error {
		var err error
		r, err = getRecord(tx, name)
		return err
	}); err != nil {
		return nil, fmt.Errorf("app login: %w", err)
	}
	id := ""
	if r != nil {
		for _, ap := range r.Apps {
			if equalHex(ap.Hash, h) {
				id = ap.ID
			}
		}
	}
	if id == "" {
		detail := "wrong app password"
		if r == nil {
			detail = "no such agent"
		}
		s.loginFailed(keys, by, action, name, detail)
		return nil, ErrBadLogin
	}
	if r.Disabled {
		s.appendEvents(event(by, action, name, audit.Denied, "account disabled"))
		return nil, ErrDisabled
	}
	if r.Role == RoleAuditor { // one made before auditors lost them, or before a role change
		s.appendEvents(event(by, action, name, audit.Denied, "auditors have no app passwords"))
		return nil, ErrBadLogin
	}
	var out *Agent
	err := s.db.Batch(func(tx *store.Tx) error {
		out = nil
		cur, err := getRecord(tx, name)
		if err != nil {
			return err
		}
		i := -1
		if cur != nil && !cur.Disabled && cur.Role != RoleAuditor {
			i = slices.IndexFunc(cur.Apps, func(a appRecord) bool { return a.ID == id })
		}
		if i < 0 {
			return nil // revoked or disabled since the read: refuse below
		}
		cur.Apps[i].LastUsed = now.UTC()
		if err := putRecord(tx, cur); err != nil {
			return err
		}
		out = cur.agent()
		return s.log.AppendTx(tx, event(by, action, name, audit.OK, "app password id="+id))
	})
	if err != nil {
		return nil, fmt.Errorf("app login: %w", err)
	}
	if out == nil {
		s.loginFailed(keys, by, action, name, "app password revoked or account disabled during login")
		return nil, ErrBadLogin
	}
	s.pairs.success(keys.pair)
	return out, nil
}

// throttled refuses an attempt while the account at this address, the account everywhere (the
// ceiling) or the address is locked. The first refusal of each lock is audited ("denied"); the
// rest are counted into the next lockout event, so a client hammering a locked account cannot
// flood the audit log.
func (s *Service) throttled(k throttleKeys, action, name, remote string, now time.Time) error {
	wp, rp := s.pairs.check(k.pair, now)
	wa, ra := s.accounts.check(k.account, now)
	wi, ri := s.ips.check(k.ip, now)
	wait := max(wp, wa, wi)
	if wait == 0 {
		return nil
	}
	if rp || ra || ri {
		what := "account from this address"
		switch wait {
		case wa:
			what = "account from every address"
		case wi:
			what = "address"
		}
		s.appendEvents(event(Actor{Name: name, Remote: remote}, action, name, audit.Denied,
			fmt.Sprintf("throttled: %s locked for %s more", what, wait.Round(time.Second))))
	}
	return ErrThrottled{RetryAfter: wait}
}

// loginFailed counts a failure against the account at this address, the account everywhere
// and the address, and audits it, plus a "login.lockout" event for each lock it starts, all in
// one commit.
func (s *Service) loginFailed(k throttleKeys, by Actor, action, name, detail string) {
	now := s.now()
	evs := []audit.Event{event(by, action, name, audit.Failed, detail)}
	lockout := func(what string, lock time.Duration, n, refused int) {
		d := fmt.Sprintf("%s locked for %s after %d failures", what, lock, n)
		if refused > 0 {
			d += fmt.Sprintf("; %d more attempts were refused during the previous lock", refused)
		}
		evs = append(evs, event(by, "login.lockout", name, audit.Denied, d))
		s.opts.Logger.Warn("login throttled", "what", what, "agent", safeName(name), "remote", clip(by.Remote, 100), "lock", lock, "failures", n)
	}
	if lock, n, refused := s.pairs.fail(k.pair, now); lock > 0 {
		lockout("account from address "+k.ip, lock, n, refused)
	}
	if lock, n, refused := s.accounts.fail(k.account, now); lock > 0 {
		lockout("account from every address", lock, n, refused)
	}
	if lock, n, refused := s.ips.fail(k.ip, now); lock > 0 {
		lockout("address "+k.ip, lock, n, refused)
	}
	s.appendEvents(evs...)
}
