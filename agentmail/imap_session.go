package agentmail

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/tickets"
)

// Rechecks of the mailbox index when no Notify came: tickets adds some messages without calling
// its Notify hook (system notes written by outbound), and a missed hook must not hide mail for
// long. The check reads index keys only.
const (
	pollRecheck = 15 * time.Second
	idleRecheck = 30 * time.Second
)

// Refusals, worded so an agent understands what to do instead.
var (
	errReadOnlyView = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
		Text: "mailgate's IMAP view of the queues is read-only; answer a ticket by sending your reply through mailgate's submission server"}
	errNoMailboxChange = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
		Text: "mailboxes here are mailgate's queues; they cannot be created, deleted or renamed"}
	errExamined = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
		Text: "the mailbox was opened with EXAMINE (read-only); SELECT it to change \\Seen"}
	errOnlySeen = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
		Text: "only \\Seen can be changed in this read-only view of the queue"}
	errNoExpunge = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
		Text: "messages cannot be deleted from a queue's mailbox; close the ticket on the web page instead"}
	errTemporary = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable,
		Text: "temporary problem reading the store; try again"}
)

// session is one IMAP connection.
type session struct {
	srv    *IMAPServer
	conn   *imapserver.Conn
	remote string
	loop   bool // the peer is on the loopback interface

	agent *access.Agent // nil until login
	actor access.Actor
	sel   *selected
}

// selected is the state of a selected mailbox. Only the session's own goroutine (and its
// IDLE goroutine, while no command runs) touches it, except pending and wake.
type selected struct {
	queue    string // "" is the empty INBOX
	agent    string
	readOnly bool
	validity uint32
	entries  []tickets.MailboxEntry // what the client was told: sequence number i+1 is entries[i]
	seen     map[uint32]bool
	loaded   time.Time

	wake    chan struct{} // cap 1: a pending wake-up stands for any number of events
	mu      sync.Mutex
	pending []flagChange // \Seen changes by the agent's other sessions
}

type flagChange struct {
	uid  uint32
	seen bool
}

func (sel *selected) wakeUp() {
	select {
	case sel.wake <- struct{}{}:
	default:
	}
}

func (sel *selected) queueFlags(ch []flagChange) {
	sel.mu.Lock()
	sel.pending = append(sel.pending, ch...)
	sel.mu.Unlock()
	sel.wakeUp()
}

func (sel *selected) takeFlags() []flagChange {
	sel.mu.Lock()
	defer sel.mu.Unlock()
	p := sel.pending
	sel.pending = nil
	return p
}

func (sel *selected) flags(uid uint32) []imap.Flag {
	if sel.seen[uid] {
		return []imap.Flag{imap.FlagSeen}
	}
	return []imap.Flag{}
}

// seqOf returns the sequence number of uid, 0 when the client does not know it.
func (sel *selected) seqOf(uid uint32) uint32 {
	i := sort.Search(len(sel.entries), func(i int) bool { return sel.entries[i].UID >= uid })
	if i < len(sel.entries) && sel.entries[i].UID == uid {
		return uint32(i + 1)
	}
	return 0
}

func (sel *selected) uidNext() uint32 {
	if n := len(sel.entries); n > 0 {
		return sel.entries[n-1].UID + 1
	}
	return 1
}

func (s *IMAPServer) newSession(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	nc := c.NetConn()
	return &session{srv: s, conn: c, remote: remoteString(nc), loop: isLoopback(nc.RemoteAddr())}, nil, nil
}

func (s *session) Close() error {
	if s.sel != nil {
		s.srv.unwatch(s.sel)
		s.sel = nil
	}
	return nil
}

