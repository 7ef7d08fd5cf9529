package outbound

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailgate/config"
	"mailgate/store"
	"mailgate/tickets"
)

func TestBackoff(t *testing.T) {
	first, limit := 30*time.Second, time.Hour
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute,
		16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour}
	for i, w := range want {
		if got := backoff(first, limit, i+1); got != w {
			t.Errorf("after failure %d: %s, want %s", i+1, got, w)
		}
	}
	if got := backoff(first, limit, 10000); got != limit {
		t.Errorf("after many failures: %s", got)
	}
	// The whole schedule within the default 5 days: 8 tries in the first hour, then hourly.
	var at time.Duration
	n := 0
	for at < 120*time.Hour {
		n++
		at += backoff(first, limit, n)
	}
	if n < 120 || n > 130 {
		t.Errorf("%d attempts in 5 days", n)
	}
}

func outboxFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
			continue
		}
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func (e *env) raw(id uint64, seq int) []byte {
	e.t.Helper()
	_, raw, err := e.tk.Raw(admin, id, seq, "ticket.raw")
	if err != nil {
		e.t.Fatal(err)
	}
	return raw
}

// TestQueueOutbox is dev mode: the reply lands as one .eml file, byte for byte what the
// ticket stores, the message shows "sent" and the delivery is audited.
func TestQueueOutbox(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	id := e.ticket(customer)
	m := e.reply(id, "We are on it.")
	if m.Delivery != "queued" {
		t.Errorf("delivery right after Reply: %q", m.Delivery)
	}
	a := e.wait()
	if a.Outcome != "sent" || a.Ticket != id || a.Seq != m.Seq || a.Sent != 1 || a.Attempt != 1 {
		t.Fatalf("attempt %+v", a)
	}
	files := outboxFiles(t, e.ob.Outbox())
	if len(files) != 1 {
		t.Fatalf("%d files in the outbox", len(files))
	}
	for name, b := range files {
		if !strings.HasSuffix(name, ".eml") || !strings.Contains(name, "-t1-m2-") {
			t.Errorf("file name %s", name)
		}
		if !bytes.Equal(b, e.raw(id, m.Seq)) {
			t.Error("the outbox file differs from the message stored on the ticket")
		}
		requireBothVerify(t, b, e.dnsRecords())
	}
	if got := e.message(id, m.Seq).Delivery; got != "sent" {
		t.Errorf("delivery = %q, want sent", got)
	}
	evs := e.audited("mail.de")
	if len(evs) != 1 || evs[0].Action != "mail.delivered" || evs[0].Object != "ticket/1" || evs[0].Result != "ok" {
		t.Errorf("audit events %+v", evs)
	}
	if e.ob.Queued() != 0 {
		t.Errorf("%d still queued", e.ob.Queued())
	}
	if n := countJobs(t, e.db); n != 0 {
		t.Errorf("%d job records left in the bucket", n)
	}
}

func countJobs(t *testing.T, db *store.DB) int {
	t.Helper()
	n := 0
	db.View(func(tx *store.Tx) error {
		n = tx.Count(Bucket)
		return nil
	})
	return n
}

// TestQueueResumesAfterRestart: replies committed while no worker runs survive closing the
// database and are delivered by a new Outbound on the reopened one.
func TestQueueResumesAfterRestart(t *testing.T) {
	e := newEnv(t, nil)
	a, b := e.ticket(customer), e.ticket("other@example.org")
	e.reply(a, "one")
	e.reply(b, "two")
	e.ob.Kick() // no worker yet: must not block
	if n := countJobs(t, e.db); n != 4 {
		t.Fatalf("%d records in the queue bucket, want 2 jobs × 2", n)
	}
	e.reopen()
	if n := len(outboxFiles(t, e.ob.Outbox())); n != 0 {
		t.Fatalf("%d files before the worker started", n)
	}
	e.start()
	got := map[uint64]string{}
	for range 2 {
		at := e.wait()
		got[at.Ticket] = at.Outcome
	}
	if got[a] != "sent" || got[b] != "sent" {
		t.Errorf("outcomes %v", got)
	}
	if n := len(outboxFiles(t, e.ob.Outbox())); n != 2 {
		t.Errorf("%d files in the outbox, want 2", n)
	}
}

// TestQueueGiveUp: a relay that never answers gets retries on the backoff schedule until
// give_up_after, then the message is marked failed, a note tells the agents, and the outcome
// is audited.
func TestQueueGiveUp(t *testing.T) {
	relay := freeAddr(t)
	e := newEnv(t, func(c *config.Config) {
		c.Outbound.Relay, c.Outbound.RelayTLS = relay, "none"
		c.Outbound.FirstRetry = config.Duration{Duration: 30 * time.Second}
		c.Outbound.GiveUpAfter = config.Duration{Duration: 48 * time.Hour}
	})
	e.start()
	id := e.ticket(customer)
	m := e.reply(id, "hello")
	start := e.clock.Now()
	for i, wait := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute} {
		a := e.wait()
		if a.Outcome != "retry" || a.Attempt != i+1 || a.Deferred != 1 || !strings.Contains(a.Err, "connect") {
			t.Fatalf("attempt %d: %+v", i+1, a)
		}
		if got := a.Next.Sub(e.clock.Now()); got != wait {
			t.Errorf("attempt %d: next try in %s, want %s", i+1, got, wait)
		}
		e.clock.Add(wait)
		e.ob.Kick()
	}
	e.wait() // attempt 4
	if got := e.message(id, m.Seq).Delivery; got != "queued" {
		t.Errorf("delivery while retrying = %q", got)
	}
	e.clock.Set(start.Add(48*time.Hour + time.Second))
	e.ob.Kick()
	a := e.wait()
	if a.Outcome != "failed" || a.Failed != 1 || !strings.Contains(a.Err, "connect") {
		t.Fatalf("final attempt %+v", a)
	}
	msgs := e.messages(id)
	if msgs[m.Seq-1].Delivery != "failed" {
		t.Errorf("delivery = %q, want failed", msgs[m.Seq-1].Delivery)
	}
	note := msgs[len(msgs)-1]
	if note.Direction != tickets.Note || !strings.Contains(note.Text, "gave up after 48h") || !strings.Contains(note.Text, customer) {
		t.Errorf("last message %+v, want a note saying the delivery gave up", note)
	}
	evs := e.audited("mail.failed")
	if len(evs) != 1 || evs[0].Action != "mail.failed" || evs[0].Result != "failed" || evs[0].Object != "ticket/1" {
		t.Errorf("audit %+v", evs)
	}
	if e.ob.Queued() != 0 || countJobs(t, e.db) != 0 {
		t.Error("a failed job stays queued")
	}
}

