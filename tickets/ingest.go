package tickets

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"mailgate/access"
	"mailgate/store"
)

// Incoming is a verified inbound message on its way into a queue.
type Incoming struct {
	Queue string
	// Raw is the message as stored: as received, with mailgate's Authentication-Results on top.
	Raw  []byte
	Auth Auth
	Via  string // smtp | imap
	// MailFrom is the SMTP envelope sender ("" for the null sender <> and for fetched mail).
	MailFrom string
	Remote   string // client address, for the audit log
	// Kind is "bounce" for a delivery status notification, "auto-reply" for RFC 3834 mail.
	Kind string
	// BounceOf lists the Message-IDs a bounce reports on.
	BounceOf []string
}

// Outcomes of threading.
const (
	OutcomeNew       = "new"       // a new ticket
	OutcomeThreaded  = "threaded"  // joined the ticket it references, sender is a participant
	OutcomeTagged    = "tagged"    // joined by subject tag, DMARC-verified participant
	OutcomeLinked    = "linked"    // referenced a ticket it may not join: new ticket, linked
	OutcomeBounce    = "bounce"    // a bounce of one of our messages, attached as a note
	OutcomeDuplicate = "duplicate" // the same message again (a retransmission): stored once
)

// Result says where an inbound message went.
type Result struct {
	Ticket  uint64
	Seq     int
	New     bool
	Outcome string
}

// actorMail is the actor for mail arriving from outside.
var actorMail = access.Actor{Name: "mail"}

var tagRe = regexp.MustCompile(`\[#(\d{1,19})\]`)

// Ingest files one inbound message, durably: when it returns nil the message, its verdict and
// its ticket are committed and fsynced. Concurrent calls share commits.
func (s *Service) Ingest(in Incoming) (Result, error) {
	q, ok := s.Queue(in.Queue)
	if !ok {
		return Result{}, fmt.Errorf("%w: unknown queue %q", ErrInvalid, in.Queue)
	}
	p, dec := s.read(in.Raw)
	m := &Message{
		Direction: In, From: p.From, FromName: p.FromName, To: p.To, Cc: p.Cc,
		Subject: p.Subject, MessageID: p.MessageID, InReplyTo: p.InReplyTo, References: p.References,
		Date: p.Date.UTC(), Received: s.opts.Now().UTC(), Text: p.Text, HTML: p.HTML, Problem: p.Problem, Kind: in.Kind,
	}
	m.Language = mailLanguage(p)
	if m.Text == "" && m.HTML != "" {
		m.Text = HTMLToText(m.HTML)
	}
	auth := in.Auth
	m.Auth, m.Verified, m.Quarantined = &auth, auth.Verified && !auth.Quarantined, auth.Quarantined
	if dec != nil {
		m.Encrypted, m.Signed, m.SignedBy = dec.Encrypted, dec.Signed, dec.SignedBy
		if dec.Problem != "" {
			m.Problem = dec.Problem
		}
	}
	for i, a := range p.Attachments {
		m.Attachments = append(m.Attachments, Attachment{Index: i, Name: a.Name, ContentType: a.ContentType, Size: len(a.Data)})
	}
	m.Digest = digest(p)
	// Audited as the channel and peer it came from (smtp:<ip>, imap:<account>), as the issue asks.
	actor := actorMail
	actor.Remote = in.Remote
	if in.Via != "" {
		host := in.Remote
		if h, _, err := net.SplitHostPort(in.Remote); err == nil {
			host = h
		}
		actor.Name = in.Via + ":" + host
	}

	ackable := q.AutoAck && in.Kind == "" && s.opts.AutoAck != nil && s.opts.AutoAck(p, in)
	// Compressed, and when large written to a segment and fsynced, here, by this message's
	// goroutine, not inside the commit every writer waits on. A duplicate leaves the blobs
	// orphaned for compaction.
	vals := make([][]byte, 0, 1+len(p.Attachments))
	for _, a := range p.Attachments {
		vals = append(vals, a.Data)
	}
	// Headers, text and raw mail in one record: a body written inside the transaction would
	// make the commit fsync the segment again, for every writer it carries, and headers kept
	// in the B-tree, or a second reference there, would make it, and the memory bbolt maps,
	// larger by half.
	body, enc, err := encodeBody(m, in.Raw)
	if err != nil {
		return Result{}, fmt.Errorf("ingest into %s: %w", in.Queue, err)
	}
	vals = append(vals, enc)
	atts := s.db.PrepareAll(vals)
	body.prep = atts[len(atts)-1]
	ah := ahead{body: &body}
	atts = atts[:len(atts)-1]
	var ids *idKeys
	if m.MessageID != "" {
		ids = messageIDKeys(s.db, q.Name, m.MessageID)
		ah.ids = ids
	}
	toks := s.ingestTokens(q.Name, m)
	handed := &postingCacheOf(s.db).handed
	var res Result
	var owed bool
	err = s.db.Batch(func(tx *store.Tx) error {
		mm := *m // Batch may run fn twice: start from the same state each time
		r, t, err := s.thread(tx, q, &mm, p, in, ids)
		if err != nil {
			return err
		}
		res = r
		if r.Outcome == OutcomeDuplicate {
			return nil
		}
		if r.Outcome == OutcomeBounce && !r.New {
			// A bounce of our reply is news for the agents, not a customer's word: it is filed
			// as a note on the ticket, and its sender joins nothing.
			mm.Direction, mm.Problem = Note, "delivery failed: the customer's mail server returned this reply"
		}
		if err := s.addMessageAhead(tx, t, &mm, nil, nil, ah); err != nil {
			return err
		}
		// Every ticket Ingest files into is in q (thread), so the tokens hold; a check costs
		// nothing and leaves any other case to the indexer's read-back.
		if t.Queue == q.Name {
			tk, pk := toks.later, mkey(t.ID, mm.Seq)
			if mm.Seq == 1 {
				tk = toks.first
			}
			tx.OnCommit(func() { handed.put(pk, tk) })
		}
		if err := putAttachments(tx, t.ID, mm.Seq, atts); err != nil {
			return err
		}
		res.Seq = mm.Seq
		owed = r.New && ackable
		if owed {
			if err := s.owesAutoAck(tx, t); err != nil {
				return err
			}
		}
		if s.opts.OnIngestTx != nil {
			if err := s.opts.OnIngestTx(tx, t, &mm, p, r.New); err != nil {
				return err
			}
		}
		detail := fmt.Sprintf("via=%s outcome=%s dmarc=%s verified=%t", in.Via, r.Outcome, auth.DMARC, mm.Verified)
		return s.audit(tx, actor, "mail.receive", object(t.ID), "ok", detail)
	})
	if err != nil {
		return Result{}, fmt.Errorf("ingest into %s: %w", in.Queue, err)
	}
	if owed {
		go func() {
			if err := s.sendAutoAck(res.Ticket); err != nil {
				s.opts.Logger.Warn("auto-acknowledgement failed", "ticket", res.Ticket, "err", err)
			}
		}()
	}
	if s.opts.Notify != nil && res.Outcome != OutcomeDuplicate {
		s.opts.Notify(q.Name)
	}
	return res, nil
}