// Login accepts app passwords only; LOGIN and AUTHENTICATE PLAIN both end here.
func (s *session) Login(user, pass string) error {
	// go-imap refuses login before TLS unless the listener is loopback; this second check
	// holds even if a listener is ever served with the wrong server.
	if !isTLS(s.conn.NetConn()) && !s.loop {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodePrivacyRequired, Text: "TLS is required to log in: use STARTTLS or port 993"}
	}
	ag, err := login(s.srv.opts.Access, user, pass, s.remote)
	if err != nil {
		switch classifyLogin(err) {
		case loginThrottled:
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: err.Error()}
		case loginDisabled:
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeContactAdmin, Text: err.Error()}
		case loginInternal:
			s.srv.log.Error("app password check failed", "remote", s.remote, "err", err)
			return errTemporary
		}
		return imapserver.ErrAuthFailed
	}
	s.agent, s.actor = ag, ag.Actor(s.remote)
	s.srv.log.Info("imap login", "agent", ag.Name, "remote", s.remote)
	return nil
}

// refresh reloads the agent, so a disabled account or a changed queue membership takes effect
// at the next command rather than at the next login.
func (s *session) refresh() error {
	ag, err := s.srv.opts.Access.Get(s.agent.Name)
	if err != nil && !errors.Is(err, access.ErrNotFound) {
		s.srv.log.Error("reload agent", "agent", s.agent.Name, "err", err)
		return errTemporary
	}
	if err != nil || ag.Disabled {
		// The session outlived the account: audited like any refusal (a failed write only
		// loses the record of a session that ends anyway).
		if aerr := s.auditEvent("imap.session", "agent/"+s.agent.Name, audit.Denied, "account disabled or removed; connection closed"); aerr != nil {
			s.srv.log.Error("audit", "err", aerr)
		}
		s.conn.Bye("this account was disabled or removed")
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeContactAdmin, Text: "account disabled"}
	}
	s.agent, s.actor = ag, ag.Actor(s.remote)
	if s.sel != nil && s.sel.queue != "" && !s.actor.InQueue(s.sel.queue) {
		if aerr := s.auditEvent("imap.session", "queue/"+s.sel.queue, audit.Denied, "no longer in the selected queue; connection closed"); aerr != nil {
			s.srv.log.Error("audit", "err", aerr)
		}
		s.srv.unwatch(s.sel)
		s.sel = nil
		s.conn.Bye("you no longer belong to this queue")
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNoPerm, Text: "you no longer belong to this queue"}
	}
	return nil
}

// queues returns the queues the agent may see, in config order.
func (s *session) queues() []string {
	var out []string
	for _, q := range s.srv.opts.Tickets.Queues() {
		if s.actor.InQueue(q.Name) {
			out = append(out, q.Name)
		}
	}
	return out
}

func mailboxName(queue string) string {
	if strings.EqualFold(queue, "INBOX") {
		return "INBOX"
	}
	return queue
}

// lookup maps a mailbox name to a queue the agent may see; "" with ok is the empty INBOX.
func (s *session) lookup(name string) (queue string, ok bool) {
	inbox := strings.EqualFold(name, "INBOX")
	for _, q := range s.queues() {
		if (inbox && strings.EqualFold(q, "INBOX")) || (!inbox && q == name) {
			return q, true
		}
	}
	return "", inbox
}

func (s *session) auditEvent(action, object, result, detail string) error {
	return s.srv.auditEvent(audit.Event{Actor: s.actor.Name, Action: action, Object: object, Remote: s.remote, Result: result, Detail: detail})
}

func mailboxObject(queue, name string) string {
	if queue == "" {
		return "mailbox/" + clip(cleanOneLine(name), 100)
	}
	return "queue/" + queue
}

