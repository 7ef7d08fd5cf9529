package tickets

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/internal/testutil"
	"mailgate/store"
)

// fakeMailer records what would be sent; the real one is outbound's (tested there end to end).
type fakeMailer struct {
	mu     sync.Mutex
	out    []Outgoing
	queued int
	fail   error
}

func (f *fakeMailer) Compose(o Outgoing) ([]byte, bool, error) {
	if f.fail != nil {
		return nil, false, f.fail
	}
	f.mu.Lock()
	f.out = append(f.out, o)
	f.mu.Unlock()
	return []byte("Message-ID: <" + o.MessageID + ">\r\nSubject: " + o.Subject + "\r\n\r\n" + o.Text), false, nil
}

func (f *fakeMailer) EnqueueTx(tx *store.Tx, ticket uint64, seq int, from string, to []string, raw []byte) error {
	return tx.PutPlain("fakequeue", mkey(ticket, seq), raw)
}

func (f *fakeMailer) Kick() {}

type env struct {
	svc    *Service
	db     *store.DB
	log    *audit.Log
	mailer *fakeMailer
}

var (
	agentA  = access.Actor{Name: "alice", Role: access.RoleAgent, Queues: []string{"support"}, Remote: "127.0.0.1:1"}
	agentB  = access.Actor{Name: "bob", Role: access.RoleAgent, Queues: []string{"sales"}, Remote: "127.0.0.1:2"}
	auditor = access.Actor{Name: "eve", Role: access.RoleAuditor, Remote: "127.0.0.1:3"}
)

func newEnv(t testing.TB) *env {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "t.db"), bytes.Repeat([]byte{5}, 32), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log, _ := audit.New(db, "")
	m := &fakeMailer{}
	svc := New(db, log, Options{
		Hostname: "mail.example.com",
		Queues:   []Queue{{Name: "support", Address: "support@example.com"}, {Name: "sales", Address: "sales@example.com"}},
		Mailer:   m,
	})
	return &env{svc: svc, db: db, log: log, mailer: m}
}

func msgText(from, subject, msgid string, extra ...string) []byte {
	h := fmt.Sprintf("From: Customer <%s>\r\nTo: support@example.com\r\nSubject: %s\r\nMessage-ID: <%s>\r\nDate: Mon, 02 Jan 2026 15:04:05 +0000\r\n", from, subject, msgid)
	for _, e := range extra {
		h += e + "\r\n"
	}
	return []byte(h + "\r\nHello, my order is late.\r\n")
}

func (e *env) ingest(t *testing.T, raw []byte, verified bool) Result {
	t.Helper()
	auth := Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: verified}
	if !verified {
		auth = Auth{SPF: "fail", DKIM: "none", DMARC: "fail"}
	}
	r, err := e.svc.Ingest(Incoming{Queue: "support", Raw: raw, Auth: auth, Via: "smtp", Remote: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestThreadingCannotBeHijacked(t *testing.T) {
	e := newEnv(t)
	first := e.ingest(t, msgText("carol@customer.example", "Order late", "c1@customer.example"), true)
	if !first.New || first.Ticket != 1 {
		t.Fatalf("first: %+v", first)
	}
	// The agent replies: the Message-ID is minted with a MAC.
	rep, err := e.svc.Reply(agentA, 1, "We are on it.")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		raw     []byte
		ok      bool
		outcome string
		ticket  uint64
	}{
		{"customer replies to our reply", msgText("carol@customer.example", "Re: Order late [#1]", "c2@customer.example", "In-Reply-To: <"+rep.MessageID+">"), true, OutcomeThreaded, 1},
		{"customer replies to own first mail", msgText("carol@customer.example", "more", "c3@customer.example", "References: <c1@customer.example>"), false, OutcomeThreaded, 1},
		{"stranger quotes the thread", msgText("mallory@evil.example", "Re: Order late", "m1@evil.example", "In-Reply-To: <"+rep.MessageID+">"), true, OutcomeLinked, 0},
		{"stranger uses the subject tag", msgText("mallory@evil.example", "Re: [#1]", "m2@evil.example"), true, OutcomeLinked, 0},
		{"participant, tag, but not verified", msgText("carol@customer.example", "hi [#1]", "c4@customer.example"), false, OutcomeLinked, 0},
		{"participant, tag, verified", msgText("carol@customer.example", "hi [#1]", "c5@customer.example"), true, OutcomeTagged, 1},
		{"forged minted id for ticket 1", msgText("mallory@evil.example", "x", "m3@evil.example", "In-Reply-To: <mg.1.0123456789abcdef.0123456789abcdef0123@mail.example.com>"), true, OutcomeNew, 0},
		{"forged minted id, participant spoofed", msgText("carol@customer.example", "x", "m4@evil.example", "In-Reply-To: <mg.1.0123456789abcdef.0123456789abcdef0123@mail.example.com>"), false, OutcomeNew, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.ingest(t, c.raw, c.ok)
			if r.Outcome != c.outcome {
				t.Fatalf("outcome %s, want %s (%+v)", r.Outcome, c.outcome, r)
			}
			if c.ticket != 0 && r.Ticket != c.ticket {
				t.Fatalf("ticket %d, want %d", r.Ticket, c.ticket)
			}
			if c.ticket == 0 && r.Ticket == 1 {
				t.Fatal("joined ticket 1")
			}
		})
	}
	// A linked ticket shows up on ticket 1 for merging.
	tk, _, err := e.svc.Get(agentA, 1)
	if err != nil || len(tk.Links) == 0 {
		t.Fatalf("links: %+v %v", tk, err)
	}
}

