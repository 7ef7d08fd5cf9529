package web

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/tickets"
)

// Items 5, 6 (in part) and 7 of issue 14: who else has the ticket open, a reply held back when
// the ticket changed, send-and-set-status, the sent notice, quoted text folded, links that
// leave no referrer, the customer's other tickets, changes in the thread, the audit trail link.
func TestBrowserTicketWork(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	e.addAgent("ada", access.RoleAdmin, "support")
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true,
		body: "See https://shop.example/orders/42?x=1&y=2. please.\nOn Monday you wrote:\n> first quoted line\n> second quoted line\n> third quoted line\nThanks"})
	other := e.ingest(mail{from: "carol@customer.example", subject: "Second question", verified: true})
	sid := strconv.FormatUint(id, 10)
	// carla looks at the ticket first.
	carla := e.loggedIn("carla", access.RoleAgent, "support")
	if w := carla.get("/tickets/" + sid); w.Code != http.StatusOK {
		t.Fatalf("carla's view: %d", w.Code)
	}
	e.clk.Add(2 * time.Minute)

	ctx, base := e.serveBrowser(t, "alice")
	submit(t, ctx, "open ticket", chromedp.Navigate(base+"/tickets/"+sid))
	if got := text(t, ctx, "p.viewers"); !strings.Contains(got, "carla viewed 2 min ago") {
		t.Errorf("viewers: %q", got)
	}
	// Context: the customer's name and other tickets; no audit link for an agent.
	meta := text(t, ctx, "dl.meta")
	mustContain(t, "ticket context", meta, "Customer <carol@customer.example>", "#"+strconv.FormatUint(other, 10)+" Second question")
	mustNotContain(t, "agent's page", meta, "audit trail")
	seenOthers := false
	for _, ev := range e.events(audit.Filter{Actor: "alice", Action: "ticket.list"}) {
		seenOthers = seenOthers || strings.Contains(ev.Detail, "other tickets of the customer of ticket/"+sid)
	}
	if !seenOthers {
		t.Error("showing the customer's other tickets is not audited")
	}
	// The link is clickable and leaves neither opener nor referrer; the quote is folded.
	link := step(t, ctx, "link", chromedp.Evaluate[string](`(function(){var a=document.querySelector('div.text a');return a.getAttribute('href')+' '+a.rel})()`))
	if link != "https://shop.example/orders/42?x=1&y=2 noopener noreferrer nofollow" {
		t.Errorf("link: %q", link)
	}
	if open := step(t, ctx, "quote", chromedp.Evaluate[bool](`document.querySelector('details.quoted').open`)); open {
		t.Error("the quoted text is not folded")
	}
	if vis := step(t, ctx, "quote text", chromedp.Evaluate[string](`document.querySelector('div.text').innerText`)); strings.Contains(vis, "second quoted line") || !strings.Contains(vis, "quoted text (3 lines)") {
		t.Errorf("visible text: %q", vis)
	}

	// While alice writes, the customer writes again: the reply is held back, not sent.
	step(t, ctx, "write", chromedp.SendKeys(chromedp.ID("reply-body"), "It ships today."))
	again := "From: Customer <carol@customer.example>\r\nTo: support@example.com\r\nSubject: Re: [#" + sid + "] Order late\r\nMessage-ID: <again@customer.example>\r\n\r\nActually, cancel it.\r\n"
	if r, err := e.tk.Ingest(tickets.Incoming{Queue: "support", Raw: []byte(again), Via: "smtp",
		Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}}); err != nil || r.Ticket != id {
		t.Fatalf("customer's second mail: %+v %v", r, err)
	}
	resp := submit(t, ctx, "send", chromedp.Click(chromedp.CSS(`#reply-form button[value="reply"]`)))
	if resp.Status != http.StatusConflict {
		t.Fatalf("reply after a new message: %d, want 409", resp.Status)
	}
	mustContain(t, "held reply", text(t, ctx, "div.conflict"), "a new message from carol@customer.example")
	mustContain(t, "new message", text(t, ctx, "article.new-since"), "Actually, cancel it.")
	if got := step(t, ctx, "draft", chromedp.Value(chromedp.ID("reply-body"))); got != "It ships today." {
		t.Errorf("draft kept: %q", got)
	}
	if n := len(e.mailer.texts()); n != 0 {
		t.Fatalf("a held reply was sent: %d", n)
	}
	// Confirm by sending again, and set the status in the same submit.
	step(t, ctx, "then", chromedp.SetValue(chromedp.ID("then"), "solved"))
	resp = submit(t, ctx, "send again", chromedp.Click(chromedp.CSS(`#reply-form button[value="reply"]`)))
	if resp.Status != http.StatusOK || !strings.Contains(resp.URL, "?sent=") {
		t.Fatalf("send again: %d %s", resp.Status, resp.URL)
	}
	if texts := e.mailer.texts(); len(texts) != 1 || texts[0] != "It ships today." {
		t.Fatalf("sent: %q", texts)
	}
	hash := step(t, ctx, "hash", chromedp.Evaluate[string](`location.hash`))
	mustContain(t, "sent notice", text(t, ctx, "p.notice"), "Your reply is queued for delivery.")
	if got := text(t, ctx, "article"+hash); !strings.Contains(got, "It ships today.") {
		t.Errorf("the page did not jump to the new reply (%s): %q", hash, got)
	}
	if got := text(t, ctx, "dd.status-solved"); got != "solved" {
		t.Errorf("status after send-and-solve: %q", got)
	}
	// Changes show in the thread.
	submit(t, ctx, "assign", chromedp.SetValue(chromedp.ID("assignee"), "ada"), chromedp.Click(chromedp.CSS(`#assign-form button[value="assign"]`)))
	events := step(t, ctx, "events", chromedp.Evaluate[string](`Array.from(document.querySelectorAll('p.event')).map(function(p){return p.innerText}).join('|')`))
	mustContain(t, "events", events, "alice set the status to solved", "alice assigned the ticket to ada")

	// An admin gets the ticket's audit trail from the page.
	submit(t, ctx, "logout", chromedp.Click(chromedp.ID("logout")))
	e.browserLogin(t, ctx, base, "ada")
	submit(t, ctx, "admin opens ticket", chromedp.Navigate(base+"/tickets/"+sid))
	submit(t, ctx, "audit trail", chromedp.Click(chromedp.CSS("a.audit-trail")))
	rows := step(t, ctx, "audit rows", chromedp.Evaluate[string](`Array.from(document.querySelectorAll('table.audit tbody tr td:nth-child(5)')).map(function(td){return td.innerText}).join(',')`))
	if rows == "" || strings.Trim(strings.ReplaceAll(rows, "ticket/"+sid, ""), ",") != "" {
		t.Errorf("audit trail shows other objects: %q", rows)
	}
	mustContain(t, "audit trail", bodyText(t, ctx), "ticket.reply", "ticket.status", "ticket.assign")
}
