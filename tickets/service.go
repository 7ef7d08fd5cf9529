package tickets

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/store"
)

// Buckets. Every value that holds customer data is sealed under its ticket's own key
// (store scopes), so deleting that key destroys one ticket for good.
const (
	bTickets  = "tickets"   // U64(id) → Ticket JSON (scoped)
	bMessages = "messages"  // U64(id)|U32(seq) → Message JSON (scoped)
	bRaw      = "raw"       // U64(id)|U32(seq) → raw RFC 5322 bytes when not in bBody (scoped), see loadRaw
	bAttach   = "attach"    // U64(id)|U32(seq)|U32(i) → attachment bytes (scoped)
	bBody     = "body"      // U64(id)|U32(seq) → an inbound message's headers, Text, HTML and raw bytes (scoped), see saveMessageApart
	bMsgID    = "msgid"     // HMAC(Message-ID), HMAC(queue, Message-ID) → U64(id)|U32(seq) (plain)
	bByQueue  = "byqueue"   // HMAC(queue)[:8]|U64(id) → nothing (plain), for listings
	bMailbox  = "mailbox"   // HMAC(queue)[:8]|U32(uid) → U64(id)|U32(seq) (plain), IMAP view
	bUIDs     = "uidvalid"  // HMAC(queue)[:8] → U32(uidvalidity)|U32(last uid) (plain)
	bTicketID = "ticket_id" // only its sequence: ticket ids
)

// Queue is a mailbox mailgate answers for.
type Queue struct {
	Name    string
	Address string
	AutoAck bool
	// AutoAckText is the acknowledgement's body; {ticket} becomes the ticket number.
	AutoAckText string
	// AutoAckTexts are acknowledgements per language tag (lower case: "de", "fr-ch").
	AutoAckTexts map[string]string
	// Aliases are further addresses of the queue (old ones customers still reply to).
	Aliases []string
}

// ackText picks the acknowledgement for a customer writing in lang (a tag, maybe empty): the
// exact tag, then its primary language, then the queue's default.
func (q Queue) ackText(lang string) string {
	lang = strings.ToLower(lang)
	if t, ok := q.AutoAckTexts[lang]; ok && lang != "" {
		return t
	}
	if primary, _, ok := strings.Cut(lang, "-"); ok {
		if t, ok := q.AutoAckTexts[primary]; ok {
			return t
		}
	}
	return q.AutoAckText
}

// Owns reports whether addr is the queue's address or one of its aliases: mail to it would
// come straight back into the queue, so replies never copy it.
func (q Queue) Owns(addr string) bool {
	if equalAddr(addr, q.Address) {
		return true
	}
	for _, a := range q.Aliases {
		if equalAddr(addr, a) {
			return true
		}
	}
	return false
}

// Outgoing is what tickets asks the mail composer to build for a reply.
type Outgoing struct {
	Ticket     Ticket
	Queue      Queue
	To         string
	Cc         []string
	Subject    string
	Text       string
	MessageID  string
	InReplyTo  string
	References []string
	Date       time.Time
	// Encrypt is true when the customer wrote encrypted mail: encrypt whenever a key is known.
	Encrypt bool
	// AutoReply marks an automatic acknowledgement (RFC 3834).
	AutoReply bool
	// Attachments go after the text in a multipart/mixed body (inside the encryption).
	Attachments []ParsedAttachment
	// Forward marks a forward to colleagues or queues: their auto-responders (out-of-office,
	// a queue's acknowledgement) are asked not to answer, so no reply lands in a queue.
	Forward bool
}

// Mailer builds and queues outbound mail. outbound implements it; tickets only decides what to say.
type Mailer interface {
	// Compose returns the message exactly as it will be sent (signed, maybe encrypted).
	Compose(o Outgoing) (raw []byte, encrypted bool, err error)
	// EnqueueTx queues raw for delivery inside the caller's transaction.
	EnqueueTx(tx *store.Tx, ticket uint64, seq int, from string, to []string, raw []byte) error
	// Kick wakes the delivery worker after a commit.
	Kick()
}

