package tickets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"mailgate/access"
	"mailgate/store"
)

// Filter selects tickets for List.
type Filter struct {
	Queue    string
	Status   Status
	Assignee string
	Offset   int
	Limit    int // default 50
	// Before, when set, lists only tickets with a smaller id: a cursor for walking a big store
	// page by page without re-reading the pages before (Offset re-walks them).
	Before uint64
}

// MaxTextBytes bounds a reply or note.
const MaxTextBytes = 1 << 20

// List returns the tickets a may see that match f, newest first. The view is audited.
func (s *Service) List(a access.Actor, f Filter) ([]Ticket, error) {
	if f.Limit <= 0 || f.Limit > 500 {
		f.Limit = 50
	}
	var queues []string
	for _, q := range s.opts.Queues {
		if (f.Queue == "" || f.Queue == q.Name) && a.InQueue(q.Name) {
			queues = append(queues, q.Name)
		}
	}
	var out []Ticket
	err := s.db.View(func(tx *store.Tx) error {
		m := s.newestFirst(tx, queues, f.Before)
		skipped := 0
		filtered := f.Status != "" || f.Assignee != ""
		for len(out) < f.Limit {
			id, ok := m.next()
			if !ok {
				break
			}
			if !filtered && skipped < f.Offset {
				skipped++ // nothing to check: skip without reading the ticket
				continue
			}
			t, err := loadTicket(tx, id)
			if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) {
				continue
			}
			if err != nil {
				return err
			}
			if (f.Status != "" && t.Status != f.Status) || (f.Assignee != "" && t.Assignee != f.Assignee) {
				continue
			}
			if skipped < f.Offset {
				skipped++
				continue
			}
			out = append(out, *t)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	detail := fmt.Sprintf("queue=%s status=%s count=%d", f.Queue, f.Status, len(out))
	// The data leaves only once its viewing is on record.
	if err := s.auditNow(a, "ticket.list", "tickets", "ok", detail); err != nil {
		return nil, err
	}
	return out, nil
}

// merger walks several queues' ticket ids at once, newest first, reading only what it returns.
type merger struct {
	heads   []uint64 // current id per queue; 0 = exhausted
	cursors []*store.Cursor
	pres    [][]byte
}

func (s *Service) newestFirst(tx *store.Tx, queues []string, before uint64) *merger {
	m := &merger{}
	for _, q := range queues {
		pre := s.qprefix(q)
		c := tx.Cursor(bByQueue)
		end := append(append([]byte(nil), pre...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		if before > 0 {
			end = append(append([]byte(nil), pre...), store.U64(before)...)
		}
		k := c.Seek(end)
		if k == nil {
			k = c.Last()
		} else {
			k = c.Prev()
		}
		m.cursors = append(m.cursors, c)
		m.pres = append(m.pres, pre)
		m.heads = append(m.heads, m.id(k, pre))
	}
	return m
}

func (m *merger) id(k, pre []byte) uint64 {
	if len(k) != 16 || string(k[:8]) != string(pre) {
		return 0
	}
	return store.FromU64(k[8:])
}

func (m *merger) next() (uint64, bool) {
	best := -1
	for i, h := range m.heads {
		if h != 0 && (best < 0 || h > m.heads[best]) {
			best = i
		}
	}
	if best < 0 {
		return 0, false
	}
	id := m.heads[best]
	m.heads[best] = m.id(m.cursors[best].Prev(), m.pres[best])
	return id, true
}

// auditNow appends one event in its own group commit.
func (s *Service) auditNow(a access.Actor, action, obj, result, detail string) error {
	return s.db.Batch(func(tx *store.Tx) error { return s.audit(tx, a, action, obj, result, detail) })
}

// readVisible runs read on ticket id in a read transaction when a may see it, then records the
// access (ok or denied) durably before anything is returned: readers never hold the writer, and
// no caller can get the data without the audit event.
func (s *Service) readVisible(a access.Actor, id uint64, action string, read func(tx *store.Tx, t *Ticket) (detail string, err error)) error {
	var detail string
	visible := false
	err := s.db.View(func(tx *store.Tx) error {
		t, err := loadTicket(tx, id)
		if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) {
			return nil
		}
		if err != nil {
			return err
		}
		if !a.InQueue(t.Queue) {
			return nil
		}
		visible = true
		detail, err = read(tx, t)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		visible, err = false, nil
	}
	if err != nil {
		return err
	}
	if !visible {
		if err := s.auditNow(a, action, object(id), "denied", "not found or not in the actor's queues"); err != nil {
			return err
		}
		return ErrNotFound
	}
	return s.auditNow(a, action, object(id), "ok", detail)
}

// visible loads ticket id for a inside a write transaction, writing a denied event and returning
// ErrNotFound when a may not see it (the same answer as for a missing ticket, so ids cannot be
// probed).
func (s *Service) visible(tx *store.Tx, a access.Actor, id uint64, action string) (*Ticket, error) {
	t, err := loadTicket(tx, id)
	if errors.Is(err, store.ErrScopeDestroyed) {
		err = ErrNotFound
	}
	if err == nil && !a.InQueue(t.Queue) {
		err = ErrNotFound
	}
	if errors.Is(err, ErrNotFound) {
		if aerr := s.audit(tx, a, action, object(id), "denied", "not found or not in the actor's queues"); aerr != nil {
			return nil, aerr
		}
		return nil, ErrNotFound
	}
	return t, err
}

// denied records a refusal in its own transaction: the refused action's transaction is rolled
// back, the record of the refusal must not be.
func (s *Service) denied(a access.Actor, action string, id uint64, detail string) {
	s.auditNow(a, action, object(id), "denied", detail)
}

// Get returns a ticket with its messages. The view is audited; a ticket a may not see is
// ErrNotFound, and the attempt is audited as denied.
func (s *Service) Get(a access.Actor, id uint64) (*Ticket, []Message, error) {
	var t *Ticket
	var msgs []Message
	err := s.readVisible(a, id, "ticket.view", func(tx *store.Tx, tk *Ticket) (string, error) {
		t = tk
		for seq := 1; seq <= t.Messages; seq++ {
			m, err := loadMessage(tx, id, seq)
			if err != nil {
				return "", err
			}
			msgs = append(msgs, *m)
		}
		return "", nil
	})
	if err != nil {
		return nil, nil, err
	}
	return t, msgs, nil
}

// write runs a change to a visible, writable ticket and audits it in the same transaction.
func (s *Service) write(a access.Actor, id uint64, action, detail string, fn func(tx *store.Tx, t *Ticket) error) error {
	var outcome error
	err := s.db.Batch(func(tx *store.Tx) error {
		outcome = nil
		t, err := s.visible(tx, a, id, action)
		if errors.Is(err, ErrNotFound) {
			outcome = ErrNotFound
			return nil
		}
		if err != nil {
			return err
		}
		if !a.CanWrite(t.Queue) {
			outcome = ErrForbidden
			return s.audit(tx, a, action, object(id), "denied", "no write access to queue "+t.Queue)
		}
		if err := fn(tx, t); err != nil {
			return err
		}
		if err := saveTicket(tx, t); err != nil {
			return err
		}
		return s.audit(tx, a, action, object(id), "ok", detail)
	})
	if err != nil {
		return err
	}
	return outcome
}

// SetStatus changes a ticket's status.
func (s *Service) SetStatus(a access.Actor, id uint64, st Status) error {
	if !ValidStatus(st) {
		return fmt.Errorf("%w: status %q (want new, open, pending, solved or closed)", ErrInvalid, st)
	}
	return s.write(a, id, "ticket.status", "status="+string(st), func(tx *store.Tx, t *Ticket) error {
		t.Status = st
		t.Updated = s.opts.Now().UTC()
		t.addEvent(Event{Time: t.Updated, Actor: a.Name, What: "status", Value: string(st)})
		return nil
	})
}

// Assign gives a ticket to an agent ("" unassigns). Whether that agent exists and belongs to the
// queue is the caller's check against access.
func (s *Service) Assign(a access.Actor, id uint64, agent string) error {
	return s.write(a, id, "ticket.assign", "assignee="+agent, func(tx *store.Tx, t *Ticket) error {
		t.Assignee = agent
		t.Updated = s.opts.Now().UTC()
		t.addEvent(Event{Time: t.Updated, Actor: a.Name, What: "assign", Value: agent})
		return nil
	})
}

// AddNote adds an internal note, seen by agents only.
func (s *Service) AddNote(a access.Actor, id uint64, text string) (*Message, error) {
	text, err := checkText(text)
	if err != nil {
		return nil, err
	}
	var m *Message
	err = s.write(a, id, "ticket.note", "", func(tx *store.Tx, t *Ticket) error {
		m = &Message{Direction: Note, From: a.Name, Author: a.Name, Date: s.opts.Now().UTC(), Text: text, Subject: t.Subject}
		return s.addMessage(tx, t, m, nil, nil)
	})
	if err == nil {
		s.notify(id)
	}
	return m, err
}

// SystemNote adds a note written by mailgate itself (delivery failures, key changes).
func (s *Service) SystemNote(tx *store.Tx, id uint64, text, problem string) error {
	t, err := loadTicket(tx, id)
	if err != nil {
		return err
	}
	m := &Message{Direction: Note, From: "mailgate", Author: "mailgate", Date: s.opts.Now().UTC(), Text: text, Subject: t.Subject, Problem: problem}
	if s.opts.Notify != nil {
		q := t.Queue
		tx.OnCommit(func() { s.opts.Notify(q) })
	}
	return s.addMessage(tx, t, m, nil, nil)
}

// SetDelivery records the delivery state of outbound message seq of ticket id.
func (s *Service) SetDelivery(tx *store.Tx, id uint64, seq int, state string) error {
	m, err := loadMessage(tx, id, seq)
	if err != nil {
		return err
	}
	m.Delivery = state
	if err := saveMessage(tx, m); err != nil {
		return err
	}
	if (state == "failed" || state == "bounced") && m.Kind == "" { // not the acknowledgement
		t, err := loadTicket(tx, id)
		if err != nil {
			return err
		}
		t.Bounced = true
		return saveTicket(tx, t)
	}
	return nil
}

// Link links two tickets of the same queue (an agent's merge hint) both ways.
func (s *Service) Link(a access.Actor, id, other uint64) error {
	if id == other {
		return fmt.Errorf("%w: a ticket cannot link to itself", ErrInvalid)
	}
	refused := false
	err := s.write(a, id, "ticket.link", fmt.Sprintf("other=%d", other), func(tx *store.Tx, t *Ticket) error {
		o, err := loadTicket(tx, other)
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, store.ErrScopeDestroyed) {
			return err
		}
		if err != nil || o.Queue != t.Queue || !a.InQueue(o.Queue) {
			refused = true
			return fmt.Errorf("%w: ticket %d is not in this queue", ErrInvalid, other)
		}
		t.Links = appendUnique(t.Links, other)
		o.Links = appendUnique(o.Links, id)
		now := s.opts.Now().UTC()
		t.addEvent(Event{Time: now, Actor: a.Name, What: "link", Value: strconv.FormatUint(other, 10)})
		o.addEvent(Event{Time: now, Actor: a.Name, What: "link", Value: strconv.FormatUint(id, 10)})
		return saveTicket(tx, o)
	})
	if refused {
		// The same words for a missing ticket and another queue's, as for every id probe.
		s.denied(a, "ticket.link", id, fmt.Sprintf("other=%d: not found or not in this ticket's queue", other))
	}
	return err
}

// Denied records that a refused a's action on ticket id, for refusals decided outside tickets
// (web's check of an assignee against access, say); every refusal is in the audit log.
func (s *Service) Denied(a access.Actor, action string, id uint64, detail string) error {
	return s.auditNow(a, action, object(id), "denied", detail)
}

// Attachment returns attachment i of message seq, audited.
func (s *Service) Attachment(a access.Actor, id uint64, seq, i int) (Attachment, []byte, error) {
	var att Attachment
	var data []byte
	err := s.readVisible(a, id, "attachment.download", func(tx *store.Tx, t *Ticket) (string, error) {
		if seq < 1 || seq > t.Messages {
			return "", ErrNotFound
		}
		m, _, err := loadMessageMeta(tx, id, seq)
		if err != nil {
			return "", err
		}
		if i < 0 || i >= len(m.Attachments) {
			return "", ErrNotFound
		}
		att = m.Attachments[i]
		data, err = tx.GetScoped(id, bAttach, binary.BigEndian.AppendUint32(mkey(id, seq), uint32(i)))
		return fmt.Sprintf("message=%d attachment=%d", seq, i), err
	})
	if err != nil {
		return Attachment{}, nil, err
	}
	return att, data, nil
}

// Raw returns message seq of ticket id exactly as stored, audited under action (IMAP fetch,
// downloads). Notes have no raw bytes: raw is nil for them.
func (s *Service) Raw(a access.Actor, id uint64, seq int, action string) (*Message, []byte, error) {
	var m *Message
	var raw []byte
	err := s.readVisible(a, id, action, func(tx *store.Tx, t *Ticket) (string, error) {
		var err error
		if m, err = loadMessage(tx, id, seq); err != nil {
			return "", err
		}
		raw, err = loadRaw(tx, id, seq)
		return fmt.Sprintf("message=%d", seq), err
	})
	if err != nil {
		return nil, nil, err
	}
	return m, raw, nil
}

// MailboxEntry is one message in a queue's IMAP mailbox.
type MailboxEntry struct {
	UID    uint32
	Ticket uint64
	Seq    int
}

// Mailbox lists the messages of queue with UID > after, in UID order, with the mailbox's
// UIDVALIDITY. It reads index keys only; content is read (and audited) with Raw.
func (s *Service) Mailbox(queue string, after uint32) (validity uint32, entries []MailboxEntry, err error) {
	pre := s.qprefix(queue)
	if err := s.ensureMailbox(pre); err != nil {
		return 0, nil, err
	}
	err = s.db.View(func(tx *store.Tx) error {
		v, err := tx.GetPlain(bUIDs, pre)
		if err != nil {
			return err
		}
		if len(v) == 8 {
			validity = binary.BigEndian.Uint32(v)
		}
		c := tx.Cursor(bMailbox)
		start := binary.BigEndian.AppendUint32(append([]byte(nil), pre...), after+1)
		for k := c.Seek(start); k != nil && len(k) == 12 && string(k[:8]) == string(pre); k = c.Next() {
			loc, err := tx.GetPlain(bMailbox, k)
			if err != nil || len(loc) != 12 {
				continue
			}
			entries = append(entries, MailboxEntry{UID: binary.BigEndian.Uint32(k[8:]), Ticket: store.FromU64(loc), Seq: int(binary.BigEndian.Uint32(loc[8:]))})
		}
		return nil
	})
	return validity, entries, err
}

// ensureMailbox fixes a queue mailbox's UIDVALIDITY before its first message, so an empty
// mailbox does not change its UIDVALIDITY when mail arrives.
func (s *Service) ensureMailbox(pre []byte) error {
	var have bool
	s.db.View(func(tx *store.Tx) error {
		v, _ := tx.GetPlain(bUIDs, pre)
		have = len(v) == 8
		return nil
	})
	if have {
		return nil
	}
	return s.db.Batch(func(tx *store.Tx) error {
		if v, err := tx.GetPlain(bUIDs, pre); err != nil || len(v) == 8 {
			return err
		}
		return tx.PutPlain(bUIDs, pre, binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, uint32(s.opts.Now().Unix())), 0))
	})
}

// FindMessage returns the ticket and seq holding Message-ID id, if any (submission threading).
func (s *Service) FindMessage(id string) (ticket uint64, seq int, ok bool) {
	s.db.View(func(tx *store.Tx) error {
		v, _ := tx.GetPlain(bMsgID, s.db.Index("msgid", normID(id)))
		if len(v) == 12 {
			ticket, seq, ok = store.FromU64(v), int(binary.BigEndian.Uint32(v[8:])), true
		}
		return nil
	})
	return
}

func (s *Service) notify(id uint64) {
	if s.opts.Notify == nil {
		return
	}
	var q string
	s.db.View(func(tx *store.Tx) error {
		if t, err := loadTicket(tx, id); err == nil {
			q = t.Queue
		}
		return nil
	})
	if q != "" {
		s.opts.Notify(q)
	}
}

func checkText(text string) (string, error) {
	text = strings.ReplaceAll(text, "\r\n", "\n")
	if strings.TrimSpace(text) == "" {
		return "", fmt.Errorf("%w: the text is empty", ErrInvalid)
	}
	if len(text) > MaxTextBytes {
		return "", fmt.Errorf("%w: the text is longer than %d bytes", ErrInvalid, MaxTextBytes)
	}
	if !utf8.ValidString(text) {
		return "", fmt.Errorf("%w: the text is not valid UTF-8", ErrInvalid)
	}
	return text, nil
}
