// Package tickets owns the ticket and message model: ingesting verified mail, threading that
// cannot be hijacked, replies, notes, status, assignment and links. It checks who may do what
// and audits every access, but never speaks SMTP or HTTP.
package tickets

import (
	"errors"
	"time"
)

// Status of a ticket.
type Status string

// Statuses, in their usual order.
const (
	StatusNew     Status = "new"
	StatusOpen    Status = "open"
	StatusPending Status = "pending"
	StatusSolved  Status = "solved"
	StatusClosed  Status = "closed"
)

// ValidStatus reports whether s is one of the statuses.
func ValidStatus(s Status) bool {
	switch s {
	case StatusNew, StatusOpen, StatusPending, StatusSolved, StatusClosed:
		return true
	}
	return false
}

// Directions of a message.
const (
	In   = "in"
	Out  = "out"
	Note = "note"
)

// Participant is an address that wrote to or was written to on a ticket.
type Participant struct {
	Address  string `json:"address"`
	Name     string `json:"name,omitempty"`
	Verified bool   `json:"verified"` // has written at least once with a DMARC-aligned pass
}

// Ticket is one conversation with a customer.
type Ticket struct {
	ID           uint64        `json:"id"`
	Queue        string        `json:"queue"`
	Subject      string        `json:"subject"`
	Status       Status        `json:"status"`
	Customer     string        `json:"customer"`
	Participants []Participant `json:"participants"`
	Assignee     string        `json:"assignee,omitempty"`
	Links        []uint64      `json:"links,omitempty"`
	Created      time.Time     `json:"created"`
	Updated      time.Time     `json:"updated"`
	Messages     int           `json:"messages"`
	// Encrypted is set once the customer wrote PGP-encrypted mail: replies are then encrypted
	// whenever a key is known.
	Encrypted bool `json:"encrypted,omitempty"`

	// Work-queue fields, derived from the thread as messages join it (noteMessage).

	// Waiting is when the oldest customer message without an agent's answer arrived; zero
	// when the agents have answered (or only automatic mail came).
	Waiting time.Time `json:"waiting,omitzero"`
	// Unverified: the newest customer message had no DMARC-aligned pass (it may be spoofed).
	Unverified bool `json:"unverified,omitempty"`
	// Quarantined: the newest customer message failed DMARC under a quarantine policy.
	Quarantined bool `json:"quarantined,omitempty"`
	// AutoReply: the newest inbound mail was automatic (out of office, RFC 3834).
	AutoReply bool `json:"auto_reply,omitempty"`
	// Bounced: a reply bounced or could not be delivered, and no reply was sent since.
	Bounced bool `json:"bounced,omitempty"`
	// Derived is the version of these fields; older tickets are brought up to date at start.
	Derived int `json:"derived,omitempty"`
	// Events are the agents' changes (status, assignment, links), shown in the thread; the
	// audit log has them too, with everything else.
	Events []Event `json:"events,omitempty"`
}

// Event is one change an agent made to a ticket.
type Event struct {
	Time  time.Time `json:"time"`
	Actor string    `json:"actor"`
	What  string    `json:"what"` // "status", "assign", "link"
	Value string    `json:"value"`
}

// maxEvents bounds the events a ticket keeps (older ones stay in the audit log).
const maxEvents = 200

func (t *Ticket) addEvent(e Event) {
	t.Events = append(t.Events, e)
	if len(t.Events) > maxEvents {
		t.Events = t.Events[len(t.Events)-maxEvents:]
	}
}

// Participant returns the participant with address addr.
func (t *Ticket) Participant(addr string) (*Participant, bool) {
	for i := range t.Participants {
		if equalAddr(t.Participants[i].Address, addr) {
			return &t.Participants[i], true
		}
	}
	return nil, false
}

// Auth is the sender verification verdict that travels with an inbound message.
type Auth struct {
	SPF         string `json:"spf"`
	DKIM        string `json:"dkim"`
	DMARC       string `json:"dmarc"`
	Verified    bool   `json:"verified"`
	Quarantined bool   `json:"quarantined,omitempty"`
	// Results is the Authentication-Results header mailgate wrote.
	Results string `json:"results,omitempty"`
}

// Attachment describes one attachment; its bytes are read with Service.Attachment.
type Attachment struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	ContentType string `json:"content_type"`
	Size        int    `json:"size"`
}

// Message is one entry in a ticket's thread.
type Message struct {
	Ticket     uint64    `json:"ticket"`
	Seq        int       `json:"seq"`
	Direction  string    `json:"direction"`
	From       string    `json:"from"`
	FromName   string    `json:"from_name,omitempty"`
	To         string    `json:"to"`
	Cc         []string  `json:"cc,omitempty"`
	Subject    string    `json:"subject"`
	MessageID  string    `json:"message_id"`
	InReplyTo  []string  `json:"in_reply_to,omitempty"`
	References []string  `json:"references,omitempty"`
	Date       time.Time `json:"date"`
	Received   time.Time `json:"received"`
	Text       string    `json:"text"`
	// HTML is the message's HTML part as received; it must be sanitised before display.
	HTML        string       `json:"html,omitempty"`
	Attachments []Attachment `json:"attachments,omitempty"`
	Encrypted   bool         `json:"encrypted"`
	Signed      bool         `json:"signed,omitempty"`
	SignedBy    string       `json:"signed_by,omitempty"`
	Auth        *Auth        `json:"auth,omitempty"`
	Verified    bool         `json:"verified"`
	Quarantined bool         `json:"quarantined,omitempty"`
	// Author is the agent who wrote an outbound message or a note.
	Author string `json:"author,omitempty"`
	// Delivery is queued, sent or failed for outbound messages.
	Delivery string `json:"delivery,omitempty"`
	// Problem says what was wrong with the input (malformed MIME, undecryptable PGP…).
	Problem string `json:"problem,omitempty"`
	// Kind marks special inbound mail: "bounce", "auto-reply".
	Kind string `json:"kind,omitempty"`
	// Language is the customer's language as the mail says it (Content-Language, else the first
	// of Accept-Language), a lower-case tag; "" when it says none.
	Language string `json:"language,omitempty"`
	// UID is the message's IMAP UID in its queue's mailbox.
	UID uint32 `json:"uid,omitempty"`
	// Digest identifies an inbound message's content, so that a retransmission is told apart
	// from another message that reuses its Message-ID.
	Digest string `json:"digest,omitempty"`
	// IDTaken is set when an earlier message already held this Message-ID: the index keeps
	// pointing at that one, and mail that refers to the id never threads here.
	IDTaken bool `json:"id_taken,omitempty"`
}

// Errors callers map to protocol answers.
var (
	// ErrNotFound is returned for a missing ticket and for one the actor may not see, so that
	// ids cannot be probed.
	ErrNotFound = errors.New("no such ticket")
	// ErrForbidden is returned when the actor may see the ticket but not do this to it.
	ErrForbidden = errors.New("not allowed")
	// ErrInvalid wraps bad arguments.
	ErrInvalid = errors.New("invalid request")
	// ErrNotSent wraps why a reply could not be composed (no key under encrypt = required…):
	// nothing was queued and the ticket has a note saying why.
	ErrNotSent = errors.New("reply not sent")
)
