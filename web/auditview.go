package web

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"mailgate/audit"
)

// auditPageSize is how many events one audit page shows.
const auditPageSize = 100

// verifyEvery bounds how often a page view walks the whole chain: Verify reads every event, and
// an auditor paging through results must not cost that each time. The page says when it checked.
const verifyEvery = time.Minute

type verifyCache struct {
	mu      sync.Mutex
	checked time.Time
	count   int
	err     error
}

type chainStatus struct {
	OK      bool
	Count   int
	Problem string
	Checked time.Time
}

func (s *Server) chain(force bool) chainStatus {
	c := &s.verified
	c.mu.Lock()
	defer c.mu.Unlock()
	now := s.opts.Now()
	if force || c.checked.IsZero() || now.Sub(c.checked) >= verifyEvery || now.Before(c.checked) {
		c.count, c.err = s.opts.Audit.Verify()
		c.checked = now
	}
	st := chainStatus{OK: c.err == nil, Count: c.count, Checked: c.checked}
	if c.err != nil {
		st.Problem = c.err.Error()
	}
	return st
}

type auditView struct {
	base
	Events  []audit.Event
	Chain   chainStatus
	Actor   string
	Action  string
	Object  string
	Result  string
	Since   string
	Results []string
	Page    int
	Prev    string
	Next    string
}

// parseSince takes what people and the date input write: RFC 3339, "2006-01-02T15:04" or a date (UTC).
func parseSince(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func (s *Server) auditPage(w http.ResponseWriter, r *http.Request) {
	a := info(r).actor
	if !a.CanAudit() {
		s.webEvent(r, a.Name, "audit.view", audit.Denied, "role "+string(a.Role)+" may not read the audit log")
		s.errorPage(w, r, http.StatusForbidden, "Only admins and auditors read the audit log.")
		return
	}
	q := r.URL.Query()
	v := &auditView{base: s.base(r, "Audit log"), Actor: q.Get("actor"), Action: q.Get("action"), Object: q.Get("object"),
		Result: q.Get("result"), Since: q.Get("since"), Page: 1,
		Results: []string{audit.OK, audit.Denied, audit.Failed}}
	f := audit.Filter{Actor: clip(v.Actor, 200), Action: clip(v.Action, 200), Object: clip(v.Object, 200), Result: v.Result, Limit: auditPageSize + 1}
	if v.Result != "" && v.Result != audit.OK && v.Result != audit.Denied && v.Result != audit.Failed {
		s.errorPage(w, r, http.StatusBadRequest, "Unknown result: use ok, denied or failed.")
		return
	}
	if v.Since != "" {
		t, ok := parseSince(v.Since)
		if !ok {
			s.errorPage(w, r, http.StatusBadRequest, "Write since as 2025-01-31 or 2025-01-31T08:00 (UTC).")
			return
		}
		f.Since = t
	}
	if p := q.Get("page"); p != "" {
		n, ok := parseIndex(p, 1)
		if !ok || n > 1000000 {
			s.errorPage(w, r, http.StatusBadRequest, "The page number must be a whole number from 1.")
			return
		}
		v.Page = n
	}
	// The view is recorded before it is read, so it appears in what the auditor sees.
	detail := fmt.Sprintf("actor=%s action=%s object=%s result=%s since=%s page=%d",
		strconv.QuoteToASCII(f.Actor), strconv.QuoteToASCII(f.Action), strconv.QuoteToASCII(f.Object), v.Result, strconv.QuoteToASCII(clip(v.Since, 40)), v.Page)
	if err := s.opts.Audit.Append(audit.Event{Actor: a.Name, Action: "audit.view", Object: "audit", Remote: a.Remote, Result: audit.OK, Detail: detail}); err != nil {
		s.internalError(w, r, "audit the audit view", err)
		return
	}
	events, err := s.opts.Audit.Query(f, (v.Page-1)*auditPageSize)
	if err != nil {
		s.internalError(w, r, "read audit log", err)
		return
	}
	link := func(page int) string {
		return pageLink("/audit", map[string]string{"actor": v.Actor, "action": v.Action, "object": v.Object, "result": v.Result, "since": v.Since}, page)
	}
	if len(events) > auditPageSize {
		events = events[:auditPageSize]
		v.Next = link(v.Page + 1)
	}
	if v.Page > 1 {
		v.Prev = link(v.Page - 1)
	}
	v.Events = events
	v.Chain = s.chain(q.Get("verify") == "1")
	s.render(w, r, http.StatusOK, "audit", v)
}

// auditExport sends the audit log as JSON lines (what `mailgate audit export` writes) after the
// password and code are entered again: the export holds every agent's and customer's activity.
func (s *Server) auditExport(w http.ResponseWriter, r *http.Request) {
	a := info(r).actor
	if !a.CanAudit() {
		s.webEvent(r, a.Name, "audit.export", audit.Denied, "role "+string(a.Role)+" may not read the audit log")
		s.errorPage(w, r, http.StatusForbidden, "Only admins and auditors read the audit log.")
		return
	}
	var f audit.Filter
	since := r.PostForm.Get("since")
	if since != "" {
		t, ok := parseSince(since)
		if !ok {
			s.errorPage(w, r, http.StatusBadRequest, "Write since as 2025-01-31 or 2025-01-31T08:00 (UTC).")
			return
		}
		f.Since = t
	}
	if err := s.stepUp(r, "audit.export"); err != nil {
		status, msg := accessError(err)
		if status == 0 {
			s.internalError(w, r, "audit export step-up", err)
			return
		}
		s.errorPage(w, r, status, msg)
		return
	}
	// Recorded before the read, so the export holds its own event.
	ev := audit.Event{Actor: a.Name, Action: "audit.export", Object: "audit", Remote: a.Remote, Result: audit.OK,
		Detail: "web; since=" + strconv.QuoteToASCII(clip(since, 40))}
	if err := s.opts.Audit.Append(ev); err != nil {
		s.internalError(w, r, "audit the audit export", err)
		return
	}
	// Buffered, so a slow download does not hold a read transaction open.
	var buf bytes.Buffer
	if err := s.opts.Audit.Export(&buf, f); err != nil {
		s.internalError(w, r, "audit export", err)
		return
	}
	name := "mailgate-audit-" + s.opts.Now().UTC().Format("20060102T150405Z") + ".jsonl"
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}