// Decrypted is readable content recovered from an encrypted inbound message.
type Decrypted struct {
	Inner    []byte // the decrypted MIME entity
	Signed   bool
	SignedBy string // fingerprint, when the signature verifies with a known key
}

// Options wires a Service.
type Options struct {
	Hostname string
	Queues   []Queue
	Mailer   Mailer
	// Decrypt reads PGP-encrypted inbound mail; nil when no gateway key is configured.
	// It returns (nil, nil) for mail that is not encrypted.
	Decrypt func(raw []byte) (*Decrypted, error)
	// OnIngestTx runs inside the ingest transaction (auto-acknowledgement, key learning).
	OnIngestTx func(tx *store.Tx, t *Ticket, m *Message, parsed *Parsed, isNew bool) error
	// AutoAck decides whether the sender of a new ticket may get an automatic acknowledgement
	// (RFC 3834: never to automatic mail, lists or bounces). nil means never. It must be pure:
	// it may be called for mail that ends up joining an existing ticket.
	AutoAck func(p *Parsed, in Incoming) bool
	// Notify runs after a commit that added a message to queue (IMAP IDLE, metrics).
	Notify func(queue string)
	Now    func() time.Time
	// Logger receives what goes wrong in the background (auto-acknowledgements); nil means
	// slog.Default().
	Logger *slog.Logger
	// IDFile, when set, records outside the database the highest ticket id that may have been
	// handed out, so a restored database never reuses one (see CheckIDs).
	IDFile string
}

// Service is the ticket system.
type Service struct {
	db    *store.DB
	log   *audit.Log
	opts  Options
	ids   idMark
	skeys map[string][]byte // search index key per queue
	// qprefixes are the configured queues' qprefix, capacity 8 so that an append copies.
	qprefixes map[string][]byte
}

// New returns a Service.
func New(db *store.DB, log *audit.Log, opts Options) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	skeys, qprefixes := map[string][]byte{}, map[string][]byte{}
	for _, q := range opts.Queues {
		skeys[q.Name] = db.MAC("search queue key", []byte(q.Name))
		qprefixes[q.Name] = db.Index("queue", q.Name)[:8:8]
	}
	return &Service{db: db, log: log, opts: opts, ids: idMark{file: opts.IDFile}, skeys: skeys, qprefixes: qprefixes}
}

// Queues returns the configured queues.
func (s *Service) Queues() []Queue { return s.opts.Queues }

// Queue returns the queue named name.
func (s *Service) Queue(name string) (Queue, bool) {
	for _, q := range s.opts.Queues {
		if q.Name == name {
			return q, true
		}
	}
	return Queue{}, false
}

// SetMailer wires the composer after construction (outbound needs the Service too).
func (s *Service) SetMailer(m Mailer) { s.opts.Mailer = m }

// DB returns the store, for packages that keep their own buckets beside tickets.
func (s *Service) DB() *store.DB { return s.db }

func tkey(id uint64) []byte { return store.U64(id) }

func mkey(id uint64, seq int) []byte {
	return binary.BigEndian.AppendUint32(store.U64(id), uint32(seq))
}

// qprefix is the 8-byte prefix of queue's keys in the listing and mailbox buckets. Those of
// the configured queues are computed once (an HMAC each; the mail path needs three).
func (s *Service) qprefix(queue string) []byte {
	if p, ok := s.qprefixes[queue]; ok {
		return p
	}
	return s.db.Index("queue", queue)[:8:8]
}

func loadTicket(tx *store.Tx, id uint64) (*Ticket, error) {
	v, err := tx.GetScoped(id, bTickets, tkey(id))
	if err != nil {
		return nil, fmt.Errorf("ticket %d: %w", id, err)
	}
	if v == nil {
		return nil, ErrNotFound
	}
	var t Ticket
	if err := json.Unmarshal(v, &t); err != nil {
		return nil, fmt.Errorf("ticket %d: %w", id, err)
	}
	return &t, nil
}

