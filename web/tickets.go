package web

import (
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/tickets"
)

// pageSize is how many tickets one list page shows.
const pageSize = 50

var statuses = []tickets.Status{tickets.StatusNew, tickets.StatusOpen, tickets.StatusPending, tickets.StatusSolved, tickets.StatusClosed}

// parseID reads a decimal id the strict way: digits only, no sign, no leading zeros, no
// spaces, at least lowest. Anything else is not an id.
func parseID(s string, lowest uint64) (uint64, bool) {
	if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n < lowest {
		return 0, false
	}
	return n, true
}

// parseIndex is parseID for small indexes (message seq, attachment number).
func parseIndex(s string, lowest int) (int, bool) {
	n, ok := parseID(s, uint64(lowest))
	if !ok || n > 1<<31-1 {
		return 0, false
	}
	return int(n), true
}

// worksTickets reports whether the role works tickets at all. Auditors do not: they read the
// audit log and nothing that changes (or shows) tickets. A refusal is audited.
func (s *Server) worksTickets(w http.ResponseWriter, r *http.Request, action string) bool {
	a := info(r).actor
	if a.Role == access.RoleAdmin || a.Role == access.RoleAgent {
		return true
	}
	s.webEvent(r, a.Name, action, audit.Denied, "role "+string(a.Role)+" does not work tickets")
	s.errorPage(w, r, http.StatusForbidden, "Your role ("+string(a.Role)+") does not work tickets.")
	return false
}

// ticketError answers what tickets said: a ticket the agent may not see is 404 (tickets has
// audited the denial), an action it may not take 403, bad input 400 with what to fix.
func (s *Server) ticketError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, tickets.ErrNotFound):
		s.errorPage(w, r, http.StatusNotFound, "There is no such ticket, or it is not in your queues.")
	case errors.Is(err, tickets.ErrForbidden):
		s.errorPage(w, r, http.StatusForbidden, "You may read this ticket but not change it.")
	case errors.Is(err, tickets.ErrInvalid):
		s.errorPage(w, r, http.StatusBadRequest, err.Error())
	default:
		s.internalError(w, r, what, err)
	}
}

type listView struct {
	base
	Tickets  []tickets.Ticket
	Queues   []string
	Statuses []tickets.Status
	Queue    string
	Status   string
	Assignee string
	Page     int
	Prev     string
	Next     string
}

// visibleQueues are the configured queues a may see, in config order.
func (s *Server) visibleQueues(a access.Actor) []string {
	var out []string
	for _, q := range s.opts.Tickets.Queues() {
		if a.InQueue(q.Name) {
			out = append(out, q.Name)
		}
	}
	return out
}

func validAssignee(s string) bool {
	return len(s) <= 64 && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) })
}

func (s *Server) ticketList(w http.ResponseWriter, r *http.Request) {
	if !s.worksTickets(w, r, "ticket.list") {
		return
	}
	a := info(r).actor
	q := r.URL.Query()
	v := &listView{base: s.base(r, "Tickets"), Queues: s.visibleQueues(a), Statuses: statuses,
		Queue: q.Get("queue"), Status: q.Get("status"), Assignee: q.Get("assignee"), Page: 1}
	if v.Queue != "" && !slices.Contains(v.Queues, v.Queue) {
		s.webEvent(r, a.Name, "ticket.list", audit.Denied, "queue "+strconv.QuoteToASCII(clip(v.Queue, 64))+" is not among the agent's queues")
		s.errorPage(w, r, http.StatusNotFound, "There is no such queue among yours.")
		return
	}
	if v.Status != "" && !tickets.ValidStatus(tickets.Status(v.Status)) {
		s.errorPage(w, r, http.StatusBadRequest, "Unknown status: use new, open, pending, solved or closed.")
		return
	}
	if !validAssignee(v.Assignee) {
		s.errorPage(w, r, http.StatusBadRequest, "Unknown assignee: use an agent's user name.")
		return
	}
	if p := q.Get("page"); p != "" {
		n, ok := parseIndex(p, 1)
		if !ok || n > 100000 {
			s.errorPage(w, r, http.StatusBadRequest, "The page number must be a whole number from 1.")
			return
		}
		v.Page = n
	}
	list, err := s.opts.Tickets.List(a, tickets.Filter{Queue: v.Queue, Status: tickets.Status(v.Status),
		Assignee: v.Assignee, Offset: (v.Page - 1) * pageSize, Limit: pageSize + 1})
	if err != nil {
		s.ticketError(w, r, "list tickets", err)
		return
	}
	link := func(page int) string {
		return pageLink("/tickets", map[string]string{"queue": v.Queue, "status": v.Status, "assignee": v.Assignee}, page)
	}
	if len(list) > pageSize {
		list = list[:pageSize]
		v.Next = link(v.Page + 1)
	}
	if v.Page > 1 {
		v.Prev = link(v.Page - 1)
	}
	v.Tickets = list
	s.render(w, r, http.StatusOK, "tickets", v)
}

