package agentmail

import (
	"crypto/tls"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/tickets"
)

func imapCode(err error) imap.ResponseCode {
	var ie *imap.Error
	if errors.As(err, &ie) {
		return ie.Code
	}
	return ""
}

func TestIMAPLogin(t *testing.T) {
	e := newEnv(t, withAccountLimit(3))
	web := e.webPassword("alice")

	t.Run("app password with LOGIN", func(t *testing.T) {
		c := e.dialIMAP(nil)
		if err := c.Login("alice", e.users["alice"]).Wait(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("app password with AUTHENTICATE PLAIN, user name as email", func(t *testing.T) {
		c := e.dialIMAP(nil)
		if err := c.Authenticate(sasl.NewPlainClient("", "carol@example.com", e.users["carol"])); err != nil {
			t.Fatal(err)
		}
		// go-imap's client may update State() a moment after Authenticate returns; a command
		// only an authenticated session may run proves the login without that race.
		if boxes, err := c.List("", "*", nil).Collect(); err != nil || len(boxes) == 0 {
			t.Fatalf("LIST after AUTHENTICATE: %v %v", boxes, err)
		}
	})
	t.Run("web password refused", func(t *testing.T) {
		c := e.dialIMAP(nil)
		err := c.Login("alice", web).Wait()
		if imapCode(err) != imap.ResponseCodeAuthenticationFailed {
			t.Fatalf("web password: %v, want AUTHENTICATIONFAILED", err)
		}
	})
	t.Run("wrong passwords are throttled", func(t *testing.T) {
		c := e.dialIMAP(nil)
		// One failure so far (the web password); the limit allows 3, the 4th locks.
		for i := 0; i < 3; i++ {
			if err := c.Login("alice", "wrong-"+string(rune('a'+i))).Wait(); imapCode(err) != imap.ResponseCodeAuthenticationFailed {
				t.Fatalf("attempt %d: %v", i, err)
			}
		}
		err := c.Login("alice", e.users["alice"]).Wait()
		if imapCode(err) != imap.ResponseCodeUnavailable || !strings.Contains(err.Error(), "too many failed logins") {
			t.Fatalf("right password while locked: %v, want UNAVAILABLE too many failed logins", err)
		}
	})
	var failed, denied int
	for _, ev := range e.events("login.app") {
		switch ev.Result {
		case audit.Failed:
			failed++
		case audit.Denied:
			denied++
		}
	}
	if failed != 4 || denied < 1 {
		t.Fatalf("login.app events: %d failed, %d denied; want 4 failed and a denied", failed, denied)
	}
}

func TestIMAPListShowsOwnQueuesOnly(t *testing.T) {
	e := newEnv(t)
	e.addAgent("root", access.RoleAdmin)
	e.ingest("billing", customer, "Invoice", "inv1@example.net", "Where is my invoice?\r\n")
	for name, want := range map[string][]string{
		"alice": {"INBOX", "support"},
		"bob":   {"INBOX", "billing"},
		"root":  {"INBOX", "support", "billing"},
	} {
		c := e.imapClient(name, nil)
		boxes, err := c.List("", "*", nil).Collect()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, b := range boxes {
			got = append(got, b.Mailbox)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: LIST = %v, want %v", name, got, want)
		}
	}
	c := e.imapClient("alice", nil)
	_, err := c.Select("billing", nil).Wait()
	if imapCode(err) != imap.ResponseCodeNonExistent {
		t.Fatalf("alice SELECT billing: %v, want NONEXISTENT", err)
	}
	if _, err := c.Status("billing", &imap.StatusOptions{NumMessages: true}).Wait(); err == nil {
		t.Fatal("alice STATUS billing succeeded")
	}
	var denied bool
	for _, ev := range e.events("imap.select") {
		denied = denied || (ev.Actor == "alice" && ev.Result == audit.Denied && ev.Object == "mailbox/billing")
	}
	if !denied {
		t.Fatal("no denied imap.select event for alice and billing")
	}
}

func TestIMAPFetchAudited(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n",
		"X-Mailgate-Verified: yes", "X-Mailgate-Ticket: 999")
	c := e.imapClient("alice", nil)
	sel, err := c.Select("support", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 || sel.UIDValidity == 0 {
		t.Fatalf("select: %+v", sel)
	}
	before := len(e.events("imap.fetch"))
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true, Flags: true, Envelope: true,
		BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	body := msgs[0].FindBodySection(&imap.FetchItemBodySection{})
	for _, want := range []string{"Hello, my order is late.", "X-Mailgate-Ticket: 1\r\n", "X-Mailgate-Verified: yes\r\n",
		"X-Mailgate-Auth: spf=pass dkim=pass dmarc=pass", "Message-ID: <o1@example.net>"} {
		if !contains(body, want) {
			t.Errorf("served message lacks %q:\n%s", want, body)
		}
	}
	if strings.Count(string(body), "X-Mailgate-Ticket:") != 1 || contains(body, "999") {
		t.Errorf("the sender's own X-Mailgate headers were served:\n%s", body)
	}
	if msgs[0].Envelope == nil || msgs[0].Envelope.Subject != "Order late" {
		t.Errorf("envelope %+v", msgs[0].Envelope)
	}
	if !slices.Contains(msgs[0].Flags, imap.FlagSeen) {
		t.Errorf("BODY[] did not set \\Seen: %v", msgs[0].Flags)
	}
	evs := e.events("imap.fetch")
	if len(evs) != before+1 {
		t.Fatalf("%d imap.fetch events, want %d", len(evs), before+1)
	}
	ev := evs[len(evs)-1]
	if ev.Actor != "alice" || ev.Object != "ticket/"+strconv.FormatUint(id, 10) || ev.Result != audit.OK || !strings.HasPrefix(ev.Remote, "127.0.0.1:") {
		t.Fatalf("fetch event %+v", ev)
	}
	sels := e.events("imap.select")
	if last := sels[len(sels)-1]; last.Actor != "alice" || last.Object != "queue/support" || last.Result != audit.OK {
		t.Fatalf("select event %+v", last)
	}
	// Header-only fetches are audited under their own action; UID and FLAGS read nothing.
	if _, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true, Flags: true}).Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true, RFC822Size: true,
		BodySection: []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierHeader, Peek: true}}}).Collect(); err != nil {
		t.Fatal(err)
	}
	if n := len(e.events("imap.fetch")); n != before+1 {
		t.Errorf("header fetch wrote imap.fetch events: %d", n)
	}
	if n := len(e.events("imap.fetch.header")); n != 1 {
		t.Errorf("%d imap.fetch.header events, want 1", n)
	}
}

