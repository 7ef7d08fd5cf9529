package tickets

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/store"
)

// ingestCorpus is the threading corpus of testdata plus messages that exercise the edges of
// the index words: a first message whose ticket subject differs from its words (a tag
// removed, no subject at all), an HTML-only message, one with more than maxWords words,
// a reply that joins a ticket, and addresses in Cc.
func ingestCorpus(t *testing.T) [][]byte {
	corpus := fuzzSeedFiles(t, "threading/imaptest", "threading/mox", "threading/notmuch")
	var many strings.Builder
	for i := range maxWords + 300 {
		fmt.Fprintf(&many, "w%dx ", i)
	}
	corpus = append(corpus,
		[]byte("From: a@customer.example\r\nTo: support@example.com\r\nSubject: foo[#1]bar [#2] quux\r\nMessage-ID: <tag1@customer.example>\r\n\r\nsee subject\r\n"),
		[]byte("From: b@customer.example\r\nTo: support@example.com\r\nMessage-ID: <nosubj@customer.example>\r\n\r\nno subject line at all\r\n"),
		[]byte("From: c@customer.example\r\nTo: support@example.com\r\nSubject: html only\r\nMessage-ID: <html1@customer.example>\r\nContent-Type: text/html\r\n\r\n<p>Gazpacho <b>recipe</b></p>\r\n"),
		[]byte("From: d@customer.example\r\nTo: support@example.com\r\nCc: Eve <eve@other.example>, f@third.example\r\nSubject: huge[#7]ly\r\nMessage-ID: <huge1@customer.example>\r\n\r\n"+many.String()+"\r\n"),
		[]byte("From: d@customer.example\r\nTo: support@example.com\r\nSubject: Re: huge\r\nIn-Reply-To: <huge1@customer.example>\r\nMessage-ID: <huge2@customer.example>\r\n\r\nA follow-up: "+many.String()+"\r\n"),
		[]byte("From: a@customer.example\r\nTo: support@example.com\r\nSubject: Re: quux\r\nIn-Reply-To: <tag1@customer.example>\r\nMessage-ID: <tag2@customer.example>\r\n\r\nfollow-up with marzipan\r\n"),
	)
	return corpus
}