func TestUnverifiedNeverInheritsTrust(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true)
	r := e.ingest(t, msgText("carol@customer.example", "Re: Order", "c2@customer.example", "In-Reply-To: <c1@customer.example>"), false)
	_, msgs, _ := e.svc.Get(agentA, r.Ticket)
	if len(msgs) != 2 || !msgs[0].Verified || msgs[1].Verified {
		t.Fatalf("verified flags: %v %v", msgs[0].Verified, msgs[1].Verified)
	}
}

func TestDuplicateStoredOnce(t *testing.T) {
	e := newEnv(t)
	raw := msgText("carol@customer.example", "Order", "dup@customer.example")
	e.ingest(t, raw, true)
	r := e.ingest(t, raw, true)
	if r.Outcome != OutcomeDuplicate || r.Ticket != 1 {
		t.Fatalf("%+v", r)
	}
	tk, _, _ := e.svc.Get(agentA, 1)
	if tk.Messages != 1 {
		t.Fatalf("messages %d", tk.Messages)
	}
	// Someone else reusing that Message-ID is not a duplicate of carol's mail.
	r = e.ingest(t, msgText("mallory@evil.example", "Order", "dup@customer.example"), true)
	if r.Outcome == OutcomeDuplicate {
		t.Fatal("foreign mail suppressed as duplicate")
	}
	// Same sender, subject and Message-ID but another text: its own message, and the index
	// keeps naming the first one.
	other := bytes.Replace(raw, []byte("my order is late"), []byte("pay to this account"), 1)
	r = e.ingest(t, other, false)
	if r.Outcome == OutcomeDuplicate || r.Ticket == 1 {
		t.Fatalf("a different message with the same Message-ID: %+v", r)
	}
	if id, seq, ok := e.svc.FindMessage("dup@customer.example"); !ok || id != 1 || seq != 1 {
		t.Fatalf("index moved to %d/%d", id, seq)
	}
}

func TestAccessAndAudit(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true)
	if _, _, err := e.svc.Get(agentB, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("other queue's agent: %v", err)
	}
	if _, _, err := e.svc.Get(agentA, 99); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := e.svc.Reply(agentB, 1, "hi"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reply from other queue: %v", err)
	}
	if _, err := e.svc.AddNote(auditor, 1, "hi"); err == nil {
		t.Fatal("auditor wrote a note")
	}
	if l, _ := e.svc.List(agentB, Filter{}); len(l) != 0 {
		t.Fatalf("other queue sees %d tickets", len(l))
	}
	evs, _ := e.log.Query(audit.Filter{Result: "denied"}, 0)
	if len(evs) < 3 {
		t.Fatalf("denied events: %d", len(evs))
	}
	if _, err := e.log.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestReplyAddressingAndStatus(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Order late", "c1@customer.example"), true)
	m, err := e.svc.Reply(agentA, 1, "Sorry!")
	if err != nil {
		t.Fatal(err)
	}
	o := e.mailer.out[0]
	if o.To != "carol@customer.example" || o.Subject != "Re: Order late [#1]" || o.InReplyTo != "c1@customer.example" {
		t.Fatalf("outgoing %+v", o)
	}
	if !strings.HasSuffix(m.MessageID, "@mail.example.com") || m.Delivery != "queued" {
		t.Fatalf("message %+v", m)
	}
	tk, _, _ := e.svc.Get(agentA, 1)
	if tk.Status != StatusPending {
		t.Fatalf("status %s", tk.Status)
	}
	e.mailer.fail = errors.New("no valid key for carol@customer.example and encrypt = required")
	if _, err := e.svc.Reply(agentA, 1, "secret"); !errors.Is(err, ErrNotSent) {
		t.Fatalf("refused reply: %v", err)
	}
	_, msgs, _ := e.svc.Get(agentA, 1)
	lastMsg := msgs[len(msgs)-1]
	if lastMsg.Direction != Note || !strings.Contains(lastMsg.Text, "not sent") {
		t.Fatalf("no note explaining the refusal: %+v", lastMsg)
	}
}