func saveTicket(tx *store.Tx, t *Ticket) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := tx.PutScoped(t.ID, bTickets, tkey(t.ID), b); err != nil {
		return err
	}
	remember(tx, t)
	return nil
}

// loadMessage reads message seq of ticket id with its text.
func loadMessage(tx *store.Tx, id uint64, seq int) (*Message, error) {
	m, apart, err := loadMessageMeta(tx, id, seq)
	if err != nil || !apart {
		return m, err
	}
	b, err := loadBody(tx, id, seq)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("ticket %d message %d: its text is missing", id, seq)
	}
	m.Text, m.HTML = b.text, b.html
	return m, nil
}

// loadBody reads and decodes the bBody record of message seq of ticket id; nil, nil when there
// is none.
func loadBody(tx *store.Tx, id uint64, seq int) (*body, error) {
	v, err := tx.GetScoped(id, bBody, mkey(id, seq))
	if v == nil || err != nil {
		if err != nil {
			err = fmt.Errorf("ticket %d message %d: %w", id, seq, err)
		}
		return nil, err
	}
	b, err := decodeBody(v)
	if err != nil {
		return nil, fmt.Errorf("ticket %d message %d: %w", id, seq, err)
	}
	return &b, nil
}

// loadMessageMeta reads message seq of ticket id without opening its text when that is kept
// apart (apart is then true, and Text and HTML are empty): for the checks on the mail path
// that need only the headers. A message read so must not be saved. A message whose headers are
// kept with its text (saveMessageApart) is read whole, text included, and apart is false.
func loadMessageMeta(tx *store.Tx, id uint64, seq int) (m *Message, apart bool, err error) {
	v, err := tx.GetScoped(id, bMessages, mkey(id, seq))
	if err != nil {
		return nil, false, fmt.Errorf("ticket %d message %d: %w", id, seq, err)
	}
	if v == nil {
		return nil, false, ErrNotFound
	}
	var r messageRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, false, err
	}
	if !r.HeadApart {
		return &r.Message, r.BodyApart, nil
	}
	d, err := loadBody(tx, id, seq)
	if err != nil {
		return nil, false, err
	}
	if d == nil || d.head == nil {
		return nil, false, fmt.Errorf("ticket %d message %d: its headers are missing", id, seq)
	}
	m = new(Message)
	if err := json.Unmarshal(d.head, m); err != nil {
		return nil, false, fmt.Errorf("ticket %d message %d: %w", id, seq, err)
	}
	r.stub().applyTo(m)
	m.Text, m.HTML = d.text, d.html
	return m, false, nil
}

// messageRecord is a message as stored in bMessages. Records written before bodies were kept
// apart, and those saveMessage writes, carry the text inline and no BodyApart. Those
// saveMessageApart writes are a messageStub: HeadApart, and only what the transaction decided.
type messageRecord struct {
	Message
	BodyApart bool `json:"body_apart,omitempty"`
	HeadApart bool `json:"head_apart,omitempty"`
}

// messageStub is what bMessages holds of an inbound message whose headers went with its text
// into bBody: the fields its transaction decides (placement, IMAP UID, the Message-ID verdict),
// which cannot be known when that record is written ahead. Everything else, the 500 bytes and
// more of addresses, subject, authentication results and digest, stays out of the B-tree,
// whose pages bbolt maps and which would otherwise make up most of mailgate's resident memory.
type messageStub struct {
	Ticket    uint64 `json:"ticket"`
	Seq       int    `json:"seq"`
	Direction string `json:"direction"`
	UID       uint32 `json:"uid,omitempty"`
	IDTaken   bool   `json:"id_taken,omitempty"`
	Problem   string `json:"problem,omitempty"`
	HeadApart bool   `json:"head_apart"`
}

