package agentmail

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-message"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/outbound"
	"mailgate/tickets"
)

// Issue 12 items 1–3: who a message submitted by a mail client goes to, Cc, attachments.

// newRelayEnv is newEnv with outbound relaying to smtp-sink, so the test sees the envelope.
func newRelayEnv(t *testing.T, opts ...envOpt) (*env, *relaySink) {
	t.Helper()
	sink := startRelaySink(t)
	e := newEnv(t, opts...)
	e.cfg.Outbound.Relay, e.cfg.Outbound.RelayTLS = sink.addr, "none"
	e.restart()
	return e, sink
}

// agentMail is a plain-text message from an agent's client; cc may be "".
func agentMail(from, to, cc, ref, msgID, subject, body string) string {
	h := fmt.Sprintf("From: %s\r\nTo: %s\r\n", from, to)
	if cc != "" {
		h += "Cc: " + cc + "\r\n"
	}
	if ref != "" {
		h += fmt.Sprintf("References: <%s>\r\n", ref)
	}
	return h + fmt.Sprintf("Subject: %s\r\nMessage-ID: <%s>\r\nDate: Tue, 03 Feb 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s", subject, msgID, body)
}

// swaksSend submits msg with swaks as user (AUTH PLAIN on loopback); it returns swaks' transcript.
func (e *env) swaksSend(t *testing.T, user string, to []string, msg string) (string, error) {
	t.Helper()
	swaks := tool(t, "swaks")
	file := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(file, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(swaks, "--server", e.subAddr, "--ehlo", "client.example.com",
		"--auth", "PLAIN", "--auth-user", user, "--auth-password", e.users[user],
		"--from", user+"@example.com", "--to", strings.Join(to, ","), "--data", "@"+file).CombinedOutput()
	return string(out), err
}

// decodedBody is the text of a single-part message with its transfer encoding undone.
func decodedBody(t *testing.T, raw []byte) []byte {
	t.Helper()
	ent, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("read the delivered message: %v", err)
	}
	b, err := io.ReadAll(ent.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) dkimRecords() map[string]string {
	records := map[string]string{}
	for _, k := range e.ob.DKIMKeys() {
		records[k.RecordName()] = k.Record()
	}
	return records
}

// forwarded is a ticket message as a mail client forwards it inline from the IMAP view, with
// the header fields the view shows (ours and inbound's Authentication-Results among them).
const forwarded = "-------- Forwarded Message --------\r\n" +
	"Subject: Order late\r\n" +
	"X-Mailgate-Ticket: 1\r\n" +
	"X-Mailgate-Verified: yes\r\n" +
	"X-Mailgate-Auth: spf=pass dkim=pass dmarc=pass\r\n" +
	"Authentication-Results: mail.example.com; spf=pass smtp.mailfrom=example.net;\r\n" +
	" dkim=pass header.d=example.net; dmarc=pass header.from=example.net\r\n" +
	"From: Customer <" + customer + ">\r\n" +
	"\r\n" +
	"Hello, my order is late.\r\n"

// TestSubmissionAddressedElsewhereNeverReachesCustomer is issue 12.1's bug: a message that
// names a ticket message in References but is addressed to someone else (dev@example.com,
// no agent) was filed as a reply and sent to the customer. It is refused with the reason, and
// nothing is queued, whichever way the customer is left out.
func TestSubmissionAddressedElsewhereNeverReachesCustomer(t *testing.T) {
	e, sink := newRelayEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")

	msg := agentMail("alice@example.com", "dev@example.com", "", "o1@example.net", "f1@example.com", "Fwd: Order late",
		"Dev, can you look at this one?\r\n\r\n"+forwarded)
	out, err := e.swaksSend(t, "alice", []string{"dev@example.com"}, msg)
	if err == nil || !strings.Contains(out, "550 5.7.1 <dev@example.com> is neither the customer of ticket #1 nor a mailgate agent or queue") {
		t.Fatalf("swaks to dev@example.com: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		name string
		env  []string
		msg  string
		want string
	}{
		{"customer only in the envelope", []string{customer},
			agentMail("alice@example.com", "dev@example.com", "", "o1@example.net", "f2@example.com", "Fwd: x", "Look.\r\n"), "is a recipient but is not in To or Cc"},
		{"colleague and an outsider", []string{"bob@example.com", "dev@example.com"},
			agentMail("alice@example.com", "bob@example.com", "dev@example.com", "o1@example.net", "f3@example.com", "Fwd: x", "Look.\r\n"), "<dev@example.com> is neither"},
		{"outsider in Cc only", []string{"bob@example.com"},
			agentMail("alice@example.com", "bob@example.com", "dev@example.com", "o1@example.net", "f4@example.com", "Fwd: x", "Look.\r\n"), "<dev@example.com> is neither"},
		{"blind copy of a reply", []string{customer, "dev@example.com"},
			agentMail("alice@example.com", customer, "", "o1@example.net", "f5@example.com", "Re: x", "Fine.\r\n"), "blind copies of a reply are not supported"},
		{"reply copied to another queue", []string{customer, "billing@example.com"},
			agentMail("alice@example.com", customer, "billing@example.com", "o1@example.net", "f6@example.com", "Re: x", "Fine.\r\n"), "is a queue address"},
		{"reply-all to a forward", []string{"support@example.com", "bob@example.com"},
			agentMail("alice@example.com", "support@example.com", "bob@example.com", "o1@example.net", "f7@example.com", "Re: Fwd: x", "Thanks Bob.\r\n"), "<bob@example.com> is a colleague"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := e.submit("alice", e.users["alice"], "alice@example.com", tc.env, tc.msg)
			if smtpCode(err) != 550 || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want 550 …%s…", err, tc.want)
			}
		})
	}
	if n := e.ob.Queued(); n != 0 {
		t.Fatalf("%d messages queued for delivery", n)
	}
	if n := len(e.thread(id)); n != 1 {
		t.Fatalf("the ticket has %d messages, want the customer's alone", n)
	}
	if got := sink.stored(t); len(got) != 0 {
		t.Fatalf("the relay got %d messages", len(got))
	}
	evs := e.refusals()
	if len(evs) != 7 || evs[0].Result != audit.Denied || !strings.Contains(evs[0].Detail, "dev@example.com") {
		t.Fatalf("refusal events %+v", evs)
	}
}

