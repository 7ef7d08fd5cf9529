package web

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"sync"
	"time"

	"mailgate/access"
)

// pageNames are the templates under templates/, each rendered inside layout.html; reauth.html
// (the step-up fields) is available to every page.
var pageNames = []string{"login", "code", "tickets", "ticket", "account", "admin", "audit", "error", "canned"}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"size": func(n int) string {
		switch {
		case n >= 1<<20:
			return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
		case n >= 1<<10:
			return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
		}
		return fmt.Sprintf("%d bytes", n)
	},
	"join":     strings.Join,
	"ago":      ago,
	"mailtext": mailText,
	"whenIn":   whenIn,
}

// whenIn is t in the agent's time zone (UTC when none is set).
func whenIn(loc *time.Location, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	if loc == nil {
		loc = time.UTC
	}
	return t.In(loc).Format("2006-01-02 15:04 MST")
}

// ago says how long before now t was, the way a person would: "3 min ago", "2 h ago", "4 days ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%d days ago", int(d/(24*time.Hour)))
	}
}

func parsePages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/reauth.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// base is what every page's layout needs.
type base struct {
	Title  string
	Agent  *access.Agent // nil when nobody is logged in
	CSRF   string
	Notice string // what just succeeded
	Error  string // what just failed and what to do
	RID    string
	Loc    *time.Location // the agent's time zone for times on ticket pages
	Zones  []string
}

func (b *base) page() *base { return b }

// IsAdmin and CanAudit decide which links the menu shows; the handlers check again.
func (b *base) IsAdmin() bool { return b.Agent != nil && b.Agent.Role == access.RoleAdmin }

// CanAudit reports whether the menu shows the audit log.
func (b *base) CanAudit() bool {
	return b.Agent != nil && (b.Agent.Role == access.RoleAdmin || b.Agent.Role == access.RoleAuditor)
}

// CanTickets reports whether the menu shows the tickets.
func (b *base) CanTickets() bool {
	return b.Agent != nil && (b.Agent.Role == access.RoleAdmin || b.Agent.Role == access.RoleAgent)
}

func (s *Server) base(r *http.Request, title string) base {
	ri := info(r)
	b := base{Title: title, RID: ri.id}
	b.Loc = time.UTC
	if ri.sess != nil {
		b.Agent, b.CSRF = ri.sess.Agent, ri.sess.CSRF
		b.Loc = s.location(ri.sess.Agent.Name)
	}
	return b
}

type pager interface{ page() *base }

// render executes a page into a buffer first, so a template failure never sends half a page.
// pageBufs keeps page buffers between requests: a list page is ~60 KB, and growing a fresh
// buffer to that size allocated four times as much per request, all garbage at once.
var pageBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, name string, data pager) {
	buf := pageBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 1<<20 { // a page with a huge message is not kept
			pageBufs.Put(buf)
		}
	}()
	if err := s.pages[name].ExecuteTemplate(buf, "layout", data); err != nil {
		s.log.Error("render failed", "rid", info(r).id, "page", name, "err", err)
		http.Error(w, "internal error (request "+info(r).id+")", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

type errorView struct {
	base
	Status int
}

// errorPage answers status with a page saying what happened and what to do next.
func (s *Server) errorPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	v := &errorView{base: s.base(r, http.StatusText(status)), Status: status}
	v.Error = msg
	s.render(w, r, status, "error", v)
}

// internalError logs err with the request id and answers 500 without details.
func (s *Server) internalError(w http.ResponseWriter, r *http.Request, what string, err error) {
	s.log.Error(what, "rid", info(r).id, "err", err)
	s.errorPage(w, r, http.StatusInternalServerError, "Something went wrong on the server ("+what+"). Quote request "+info(r).id+" to your admin.")
}