// msgView is one message of the thread as the page shows it. The message is a named field,
// not embedded: html/template resolves promoted fields by a slow reflective search, which cost
// more than everything else on the page.
type msgView struct {
	M          *tickets.Message
	Unverified bool          // inbound mail without a DMARC-aligned pass, or quarantined
	HasHTML    bool          // an HTML part exists
	ShowHTML   bool          // the agent asked to see it
	HTML       template.HTML // sanitised, no remote content
	HTMLURL    string
	Attach     []attachView
}

type attachView struct {
	Name        string
	ContentType string
	Size        int
	URL         string
}

type ticketView struct {
	base
	Ticket    *tickets.Ticket
	Messages  []msgView
	Statuses  []tickets.Status
	Assignees []string
	CanWrite  bool
}

func (s *Server) ticketPage(w http.ResponseWriter, r *http.Request) {
	a := info(r).actor
	id, ok := parseID(r.PathValue("id"), 1)
	if !ok {
		s.errorPage(w, r, http.StatusNotFound, "There is no such ticket: ticket numbers are whole numbers from 1.")
		return
	}
	showHTML := -1
	if h := r.URL.Query().Get("html"); h != "" {
		n, ok := parseIndex(h, 1)
		if !ok {
			s.errorPage(w, r, http.StatusBadRequest, "html= takes the number of a message.")
			return
		}
		showHTML = n
	}
	t, msgs, err := s.opts.Tickets.Get(a, id)
	if err != nil {
		s.ticketError(w, r, "show ticket", err)
		return
	}
	v := &ticketView{base: s.base(r, fmt.Sprintf("#%d %s", t.ID, t.Subject)), Ticket: t, Statuses: statuses, CanWrite: a.CanWrite(t.Queue)}
	v.Messages = make([]msgView, len(msgs))
	for i := range msgs {
		v.Messages[i] = s.messageView(t.ID, &msgs[i], msgs[i].Seq == showHTML)
	}
	if v.CanWrite {
		if v.Assignees, err = s.assignees(t.Queue); err != nil {
			s.internalError(w, r, "list agents", err)
			return
		}
	}
	s.render(w, r, http.StatusOK, "ticket", v)
}

func (s *Server) messageView(id uint64, m *tickets.Message, showHTML bool) msgView {
	mv := msgView{M: m, HasHTML: m.HTML != ""}
	mv.Unverified = m.Direction == tickets.In && (!m.Verified || m.Quarantined)
	if mv.HasHTML {
		mv.HTMLURL = fmt.Sprintf("/tickets/%d?html=%d#m%d", id, m.Seq, m.Seq)
		if showHTML {
			mv.ShowHTML = true
			mv.HTML = template.HTML(s.policy.Sanitize(m.HTML)) // sanitised: no script, handlers, remote content
		}
	}
	for _, at := range m.Attachments {
		// Names stored before SafeFilename dropped bidi controls are cleaned again here.
		mv.Attach = append(mv.Attach, attachView{Name: tickets.SafeFilename(at.Name, at.ContentType), ContentType: at.ContentType, Size: at.Size,
			URL: fmt.Sprintf("/tickets/%d/messages/%d/attachments/%d", id, m.Seq, at.Index)})
	}
	return mv
}

// assignees are the enabled agents who may work queue q.
func (s *Server) assignees(q string) ([]string, error) {
	agents, err := s.opts.Access.List()
	if err != nil {
		return nil, err
	}
	var out []string
	for i := range agents {
		ag := &agents[i]
		if !ag.Disabled && ag.Actor("").CanWrite(q) {
			out = append(out, ag.Name)
		}
	}
	return out, nil
}

