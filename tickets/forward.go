package tickets

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"

	"mailgate/access"
	"mailgate/store"
)

// Addressing is who a ticket's replies go to, for a caller that must decide whether a message
// an agent addressed is a reply at all (the submission server).
type Addressing struct {
	Queue        Queue
	Customer     string
	Participants []string // every participant, the customer included
}

// Addressing returns the addressing of ticket id when a may see it; otherwise ErrNotFound,
// audited as a denied action (the one the caller is about to attempt, e.g. "ticket.reply")
// like every other refused access. It returns addresses only, no content, so a successful
// call is not audited: the reply or forward that follows is.
func (s *Service) Addressing(a access.Actor, id uint64, action string) (*Addressing, error) {
	var t *Ticket
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		t, err = loadTicket(tx, id)
		return err
	})
	if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) || (err == nil && !a.InQueue(t.Queue)) {
		s.denied(a, action, id, "not found or not in the actor's queues")
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	q, _ := s.Queue(t.Queue)
	ad := &Addressing{Queue: q, Customer: t.Customer}
	for _, p := range t.Participants {
		ad.Participants = append(ad.Participants, p.Address)
	}
	return ad, nil
}

// IsQueueAddress reports whether addr is a queue's address or alias, or one of their +tag
// addresses.
func (s *Service) IsQueueAddress(addr string) bool {
	local, domain, ok := splitAddr(addr)
	if !ok {
		return false
	}
	base, _, _ := strings.Cut(local, "+")
	for _, q := range s.opts.Queues {
		if q.Owns(base + "@" + domain) {
			return true
		}
	}
	return false
}

func splitAddr(addr string) (local, domain string, ok bool) {
	addr = strings.Trim(strings.TrimSpace(addr), "<>")
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", "", false
	}
	return addr[:at], addr[at+1:], true
}

// checkAddrList validates addresses an agent typed: plain addr-specs, lower-cased, without
// duplicates, at most max of them.
func checkAddrList(list []string, max int, what string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, a := range list {
		p, err := mail.ParseAddress(strings.TrimSpace(a))
		if err != nil || p.Name != "" || strings.ContainsAny(p.Address, " \t\r\n<>,;\"\\") {
			return nil, fmt.Errorf("%w: %s %q is not an email address", ErrInvalid, what, a)
		}
		addr := strings.ToLower(p.Address)
		if seen[addr] {
			continue
		}
		seen[addr] = true
		out = append(out, addr)
	}
	if len(out) > max {
		return nil, fmt.Errorf("%w: at most %d %s addresses", ErrInvalid, max, what)
	}
	return out, nil
}

// checkCc validates the addresses a reply copies. A queue address is refused: copying a
// customer's conversation into another queue would open a second ticket from our own address.
func (s *Service) checkCc(cc []string) ([]string, error) {
	out, err := checkAddrList(cc, MaxCc, "Cc")
	if err != nil {
		return nil, err
	}
	for _, a := range out {
		if s.IsQueueAddress(a) {
			return nil, fmt.Errorf("%w: %s is a queue address and cannot be copied on a reply; forward the ticket to it in a separate message", ErrInvalid, a)
		}
	}
	return out, nil
}

func checkAttachments(atts []ParsedAttachment) error {
	if len(atts) > MaxAttachments {
		return fmt.Errorf("%w: %d attachments, at most %d", ErrInvalid, len(atts), MaxAttachments)
	}
	total := 0
	for _, a := range atts {
		total += len(a.Data)
	}
	if total > MaxAttachmentBytes {
		return fmt.Errorf("%w: the attachments add up to %d bytes, at most %d", ErrInvalid, total, MaxAttachmentBytes)
	}
	return nil
}

// addParticipants adds the addresses that are not yet on t and returns them.
func addParticipants(t *Ticket, addrs []string) []string {
	var added []string
	for _, a := range addrs {
		if equalAddr(a, t.Customer) {
			continue
		}
		if _, ok := t.Participant(a); ok {
			continue
		}
		t.Participants = append(t.Participants, Participant{Address: a})
		added = append(added, a)
	}
	return added
}

