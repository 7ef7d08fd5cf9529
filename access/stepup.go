package access

import (
	"errors"
	"fmt"

	"mailgate/audit"
	"mailgate/store"
)

// ErrStepUp: the password or code given to StepUp is wrong.
var ErrStepUp = errors.New("the password or the code is wrong: this action needs your password and a current code")

// StepUp makes a logged-in agent prove again who it is, with its password and a TOTP or
// recovery code, before action (an audit action name such as "apppassword.new"). It guards
// what mints credentials or exports data: a session left open on an unlocked screen, or a
// stolen cookie, must not be enough for those. Nothing is remembered between calls, so every
// such action asks again.
//
// Every attempt is audited as "stepup" with action in the detail. Failures count toward the
// web login throttles of by.Name at by.Remote, and a locked account or address is refused
// with ErrThrottled. A TOTP code used here is used up, as at login.
func (s *Service) StepUp(by Actor, action, password, code string) error {
	const ev = "stepup"
	name := by.Name
	now := s.now()
	keys := webKeys(name, by.Remote)
	if err := s.throttled(keys, ev, name, by.Remote, now); err != nil {
		return err
	}
	var r *record
	if err := s.db.View(func(tx *store.Tx) error {
		var err error
		r, err = getRecord(tx, name)
		return err
	}); err != nil {
		return fmt.Errorf("re-authentication: %w", err)
	}
	if r == nil || r.Disabled {
		s.appendEvents(event(by, ev, name, audit.Denied, "for "+action+": no such enabled agent"))
		return fmt.Errorf("re-authentication: %w", ErrForbidden)
	}
	if ok, _ := s.verifyPassword(r.Password, password); !ok {
		s.loginFailed(keys, by, ev, name, "for "+action+": wrong password")
		return ErrStepUp
	}
	var (
		bad    error
		detail string
	)
	err := s.db.Update(func(tx *store.Tx) error {
		r, err := getRecord(tx, name)
		if err != nil {
			return err
		}
		if r == nil || r.Disabled {
			bad, detail = ErrForbidden, "no such enabled agent"
			return nil
		}
		if detail, bad, err = s.secondFactor(r, code, now); err != nil || bad != nil {
			return err
		}
		if err := putRecord(tx, r); err != nil {
			return err
		}
		return s.log.AppendTx(tx, event(by, ev, name, audit.OK, "for "+action+"; "+detail))
	})
	switch {
	case err != nil:
		return fmt.Errorf("re-authentication: %w", err)
	case bad == ErrForbidden:
		s.appendEvents(event(by, ev, name, audit.Denied, "for "+action+": "+detail))
		return fmt.Errorf("re-authentication: %w", ErrForbidden)
	case bad != nil:
		s.loginFailed(keys, by, ev, name, "for "+action+": "+detail)
		return ErrStepUp
	}
	return nil
}
