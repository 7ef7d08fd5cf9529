package tickets

import (
	"errors"
	"testing"

	"mailgate/access"
	"mailgate/audit"
)

// Issue 11.8: every refused action on a ticket writes a denied audit event, naming the actor,
// the action and the ticket.
func TestEveryRefusalIsAudited(t *testing.T) {
	e := newEnv(t)
	support := e.ingest(t, msgText("carol@customer.example", "Order", "c1@customer.example"), true).Ticket
	r, err := e.svc.Ingest(Incoming{Queue: "sales", Raw: msgText("dan@customer.example", "Quote", "d1@customer.example"),
		Auth: Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}, Via: "smtp", Remote: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	sales := r.Ticket
	admin := access.Actor{Name: "root", Role: access.RoleAdmin, Remote: "127.0.0.1:9"}

	for _, tc := range []struct {
		name   string
		actor  access.Actor
		action string
		ticket uint64
		call   func() error
	}{
		{"link to another queue's ticket", agentA, "ticket.link", support, func() error { return e.svc.Link(agentA, support, sales) }},
		{"link to a missing ticket", agentA, "ticket.link", support, func() error { return e.svc.Link(agentA, support, 999) }},
		{"link from another queue's ticket", agentA, "ticket.link", sales, func() error { return e.svc.Link(agentA, sales, support) }},
		{"assign in another queue", agentB, "ticket.assign", support, func() error { return e.svc.Assign(agentB, support, "bob") }},
		{"status in another queue", agentB, "ticket.status", support, func() error { return e.svc.SetStatus(agentB, support, StatusSolved) }},
		{"note in another queue", agentB, "ticket.note", support, func() error { _, err := e.svc.AddNote(agentB, support, "x"); return err }},
		{"reply in another queue", agentB, "ticket.reply", support, func() error { _, err := e.svc.Reply(agentB, support, "x"); return err }},
		{"view in another queue", agentB, "ticket.view", support, func() error { _, _, err := e.svc.Get(agentB, support); return err }},
		{"attachment in another queue", agentB, "attachment.download", support, func() error { _, _, err := e.svc.Attachment(agentB, support, 1, 0); return err }},
		{"missing attachment", agentA, "attachment.download", support, func() error { _, _, err := e.svc.Attachment(agentA, support, 1, 7); return err }},
		{"raw message in another queue", agentB, "imap.fetch", support, func() error { _, _, err := e.svc.Raw(agentB, support, 1, "imap.fetch"); return err }},
		{"auditor's status change", auditor, "ticket.status", support, func() error { return e.svc.SetStatus(auditor, support, StatusOpen) }},
		{"auditor's reply", auditor, "ticket.reply", support, func() error { _, err := e.svc.Reply(auditor, support, "x"); return err }},
		{"agent's purge", agentA, "ticket.purge", support, func() error { return e.svc.Purge(agentA, support) }},
	} {
		before := e.denied(t)
		if err := tc.call(); err == nil {
			t.Fatalf("%s: allowed", tc.name)
		} else if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrForbidden) && !errors.Is(err, ErrInvalid) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		after := e.denied(t)
		if len(after) != len(before)+1 {
			t.Fatalf("%s: %d new denied events, want 1", tc.name, len(after)-len(before))
		}
		ev := after[0] // newest first
		if ev.Actor != tc.actor.Name || ev.Action != tc.action || ev.Object != object(tc.ticket) || ev.Remote != tc.actor.Remote {
			t.Errorf("%s: denied event %+v", tc.name, ev)
		}
	}
	// Nothing changed: no link was made.
	if tk, _, _ := e.svc.Get(admin, support); len(tk.Links) != 0 || tk.Assignee != "" || tk.Status == StatusSolved {
		t.Errorf("a refused action changed ticket %d: %+v", support, tk)
	}
	if _, err := e.log.Verify(); err != nil {
		t.Fatal(err)
	}
}

func (e *env) denied(t *testing.T) []audit.Event {
	t.Helper()
	evs, err := e.log.Query(audit.Filter{Result: audit.Denied, Limit: 1000}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}
