package web

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"mailgate/access"
)

// Item 9 of issue 14: queue checkboxes only where queues mean something, dangerous actions
// marked and confirmed, no recovery codes left highlighted.
func TestBrowserAdminAndAccountFixes(t *testing.T) {
	e := newEnv(t)
	e.addAgent("root", access.RoleAdmin)
	e.addAgent("carl", access.RoleAgent, "support")
	e.addAgent("aud", access.RoleAuditor)
	ctx, base := e.serveBrowser(t, "root")

	// A fresh admin has made no recovery codes yet: the account page says so loudly.
	submit(t, ctx, "account", chromedp.Navigate(base+"/account"))
	if got := text(t, ctx, ".codes-none"); !strings.Contains(got, "0 recovery codes left") {
		t.Errorf("no codes left: %q", got)
	}

	submit(t, ctx, "admin page", chromedp.Navigate(base+"/admin/agents"))
	rows := step(t, ctx, "queue forms", chromedp.Evaluate[string](`Array.from(document.querySelectorAll('table.list tbody tr')).map(function(r){return r.cells[0].innerText+':'+r.querySelectorAll('.queues-form input[type=checkbox]').length}).join(',')`))
	for _, want := range []string{"carl:2", "root:0", "aud:0"} {
		if !strings.Contains(","+rows+",", ","+want+",") {
			t.Errorf("queue checkboxes per row %q, want %s", rows, want)
		}
	}
	// Dangerous buttons are red and need the row's box ticked; the browser will not send the
	// form without it, and the server refuses it too.
	color := step(t, ctx, "danger colour", chromedp.Evaluate[string](`getComputedStyle(document.querySelector('button.danger')).backgroundColor`))
	if color != "rgb(138, 28, 18)" {
		t.Errorf("dangerous button colour %q", color)
	}
	valid := step(t, ctx, "unticked form", chromedp.Evaluate[bool](`Array.from(document.querySelectorAll('form.danger-form')).every(function(f){return !f.checkValidity()})`))
	if !valid {
		t.Error("a dangerous form is valid without the box ticked")
	}
	e.clk.Add(30 * time.Second) // a fresh TOTP step: the browser's code may not be used twice
	c := e.client()
	c.login("root")
	if w := c.post("/admin/agents", url.Values{"action": {"disable"}, "name": {"carl"}}); w.Code != http.StatusBadRequest {
		t.Errorf("disable without confirm: %d", w.Code)
	}
	if w := c.post("/admin/agents", url.Values{"action": {"disable"}, "name": {"carl"}, "confirm": {"aud"}}); w.Code != http.StatusBadRequest {
		t.Errorf("disable with another row's confirm: %d", w.Code)
	}
	if a, _ := e.acc.Get("carl"); a.Disabled {
		t.Fatal("carl disabled without confirmation")
	}
	// Ticked, it works.
	sel := `//tr[td[1][text()="carl"]]//form[contains(@class,"danger-form")]`
	submit(t, ctx, "tick and disable",
		chromedp.Click(sel+`//input[@name="confirm"]`),
		chromedp.Click(sel+`//button[@value="disable"]`))
	mustContain(t, "after disable", text(t, ctx, "p.notice"), "carl is disabled")
	if a, _ := e.acc.Get("carl"); !a.Disabled {
		t.Error("carl not disabled")
	}
}
