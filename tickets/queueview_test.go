package tickets

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/internal/testutil"
	"mailgate/store"
)

func ids(ts []Ticket) []uint64 {
	var out []uint64
	for _, t := range ts {
		out = append(out, t.ID)
	}
	return out
}

func (e *env) work(t *testing.T, q ListQuery) ListResult {
	t.Helper()
	r, err := e.svc.Work(agentA, q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestWorkQueueOrderViewsCounts(t *testing.T) {
	e := newEnv(t)
	clk := testutil.NewClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	e.svc.opts.Now = clk.Now
	for i, id := range []string{"a1", "b1", "c1"} {
		e.ingest(t, msgText(id+"@customer.example", "Question "+id, id+"@customer.example"), true)
		if i < 2 {
			clk.Add(10 * time.Minute)
		}
	}
	clk.Add(10 * time.Minute)
	rep, err := e.svc.Reply(agentA, 1, "Answered.")
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(e.work(t, ListQuery{}).Tickets); !slices.Equal(got, []uint64{2, 3, 1}) {
		t.Fatalf("waiting order after answering #1: %v, want [2 3 1]", got)
	}
	clk.Add(10 * time.Minute)
	// The customer of #1 writes again: it waits since now, behind #2 and #3.
	e.ingest(t, msgText("a1@customer.example", "Re: Question a1", "a2@customer.example", "In-Reply-To: <"+rep.MessageID+">"), true)
	r := e.work(t, ListQuery{})
	if got := ids(r.Tickets); !slices.Equal(got, []uint64{2, 3, 1}) {
		t.Fatalf("waiting order: %v", got)
	}
	if r.Tickets[2].Waiting.IsZero() || !r.Tickets[0].Waiting.Before(r.Tickets[2].Waiting) {
		t.Fatalf("waiting since: %v, %v", r.Tickets[0].Waiting, r.Tickets[2].Waiting)
	}
	if got := ids(e.work(t, ListQuery{Sort: SortActivity}).Tickets); !slices.Equal(got, []uint64{1, 3, 2}) {
		t.Fatalf("activity order: %v", got)
	}
	if got := ids(e.work(t, ListQuery{Sort: SortNumber}).Tickets); !slices.Equal(got, []uint64{3, 2, 1}) {
		t.Fatalf("number order: %v", got)
	}
	if err := e.svc.Assign(agentA, 2, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.SetStatus(agentA, 3, StatusSolved); err != nil {
		t.Fatal(err)
	}
	r = e.work(t, ListQuery{View: ViewMine})
	want := map[string]int{ViewOpen: 2, ViewMine: 1, ViewUnassigned: 1, ViewAttention: 0, ViewAll: 3}
	for v, n := range want {
		if r.Counts[v] != n {
			t.Errorf("count %s = %d, want %d (%v)", v, r.Counts[v], n, r.Counts)
		}
	}
	if got := ids(r.Tickets); !slices.Equal(got, []uint64{2}) || r.Total != 1 {
		t.Fatalf("mine: %v total %d", got, r.Total)
	}
	// Paging: a total over all pages, pages of Limit.
	r = e.work(t, ListQuery{View: ViewAll, Sort: SortNumber, Offset: 1, Limit: 1})
	if got := ids(r.Tickets); !slices.Equal(got, []uint64{2}) || r.Total != 3 {
		t.Fatalf("page 2 of 3: %v total %d", got, r.Total)
	}
	// Another queue's agent sees none of it.
	rb, err := e.svc.Work(agentB, ListQuery{View: ViewAll})
	if err != nil || rb.Total != 0 || len(rb.Tickets) != 0 {
		t.Fatalf("sales agent sees %+v %v", rb, err)
	}
}

// A spoofed message from the real customer's address is marked, so its row does not look like
// the customer's.
func TestWorkQueueRiskFlags(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Real", "r1@customer.example"), true)
	e.ingest(t, msgText("carol@customer.example", "Spoofed", "s1@customer.example"), false)
	r := e.work(t, ListQuery{Sort: SortNumber})
	if len(r.Tickets) != 2 || r.Tickets[0].ID != 2 || !r.Tickets[0].Unverified || r.Tickets[1].Unverified {
		t.Fatalf("flags: %+v", r.Tickets)
	}
}

func TestAutoReplyNeverReopensAndBounceNeedsAttention(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true)
	rep, err := e.svc.Reply(agentA, 1, "On its way.")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.SetStatus(agentA, 1, StatusSolved); err != nil {
		t.Fatal(err)
	}
	ooo := msgText("carol@customer.example", "Out of office: Re: Order", "ooo1@customer.example", "In-Reply-To: <"+rep.MessageID+">", "Auto-Submitted: auto-replied")
	r, err := e.svc.Ingest(Incoming{Queue: "support", Raw: ooo, Via: "smtp", Kind: "auto-reply",
		Auth: Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}})
	if err != nil || r.Ticket != 1 {
		t.Fatalf("auto-reply: %+v %v", r, err)
	}
	tk, _, _ := e.svc.Get(agentA, 1)
	if tk.Status != StatusSolved || !tk.Waiting.IsZero() || !tk.AutoReply {
		t.Fatalf("after an auto-reply: status %s waiting %v auto %t", tk.Status, tk.Waiting, tk.AutoReply)
	}
	dsn := []byte("From: MAILER-DAEMON@mx.customer.example\r\nTo: support@example.com\r\nSubject: Undelivered\r\nMessage-ID: <dsn1@mx.customer.example>\r\n\r\nuser unknown\r\n")
	if _, err := e.svc.Ingest(Incoming{Queue: "support", Raw: dsn, Via: "smtp", Kind: "bounce", BounceOf: []string{rep.MessageID}}); err != nil {
		t.Fatal(err)
	}
	tk, _, _ = e.svc.Get(agentA, 1)
	if tk.Status != StatusSolved || !tk.Bounced {
		t.Fatalf("after a bounce: status %s bounced %t", tk.Status, tk.Bounced)
	}
	res := e.work(t, ListQuery{View: ViewAttention})
	if got := ids(res.Tickets); !slices.Equal(got, []uint64{1}) || res.Counts[ViewAttention] != 1 {
		t.Fatalf("attention: %v %v", got, res.Counts)
	}
	// A new reply is the agent's answer to the bounce.
	if _, err := e.svc.Reply(agentA, 1, "Is there another address?"); err != nil {
		t.Fatal(err)
	}
	if res := e.work(t, ListQuery{View: ViewAttention}); res.Total != 0 {
		t.Fatalf("still needs attention after a new reply: %v", ids(res.Tickets))
	}
	// The customer's own word does reopen.
	e.ingest(t, msgText("carol@customer.example", "Re: Order", "c2@customer.example", "In-Reply-To: <"+rep.MessageID+">"), true)
	if tk, _, _ = e.svc.Get(agentA, 1); tk.Status != StatusOpen || tk.Waiting.IsZero() {
		t.Fatalf("customer's reply: status %s waiting %v", tk.Status, tk.Waiting)
	}
}

func TestSearchFindsSealedAndAudited(t *testing.T) {
	e := newEnv(t)
	raw := []byte("From: Zelda Quux <zelda@hyrule.example>\r\nTo: support@example.com\r\nSubject: Broken flux capacitor\r\nMessage-ID: <z1@hyrule.example>\r\n\r\nThe zebrafish invoice 4711 is wrong.\r\n")
	e.ingest(t, raw, true)
	e.ingest(t, msgText("other@customer.example", "Unrelated", "o1@customer.example"), true)
	if _, err := e.svc.AddNote(agentA, 2, "mentions nothing"); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"zebrafish", "ZEBRAFISH invoice", "flux", "zelda@hyrule.example", "Quux", "4711", "#1", "hyrule"} {
		r := e.work(t, ListQuery{Search: q, View: ViewAll})
		if got := ids(r.Tickets); !slices.Equal(got, []uint64{1}) {
			t.Errorf("search %q: %v, want [1]", q, got)
		}
	}
	for _, q := range []string{"zebrafish unrelated", "nosuchword", "zelda@other.example"} {
		if r := e.work(t, ListQuery{Search: q, View: ViewAll}); len(r.Tickets) != 0 {
			t.Errorf("search %q found %v", q, ids(r.Tickets))
		}
	}
	// An agent of another queue finds nothing, not even by number.
	for _, q := range []string{"zebrafish", "1"} {
		if r, err := e.svc.Work(agentB, ListQuery{Search: q, View: ViewAll}); err != nil || len(r.Tickets) != 0 {
			t.Errorf("sales agent search %q: %v %v", q, ids(r.Tickets), err)
		}
	}
	ev, err := e.log.Query(audit.Filter{Actor: "alice", Action: "ticket.search"}, 0)
	if err != nil || len(ev) == 0 || !strings.Contains(ev[0].Detail, "query=") {
		t.Fatalf("searches not audited: %+v %v", ev, err)
	}
	// At rest the index shows no word: not in the file, not as a plain key.
	path := e.db.Path()
	e.db.Close()
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"zebrafish", "capacitor", "hyrule", "Zelda", "zelda"} {
		if bytes.Contains(file, []byte(w)) {
			t.Errorf("the store file contains %q", w)
		}
	}
}