func stubOf(m *Message) messageStub {
	return messageStub{Ticket: m.Ticket, Seq: m.Seq, Direction: m.Direction, UID: m.UID, IDTaken: m.IDTaken, Problem: m.Problem, HeadApart: true}
}

func (r *messageRecord) stub() messageStub {
	return messageStub{Ticket: r.Ticket, Seq: r.Seq, Direction: r.Direction, UID: r.UID, IDTaken: r.IDTaken, Problem: r.Problem, HeadApart: true}
}

// applyTo sets the stub's fields on m, whatever m had for them.
func (st messageStub) applyTo(m *Message) {
	m.Ticket, m.Seq, m.Direction, m.UID, m.IDTaken, m.Problem = st.Ticket, st.Seq, st.Direction, st.UID, st.IDTaken, st.Problem
}

// headOf is m as encodeBody keeps it: no text, and the stub's fields zero.
func headOf(m *Message) Message {
	h := *m
	h.Text, h.HTML = "", ""
	messageStub{}.applyTo(&h)
	return h
}

// saveMessage stores m whole, its text inline: for the paths that change a stored message
// (delivery states, bounces), which are not the inbound path every writer waits on.
func saveMessage(tx *store.Tx, m *Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := tx.PutScoped(m.Ticket, bMessages, mkey(m.Ticket, m.Seq), b); err != nil {
		return err
	}
	// A text kept apart before is now inline: the old copy must not outlive it, and the raw
	// message it may hold moves to bRaw.
	d, err := loadBody(tx, m.Ticket, m.Seq)
	if d == nil || err != nil {
		return err
	}
	if d.raw != nil {
		if err := tx.PutScoped(m.Ticket, bRaw, mkey(m.Ticket, m.Seq), d.raw); err != nil {
			return err
		}
	}
	return tx.Delete(bBody, mkey(m.Ticket, m.Seq))
}

// apartBody is a message's text and raw bytes, and its headers as they were before the
// transaction, encoded and prepared (written ahead to a segment) by the writer's goroutine: see
// encodeBody.
type apartBody struct {
	prep *store.Prepared
	head Message // headOf the message encoded
}

// saveMessageApart stores m with body, prepared before the transaction: when m's headers are
// still those body holds, bMessages gets only m's stub and the write lock every writer waits
// on marshals and seals some 80 bytes. When the transaction changed them (a hook), the headers
// are stored in bMessages as before and only the text is read from body.
func saveMessageApart(tx *store.Tx, m *Message, body *apartBody) error {
	var v any
	if h := headOf(m); reflect.DeepEqual(&h, &body.head) {
		v = stubOf(m)
	} else {
		r := messageRecord{Message: *m, BodyApart: true}
		r.Text, r.HTML = "", ""
		v = &r
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := tx.PutScoped(m.Ticket, bMessages, mkey(m.Ticket, m.Seq), b); err != nil {
		return err
	}
	return tx.PutScopedPrepared(m.Ticket, bBody, mkey(m.Ticket, m.Seq), body.prep)
}

// Records of bBody. Binary, not JSON, so that neither writing nor reading them escapes or scans
// 8 KB of text:
//
//	bodyV1: 1 | uvarint(len(Text)) | Text | HTML
//	bodyV2: 2 | uvarint(len(head)) | head | uvarint(len(Text)) | Text | uvarint(len(HTML)) | HTML | raw?
//
// where head is the JSON of headOf(message) and raw?, the message as received, is 0, or 1 and
// the rest of the record. Raw mail and text in one record take one reference in the B-tree
// instead of two, and compress together better than apart (the text is decoded from the raw).
const (
	bodyV1 = 1
	bodyV2 = 2
)

// body is a decoded bBody record: head is nil for a bodyV1 one, raw nil when it holds none.
type body struct {
	head       []byte
	text, html string
	raw        []byte
}

// encodeBody encodes m's headers and text, and raw when not nil, for saveMessageApart; the
// caller prepares the result (DB.Prepare) outside any transaction.
func encodeBody(m *Message, raw []byte) (apartBody, []byte, error) {
	h := headOf(m)
	head, err := json.Marshal(&h)
	if err != nil {
		return apartBody{}, nil, err
	}
	b := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(head)+len(m.Text)+len(m.HTML)+len(raw))
	b = append(b, bodyV2)
	for _, part := range []string{string(head), m.Text, m.HTML} {
		b = binary.AppendUvarint(b, uint64(len(part)))
		b = append(b, part...)
	}
	if raw == nil {
		return apartBody{head: h}, append(b, 0), nil
	}
	return apartBody{head: h}, append(append(b, 1), raw...), nil
}

