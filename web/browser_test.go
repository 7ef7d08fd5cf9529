package web

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/emersion/go-smtp"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/outbound"
)

// chromiumPath is Debian's chromium. The browser tests fail without it: they are the proof that
// the pages work in a real browser, so a skip would hide that nothing was proven.
const chromiumPath = "/usr/bin/chromium"

// relayed is one message the test relay accepted.
type relayed struct {
	from string
	to   []string
	data []byte
}

// relaySink is a loopback SMTP relay that keeps what it is given: the far end of outbound.
type relaySink struct {
	got chan relayed
}

func (s *relaySink) NewSession(c *smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: s}, nil }

type sinkSession struct {
	sink *relaySink
	msg  relayed
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error { s.msg.from = from; return nil }
func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.to = append(s.msg.to, to)
	return nil
}
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.data = b
	s.sink.got <- s.msg
	return nil
}
func (s *sinkSession) Reset()        { s.msg = relayed{} }
func (s *sinkSession) Logout() error { return nil }

// startRelay runs the sink on 127.0.0.1:0 and wires a real outbound to it.
func (e *env) startRelay(t *testing.T) *relaySink {
	t.Helper()
	sink := &relaySink{got: make(chan relayed, 10)}
	srv := smtp.NewServer(sink)
	srv.Domain = "relay.test"
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	cfg := *e.cfg
	cfg.Hostname = "mail.example.com"
	cfg.DataDir = t.TempDir()
	cfg.Outbound.Relay = l.Addr().String()
	cfg.Outbound.RelayTLS = "none"
	cfg.PGP.Encrypt = "never"
	out, err := outbound.New(&cfg, e.db, e.log, e.tk, nil, nil, outbound.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.tk.SetMailer(out)
	if err := out.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(out.Stop)
	return sink
}

// browser starts headless chromium with the flags a root CI box needs and returns a chromedp
// context. Browser output goes to the test log on failure.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("chromium is required for the browser tests: %v (install Debian's chromium package)", err)
	}
	var out bytes.Buffer
	var mu sync.Mutex
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.CombinedOutput(writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return out.Write(p)
		})),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		if t.Failed() {
			mu.Lock()
			t.Logf("chromium output:\n%s", out.String())
			mu.Unlock()
		}
	})
	// The first run starts the browser; it must not carry a deadline (that would stop the browser).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// step runs one browser action with a guard deadline (a hung browser fails the test instead of
