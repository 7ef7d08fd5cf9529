package agentmail

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/tickets"
)

// agentReply is what Thunderbird sends when alice answers the customer's mail.
func agentReply(from, to, inReplyTo, msgID, text string) string {
	refs := ""
	if inReplyTo != "" {
		refs = fmt.Sprintf("In-Reply-To: <%s>\r\nReferences: <%s>\r\n", inReplyTo, inReplyTo)
	}
	return fmt.Sprintf("From: Alice <%s>\r\nTo: %s\r\nSubject: Re: Order late\r\n%sMessage-ID: <%s>\r\nDate: Tue, 03 Feb 2026 09:00:00 +0000\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s", from, to, refs, msgID, text)
}

// submit sends one message with go-smtp's client and returns the first error.
func (e *env) submit(user, pass, from string, to []string, msg string) error {
	c, err := smtp.Dial(e.subAddr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.example.com"); err != nil {
		return err
	}
	if user != "" {
		if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
			return err
		}
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func smtpCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func (e *env) thread(id uint64) []tickets.Message {
	e.t.Helper()
	_, msgs, err := e.tk.Get(access.Ctl, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return msgs
}

// delivered waits for the outbox delivery of ticket id's message seq and returns the file.
func (e *env) delivered(id uint64, seq int) []byte {
	e.t.Helper()
	timeout := time.After(20 * time.Second) // a hang guard, not a speed check
	for {
		select {
		case a := <-e.attempts:
			if a.Ticket != id || a.Seq != seq {
				continue
			}
			if a.Outcome != "sent" {
				e.t.Fatalf("delivery %+v", a)
			}
			files, _ := filepath.Glob(filepath.Join(e.ob.Outbox(), fmt.Sprintf("*-t%d-m%d-*.eml", id, seq)))
			if len(files) != 1 {
				e.t.Fatalf("outbox files %v", files)
			}
			b, err := os.ReadFile(files[0])
			if err != nil {
				e.t.Fatal(err)
			}
			return b
		case <-timeout:
			e.t.Fatalf("ticket %d message %d was not delivered", id, seq)
		}
	}
}

func (e *env) refusals() []audit.Event { return e.events("submission.refused") }

// TestSubmissionReplyWithSwaks sends an agent's reply with swaks, a real SMTP client: it is
// filed through tickets.Reply and reaches the (outbox) relay, signed, from the queue address.
func TestSubmissionReplyWithSwaks(t *testing.T) {
	swaks := tool(t, "swaks")
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	msg := agentReply("alice@example.com", customer, "o1@example.net", "a1@example.com",
		"Your parcel ships today, we are sorry for the \r\ndelay.\r\n\r\nAlice\r\n\r\nOn 02.02.2026 15:04, Customer wrote:\r\n> Hello, my order is late.\r\n")
	file := filepath.Join(t.TempDir(), "reply.eml")
	if err := os.WriteFile(file, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(swaks, "--server", e.subAddr, "--ehlo", "client.example.com",
		"--auth", "PLAIN", "--auth-user", "alice", "--auth-password", e.users["alice"],
		"--from", "alice@example.com", "--to", customer, "--data", "@"+file).CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	msgs := e.thread(id)
	if len(msgs) != 2 {
		t.Fatalf("%d messages on the ticket", len(msgs))
	}
	r := msgs[1]
	if r.Direction != tickets.Out || r.Author != "alice" || r.To != customer || r.From != "support@example.com" {
		t.Fatalf("filed reply %+v", r)
	}
	if r.Text != "Your parcel ships today, we are sorry for the delay.\n\nAlice\n" {
		t.Fatalf("reply text %q", r.Text)
	}
	sent := e.delivered(id, 2)
	for _, want := range []string{"DKIM-Signature:", "support@example.com", "To: " + customer, "In-Reply-To: <o1@example.net>", "Your parcel ships today"} {
		if !contains(sent, want) {
			t.Errorf("sent message lacks %q:\n%s", want, sent)
		}
	}
	var ok bool
	for _, ev := range e.events("ticket.reply") {
		ok = ok || (ev.Actor == "alice" && ev.Result == audit.OK && ev.Object == fmt.Sprintf("ticket/%d", id))
	}
	if !ok {
		t.Fatal("no ticket.reply event by alice")
	}

	// A refusal, as swaks shows it: no ticket reference.
	bad := agentReply("alice@example.com", customer, "", "a2@example.com", "Hello out of the blue\r\n")
	os.WriteFile(file, []byte(bad), 0o600)
	out, err = exec.Command(swaks, "--server", e.subAddr, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", e.users["alice"],
		"--from", "alice@example.com", "--to", customer, "--data", "@"+file).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "550 5.7.1 this message names no ticket") {
		t.Fatalf("swaks without a reference: %v\n%s", err, out)
	}
}

// TestSubmissionSTARTTLSWithSmtplib: on a public listener AUTH needs STARTTLS first. Python's
// smtplib is the independent client here (Debian's swaks lacks Net::SSLeay, so no TLS).
func TestSubmissionSTARTTLSWithSmtplib(t *testing.T) {
	py := tool(t, python)
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	l, addr := listenPublic(t)
	go e.sub.Serve(l)
	dir := t.TempDir()
	file := filepath.Join(dir, "reply.eml")
	os.WriteFile(file, []byte(agentReply("alice@example.com", customer, "o1@example.net", "a1@example.com", "On its way.\r\n")), 0o600)
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.tlsCfg.Certificates[0].Certificate[0]}), 0o600)
	host, port, _ := net.SplitHostPort(addr)
	run := func(ca string) map[string]any {
		t.Helper()
		args := []string{filepath.Join("testdata", "smtplib_submit.py"), host, port, "alice", e.users["alice"], "alice@example.com", customer, file}
		if ca != "" {
			args = append(args, ca)
		}
		out, err := exec.Command(py, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("smtplib: %v\n%s", err, out)
		}
		var res map[string]any
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("smtplib output %q: %v", out, err)
		}
		return res
	}
	if res := run(""); res["ok"] == true || res["auth_offered"] == true {
		t.Fatalf("AUTH without TLS on a public listener: %v", res)
	}
	res := run(caFile)
	if res["ok"] != true || res["auth_offered_before_tls"] == true || res["auth_offered"] != true {
		t.Fatalf("smtplib with STARTTLS: %v", res)
	}
	if msgs := e.thread(id); len(msgs) != 2 || msgs[1].Author != "alice" {
		t.Fatalf("thread after STARTTLS submission: %+v", msgs)
	}

	// Implicit TLS (port 465 in production; ServeTLS here), with go-smtp's client.
	l2, addr2 := listenPublic(t)
	go e.sub.ServeTLS(l2)
	c, err := smtp.DialTLS(addr2, &tls.Config{RootCAs: e.pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice", e.users["alice"])); err != nil {
		t.Fatalf("AUTH over implicit TLS: %v", err)
	}
}

