package web

import (
	"context"
	"net"
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

// serveBrowser serves e on loopback and logs name in with a real chromium; it returns the
// browser context and the base URL.
func (e *env) serveBrowser(t *testing.T, name string) (context.Context, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	t.Cleanup(func() { e.srv.Shutdown(context.Background()) })
	base := "http://" + l.Addr().String()
	ctx := browser(t)
	return e.browserLogin(t, ctx, base, name), base
}

func (e *env) browserLogin(t *testing.T, ctx context.Context, base, name string) context.Context {
	t.Helper()
	submit(t, ctx, "open login", chromedp.Navigate(base+"/login"))
	submit(t, ctx, "password step",
		chromedp.SendKeys(chromedp.ID("username"), name),
		chromedp.SendKeys(chromedp.ID("password"), e.pw[name]),
		chromedp.Submit(chromedp.ID("login")))
	resp := submit(t, ctx, "code step",
		chromedp.SendKeys(chromedp.ID("code"), e.code(name)),
		chromedp.Submit(chromedp.ID("code-form")))
	if resp.Status != http.StatusOK || !strings.HasSuffix(resp.URL, "/tickets") {
		t.Fatalf("login %s: %d %s\n%s", name, resp.Status, resp.URL, bodyText(t, ctx))
	}
	return ctx
}

// rowIDs are the ticket numbers of the list rows, top to bottom.
func rowIDs(t *testing.T, ctx context.Context) []string {
	t.Helper()
	s := step(t, ctx, "rows", chromedp.Evaluate[string](`Array.from(document.querySelectorAll('table.tickets tbody tr')).map(function(r){return r.id.slice(1)}).join(',')`))
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return step(t, ctx, "text of "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// Items 1, 3 and 4 of issue 14: waiting order, views with counts, sorts, pages, search, risk
// flags, auto-replies that do not reopen, bounces in Attention, at desktop and phone width.
func TestBrowserWorkQueue(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	id := func(n uint64) string { return strconv.FormatUint(n, 10) }
	real := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true, body: "Where is order 42?"})
	e.clk.Add(5 * time.Minute)
	spoof := e.ingest(mail{from: "carol@customer.example", subject: "New bank details", verified: false, body: "Please pay to my new IBAN."})
	e.clk.Add(5 * time.Minute)
	quar := e.ingest(mail{from: "eve@customer.example", subject: "Invoice attached", quarantined: true})
	e.clk.Add(5 * time.Minute)
	ooo := e.ingest(mail{from: "dan@customer.example", subject: "Printer", verified: true})
	e.clk.Add(5 * time.Minute)
	alice := access.Actor{Name: "alice", Role: access.RoleAgent, Queues: []string{"support"}}
	// #real is answered (its reply will bounce); #ooo is answered and solved, then its customer's
	// out-of-office answer arrives.
	rep, err := e.tk.Reply(alice, real, "It ships today.")
	if err != nil {
		t.Fatal(err)
	}
	rep2, err := e.tk.Reply(alice, ooo, "Try turning it off and on.")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.tk.SetStatus(alice, ooo, tickets.StatusSolved); err != nil {
		t.Fatal(err)
	}
	auto := "From: Dan <dan@customer.example>\r\nTo: support@example.com\r\nSubject: Out of office: Re: Printer\r\nMessage-ID: <ooo@customer.example>\r\nIn-Reply-To: <" + rep2.MessageID + ">\r\nAuto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
	if _, err := e.tk.Ingest(tickets.Incoming{Queue: "support", Raw: []byte(auto), Via: "smtp", Kind: "auto-reply",
		Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}}); err != nil {
		t.Fatal(err)
	}
	dsn := "From: MAILER-DAEMON@mx.customer.example\r\nTo: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn@mx.customer.example>\r\n\r\n<carol@customer.example>: mailbox full\r\n"
	if _, err := e.tk.Ingest(tickets.Incoming{Queue: "support", Raw: []byte(dsn), Via: "smtp", Kind: "bounce", BounceOf: []string{rep.MessageID}}); err != nil {
		t.Fatal(err)
	}
	e.clk.Add(time.Minute)
	if err := e.tk.Assign(alice, quar, "alice"); err != nil {
		t.Fatal(err)
	}
	e.clk.Add(19 * time.Minute)

	ctx, base := e.serveBrowser(t, "alice")

	// Default view: all open, the customer waiting longest first; #real was answered, so it
	// comes after those still waiting.
	if got := rowIDs(t, ctx); strings.Join(got, ",") != id(spoof)+","+id(quar)+","+id(real) {
		t.Fatalf("default order %v, want %d,%d,%d", got, spoof, quar, real)
	}
	if got := text(t, ctx, "#t"+id(spoof)+" td.waiting"); got != "35 min ago" {
		t.Errorf("waiting since of #%d: %q", spoof, got)
	}
	// Counts per view.
	for sel, want := range map[string]string{"a.view-open .count": "3", "a.view-mine .count": "1", "a.view-unassigned .count": "2",
		"a.view-attention .count": "1", "a.view-all .count": "4"} {
		if got := text(t, ctx, sel); got != want {
			t.Errorf("%s = %q, want %s", sel, got, want)
		}
	}
	// Risk flags: the spoofed ticket from the real customer's address does not look like hers.
	spoofRow := text(t, ctx, "#t"+id(spoof))
	realRow := text(t, ctx, "#t"+id(real))
	mustContain(t, "spoofed row", spoofRow, "unverified sender", "⚠ carol@customer.example")
	mustNotContain(t, "real row", realRow, "unverified", "⚠")
	mustContain(t, "real row", realRow, "reply bounced")
	mustContain(t, "quarantined row", text(t, ctx, "#t"+id(quar)), "quarantined")

	// Attention: the bounced reply.
	submit(t, ctx, "attention view", chromedp.Click(chromedp.CSS("a.view-attention")))
	if got := rowIDs(t, ctx); len(got) != 1 || got[0] != id(real) {
		t.Fatalf("attention view: %v", got)
	}
	// All: the solved ticket stayed solved after the out-of-office answer, flagged auto-reply.
	submit(t, ctx, "all view", chromedp.Click(chromedp.CSS("a.view-all")))
	oooRow := text(t, ctx, "#t"+id(ooo))
	mustContain(t, "auto-replied row", oooRow, "solved", "auto-reply", "answered")
	// Sort by number, then by activity, from the links.
	submit(t, ctx, "sort by number", chromedp.Click(chromedp.CSS("a.sort-number")))
	if got := rowIDs(t, ctx); strings.Join(got, ",") != id(ooo)+","+id(quar)+","+id(spoof)+","+id(real) {
		t.Errorf("by number: %v", got)
	}
	submit(t, ctx, "sort by activity", chromedp.Click(chromedp.CSS("a.sort-activity")))
	if got := rowIDs(t, ctx); len(got) != 4 || got[0] != id(quar) {
		t.Errorf("by activity: %v (the assignment was the last change)", got)
	}
	// Mine.
	submit(t, ctx, "mine", chromedp.Click(chromedp.CSS("a.view-mine")))
	if got := rowIDs(t, ctx); len(got) != 1 || got[0] != id(quar) {
		t.Errorf("mine: %v", got)
	}

	// Search, from the form: by body word, by address, by number; audited.
	for q, want := range map[string]string{"IBAN": id(spoof), "dan@customer.example": id(ooo), "#" + id(quar): id(quar), "order 42": id(real)} {
		submit(t, ctx, "search "+q, chromedp.Navigate(base+"/tickets"))
		submit(t, ctx, "search "+q, chromedp.SendKeys(`input[name="q"]`, q), chromedp.Submit(`input[name="q"]`))
		if got := rowIDs(t, ctx); len(got) != 1 || got[0] != want {
			t.Errorf("search %q: %v, want [%s]", q, got, want)
		}
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "ticket.search", Result: audit.OK}) {
		t.Error("search not audited")
	}

	// Paging: first/last links and a total.
	for i := 0; i < 2*pageSize; i++ {
		e.ingest(mail{from: "bulk" + strconv.Itoa(i) + "@customer.example", subject: "Bulk " + strconv.Itoa(i), verified: true})
	}
	submit(t, ctx, "list", chromedp.Navigate(base+"/tickets"))
	mustContain(t, "pages", text(t, ctx, "nav.pages"), "page 1 of 3 · 103 tickets", "next ›", "last »")
	submit(t, ctx, "last page", chromedp.Click(chromedp.CSS(`a[rel="last"]`)))
	mustContain(t, "last page", text(t, ctx, "nav.pages"), "page 3 of 3", "« first")
	if n := len(rowIDs(t, ctx)); n != 3 {
		t.Errorf("last page: %d rows, want 3", n)
	}

	// At 390 px the list fits: no sideways scrolling, every row a card.
	step(t, ctx, "phone width", chromedp.EmulateViewport(390, 844))
	submit(t, ctx, "list on a phone", chromedp.Navigate(base+"/tickets"))
	if w := step(t, ctx, "scroll width", chromedp.Evaluate[int](`document.documentElement.scrollWidth`)); w > 390 {
		t.Errorf("the list is %d px wide at a 390 px viewport", w)
	}
}
