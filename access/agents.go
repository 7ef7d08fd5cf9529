package access

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"mailgate/audit"
	"mailgate/store"
)

// agentsBucket holds one sealed record per agent, keyed by the plain name (a name is not
// customer data; the email and every secret are inside the sealed value).
const agentsBucket = "agents"

const (
	recoveryCodeCount  = 10
	maxAppPasswords    = 20
	maxLabelLen        = 64
	maxQueueNameLen    = 64
	recoveryCodeLength = 16 // characters without dashes
)

// record is what the store keeps about an agent.
type record struct {
	Name          string      `json:"name"`
	Email         string      `json:"email"`
	Role          Role        `json:"role"`
	Queues        []string    `json:"queues"`
	Disabled      bool        `json:"disabled"`
	Created       time.Time   `json:"created"`
	Password      string      `json:"password"` // argon2id, PHC string
	TOTPSecret    string      `json:"totp_secret"`
	TOTPLast      uint64      `json:"totp_last"` // last accepted time step: each code works once
	TOTPConfirmed bool        `json:"totp_confirmed"`
	Recovery      []string    `json:"recovery"` // codeMAC of each unused code
	Apps          []appRecord `json:"apps"`
	// Epoch is copied into each session; bumping it ends every session of the agent at once.
	Epoch uint64 `json:"epoch"`
}

type appRecord struct {
	AppPassword
	Hash string `json:"hash"`
}

func (r *record) agent() *Agent {
	a := &Agent{
		Name: r.Name, Email: r.Email, Role: r.Role, Queues: slices.Clone(r.Queues), Disabled: r.Disabled,
		Created: r.Created, MFAEnrolled: r.TOTPSecret != "" && r.TOTPConfirmed, RecoveryCodesLeft: len(r.Recovery),
	}
	if a.Queues == nil {
		a.Queues = []string{}
	}
	a.AppPasswords = make([]AppPassword, len(r.Apps))
	for i, ap := range r.Apps {
		a.AppPasswords[i] = ap.AppPassword
	}
	return a
}

func getRecord(tx *store.Tx, name string) (*record, error) {
	if !validName(name) {
		return nil, nil // cannot exist; also keeps odd bytes out of store keys
	}
	v, err := tx.Get(agentsBucket, []byte(name))
	if err != nil || v == nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("agent %s: %w", name, err)
	}
	return &r, nil
}

func putRecord(tx *store.Tx, r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Put(agentsBucket, []byte(r.Name), b)
}