func TestSubmissionNote(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	msg := agentReply("alice@example.com", "support+note@example.com", "o1@example.net", "n1@example.com", "Checked with the warehouse: it ships Monday.\r\n")
	if err := e.submit("alice", e.users["alice"], "alice@example.com", []string{"support+note@example.com"}, msg); err != nil {
		t.Fatal(err)
	}
	msgs := e.thread(id)
	if len(msgs) != 2 || msgs[1].Direction != tickets.Note || msgs[1].Author != "alice" || !strings.Contains(msgs[1].Text, "warehouse") {
		t.Fatalf("thread %+v", msgs)
	}
	if e.ob.Queued() != 0 {
		t.Fatalf("a note was queued for delivery")
	}
	// Answering the note as served over IMAP (its rendered Message-ID) adds to the same ticket.
	c := e.imapClient("carol", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	id2 := e.imap.render.viewID(id, 2)
	msg = agentReply("carol@example.com", "support+note@example.com", id2, "n2@example.com", "Thanks, noted.\r\n")
	if err := e.submit("carol", e.users["carol"], "carol@example.com", []string{"support+note@example.com"}, msg); err != nil {
		t.Fatal(err)
	}
	if msgs := e.thread(id); len(msgs) != 3 || msgs[2].Author != "carol" || msgs[2].Direction != tickets.Note {
		t.Fatalf("thread %+v", msgs)
	}
}

func TestSubmissionRefusals(t *testing.T) {
	e := newEnv(t)
	web := e.webPassword("alice")
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	billing := e.ingest("billing", customer, "Invoice", "i1@example.net", "Invoice please\r\n")
	good := func(msgID string) string {
		return agentReply("alice@example.com", customer, "o1@example.net", msgID, "Fine.\r\n")
	}
	attach := "From: alice@example.com\r\nTo: " + customer + "\r\nSubject: Re: x\r\nIn-Reply-To: <o1@example.net>\r\nMessage-ID: <att@example.com>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee the file.\r\n" +
		"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=label.pdf\r\n\r\n%PDF\r\n--b--\r\n"
	for _, tc := range []struct {
		name       string
		user, pass string
		from       string
		to         []string
		msg        string
		code       int
		text       string
		audited    string // detail of the submission.refused event; "" when tickets audits it
	}{
		{"no AUTH", "", "", "alice@example.com", []string{customer}, good("r1@example.com"), 530, "authentication required", ""},
		{"web password", "alice", web, "alice@example.com", []string{customer}, good("r2@example.com"), 535, "", ""},
		{"MAIL FROM not the agent", "alice", e.users["alice"], "boss@example.com", []string{customer}, good("r3@example.com"), 553, "MAIL FROM must be your own address", "envelope sender"},
		{"From header not the agent", "alice", e.users["alice"], "alice@example.com", []string{customer},
			agentReply("boss@example.com", customer, "o1@example.net", "r4@example.com", "Fine.\r\n"), 550, "From: header must be your own address", "From header"},
		{"no ticket reference", "alice", e.users["alice"], "alice@example.com", []string{customer},
			agentReply("alice@example.com", customer, "", "r5@example.com", "Fine.\r\n"), 550, "names no ticket", "no ticket reference"},
		{"unknown reference", "alice", e.users["alice"], "alice@example.com", []string{customer},
			agentReply("alice@example.com", customer, "nobody@example.net", "r6@example.com", "Fine.\r\n"), 550, "names no ticket", "no ticket reference"},
		{"ticket of another queue", "alice", e.users["alice"], "alice@example.com", []string{customer},
			agentReply("alice@example.com", customer, "i1@example.net", "r7@example.com", "Fine.\r\n"), 550, "not in your queues", ""},
		{"only the quote", "alice", e.users["alice"], "alice@example.com", []string{customer},
			agentReply("alice@example.com", customer, "o1@example.net", "r8@example.com", "On Monday, Customer wrote:\r\n> Hello\r\n"), 550, "the text is empty", "reply: invalid request"},
		{"attachment on a note", "alice", e.users["alice"], "alice@example.com", []string{"support+note@example.com"}, attach, 550, "a note carries text only: attach files to a reply or a forward (label.pdf)", "note with attachments: 1"},
		{"note mixed with the customer", "alice", e.users["alice"], "alice@example.com", []string{"support+note@example.com", customer}, good("r9@example.com"), 550, "note address alone", "note address mixed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.refusals())
			err := e.submit(tc.user, tc.pass, tc.from, tc.to, tc.msg)
			if smtpCode(err) != tc.code || !strings.Contains(fmt.Sprint(err), tc.text) {
				t.Fatalf("got %v, want %d …%s…", err, tc.code, tc.text)
			}
			evs := e.refusals()
			if tc.audited == "" {
				if len(evs) != before {
					t.Fatalf("unexpected submission.refused %+v", evs[len(evs)-1])
				}
				return
			}
			if len(evs) != before+1 || !strings.Contains(evs[len(evs)-1].Detail, tc.audited) || evs[len(evs)-1].Result != audit.Denied {
				t.Fatalf("refusal events %+v, want one saying %q", evs[before:], tc.audited)
			}
		})
	}
	if n := len(e.thread(id)); n != 1 {
		t.Fatalf("refused submissions changed the ticket: %d messages", n)
	}
	if n := len(e.thread(billing)); n != 1 {
		t.Fatalf("the other queue's ticket changed: %d messages", n)
	}
	var denied bool
	for _, ev := range e.events("ticket.reply") {
		denied = denied || (ev.Actor == "alice" && ev.Result == audit.Denied && ev.Object == fmt.Sprintf("ticket/%d", billing))
	}
	if !denied {
		t.Fatal("tickets did not audit the reply to another queue's ticket as denied")
	}
	var failedLogin bool
	for _, ev := range e.events("login.app") {
		failedLogin = failedLogin || (ev.Actor == "alice" && ev.Result == audit.Failed)
	}
	if !failedLogin {
		t.Fatal("the web password AUTH left no failed login.app event")
	}
}

