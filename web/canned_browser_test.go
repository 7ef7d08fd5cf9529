package web

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"mailgate/access"
	"mailgate/audit"
)

// Item 6 of issue 14, canned replies: an admin keeps them per queue; an agent starts a reply
// from one with the ticket's fields filled in; both are audited.
func TestBrowserCannedReplies(t *testing.T) {
	e := newEnv(t)
	e.addAgent("root", access.RoleAdmin)
	e.addAgent("alice", access.RoleAgent, "support")
	real := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	spoof := e.ingest(mail{from: "carol@customer.example", subject: "Bank details", verified: false})
	ctx, base := e.serveBrowser(t, "root")

	submit(t, ctx, "canned page", chromedp.Navigate(base+"/admin/canned"))
	submit(t, ctx, "add canned",
		chromedp.SetValue(chromedp.ID("canned-queue"), "support"),
		chromedp.SendKeys(chromedp.ID("canned-title"), "Shipping delay"),
		chromedp.SendKeys(chromedp.ID("canned-text"), "Hello {{customer_name}},\nticket {{ticket}} ({{subject}}) ships Monday.\n{{agent}}"),
		chromedp.Click(chromedp.CSS(`#canned-form button[value="add"]`)))
	mustContain(t, "added", text(t, ctx, "p.notice"), "Shipping delay")
	if !e.hasEvent(audit.Filter{Actor: "root", Action: "canned.add", Result: audit.OK}) {
		t.Error("adding a canned reply is not audited")
	}

	submit(t, ctx, "logout", chromedp.Click(chromedp.ID("logout")))
	e.clk.Add(30 * time.Second)
	e.browserLogin(t, ctx, base, "alice")
	submit(t, ctx, "ticket", chromedp.Navigate(base+"/tickets/"+strconv.FormatUint(real, 10)))
	submit(t, ctx, "insert canned", chromedp.Click(chromedp.CSS(`#canned-form button`)))
	draft := step(t, ctx, "draft", chromedp.Value(chromedp.ID("reply-body")))
	if want := "Hello Customer,\nticket " + strconv.FormatUint(real, 10) + " (Order late) ships Monday.\nalice"; draft != want {
		t.Errorf("draft %q, want %q", draft, want)
	}
	submit(t, ctx, "send", chromedp.Click(chromedp.CSS(`#reply-form button[value="reply"]`)))
	if texts := e.mailer.texts(); len(texts) != 1 || !strings.HasPrefix(texts[0], "Hello Customer,") {
		t.Errorf("sent %q", texts)
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "canned.use", Result: audit.OK}) {
		t.Error("using a canned reply is not audited")
	}
	// On the spoofed ticket the greeting uses the address, not the display name the sender chose.
	submit(t, ctx, "spoofed ticket", chromedp.Navigate(base+"/tickets/"+strconv.FormatUint(spoof, 10)))
	submit(t, ctx, "insert canned", chromedp.Click(chromedp.CSS(`#canned-form button`)))
	if draft := step(t, ctx, "draft", chromedp.Value(chromedp.ID("reply-body"))); !strings.HasPrefix(draft, "Hello carol@customer.example,") {
		t.Errorf("spoofed draft %q", draft)
	}
}