func (s *session) Select(name string, o *imap.SelectOptions) (*imap.SelectData, error) {
	if err := s.refresh(); err != nil {
		return nil, err
	}
	if s.sel != nil {
		s.srv.unwatch(s.sel)
		s.sel = nil
	}
	action, mode := "imap.select", "select"
	if o.ReadOnly {
		mode = "examine"
	}
	queue, ok := s.lookup(name)
	if !ok {
		if err := s.auditEvent(action, mailboxObject("", name), audit.Denied, "mode="+mode+": no such mailbox, or not one of the agent's queues"); err != nil {
			return nil, err
		}
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: "no such mailbox: LIST shows your queues"}
	}
	sel := &selected{queue: queue, agent: s.agent.Name, readOnly: o.ReadOnly, wake: make(chan struct{}, 1), seen: map[uint32]bool{}}
	if queue != "" {
		// Watch first: a message added while loading wakes the session, nothing is missed.
		s.srv.watch(sel)
		var err error
		if sel.validity, sel.entries, err = s.srv.opts.Tickets.Mailbox(queue, 0); err == nil {
			sel.seen, err = s.srv.seen.load(s.agent.Name, queue)
		}
		if err != nil {
			s.srv.unwatch(sel)
			s.srv.log.Error("select", "queue", queue, "err", err)
			return nil, errTemporary
		}
		sel.loaded = time.Now()
	}
	if sel.validity == 0 {
		// A queue that never had mail has no UIDVALIDITY yet; 1 is replaced by tickets' value
		// when the first message arrives, and a client holding nothing loses nothing.
		sel.validity = 1
	}
	if err := s.auditEvent(action, mailboxObject(queue, name), audit.OK, fmt.Sprintf("mode=%s messages=%d", mode, len(sel.entries))); err != nil {
		s.srv.unwatch(sel)
		return nil, err
	}
	s.sel = sel
	data := &imap.SelectData{
		Flags:          []imap.Flag{imap.FlagSeen},
		PermanentFlags: []imap.Flag{imap.FlagSeen},
		NumMessages:    uint32(len(sel.entries)),
		UIDNext:        imap.UID(sel.uidNext()),
		UIDValidity:    sel.validity,
	}
	if o.ReadOnly {
		data.PermanentFlags = []imap.Flag{}
	}
	for i, e := range sel.entries {
		if !sel.seen[e.UID] {
			data.FirstUnseenSeqNum = uint32(i + 1)
			break
		}
	}
	return data, nil
}

func (s *session) Unselect() error {
	if s.sel != nil {
		s.srv.unwatch(s.sel)
		s.sel = nil
	}
	return nil
}

func (s *session) Create(string, *imap.CreateOptions) error         { return errNoMailboxChange }
func (s *session) Delete(string) error                              { return errNoMailboxChange }
func (s *session) Rename(string, string, *imap.RenameOptions) error { return errNoMailboxChange }

// Subscribe and Unsubscribe succeed and change nothing: every queue is always subscribed.
func (s *session) Subscribe(string) error   { return nil }
func (s *session) Unsubscribe(string) error { return nil }

func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, o *imap.ListOptions) error {
	if err := s.refresh(); err != nil {
		return err
	}
	if len(patterns) == 0 {
		// LIST "" "": the hierarchy delimiter (RFC 3501 6.3.8).
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: '/', Mailbox: ""})
	}
	names := []string{}
	hasInbox := false
	for _, q := range s.queues() {
		n := mailboxName(q)
		hasInbox = hasInbox || n == "INBOX"
		names = append(names, n)
	}
	if !hasInbox {
		names = append([]string{"INBOX"}, names...)
	}
	for _, n := range names {
		for _, p := range patterns {
			if imapserver.MatchList(n, '/', ref, p) || (n == "INBOX" && imapserver.MatchList(n, '/', ref, strings.ToUpper(p))) {
				if err := w.WriteList(&imap.ListData{Delim: '/', Mailbox: n}); err != nil {
					return err
				}
				break
			}
		}
	}
	return nil
}

func (s *session) Status(name string, o *imap.StatusOptions) (*imap.StatusData, error) {
	if o.Size || o.DeletedStorage {
		return nil, &imap.Error{Type: imap.StatusResponseTypeBad, Text: "STATUS SIZE and DELETED-STORAGE are not supported here"}
	}
	if err := s.refresh(); err != nil {
		return nil, err
	}
	queue, ok := s.lookup(name)
	if !ok {
		if err := s.auditEvent("imap.status", mailboxObject("", name), audit.Denied, "no such mailbox, or not one of the agent's queues"); err != nil {
			return nil, err
		}
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: "no such mailbox: LIST shows your queues"}
	}
	var validity uint32
	var entries []tickets.MailboxEntry
	seen := map[uint32]bool{}
	if queue != "" {
		var err error
		if validity, entries, err = s.srv.opts.Tickets.Mailbox(queue, 0); err == nil && o.NumUnseen {
			seen, err = s.srv.seen.load(s.agent.Name, queue)
		}
		if err != nil {
			s.srv.log.Error("status", "queue", queue, "err", err)
			return nil, errTemporary
		}
	}
	if validity == 0 {
		validity = 1
	}
	n, zero := uint32(len(entries)), uint32(0)
	unseen := uint32(0)
	for _, e := range entries {
		if !seen[e.UID] {
			unseen++
		}
	}
	next := uint32(1)
	if len(entries) > 0 {
		next = entries[len(entries)-1].UID + 1
	}
	return &imap.StatusData{
		Mailbox: mailboxName(name), NumMessages: &n, NumRecent: &zero, NumUnseen: &unseen, NumDeleted: &zero,
		UIDNext: imap.UID(next), UIDValidity: validity,
	}, nil
}