// decryptInfo is what read learned about encryption.
type decryptInfo struct {
	Encrypted, Signed bool
	SignedBy, Problem string
}

// read parses raw; an encrypted message is decrypted first so agents read the text.
func (s *Service) read(raw []byte) (*Parsed, *decryptInfo) {
	p := Parse(raw)
	if s.opts.Decrypt == nil || !looksEncrypted(p) {
		return p, nil
	}
	d, err := s.opts.Decrypt(raw)
	if err != nil {
		return p, &decryptInfo{Encrypted: true, Problem: "encrypted, but mailgate could not decrypt it: " + err.Error()}
	}
	if d == nil {
		return p, nil
	}
	inner := Parse(d.Inner)
	// The inner entity carries the real body; protected headers may carry the real subject.
	p.Text, p.HTML, p.Attachments = inner.Text, inner.HTML, inner.Attachments
	if inner.Subject != "" && (p.Subject == "..." || p.Subject == "" || strings.EqualFold(p.Subject, "encrypted message")) {
		p.Subject = inner.Subject
	}
	if inner.Problem != "" {
		p.Problem = inner.Problem
	}
	return p, &decryptInfo{Encrypted: true, Signed: d.Signed, SignedBy: d.SignedBy}
}

func looksEncrypted(p *Parsed) bool {
	if p.Header.Len() == 0 {
		return false
	}
	ct := strings.ToLower(p.Header.Get("Content-Type"))
	return strings.Contains(ct, "multipart/encrypted") || strings.Contains(p.Text, "-----BEGIN PGP MESSAGE-----")
}