var errDamagedBody = errors.New("damaged message text record")

// decodeBody reads a bBody record.
func decodeBody(v []byte) (body, error) {
	if len(v) == 0 || (v[0] != bodyV1 && v[0] != bodyV2) {
		return body{}, errors.New("unknown message text record")
	}
	rest := v[1:]
	next := func() ([]byte, bool) {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return nil, false
		}
		part := rest[k : k+int(n)]
		rest = rest[k+int(n):]
		return part, true
	}
	var b body
	if v[0] == bodyV1 {
		text, ok := next()
		if !ok {
			return body{}, errDamagedBody
		}
		b.text, b.html = string(text), string(rest)
		return b, nil
	}
	head, ok1 := next()
	text, ok2 := next()
	html, ok3 := next()
	if !ok1 || !ok2 || !ok3 || len(rest) == 0 || rest[0] > 1 || (rest[0] == 0 && len(rest) > 1) {
		return body{}, errDamagedBody
	}
	b.head, b.text, b.html = head, string(text), string(html)
	if rest[0] == 1 {
		b.raw = rest[1:]
	}
	return b, nil
}

// loadRaw reads message seq of ticket id exactly as received; nil for a message that has none
// (notes). Inbound mail keeps it in its bBody record, with its headers and text.
func loadRaw(tx *store.Tx, id uint64, seq int) ([]byte, error) {
	raw, err := tx.GetScoped(id, bRaw, mkey(id, seq))
	if raw != nil || err != nil {
		return raw, err
	}
	b, err := loadBody(tx, id, seq)
	if b == nil || err != nil {
		return nil, err
	}
	return b.raw, nil
}

// addMessage appends m (and its raw bytes and attachments) to t inside tx and indexes it.
func (s *Service) addMessage(tx *store.Tx, t *Ticket, m *Message, raw []byte, atts []ParsedAttachment) error {
	return s.addMessageAhead(tx, t, m, raw, atts, ahead{})
}

// ahead is what Ingest computes for addMessage before its transaction, so that the write lock
// every writer waits on has less to do: the message's headers and text, encoded, compressed
// and written ahead (encodeBody, DB.PrepareAll), and the index keys of its Message-ID.
type ahead struct {
	body *apartBody
	ids  *idKeys
}

// addMessageAhead is addMessage with work done ahead where ah has it.
func (s *Service) addMessageAhead(tx *store.Tx, t *Ticket, m *Message, raw []byte, atts []ParsedAttachment, ah ahead) error {
	t.Messages++
	m.Ticket, m.Seq = t.ID, t.Messages
	for i, a := range atts {
		if err := tx.PutScoped(t.ID, bAttach, binary.BigEndian.AppendUint32(mkey(t.ID, m.Seq), uint32(i)), a.Data); err != nil {
			return err
		}
	}
	if raw != nil {
		if err := tx.PutScoped(t.ID, bRaw, mkey(t.ID, m.Seq), raw); err != nil {
			return err
		}
	}
	if m.MessageID != "" {
		if err := s.claimID(tx, t, m, ah.ids); err != nil {
			return err
		}
	}
	uid, err := s.nextUID(tx, t.Queue)
	if err != nil {
		return err
	}
	m.UID = uid
	if err := tx.PutPlain(bMailbox, binary.BigEndian.AppendUint32(append([]byte(nil), s.qprefix(t.Queue)...), uid), mkey(t.ID, m.Seq)); err != nil {
		return err
	}
	if ah.body != nil {
		err = saveMessageApart(tx, m, ah.body)
	} else {
		err = saveMessage(tx, m)
	}
	if err != nil {
		return err
	}
	t.Updated = s.opts.Now().UTC()
	t.noteMessage(m, t.Updated)
	if err := s.queueForIndex(tx, t.ID, m.Seq); err != nil {
		return err
	}
	return saveTicket(tx, t)
}