// TestSubmissionForwardToColleagueAndQueue: forwarding a ticket to a colleague (an agent of
// another queue) and to another queue works, goes to them alone through the relay, signed,
// with the forwarded text whole, and is kept on the ticket as a note.
func TestSubmissionForwardToColleagueAndQueue(t *testing.T) {
	e, sink := newRelayEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	msg := agentMail("Alice <alice@example.com>", "Bob <bob@example.com>", "billing@example.com", "o1@example.net", "fw1@example.com", "Fwd: Order late",
		"Bob, this one is a billing question.\r\n\r\n"+forwarded)
	if out, err := e.swaksSend(t, "alice", []string{"bob@example.com", "billing@example.com"}, msg); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	e.waitSent(t, id, 2)
	got := sink.stored(t)
	if len(got) != 1 {
		t.Fatalf("smtp-sink stored %d messages, want 1", len(got))
	}
	s := got[0]
	slices.Sort(s.rcpts)
	if s.mailFrom != "<support@example.com>" || strings.Join(s.rcpts, ",") != "<billing@example.com>,<bob@example.com>" {
		t.Fatalf("envelope: MAIL FROM %s, RCPT TO %v", s.mailFrom, s.rcpts)
	}
	m, err := mail.ReadMessage(bytes.NewReader(s.data))
	if err != nil {
		t.Fatal(err)
	}
	if h := m.Header.Get("To") + m.Header.Get("Cc"); strings.Contains(h, customer) {
		t.Errorf("the customer is addressed: %q", h)
	}
	if subj := m.Header.Get("Subject"); subj != "Fwd: Order late [#1]" {
		t.Errorf("Subject %q", subj)
	}
	if to := m.Header.Get("To"); to != "bob@example.com" {
		t.Errorf("To %q", to)
	}
	// Neither the billing queue's acknowledgement nor an out-of-office reply comes back.
	if outbound.AutoAckAllowed(tickets.Parse(s.data), tickets.Incoming{Via: "smtp", MailFrom: "support@example.com",
		Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}}) {
		t.Errorf("the forward would be auto-acknowledged by the queue it reaches:\n%s", s.data)
	}
	for _, want := range []string{"billing question", "Hello, my order is late.", "X-Mailgate-Verified: yes"} {
		if !contains(s.data, want) {
			t.Errorf("the forward lacks %q (colleagues get it whole):\n%s", want, s.data)
		}
	}
	if res := dkimVerify(t, s.data, e.dkimRecords()); len(res) == 0 || slices.Contains(res, false) {
		t.Errorf("python3-dkim: %v", res)
	}
	msgs := e.thread(id)
	if len(msgs) != 2 || msgs[1].Direction != tickets.Note || msgs[1].Kind != "forward" || msgs[1].Author != "alice" ||
		msgs[1].Delivery != "sent" || !strings.Contains(msgs[1].Text, "Forwarded by alice to bob@example.com, billing@example.com") {
		t.Fatalf("thread %+v", msgs)
	}
	tk, _, _ := e.tk.Get(access.Ctl, id)
	if len(tk.Participants) != 1 || tk.Status != tickets.StatusNew {
		t.Fatalf("a forward changed the ticket's participants or status: %+v", tk)
	}
	var ok bool
	for _, ev := range e.events("ticket.forward") {
		ok = ok || (ev.Actor == "alice" && ev.Result == audit.OK && strings.Contains(ev.Detail, "bob@example.com"))
	}
	if !ok {
		t.Fatal("no ticket.forward event")
	}
}