func TestSealedAtRest(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Secret subject", "c1@customer.example"), true)
	path := e.db.Path()
	e.db.Close()
	raw, _ := os.ReadFile(path)
	for _, s := range []string{"carol@customer.example", "Secret subject", "my order is late", "c1@customer.example"} {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("%q readable in the database file", s)
		}
	}
}

func TestMalformedMailIsKept(t *testing.T) {
	e := newEnv(t)
	dir := testutil.Testdata(t, "malformed")
	n := 0
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, ".txt") && strings.Contains(p, "LICENSE") {
			return nil
		}
		raw, _ := os.ReadFile(p)
		r, err := e.svc.Ingest(Incoming{Queue: "support", Raw: raw, Via: "smtp"})
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return nil
		}
		if r.Outcome != OutcomeDuplicate {
			_, got, err := e.svc.Raw(agentA, r.Ticket, r.Seq, "test")
			if err != nil || !bytes.Equal(got, raw) {
				t.Errorf("%s: raw not kept (%v)", p, err)
			}
		}
		n++
		return nil
	})
	if n < 50 {
		t.Fatalf("only %d malformed samples", n)
	}
}

func TestMailboxUIDsStable(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("a@x.example", "one", "1@x.example"), true)
	e.ingest(t, msgText("b@x.example", "two", "2@x.example"), true)
	v1, entries, err := e.svc.Mailbox("support", 0)
	if err != nil || len(entries) != 2 || entries[0].UID != 1 || entries[1].UID != 2 || v1 == 0 {
		t.Fatalf("%d %+v %v", v1, entries, err)
	}
	_, after, _ := e.svc.Mailbox("support", 1)
	if len(after) != 1 || after[0].UID != 2 {
		t.Fatalf("after: %+v", after)
	}
	v2, other, _ := e.svc.Mailbox("sales", 0)
	if len(other) != 0 || v2 == 0 {
		t.Fatalf("sales mailbox: validity %d, %d entries", v2, len(other))
	}
	e.svc.Ingest(Incoming{Queue: "sales", Raw: msgText("c@x.example", "s", "3@x.example")})
	if v3, _, _ := e.svc.Mailbox("sales", 0); v3 != v2 {
		t.Fatalf("UIDVALIDITY of an empty mailbox changed with its first message: %d → %d", v2, v3)
	}
}

func TestConcurrentIngestSharesCommits(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := e.svc.Ingest(Incoming{Queue: "support", Raw: msgText(fmt.Sprintf("c%d@x.example", i), "s", fmt.Sprintf("%d@x.example", i)), Via: "smtp"})
			if err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	l, _ := e.svc.List(agentA, Filter{Limit: 100})
	if len(l) != 40 {
		t.Fatalf("%d tickets", len(l))
	}
	for i := 1; i < len(l); i++ {
		if l[i].ID > l[i-1].ID {
			t.Fatal("not newest first")
		}
	}
}