// thread decides where m goes (DESIGN.md invariant 2). It reads only by key.
func (s *Service) thread(tx *store.Tx, q Queue, m *Message, p *Parsed, in Incoming, ids *idKeys) (Result, *Ticket, error) {
	if m.MessageID != "" {
		if t, ok, err := s.duplicate(tx, q, m, ids); err != nil {
			return Result{}, nil, err
		} else if ok {
			return Result{Ticket: t, Outcome: OutcomeDuplicate}, nil, nil
		}
	}
	if in.Kind == "bounce" {
		for _, id := range in.BounceOf {
			t, seq, err := s.lookupID(tx, q.Name, id)
			if err != nil {
				return Result{}, nil, err
			}
			if t == nil || t.Queue != q.Name {
				continue
			}
			if om, err := loadMessage(tx, t.ID, seq); err == nil && om.Direction == Out {
				om.Delivery = "bounced"
				if err := saveMessage(tx, om); err != nil {
					return Result{}, nil, err
				}
				return Result{Ticket: t.ID, Outcome: OutcomeBounce}, t, nil
			}
		}
	}
	var linked []uint64
	refs := append(append([]string(nil), m.InReplyTo...), m.References...)
	for i := len(refs) - 1; i >= 0; i-- { // nearest ancestor first
		t, _, err := s.lookupID(tx, q.Name, refs[i])
		if err != nil {
			return Result{}, nil, err
		}
		if t == nil {
			continue
		}
		if t.Queue == q.Name && m.From != "" {
			if pp, ok := t.Participant(m.From); ok {
				s.joinParticipant(pp, m)
				return Result{Ticket: t.ID, Outcome: OutcomeThreaded}, reopen(t, in.Kind), nil
			}
		}
		linked = appendUnique(linked, t.ID)
	}
	if mt := tagRe.FindStringSubmatch(m.Subject); mt != nil {
		if id, err := strconv.ParseUint(mt[1], 10, 64); err == nil {
			t, err := loadTicket(tx, id)
			if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, store.ErrScopeDestroyed) {
				return Result{}, nil, err
			}
			if t != nil && t.Queue == q.Name {
				if pp, ok := t.Participant(m.From); ok && m.Verified {
					s.joinParticipant(pp, m)
					return Result{Ticket: t.ID, Outcome: OutcomeTagged}, reopen(t, in.Kind), nil
				}
				linked = appendUnique(linked, t.ID)
			}
		}
	}
	t, err := s.newTicket(tx, q, m)
	if err != nil {
		return Result{}, nil, err
	}
	outcome := OutcomeNew
	if in.Kind == "bounce" {
		outcome = OutcomeBounce
	}
	for _, other := range linked {
		o, err := loadTicket(tx, other)
		if err != nil {
			continue
		}
		// Links stay inside a queue: an agent of one queue must not learn of another's tickets.
		if o.Queue != q.Name {
			continue
		}
		t.Links = appendUnique(t.Links, o.ID)
		o.Links = appendUnique(o.Links, t.ID)
		if err := saveTicket(tx, o); err != nil {
			return Result{}, nil, err
		}
		outcome = OutcomeLinked
	}
	return Result{Ticket: t.ID, New: true, Outcome: outcome}, t, nil
}

// ticketSubject is the subject of a ticket opened by a message with this subject.
func ticketSubject(subject string) string {
	subj := strings.TrimSpace(tagRe.ReplaceAllString(subject, ""))
	if subj == "" {
		subj = "(no subject)"
	}
	return subj
}

func (s *Service) joinParticipant(p *Participant, m *Message) {
	if m.Verified {
		p.Verified = true
	}
	if p.Name == "" {
		p.Name = m.FromName
	}
}

// reopen moves a ticket the customer wrote to again back to open. Automatic mail (an out-of-
// office answer, a bounce) is no word from the customer: it joins the thread but leaves the
// status as the agents set it.
func reopen(t *Ticket, kind string) *Ticket {
	if kind == "" && t.Status != StatusNew {
		t.Status = StatusOpen
	}
	return t
}

func (s *Service) newTicket(tx *store.Tx, q Queue, m *Message) (*Ticket, error) {
	id, err := tx.NextSeq(bTicketID)
	if err != nil {
		return nil, err
	}
	if err := s.reserveID(id); err != nil {
		return nil, err
	}
	now := s.opts.Now().UTC()
	t := &Ticket{ID: id, Queue: q.Name, Subject: ticketSubject(m.Subject), Status: StatusNew, Customer: m.From, Created: now, Updated: now}
	if m.From != "" {
		t.Participants = []Participant{{Address: m.From, Name: m.FromName, Verified: m.Verified}}
	}
	if err := tx.PutPlain(bByQueue, append(append([]byte(nil), s.qprefix(q.Name)...), store.U64(id)...), nil); err != nil {
		return nil, err
	}
	return t, nil
}