// Tickets stored before the index existed are indexed, and their derived fields set, by Prepare.
func TestPrepareMigratesExistingTickets(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, msgText("carol@customer.example", "Walrus trouble", "c1@customer.example"), true)
	e.ingest(t, msgText("dave@customer.example", "Other", "d1@customer.example"), true)
	// Make the store look like one from before: no index, no derived fields. The background
	// indexing pass must be done first, or it would index again after the strip.
	if err := e.svc.indexPending(); err != nil {
		t.Fatal(err)
	}
	postingCacheOf(e.db).indexing.Lock()
	err := e.db.Update(func(tx *store.Tx) error {
		for _, b := range []string{bSearch, bSearchPending} {
			c := tx.Cursor(b)
			var keys [][]byte
			for k := c.First(); k != nil; k = c.Next() {
				keys = append(keys, k)
			}
			for _, k := range keys {
				if err := tx.Delete(b, k); err != nil {
					return err
				}
			}
		}
		for id := uint64(1); id <= 2; id++ {
			tk, err := loadTicket(tx, id)
			if err != nil {
				return err
			}
			tk.Waiting, tk.Derived = time.Time{}, 0
			b, _ := json.Marshal(tk)
			if err := tx.PutScoped(id, bTickets, tkey(id), b); err != nil {
				return err
			}
		}
		return nil
	})
	postingCacheOf(e.db).indexing.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	// A fresh process: a new Service and a cold cache.
	headerCaches.Delete(e.db)
	svc := New(e.db, e.log, e.svc.opts)
	if r, _ := svc.Work(agentA, ListQuery{Search: "walrus"}); len(r.Tickets) != 0 {
		t.Fatalf("found before migration: %v (the test did not strip the index)", ids(r.Tickets))
	}
	n, err := svc.Prepare()
	if err != nil || n != 2 {
		t.Fatalf("Prepare: %d %v", n, err)
	}
	r, err := svc.Work(agentA, ListQuery{Search: "walrus"})
	if err != nil || !slices.Equal(ids(r.Tickets), []uint64{1}) || r.Tickets[0].Waiting.IsZero() || r.Tickets[0].Derived != derivedVersion {
		t.Fatalf("after migration: %+v %v", r.Tickets, err)
	}
	// Done is done: a second start does not walk the store again.
	if n, err := svc.Prepare(); err != nil || n != 0 {
		t.Fatalf("second Prepare: %d %v", n, err)
	}
}

