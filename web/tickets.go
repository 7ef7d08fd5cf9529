package web

import (
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

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
	Rows     template.HTML // the rows of the table, escaped
	Queues   []string
	Statuses []tickets.Status
	Views    []viewTab
	Sorts    []viewTab
	Queue    string
	Status   string
	Assignee string
	Search   string
	View     string
	Sort     string
	Now      time.Time
	Total    int
	Page     int
	Pages    int
	First    string
	Prev     string
	Next     string
	Last     string
}

// listRows writes the list's rows. A page of 50 rows through html/template cost about 50
// reflective calls a row (a field lookup and an escaper per value): 2-3 ms, more than finding
// the tickets among 100,000. Here each value goes through htmlEscape, which escapes exactly
// as html/template does in these text and quoted-attribute places; TestListRowsAsTheTemplate
// holds the two outputs equal for hostile values.
func listRows(ts []tickets.Ticket, now time.Time, loc *time.Location) template.HTML {
	var b strings.Builder
	b.Grow(len(ts) * 1200)
	for i := range ts {
		t := &ts[i]
		id := strconv.FormatUint(t.ID, 10)
		b.WriteString(`<tr class="status-`)
		htmlEscape(&b, string(t.Status))
		if t.Unverified {
			b.WriteString(` risk`)
		}
		b.WriteString(`" id="t` + id + `">` + "\n")
		b.WriteString(`<td data-label="#"><a href="/tickets/` + id + `">` + id + `</a></td>` + "\n")
		b.WriteString(`<td data-label="Subject" class="subject"><a href="/tickets/` + id + `">`)
		if t.Subject != "" {
			htmlEscape(&b, t.Subject)
		} else {
			b.WriteString(`(no subject)`)
		}
		b.WriteString(`</a>`)
		if t.Unverified || t.Quarantined || t.Bounced || t.AutoReply || t.Encrypted {
			b.WriteString(`<br>`)
		}
		if t.Quarantined {
			b.WriteString(`<span class="badge warn flag-quarantined">quarantined</span>`)
		} else if t.Unverified {
			b.WriteString(`<span class="badge warn flag-unverified">unverified sender</span>`)
		}
		if t.Bounced {
			b.WriteString(`<span class="badge warn flag-bounced">reply bounced</span>`)
		}
		if t.AutoReply {
			b.WriteString(`<span class="badge flag-auto">auto-reply</span>`)
		}
		if t.Encrypted {
			b.WriteString(`<span class="badge ok flag-encrypted">encrypted</span>`)
		}
		b.WriteString("</td>\n" + `<td data-label="Customer" class="customer">`)
		if t.Unverified {
			b.WriteString(`<span class="unverified-addr" title="not verified: may be spoofed">⚠ `)
			htmlEscape(&b, t.Customer)
			b.WriteString(`</span>`)
		} else {
			htmlEscape(&b, t.Customer)
		}
		b.WriteString("</td>\n" + `<td data-label="Waiting since" class="waiting">`)
		if t.Waiting.IsZero() {
			b.WriteString(`<span class="hint">answered</span>`)
		} else {
			b.WriteString(`<time datetime="` + t.Waiting.UTC().Format("2006-01-02T15:04:05Z") + `" title="`)
			htmlEscape(&b, whenIn(loc, t.Waiting))
			b.WriteString(`">`)
			htmlEscape(&b, ago(now, t.Waiting))
			b.WriteString(`</time>`)
		}
		b.WriteString("</td>\n" + `<td data-label="Status">`)
		htmlEscape(&b, string(t.Status))
		b.WriteString(`</td><td data-label="Assignee">`)
		if t.Assignee != "" {
			htmlEscape(&b, t.Assignee)
		} else {
			b.WriteString(`<span class="hint">nobody</span>`)
		}
		b.WriteString(`</td><td data-label="Queue">`)
		htmlEscape(&b, t.Queue)
		b.WriteString("</td>\n" + `<td data-label="Last activity"><time title="`)
		htmlEscape(&b, whenIn(loc, t.Updated))
		b.WriteString(`">`)
		htmlEscape(&b, ago(now, t.Updated))
		b.WriteString("</time></td>\n</tr>\n")
	}
	return template.HTML(b.String()) // built from escaped pieces only
}