// TestSubmissionReplyStripsMailgateFields: an agent who answers the customer with a ticket
// message forwarded inline (or quoted) from the IMAP view does not send mailgate's verdicts
// and internals to the customer.
func TestSubmissionReplyStripsMailgateFields(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	body := "Here is what you wrote, for reference:\r\n\r\n" + forwarded +
		"\r\nAnd the note from earlier:\r\n> X-Mailgate-Author: carol\r\n> X-Mailgate-Direction: in\r\n> Hi there\r\n\r\nBest, Alice\r\n"
	msg := agentMail("alice@example.com", customer, "", "o1@example.net", "s1@example.com", "Re: Order late", body)
	if err := e.submit("alice", e.users["alice"], "alice@example.com", []string{customer}, msg); err != nil {
		t.Fatal(err)
	}
	out := decodedBody(t, e.delivered(id, 2))
	for _, bad := range []string{"X-Mailgate", "Authentication-Results", "dmarc=pass", "header.d=example.net", "carol"} {
		if contains(out, bad) {
			t.Errorf("the customer's copy holds %q:\n%s", bad, out)
		}
	}
	for _, want := range []string{"for reference", "Hello, my order is late.", "> Hi there", "Best, Alice"} {
		if !contains(out, want) {
			t.Errorf("the customer's copy lacks %q:\n%s", want, out)
		}
	}
}

// TestSubmissionReplyAllCc is issue 12.2: a reply-all with Cc: boss@customer.test, sent by
// msmtp -t (recipients from the header, as mutt does), reaches the customer and the boss, who
// joins the ticket as a participant and gets the next reply too; the ticket shows the Cc.
func TestSubmissionReplyAllCc(t *testing.T) {
	msmtp := tool(t, "msmtp")
	e, sink := newRelayEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	dir := t.TempDir()
	host, port, _ := strings.Cut(e.subAddr, ":")
	rc := filepath.Join(dir, "msmtprc")
	conf := fmt.Sprintf("account mailgate\nhost %s\nport %s\nauth plain\nuser alice\npassword %s\nfrom alice@example.com\ntls off\ndomain client.example.com\naccount default : mailgate\n",
		host, port, e.users["alice"])
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	msg := agentMail("Alice <alice@example.com>", "Customer <"+customer+">", "Boss <boss@customer.test>, support@example.com",
		"o1@example.net", "c1@example.com", "Re: Order late", "Your parcel ships today.\r\n")
	cmd := exec.Command(msmtp, "-C", rc, "-t")
	cmd.Stdin = strings.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("msmtp: %v\n%s", err, out)
	}
	e.waitSent(t, id, 2)
	got := sink.stored(t)
	if len(got) != 1 {
		t.Fatalf("smtp-sink stored %d messages", len(got))
	}
	slices.Sort(got[0].rcpts)
	if strings.Join(got[0].rcpts, ",") != "<boss@customer.test>,<"+customer+">" {
		t.Fatalf("RCPT TO %v, want the customer and the boss", got[0].rcpts)
	}
	m, err := mail.ReadMessage(bytes.NewReader(got[0].data))
	if err != nil {
		t.Fatal(err)
	}
	if cc := m.Header.Get("Cc"); cc != "boss@customer.test" {
		t.Errorf("Cc: %q", cc)
	}
	tk, msgs, err := e.tk.Get(access.Ctl, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tk.Participant("boss@customer.test"); !ok {
		t.Fatalf("the boss is not a participant: %+v", tk.Participants)
	}
	if len(msgs) != 2 || strings.Join(msgs[1].Cc, ",") != "boss@customer.test" {
		t.Fatalf("the reply does not show the Cc: %+v", msgs[len(msgs)-1])
	}

	// The next plain reply goes to the boss as well: a participant now.
	if err := e.submit("alice", e.users["alice"], "alice@example.com", []string{customer},
		agentReply("alice@example.com", customer, "o1@example.net", "c2@example.com", "Tracking number follows.\r\n")); err != nil {
		t.Fatal(err)
	}
	e.waitSent(t, id, 3)
	got = sink.stored(t)
	if len(got) != 2 {
		t.Fatalf("smtp-sink stored %d messages", len(got))
	}
	var second sunk
	for _, s := range got {
		if contains(s.data, "Tracking number") {
			second = s
		}
	}
	slices.Sort(second.rcpts)
	if strings.Join(second.rcpts, ",") != "<boss@customer.test>,<"+customer+">" {
		t.Fatalf("second reply RCPT TO %v", second.rcpts)
	}
}