func TestAutoAckInTheCustomersLanguage(t *testing.T) {
	e := newEnv(t)
	e.svc.opts.Queues[0].AutoAck = true
	e.svc.opts.Queues[0].AutoAckText = "Got it: {ticket}.\n"
	e.svc.opts.Queues[0].AutoAckTexts = map[string]string{"de": "Erhalten: {ticket}.\n", "fr-ch": "Reçu (CH): {ticket}.\n"}
	e.svc.opts.AutoAck = func(p *Parsed, in Incoming) bool { return true }
	cases := []struct{ header, want string }{
		{"Content-Language: de-AT", "Erhalten: 1.\n"},
		{"Accept-Language: fr-CH, fr;q=0.9", "Reçu (CH): 2.\n"},
		{"Content-Language: sv", "Got it: 3.\n"},
		{"", "Got it: 4.\n"},
	}
	for i, c := range cases {
		var extra []string
		if c.header != "" {
			extra = append(extra, c.header)
		}
		e.ingest(t, msgText(fmt.Sprintf("c%d@customer.example", i), "Hi", fmt.Sprintf("l%d@customer.example", i), extra...), true)
	}
	e.svc.SendAutoAcks()
	for i, c := range cases {
		id := uint64(i + 1)
		var got string
		for try := 0; try < 500 && got == ""; try++ {
			_, msgs, err := e.svc.Get(agentA, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				if m.Kind == "auto-reply" {
					got = m.Text
				}
			}
			if got == "" {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if got != c.want {
			t.Errorf("%q: acknowledgement %q, want %q", c.header, got, c.want)
		}
	}
}

// A common word's ids are cached in memory; a ticket that adds the word must still be found.
func TestSearchCacheSeesNewTickets(t *testing.T) {
	e := newEnv(t)
	h := headersOf(e.db)
	h.mu.Lock()
	h.loaded = true
	h.mu.Unlock()
	err := e.db.Update(func(tx *store.Tx) error {
		for i := 1; i <= cacheMinIDs+10; i++ {
			tk := &Ticket{ID: uint64(1000000 + i), Queue: "support", Status: StatusNew, Subject: "s"}
			h.mu.Lock()
			h.set(tk)
			h.mu.Unlock()
			if err := e.svc.indexMessage(tx, tk, &Message{Seq: 1, Text: "marmalade"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r := e.work(t, ListQuery{Search: "marmalade"})
	if r.Total != cacheMinIDs+10 {
		t.Fatalf("first search: %d", r.Total)
	}
	if _, ok := postingCacheOf(e.db).get(token(e.svc.searchKey("support"), "marmalade")); !ok {
		t.Fatal("the common word's list was not cached (the test would prove nothing)")
	}
	raw := []byte("From: new@customer.example\r\nTo: support@example.com\r\nSubject: jam\r\nMessage-ID: <m1@customer.example>\r\n\r\nMore marmalade please.\r\n")
	res := e.ingest(t, raw, true)
	if r = e.work(t, ListQuery{Search: "marmalade"}); r.Total != cacheMinIDs+11 {
		t.Fatalf("after a new ticket: total %d, want %d", r.Total, cacheMinIDs+11)
	}
	if r = e.work(t, ListQuery{Search: "marmalade please"}); !slices.Equal(ids(r.Tickets), []uint64{res.Ticket}) {
		t.Fatalf("marmalade please: %v, want [%d]", ids(r.Tickets), res.Ticket)
	}
}

// After a purge the index holds no trace of which words the ticket had: its id is gone from
// the lists, which anyone holding the master key could otherwise read by hashing a dictionary.
func TestPurgeTakesTicketOutOfTheIndex(t *testing.T) {
	e := newEnv(t)
	admin := agentA
	admin.Role = access.RoleAdmin
	raw := []byte("From: z@customer.example\r\nTo: support@example.com\r\nSubject: zanzibar\r\nMessage-ID: <z1@customer.example>\r\n\r\nA secret divorce.\r\n")
	gone := e.ingest(t, raw, true).Ticket
	kept := e.ingest(t, msgText("k@customer.example", "divorce lawyer", "k1@customer.example"), true).Ticket
	if r := e.work(t, ListQuery{Search: "divorce", View: ViewAll}); len(r.Tickets) != 2 {
		t.Fatalf("before: %v", ids(r.Tickets))
	}
	if err := e.svc.Purge(admin, gone); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"divorce", "zanzibar", "secret", "z@customer.example"} {
		var found []uint64
		e.db.View(func(tx *store.Tx) error {
			return postings(tx, token(e.svc.searchKey("support"), w), func(id uint64) { found = append(found, id) })
		})
		if slices.Contains(found, gone) {
			t.Errorf("the index still lists purged ticket %d under %q", gone, w)
		}
	}
	if r := e.work(t, ListQuery{Search: "divorce", View: ViewAll}); !slices.Equal(ids(r.Tickets), []uint64{kept}) {
		t.Fatalf("after: %v", ids(r.Tickets))
	}
}

// A pass works out its new chunks before it takes the write lock. A purge that commits in
// between must still keep the purged ticket out of the lists, and the other messages of the
// pass must still be indexed.
func TestPurgeDuringIndexPassStaysOut(t *testing.T) {
	e := newEnv(t)
	admin := agentA
	admin.Role = access.RoleAdmin
	gone := e.ingest(t, msgText("z@customer.example", "zanzibar divorce", "z1@customer.example"), true).Ticket
	kept := e.ingest(t, msgText("k@customer.example", "divorce lawyer", "k1@customer.example"), true).Ticket
	purged := false
	testHookIndexPlanned = func() {
		if !purged {
			purged = true
			if err := e.svc.Purge(admin, gone); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { testHookIndexPlanned = nil }()
	if err := e.svc.indexPending(); err != nil {
		t.Fatal(err)
	}
	if !purged {
		t.Fatal("no pass ran between the ingest and the check (the test would prove nothing)")
	}
	for _, w := range []string{"divorce", "zanzibar", "z@customer.example"} {
		var found []uint64
		e.db.View(func(tx *store.Tx) error {
			return postings(tx, token(e.svc.searchKey("support"), w), func(id uint64) { found = append(found, id) })
		})
		if slices.Contains(found, gone) {
			t.Errorf("the index lists ticket %d, purged during the pass, under %q", gone, w)
		}
	}
	if r := e.work(t, ListQuery{Search: "divorce", View: ViewAll}); !slices.Equal(ids(r.Tickets), []uint64{kept}) {
		t.Fatalf("divorce: %v, want [%d]", ids(r.Tickets), kept)
	}
}