// htmlEscaper is html/template's escaping of text and of quoted attribute values.
var htmlEscaper = strings.NewReplacer("\x00", "\uFFFD", `"`, "&#34;", "'", "&#39;", "&", "&amp;", "+", "&#43;", "<", "&lt;", ">", "&gt;")

func htmlEscape(b *strings.Builder, s string) { htmlEscaper.WriteString(b, s) }

// viewTab is one link of the view or sort bar.
type viewTab struct {
	Name, Label, URL string
	Count            int
	Current          bool
}

var viewLabels = map[string]string{tickets.ViewOpen: "All open", tickets.ViewMine: "Mine", tickets.ViewUnassigned: "Unassigned",
	tickets.ViewAttention: "Attention", tickets.ViewAll: "All"}

var sortLabels = []struct{ name, label string }{
	{tickets.SortWaiting, "waiting longest"}, {tickets.SortActivity, "last activity"}, {tickets.SortNumber, "number"},
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
		Queue: q.Get("queue"), Status: q.Get("status"), Assignee: q.Get("assignee"), Search: strings.TrimSpace(q.Get("q")),
		View: q.Get("view"), Sort: q.Get("sort"), Page: 1, Now: s.opts.Now()}
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
	if !tickets.ValidView(v.View) || !tickets.ValidSort(v.Sort) {
		s.errorPage(w, r, http.StatusBadRequest, "Unknown view or sort: use the links above the list.")
		return
	}
	if len(v.Search) > 200 || !utf8.ValidString(v.Search) {
		s.errorPage(w, r, http.StatusBadRequest, "The search is too long: use at most 200 characters.")
		return
	}
	if v.View == "" {
		v.View = tickets.ViewOpen
		if v.Status != "" || v.Search != "" {
			v.View = tickets.ViewAll // a status or a search asks for tickets in any state
		}
	}
	if v.Sort == "" {
		v.Sort = tickets.SortWaiting
	}
	if p := q.Get("page"); p != "" {
		n, ok := parseIndex(p, 1)
		if !ok || n > 100000 {
			s.errorPage(w, r, http.StatusBadRequest, "The page number must be a whole number from 1.")
			return
		}
		v.Page = n
	}
	res, err := s.opts.Tickets.Work(a, tickets.ListQuery{View: v.View, Queue: v.Queue, Status: tickets.Status(v.Status),
		Assignee: v.Assignee, Search: v.Search, Sort: v.Sort, Offset: (v.Page - 1) * pageSize, Limit: pageSize})
	if err != nil {
		s.ticketError(w, r, "list tickets", err)
		return
	}
	link := func(view, sort string, page int) string {
		if view == tickets.ViewOpen && v.Status == "" && v.Search == "" {
			view = "" // the default
		}
		if sort == tickets.SortWaiting {
			sort = ""
		}
		return pageLink("/tickets", map[string]string{"view": view, "sort": sort, "queue": v.Queue, "status": v.Status,
			"assignee": v.Assignee, "q": v.Search}, page)
	}
	for _, name := range tickets.Views {
		v.Views = append(v.Views, viewTab{Name: name, Label: viewLabels[name], URL: link(name, v.Sort, 1), Count: res.Counts[name], Current: name == v.View})
	}
	for _, so := range sortLabels {
		v.Sorts = append(v.Sorts, viewTab{Name: so.name, Label: so.label, URL: link(v.View, so.name, 1), Current: so.name == v.Sort})
	}
	v.Rows, v.Total = listRows(res.Tickets, v.Now, v.Loc), res.Total
	v.Pages = max(1, (res.Total+pageSize-1)/pageSize)
	if v.Page > 1 {
		v.First, v.Prev = link(v.View, v.Sort, 1), link(v.View, v.Sort, min(v.Page-1, v.Pages))
	}
	if v.Page < v.Pages {
		v.Next, v.Last = link(v.View, v.Sort, v.Page+1), link(v.View, v.Sort, v.Pages)
	}
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
	Thread    []threadItem
	Statuses  []tickets.Status
	Assignees []string
	CanWrite  bool
	Now       time.Time
	// Seen is the message count the page shows: a reply posted from it is checked against it.
	Seen         int
	Draft        string
	Conflict     []string // what happened since the agent loaded the page, when a reply was held back
	Viewers      []viewer
	CustomerName string
	Others       []tickets.Ticket // the customer's other tickets
	AuditURL     string
	Sent         int // the message just sent, for the notice
	Canned       []cannedReply
	DraftCc      string
}

