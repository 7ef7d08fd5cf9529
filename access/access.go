// Package access owns mailgate's agents: roles, queue membership, password (argon2id) and TOTP
// checks, recovery codes, app passwords, login throttling and server-side sessions.
// It decides who someone is and what their role allows; it must not render HTML or speak HTTP.
package access

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"mailgate/audit"
	"mailgate/store"
)

// Role is what an agent may do.
type Role string

// Roles. Admins see and change everything; agents work the queues they belong to; auditors read
// the audit log and nothing that changes tickets.
const (
	RoleAdmin   Role = "admin"
	RoleAgent   Role = "agent"
	RoleAuditor Role = "auditor"
)

// Valid reports whether r is one of the three roles.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleAgent || r == RoleAuditor }

// Actor is who performs an action; passed to tickets and audit. Remote is "ip:port", "ctl", or "".
type Actor struct {
	Name   string
	Role   Role
	Queues []string
	Remote string
}

// InQueue reports whether the actor may see queue q: admins every queue, agents the queues they
// belong to, auditors none.
func (a Actor) InQueue(q string) bool {
	switch a.Role {
	case RoleAdmin:
		return true
	case RoleAgent:
		return q != "" && slices.Contains(a.Queues, q)
	}
	return false
}

// CanWrite reports whether the actor may reply, add notes or change status in queue q: an admin,
// or an agent of that queue; never an auditor.
func (a Actor) CanWrite(q string) bool {
	return (a.Role == RoleAdmin || a.Role == RoleAgent) && a.InQueue(q)
}

// CanAudit reports whether the actor may read the audit log.
func (a Actor) CanAudit() bool { return a.Role == RoleAdmin || a.Role == RoleAuditor }

// Ctl is the actor of admin commands over the control socket.
var Ctl = Actor{Name: "ctl", Role: RoleAdmin, Remote: "ctl"}

// system is the actor of what mailgate does by itself (the first admin in dev mode).
var system = Actor{Name: "mailgate", Role: RoleAdmin}

// AppPassword describes one app password; the secret itself is never kept or shown again.
type AppPassword struct {
	ID       string    `json:"id"`
	Label    string    `json:"label"`
	Created  time.Time `json:"created"`
	LastUsed time.Time `json:"last_used,omitzero"`
}

// Agent is an account as other packages see it: no password hash, no TOTP secret.
type Agent struct {
	Name     string    `json:"name"`
	Email    string    `json:"email"`
	Role     Role      `json:"role"`
	Queues   []string  `json:"queues"`
	Disabled bool      `json:"disabled"`
	Created  time.Time `json:"created"`
	// MFAEnrolled is true once a code from the current TOTP secret has been accepted, so the
	// agent's authenticator holds it; false right after Add or ResetMFA.
	MFAEnrolled bool `json:"mfa_enrolled"`
	// RecoveryCodesLeft counts the unused recovery codes.
	RecoveryCodesLeft int           `json:"recovery_codes_left"`
	AppPasswords      []AppPassword `json:"app_passwords"`

	// loggedIn is set only by CheckCode: NewSession accepts nothing else, so no code path can
	// turn an Agent from Get or CheckAppPassword into a web session.
	loggedIn time.Time
}

// Actor returns the agent acting from remote.
func (a *Agent) Actor(remote string) Actor {
	return Actor{Name: a.Name, Role: a.Role, Queues: slices.Clone(a.Queues), Remote: remote}
}

// Errors. Compare with errors.Is; ErrThrottled with errors.As (or RetryAfter).
var (
	// ErrBadLogin is the one answer for an unknown agent, a wrong password, a wrong code.
	ErrBadLogin = errors.New("wrong user name, password or code")
	// ErrDisabled: the credentials were right but the account is disabled.
	ErrDisabled = errors.New("this account is disabled: ask an admin")
	// ErrLoginExpired: the step between password and code timed out or was used up; start again.
	ErrLoginExpired = errors.New("the login took too long or had too many wrong codes: enter the password again")
	// ErrNoSession: the session id is unknown, expired, or its agent was disabled.
	ErrNoSession = errors.New("no such session (expired or logged out)")
	// ErrNotFound: no agent of that name (admin operations only; logins answer ErrBadLogin).
	ErrNotFound = errors.New("no such agent")
	// ErrExists: the name is taken.
	ErrExists = errors.New("an agent of that name exists")
	// ErrForbidden: the actor's role does not allow the operation.
	ErrForbidden = errors.New("not allowed for this role")
	// ErrInvalid wraps every input that fails validation; the message says what to fix.
	ErrInvalid = errors.New("invalid")
	// ErrLastAdmin: the change would leave no enabled admin.
	ErrLastAdmin = errors.New("this would leave no enabled admin; add or enable another admin first")
	// ErrNotLoggedIn: NewSession was given an Agent that did not come from CheckCode.
	ErrNotLoggedIn = errors.New("a session needs an agent that just passed CheckCode")
)

// ErrThrottled says that logins for this account or from this address are paused.
type ErrThrottled struct {
	RetryAfter time.Duration
}

func (e ErrThrottled) Error() string {
	return fmt.Sprintf("too many failed logins: try again in %s", e.RetryAfter.Round(time.Second))
}

