package tickets

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"mailgate/access"
	"mailgate/store"
)

const bAutoAck = "autoack" // U64(ticket) → nothing: an acknowledgement owed, survives restarts

// Limits on what one reply or forward may carry besides its text; the submission server's
// message size limit is the outer bound.
const (
	MaxAttachments     = 20
	MaxAttachmentBytes = 10 << 20 // all attachments of one message together
	MaxCc              = 10       // addresses one reply may add to a ticket
)

// ReplyOptions are the optional parts of a reply.
type ReplyOptions struct {
	// Cc lists addresses the agent copies: each joins the ticket as a participant (so it gets
	// this reply and the following ones, and its answers thread into the ticket) and is shown.
	Cc []string
	// Attachments are sent with the reply (encrypted with it) and stored, sealed, on the ticket.
	Attachments []ParsedAttachment
}

// Reply is the one path every agent reply takes (web page, admin command, agents' mail
// clients): it checks that a may reply in the ticket's queue, composes the message through the
// Mailer, and commits the message, its delivery job and the audit event together before it returns.
func (s *Service) Reply(a access.Actor, id uint64, text string) (*Message, error) {
	return s.ReplyWith(a, id, text, ReplyOptions{})
}

// ReplyWith is Reply with copies and attachments.
func (s *Service) ReplyWith(a access.Actor, id uint64, text string, ro ReplyOptions) (*Message, error) {
	text, err := checkText(text)
	if err != nil {
		return nil, err
	}
	if err := checkAttachments(ro.Attachments); err != nil {
		return nil, err
	}
	cc, err := s.checkCc(ro.Cc)
	if err != nil {
		return nil, err
	}
	if s.opts.Mailer == nil {
		return nil, errors.New("reply: no outbound mailer configured")
	}
	t, last, err := s.writableTicket(a, id, "ticket.reply")
	if err != nil {
		return nil, err
	}
	added := addParticipants(t, cc)
	o, err := s.outgoing(t, last, text, false)
	if err != nil {
		return nil, err
	}
	o.Attachments = ro.Attachments
	raw, encrypted, err := s.opts.Mailer.Compose(o)
	if err != nil {
		// Nothing leaves; the ticket says why, so the next agent sees it too.
		s.db.Batch(func(tx *store.Tx) error {
			if err := s.SystemNote(tx, id, "A reply by "+a.Name+" was not sent: "+err.Error(), "reply refused"); err != nil {
				return err
			}
			return s.audit(tx, a, "ticket.reply", object(id), "failed", err.Error())
		})
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	m := &Message{
		Direction: Out, From: o.Queue.Address, FromName: o.Queue.Name, To: o.To, Cc: o.Cc, Subject: o.Subject,
		MessageID: o.MessageID, References: o.References, Date: o.Date, Text: text, Encrypted: encrypted,
		Author: a.Name, Delivery: "queued", Attachments: attachmentList(ro.Attachments),
	}
	if o.InReplyTo != "" {
		m.InReplyTo = []string{o.InReplyTo}
	}
	err = s.db.Batch(func(tx *store.Tx) error {
		mm := *m
		t, err := loadTicket(tx, id)
		if err != nil {
			return err
		}
		addParticipants(t, added)
		if err := s.addMessage(tx, t, &mm, raw, ro.Attachments); err != nil {
			return err
		}
		if t.Status == StatusNew || t.Status == StatusOpen {
			t.Status = StatusPending
			if err := saveTicket(tx, t); err != nil {
				return err
			}
		}
		rcpts := append([]string{o.To}, o.Cc...)
		if err := s.opts.Mailer.EnqueueTx(tx, id, mm.Seq, o.Queue.Address, rcpts, raw); err != nil {
			return err
		}
		*m = mm
		detail := fmt.Sprintf("message=%d encrypted=%t", mm.Seq, encrypted)
		if len(ro.Attachments) > 0 {
			detail += fmt.Sprintf(" attachments=%d", len(ro.Attachments))
		}
		if len(added) > 0 {
			detail += " added cc=" + strings.Join(added, ",")
		}
		return s.audit(tx, a, "ticket.reply", object(id), "ok", detail)
	})
	if err != nil {
		return nil, fmt.Errorf("reply to ticket %d: %w", id, err)
	}
	s.opts.Mailer.Kick()
	if s.opts.Notify != nil {
		s.opts.Notify(t.Queue)
	}
	return m, nil
}

// lastInbound returns the newest inbound message, which a reply answers.
func lastInbound(tx *store.Tx, t *Ticket) *Message {
	for seq := t.Messages; seq >= 1; seq-- {
		m, err := loadMessage(tx, t.ID, seq)
		if err == nil && m.Direction == In && m.Kind == "" {
			return m
		}
	}
	return nil
}

// outgoing decides the addressing and threading of a reply.
func (s *Service) outgoing(t *Ticket, last *Message, text string, auto bool) (Outgoing, error) {
	q, ok := s.Queue(t.Queue)
	if !ok {
		return Outgoing{}, fmt.Errorf("queue %q is no longer configured", t.Queue)
	}
	if t.Customer == "" {
		return Outgoing{}, fmt.Errorf("%w: ticket %d has no customer address to reply to", ErrInvalid, t.ID)
	}
	o := Outgoing{Ticket: *t, Queue: q, To: t.Customer, Text: text, Date: s.opts.Now().UTC(), Encrypt: t.Encrypted, AutoReply: auto}
	for _, p := range t.Participants {
		if !equalAddr(p.Address, t.Customer) && !q.Owns(p.Address) {
			o.Cc = append(o.Cc, p.Address)
		}
	}
	subj := t.Subject
	if !strings.HasPrefix(strings.ToLower(subj), "re:") {
		subj = "Re: " + subj
	}
	o.Subject = fmt.Sprintf("%s [#%d]", subj, t.ID)
	if last != nil && last.MessageID != "" {
		o.InReplyTo = last.MessageID
		o.References = append(append([]string(nil), last.References...), last.MessageID)
		if len(o.References) > 20 {
			// Keep the root and the nearest ancestors (RFC 5322 3.6.4 lets us trim the middle).
			o.References = append(o.References[:1], o.References[len(o.References)-19:]...)
		}
	}
	o.MessageID = s.MintMessageID(t.ID, o.To)
	return o, nil
}

// owesAutoAck is called inside the ingest transaction for a new ticket.
func (s *Service) owesAutoAck(tx *store.Tx, t *Ticket) error {
	return tx.PutPlain(bAutoAck, store.U64(t.ID), nil)
}

// SendAutoAcks sends every acknowledgement still owed (after a restart, or after Ingest).
func (s *Service) SendAutoAcks() {
	if s.opts.Mailer == nil {
		return
	}
	var ids []uint64
	s.db.View(func(tx *store.Tx) error {
		c := tx.Cursor(bAutoAck)
		for k := c.First(); k != nil; k = c.Next() {
			ids = append(ids, store.FromU64(k))
		}
		return nil
	})
	for _, id := range ids {
		if err := s.sendAutoAck(id); err != nil {
			s.opts.Logger.Warn("auto-acknowledgement failed", "ticket", id, "err", err)
		}
	}
}

func (s *Service) sendAutoAck(id uint64) error {
	t, last, err := s.ticketAndLastInbound(id)
	if err != nil {
		s.db.Update(func(tx *store.Tx) error { return tx.Delete(bAutoAck, store.U64(id)) })
		return err
	}
	text := fmt.Sprintf("Thank you for writing to us. Your request has been received as ticket #%d\nand an agent will answer soon. Please keep [#%d] in the subject when you write again.\n\nThis is an automatic message.\n", id, id)
	lang := ""
	if last != nil {
		lang = last.Language
	}
	if q, ok := s.Queue(t.Queue); ok && strings.TrimSpace(q.ackText(lang)) != "" {
		text = strings.ReplaceAll(q.ackText(lang), "{ticket}", strconv.FormatUint(id, 10))
	}
	o, err := s.outgoing(t, last, text, true)
	if err != nil {
		return err
	}
	o.Cc = nil
	raw, encrypted, err := s.opts.Mailer.Compose(o)
	if err != nil {
		s.db.Update(func(tx *store.Tx) error { return tx.Delete(bAutoAck, store.U64(id)) })
		return err
	}
	err = s.db.Batch(func(tx *store.Tx) error {
		owed, err := tx.GetPlain(bAutoAck, store.U64(id))
		if err != nil || owed == nil {
			return err // already sent by another pass
		}
		t, err := loadTicket(tx, id)
		if err != nil {
			return err
		}
		m := &Message{Direction: Out, From: o.Queue.Address, FromName: o.Queue.Name, To: o.To, Subject: o.Subject,
			MessageID: o.MessageID, References: o.References, Date: o.Date, Text: text, Encrypted: encrypted,
			Author: "mailgate", Delivery: "queued", Kind: "auto-reply"}
		if o.InReplyTo != "" {
			m.InReplyTo = []string{o.InReplyTo}
		}
		if err := s.addMessage(tx, t, m, raw, nil); err != nil {
			return err
		}
		if err := s.opts.Mailer.EnqueueTx(tx, id, m.Seq, o.Queue.Address, []string{o.To}, raw); err != nil {
			return err
		}
		if err := tx.Delete(bAutoAck, store.U64(id)); err != nil {
			return err
		}
		return s.audit(tx, access.Actor{Name: "mailgate"}, "ticket.autoack", object(id), "ok", "")
	})
	if err == nil {
		s.opts.Mailer.Kick()
	}
	return err
}

// writableTicket loads ticket id with its last inbound message for an actor about to send on
// it. A ticket outside the actor's queues is ErrNotFound (its existence is not revealed) and a
// read-only queue ErrForbidden; both are audited as denied under action.
func (s *Service) writableTicket(a access.Actor, id uint64, action string) (*Ticket, *Message, error) {
	t, last, err := s.ticketAndLastInbound(id)
	if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) || (err == nil && !a.InQueue(t.Queue)) {
		s.denied(a, action, id, "not found or not in the actor's queues")
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, err
	}
	if !a.CanWrite(t.Queue) {
		s.denied(a, action, id, "no write access to queue "+t.Queue)
		return nil, nil, ErrForbidden
	}
	return t, last, nil
}

// ticketAndLastInbound reads ticket id and its last inbound message (the one a reply answers).
func (s *Service) ticketAndLastInbound(id uint64) (*Ticket, *Message, error) {
	var t *Ticket
	var last *Message
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		if t, err = loadTicket(tx, id); err != nil {
			return err
		}
		last = lastInbound(tx, t)
		return nil
	})
	return t, last, err
}