// putAttachments stores a message's attachments, prepared before the transaction.
func putAttachments(tx *store.Tx, id uint64, seq int, atts []*store.Prepared) error {
	for i, a := range atts {
		if err := tx.PutScopedPrepared(id, bAttach, binary.BigEndian.AppendUint32(mkey(id, seq), uint32(i)), a); err != nil {
			return err
		}
	}
	return nil
}

// claimID points m's Message-ID at m, unless a message that still exists holds it already:
// the first writer keeps its id. Otherwise whoever sends new mail quoting a customer's
// Message-ID would take over the index, and the customer's genuine follow-up would thread into
// the sender's ticket (or, when the sender cannot pass as the customer, open a new one).
//
// There are two entries: one per queue, which threading and duplicate detection read, and one
// for the whole store (FindMessage, and the only one written before per-queue entries
// existed). A message sent to two queues is then first in both, and only a second writer in
// the same queue is marked as such.
func (s *Service) claimID(tx *store.Tx, t *Ticket, m *Message, pre *idKeys) error {
	kq, kg := pre.of(s.db, t.Queue, m.MessageID)
	if err := s.backfill(tx, kq, kg, t.Queue); err != nil {
		return err
	}
	taken, err := s.claim(tx, kq, t, m)
	if err != nil {
		return err
	}
	if taken {
		m.IDTaken = true
		if m.Direction == In && m.Problem == "" {
			m.Problem = "an earlier message already uses this Message-ID: replies that quote it thread to that message, not to this one"
		}
	}
	_, err = s.claim(tx, kg, t, m)
	return err
}

// backfill copies a store-wide entry written before per-queue entries existed into queue's
// entry kq when it names a message of that queue: that message was the first writer there, and
// a newcomer must not take its place.
func (s *Service) backfill(tx *store.Tx, kq, kg []byte, queue string) error {
	if v, err := tx.GetPlain(bMsgID, kq); err != nil || len(v) == 12 {
		return err
	}
	g, err := tx.GetPlain(bMsgID, kg)
	if err != nil || len(g) != 12 {
		return err
	}
	ot, err := loadTicket(tx, store.FromU64(g))
	if err != nil || ot.Queue != queue {
		return nil // gone, or another queue's: nothing to keep here
	}
	return tx.PutPlain(bMsgID, kq, g)
}

// claim writes index entry k for m unless a message that still exists holds it (taken).
func (s *Service) claim(tx *store.Tx, k []byte, t *Ticket, m *Message) (taken bool, err error) {
	v, err := tx.GetPlain(bMsgID, k)
	if err != nil {
		return false, err
	}
	if len(v) == 12 {
		id, seq := store.FromU64(v), int(binary.BigEndian.Uint32(v[8:]))
		if id == t.ID && seq == m.Seq {
			return false, nil
		}
		// A purged or destroyed ticket no longer holds anything: its id is free again. The
		// message's own record says whether it exists; its headers and text need not be opened.
		if v, err := tx.GetScoped(id, bMessages, mkey(id, seq)); err == nil && v != nil {
			return true, nil
		} else if err != nil && !errors.Is(err, store.ErrScopeDestroyed) {
			return false, err
		}
	}
	return false, tx.PutPlain(bMsgID, k, mkey(t.ID, m.Seq))
}

// queueIDKey is the per-queue index entry of Message-ID id.
func queueIDKey(db *store.DB, queue, id string) []byte {
	return db.Index("msgid-queue", queue+"\x00"+normID(id))
}