// RetryAfter reports how long to wait when err is an ErrThrottled.
func RetryAfter(err error) (time.Duration, bool) {
	var t ErrThrottled
	if errors.As(err, &t) {
		return t.RetryAfter, true
	}
	var tp *ErrThrottled
	if errors.As(err, &tp) && tp != nil {
		return tp.RetryAfter, true
	}
	return 0, false
}

// Argon2Params are argon2id's cost parameters.
type Argon2Params struct {
	Time      uint32 // passes
	MemoryKiB uint32
	Threads   uint8
}

// DefaultArgon2 is RFC 9106 section 4's second recommended option (t=3, 64 MiB, p=4), meant for
// machines that cannot spend 2 GiB per hash. It costs well under a second on one core; the
// number of hashes running at once is capped (Options.HashConcurrency) so a flood of logins
// cannot exhaust memory.
var DefaultArgon2 = Argon2Params{Time: 3, MemoryKiB: 64 * 1024, Threads: 4}

// Limit is one throttle: Free failures pass, each further one locks the key for Base, doubling
// up to Max. One failure is forgotten per Leak of quiet, so slow typos never add up.
type Limit struct {
	Free int
	Base time.Duration
	Max  time.Duration
	Leak time.Duration
}

// fill sets every zero field of l from def.
func (l *Limit) fill(def Limit) {
	if l.Free <= 0 {
		l.Free = def.Free
	}
	if l.Base <= 0 {
		l.Base = def.Base
	}
	if l.Max < l.Base {
		l.Max = max(def.Max, l.Base)
	}
	if l.Leak <= 0 {
		l.Leak = def.Leak
	}
}

// Options tunes New; the zero value gives the documented defaults.
type Options struct {
	Issuer          string           // TOTP issuer shown in authenticator apps; default "mailgate"
	Now             func() time.Time // clock, for tests; default time.Now
	Argon2          Argon2Params     // default DefaultArgon2
	HashConcurrency int              // argon2 hashes at once; default max(2, GOMAXPROCS)
	SessionIdle     time.Duration    // default 30 min
	SessionAbsolute time.Duration    // default 12 h
	PendingTTL      time.Duration    // time between password and code; default 5 min
	// AccountLimit throttles one account name (known or not, so it reveals nothing) from one
	// client address (IPv6 per /64): guesses from one address never lock the agent out at
	// another. Default 5 free, 1 s doubling to 15 min, one failure forgotten per 10 min.
	AccountLimit Limit
	// AccountCeiling throttles one account name over all addresses together, so guessing from
	// many addresses is still capped; it is far above AccountLimit (default 50 free, 1 s
	// doubling to 15 min, one failure forgotten per minute), so only a distributed attack, never
	// one address, can lock the agent out everywhere.
	AccountCeiling Limit
	// IPLimit throttles per client address (IPv6 per /64); default 20 free, 1 s doubling to
	// 15 min, one failure forgotten per minute.
	IPLimit Limit
	// KnownQueue, when set, rejects queue names it does not know (config's [[queue]] names).
	KnownQueue func(name string) bool
	Logger     *slog.Logger
}

func (o *Options) defaults() {
	if o.Issuer == "" {
		o.Issuer = "mailgate"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Argon2.Time == 0 || o.Argon2.MemoryKiB == 0 || o.Argon2.Threads == 0 {
		o.Argon2 = DefaultArgon2
	}
	if o.HashConcurrency <= 0 {
		o.HashConcurrency = max(2, runtime.GOMAXPROCS(0))
	}
	if o.SessionIdle <= 0 {
		o.SessionIdle = 30 * time.Minute
	}
	if o.SessionAbsolute <= 0 {
		o.SessionAbsolute = 12 * time.Hour
	}
	if o.PendingTTL <= 0 {
		o.PendingTTL = 5 * time.Minute
	}
	o.AccountLimit.fill(Limit{Free: 5, Base: time.Second, Max: 15 * time.Minute, Leak: 10 * time.Minute})
	o.AccountCeiling.fill(Limit{Free: 50, Base: time.Second, Max: 15 * time.Minute, Leak: time.Minute})
	o.IPLimit.fill(Limit{Free: 20, Base: time.Second, Max: 15 * time.Minute, Leak: time.Minute})
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Service is the access API. It is safe for concurrent use.
type Service struct {
	db   *store.DB
	log  *audit.Log
	opts Options

	hashSlots chan struct{} // bounds concurrent argon2 runs (64 MiB each by default)

	pairs    *throttle // (account, address)
	accounts *throttle // account, all addresses: the ceiling
	ips      *throttle // address

	mu      sync.Mutex
	pending map[string]*pendingLogin
}

// New returns the service over db, auditing to log.
func New(db *store.DB, log *audit.Log, opts Options) *Service {
	opts.defaults()
	return &Service{
		db:        db,
		log:       log,
		opts:      opts,
		hashSlots: make(chan struct{}, opts.HashConcurrency),
		pairs:     newThrottle(opts.AccountLimit),
		accounts:  newThrottle(opts.AccountCeiling),
		ips:       newThrottle(opts.IPLimit),
		pending:   map[string]*pendingLogin{},
	}
}

func (s *Service) now() time.Time { return s.opts.Now() }