// threadItem is a message or an agent's change, in time order.
type threadItem struct {
	Msg   *msgView
	Event *tickets.Event
	New   bool // arrived after the page the agent replied from was loaded
}

func (s *Server) ticketPage(w http.ResponseWriter, r *http.Request) {
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
	sent := 0
	if v := r.URL.Query().Get("sent"); v != "" {
		sent, _ = parseIndex(v, 1)
	}
	var held *heldReply
	if c := r.URL.Query().Get("canned"); c != "" {
		n, ok := parseID(c, 1)
		if !ok {
			s.errorPage(w, r, http.StatusBadRequest, "canned= takes the number of a canned reply.")
			return
		}
		held = &heldReply{canned: n}
	}
	s.showTicket(w, r, http.StatusOK, id, showHTML, sent, held)
}

// heldReply is a reply the page did not send because the ticket changed under the agent.
type heldReply struct {
	seen  int
	draft string
	then  string
	what  []string
	// canned asks for a canned reply as the draft instead (nothing was held back).
	canned uint64
	cc     string
	files  bool // the held reply had attachments, which a page cannot put back
}

// replyOptions reads the reply form's copies (comma- or space-separated) and attachments.
func replyOptions(r *http.Request) (tickets.ReplyOptions, error) {
	var ro tickets.ReplyOptions
	ro.Cc = strings.FieldsFunc(r.PostForm.Get("cc"), func(c rune) bool { return c == ',' || c == ';' || unicode.IsSpace(c) })
	if r.MultipartForm == nil {
		return ro, nil
	}
	for _, fh := range r.MultipartForm.File["attach"] {
		if fh.Filename == "" && fh.Size == 0 {
			continue // the empty file input of a form sent without a file
		}
		f, err := fh.Open()
		if err != nil {
			return ro, err
		}
		data, err := io.ReadAll(io.LimitReader(f, tickets.MaxAttachmentBytes+1))
		f.Close()
		if err != nil {
			return ro, err
		}
		ro.Attachments = append(ro.Attachments, tickets.ParsedAttachment{Name: fh.Filename, ContentType: fh.Header.Get("Content-Type"), Data: data})
	}
	return ro, nil
}

func (s *Server) showTicket(w http.ResponseWriter, r *http.Request, status int, id uint64, showHTML, sent int, held *heldReply) {
	a := info(r).actor
	t, msgs, err := s.opts.Tickets.Get(a, id)
	if err != nil {
		s.ticketError(w, r, "show ticket", err)
		return
	}
	now := s.opts.Now()
	v := &ticketView{base: s.base(r, fmt.Sprintf("#%d %s", t.ID, t.Subject)), Ticket: t, Statuses: statuses, CanWrite: a.CanWrite(t.Queue),
		Now: now, Seen: t.Messages, Sent: sent}
	v.Messages = make([]msgView, len(msgs))
	for i := range msgs {
		v.Messages[i] = s.messageView(t.ID, &msgs[i], msgs[i].Seq == showHTML)
	}
	v.Thread = thread(v.Messages, t.Events)
	if v.CanWrite {
		if v.Canned, err = s.cannedList(t.Queue); err != nil {
			s.internalError(w, r, "list canned replies", err)
			return
		}
	}
	if held != nil && held.canned != 0 {
		c, ok := s.canned(held.canned, t.Queue)
		if !ok || !v.CanWrite {
			s.errorPage(w, r, http.StatusNotFound, "There is no such canned reply for this queue.")
			return
		}
		v.Draft = fillCanned(c.Text, t, a.Name)
		s.webEvent(r, a.Name, "canned.use", audit.OK, fmt.Sprintf("ticket=%d canned=%d", t.ID, c.ID))
		held = nil
	}
	if held != nil {
		v.Draft, v.Conflict, v.DraftCc = held.draft, held.what, held.cc
		if held.files {
			v.Conflict = append(v.Conflict, "(attach your files again: a page cannot keep them)")
		}
		for i := range v.Thread {
			if m := v.Thread[i].Msg; m != nil && m.M.Seq > held.seen {
				v.Thread[i].New = true
			}
		}
	}
	if p, ok := t.Participant(t.Customer); ok && p.Verified {
		v.CustomerName = p.Name // an unverified sender's display name is theirs to choose: not shown as the customer's
	}
	if v.Others, err = s.opts.Tickets.CustomerTickets(a, t, 10); err != nil {
		s.internalError(w, r, "customer's tickets", err)
		return
	}
	if a.CanAudit() {
		v.AuditURL = "/audit?object=" + url.QueryEscape(fmt.Sprintf("ticket/%d", t.ID))
	}
	v.Viewers = s.viewers.seen(t.ID, a.Name, now)
	if v.CanWrite {
		if v.Assignees, err = s.assignees(t.Queue); err != nil {
			s.internalError(w, r, "list agents", err)
			return
		}
	}
	switch {
	case sent > 0:
		v.Notice = "Your reply is queued for delivery."
		if sent <= len(v.Messages) && v.Messages[sent-1].M.Direction == tickets.Note {
			v.Notice = "Your note is added."
		}
	case held != nil:
		v.Error = "Not sent: the ticket changed since you opened it. Read what is new below, then send again."
	}
	s.render(w, r, status, "ticket", v)
}

