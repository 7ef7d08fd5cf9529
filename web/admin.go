package web

import (
	"bytes"
	"encoding/base64"
	"html/template"
	"image/png"
	"net/http"
	"slices"

	"github.com/pquerna/otp"

	"mailgate/access"
	"mailgate/audit"
)

type adminView struct {
	base
	Agents []access.Agent
	Queues []string
	Roles  []access.Role
	// Shown once, right after they were made.
	NewName  string
	Password string
	TOTPURI  string
	TOTPQR   template.URL // data: PNG of TOTPURI, made here so no script or remote service sees the secret
}

// qrCode renders an otpauth:// URI as a PNG data URL ("" when it cannot).
func qrCode(uri string) template.URL {
	key, err := otp.NewKeyFromURL(uri)
	if err != nil {
		return ""
	}
	img, err := key.Image(200, 200)
	if err != nil {
		return ""
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return ""
	}
	return template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(buf.Bytes()))
}

// isAdmin refuses, with an audit event, anyone but an admin.
func (s *Server) isAdmin(w http.ResponseWriter, r *http.Request) bool {
	a := info(r).actor
	if a.Role == access.RoleAdmin {
		return true
	}
	s.webEvent(r, a.Name, "admin.view", audit.Denied, "role "+string(a.Role)+" is not admin")
	s.errorPage(w, r, http.StatusForbidden, "Only admins manage agents.")
	return false
}

func (s *Server) adminPage(w http.ResponseWriter, r *http.Request) {
	if !s.isAdmin(w, r) {
		return
	}
	s.showAdmin(w, r, http.StatusOK, &adminView{})
}

func (s *Server) showAdmin(w http.ResponseWriter, r *http.Request, status int, v *adminView) {
	notice, msg := v.Notice, v.Error
	v.base = s.base(r, "Agents")
	v.Notice, v.Error = notice, msg
	agents, err := s.opts.Access.List()
	if err != nil {
		s.internalError(w, r, "list agents", err)
		return
	}
	v.Agents = agents
	for _, q := range s.opts.Tickets.Queues() {
		v.Queues = append(v.Queues, q.Name)
	}
	v.Roles = []access.Role{access.RoleAgent, access.RoleAdmin, access.RoleAuditor}
	if v.TOTPURI != "" {
		v.TOTPQR = qrCode(v.TOTPURI)
	}
	s.render(w, r, status, "admin", v)
}

func (s *Server) adminPost(w http.ResponseWriter, r *http.Request) {
	if !s.isAdmin(w, r) {
		return
	}
	a := info(r).actor
	f := r.PostForm
	name := f.Get("name")
	queues := slices.DeleteFunc(slices.Clone(f["queue"]), func(q string) bool { return q == "" })
	v := &adminView{}
	var err error
	// Dangerous actions need the "I mean it" box of that agent's row: a slip of the mouse, or a
	// form for another row, does not lock anyone out.
	if act := f.Get("action"); (act == "disable" || act == "reset-mfa") && f.Get("confirm") != name {
		v.Error = "Nothing done: tick “I mean it” in " + name + "'s row to " + act + "."
		s.showAdmin(w, r, http.StatusBadRequest, v)
		return
	}
	switch f.Get("action") {
	case "add":
		// A new account's secrets are a way in (an admin's, even): a session alone must not
		// mint them, as for the other credentials (issue 11.7).
		if err = s.stepUp(r, "agent.add"); err != nil {
			break
		}
		v.Password, v.TOTPURI, err = s.opts.Access.Add(a, name, f.Get("email"), access.Role(f.Get("role")), queues)
		if err == nil {
			v.NewName = name
			v.Notice = "Agent " + name + " added. Give them the password and the TOTP secret below over a safe channel; they are shown only this once."
		}
	case "disable":
		if err = s.opts.Access.Disable(a, name); err == nil {
			v.Notice = "Agent " + name + " is disabled; their sessions have ended."
		}
	case "enable":
		if err = s.opts.Access.Enable(a, name); err == nil {
			v.Notice = "Agent " + name + " may log in again."
		}
	case "reset-mfa":
		if err = s.stepUp(r, "mfa.reset"); err != nil {
			break
		}
		if v.TOTPURI, err = s.opts.Access.ResetMFA(a, name); err == nil {
			v.NewName = name
			v.Notice = "Agent " + name + " has a new TOTP secret (below, shown only this once); their recovery codes and sessions have ended."
		}
	case "queues":
		if err = s.opts.Access.SetQueues(a, name, queues); err == nil {
			v.Notice = "Queues of " + name + " are updated."
		}
	case "role":
		if err = s.opts.Access.SetRole(a, name, access.Role(f.Get("role"))); err == nil {
			v.Notice = "Role of " + name + " is now " + f.Get("role") + "."
		}
	case "reset-password":
		if err = s.stepUp(r, "agent.password"); err != nil {
			break
		}
		if v.Password, err = s.opts.Access.ResetPassword(a, name); err == nil {
			v.NewName = name
			v.Notice = "Agent " + name + " has a new password (below, shown only this once); their sessions have ended. TOTP and app passwords are unchanged."
		}
	case "revoke-app-password":
		if err = s.opts.Access.RevokeAppPassword(a, name, f.Get("id")); err == nil {
			v.Notice = "App password " + f.Get("id") + " of " + name + " is revoked."
		}
	default:
		s.errorPage(w, r, http.StatusBadRequest, "Unknown action.")
		return
	}
	if err != nil {
		status, msg := accessError(err)
		if status == 0 {
			s.internalError(w, r, "agent admin", err)
			return
		}
		v.Error = msg
		s.showAdmin(w, r, status, v)
		return
	}
	s.showAdmin(w, r, http.StatusOK, v)
}