// duplicate reports whether m was already stored in q with the same content: an SMTP client
// that lost our 250 sends again, and the second copy must not become a second ticket. Another
// message that merely reuses the Message-ID is not a duplicate: it is stored on its own and
// never takes the id over (addMessage), so nobody can steal a customer's thread by quoting
// its Message-ID in new mail.
func (s *Service) duplicate(tx *store.Tx, q Queue, m *Message, ids *idKeys) (uint64, bool, error) {
	v, err := s.idEntry(tx, q.Name, m.MessageID, ids)
	if err != nil || len(v) != 12 {
		return 0, false, err
	}
	id, seq := store.FromU64(v), int(binary.BigEndian.Uint32(v[8:]))
	om, _, err := loadMessageMeta(tx, id, seq)
	if err != nil {
		return 0, false, nil // its ticket was deleted: not a duplicate any more
	}
	t, err := loadTicket(tx, id)
	if err != nil {
		return 0, false, nil
	}
	if om.Direction != In || t.Queue != q.Name {
		return 0, false, nil
	}
	if om.Digest != "" {
		return id, om.Digest == m.Digest, nil
	}
	// Stored before digests existed: the old rule. At worst it drops a forgery that copies
	// sender and subject; it never moves the index.
	return id, equalAddr(om.From, m.From) && om.Subject == m.Subject, nil
}

// digest identifies what a message says (not how it travelled: the Received and
// Authentication-Results fields mailgate adds differ between two deliveries of one message).
func digest(p *Parsed) string {
	h := sha256.New()
	var n [8]byte
	data := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		io.WriteString(h, s)
	}
	field(p.From)
	field(p.FromName)
	field(p.To)
	field(strings.Join(p.Cc, "\x00"))
	field(p.Subject)
	field(p.MessageID)
	field(strings.Join(p.InReplyTo, "\x00"))
	field(strings.Join(p.References, "\x00"))
	field(p.Date.UTC().Format(time.RFC3339Nano))
	field(p.Text)
	field(p.HTML)
	for _, a := range p.Attachments {
		field(a.Name)
		field(a.ContentType)
		data(a.Data) // hashed in place: a string conversion copied every attachment on the mail path
	}
	return hex.EncodeToString(h.Sum(nil))
}

// lookupID finds the ticket that holds the message with Message-ID id, as queue's index entry
// names it. An id in mailgate's own form must carry a MAC that verifies for one of the
// ticket's participants; a forged one (a guessed ticket number) is ignored.
func (s *Service) lookupID(tx *store.Tx, queue, id string) (*Ticket, int, error) {
	v, err := s.idEntry(tx, queue, id, nil)
	if err != nil {
		return nil, 0, err
	}
	tid, rnd, mac, ours := s.minted(id)
	if len(v) != 12 {
		if !ours {
			return nil, 0, nil
		}
		// Ours but not in the index (restored backup, or a reply to an auto-ack we did not
		// file): trust it only with a valid MAC.
		v = mkey(tid, 0)
	}
	t, err := loadTicket(tx, store.FromU64(v))
	if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	if ours {
		if tid != t.ID {
			return nil, 0, nil
		}
		valid := false
		for _, p := range t.Participants {
			if macEqual(s.idMAC(tid, rnd, p.Address), mac) {
				valid = true
				break
			}
		}
		if !valid {
			return nil, 0, nil
		}
	}
	return t, int(binary.BigEndian.Uint32(v[8:])), nil
}

func appendUnique(list []uint64, id uint64) []uint64 {
	for _, x := range list {
		if x == id {
			return list
		}
	}
	return append(list, id)
}

var langRe = regexp.MustCompile(`^[a-z]{2,3}(-[a-z0-9]{2,8})?$`)

// mailLanguage reads the language the customer writes in from Content-Language, else from the
// first entry of Accept-Language (some clients send it); anything not a plain tag is ignored.
func mailLanguage(p *Parsed) string {
	for _, h := range []string{"Content-Language", "Accept-Language"} {
		v := p.Header.Get(h)
		first, _, _ := strings.Cut(v, ",")
		first, _, _ = strings.Cut(first, ";")
		tag := strings.ToLower(strings.TrimSpace(first))
		if langRe.MatchString(tag) {
			return tag
		}
	}
	return ""
}
