package e2e

import (
	"slices"
	"strings"
	"testing"

	"mailgate/store"
	"mailgate/tickets"
)

// TestSearchIndexBuiltOnStart: tickets stored before the search index existed are indexed
// when the real mailgate starts, before it serves (issue 14.2's migration).
func TestSearchIndexBuiltOnStart(t *testing.T) {
	s := newSite(t, "")
	s.cli(t, "agent", "list") // creates the database
	a := s.open(t)
	var ids []uint64
	for i, subj := range []string{"Walrus tusk polish", "Something else", "Another walrus"} {
		raw := "From: c@customer.example\r\nTo: " + queueAddr + "\r\nSubject: " + subj + "\r\nMessage-ID: <w" + string(rune('a'+i)) + "@customer.example>\r\n\r\nHello.\r\n"
		r, err := a.Tickets.Ingest(tickets.Incoming{Queue: "support", Raw: []byte(raw), Via: "smtp", Remote: "192.0.2.1:25",
			Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Ticket)
	}
	// Make it a store from before the index: no tokens, no record of an indexing run.
	err := a.DB.Update(func(tx *store.Tx) error {
		for _, b := range []string{"search", "search_state"} {
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
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()

	d := s.start(t)
	if code := d.stop(); code != 0 {
		t.Fatalf("mailgate exited %d:\n%s", code, d.out)
	}
	if !strings.Contains(d.out.String(), "tickets indexed for search") || !strings.Contains(d.out.String(), "tickets=3") {
		t.Errorf("the start did not index the stored tickets:\n%s", d.out)
	}
	a = s.open(t)
	r, err := a.Tickets.Work(admin, tickets.ListQuery{Search: "walrus"})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, tk := range r.Tickets {
		got = append(got, tk.ID)
	}
	slices.Sort(got)
	if !slices.Equal(got, []uint64{ids[0], ids[2]}) {
		t.Errorf("search after the start found %v, want %v", got, []uint64{ids[0], ids[2]})
	}
}