// validName: [a-z0-9._-]{1,64} starting with a letter or digit (so "." and ".." never become
// names in URLs or paths); "ctl" and "mailgate" are the names of built-in actors.
func validName(n string) bool {
	if len(n) == 0 || len(n) > 64 || n == Ctl.Name || n == system.Name {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// safeName is a name fit for an audit record even when an attacker typed it.
func safeName(n string) string {
	if validName(n) || n == Ctl.Name || n == system.Name {
		return n
	}
	return strconv.QuoteToASCII(clip(n, 64))
}

func checkName(n string) error {
	if !validName(n) {
		return fmt.Errorf("%w name %s: use 1-64 of a-z 0-9 . _ - starting with a letter or digit (not ctl or mailgate)", ErrInvalid, safeName(n))
	}
	return nil
}

func checkEmail(e string) error {
	a, err := mail.ParseAddress(e)
	if err != nil || a.Name != "" || a.Address != e || len(e) > 254 || strings.ContainsFunc(e, unicode.IsControl) {
		return fmt.Errorf("%w email %s: write a bare address like alice@example.com", ErrInvalid, strconv.QuoteToASCII(clip(e, 100)))
	}
	return nil
}

func checkRole(r Role) error {
	if !r.Valid() {
		return fmt.Errorf("%w role %s: use admin, agent or auditor", ErrInvalid, strconv.QuoteToASCII(clip(string(r), 32)))
	}
	return nil
}

// normQueues validates, sorts and de-duplicates queue names.
func (s *Service) normQueues(qs []string) ([]string, error) {
	out := []string{}
	for _, q := range qs {
		if q == "" || len(q) > maxQueueNameLen || strings.ContainsFunc(q, func(r rune) bool {
			return unicode.IsSpace(r) || unicode.IsControl(r) || r == ','
		}) {
			return nil, fmt.Errorf("%w queue %s: use a queue name from the config", ErrInvalid, strconv.QuoteToASCII(clip(q, 64)))
		}
		if s.opts.KnownQueue != nil && !s.opts.KnownQueue(q) {
			return nil, fmt.Errorf("%w queue %s: no such queue in the config", ErrInvalid, strconv.QuoteToASCII(q))
		}
		out = append(out, q)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func checkLabel(l string) error {
	if l == "" || len(l) > maxLabelLen || strings.ContainsFunc(l, unicode.IsControl) {
		return fmt.Errorf("%w label: use 1-%d printable characters, e.g. \"laptop thunderbird\"", ErrInvalid, maxLabelLen)
	}
	return nil
}

// event builds an audit event about agent name.
func event(by Actor, action, name, result, detail string) audit.Event {
	actor := by.Name
	if actor == "" {
		actor = "?"
	}
	return audit.Event{Actor: safeName(actor), Action: action, Object: "agent/" + safeName(name),
		Remote: clip(by.Remote, 100), Result: result, Detail: detail}
}

// appendEvents writes events in one group commit. It cannot fail the caller's operation (that
// already failed or was refused); if even the audit log cannot be written, it says so in the log.
func (s *Service) appendEvents(evs ...audit.Event) {
	err := s.db.Batch(func(tx *store.Tx) error {
		for _, ev := range evs {
			if err := s.log.AppendTx(tx, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.opts.Logger.Error("audit append failed", "action", evs[0].Action, "object", evs[0].Object, "err", err)
	}
}

func resultOf(err error) string {
	if errors.Is(err, ErrForbidden) || errors.Is(err, ErrDisabled) {
		return audit.Denied
	}
	return audit.Failed
}

// authorize: admins may do anything; with self, an agent may also act on its own account.
func authorize(by Actor, name string, self bool) error {
	if by.Role == RoleAdmin || self && by.Name != "" && by.Name == name && by.Role.Valid() {
		return nil
	}
	return ErrForbidden
}

// change loads name's record, lets fn modify it, and stores it in the same transaction as the
// audit event, so the change and its record commit together. Refusals and failures are audited
// too, in their own transaction.
func (s *Service) change(by Actor, action, name string, self bool, fn func(tx *store.Tx, r *record) (string, error)) error {
	err := authorize(by, name, self)
	if err == nil {
		err = s.db.Update(func(tx *store.Tx) error {
			r, err := getRecord(tx, name)
			if err != nil {
				return err
			}
			if r == nil {
				return ErrNotFound
			}
			detail, err := fn(tx, r)
			if err != nil {
				return err
			}
			if err := putRecord(tx, r); err != nil {
				return err
			}
			return s.log.AppendTx(tx, event(by, action, name, audit.OK, detail))
		})
	}
	if err != nil {
		s.appendEvents(event(by, action, name, resultOf(err), err.Error()))
		return fmt.Errorf("%s %s: %w", action, safeName(name), err)
	}
	return nil
}

// Credentials are the secrets of a new account, shown once.
type Credentials struct {
	Password      string   `json:"password"`
	TOTPURI       string   `json:"totp_uri"`
	RecoveryCodes []string `json:"recovery_codes,omitempty"`
}

// Add creates an agent with a generated password and TOTP secret, returned once. The agent
// has no recovery codes until RecoveryCodes is called; Create does both in one step.
func (s *Service) Add(by Actor, name, email string, role Role, queues []string) (password, totpURI string, err error) {
	c, err := s.create(by, "agent.add", name, email, role, queues, false)
	if err != nil {
		return "", "", err
	}
	return c.Password, c.TOTPURI, nil
}

// Create is Add plus ten recovery codes (what `agent add --json` prints).
func (s *Service) Create(by Actor, name, email string, role Role, queues []string) (*Credentials, error) {
	return s.create(by, "agent.add", name, email, role, queues, true)
}

func (s *Service) create(by Actor, action, name, email string, role Role, queues []string, codes bool) (*Credentials, error) {
	fail := func(err error) (*Credentials, error) {
		s.appendEvents(event(by, action, name, resultOf(err), err.Error()))
		return nil, fmt.Errorf("add agent %s: %w", safeName(name), err)
	}
	if by.Role != RoleAdmin {
		return fail(ErrForbidden)
	}
	qs, err := s.normQueues(queues)
	if err == nil {
		err = errors.Join(checkName(name), checkEmail(email), checkRole(role))
	}
	if err != nil {
		return fail(err)
	}
	exists := false
	if err := s.db.View(func(tx *store.Tx) error {
		r, err := getRecord(tx, name)
		exists = r != nil
		return err
	}); err != nil {
		return fail(err)
	}
	if exists { // checked before the slow hash; checked again in the write below
		return fail(ErrExists)
	}
	c, r, err := s.newRecord(name, email, role, qs, codes)
	if err != nil {
		return fail(err)
	}
	err = s.db.Update(func(tx *store.Tx) error {
		if old, err := getRecord(tx, name); err != nil || old != nil {
			return orErr(err, ErrExists)
		}
		if err := putRecord(tx, r); err != nil {
			return err
		}
		return s.log.AppendTx(tx, event(by, action, name, audit.OK, fmt.Sprintf("role=%s queues=%s", role, strings.Join(qs, ","))))
	})
	if err != nil {
		return fail(err)
	}
	return c, nil
}

// orErr returns err, or otherwise when err is nil.
func orErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

func (s *Service) newRecord(name, email string, role Role, qs []string, codes bool) (*Credentials, *record, error) {
	secret, uri, err := s.newTOTP(name)
	if err != nil {
		return nil, nil, err
	}
	c := &Credentials{Password: newPassword(), TOTPURI: uri}
	r := &record{
		Name: name, Email: email, Role: role, Queues: qs, Created: s.now().UTC(),
		Password: s.hashPassword(c.Password), TOTPSecret: secret, Apps: []appRecord{},
	}
	if codes {
		c.RecoveryCodes, r.Recovery = s.newRecoveryCodes(name)
	}
	return c, r, nil
}

func (s *Service) newRecoveryCodes(name string) (codes, hashes []string) {
	for range recoveryCodeCount {
		c := newRecoveryCode()
		codes = append(codes, c)
		hashes = append(hashes, s.codeMAC("recovery", name, normalizeCode(c)))
	}
	return codes, hashes
}

// EnsureAdmin creates an admin named name when there is no agent at all (dev mode's first start).
// created is false, and nothing changes, when any agent exists. The caller prints the secrets once.
func (s *Service) EnsureAdmin(name, email string) (password, totpURI string, created bool, err error) {
	var any bool
	if err := s.db.View(func(tx *store.Tx) error {
		any = tx.Cursor(agentsBucket).First() != nil
		return nil
	}); err != nil || any {
		return "", "", false, err
	}
	if err := errors.Join(checkName(name), checkEmail(email)); err != nil {
		return "", "", false, fmt.Errorf("first admin: %w", err)
	}
	c, r, err := s.newRecord(name, email, RoleAdmin, []string{}, false)
	if err != nil {
		return "", "", false, err
	}
	err = s.db.Update(func(tx *store.Tx) error {
		if any = tx.Cursor(agentsBucket).First() != nil; any {
			return nil
		}
		if err := putRecord(tx, r); err != nil {
			return err
		}
		return s.log.AppendTx(tx, event(system, "agent.add", name, audit.OK, "role=admin (first start: no agent existed)"))
	})
	if err != nil || any {
		return "", "", false, err
	}
	return c.Password, c.TOTPURI, true, nil
}

// Get returns the agent called name, or ErrNotFound.
func (s *Service) Get(name string) (*Agent, error) {
	var a *Agent
	err := s.db.View(func(tx *store.Tx) error {
		r, err := getRecord(tx, name)
		if err != nil {
			return err
		}
		if r == nil {
			return ErrNotFound
		}
		a = r.agent()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", safeName(name), err)
	}
	return a, nil
}

// List returns every agent, by name.
func (s *Service) List() ([]Agent, error) {
	out := []Agent{}
	err := s.db.View(func(tx *store.Tx) error {
		return tx.ForEach(agentsBucket, func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("agent %s: %w", safeName(string(k)), err)
			}
			out = append(out, *r.agent())
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}

// noOtherAdmin reports whether no enabled admin but name exists. Admin changes are rare, so
// walking the agents here is fine (it is never on a login or mail path).
func noOtherAdmin(tx *store.Tx, name string) (bool, error) {
	found := false
	err := tx.ForEach(agentsBucket, func(k, v []byte) error {
		if found || string(k) == name {
			return nil
		}
		var r record
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		found = r.Role == RoleAdmin && !r.Disabled
		return nil
	})
	return !found, err
}

// Disable stops the agent from logging in and ends its sessions at once.
func (s *Service) Disable(by Actor, name string) error {
	return s.change(by, "agent.disable", name, false, func(tx *store.Tx, r *record) (string, error) {
		if r.Role == RoleAdmin && !r.Disabled {
			if last, err := noOtherAdmin(tx, name); err != nil || last {
				return "", orErr(err, ErrLastAdmin)
			}
		}
		r.Disabled = true
		r.Epoch++
		return "sessions ended", nil
	})
}

// Enable lets a disabled agent log in again. Its old sessions stay ended.
func (s *Service) Enable(by Actor, name string) error {
	return s.change(by, "agent.enable", name, false, func(tx *store.Tx, r *record) (string, error) {
		r.Disabled = false
		return "", nil
	})
}

// ResetMFA gives the agent a new TOTP secret (returned once as an otpauth:// URI), drops its
// recovery codes and ends its sessions: the usual reason is a lost or stolen phone.
func (s *Service) ResetMFA(by Actor, name string) (totpURI string, err error) {
	secret, uri, err := s.newTOTP(name)
	if err != nil {
		return "", err
	}
	err = s.change(by, "mfa.reset", name, false, func(tx *store.Tx, r *record) (string, error) {
		r.TOTPSecret, r.TOTPLast, r.TOTPConfirmed = secret, 0, false
		r.Recovery = nil
		r.Epoch++
		return "new TOTP secret; recovery codes dropped; sessions ended", nil
	})
	if err != nil {
		return "", err
	}
	return uri, nil
}

// SetQueues replaces the agent's queues. Sessions see the change on their next request.
func (s *Service) SetQueues(by Actor, name string, queues []string) error {
	qs, qerr := s.normQueues(queues)
	return s.change(by, "agent.queues", name, false, func(tx *store.Tx, r *record) (string, error) {
		if qerr != nil {
			return "", qerr
		}
		old := strings.Join(r.Queues, ",")
		r.Queues = qs
		return fmt.Sprintf("queues=%s (was %s)", strings.Join(qs, ","), old), nil
	})
}

// SetRole changes the agent's role. Sessions see the change on their next request.
func (s *Service) SetRole(by Actor, name string, role Role) error {
	return s.change(by, "agent.role", name, false, func(tx *store.Tx, r *record) (string, error) {
		if err := checkRole(role); err != nil {
			return "", err
		}
		if r.Role == RoleAdmin && role != RoleAdmin && !r.Disabled {
			if last, err := noOtherAdmin(tx, name); err != nil || last {
				return "", orErr(err, ErrLastAdmin)
			}
		}
		old := r.Role
		r.Role = role
		detail := fmt.Sprintf("role=%s (was %s)", role, old)
		if role == RoleAuditor && len(r.Apps) > 0 {
			detail += fmt.Sprintf("; %d app passwords revoked (auditors have none)", len(r.Apps))
			r.Apps = nil
		}
		return detail, nil
	})
}

// SetPassword is an admin setting another agent's password; it ends that agent's sessions.
// Agents change their own with ChangePassword, which needs the old one.
func (s *Service) SetPassword(by Actor, name, newPassword string) error {
	var hash string
	err := checkNewPassword(name, newPassword)
	if err == nil && by.Name == name {
		err = fmt.Errorf("%w: to change your own password use ChangePassword, which asks for the old one", ErrForbidden)
	}
	if err == nil && by.Role == RoleAdmin { // hash only for a caller that may use it
		hash = s.hashPassword(newPassword)
	}
	return s.change(by, "agent.password", name, false, func(tx *store.Tx, r *record) (string, error) {
		if err != nil {
			return "", err
		}
		r.Password = hash
		r.Epoch++
		return "password set by admin; sessions ended", nil
	})
}

// ChangePassword is an agent changing its own password (by.Name) and must know the old one.
// A wrong old password counts as a failed login for throttling. Sessions stay; EndSessions
// ends them everywhere if the agent wants that.
func (s *Service) ChangePassword(by Actor, oldPassword, newPassword string) error {
	const action = "password.change"
	name := by.Name
	now := s.now()
	keys := webKeys(name, by.Remote)
	if err := s.throttled(keys, action, name, by.Remote, now); err != nil {
		return err
	}
	fail := func(err error) error {
		s.appendEvents(event(by, action, name, resultOf(err), err.Error()))
		return fmt.Errorf("change password: %w", err)
	}
	if err := checkNewPassword(name, newPassword); err != nil {
		return fail(err)
	}
	var r *record
	if err := s.db.View(func(tx *store.Tx) error {
		var err error
		r, err = getRecord(tx, name)
		return err
	}); err != nil {
		return fail(err)
	}
	if r == nil || r.Disabled {
		return fail(ErrForbidden)
	}
	if ok, _ := s.verifyPassword(r.Password, oldPassword); !ok {
		s.loginFailed(keys, by, action, name, "wrong old password")
		return fmt.Errorf("change password: the old password is wrong: %w", ErrBadLogin)
	}
	hash := s.hashPassword(newPassword)
	err := s.change(by, action, name, true, func(tx *store.Tx, r *record) (string, error) {
		r.Password = hash
		return "", nil
	})
	return err
}

// RecoveryCodes replaces the agent's recovery codes with ten new ones, returned once; each
// works once in place of a TOTP code. Agents may do this for themselves.
func (s *Service) RecoveryCodes(by Actor, name string) ([]string, error) {
	codes, hashes := s.newRecoveryCodes(name)
	err := s.change(by, "mfa.recovery", name, true, func(tx *store.Tx, r *record) (string, error) {
		r.Recovery = hashes
		return fmt.Sprintf("%d new recovery codes; old ones void", len(hashes)), nil
	})
	if err != nil {
		return nil, err
	}
	return codes, nil
}

// NewAppPassword makes a password for the agent's mail client (IMAP, SMTP submission), returned
// once. The web login never accepts it. Agents and admins may do this for themselves; auditors
// get none (ErrForbidden), whoever asks.
func (s *Service) NewAppPassword(by Actor, name, label string) (password string, err error) {
	pw := newAppPassword()
	id := shortID()
	err = s.change(by, "apppassword.new", name, true, func(tx *store.Tx, r *record) (string, error) {
		if err := checkLabel(label); err != nil {
			return "", err
		}
		if r.Role == RoleAuditor {
			return "", errNoAuditorApps
		}
		if len(r.Apps) >= maxAppPasswords {
			return "", fmt.Errorf("%w: %d app passwords exist already; revoke one first", ErrInvalid, len(r.Apps))
		}
		r.Apps = append(r.Apps, appRecord{
			AppPassword: AppPassword{ID: id, Label: label, Created: s.now().UTC()},
			Hash:        s.codeMAC("app", name, normalizeCode(pw)),
		})
		return fmt.Sprintf("id=%s label=%s", id, strconv.Quote(label)), nil
	})
	if err != nil {
		return "", err
	}
	return pw, nil
}

// errNoAuditorApps: app passwords open IMAP and submission, which serve and send ticket mail;
// auditors read the audit log and no tickets, so they have nothing to use one for.
var errNoAuditorApps = fmt.Errorf("%w: auditors have no app passwords (IMAP and submission are for ticket mail, which auditors do not read)", ErrForbidden)

// RevokeAppPassword deletes one app password by id. Agents may do this for themselves.
func (s *Service) RevokeAppPassword(by Actor, name, id string) error {
	return s.change(by, "apppassword.revoke", name, true, func(tx *store.Tx, r *record) (string, error) {
		i := slices.IndexFunc(r.Apps, func(a appRecord) bool { return a.ID == id })
		if i < 0 {
			return "", appPasswordNotFound(id)
		}
		label := r.Apps[i].Label
		r.Apps = slices.Delete(r.Apps, i, i+1)
		return fmt.Sprintf("id=%s label=%s", id, strconv.Quote(label)), nil
	})
}

// EndSessions ends every session of the agent ("log out everywhere"). Agents may do this for
// themselves; their current session ends too.
func (s *Service) EndSessions(by Actor, name string) error {
	return s.change(by, "session.end_all", name, true, func(tx *store.Tx, r *record) (string, error) {
		r.Epoch++
		return "", nil
	})
}

// ResetPassword gives the agent a new generated password, returned once, and ends its
// sessions: what an admin does for an agent who forgot theirs. The TOTP secret and the app
// passwords stay, so the agent's authenticator and mail clients keep working.
func (s *Service) ResetPassword(by Actor, name string) (string, error) {
	pw := newPassword()
	if err := s.SetPassword(by, name, pw); err != nil {
		return "", err
	}
	return pw, nil
}

// AppPasswords lists the agent's app passwords (label, created, last use; never the secret).
// Agents may list their own.
func (s *Service) AppPasswords(by Actor, name string) ([]AppPassword, error) {
	if err := authorize(by, name, true); err != nil {
		return nil, fmt.Errorf("app passwords of %s: %w", safeName(name), err)
	}
	a, err := s.Get(name)
	if err != nil {
		return nil, err
	}
	return a.AppPasswords, nil
}

// appPasswordNotFound is ErrNotFound (so callers answer 404) with a message about the app
// password, not the agent, which does exist.
type appPasswordNotFound string

func (e appPasswordNotFound) Error() string {
	return "no app password with id " + strconv.QuoteToASCII(clip(string(e), 32)) + " (agent app-passwords NAME lists them)"
}

func (e appPasswordNotFound) Unwrap() error { return ErrNotFound }
