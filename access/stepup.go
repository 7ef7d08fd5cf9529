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
	_, detail, bad, err := s.useSecondFactor(by, ev, name, code, "for "+action+"; ", now)
	switch {
	case err != nil:
		return fmt.Errorf("re-authentication: %w", err)
	case bad == errNoAgent, bad == ErrDisabled:
		s.appendEvents(event(by, ev, name, audit.Denied, "for "+action+": "+detail))
		return fmt.Errorf("re-authentication: %w", ErrForbidden)
	case bad != nil:
		s.loginFailed(keys, by, ev, name, "for "+action+": "+detail)
		return ErrStepUp
	}
	return nil
}
