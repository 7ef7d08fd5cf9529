package outbound

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailgate/internal/testutil"
	"mailgate/tickets"
)

var verified = tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}

func parsed(t *testing.T, headers string) *tickets.Parsed {
	t.Helper()
	return tickets.Parse([]byte(strings.ReplaceAll(headers, "\n", "\r\n") + "\r\n\r\nHello\r\n"))
}

func TestAutoAckRules(t *testing.T) {
	const base = "From: Customer <cust@example.net>\nTo: support@example.com\nSubject: Help\nMessage-ID: <m1@example.net>"
	smtpIn := tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: verified}
	cases := []struct {
		name    string
		headers string
		in      tickets.Incoming
		want    bool
	}{
		{"a person, verified", base, smtpIn, true},
		{"Auto-Submitted: no", base + "\nAuto-Submitted: no", smtpIn, true},
		{"Auto-Submitted: No (comment)", base + "\nAuto-Submitted: No (a person)", smtpIn, true},
		{"auto-replied", base + "\nAuto-Submitted: auto-replied", smtpIn, false},
		{"auto-generated", base + "\nAuto-Submitted: auto-generated", smtpIn, false},
		{"auto-notified with params", base + "\nAuto-Submitted: auto-notified; owner-email=\"x@y\"", smtpIn, false},
		{"Precedence bulk", base + "\nPrecedence: bulk", smtpIn, false},
		{"Precedence list", base + "\nPrecedence: list", smtpIn, false},
		{"Precedence junk", base + "\nPrecedence: JUNK", smtpIn, false},
		{"List-Id", base + "\nList-Id: <users.lists.example.org>", smtpIn, false},
		{"List-Unsubscribe", base + "\nList-Unsubscribe: <mailto:unsub@example.org>", smtpIn, false},
		{"List-Post", base + "\nList-Post: NO", smtpIn, false},
		{"X-Auto-Response-Suppress", base + "\nX-Auto-Response-Suppress: All", smtpIn, false},
		{"X-Autoreply", base + "\nX-Autoreply: yes", smtpIn, false},
		{"multipart/report", base + "\nContent-Type: multipart/report; report-type=delivery-status; boundary=x", smtpIn, false},
		{"out of office subject", strings.Replace(base, "Subject: Help", "Subject: Out of Office: back Monday", 1), smtpIn, false},
		{"automatic reply subject", strings.Replace(base, "Subject: Help", "Subject: Automatic reply: Help", 1), smtpIn, false},
		{"a subject about autos", strings.Replace(base, "Subject: Help", "Subject: Auto: my car broke down", 1), smtpIn, true},
		{"null sender", base, tickets.Incoming{Via: "smtp", MailFrom: "", Auth: verified}, false},
		{"bounce kind", base, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: verified, Kind: "bounce"}, false},
		{"auto-reply kind", base, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: verified, Kind: "auto-reply"}, false},
		{"mailer-daemon From", strings.Replace(base, "cust@example.net", "MAILER-DAEMON@example.net", 1), tickets.Incoming{Via: "smtp", MailFrom: "x@example.net", Auth: verified}, false},
		{"postmaster From", strings.Replace(base, "cust@example.net", "postmaster@example.net", 1), tickets.Incoming{Via: "smtp", MailFrom: "postmaster@example.net", Auth: verified}, false},
		{"noreply From", strings.Replace(base, "cust@example.net", "noreply@example.net", 1), tickets.Incoming{Via: "smtp", MailFrom: "noreply@example.net", Auth: verified}, false},
		{"no-reply+tag From", strings.Replace(base, "cust@example.net", "no-reply+abc@example.net", 1), tickets.Incoming{Via: "smtp", MailFrom: "no-reply+abc@example.net", Auth: verified}, false},
		{"do-not-reply From", strings.Replace(base, "cust@example.net", "do-not-reply@example.net", 1), tickets.Incoming{Via: "smtp", MailFrom: "do-not-reply@example.net", Auth: verified}, false},
		{"donotreply From", strings.Replace(base, "cust@example.net", "DoNotReply@example.net", 1), tickets.Incoming{Via: "smtp", MailFrom: "DoNotReply@example.net", Auth: verified}, false},
		{"list bounce envelope", base, tickets.Incoming{Via: "smtp", MailFrom: "users-bounces+cust=example.net@lists.example.org", Auth: verified}, false},
		{"owner- envelope", base, tickets.Incoming{Via: "smtp", MailFrom: "owner-users@lists.example.org", Auth: verified}, false},
		{"-request From", strings.Replace(base, "cust@example.net", "users-request@example.net", 1), smtpIn, false},
		{"DMARC fail", base, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: tickets.Auth{SPF: "pass", DMARC: "fail"}}, false},
		{"quarantined", base, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true, Quarantined: true}}, false},
		{"unverified", base, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: tickets.Auth{SPF: "none", DKIM: "none", DMARC: "none"}}, false},
		{"SPF pass, envelope = From", base, tickets.Incoming{Via: "smtp", MailFrom: "Cust@Example.NET", Auth: tickets.Auth{SPF: "pass", DMARC: "none"}}, true},
		{"SPF pass, other envelope", base, tickets.Incoming{Via: "smtp", MailFrom: "someone@example.org", Auth: tickets.Auth{SPF: "pass", DMARC: "none"}}, false},
		{"SPF softfail", base, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: tickets.Auth{SPF: "softfail", DMARC: "none"}}, false},
		{"fetched, Return-Path <>", "Return-Path: <>\n" + base, tickets.Incoming{Via: "imap", Auth: verified}, false},
		{"fetched, Return-Path person", "Return-Path: <cust@example.net>\n" + base, tickets.Incoming{Via: "imap", Auth: verified}, true},
		{"fetched, Return-Path mailer-daemon", "Return-Path: <MAILER-DAEMON@example.net>\n" + base, tickets.Incoming{Via: "imap", Auth: verified}, false},
		{"fetched, no Return-Path", base, tickets.Incoming{Via: "imap", Auth: verified}, true},
		{"no From", "To: support@example.com\nSubject: Help", smtpIn, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := AutoAckAllowed(parsed(t, c.headers), c.in); got != c.want {
				t.Errorf("AutoAckAllowed = %v, want %v", got, c.want)
			}
		})
	}
	if AutoAckAllowed(nil, smtpIn) {
		t.Error("nil message allowed")
	}
}