func BenchmarkIngest(b *testing.B) {
	e := newEnv(b)
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 140)
	b.SetParallelism(4)
	var n int64
	var mu sync.Mutex
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			i := n
			mu.Unlock()
			raw := []byte(fmt.Sprintf("From: c%d@x.example\r\nTo: support@example.com\r\nSubject: s\r\nMessage-ID: <%d@x.example>\r\nDate: %s\r\n\r\n%s", i, i, time.Now().Format(time.RFC1123Z), body))
			if _, err := e.svc.Ingest(Incoming{Queue: "support", Raw: raw, Via: "smtp"}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestAutoAckSentOnceForNewTicket(t *testing.T) {
	e := newEnv(t)
	e.svc.opts.Queues[0].AutoAck = true
	e.svc.opts.Queues[0].AutoAckText = "We got it: ticket {ticket}.\n"
	e.svc.opts.AutoAck = func(p *Parsed, in Incoming) bool { return true }
	e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true)
	e.ingest(t, msgText("carol@customer.example", "Re: Order", "c2@customer.example", "In-Reply-To: <c1@customer.example>"), true)
	// The acknowledgement goes out in the background. Wait until its owed marker is gone (it
	// is deleted in the commit that queues it), then run what a restart runs: it must find
	// nothing left to send.
	for i := 0; ; i++ {
		var owed []byte
		e.db.View(func(tx *store.Tx) error { owed, _ = tx.GetPlain(bAutoAck, store.U64(1)); return nil })
		if owed == nil {
			break
		}
		if i == 500 {
			t.Fatal("the acknowledgement was never queued")
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.svc.SendAutoAcks()
	_, msgs, err := e.svc.Get(agentA, 1)
	if err != nil {
		t.Fatal(err)
	}
	acks := 0
	for _, m := range msgs {
		if m.Kind == "auto-reply" {
			acks++
			if m.To != "carol@customer.example" || m.Direction != Out || m.Text != "We got it: ticket 1.\n" {
				t.Errorf("ack %+v", m)
			}
		}
	}
	if acks != 1 {
		t.Fatalf("%d acknowledgements stored", acks)
	}
}

func TestListMergesQueuesNewestFirst(t *testing.T) {
	e := newEnv(t)
	admin := access.Actor{Name: "root", Role: access.RoleAdmin}
	for i := 0; i < 6; i++ {
		q := []string{"support", "sales"}[i%2]
		raw := msgText(fmt.Sprintf("c%d@x.example", i), "s", fmt.Sprintf("%d@x.example", i))
		if _, err := e.svc.Ingest(Incoming{Queue: q, Raw: raw}); err != nil {
			t.Fatal(err)
		}
	}
	l, err := e.svc.List(admin, Filter{Limit: 4})
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, tk := range l {
		ids = append(ids, tk.ID)
	}
	if fmt.Sprint(ids) != "[6 5 4 3]" {
		t.Fatalf("ids %v", ids)
	}
	l, _ = e.svc.List(admin, Filter{Limit: 4, Offset: 4})
	if len(l) != 2 || l[0].ID != 2 {
		t.Fatalf("page 2: %+v", l)
	}
	l, _ = e.svc.List(agentA, Filter{})
	if len(l) != 3 || l[0].Queue != "support" {
		t.Fatalf("agent: %+v", l)
	}
}

func TestPurgeDestroysForGood(t *testing.T) {
	e := newEnv(t)
	admin := access.Actor{Name: "root", Role: access.RoleAdmin, Remote: "ctl"}
	e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true)
	e.ingest(t, msgText("dave@customer.example", "Other", "d1@customer.example"), true)
	if err := e.svc.Purge(agentA, 1); !errors.Is(err, ErrForbidden) {
		t.Fatalf("agent purged: %v", err)
	}
	if err := e.svc.Purge(admin, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.Get(admin, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purged ticket readable: %v", err)
	}
	if _, _, err := e.svc.Get(admin, 2); err != nil {
		t.Fatalf("other ticket: %v", err)
	}
	if l, _ := e.svc.List(admin, Filter{}); len(l) != 1 {
		t.Fatalf("list after purge: %d", len(l))
	}
	// The same Message-ID again is a new ticket, not a duplicate of a destroyed one.
	if r := e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true); r.Outcome != OutcomeNew {
		t.Fatalf("after purge: %+v", r)
	}
	evs, _ := e.log.Query(audit.Filter{Action: "ticket.purge"}, 0)
	if len(evs) != 2 || evs[0].Result != "ok" || evs[1].Result != "denied" {
		t.Fatalf("purge events: %+v", evs)
	}
}

func TestPurgeClosedRetention(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	e.svc.opts.Now = func() time.Time { return now }
	e.ingest(t, msgText("a@x.example", "old", "1@x.example"), true)
	e.ingest(t, msgText("b@x.example", "open", "2@x.example"), true)
	e.svc.SetStatus(agentA, 1, StatusClosed)
	now = now.Add(400 * 24 * time.Hour)
	n, err := e.svc.PurgeClosed(365 * 24 * time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("purged %d, %v", n, err)
	}
	admin := access.Actor{Name: "root", Role: access.RoleAdmin}
	if _, _, err := e.svc.Get(admin, 1); !errors.Is(err, ErrNotFound) {
		t.Fatal("closed ticket survived retention")
	}
	if _, _, err := e.svc.Get(admin, 2); err != nil {
		t.Fatal("open ticket purged")
	}
}

func TestTextUsesLF(t *testing.T) {
	p := Parse([]byte("From: a@x.example\r\nSubject: s\r\n\r\nline one\r\nline two\r\n"))
	if p.Text != "line one\nline two\n" {
		t.Fatalf("%q", p.Text)
	}
}

func TestListBeforeCursor(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 7; i++ {
		e.ingest(t, msgText(fmt.Sprintf("c%d@x.example", i), "s", fmt.Sprintf("b%d@x.example", i)), true)
	}
	var got []uint64
	var before uint64
	for {
		l, err := e.svc.List(agentA, Filter{Before: before, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range l {
			got = append(got, tk.ID)
		}
		if len(l) < 3 {
			break
		}
		before = l[len(l)-1].ID
	}
	if fmt.Sprint(got) != "[7 6 5 4 3 2 1]" {
		t.Fatalf("%v", got)
	}
}

func TestSafeFilenameKeepsUTF8(t *testing.T) {
	name := SafeFilename(strings.Repeat("é", 61)+"a.pdf", "application/pdf")
	if !utf8.ValidString(name) || !strings.HasSuffix(name, "a.pdf") || len(name) > 120 {
		t.Fatalf("%q", name)
	}
}

func TestBounceOfOurReplyBecomesANote(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true)
	rep, err := e.svc.Reply(agentA, 1, "On its way.")
	if err != nil {
		t.Fatal(err)
	}
	dsn := []byte("From: MAILER-DAEMON@mx.customer.example\r\nTo: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx.customer.example>\r\n\r\nThe mail system: <carol@customer.example>: user unknown\r\n")
	r, err := e.svc.Ingest(Incoming{Queue: "support", Raw: dsn, Via: "smtp", Kind: "bounce", BounceOf: []string{rep.MessageID}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Outcome != OutcomeBounce || r.Ticket != 1 || r.New {
		t.Fatalf("%+v", r)
	}
	tk, msgs, _ := e.svc.Get(agentA, 1)
	if got := msgs[rep.Seq-1].Delivery; got != "bounced" {
		t.Errorf("reply delivery %q", got)
	}
	last := msgs[len(msgs)-1]
	if last.Direction != Note || last.Kind != "bounce" || !strings.Contains(last.Text, "user unknown") {
		t.Errorf("bounce filed as %+v", last)
	}
	if _, ok := tk.Participant("mailer-daemon@mx.customer.example"); ok {
		t.Error("the bounce's sender became a participant")
	}
	// A bounce that matches nothing of ours opens a ticket of its own: nothing is dropped.
	r, _ = e.svc.Ingest(Incoming{Queue: "support", Raw: []byte(strings.Replace(string(dsn), "dsn1", "dsn2", 1)), Via: "smtp", Kind: "bounce", BounceOf: []string{"unknown@elsewhere.example"}})
	if !r.New || r.Ticket == 1 {
		t.Fatalf("unmatched bounce: %+v", r)
	}
}

// TestSafeFilenameDropsHiddenCharacters (issue 11.5): no bidi control, invisible format
// character or separator survives, so the extension shown is the real one.
func TestSafeFilenameDropsHiddenCharacters(t *testing.T) {
	for _, r := range []rune{0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069,
		0x200E, 0x200F, 0x061C, 0x200B, 0x2060, 0xFEFF, 0x00AD, 0x2028, 0x2029, 0xE0001, 0x01, 0x1B, 0x7F, 0x85, 0x9B} {
		name := "invoice" + string(r) + "fdp.exe"
		if got := SafeFilename(name, "application/octet-stream"); got != "invoicefdp.exe" {
			t.Errorf("U+%04X: %q", r, got)
		}
	}
	// Letters of right-to-left scripts and the joiners Persian needs stay.
	for _, name := range []string{"חשבונית.pdf", "نامه\u200cها.pdf", "क्\u200dष.txt"} {
		if got := SafeFilename(name, "application/pdf"); got != name {
			t.Errorf("%q became %q", name, got)
		}
	}
	if got := SafeFilename("\u202E\u2066", "application/pdf"); got != "attachment.pdf" {
		t.Errorf("a name of controls only: %q", got)
	}
}

func (e *env) ingestTo(t *testing.T, queue string, raw []byte) Result {
	t.Helper()
	r, err := e.svc.Ingest(Incoming{Queue: queue, Raw: raw, Via: "smtp", Remote: "127.0.0.1",
		Auth: Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A message sent to two queues is the first writer of its Message-ID in both: neither copy is
// marked, a retransmission is a duplicate in both, and a follow-up threads in each queue.
func TestMessageIDPerQueue(t *testing.T) {
	e := newEnv(t)
	raw := msgText("carol@customer.example", "Both", "both@customer.example")
	var first [2]Result
	for i, q := range []string{"support", "sales"} {
		first[i] = e.ingestTo(t, q, raw)
		_, msgs, err := e.svc.Get(access.Actor{Name: "t", Role: access.RoleAdmin}, first[i].Ticket)
		if err != nil || msgs[0].IDTaken || msgs[0].Problem != "" {
			t.Fatalf("%s: %v %+v", q, err, msgs)
		}
	}
	for i, q := range []string{"support", "sales"} {
		if r := e.ingestTo(t, q, raw); r.Outcome != OutcomeDuplicate || r.Ticket != first[i].Ticket {
			t.Errorf("%s: retransmission %+v", q, r)
		}
		follow := msgText("carol@customer.example", "Re: Both", "both2."+q+"@customer.example", "In-Reply-To: <both@customer.example>")
		if r := e.ingestTo(t, q, follow); r.Outcome != OutcomeThreaded || r.Ticket != first[i].Ticket {
			t.Errorf("%s: follow-up %+v, want ticket %d", q, r, first[i].Ticket)
		}
	}
}

// Mail stored before per-queue entries has only the store-wide one: it still holds its id
// against a newcomer in its queue.
func TestMessageIDLegacyEntryHolds(t *testing.T) {
	e := newEnv(t)
	first := e.ingest(t, msgText("carol@customer.example", "Order", "old@customer.example"), true)
	e.db.Update(func(tx *store.Tx) error {
		return tx.Delete(bMsgID, queueIDKey(e.db, "support", "old@customer.example"))
	})
	other := e.ingest(t, msgText("carol@customer.example", "Invoice update", "old@customer.example"), false)
	if other.Ticket == first.Ticket || other.Outcome == OutcomeDuplicate {
		t.Fatalf("newcomer %+v", other)
	}
	r := e.ingest(t, msgText("carol@customer.example", "Re: Order", "old2@customer.example", "In-Reply-To: <old@customer.example>"), true)
	if r.Ticket != first.Ticket {
		t.Fatalf("follow-up went to ticket %d, want %d", r.Ticket, first.Ticket)
	}
}

// BenchmarkDigest: the content digest every inbound message gets, on an 8 KB message.
func BenchmarkDigest(b *testing.B) {
	p := Parse(msgText("carol@customer.example", "Order", "d@customer.example", strings.Repeat("X-Pad: "+strings.Repeat("x", 70)+"\r\n", 100)))
	p.Text = strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n", 140)
	b.SetBytes(int64(len(p.Text)))
	for b.Loop() {
		digest(p)
	}
}

// An index entry left pointing at a ticket whose key was destroyed (or at a message record
// that is gone) does not hold the Message-ID: the next message with it claims it, unmarked.
func TestMessageIDOfDestroyedTicketIsFree(t *testing.T) {
	for _, how := range []string{"scope destroyed", "record gone"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			first := e.ingest(t, msgText("carol@customer.example", "Order", "reused@customer.example"), true)
			err := e.db.Update(func(tx *store.Tx) error {
				if how == "record gone" {
					return tx.Delete(bMessages, mkey(first.Ticket, 1))
				}
				return tx.DestroyScope(first.Ticket)
			})
			if err != nil {
				t.Fatal(err)
			}
			// Different content, so not a duplicate of the first.
			r := e.ingest(t, msgText("dave@customer.example", "Another", "reused@customer.example"), true)
			if r.Ticket == first.Ticket {
				t.Fatalf("landed in the destroyed ticket: %+v", r)
			}
			_, msgs, err := e.svc.Get(access.Actor{Name: "t", Role: access.RoleAdmin}, r.Ticket)
			if err != nil || msgs[0].IDTaken {
				t.Fatalf("the Message-ID stayed taken: %v %+v", err, msgs)
			}
		})
	}
}
