package web

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"mailgate/access"
	"mailgate/audit"
)

// Item 8 of issue 14: times in the agent's time zone, chosen on the account page.
func TestBrowserTimeZone(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	id := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true})
	ctx, base := e.serveBrowser(t, "alice")
	page := "/tickets/" + strconv.FormatUint(id, 10)

	submit(t, ctx, "ticket in UTC", chromedp.Navigate(base+page))
	mustContain(t, "UTC ticket", text(t, ctx, "article .addr"), "Date: 2026-03-02 09:00 UTC")

	submit(t, ctx, "account", chromedp.Navigate(base+"/account"))
	resp := submit(t, ctx, "bad zone", chromedp.SetValue(chromedp.ID("tz"), "../../etc/passwd"), chromedp.Submit(chromedp.ID("tz-form")))
	if resp.Status != http.StatusBadRequest || !strings.Contains(text(t, ctx, "p.error"), "Unknown time zone") {
		t.Errorf("bad zone: %d", resp.Status)
	}
	resp = submit(t, ctx, "set zone", chromedp.SetValue(chromedp.ID("tz"), "America/New_York"), chromedp.Submit(chromedp.ID("tz-form")))
	if resp.Status != http.StatusOK {
		t.Fatalf("set zone: %d", resp.Status)
	}
	mustContain(t, "zone notice", text(t, ctx, "p.notice"), "America/New_York")
	submit(t, ctx, "ticket in New York time", chromedp.Navigate(base+page))
	mustContain(t, "New York ticket", text(t, ctx, "article .addr"), "Date: 2026-03-02 04:00 EST")
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "account.timezone", Result: audit.OK}) {
		t.Error("time zone change not audited")
	}
}