func attachmentList(atts []ParsedAttachment) []Attachment {
	var out []Attachment
	for i, a := range atts {
		out = append(out, Attachment{Index: i, Name: a.Name, ContentType: a.ContentType, Size: len(a.Data)})
	}
	return out
}

// Forward sends an agent's message about ticket id to colleagues: agents' or queues' addresses
// the caller has checked are local. It never reaches the customer or a participant (those are
// refused: that is a reply). The copy is kept on the ticket as a note of kind "forward" and
// leaves through the outbound queue like a reply, signed and, when the customer writes
// encrypted, encrypted to the colleagues' keys or not at all.
func (s *Service) Forward(a access.Actor, id uint64, text string, to []string, atts []ParsedAttachment) (*Message, error) {
	text, err := checkText(text)
	if err != nil {
		return nil, err
	}
	if err := checkAttachments(atts); err != nil {
		return nil, err
	}
	to, err = checkAddrList(to, MaxCc, "forward")
	if err != nil {
		return nil, err
	}
	if len(to) == 0 {
		return nil, fmt.Errorf("%w: a forward needs a recipient", ErrInvalid)
	}
	if s.opts.Mailer == nil {
		return nil, errors.New("forward: no outbound mailer configured")
	}
	t, last, err := s.writableTicket(a, id, "ticket.forward")
	if err != nil {
		return nil, err
	}
	for _, r := range to {
		if equalAddr(r, t.Customer) {
			return nil, fmt.Errorf("%w: %s is the ticket's customer: that is a reply, not a forward", ErrInvalid, r)
		}
		if _, ok := t.Participant(r); ok {
			return nil, fmt.Errorf("%w: %s takes part in the ticket: that is a reply, not a forward", ErrInvalid, r)
		}
	}
	o, err := s.outgoing(t, last, text, false)
	if err != nil {
		return nil, err
	}
	o.To, o.Cc = to[0], to[1:]
	o.Attachments = atts
	o.Forward = true
	o.Queue.Name = a.Name + " via " + o.Queue.Name
	subj := strings.TrimSpace(strings.TrimPrefix(t.Subject, "Re: "))
	o.Subject = fmt.Sprintf("Fwd: %s [#%d]", subj, t.ID)
	o.MessageID = s.MintMessageID(t.ID, o.To)
	raw, encrypted, err := s.opts.Mailer.Compose(o)
	if err != nil {
		s.db.Batch(func(tx *store.Tx) error {
			if err := s.SystemNote(tx, id, "A forward by "+a.Name+" was not sent: "+err.Error(), "forward refused"); err != nil {
				return err
			}
			return s.audit(tx, a, "ticket.forward", object(id), "failed", err.Error())
		})
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	m := &Message{
		Direction: Note, Kind: "forward", From: o.Queue.Address, FromName: o.Queue.Name, To: o.To, Cc: o.Cc,
		Subject: o.Subject, MessageID: o.MessageID, References: o.References, Date: o.Date,
		Text: "Forwarded by " + a.Name + " to " + strings.Join(to, ", ") + ":\n\n" + text, Encrypted: encrypted,
		Author: a.Name, Delivery: "queued", Attachments: attachmentList(atts),
	}
	err = s.db.Batch(func(tx *store.Tx) error {
		mm := *m
		t, err := loadTicket(tx, id)
		if err != nil {
			return err
		}
		if err := s.addMessage(tx, t, &mm, raw, atts); err != nil {
			return err
		}
		if err := s.opts.Mailer.EnqueueTx(tx, id, mm.Seq, o.Queue.Address, to, raw); err != nil {
			return err
		}
		*m = mm
		return s.audit(tx, a, "ticket.forward", object(id), "ok", fmt.Sprintf("message=%d to=%s encrypted=%t", mm.Seq, strings.Join(to, ","), encrypted))
	})
	if err != nil {
		return nil, fmt.Errorf("forward ticket %d: %w", id, err)
	}
	s.opts.Mailer.Kick()
	if s.opts.Notify != nil {
		s.opts.Notify(t.Queue)
	}
	return m, nil
}