// dumpIndex returns every token's ticket ids, sorted.
func dumpIndex(t *testing.T, db *store.DB) map[string][]uint64 {
	t.Helper()
	out := map[string][]uint64{}
	err := db.View(func(tx *store.Tx) error {
		c := tx.Cursor(bSearch)
		for k := c.First(); k != nil; k = c.Next() {
			tok := hex.EncodeToString(k[:16])
			if _, ok := out[tok]; ok {
				continue
			}
			var l []uint64
			if err := postings(tx, k[:16], func(id uint64) { l = append(l, id) }); err != nil {
				return err
			}
			slices.Sort(l)
			out[tok] = l
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The tokens Ingest hashes before its transaction make the same index as the indexer's read
// back of the stored message: every token's list and every search come out equal.
func TestHandedTokensIndexLikeReadBack(t *testing.T) {
	handedEnv, readEnv := newEnv(t), newEnv(t)
	pc := postingCacheOf(readEnv.db)
	pc.handed.mu.Lock()
	pc.handed.max = -1 // nothing fits: every message is read back
	pc.handed.mu.Unlock()
	// Every message's tokens must wait in memory for the pass below (a pass between a commit
	// and its hand-over would read that message back, which is right but not under test).
	for _, e := range []*env{handedEnv, readEnv} {
		postingCacheOf(e.db).indexing.Lock()
	}
	stored := 0
	var queries []string
	for _, raw := range ingestCorpus(t) {
		a := handedEnv.ingest(t, raw, true)
		b := readEnv.ingest(t, raw, true)
		if a != b {
			t.Fatalf("the two stores filed a message differently: %+v, %+v", a, b)
		}
		if a.Outcome == OutcomeDuplicate {
			continue
		}
		stored++
		p := Parse(raw)
		ws := slices.Sorted(func(yield func(string) bool) {
			for w := range indexWords(&Ticket{Subject: ticketSubject(p.Subject)}, &Message{Seq: 1, Subject: p.Subject, From: p.From, Text: p.Text}) {
				if !yield(w) {
					return
				}
			}
		})
		for i := 0; i < len(ws); i += 5 {
			queries = append(queries, ws[i])
		}
	}
	for _, e := range []*env{handedEnv, readEnv} {
		postingCacheOf(e.db).indexing.Unlock()
		if err := e.svc.indexPending(); err != nil {
			t.Fatal(err)
		}
	}
	if got := postingCacheOf(handedEnv.db).handed.taken; got != uint64(stored) {
		t.Fatalf("%d of %d messages were indexed from handed tokens", got, stored)
	}
	if pc.handed.taken != 0 {
		t.Fatalf("the read-back store took %d messages' tokens from memory (the test compares nothing)", pc.handed.taken)
	}
	a, b := dumpIndex(t, handedEnv.db), dumpIndex(t, readEnv.db)
	if len(a) < 1000 {
		t.Fatalf("only %d tokens: the corpus did not load", len(a))
	}
	for tok, l := range b {
		if !slices.Equal(a[tok], l) {
			t.Errorf("token %s: handed %v, read back %v", tok, a[tok], l)
		}
	}
	for tok, l := range a {
		if _, ok := b[tok]; !ok {
			t.Errorf("token %s only in the handed index: %v", tok, l)
		}
	}
	queries = append(queries, "no subject", "foobar", "quux", "marzipan", "gazpacho", "eve@other.example", "w2100x", "w2290x", "hugely", "huge")
	for _, q := range queries {
		x, err := handedEnv.svc.searchIDs([]string{"support"}, q)
		if err != nil {
			t.Fatal(err)
		}
		y, err := readEnv.svc.searchIDs([]string{"support"}, q)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(x, y, slices.Equal) {
			t.Errorf("search %q: handed %v, read back %v", q, x, y)
		}
	}
}

func (h *handedTokens) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.byKey)
}

// A restart loses the tokens in memory, not the notes in the store: a new process indexes
// every message still pending by reading it back.
func TestIndexPendingAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	open := func() *env {
		db, err := store.Open(path, bytes.Repeat([]byte{5}, 32), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		log, _ := audit.New(db, "")
		return &env{svc: New(db, log, Options{Hostname: "mail.example.com", Queues: []Queue{{Name: "support", Address: "support@example.com"}}}), db: db, log: log}
	}
	e := open()
	// No indexing pass may run before the restart.
	pc := postingCacheOf(e.db)
	pc.indexing.Lock()
	want := map[string]uint64{}
	for i := range 20 {
		w := fmt.Sprintf("kumquat%d", i)
		raw := fmt.Sprintf("From: c%d@customer.example\r\nTo: support@example.com\r\nSubject: Question %d\r\nMessage-ID: <r%d@customer.example>\r\n\r\nAbout the %s.\r\n", i, i, i, w)
		want[w] = e.ingest(t, []byte(raw), true).Ticket
	}
	if n := pc.handed.len(); n != len(want) {
		t.Fatalf("%d messages' tokens handed over, want %d", n, len(want))
	}
	e.db.Close()
	pc.indexing.Unlock()

	e = open()
	defer e.db.Close()
	if !e.svc.pendingIndex() {
		t.Fatal("nothing pending after the restart: the test proves nothing")
	}
	for w, id := range want {
		if r := e.work(t, ListQuery{Search: w, View: ViewAll}); !slices.Equal(ids(r.Tickets), []uint64{id}) {
			t.Errorf("search %q after the restart: %v, want [%d]", w, ids(r.Tickets), id)
		}
	}
	if taken := postingCacheOf(e.db).handed.taken; taken != 0 {
		t.Errorf("%d messages indexed from tokens after a restart", taken)
	}
}

// A ticket purged after its commit and before the indexing pass stays out of the lists,
// although its tokens were handed over in memory.
func TestPurgeBeforeIndexStaysOut(t *testing.T) {
	e := newEnv(t)
	admin := access.Actor{Name: "root", Role: access.RoleAdmin}
	pc := postingCacheOf(e.db)
	pc.indexing.Lock()
	gone := e.ingest(t, []byte("From: zz@customer.example\r\nTo: support@example.com\r\nSubject: quetzal\r\nMessage-ID: <q1@customer.example>\r\n\r\nA secret quetzal.\r\n"), true).Ticket
	kept := e.ingest(t, []byte("From: kk@customer.example\r\nTo: support@example.com\r\nSubject: bird\r\nMessage-ID: <q2@customer.example>\r\n\r\nAnother quetzal.\r\n"), true).Ticket
	if n := pc.handed.len(); n != 2 {
		t.Fatalf("%d messages' tokens handed over, want 2", n)
	}
	if err := e.svc.Purge(admin, gone); err != nil {
		t.Fatal(err)
	}
	if n := pc.handed.len(); n != 1 {
		t.Errorf("%d messages' tokens held after the purge, want 1 (the purged ones dropped)", n)
	}
	pc.indexing.Unlock()
	if err := e.svc.indexPending(); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"quetzal", "secret", "zz@customer.example"} {
		var found []uint64
		e.db.View(func(tx *store.Tx) error {
			return postings(tx, token(e.svc.searchKey("support"), w), func(id uint64) { found = append(found, id) })
		})
		if slices.Contains(found, gone) {
			t.Errorf("the index lists purged ticket %d under %q", gone, w)
		}
		if w == "quetzal" && !slices.Equal(found, []uint64{kept}) {
			t.Errorf("quetzal: %v, want [%d]", found, kept)
		}
	}
	if n := pc.handed.len(); n != 0 {
		t.Errorf("%d messages' tokens left after the pass", n)
	}
}

// A pass that indexed a message by reading it back, before its tokens were handed over, leaves
// them behind: the next pass that finds nothing more to index forgets them.
func TestHandedTokensLeftBehindArePruned(t *testing.T) {
	var h handedTokens
	h.put(mkey(1, 1), make([]byte, 32)) // handed before pass 1 began: pass 1 saw its note
	p1 := h.begin()
	h.put(mkey(2, 1), make([]byte, 32)) // handed during pass 1: maybe after pass 1 read the notes
	h.prune(p1)
	if _, ok := h.byKey[[12]byte(mkey(1, 1))]; ok {
		t.Error("tokens older than the pass were kept")
	}
	if _, ok := h.byKey[[12]byte(mkey(2, 1))]; !ok {
		t.Error("tokens handed during the pass were dropped")
	}
	h.prune(h.begin())
	if h.len() != 0 || h.bytes != 0 {
		t.Errorf("%d entries, %d bytes left", h.len(), h.bytes)
	}
}

// Inbound text is kept apart from the message's metadata record, and reads back whole.
func TestMessageTextKeptApart(t *testing.T) {
	e := newEnv(t)
	raw := []byte("From: c@customer.example\r\nTo: support@example.com\r\nSubject: both\r\nMessage-ID: <b1@customer.example>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nPlain pomegranate.\r\n" +
		"--x\r\nContent-Type: text/html\r\n\r\n<p>HTML pomegranate</p>\r\n--x--\r\n")
	p := Parse(raw)
	id := e.ingest(t, raw, true).Ticket
	err := e.db.View(func(tx *store.Tx) error {
		v, err := tx.GetScoped(id, bMessages, mkey(id, 1))
		if err != nil {
			return err
		}
		// Only the stub: neither the text nor the headers (subject, sender, digest).
		for _, s := range []string{"pomegranate", "both", "c@customer.example", p.MessageID, "digest", "auth"} {
			if bytes.Contains(v, []byte(s)) {
				t.Errorf("the record in messages holds %q: %s", s, v)
			}
		}
		if !bytes.Contains(v, []byte(`"head_apart":true`)) || len(v) > 120 {
			t.Errorf("the record in messages is not the stub: %s", v)
		}
		if b, err := tx.GetScoped(id, bBody, mkey(id, 1)); err != nil || !bytes.Contains(b, []byte("HTML pomegranate")) || !bytes.Contains(b, []byte(`"subject":"both"`)) {
			t.Errorf("text record: %q %v", b, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, msgs, err := e.svc.Get(agentA, id)
	if err != nil || len(msgs) != 1 || msgs[0].Text != p.Text || msgs[0].HTML != p.HTML || p.Text == "" || p.HTML == "" {
		t.Fatalf("read back: %+v %v (parsed text %q html %q)", msgs, err, p.Text, p.HTML)
	}
	// The raw message is in the same record, not in a reference of its own.
	e.db.View(func(tx *store.Tx) error {
		if v, _ := tx.GetPlain(bRaw, mkey(id, 1)); v != nil {
			t.Error("inbound mail has a raw record of its own")
		}
		return nil
	})
	if _, got, err := e.svc.Raw(agentA, id, 1, "message.raw"); err != nil || !bytes.Contains(got, raw) {
		t.Fatalf("the raw message: %q %v", got, err)
	}
	// A path that changes a stored message (delivery state, bounce) saves it whole: the text
	// moves inline and the record apart goes.
	err = e.db.Update(func(tx *store.Tx) error {
		m, err := loadMessage(tx, id, 1)
		if err != nil {
			return err
		}
		m.Delivery = "sent"
		return saveMessage(tx, m)
	})
	if err != nil {
		t.Fatal(err)
	}
	e.db.View(func(tx *store.Tx) error {
		if v, _ := tx.GetPlain(bBody, mkey(id, 1)); v != nil {
			t.Error("the text record outlived a whole save")
		}
		return nil
	})
	if _, msgs, err = e.svc.Get(agentA, id); err != nil || msgs[0].Text != p.Text || msgs[0].HTML != p.HTML || msgs[0].Delivery != "sent" {
		t.Fatalf("after a whole save: %+v %v", msgs, err)
	}
	if _, got, err := e.svc.Raw(agentA, id, 1, "message.raw"); err != nil || !bytes.Contains(got, raw) {
		t.Fatalf("the raw message after a whole save: %q %v", got, err)
	}
	// A purge removes the text record with the rest.
	id2 := e.ingest(t, msgText("d@customer.example", "gone", "g1@customer.example"), true).Ticket
	if err := e.svc.Purge(access.Actor{Name: "root", Role: access.RoleAdmin}, id2); err != nil {
		t.Fatal(err)
	}
	e.db.View(func(tx *store.Tx) error {
		if v, _ := tx.GetPlain(bBody, mkey(id2, 1)); v != nil {
			t.Error("a purge left the text record")
		}
		return nil
	})
}

// Records written before texts were kept apart (the text inside the JSON) read as before.
func TestOldMessageRecordsRead(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(t, msgText("c@customer.example", "old style", "o1@customer.example"), true).Ticket
	var want *Message
	err := e.db.Update(func(tx *store.Tx) error {
		m, err := loadMessage(tx, id, 1)
		if err != nil {
			return err
		}
		want = m
		// What the previous version wrote: the Message as JSON, text inline, nothing apart.
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		if err := tx.PutScoped(id, bMessages, mkey(id, 1), b); err != nil {
			return err
		}
		return tx.Delete(bBody, mkey(id, 1))
	})
	if err != nil {
		t.Fatal(err)
	}
	_, msgs, err := e.svc.Get(agentA, id)
	if err != nil || len(msgs) != 1 || !strings.Contains(msgs[0].Text, "my order is late") || msgs[0].Text != want.Text || msgs[0].Digest != want.Digest {
		t.Fatalf("old record: %+v %v", msgs, err)
	}
	// The same message again is still a retransmission (its digest is read from the old record).
	if r := e.ingest(t, msgText("c@customer.example", "old style", "o1@customer.example"), true); r.Outcome != OutcomeDuplicate {
		t.Fatalf("retransmission after the old record: %+v", r)
	}
}

// Records schema 3 wrote (headers inline with body_apart, the text alone in a bodyV1 record)
// read as before, and a retransmission of such a message is still known by its digest.
func TestSchema3MessageRecordsRead(t *testing.T) {
	e := newEnv(t)
	raw := msgText("c@customer.example", "three", "s3@customer.example")
	id := e.ingest(t, raw, true).Ticket
	var want *Message
	err := e.db.Update(func(tx *store.Tx) error {
		m, err := loadMessage(tx, id, 1)
		if err != nil {
			return err
		}
		want = m
		r := messageRecord{Message: *m, BodyApart: true}
		r.Text, r.HTML = "", ""
		b, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		if err := tx.PutScoped(id, bMessages, mkey(id, 1), b); err != nil {
			return err
		}
		v1 := binary.AppendUvarint([]byte{bodyV1}, uint64(len(m.Text)))
		return tx.PutScoped(id, bBody, mkey(id, 1), append(append(v1, m.Text...), m.HTML...))
	})
	if err != nil {
		t.Fatal(err)
	}
	_, msgs, err := e.svc.Get(agentA, id)
	if err != nil || len(msgs) != 1 || !reflect.DeepEqual(&msgs[0], want) {
		t.Fatalf("schema-3 record: %+v %v, want %+v", msgs, err, want)
	}
	if r := e.ingest(t, raw, true); r.Outcome != OutcomeDuplicate || r.Ticket != id {
		t.Fatalf("retransmission after the schema-3 record: %+v", r)
	}
}

// A message whose headers the transaction changed after they were written ahead keeps the
// changed headers, inline, and its text from the record written ahead.
func TestChangedHeadStoredInline(t *testing.T) {
	e := newEnv(t)
	id := e.ingest(t, msgText("c@customer.example", "first", "h1@customer.example"), true).Ticket
	m := &Message{Direction: In, From: "c@customer.example", Subject: "as written ahead", Text: "ahead text", MessageID: "h2@customer.example"}
	body, enc, err := encodeBody(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	body.prep = e.db.Prepare(enc)
	err = e.db.Update(func(tx *store.Tx) error {
		t2, err := loadTicket(tx, id)
		if err != nil {
			return err
		}
		mm := *m
		mm.Subject = "changed in the transaction"
		mm.Ticket, mm.Seq = id, t2.Messages+1
		t2.Messages++
		if err := saveMessageApart(tx, &mm, &body); err != nil {
			return err
		}
		return saveTicket(tx, t2)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = e.db.View(func(tx *store.Tx) error {
		v, err := tx.GetScoped(id, bMessages, mkey(id, 2))
		if err != nil || !bytes.Contains(v, []byte(`"body_apart":true`)) || bytes.Contains(v, []byte("head_apart")) {
			t.Errorf("record: %s %v", v, err)
		}
		got, err := loadMessage(tx, id, 2)
		if err != nil || got.Subject != "changed in the transaction" || got.Text != "ahead text" || got.Seq != 2 {
			t.Errorf("read back: %+v %v", got, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A damaged or truncated text record is an error, never a message with made-up fields.
func TestDecodeBodyRejectsDamage(t *testing.T) {
	for _, raw := range [][]byte{nil, []byte("From: a@b.example\r\n\r\nraw body")} {
		_, enc, err := encodeBody(&Message{Subject: "s", Text: "some text", HTML: "<p>x</p>"}, raw)
		if err != nil {
			t.Fatal(err)
		}
		b, err := decodeBody(enc)
		if err != nil || !bytes.Contains(b.head, []byte(`"subject":"s"`)) || b.text != "some text" || b.html != "<p>x</p>" || !bytes.Equal(b.raw, raw) || (raw == nil) != (b.raw == nil) {
			t.Fatalf("whole record: %+v %v", b, err)
		}
		// Every cut up to the raw bytes (whose end has no mark) is seen.
		for n := range len(enc) - len(raw) {
			if _, err := decodeBody(enc[:n]); err == nil {
				t.Errorf("a record cut to %d of %d bytes decoded", n, len(enc))
			}
		}
		if _, err := decodeBody(append([]byte{9}, enc[1:]...)); err == nil {
			t.Error("an unknown record kind decoded")
		}
	}
}

// Mail from many connections while agents search: whichever pass indexes a message (the
// background one, or a search's), by handed tokens or by reading back, each is found once
// and no tokens stay behind.
func TestConcurrentIngestAndSearchIndexEverything(t *testing.T) {
	e := newEnv(t)
	const writers, each = 8, 25
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := e.svc.searchIDs([]string{"support"}, "persimmon"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	want := make([][]uint64, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				raw := fmt.Sprintf("From: c%d@customer.example\r\nTo: support@example.com\r\nSubject: persimmon %d\r\nMessage-ID: <p%d.%d@customer.example>\r\n\r\nword%dx%d\r\n", w, i, w, i, w, i)
				r, err := e.svc.Ingest(Incoming{Queue: "support", Raw: []byte(raw), Auth: Auth{Verified: true}})
				if err != nil {
					t.Error(err)
					return
				}
				want[w] = append(want[w], r.Ticket)
			}
		}()
	}
	wg.Wait()
	close(done)
	if err := e.svc.indexPending(); err != nil {
		t.Fatal(err)
	}
	for w := range writers {
		for i, id := range want[w] {
			got, err := e.svc.searchIDs([]string{"support"}, fmt.Sprintf("word%dx%d", w, i))
			if err != nil || len(got) != 1 || !slices.Equal(got[0], []uint64{id}) {
				t.Errorf("word%dx%d: %v %v, want [%d]", w, i, got, err, id)
			}
		}
	}
	all, _ := e.svc.searchIDs([]string{"support"}, "persimmon")
	if n := len(slices.Concat(all...)); n != writers*each {
		t.Errorf("persimmon: %d tickets, want %d", n, writers*each)
	}
	pc := postingCacheOf(e.db)
	if err := e.svc.indexPending(); err != nil { // a pass with nothing to do prunes what is left
		t.Fatal(err)
	}
	if n := pc.handed.len(); n != 0 {
		t.Errorf("%d messages' tokens left behind", n)
	}
	t.Logf("%d of %d messages indexed from handed tokens", pc.handed.taken, writers*each)
}
