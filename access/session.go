package access

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"mailgate/audit"
	"mailgate/store"
)

// sessionsBucket keys each session by SHA-256 of its id: the id the client holds is never in
// the file, so a copy of the database (a backup) cannot be used to take over sessions.
const sessionsBucket = "sessions"

// lastSeenSlack: LastSeen is rewritten at most once a minute per session, not on every request.
// The idle limit therefore errs early by up to this much, never late.
const lastSeenSlack = time.Minute

type sessionRecord struct {
	Name     string    `json:"name"`
	CSRF     string    `json:"csrf"`
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"last_seen"`
	Epoch    uint64    `json:"epoch"`
	Remote   string    `json:"remote"`
}

// Session is a logged-in agent as the web layer sees it.
type Session struct {
	// Agent is read from the store on every call, so role and queue changes apply at once and a
	// disabled agent's sessions are gone.
	Agent    *Agent
	CSRF     string // per-session token for forms; compare in constant time
	Created  time.Time
	LastSeen time.Time
	Expires  time.Time // the sooner of the idle and the absolute limit
	Remote   string    // where the session was created
}

// CheckCSRF reports whether token is the session's CSRF token, in constant time.
func (s *Session) CheckCSRF(token string) bool {
	return s != nil && s.CSRF != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.CSRF)) == 1
}

// sessionKey checks an id's form and returns its store key.
func sessionKey(id string) ([]byte, bool) {
	if len(id) != 43 {
		return nil, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(raw) != 32 {
		return nil, false
	}
	h := sha256.Sum256(raw)
	return h[:], true
}

// NewSession starts a session for an agent that has just passed CheckCode (within
// Options.PendingTTL) and returns its id (256 random bits; give it to the client as the cookie)
// and CSRF token. Each login gets a new id; sessions from earlier logins go on until they expire
// or end.
func (s *Service) NewSession(a *Agent, remote string) (id, csrf string, err error) {
	now := s.now()
	if a == nil || a.loggedIn.IsZero() || now.Sub(a.loggedIn) > s.opts.PendingTTL {
		return "", "", ErrNotLoggedIn
	}
	id, csrf = token(), token()
	key, _ := sessionKey(id)
	err = s.db.Update(func(tx *store.Tx) error {
		r, err := getRecord(tx, a.Name)
		if err != nil {
			return err
		}
		if r == nil {
			return ErrNotFound
		}
		if r.Disabled {
			return ErrDisabled
		}
		b, err := json.Marshal(sessionRecord{Name: r.Name, CSRF: csrf, Created: now.UTC(), LastSeen: now.UTC(),
			Epoch: r.Epoch, Remote: clip(remote, 100)})
		if err != nil {
			return err
		}
		return tx.Put(sessionsBucket, key, b)
	})
	if err != nil {
		return "", "", fmt.Errorf("new session for %s: %w", safeName(a.Name), err)
	}
	return id, csrf, nil
}

func getSession(tx *store.Tx, key []byte) (*sessionRecord, error) {
	v, err := tx.Get(sessionsBucket, key)
	if err != nil || v == nil {
		return nil, err
	}
	var sr sessionRecord
	if err := json.Unmarshal(v, &sr); err != nil {
		return nil, fmt.Errorf("session record: %w", err)
	}
	return &sr, nil
}

// expired says why a session is no longer valid, or "".
func (s *Service) expired(sr *sessionRecord, r *record, now time.Time) string {
	switch {
	case r == nil:
		return "agent removed"
	case r.Disabled:
		return "agent disabled"
	case r.Epoch != sr.Epoch:
		return "sessions ended"
	case now.Sub(sr.LastSeen) >= s.opts.SessionIdle:
		return "idle"
	case now.Sub(sr.Created) >= s.opts.SessionAbsolute:
		return "absolute limit"
	}
	return ""
}

// Session returns the live session of id, or ErrNoSession. It refreshes LastSeen (at most once
// a minute, so reads stay reads) and deletes sessions it finds expired.
func (s *Service) Session(id string) (*Session, error) {
	key, ok := sessionKey(id)
	if !ok {
		return nil, ErrNoSession
	}
	now := s.now()
	var (
		sr *sessionRecord
		r  *record
	)
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		if sr, err = getSession(tx, key); err != nil || sr == nil {
			return err
		}
		r, err = getRecord(tx, sr.Name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	if sr == nil {
		return nil, ErrNoSession
	}
	if why := s.expired(sr, r, now); why != "" {
		if err := s.db.Batch(func(tx *store.Tx) error { return tx.Delete(sessionsBucket, key) }); err != nil {
			return nil, fmt.Errorf("end expired session: %w", err)
		}
		return nil, fmt.Errorf("%w (%s)", ErrNoSession, why)
	}
	if now.Sub(sr.LastSeen) >= lastSeenSlack {
		err := s.db.Batch(func(tx *store.Tx) error {
			cur, err := getSession(tx, key)
			if err != nil || cur == nil { // ended meanwhile: leave it ended
				return err
			}
			cur.LastSeen = now.UTC()
			b, err := json.Marshal(cur)
			if err != nil {
				return err
			}
			return tx.Put(sessionsBucket, key, b)
		})
		if err != nil {
			return nil, fmt.Errorf("session: %w", err)
		}
		sr.LastSeen = now.UTC()
	}
	exp := sr.LastSeen.Add(s.opts.SessionIdle)
	if abs := sr.Created.Add(s.opts.SessionAbsolute); abs.Before(exp) {
		exp = abs
	}
	return &Session{Agent: r.agent(), CSRF: sr.CSRF, Created: sr.Created, LastSeen: sr.LastSeen, Expires: exp, Remote: sr.Remote}, nil
}

// EndSession is logout: it deletes the session and audits "logout". An unknown or expired id
// answers ErrNoSession.
func (s *Service) EndSession(id string, remote string) error {
	key, ok := sessionKey(id)
	if !ok {
		return ErrNoSession
	}
	err := s.db.Update(func(tx *store.Tx) error {
		sr, err := getSession(tx, key)
		if err != nil {
			return err
		}
		if sr == nil {
			return ErrNoSession
		}
		if err := tx.Delete(sessionsBucket, key); err != nil {
			return err
		}
		return s.log.AppendTx(tx, event(Actor{Name: sr.Name, Remote: remote}, "logout", sr.Name, audit.OK, ""))
	})
	if errors.Is(err, ErrNoSession) {
		return ErrNoSession
	}
	if err != nil {
		return fmt.Errorf("logout: %w", err)
	}
	return nil
}

// PruneSessions deletes expired sessions that nobody came back to. It walks the sessions bucket,
// so run it from a timer (hourly), never on a request path.
func (s *Service) PruneSessions() (int, error) {
	now := s.now()
	n := 0
	err := s.db.Update(func(tx *store.Tx) error {
		n = 0
		agents := map[string]*record{}
		var dead [][]byte
		err := tx.ForEach(sessionsBucket, func(k, v []byte) error {
			var sr sessionRecord
			if err := json.Unmarshal(v, &sr); err != nil {
				dead = append(dead, k) // unreadable: useless to anyone
				return nil
			}
			r, seen := agents[sr.Name]
			if !seen {
				var err error
				if r, err = getRecord(tx, sr.Name); err != nil {
					return err
				}
				agents[sr.Name] = r
			}
			if s.expired(&sr, r, now) != "" {
				dead = append(dead, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range dead {
			if err := tx.Delete(sessionsBucket, k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune sessions: %w", err)
	}
	return n, nil
}