func (s *Server) ticketPost(w http.ResponseWriter, r *http.Request) {
	action := r.PostForm.Get("action")
	known := map[string]bool{"reply": true, "note": true, "status": true, "assign": true, "link": true}
	what := "ticket.change" // never an attacker's string as an audit action
	if known[action] {
		what = "ticket." + action
	}
	if !s.worksTickets(w, r, what) {
		return
	}
	a := info(r).actor
	id, ok := parseID(r.PathValue("id"), 1)
	if !ok {
		s.errorPage(w, r, http.StatusNotFound, "There is no such ticket: ticket numbers are whole numbers from 1.")
		return
	}
	var err error
	switch action {
	case "reply":
		_, err = s.opts.Tickets.Reply(a, id, r.PostForm.Get("body"))
	case "note":
		_, err = s.opts.Tickets.AddNote(a, id, r.PostForm.Get("body"))
	case "status":
		err = s.opts.Tickets.SetStatus(a, id, tickets.Status(r.PostForm.Get("status")))
	case "assign":
		err = s.assign(a, id, r.PostForm.Get("assignee"))
	case "link":
		other, ok := parseID(strings.TrimPrefix(strings.TrimSpace(r.PostForm.Get("other")), "#"), 1)
		if !ok {
			err = fmt.Errorf("%w: write the number of the ticket to link, like 42", tickets.ErrInvalid)
			break
		}
		err = s.opts.Tickets.Link(a, id, other)
	default:
		s.errorPage(w, r, http.StatusBadRequest, "Unknown action: use reply, note, status, assign or link.")
		return
	}
	if err != nil {
		s.ticketError(w, r, "ticket "+action, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/tickets/%d", id), http.StatusSeeOther)
}

// assign checks against access that the new assignee may work the ticket's queue (tickets
// leaves that to the caller). Reading the queue goes through Get, so it is audited as a view.
func (s *Server) assign(a access.Actor, id uint64, name string) error {
	if name != "" {
		t, _, err := s.opts.Tickets.Get(a, id)
		if err != nil {
			return err
		}
		names, err := s.assignees(t.Queue)
		if err != nil {
			return err
		}
		if !slices.Contains(names, name) {
			if err := s.opts.Tickets.Denied(a, "ticket.assign", id, "assignee="+strconv.QuoteToASCII(clip(name, 64))+" is not an enabled agent of queue "+t.Queue); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s is not an enabled agent of queue %s", tickets.ErrInvalid, strconv.QuoteToASCII(clip(name, 64)), t.Queue)
		}
	}
	return s.opts.Tickets.Assign(a, id, name)
}

// safeTypes may keep their content type on download; everything else is application/octet-stream
// so no browser renders attacker-chosen HTML, SVG or script from our origin.
var safeTypes = map[string]bool{
	"image/png": true, "image/jpeg": true, "image/gif": true, "image/webp": true,
	"application/pdf": true, "text/plain": true, "text/csv": true,
	"application/zip": true,
}

func downloadType(ct string) string {
	base, _, _ := strings.Cut(strings.ToLower(strings.TrimSpace(ct)), ";")
	base = strings.TrimSpace(base)
	if safeTypes[base] {
		return base
	}
	return "application/octet-stream"
}

// contentDisposition builds an RFC 6266 attachment header: a plain ASCII filename for old
// clients and filename* (RFC 8187) with the UTF-8 name.
func contentDisposition(name string) string {
	var ascii strings.Builder
	for _, r := range name {
		switch {
		case r < 0x20 || r >= 0x7f || r == '"' || r == '\\' || r == '%' || r == ';':
			ascii.WriteByte('_')
		default:
			ascii.WriteRune(r)
		}
	}
	fallback := ascii.String()
	if strings.Trim(fallback, "_.") == "" {
		fallback = "attachment"
	}
	var enc strings.Builder
	for _, b := range []byte(name) {
		if b < 0x80 && (b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || strings.IndexByte("!#$&+-.^_`|~", b) >= 0) {
			enc.WriteByte(b)
		} else {
			fmt.Fprintf(&enc, "%%%02X", b)
		}
	}
	return fmt.Sprintf(`attachment; filename="%s"; filename*=UTF-8''%s`, fallback, enc.String())
}

func (s *Server) attachment(w http.ResponseWriter, r *http.Request) {
	if !s.worksTickets(w, r, "attachment.download") {
		return
	}
	id, ok1 := parseID(r.PathValue("id"), 1)
	seq, ok2 := parseIndex(r.PathValue("seq"), 1)
	i, ok3 := parseIndex(r.PathValue("i"), 0)
	if !ok1 || !ok2 || !ok3 {
		s.errorPage(w, r, http.StatusNotFound, "There is no such attachment.")
		return
	}
	att, data, err := s.opts.Tickets.Attachment(info(r).actor, id, seq, i)
	if err != nil {
		s.ticketError(w, r, "download attachment", err)
		return
	}
	name := tickets.SafeFilename(att.Name, att.ContentType)
	h := w.Header()
	h.Set("Content-Type", downloadType(att.ContentType))
	h.Set("Content-Disposition", contentDisposition(name))
	// Should a browser render it anyway, it gets no script, no plugins, no origin.
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'; frame-ancestors 'none'")
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	w.Write(data)
}

// pageLink is the URL of page of a filtered listing at path: only the filters that are set,
// and no page parameter for the first page.
func pageLink(path string, filters map[string]string, page int) string {
	u := url.Values{}
	for k, val := range filters {
		if val != "" {
			u.Set(k, val)
		}
	}
	if page > 1 {
		u.Set("page", strconv.Itoa(page))
	}
	if len(u) == 0 {
		return path
	}
	return path + "?" + u.Encode()
}
