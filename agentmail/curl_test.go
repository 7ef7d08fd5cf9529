package agentmail

import (
	"bytes"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"mailgate/audit"
)

// curlIMAP returns the curl binary, failing the test unless it is there and speaks IMAP:
// curl is one of the independent clients issue 7 names, so its absence is a failure, not a skip.
func curlIMAP(t *testing.T) string {
	t.Helper()
	curl := tool(t, "curl")
	out, err := exec.Command(curl, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("curl --version: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "Protocols:"); ok && slices.Contains(strings.Fields(rest), "imap") {
			return curl
		}
	}
	t.Fatalf("this curl does not speak IMAP (no imap under Protocols):\n%s", out)
	return ""
}

// runCurl runs curl against the IMAP view as user with the app password the test made.
// It returns curl's output, its error output and its exit code.
func (e *env) runCurl(t *testing.T, curl, user, path string) (stdout, stderr string, code int) {
	t.Helper()
	return e.runCurlAs(t, curl, user, e.users[user], path)
}

func (e *env) runCurlAs(t *testing.T, curl, user, pass, path string) (stdout, stderr string, code int) {
	t.Helper()
	// --max-time is a hang guard, not a speed check.
	cmd := exec.Command(curl, "-s", "-S", "--max-time", "60", "-u", user+":"+pass, "imap://"+e.imapAddr+path)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run curl: %v", err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

var listLineRe = regexp.MustCompile(`(?m)^\* LIST \([^)]*\) (?:"[^"]*"|NIL) "?([^"\r\n]+)"?\r?$`)

// listed parses the mailbox names out of the LIST responses curl prints.
func listed(out string) []string {
	var names []string
	for _, m := range listLineRe.FindAllStringSubmatch(out, -1) {
		names = append(names, m[1])
	}
	slices.Sort(names)
	return names
}

// TestCurlIMAP drives the IMAP view with curl, a client written independently of go-imap and
// of Python's imaplib: it logs in with an app password, lists the agent's queues, fetches a
// message by UID (audited), and an agent of another queue sees nothing of it.
func TestCurlIMAP(t *testing.T) {
	curl := curlIMAP(t)
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\nOrder 4711.\r\n")
	e.ingest("billing", customer2, "Invoice", "i1@example.org", "Billing only.\r\n")

	// LIST: alice belongs to support only.
	out, errOut, code := e.runCurl(t, curl, "alice", "/")
	if code != 0 {
		t.Fatalf("curl LIST as alice: exit %d: %s\n%s", code, errOut, out)
	}
	if got := listed(out); !slices.Equal(got, []string{"INBOX", "support"}) {
		t.Errorf("alice's LIST = %v, want [INBOX support]; curl printed:\n%s", got, out)
	}

	// FETCH by UID: curl selects the mailbox and fetches BODY[] of UID 1.
	before := len(e.events(actionFetch))
	out, errOut, code = e.runCurl(t, curl, "alice", "/support;UID=1")
	if code != 0 {
		t.Fatalf("curl FETCH as alice: exit %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []string{"Hello, my order is late.", "Order 4711.", "Subject: Order late", "From: Customer <" + customer + ">"} {
		if !strings.Contains(out, want) {
			t.Errorf("fetched message lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Billing only") {
		t.Errorf("alice's fetch shows the billing queue's mail:\n%s", out)
	}
	evs := e.events(actionFetch)[before:]
	var fetched bool
	for _, ev := range evs {
		fetched = fetched || (ev.Actor == "alice" && ev.Result == audit.OK && ev.Object == "ticket/"+strconv.FormatUint(id, 10) &&
			strings.HasPrefix(ev.Remote, "127.0.0.1:"))
	}
	if !fetched {
		t.Errorf("no imap.fetch event for alice and ticket %d among %+v", id, evs)
	}
	var selected bool
	for _, ev := range e.events("imap.select") {
		selected = selected || (ev.Actor == "alice" && ev.Result == audit.OK && ev.Object == "queue/support")
	}
	if !selected {
		t.Error("curl's SELECT of support left no imap.select event for alice")
	}

	// bob works billing: support is not in his LIST, and fetching from it fails and is audited.
	out, errOut, code = e.runCurl(t, curl, "bob", "/")
	if code != 0 {
		t.Fatalf("curl LIST as bob: exit %d: %s\n%s", code, errOut, out)
	}
	if got := listed(out); !slices.Equal(got, []string{"INBOX", "billing"}) {
		t.Errorf("bob's LIST = %v, want [INBOX billing]; curl printed:\n%s", got, out)
	}
	fetchesBefore := len(e.events(actionFetch))
	out, errOut, code = e.runCurl(t, curl, "bob", "/support;UID=1")
	// curl reports a refused SELECT as "Select failed" (exit 67), after a successful login.
	if code == 0 || !strings.Contains(errOut, "Select failed") || strings.Contains(out, "order is late") || strings.Contains(out, "Order 4711") {
		t.Errorf("bob's fetch from support: exit %d, want curl's \"Select failed\"\n%s%s", code, out, errOut)
	}
	if n := len(e.events(actionFetch)) - fetchesBefore; n != 0 {
		t.Errorf("bob's refused fetch wrote %d imap.fetch events", n)
	}
	var denied bool
	for _, ev := range e.events("imap.select") {
		denied = denied || (ev.Actor == "bob" && ev.Result == audit.Denied && ev.Object == "mailbox/support")
	}
	if !denied {
		t.Error("no denied imap.select event for bob and support")
	}

	// The web password is not an app password: curl gets nothing, with its login-denied exit code (67).
	if out, errOut, code = e.runCurlAs(t, curl, "alice", e.webPassword("alice"), "/support;UID=1"); code != 67 || strings.Contains(out, "order") {
		t.Errorf("curl with a wrong password: exit %d, want 67 (login denied)\n%s%s", code, out, errOut)
	}
}