// TestSubmissionResendIsFiledOnce: a client that lost the 250 sends again; the customer gets
// one answer.
func TestSubmissionResendIsFiledOnce(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	msg := agentReply("alice@example.com", customer, "o1@example.net", "same@example.com", "Shipping now.\r\n")
	for i := 0; i < 2; i++ {
		if err := e.submit("alice", e.users["alice"], "alice@example.com", []string{customer}, msg); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.thread(id)); n != 2 {
		t.Fatalf("%d messages, want the customer's and one reply", n)
	}
}

func TestSubmissionAuthAfterTLSOnly(t *testing.T) {
	e := newEnv(t)
	l, addr := listenPublic(t)
	go e.sub.Serve(l)
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.com"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH offered before STARTTLS on a public listener")
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", e.users["alice"])); err == nil {
		t.Fatal("AUTH before STARTTLS succeeded")
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered")
	}

	// Without a certificate, a public listener is refused outright.
	noTLS := NewSubmission(SubmissionOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, Logger: quiet})
	defer noTLS.Close()
	l3, _ := listenPublic(t)
	if err := noTLS.Serve(l3); err == nil || !strings.Contains(err.Error(), "tls_cert") {
		t.Fatalf("Serve of a public listener without TLS: %v", err)
	}
}

func TestSubmissionLimitsAndShutdown(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	small := NewSubmission(SubmissionOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, Hostname: testHost, Logger: quiet,
		MaxMessageBytes: 2000, MaxRecipients: 2})
	saved := e.subAddr
	e.subAddr = e.serve(small.Serve)
	big := agentReply("alice@example.com", customer, "o1@example.net", "big@example.com", strings.Repeat("long line of text\r\n", 200))
	if err := e.submit("alice", e.users["alice"], "alice@example.com", []string{customer}, big); smtpCode(err) != 552 {
		t.Fatalf("oversized message: %v, want 552", err)
	}
	three := []string{customer, customer2, "third@example.com"}
	if err := e.submit("alice", e.users["alice"], "alice@example.com", three, agentReply("alice@example.com", customer, "o1@example.net", "r@example.com", "Hi\r\n")); smtpCode(err) != 452 {
		t.Fatalf("three recipients: %v, want 452", err)
	}
	if n := len(e.thread(id)); n != 1 {
		t.Fatalf("%d messages after refused submissions", n)
	}

	// Shutdown waits for open conversations until its context ends, then ends them.
	c, err := smtp.Dial(e.subAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.com"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := small.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with an idle client: %v", err)
	}
	if err := c.Noop(); err == nil {
		t.Fatal("the client's connection survived Shutdown")
	}
	e.subAddr = saved
}

func TestSubmissionLoginThrottled(t *testing.T) {
	e := newEnv(t, withAccountLimit(1))
	for i := 0; i < 2; i++ {
		if err := e.submit("alice", "wrong", "alice@example.com", []string{customer}, "x"); smtpCode(err) != 535 {
			t.Fatalf("wrong password %d: %v", i, err)
		}
	}
	err := e.submit("alice", e.users["alice"], "alice@example.com", []string{customer}, "x")
	if smtpCode(err) != 454 || !strings.Contains(err.Error(), "too many failed logins") {
		t.Fatalf("right password while locked: %v, want 454 too many failed logins", err)
	}
}