// thread interleaves messages and events by time; events after the last message go last.
func thread(msgs []msgView, events []tickets.Event) []threadItem {
	out := make([]threadItem, 0, len(msgs)+len(events))
	j := 0
	for i := range msgs {
		at := msgs[i].M.Received
		if at.IsZero() {
			at = msgs[i].M.Date
		}
		for j < len(events) && events[j].Time.Before(at) {
			out = append(out, threadItem{Event: &events[j]})
			j++
		}
		out = append(out, threadItem{Msg: &msgs[i]})
	}
	for ; j < len(events); j++ {
		out = append(out, threadItem{Event: &events[j]})
	}
	return out
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
	var m *tickets.Message
	then := r.PostForm.Get("then")
	if then != "" && !tickets.ValidStatus(tickets.Status(then)) {
		s.errorPage(w, r, http.StatusBadRequest, "Unknown status: use new, open, pending, solved or closed.")
		return
	}
	switch action {
	case "reply":
		if held := s.heldBack(a, id, r.PostForm.Get("seen"), r.PostForm.Get("body"), then); held != nil {
			held.cc = r.PostForm.Get("cc")
			held.files = r.MultipartForm != nil && len(r.MultipartForm.File["attach"]) > 0
			s.showTicket(w, r, http.StatusConflict, id, -1, 0, held)
			return
		}
		var ro tickets.ReplyOptions
		if ro, err = replyOptions(r); err != nil {
			break
		}
		if m, err = s.opts.Tickets.ReplyWith(a, id, r.PostForm.Get("body"), ro); err == nil && then != "" {
			err = s.opts.Tickets.SetStatus(a, id, tickets.Status(then))
		}
	case "note":
		m, err = s.opts.Tickets.AddNote(a, id, r.PostForm.Get("body"))
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
	if m != nil {
		// The page jumps to the new message and says it went.
		http.Redirect(w, r, fmt.Sprintf("/tickets/%d?sent=%d#m%d", id, m.Seq, m.Seq), http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/tickets/%d", id), http.StatusSeeOther)
}

// heldBack decides whether a reply must wait for the agent to see what changed since the page
// was loaded (seen is the message count the page showed): a new customer message, or another
// agent's reply. nil means send.
func (s *Server) heldBack(a access.Actor, id uint64, seenField, draft, then string) *heldReply {
	seen, ok := parseIndex(seenField, 0)
	if !ok {
		return nil // a form without the field (a script, an old page): nothing to compare with
	}
	n, ok := s.opts.Tickets.MessageCount(a, id)
	if !ok || n <= seen {
		return nil
	}
	what, err := s.opts.Tickets.Since(a, id, seen)
	if err != nil || len(what) == 0 {
		return nil
	}
	return &heldReply{seen: seen, draft: draft, then: then, what: what}
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
