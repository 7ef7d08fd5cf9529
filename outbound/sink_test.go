package outbound

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"mailgate/config"
	"mailgate/tickets"
)

// These tests talk to Debian's postfix smtp-sink, a real SMTP server we did not write, and
// check what it stored with python3-dkim, a DKIM verifier we did not write.

func sinkEnv(t *testing.T, addr, mode string) *env {
	return newEnv(t, func(c *config.Config) { c.Outbound.Relay, c.Outbound.RelayTLS = addr, mode })
}

// TestSinkDeliveryVerifiesAndThreads: a reply goes through smtp-sink; the stored bytes verify
// with python3-dkim (RSA and Ed25519), and the customer's answer to it joins the same ticket.
func TestSinkDeliveryVerifiesAndThreads(t *testing.T) {
	s := startSink(t, freeAddr(t))
	e := sinkEnv(t, s.Addr, TLSNone)
	e.start()
	id := e.ticket(customer)
	m := e.reply(id, "Turn it off and on again.\n\n-- \nSupport")
	if a := e.wait(); a.Outcome != "sent" {
		t.Fatalf("attempt %+v", a)
	}
	msgs := s.messages(t)
	if len(msgs) != 1 {
		t.Fatalf("smtp-sink stored %d messages", len(msgs))
	}
	got := msgs[0]
	if got.Helo != testHost || got.MailFrom != "<"+queueAddr+">" || strings.Join(got.Rcpts, ",") != "<"+customer+">" {
		t.Errorf("envelope: helo %q, mail %q, rcpts %v", got.Helo, got.MailFrom, got.Rcpts)
	}
	if !bytes.Equal(got.Data, e.raw(id, m.Seq)) {
		t.Errorf("smtp-sink stored other bytes than the ticket keeps:\n%s", got.Data)
	}
	requireBothVerify(t, got.Data, e.dnsRecords())

	// The customer answers the reply: In-Reply-To carries our minted Message-ID.
	answer := fmt.Sprintf("From: Customer <%s>\r\nTo: %s\r\nSubject: Re: Printer on fire [#%d]\r\nMessage-ID: <answer1@example.net>\r\n"+
		"In-Reply-To: <%s>\r\nReferences: <%s>\r\nDate: Sat, 01 Mar 2025 13:00:00 +0000\r\n\r\nThanks, it works.\r\n",
		customer, queueAddr, id, m.MessageID, m.MessageID)
	res, err := e.tk.Ingest(tickets.Incoming{Queue: "Support", Raw: []byte(answer), Via: "smtp", MailFrom: customer,
		Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ticket != id || res.Outcome != tickets.OutcomeThreaded {
		t.Errorf("the answer went to ticket %d (%s), want %d threaded", res.Ticket, res.Outcome, id)
	}
}

// TestSinkRejects5xx: smtp-sink refusing RCPT with a 5xx marks the reply failed at once and
// tells the agents in a note.
func TestSinkRejects5xx(t *testing.T) {
	s := startSink(t, freeAddr(t), "-f", "RCPT")
	e := sinkEnv(t, s.Addr, TLSNone)
	e.start()
	id := e.ticket(customer)
	m := e.reply(id, "hello")
	a := e.wait()
	if a.Outcome != "failed" || a.Failed != 1 || a.Attempt != 1 || !strings.Contains(a.Err, "500") {
		t.Fatalf("attempt %+v", a)
	}
	msgs := e.messages(id)
	if msgs[m.Seq-1].Delivery != "failed" {
		t.Errorf("delivery %q", msgs[m.Seq-1].Delivery)
	}
	if n := msgs[len(msgs)-1]; n.Direction != tickets.Note || !strings.Contains(n.Text, customer) || !strings.Contains(n.Text, "RCPT TO: 500 5.3.0 Error: command failed") {
		t.Errorf("no failure note: %+v", n)
	}
	if len(s.messages(t)) != 0 {
		t.Error("smtp-sink stored a message it refused")
	}
	if evs := e.audited("mail.failed"); len(evs) != 1 {
		t.Errorf("audit %+v", evs)
	}
}

// TestSinkNoSTARTTLS: smtp-sink does not offer STARTTLS; with relay_tls = "starttls" nothing is
// sent and the reply stays queued.
func TestSinkNoSTARTTLS(t *testing.T) {
	s := startSink(t, freeAddr(t))
	e := sinkEnv(t, s.Addr, TLSStartTLS)
	e.start()
	id := e.ticket(customer)
	m := e.reply(id, "secret")
	a := e.wait()
	if a.Outcome != "retry" || !strings.Contains(a.Err, "STARTTLS") {
		t.Fatalf("attempt %+v", a)
	}
	if n := len(s.messages(t)); n != 0 {
		t.Fatalf("smtp-sink stored %d messages over a connection without TLS", n)
	}
	if e.message(id, m.Seq).Delivery != "queued" {
		t.Error("not queued any more")
	}
}

// TestSinkDownThenUp: the relay is down, the worker retries; a restart (a new Outbound on the
// reopened database) resumes; when the relay comes up it gets exactly one copy.
func TestSinkDownThenUp(t *testing.T) {
	addr := freeAddr(t)
	e := newEnv(t, func(c *config.Config) {
		c.Outbound.Relay, c.Outbound.RelayTLS = addr, TLSNone
		c.Outbound.FirstRetry = config.Duration{Duration: time.Minute}
	})
	e.start()
	id := e.ticket(customer)
	m := e.reply(id, "are you there?")
	if a := e.wait(); a.Outcome != "retry" || a.Attempt != 1 {
		t.Fatalf("attempt %+v", a)
	}
	e.clock.Add(time.Minute)
	e.ob.Kick()
	if a := e.wait(); a.Outcome != "retry" || a.Attempt != 2 {
		t.Fatalf("attempt %+v", a)
	}

	e.reopen() // mailgate restarts while the relay is still down
	s := startSink(t, addr)
	e.start()
	e.clock.Add(2 * time.Minute) // the second failure's backoff
	e.ob.Kick()
	a := e.wait()
	if a.Outcome != "sent" || a.Attempt != 3 {
		t.Fatalf("attempt %+v, want sent on the third try", a)
	}
	// Another kick and a long wait must not send a second copy.
	e.clock.Add(time.Hour)
	e.ob.Kick()
	e.reply(id, "second reply, to flush the worker")
	if a := e.wait(); a.Outcome != "sent" || a.Seq == m.Seq {
		t.Fatalf("attempt %+v", a)
	}
	var copies int
	for _, g := range s.messages(t) {
		if bytes.Equal(g.Data, e.raw(id, m.Seq)) {
			copies++
		}
	}
	if copies != 1 {
		t.Errorf("the relay got %d copies of the reply, want exactly 1", copies)
	}
	if e.message(id, m.Seq).Delivery != "sent" {
		t.Error("not marked sent")
	}
}