// TestQueuePerRecipient: one job for three recipients; the one with 250 gets exactly one
// copy, the 5xx one fails at once, the 4xx one is retried alone and then delivered.
func TestQueuePerRecipient(t *testing.T) {
	r := startGoRelay(t, relayOpts{mode: TLSNone, rcpt: func(addr string, n int) error {
		switch {
		case strings.HasPrefix(addr, "bad@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		case strings.HasPrefix(addr, "later@") && n == 0:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy"}
		}
		return nil
	}})
	e := newEnv(t, func(c *config.Config) { c.Outbound.Relay, c.Outbound.RelayTLS = r.Addr, "none" })
	e.start()
	id := e.ticket(customer)
	og := outgoing()
	og.Ticket.ID = id
	og.Cc = []string{"bad@example.org", "later@example.org"}
	raw, _, err := e.ob.Compose(og)
	if err != nil {
		t.Fatal(err)
	}
	// The queue marks whichever message it is given; seq 1 stands in for a reply here.
	err = e.db.Update(func(tx *store.Tx) error {
		return e.ob.EnqueueTx(tx, id, 1, queueAddr, []string{customer, "bad@example.org", "later@example.org", "CUST@example.net"}, raw)
	})
	if err != nil {
		t.Fatal(err)
	}
	e.ob.Kick()
	a := e.wait()
	if a.Outcome != "retry" || a.Sent != 1 || a.Failed != 1 || a.Deferred != 1 {
		t.Fatalf("first attempt %+v", a)
	}
	e.clock.Add(a.Next.Sub(e.clock.Now()))
	e.ob.Kick()
	a = e.wait()
	if a.Outcome != "failed" || a.Sent != 1 || a.Failed != 0 || a.Deferred != 0 || a.Attempt != 2 {
		t.Fatalf("second attempt %+v", a)
	}
	msgs := r.received()
	if len(msgs) != 2 || strings.Join(msgs[0].Rcpts, ",") != customer || strings.Join(msgs[1].Rcpts, ",") != "later@example.org" {
		t.Fatalf("relay got %d messages: %+v", len(msgs), msgs)
	}
	for _, m := range msgs {
		if !bytes.Equal(m.Data, raw) || m.From != queueAddr || m.Helo != testHost {
			t.Errorf("relay got from %q helo %q and %d bytes", m.From, m.Helo, len(m.Data))
		}
	}
	all := e.messages(id)
	if all[0].Delivery != "failed" {
		t.Errorf("delivery = %q", all[0].Delivery)
	}
	note := all[len(all)-1]
	if note.Direction != tickets.Note || !strings.Contains(note.Text, "bad@example.org: RCPT TO: 550 5.1.1 no such user") ||
		!strings.Contains(note.Text, "delivered to: "+customer+", later@example.org") {
		t.Errorf("note %q", note.Text)
	}
}

func TestEnqueueRefusesBadInput(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		from string
		to   []string
		raw  []byte
	}{
		{queueAddr, nil, []byte("x")},
		{queueAddr, []string{"a@b.example\r\nRCPT TO:<x@y>"}, []byte("x")},
		{"a@b.example\r\n", []string{customer}, []byte("x")},
		{queueAddr, []string{customer}, nil},
	}
	for i, c := range cases {
		err := e.db.Update(func(tx *store.Tx) error { return e.ob.EnqueueTx(tx, 1, 1, c.from, c.to, c.raw) })
		if err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
	if countJobs(t, e.db) != 0 || e.ob.Queued() != 0 {
		t.Error("a refused job left a trace")
	}
	// A rolled-back transaction schedules nothing.
	boom := errors.New("boom")
	err := e.db.Update(func(tx *store.Tx) error {
		if err := e.ob.EnqueueTx(tx, 1, 1, queueAddr, []string{customer}, []byte("x\r\n")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) || e.ob.Queued() != 0 {
		t.Errorf("rolled back enqueue: err %v, queued %d", err, e.ob.Queued())
	}
}

// TestQueueSealed: the queue bucket holds no readable address or body.
func TestQueueSealed(t *testing.T) {
	e := newEnv(t, nil)
	id := e.ticket(customer)
	e.reply(id, "a very recognisable sentence")
	path := e.db.Path()
	e.close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"recognisable", customer, "Printer on fire"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("%q readable in the database file", s)
		}
	}
	e.open()
}