// hanging it; no assertion depends on timing).
func step[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// submit runs the actions that send a form or follow a link and returns the response of the page
// that loaded.
func submit(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) *network.Response {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := chromedp.RunResponse(sctx, steps...)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return resp
}

func bodyText(t *testing.T, ctx context.Context) string {
	t.Helper()
	return step(t, ctx, "read page", chromedp.Text(chromedp.CSS("body")))
}

func cookies(t *testing.T, ctx context.Context) []*network.Cookie {
	t.Helper()
	res := step(t, ctx, "read cookies", func(ctx context.Context, tg *chromedp.Target) (network.GetCookiesResult, error) {
		return cdp.Call(ctx, tg, network.GetCookies, network.GetCookiesParams{})
	})
	return res.Cookies
}

func TestBrowserEndToEnd(t *testing.T) {
	e := newEnv(t)
	sink := e.startRelay(t)
	e.addAgent("alice", access.RoleAgent, "support")
	verified := e.ingest(mail{from: "carol@customer.example", subject: "Order late", verified: true, body: "Where is order 42?"})
	hostile := e.ingest(mail{from: "mallory@evil.example", subject: "Reset my password", verified: false,
		body: "Please send my account data.",
		html: `<p id="mailbody">Hi <b>agent</b></p><script>document.title="pwned"</script>` +
			`<img src="x" onerror="document.title='pwned by onerror'"><a id="jslink" href="javascript:document.title='pwned'">click</a>`})
	other := e.ingest(mail{queue: "billing", from: "dan@customer.example", subject: "Invoice", verified: true})

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	t.Cleanup(func() { e.srv.Shutdown(context.Background()) })
	base := "http://" + l.Addr().String()
	ctx := browser(t)

	// Log in: password, then the TOTP code.
	resp := submit(t, ctx, "open login", chromedp.Navigate(base+"/login"))
	if resp.Status != http.StatusOK {
		t.Fatalf("login page: %d", resp.Status)
	}
	resp = submit(t, ctx, "password step",
		chromedp.SendKeys(chromedp.ID("username"), "alice"),
		chromedp.SendKeys(chromedp.ID("password"), e.pw["alice"]),
		chromedp.Submit(chromedp.ID("login")))
	if resp.Status != http.StatusOK || !strings.HasSuffix(resp.URL, "/login/code") {
		t.Fatalf("after password: %d %s\n%s", resp.Status, resp.URL, bodyText(t, ctx))
	}
	code := e.code("alice")
	resp = submit(t, ctx, "code step",
		chromedp.SendKeys(chromedp.ID("code"), code),
		chromedp.Submit(chromedp.ID("code-form")))
	if resp.Status != http.StatusOK || !strings.HasSuffix(resp.URL, "/tickets") {
		t.Fatalf("after code: %d %s\n%s", resp.Status, resp.URL, bodyText(t, ctx))
	}
	// The browser kept the session cookie with all its protections, on plain http://127.0.0.1.
	var sess *network.Cookie
	for _, c := range cookies(t, ctx) {
		if c.Name == sessionCookie {
			sess = c
		}
	}
	if sess == nil || !sess.Secure || !sess.HTTPOnly || sess.SameSite != network.CookieSameSiteStrict || sess.Path != "/" {
		t.Fatalf("session cookie in the browser: %+v", sess)
	}
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "login.code", Result: audit.OK}) {
		t.Error("login not audited")
	}

	// The list shows this queue's tickets and not the other queue's.
	list := bodyText(t, ctx)
	mustContain(t, "ticket list", list, "Order late", "Reset my password")
	mustNotContain(t, "ticket list", list, "Invoice")

	// Open the unverified sender's ticket from the list.
	hpath := "/tickets/" + strconv.FormatUint(hostile, 10)
	resp = submit(t, ctx, "open hostile ticket", chromedp.Click(chromedp.CSS(`a[href="`+hpath+`"]`)))
	if resp.Status != http.StatusOK {
		t.Fatalf("ticket page: %d", resp.Status)
	}
	warn := step(t, ctx, "warning", chromedp.Text(chromedp.CSS("p.sender-unverified")))
	if warn != "mailgate could not verify this sender: do not disclose account data" {
		t.Errorf("warning: %q", warn)
	}
	title := step(t, ctx, "title", chromedp.Title())

	// Show the HTML: the sanitised mail renders, and none of its script runs.
	resp = submit(t, ctx, "show HTML", chromedp.Click(chromedp.CSS("a.show-html")))
	if resp.Status != http.StatusOK {
		t.Fatalf("HTML view: %d", resp.Status)
	}
	inner := step(t, ctx, "HTML mail", chromedp.InnerHTML(chromedp.CSS("div.html-mail")))
	mustContain(t, "HTML mail", inner, "Hi <b>agent</b>")
	if got := step(t, ctx, "title after HTML", chromedp.Title()); got != title || strings.Contains(got, "pwned") {
		t.Errorf("title changed from %q to %q: mail script ran", title, got)
	}
	hrefs := step(t, ctx, "links", chromedp.Evaluate[string](`Array.from(document.querySelectorAll('.html-mail a, .html-mail img')).map(function(x){return (x.getAttribute('href')||'')+(x.getAttribute('src')||'')+(x.getAttribute('onerror')||'')}).join('|')`))
	if strings.Contains(hrefs, "javascript") || strings.Contains(hrefs, "pwned") {
		t.Errorf("hostile attributes in the DOM: %s", hrefs)
	}

	// Post a note, then a reply, then set the status, on the verified customer's ticket.
	vpath := "/tickets/" + strconv.FormatUint(verified, 10)
	submit(t, ctx, "open ticket", chromedp.Navigate(base+vpath))
	if strings.Contains(bodyText(t, ctx), "could not verify") {
		t.Error("verified ticket shows the unverified warning")
	}
	mustContain(t, "verified ticket", bodyText(t, ctx), "verified sender")
	resp = submit(t, ctx, "note",
		chromedp.SendKeys(chromedp.ID("note-body"), "Warehouse says Tuesday."),
		chromedp.Click(chromedp.CSS(`#note-form button[value="note"]`)))
	if resp.Status != http.StatusOK || !strings.Contains(resp.URL, vpath+"?sent=") {
		t.Fatalf("after note: %d %s", resp.Status, resp.URL)
	}
	mustContain(t, "after note", bodyText(t, ctx), "Warehouse says Tuesday.", "internal note by alice")
	resp = submit(t, ctx, "reply",
		chromedp.SendKeys(chromedp.ID("reply-body"), "Your order ships on Tuesday."),
		chromedp.Click(chromedp.CSS(`#reply-form button[value="reply"]`)))
	if resp.Status != http.StatusOK {
		t.Fatalf("after reply: %d", resp.Status)
	}
	mustContain(t, "after reply", bodyText(t, ctx), "Your order ships on Tuesday.", "reply by alice")
	resp = submit(t, ctx, "status",
		chromedp.SetValue(chromedp.ID("status"), "solved"),
		chromedp.Click(chromedp.CSS(`#status-form button[value="status"]`)))
	if resp.Status != http.StatusOK {
		t.Fatalf("after status: %d", resp.Status)
	}
	if got := step(t, ctx, "status shown", chromedp.Text(chromedp.CSS("dd.status-solved"))); got != "solved" {
		t.Errorf("status shown: %q", got)
	}

	// The reply left through the real outbound and reached the relay.
	select {
	case m := <-sink.got:
		if m.from != "support@example.com" || len(m.to) != 1 || m.to[0] != "carol@customer.example" {
			t.Errorf("relay envelope: from %s to %v", m.from, m.to)
		}
		mustContain(t, "relayed reply", string(m.data), "Your order ships on Tuesday.", "[#"+strconv.FormatUint(verified, 10)+"]")
		mustNotContain(t, "relayed reply", string(m.data), "Warehouse says Tuesday.")
	case <-time.After(30 * time.Second):
		t.Fatal("the reply never reached the relay")
	}

	// Another queue's ticket is 404, and the attempt is on record.
	opath := "/tickets/" + strconv.FormatUint(other, 10)
	resp = submit(t, ctx, "other queue", chromedp.Navigate(base+opath))
	if resp.Status != http.StatusNotFound {
		t.Errorf("another queue's ticket: %d, want 404", resp.Status)
	}
	mustNotContain(t, "other queue", bodyText(t, ctx), "Invoice", "dan@customer.example")
	if !e.hasEvent(audit.Filter{Actor: "alice", Action: "ticket.view", Object: "ticket/" + strconv.FormatUint(other, 10), Result: audit.Denied}) {
		t.Error("denied view not audited")
	}

	// Log out; the pages are closed again.
	submit(t, ctx, "back", chromedp.Navigate(base+"/tickets"))
	resp = submit(t, ctx, "logout", chromedp.Click(chromedp.ID("logout")))
	if !strings.HasSuffix(resp.URL, "/login") {
		t.Fatalf("after logout: %s", resp.URL)
	}
	resp = submit(t, ctx, "tickets after logout", chromedp.Navigate(base+"/tickets"))
	if !strings.HasSuffix(resp.URL, "/login") {
		t.Errorf("tickets after logout went to %s", resp.URL)
	}

	// A second login with the same TOTP code fails.
	submit(t, ctx, "password again",
		chromedp.SendKeys(chromedp.ID("username"), "alice"),
		chromedp.SendKeys(chromedp.ID("password"), e.pw["alice"]),
		chromedp.Submit(chromedp.ID("login")))
	resp = submit(t, ctx, "same code again",
		chromedp.SendKeys(chromedp.ID("code"), code),
		chromedp.Submit(chromedp.ID("code-form")))
	if resp.Status != http.StatusUnauthorized || !strings.Contains(bodyText(t, ctx), "Wrong user name, password or code") {
		t.Errorf("replayed code: %d %s", resp.Status, resp.URL)
	}
}