// TestAutoAckSisimai runs the rules over real bounces and auto-replies (sisimai's set of
// emails): none may get an acknowledgement, even under the most trusting verdict and even
// when inbound did not classify them; the two human messages in the set do get one.
func TestAutoAckSisimai(t *testing.T) {
	dir := testutil.Testdata(t, "autoreplies-bounces/sisimai")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ent := range ents {
		if !strings.HasSuffix(ent.Name(), ".eml") {
			continue
		}
		n++
		raw, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		p := tickets.Parse(raw)
		// The envelope sender as the receiving MTA recorded it; without Return-Path, assume
		// the From (the most favourable case for the sender).
		mailFrom := p.From
		if rp := p.Header.Get("Return-Path"); rp != "" {
			mailFrom = strings.Trim(strings.TrimSpace(rp), "<>")
		}
		for _, via := range []string{"smtp", "imap"} {
			in := tickets.Incoming{Via: via, MailFrom: mailFrom, Auth: verified}
			if via == "imap" {
				in.MailFrom = ""
			}
			human := strings.HasPrefix(ent.Name(), "is-not-bounce-")
			if got := AutoAckAllowed(p, in); got != human {
				t.Errorf("%s via %s (From %s, Subject %q): AutoAckAllowed = %v, want %v", ent.Name(), via, p.From, p.Subject, got, human)
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d messages in the sisimai set", n)
	}
}

func TestLimiter(t *testing.T) {
	l := newLimiter(1, time.Hour)
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	if l.blocked("A@x.example", now) {
		t.Fatal("blocked before anything was sent")
	}
	if !l.take("a@x.example", 1, now) {
		t.Fatal("first take refused")
	}
	if !l.take("A@X.example", 1, now.Add(time.Minute)) {
		t.Error("a second take for the same ticket must succeed (idempotent)")
	}
	if !l.blocked("a@x.example", now.Add(time.Minute)) || l.take("a@x.example", 2, now.Add(time.Minute)) {
		t.Error("a second ticket within the hour got an acknowledgement")
	}
	if l.take("b@x.example", 2, now) == false {
		t.Error("another address is limited")
	}
	if l.blocked("a@x.example", now.Add(time.Hour)) || !l.take("a@x.example", 3, now.Add(time.Hour)) {
		t.Error("still limited after the hour")
	}
	three := newLimiter(3, time.Hour)
	for i := range 3 {
		if !three.take("c@x.example", uint64(i+1), now) {
			t.Fatalf("take %d refused with a limit of 3", i+1)
		}
	}
	if three.take("c@x.example", 9, now) {
		t.Error("fourth take allowed with a limit of 3")
	}
	// Stale entries are swept, so memory does not grow with every address ever seen.
	big := newLimiter(1, time.Hour)
	for i := range 5000 {
		big.take(strings.Repeat("x", i%50)+"@"+time.Duration(i).String()+".example", uint64(i), now)
	}
	big.take("late@x.example", 1, now.Add(2*time.Hour))
	big.mu.Lock()
	size := len(big.sent)
	big.mu.Unlock()
	if size != 1 {
		t.Errorf("%d addresses remembered after they expired", size)
	}
}

// TestAutoAckEndToEnd: a queue with auto_ack sends one acknowledgement for a new ticket,
// marked Auto-Submitted and threaded; a second new ticket from the same address within the
// hour gets none; an answer to the first (joining the ticket) gets none either.
func TestAutoAckEndToEnd(t *testing.T) {
	e := newEnvWith(t, nil, func(e *env, _ *Options) { e.autoAck = true })
	e.start()
	first := e.ticket(customer)
	var a Attempt
	select {
	case a = <-e.attempts:
	case <-time.After(20 * time.Second):
		t.Fatal("no acknowledgement was queued for the new ticket")
	}
	if a.Outcome != "sent" || a.Ticket != first {
		t.Fatalf("attempt %+v", a)
	}
	msgs := e.messages(first)
	ack := msgs[len(msgs)-1]
	if ack.Direction != tickets.Out || ack.Kind != "auto-reply" {
		t.Fatalf("no acknowledgement on the ticket: %+v", ack)
	}
	raw := e.raw(first, ack.Seq)
	h, _, _ := parse(t, raw)
	if h.Get("Auto-Submitted") != "auto-replied" || h.Get("In-Reply-To") == "" {
		t.Errorf("acknowledgement headers: Auto-Submitted %q In-Reply-To %q", h.Get("Auto-Submitted"), h.Get("In-Reply-To"))
	}
	requireBothVerify(t, raw, e.dnsRecords())

	// Second ticket within the hour: the hook already says no (read-only check)…
	p := tickets.Parse(customerMail(customer, "Another problem"))
	if e.ob.AutoAck(p, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: verified}) {
		t.Error("AutoAck allows a second acknowledgement within the hour")
	}
	// …and Compose refuses one that slipped through.
	og := outgoing()
	og.AutoReply, og.Ticket.ID, og.Cc = true, 99, nil
	if _, _, err := e.ob.Compose(og); !errors.Is(err, ErrAutoAckLimited) {
		t.Errorf("Compose of a second acknowledgement: %v", err)
	}
	second := e.ticket(customer)
	for _, m := range e.messages(second) {
		if m.Direction == tickets.Out {
			t.Error("the second ticket got an acknowledgement")
		}
	}
	// After the hour, a new ticket is acknowledged again.
	e.clock.Add(time.Hour + time.Minute)
	third := e.ticket(customer)
	if a := e.wait(); a.Ticket != third || a.Outcome != "sent" {
		t.Errorf("attempt %+v, want the third ticket's acknowledgement", a)
	}
	if n := len(outboxFiles(t, e.ob.Outbox())); n != 2 {
		t.Errorf("%d messages sent, want 2 acknowledgements", n)
	}
}

// TestAutoAckLimitSurvivesRestart: the acknowledgements taken are in the store, so a restart
// (here: closing and reopening the database) does not give a sender a fresh allowance.
func TestAutoAckLimitSurvivesRestart(t *testing.T) {
	e := newEnvWith(t, nil, func(e *env, o *Options) { e.autoAck = true; o.AutoAckPerHour = 2 })
	e.start()
	for i := range 2 {
		id := e.ticket(customer)
		if a := e.wait(); a.Ticket != id || a.Outcome != "sent" {
			t.Fatalf("acknowledgement %d: %+v", i+1, a)
		}
	}
	e.reopen()
	e.start()
	p := tickets.Parse(customerMail(customer, "Third problem"))
	if e.ob.AutoAck(p, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: verified}) {
		t.Fatal("after a restart the sender got a fresh allowance")
	}
	og := outgoing()
	og.AutoReply, og.Ticket.ID, og.Cc = true, 99, nil
	if _, _, err := e.ob.Compose(og); !errors.Is(err, ErrAutoAckLimited) {
		t.Fatalf("Compose of a third acknowledgement after the restart: %v", err)
	}
	third := e.ticket(customer)
	for _, m := range e.messages(third) {
		if m.Direction == tickets.Out {
			t.Error("the third ticket got an acknowledgement")
		}
	}
	// Another sender is not limited, and the window still ends after the hour.
	if !e.ob.AutoAck(tickets.Parse(customerMail("other@example.org", "Hi")), tickets.Incoming{Via: "smtp", MailFrom: "other@example.org", Auth: verified}) {
		t.Error("another sender is limited")
	}
	e.clock.Add(time.Hour + time.Minute)
	e.reopen()
	e.start()
	if !e.ob.AutoAck(p, tickets.Incoming{Via: "smtp", MailFrom: customer, Auth: verified}) {
		t.Error("still limited an hour later")
	}
	// The record names the sender only by an HMAC: the address is not in the file.
	e.close()
	raw, err := os.ReadFile(filepath.Join(e.dir, "mailgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(customer)) {
		t.Error("the database holds the sender's address in clear")
	}
}
