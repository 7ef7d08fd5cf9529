package web

import (
	"errors"
	"net/http"

	"mailgate/access"
)

type accountView struct {
	base
	Me *access.Agent
	// Shown once, right after they were made; never stored by web.
	RecoveryCodes []string
	AppPassword   string
	AppLabel      string
}

// accessError maps what access answered to a status and a message saying what to do; the
// messages of ErrInvalid and friends are written for people already.
func accessError(err error) (int, string) {
	if status, msg := loginError(err); status != 0 && !errors.Is(err, access.ErrBadLogin) {
		return status, msg
	}
	switch {
	case errors.Is(err, access.ErrStepUp):
		return http.StatusForbidden, "Your password or code is wrong. This action needs both: enter your password and a current code again."
	case errors.Is(err, access.ErrBadLogin):
		return http.StatusBadRequest, "The current password is wrong."
	case errors.Is(err, access.ErrForbidden):
		return http.StatusForbidden, "Your role does not allow this."
	case errors.Is(err, access.ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, access.ErrExists):
		return http.StatusConflict, err.Error()
	case errors.Is(err, access.ErrInvalid), errors.Is(err, access.ErrLastAdmin):
		return http.StatusBadRequest, err.Error()
	}
	return 0, ""
}

// stepUp checks the reauth_password and reauth_code fields (templates/reauth.html) of a form
// that mints credentials, resets MFA or exports the audit log: the session alone is not enough
// for those (access.StepUp audits and throttles every attempt).
func (s *Server) stepUp(r *http.Request, action string) error {
	f := r.PostForm
	return s.opts.Access.StepUp(info(r).actor, action, f.Get("reauth_password"), f.Get("reauth_code"))
}

func (s *Server) accountPage(w http.ResponseWriter, r *http.Request) {
	s.showAccount(w, r, http.StatusOK, &accountView{})
}

func (s *Server) showAccount(w http.ResponseWriter, r *http.Request, status int, v *accountView) {
	notice, msg := v.Notice, v.Error
	v.base = s.base(r, "Account")
	v.Notice, v.Error = notice, msg
	me, err := s.opts.Access.Get(info(r).actor.Name) // fresh: app passwords and codes may just have changed
	if err != nil {
		s.internalError(w, r, "read account", err)
		return
	}
	v.Me = me
	v.Zones = commonZones
	s.render(w, r, status, "account", v)
}

func (s *Server) accountPost(w http.ResponseWriter, r *http.Request) {
	a := info(r).actor
	f := r.PostForm
	v := &accountView{}
	var err error
	switch f.Get("action") {
	case "password":
		if f.Get("new_password") != f.Get("new_password2") {
			v.Error = "The two new passwords differ: type the same one twice."
			s.showAccount(w, r, http.StatusBadRequest, v)
			return
		}
		if err = s.opts.Access.ChangePassword(a, f.Get("old_password"), f.Get("new_password")); err == nil {
			v.Notice = "Your password is changed."
		}
	case "recovery":
		if err = s.stepUp(r, "mfa.recovery"); err != nil {
			break
		}
		if v.RecoveryCodes, err = s.opts.Access.RecoveryCodes(a, a.Name); err == nil {
			v.Notice = "New recovery codes: write them down now, they are shown only this once. The old ones no longer work."
		}
	case "app-new":
		v.AppLabel = f.Get("label")
		if err = s.stepUp(r, "apppassword.new"); err != nil {
			break
		}
		if v.AppPassword, err = s.opts.Access.NewAppPassword(a, a.Name, v.AppLabel); err == nil {
			v.Notice = "New app password: enter it in your mail client now, it is shown only this once."
		}
	case "app-revoke":
		if err = s.opts.Access.RevokeAppPassword(a, a.Name, f.Get("id")); err == nil {
			v.Notice = "The app password is revoked."
		}
	case "end-sessions":
		if err = s.opts.Access.EndSessions(a, a.Name); err == nil {
			s.clearCookie(w, sessionCookie)
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
	default:
		s.errorPage(w, r, http.StatusBadRequest, "Unknown action.")
		return
	}
	if err != nil {
		status, msg := accessError(err)
		if status == 0 {
			s.internalError(w, r, "account change", err)
			return
		}
		v.Error = msg
		s.showAccount(w, r, status, v)
		return
	}
	s.showAccount(w, r, http.StatusOK, v)
}
