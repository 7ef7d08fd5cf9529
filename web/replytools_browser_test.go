package web

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"mailgate/access"
)

// Item 6 of issue 14, Cc and attachments on the web form: the reply leaves through the real
// outbound with the copy and the file, and the file is on the ticket, downloadable.
func TestBrowserReplyCcAndAttachment(t *testing.T) {
	e := newEnv(t)
	sink := e.startRelay(t)
	e.addAgent("alice", access.RoleAgent, "support")
	id := e.ingest(mail{from: "carol@customer.example", subject: "Invoice", verified: true})
	file := filepath.Join(t.TempDir(), "invoice-42.pdf")
	if err := os.WriteFile(file, []byte("%PDF-1.4 the invoice"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, base := e.serveBrowser(t, "alice")
	page := "/tickets/" + strconv.FormatUint(id, 10)
	submit(t, ctx, "ticket", chromedp.Navigate(base+page))
	// A bad copy address is refused with what to fix, and nothing is sent.
	resp := submit(t, ctx, "bad cc",
		chromedp.SendKeys(chromedp.ID("reply-body"), "Here is your invoice."),
		chromedp.SendKeys(chromedp.ID("cc"), "not an address"),
		chromedp.Click(chromedp.CSS(`#reply-form button[value="reply"]`)))
	if resp.Status != http.StatusBadRequest || !strings.Contains(bodyText(t, ctx), "is not an email address") {
		t.Fatalf("bad cc: %d %s", resp.Status, bodyText(t, ctx))
	}
	submit(t, ctx, "ticket again", chromedp.Navigate(base+page))
	resp = submit(t, ctx, "reply with cc and file",
		chromedp.SendKeys(chromedp.ID("reply-body"), "Here is your invoice."),
		chromedp.SendKeys(chromedp.ID("cc"), "accounts@customer.example"),
		chromedp.SetUploadFiles(chromedp.ID("attach"), []string{file}),
		chromedp.Click(chromedp.CSS(`#reply-form button[value="reply"]`)))
	if resp.Status != http.StatusOK || !strings.Contains(resp.URL, "sent=") {
		t.Fatalf("reply: %d %s\n%s", resp.Status, resp.URL, bodyText(t, ctx))
	}
	mustContain(t, "sent reply", text(t, ctx, "article:last-of-type"), "Cc: accounts@customer.example", "invoice-42.pdf")
	select {
	case m := <-sink.got:
		if strings.Join(m.to, ",") != "carol@customer.example,accounts@customer.example" {
			t.Errorf("envelope recipients %v", m.to)
		}
		mustContain(t, "relayed reply", string(m.data), "Cc: accounts@customer.example", "invoice-42.pdf", "Here is your invoice.")
	case <-time.After(30 * time.Second):
		t.Fatal("the reply never reached the relay")
	}
	href := step(t, ctx, "attachment link", chromedp.Evaluate[string](`document.querySelector('article:last-of-type ul.attachments a').getAttribute('href')`))
	code, body := e.fetchAs(t, "alice", href)
	if code != http.StatusOK || body != "%PDF-1.4 the invoice" {
		t.Errorf("download %s: %d %q", href, code, body)
	}
}

// fetchAs fetches path as name from a second login (a fresh TOTP step: the browser's code may
// not be used twice).
func (e *env) fetchAs(t *testing.T, name, path string) (int, string) {
	t.Helper()
	e.clk.Add(30 * time.Second)
	c := e.client()
	c.login(name)
	w := c.get(path)
	return w.Code, w.Body.String()
}