// TestReplyWithCcRules checks tickets' side of Cc, the web page's future path.
func TestReplyWithCcRules(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	alice, _ := e.acc.Get("alice")
	a := alice.Actor("test")
	for _, tc := range []struct {
		cc   []string
		want string
	}{
		{[]string{"not an address"}, "is not an email address"},
		{[]string{"Boss <boss@customer.test>"}, "is not an email address"},
		{[]string{"billing@example.com"}, "is a queue address"},
		{[]string{"support+note@example.com"}, "is a queue address"},
	} {
		if _, err := e.tk.ReplyWith(a, id, "Fine.", tickets.ReplyOptions{Cc: tc.cc}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Cc %v: %v, want …%s…", tc.cc, err, tc.want)
		}
	}
	big := tickets.ParsedAttachment{Name: "big.bin", ContentType: "application/octet-stream", Data: make([]byte, tickets.MaxAttachmentBytes+1)}
	if _, err := e.tk.ReplyWith(a, id, "Fine.", tickets.ReplyOptions{Attachments: []tickets.ParsedAttachment{big}}); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("oversized attachment: %v", err)
	}
	if n := len(e.thread(id)); n != 1 {
		t.Fatalf("refused replies changed the ticket: %d messages", n)
	}
	m, err := e.tk.ReplyWith(a, id, "Fine.", tickets.ReplyOptions{Cc: []string{"Boss@Customer.test", customer}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(m.Cc, ",") != "boss@customer.test" {
		t.Fatalf("Cc %v", m.Cc)
	}
	out := e.delivered(id, 2)
	if !contains(out, "Cc: boss@customer.test\r\n") {
		t.Fatalf("delivered:\n%s", out)
	}
	// The boss answers the reply: it threads into the ticket.
	if got := e.ingest("support", "boss@customer.test", "Re: Order late [#1]", "b1@customer.test", "Please hurry.\r\n",
		"In-Reply-To: <"+m.MessageID+">"); got != id {
		t.Fatalf("the boss's answer opened ticket %d, want %d", got, id)
	}
}

// TestForwardRefusesTicketParticipants: tickets.Forward itself never sends to the customer or
// a participant, whatever its caller decided.
func TestForwardRefusesTicketParticipants(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	alice, _ := e.acc.Get("alice")
	a := alice.Actor("test")
	if _, err := e.tk.ReplyWith(a, id, "Copying your manager.", tickets.ReplyOptions{Cc: []string{"boss@customer.test"}}); err != nil {
		t.Fatal(err)
	}
	e.delivered(id, 2)
	for _, to := range [][]string{{customer}, {"bob@example.com", "BOSS@customer.test"}, {}} {
		if _, err := e.tk.Forward(a, id, "internal", to, nil); !errors.Is(err, tickets.ErrInvalid) {
			t.Errorf("Forward to %v: %v, want ErrInvalid", to, err)
		}
	}
	bob, _ := e.acc.Get("bob")
	if _, err := e.tk.Forward(bob.Actor("test"), id, "not my queue", []string{"carol@example.com"}, nil); !errors.Is(err, tickets.ErrNotFound) {
		t.Errorf("Forward by an agent of another queue: %v", err)
	}
	if n := e.ob.Queued(); n != 0 {
		t.Fatalf("%d queued", n)
	}
	if n := len(e.thread(id)); n != 2 {
		t.Fatalf("thread has %d messages", n)
	}
}