// idEntry reads the index entry of Message-ID id for queue: the queue's own, else (mail
// stored before per-queue entries) the store-wide one. pre may hold the keys, computed ahead.
func (s *Service) idEntry(tx *store.Tx, queue, id string, pre *idKeys) ([]byte, error) {
	kq, kg := pre.of(s.db, queue, id)
	v, err := tx.GetPlain(bMsgID, kq)
	if err != nil || len(v) == 12 {
		return v, err
	}
	return tx.GetPlain(bMsgID, kg)
}

// idKeys are the two index keys of a Message-ID (two HMACs), computed before the transaction
// that reads and writes them.
type idKeys struct {
	queue, id string
	kq, kg    []byte
}

func messageIDKeys(db *store.DB, queue, id string) *idKeys {
	return &idKeys{queue: queue, id: id, kq: queueIDKey(db, queue, id), kg: db.Index("msgid", normID(id))}
}

// of returns the per-queue and store-wide keys of id in queue: k's when it was made for them.
func (k *idKeys) of(db *store.DB, queue, id string) (kq, kg []byte) {
	if k != nil && k.queue == queue && k.id == id {
		return k.kq, k.kg
	}
	return queueIDKey(db, queue, id), db.Index("msgid", normID(id))
}

// nextUID hands out the queue mailbox's next IMAP UID; UIDVALIDITY is fixed when the mailbox
// is first used, so it survives restarts.
func (s *Service) nextUID(tx *store.Tx, queue string) (uint32, error) {
	k := s.qprefix(queue)
	v, err := tx.GetPlain(bUIDs, k)
	if err != nil {
		return 0, err
	}
	var validity, last uint32
	if len(v) == 8 {
		validity, last = binary.BigEndian.Uint32(v), binary.BigEndian.Uint32(v[4:])
	} else {
		validity = uint32(s.opts.Now().Unix())
	}
	last++
	out := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, validity), last)
	return last, tx.PutPlain(bUIDs, k, out)
}

func normID(id string) string { return strings.ToLower(strings.Trim(strings.TrimSpace(id), "<>")) }

// MintMessageID makes the Message-ID of an outbound message of ticket id to recipient: it
// carries the ticket id, a random part and a MAC over both and the recipient, so a reply that
// quotes it can be tied to the ticket, and a forged one cannot.
func (s *Service) MintMessageID(id uint64, recipient string) string {
	r := make([]byte, 8)
	rand.Read(r)
	rnd := hex.EncodeToString(r)
	return fmt.Sprintf("mg.%d.%s.%s@%s", id, rnd, s.idMAC(id, rnd, recipient), s.opts.Hostname)
}

func (s *Service) idMAC(id uint64, rnd, recipient string) string {
	return hex.EncodeToString(s.db.MAC("message-id", store.U64(id), []byte(rnd), []byte(strings.ToLower(recipient))))[:20]
}

var mintedRe = regexp.MustCompile(`^mg\.(\d{1,19})\.([0-9a-f]{16})\.([0-9a-f]{20})@(.+)$`)

// minted reports whether id looks like one of ours, and for which ticket.
func (s *Service) minted(id string) (ticket uint64, rnd, mac string, ok bool) {
	m := mintedRe.FindStringSubmatch(normID(id))
	if m == nil || !strings.EqualFold(m[4], s.opts.Hostname) {
		return 0, "", "", false
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		return 0, "", "", false
	}
	return n, m[2], m[3], true
}

// audit appends an event inside tx.
func (s *Service) audit(tx *store.Tx, a access.Actor, action, object, result, detail string) error {
	return s.log.AppendTx(tx, audit.Event{Actor: a.Name, Action: action, Object: object, Remote: a.Remote, Result: result, Detail: detail})
}

func object(id uint64) string { return "ticket/" + strconv.FormatUint(id, 10) }

func macEqual(a, b string) bool { return hmac.Equal([]byte(a), []byte(b)) }