func (s *session) Append(string, imap.LiteralReader, *imap.AppendOptions) (*imap.AppendData, error) {
	return nil, errReadOnlyView
}

func (s *session) Copy(imap.NumSet, string) (*imap.CopyData, error) {
	return nil, errReadOnlyView
}

// Expunge refuses EXPUNGE and UID EXPUNGE. CLOSE also calls it, and CLOSE must work; nothing
// can carry \Deleted here, so for CLOSE there is nothing to do.
func (s *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if fromClose(w) {
		return nil
	}
	if s.sel != nil && s.sel.readOnly {
		return errExamined
	}
	return errNoExpunge
}

// fromClose reports whether go-imap called Expunge for CLOSE: it then passes an ExpungeWriter
// without a connection (imapserver/select.go, handleUnselect). The field is unexported, hence
// reflection; should the library change, CLOSE keeps working and EXPUNGE becomes a no-op,
// which deletes nothing either.
func fromClose(w *imapserver.ExpungeWriter) bool {
	if w == nil {
		return true
	}
	f := reflect.ValueOf(w).Elem().FieldByName("conn")
	if !f.IsValid() || f.Kind() != reflect.Pointer {
		return true
	}
	return f.IsNil()
}

func (s *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	sel := s.sel
	if sel == nil || sel.queue == "" {
		return nil
	}
	reload := time.Since(sel.loaded) > pollRecheck
	select {
	case <-sel.wake:
		reload = true
	default:
	}
	return s.update(w, reload)
}

func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	sel := s.sel
	if sel == nil || sel.queue == "" {
		<-stop
		return nil
	}
	t := time.NewTicker(idleRecheck)
	defer t.Stop()
	if err := s.update(w, true); err != nil {
		return err
	}
	for {
		select {
		case <-stop:
			return nil
		case <-sel.wake:
		case <-t.C:
		}
		if err := s.update(w, true); err != nil {
			return err
		}
	}
}

// update tells the client about new messages (EXISTS) and about \Seen changes made by the
// agent's other sessions. Store trouble is logged, not returned: a Poll error ends the
// connection, and the next poll retries.
func (s *session) update(w *imapserver.UpdateWriter, reload bool) error {
	sel := s.sel
	if reload {
		last := uint32(0)
		if n := len(sel.entries); n > 0 {
			last = sel.entries[n-1].UID
		}
		_, more, err := s.srv.opts.Tickets.Mailbox(sel.queue, last)
		if err != nil {
			s.srv.log.Warn("poll mailbox", "queue", sel.queue, "err", err)
		} else {
			sel.loaded = time.Now()
			if len(more) > 0 {
				sel.entries = append(sel.entries, more...)
				if err := w.WriteNumMessages(uint32(len(sel.entries))); err != nil {
					return err
				}
			}
		}
	}
	for _, ch := range sel.takeFlags() {
		if sel.seen[ch.uid] == ch.seen {
			continue
		}
		if ch.seen {
			sel.seen[ch.uid] = true
		} else {
			delete(sel.seen, ch.uid)
		}
		if seq := sel.seqOf(ch.uid); seq != 0 {
			if err := w.WriteMessageFlags(seq, imap.UID(ch.uid), sel.flags(ch.uid)); err != nil {
				return err
			}
		}
	}
	return nil
}
