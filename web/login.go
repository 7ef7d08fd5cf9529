package web

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"mailgate/access"
	"mailgate/audit"
)

type loginView struct {
	base
	Username string
	Name     string // the agent the code step is for
}

// loginPage shows the form even to someone logged in: logging in again (as another agent, say)
// replaces the session.
func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.showLogin(w, r, http.StatusOK, "", "")
}

func (s *Server) showLogin(w http.ResponseWriter, r *http.Request, status int, username, msg string) {
	v := &loginView{base: s.base(r, "Log in"), Username: username}
	v.CSRF = s.preToken(s.ensurePre(w, r))
	v.Error = msg
	s.render(w, r, status, "login", v)
}

func (s *Server) showCode(w http.ResponseWriter, r *http.Request, status int, name, msg string) {
	v := &loginView{base: s.base(r, "Log in: code"), Name: name}
	v.CSRF = s.preToken(s.ensurePre(w, r))
	v.Error = msg
	s.render(w, r, status, "code", v)
}

// loginCSRF checks the pre-session token of a login form; a failure is audited.
func (s *Server) loginCSRF(w http.ResponseWriter, r *http.Request) bool {
	if !s.parseForm(w, r) {
		return false
	}
	if !s.checkPre(r) {
		s.webEvent(r, "", "web.csrf", audit.Denied, "missing or wrong CSRF token on the login form")
		s.showLogin(w, r, http.StatusForbidden, "", "This form has expired. Enter your user name and password again.")
		return false
	}
	return true
}

// loginError maps what access answered to a status and a message that says what to do.
func loginError(err error) (int, string) {
	if wait, ok := access.RetryAfter(err); ok {
		secs := int((wait + time.Second - 1) / time.Second)
		return http.StatusTooManyRequests, fmt.Sprintf("Too many failed logins: try again in %d s.", secs)
	}
	switch {
	case errors.Is(err, access.ErrBadLogin):
		return http.StatusUnauthorized, "Wrong user name, password or code."
	case errors.Is(err, access.ErrDisabled):
		return http.StatusForbidden, "This account is disabled: ask an admin."
	case errors.Is(err, access.ErrLoginExpired):
		return http.StatusUnauthorized, "The login took too long or had too many wrong codes: enter your password again."
	}
	return 0, ""
}

func (s *Server) loginPassword(w http.ResponseWriter, r *http.Request) {
	if !s.loginCSRF(w, r) {
		return
	}
	name := r.PostForm.Get("username")
	p, err := s.opts.Access.CheckPassword(name, r.PostForm.Get("password"), r.RemoteAddr)
	if err != nil {
		status, msg := loginError(err)
		if status == 0 {
			s.internalError(w, r, "login", err)
			return
		}
		s.showLogin(w, r, status, clip(name, 64), msg)
		return
	}
	s.setCookie(w, loginCookie, p.Token, max(time.Second, p.Expires.Sub(s.opts.Now())))
	http.Redirect(w, r, "/login/code", http.StatusSeeOther)
}

// pending returns the login in progress named by the login cookie.
func (s *Server) pending(r *http.Request) (*access.Pending, error) {
	c, err := r.Cookie(loginCookie)
	if err != nil {
		return nil, access.ErrLoginExpired
	}
	return s.opts.Access.ResumeLogin(c.Value)
}

func (s *Server) codePage(w http.ResponseWriter, r *http.Request) {
	p, err := s.pending(r)
	if err != nil {
		s.clearCookie(w, loginCookie)
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	s.showCode(w, r, http.StatusOK, p.Name, "")
}

func (s *Server) loginCode(w http.ResponseWriter, r *http.Request) {
	if !s.loginCSRF(w, r) {
		return
	}
	p, err := s.pending(r)
	var a *access.Agent
	if err == nil {
		a, err = s.opts.Access.CheckCode(p, r.PostForm.Get("code"), r.RemoteAddr)
	}
	if err != nil {
		status, msg := loginError(err)
		switch {
		case status == 0:
			s.internalError(w, r, "login code", err)
		case errors.Is(err, access.ErrLoginExpired) || errors.Is(err, access.ErrDisabled):
			s.clearCookie(w, loginCookie)
			s.showLogin(w, r, status, "", msg)
		case p == nil:
			s.showLogin(w, r, status, "", msg)
		default:
			s.showCode(w, r, status, p.Name, msg)
		}
		return
	}
	id, _, err := s.opts.Access.NewSession(a, r.RemoteAddr)
	if err != nil {
		s.internalError(w, r, "new session", err)
		return
	}
	// A new id at every login (no session fixation); a session this browser held before ends.
	if old, err := r.Cookie(sessionCookie); err == nil && old.Value != "" {
		if err := s.opts.Access.EndSession(old.Value, r.RemoteAddr); err != nil && !errors.Is(err, access.ErrNoSession) {
			s.log.Warn("ending the previous session failed", "rid", info(r).id, "err", err)
		}
	}
	s.clearCookie(w, loginCookie)
	s.setCookie(w, sessionCookie, id, 0)
	info(r).actor = a.Actor(r.RemoteAddr)
	http.Redirect(w, r, home(a.Role), http.StatusSeeOther)
}

// home is where a role starts: auditors have no tickets, only the audit log.
func home(role access.Role) string {
	if role == access.RoleAuditor {
		return "/audit"
	}
	return "/tickets"
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	ri := info(r)
	if err := s.opts.Access.EndSession(ri.sessID, r.RemoteAddr); err != nil && !errors.Is(err, access.ErrNoSession) {
		s.internalError(w, r, "logout", err)
		return
	}
	s.clearCookie(w, sessionCookie)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