// TestBrowserCSPBlocksInlineScript shows that chromium enforces the page policy: the same inline
// script runs on a page without the headers (so the probe works) and not under them.
func TestBrowserCSPBlocksInlineScript(t *testing.T) {
	page := `<!doctype html><html><head><title>untouched</title></head><body>` +
		`<script>document.title = "script ran"</script>` +
		`<img src="x" onerror="document.title = 'handler ran'">` +
		`<div style="background:url(https://tracker.example/x.png)">x</div></body></html>`
	probe := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, page)
	})
	mux := http.NewServeMux()
	mux.Handle("/bare", probe)
	mux.Handle("/secure", secure(probe))
	ts := httptest.NewServer(mux)
	defer ts.Close()
	ctx := browser(t)

	submit(t, ctx, "bare page", chromedp.Navigate(ts.URL+"/bare"))
	step(t, ctx, "wait for onerror", chromedp.WaitReady(chromedp.CSS("img")))
	if got := step(t, ctx, "title", chromedp.Title()); got == "untouched" {
		t.Fatalf("the probe's script did not run even without CSP: title %q", got)
	}
	submit(t, ctx, "secure page", chromedp.Navigate(ts.URL+"/secure"))
	step(t, ctx, "wait", chromedp.WaitReady(chromedp.CSS("img")))
	if got := step(t, ctx, "title", chromedp.Title()); got != "untouched" {
		t.Errorf("inline script ran under the CSP: title %q", got)
	}
}