func TestIMAPUIDsSurviveRestart(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 3; i++ {
		e.ingest("support", customer, "Question "+strconv.Itoa(i), "q"+strconv.Itoa(i)+"@example.net", "Hi\r\n")
	}
	read := func() (uint32, []imap.UID) {
		c := e.imapClient("alice", nil)
		sel, err := c.Select("support", nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{UID: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		var uids []imap.UID
		for _, m := range msgs {
			uids = append(uids, m.UID)
		}
		c.Close()
		return sel.UIDValidity, uids
	}
	v1, u1 := read()
	e.restart()
	v2, u2 := read()
	if v1 == 0 || v1 != v2 || !slices.Equal(u1, u2) || len(u1) != 3 {
		t.Fatalf("before restart %d %v, after %d %v", v1, u1, v2, u2)
	}
	// New mail after the restart continues the UIDs.
	e.ingest("support", customer, "Later", "later@example.net", "Hi\r\n")
	c := e.imapClient("alice", nil)
	st, err := c.Status("support", &imap.StatusOptions{UIDNext: true, UIDValidity: true, NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.UIDValidity != v1 || st.UIDNext != u1[2]+2 || *st.NumMessages != 4 {
		t.Fatalf("status after restart: validity %d next %d messages %d", st.UIDValidity, st.UIDNext, *st.NumMessages)
	}
}

func TestIMAPExamineIsReadOnly(t *testing.T) {
	e := newEnv(t)
	e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	c := e.imapClient("alice", nil)
	if _, err := c.Select("support", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close()
	if imapCode(err) != imap.ResponseCodeCannot || !strings.Contains(err.Error(), "EXAMINE") {
		t.Fatalf("STORE under EXAMINE: %v", err)
	}
	// Reading the body under EXAMINE must not set \Seen.
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Flags: true, BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(msgs[0].Flags, imap.FlagSeen) {
		t.Fatal("FETCH BODY[] under EXAMINE reported \\Seen")
	}
	if err := c.Expunge().Close(); imapCode(err) != imap.ResponseCodeCannot {
		t.Fatalf("EXPUNGE under EXAMINE: %v", err)
	}
	if err := c.Unselect().Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = e.imapClient("alice", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err = c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Flags: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs[0].Flags) != 0 {
		t.Fatalf("flags after EXAMINE session: %v", msgs[0].Flags)
	}
	var examined bool
	for _, ev := range e.events("imap.select") {
		examined = examined || strings.Contains(ev.Detail, "mode=examine")
	}
	if !examined {
		t.Fatal("EXAMINE left no imap.select event")
	}
}

func TestIMAPRefusesWrites(t *testing.T) {
	e := newEnv(t)
	e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	c := e.imapClient("alice", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msg := "From: alice@example.com\r\nSubject: x\r\n\r\nhi\r\n"
	app := c.Append("support", int64(len(msg)), nil)
	app.Write([]byte(msg))
	app.Close()
	if _, err := app.Wait(); imapCode(err) != imap.ResponseCodeCannot || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("APPEND: %v", err)
	}
	if _, err := c.Copy(imap.SeqSetNum(1), "INBOX").Wait(); imapCode(err) != imap.ResponseCodeCannot {
		t.Errorf("COPY: %v", err)
	}
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); imapCode(err) != imap.ResponseCodeCannot {
		t.Errorf("STORE \\Deleted: %v", err)
	}
	if err := c.Expunge().Close(); imapCode(err) != imap.ResponseCodeCannot {
		t.Errorf("EXPUNGE: %v", err)
	}
	if err := c.UIDExpunge(imap.UIDSetNum(1)).Close(); imapCode(err) != imap.ResponseCodeCannot {
		t.Errorf("UID EXPUNGE: %v", err)
	}
	for name, err := range map[string]error{
		"CREATE": c.Create("Sent", nil).Wait(),
		"DELETE": c.Delete("support").Wait(),
		"RENAME": c.Rename("support", "old", nil).Wait(),
	} {
		if imapCode(err) != imap.ResponseCodeCannot {
			t.Errorf("%s: %v", name, err)
		}
	}
	// CLOSE still works (go-imap calls Expunge for it) and the message is still there.
	if err := c.UnselectAndExpunge().Wait(); err != nil {
		t.Fatalf("CLOSE: %v", err)
	}
	sel, err := c.Select("support", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 {
		t.Fatalf("%d messages after the refused writes", sel.NumMessages)
	}
}

func TestIMAPSeenIsPerAgent(t *testing.T) {
	e := newEnv(t)
	e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	e.ingest("support", customer2, "Refund", "r1@example.org", "Money back\r\n")

	// The handler must read the data before it returns.
	updates := make(chan *imapclient.FetchMessageBuffer, 10)
	other := e.imapClient("alice", &imapclient.UnilateralDataHandler{Fetch: func(m *imapclient.FetchMessageData) {
		if buf, err := m.Collect(); err == nil {
			updates <- buf
		}
	}})
	if _, err := other.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	a := e.imapClient("alice", nil)
	if _, err := a.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Fetch(imap.SeqSetNum(2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect(); err != nil {
		t.Fatal(err)
	}
	if err := a.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsDel, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	flags := func(c *imapclient.Client) map[uint32][]imap.Flag {
		t.Helper()
		msgs, err := c.Fetch(imap.SeqSetNum(1, 2), &imap.FetchOptions{Flags: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		out := map[uint32][]imap.Flag{}
		for _, m := range msgs {
			out[m.SeqNum] = m.Flags
		}
		return out
	}
	if f := flags(a); len(f[1]) != 0 || !slices.Equal(f[2], []imap.Flag{imap.FlagSeen}) {
		t.Fatalf("alice's flags %v", f)
	}
	// The agent's other session hears of the change at its next command.
	if err := other.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	// go-imap's client runs the handler on a goroutine of its own: wait for it (a hang guard).
	timeout := time.After(20 * time.Second)
	for seen2 := false; !seen2; {
		select {
		case buf := <-updates:
			seen2 = buf.SeqNum == 2 && slices.Contains(buf.Flags, imap.FlagSeen)
		case <-timeout:
			t.Fatal("alice's other session got no FLAGS (\\Seen) update for message 2")
		}
	}

	c := e.imapClient("carol", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if f := flags(c); len(f[1]) != 0 || len(f[2]) != 0 {
		t.Fatalf("carol sees alice's flags: %v", f)
	}
	st, err := c.Status("support", &imap.StatusOptions{NumUnseen: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumUnseen != 2 {
		t.Fatalf("carol's unseen %d", *st.NumUnseen)
	}

	e.restart()
	a = e.imapClient("alice", nil)
	if _, err := a.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if f := flags(a); len(f[1]) != 0 || !slices.Equal(f[2], []imap.Flag{imap.FlagSeen}) {
		t.Fatalf("alice's flags after restart %v", f)
	}
}

func TestIMAPIdleReportsNewMail(t *testing.T) {
	e := newEnv(t)
	e.ingest("support", customer, "First", "f1@example.net", "Hello\r\n")
	exists := make(chan uint32, 10)
	c := e.imapClient("alice", &imapclient.UnilateralDataHandler{Mailbox: func(d *imapclient.UnilateralDataMailbox) {
		if d.NumMessages != nil {
			exists <- *d.NumMessages
		}
	}})
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	e.ingest("support", customer, "Second", "s1@example.net", "Hello again\r\n")
	e.ingest("billing", customer, "Not for alice", "b1@example.net", "Invoice\r\n")
	select {
	case n := <-exists:
		if n != 2 {
			t.Fatalf("EXISTS %d, want 2", n)
		}
	case <-time.After(20 * time.Second): // a hang guard, not a speed check: Notify wakes IDLE at once
		t.Fatal("no EXISTS during IDLE")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(2), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].Envelope.Subject != "Second" {
		t.Fatalf("message 2: %+v", msgs)
	}
}

func TestIMAPServesNotesRepliesAndEncrypted(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	alice := access.Actor{Name: "alice", Role: access.RoleAgent, Queues: []string{"support"}, Remote: "test"}
	if _, err := e.tk.AddNote(alice, id, "Customer is a VIP; be quick."); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tk.Reply(alice, id, "We are on it.\nRegards"); err != nil {
		t.Fatal(err)
	}
	c := e.imapClient("carol", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(2, 3), &imap.FetchOptions{Envelope: true, BodyStructure: &imap.FetchItemBodyStructure{Extended: true},
		BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	note := msgs[0].FindBodySection(&imap.FetchItemBodySection{Peek: true})
	for _, want := range []string{"X-Mailgate-Direction: note", "X-Mailgate-Author: alice", "Subject: [note] Order late",
		"alice (internal note)", "<support@example.com>", "Customer is a VIP; be quick.", "Message-ID: <mailgate-view."} {
		if !contains(note, want) {
			t.Errorf("note lacks %q:\n%s", want, note)
		}
	}
	reply := msgs[1].FindBodySection(&imap.FetchItemBodySection{Peek: true})
	for _, want := range []string{"X-Mailgate-Direction: out", "X-Mailgate-Author: alice", "We are on it.", "DKIM-Signature:", "To: " + customer} {
		if !contains(reply, want) {
			t.Errorf("reply lacks %q:\n%s", want, reply)
		}
	}
	if msgs[1].Envelope.InReplyTo == nil || msgs[1].Envelope.InReplyTo[0] != "o1@example.net" {
		t.Errorf("reply envelope %+v", msgs[1].Envelope)
	}

	// Encrypted inbound mail is served as its decrypted text, marked.
	m := &tickets.Message{Ticket: 7, Seq: 1, Direction: tickets.In, From: customer, To: "support@example.com", Subject: "Secret",
		MessageID: "enc@example.net", Text: "the decrypted words", Encrypted: true, Verified: true, Date: time.Now()}
	sv := e.imap.render.render("support", 7, 1, m, []byte("Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n--b\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n--b--\r\n"))
	for _, want := range []string{"X-Mailgate-Encrypted: yes", "the decrypted words", "Subject: Secret", "Message-ID: <enc@example.net>"} {
		if !contains(sv.body, want) {
			t.Errorf("encrypted message lacks %q:\n%s", want, sv.body)
		}
	}
	if contains(sv.body, "BEGIN PGP MESSAGE") {
		t.Errorf("ciphertext served:\n%s", sv.body)
	}
}

func TestIMAPSearch(t *testing.T) {
	e := newEnv(t)
	e.ingest("support", customer, "Order late", "o1@example.net", "My parcel never came.\r\n")
	e.ingest("support", customer2, "Refund please", "r1@example.org", "I want my money back.\r\n")
	c := e.imapClient("alice", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	search := func(uid bool, crit *imap.SearchCriteria) []uint32 {
		t.Helper()
		var d *imap.SearchData
		var err error
		if uid {
			d, err = c.UIDSearch(crit, nil).Wait()
		} else {
			d, err = c.Search(crit, nil).Wait()
		}
		if err != nil {
			t.Fatal(err)
		}
		if uid {
			var out []uint32
			for _, u := range d.AllUIDs() {
				out = append(out, uint32(u))
			}
			return out
		}
		return d.AllSeqNums()
	}
	before := len(e.events("imap.search"))
	if got := search(false, &imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}); !slices.Equal(got, []uint32{2}) {
		t.Errorf("UNSEEN = %v", got)
	}
	if n := len(e.events("imap.search")); n != before {
		t.Errorf("a flag search read messages (%d events)", n-before)
	}
	if got := search(false, &imap.SearchCriteria{Body: []string{"MONEY"}}); !slices.Equal(got, []uint32{2}) {
		t.Errorf("BODY money = %v", got)
	}
	if got := search(true, &imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "order"}}}); !slices.Equal(got, []uint32{1}) {
		t.Errorf("UID SEARCH HEADER Subject order = %v", got)
	}
	if got := search(false, &imap.SearchCriteria{Text: []string{"x-mailgate-verified"}}); len(got) != 0 {
		// TEXT matches header values, not names.
		t.Errorf("TEXT on a header name = %v", got)
	}
	if got := search(false, &imap.SearchCriteria{Not: []imap.SearchCriteria{{Text: []string{"parcel"}}}}); !slices.Equal(got, []uint32{2}) {
		t.Errorf("NOT TEXT parcel = %v", got)
	}
	if n := len(e.events("imap.search")); n <= before {
		t.Error("content searches wrote no imap.search events")
	}
}

func TestIMAPTLS(t *testing.T) {
	e := newEnv(t)
	l, addr := listenPublic(t)
	go e.imap.Serve(l)

	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WaitGreeting(); err != nil {
		t.Fatal(err)
	}
	if !c.Caps().Has(imap.CapLoginDisabled) || !c.Caps().Has(imap.CapStartTLS) {
		t.Fatalf("caps before STARTTLS on a public listener: %v", c.Caps())
	}
	if err := c.Login("alice", e.users["alice"]).Wait(); imapCode(err) != imap.ResponseCodePrivacyRequired {
		t.Fatalf("LOGIN before STARTTLS: %v", err)
	}
	c.Close()

	tc, err := imapclient.DialStartTLS(addr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: e.pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if err := tc.Login("alice", e.users["alice"]).Wait(); err != nil {
		t.Fatalf("LOGIN after STARTTLS: %v", err)
	}
	caps, err := tc.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range []imap.Cap{imap.CapIMAP4rev2, imap.CapNamespace, imap.CapMove, imap.CapUIDPlus, imap.CapUnauthenticate} {
		if caps.Has(cp) {
			t.Errorf("advertises %s, which the session does not implement", cp)
		}
	}
	if !caps.Has(imap.CapIdle) {
		t.Error("IDLE not advertised")
	}

	// Implicit TLS (port 993 in production; ServeTLS here).
	l2, addr2 := listenPublic(t)
	go e.imap.ServeTLS(l2)
	ic, err := imapclient.DialTLS(addr2, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: e.pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login("bob", e.users["bob"]).Wait(); err != nil {
		t.Fatalf("LOGIN over implicit TLS: %v", err)
	}

	// Without a certificate, a public listener is refused outright.
	noTLS := NewIMAP(IMAPOptions{Tickets: e.tk, Access: e.acc, Audit: e.log, Logger: quiet})
	defer noTLS.Close()
	l3, _ := listenPublic(t)
	if err := noTLS.Serve(l3); err == nil || !strings.Contains(err.Error(), "tls_cert") {
		t.Fatalf("Serve of a public listener without TLS: %v", err)
	}
}

func TestIMAPDisabledAgentLosesAccess(t *testing.T) {
	e := newEnv(t)
	e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	c := e.imapClient("alice", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := e.acc.SetQueues(access.Ctl, "alice", []string{"billing"}); err != nil {
		t.Fatal(err)
	}
	before := len(e.events("imap.fetch"))
	if _, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect(); err == nil {
		t.Fatal("FETCH after losing the queue succeeded")
	}
	if len(e.events("imap.fetch")) != before {
		t.Fatal("a message was read after the agent left the queue")
	}
}

func TestIMAPSearchNumbersDatesSizes(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 3; i++ {
		e.ingest("support", customer, "Q"+strconv.Itoa(i), "q"+strconv.Itoa(i)+"@example.net", strings.Repeat("x", 100+1000*i*i)+"\r\n")
	}
	c := e.imapClient("alice", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	var tail imap.SeqSet
	tail.AddRange(2, 0)
	var uids imap.UIDSet
	uids.AddRange(3, 0)
	// The customer's Date is 2 Feb 2026; tickets keeps no separate arrival time yet
	// (Message.Received), so INTERNALDATE is the Date too, and either is after 1 Feb.
	feb1 := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	for name, tc := range map[string]struct {
		crit *imap.SearchCriteria
		want []uint32
	}{
		"2:*":              {&imap.SearchCriteria{SeqNum: []imap.SeqSet{tail}}, []uint32{2, 3}},
		"UID 3:*":          {&imap.SearchCriteria{UID: []imap.UIDSet{uids}}, []uint32{3}},
		"SINCE 1 Feb":      {&imap.SearchCriteria{Since: feb1}, []uint32{1, 2, 3}},
		"BEFORE 1 Feb":     {&imap.SearchCriteria{Before: feb1}, nil},
		"SENTBEFORE 1 Feb": {&imap.SearchCriteria{SentBefore: feb1}, nil},
		"SENTSINCE 1 Feb":  {&imap.SearchCriteria{SentSince: feb1}, []uint32{1, 2, 3}},
		"LARGER":           {&imap.SearchCriteria{Larger: 3000}, []uint32{3}},
		"OR":               {&imap.SearchCriteria{Or: [][2]imap.SearchCriteria{{{SeqNum: []imap.SeqSet{imap.SeqSetNum(1)}}, {Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "q2"}}}}}}, []uint32{1, 3}},
	} {
		d, err := c.Search(tc.crit, nil).Wait()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := d.AllSeqNums(); !slices.Equal(got, tc.want) {
			t.Errorf("%s = %v, want %v", name, got, tc.want)
		}
	}
}

func TestIMAPDisabledAccountIsCutOff(t *testing.T) {
	e := newEnv(t)
	e.ingest("support", customer, "Order late", "o1@example.net", "Hello\r\n")
	c := e.imapClient("alice", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := e.acc.Disable(access.Ctl, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect(); err == nil {
		t.Fatal("FETCH by a disabled agent succeeded")
	}
	select {
	case <-c.Closed():
	case <-time.After(20 * time.Second): // hang guard
		t.Fatal("the connection of a disabled agent stayed open")
	}
	if err := e.dialIMAP(nil).Login("alice", e.users["alice"]).Wait(); imapCode(err) != imap.ResponseCodeContactAdmin {
		t.Fatalf("login of a disabled agent: %v", err)
	}
}
