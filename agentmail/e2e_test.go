package agentmail

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mailgate/audit"
	"mailgate/tickets"
)

const python = "/usr/bin/python3" // Debian's Python (the brief: not the first python3 on PATH)

// tool returns the path of an installed program, failing the test when it is missing: the
// end-to-end tests are the proof that independent clients work, so they never skip.
func tool(t *testing.T, path string) string {
	t.Helper()
	p, err := exec.LookPath(path)
	if err != nil {
		t.Fatalf("%s is required for this end-to-end test: %v", path, err)
	}
	return p
}

type pyStep struct {
	Step        string   `json:"step"`
	OK          bool     `json:"ok"`
	Err         string   `json:"err"`
	Text        any      `json:"text"`
	Mailboxes   []string `json:"mailboxes"`
	Exists      int      `json:"exists"`
	UIDValidity uint32   `json:"uidvalidity"`
	UIDs        []uint32 `json:"uids"`
	Bodies      []string `json:"bodies"`
	Seqs        []int    `json:"seqs"`
	Flags       string   `json:"flags"`
}

func runImaplib(t *testing.T, args ...string) map[string]pyStep {
	t.Helper()
	py := tool(t, python)
	cmd := exec.Command(py, append([]string{filepath.Join("testdata", "imaplib_client.py")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	if err != nil {
		t.Fatalf("imaplib client: %v\nstdout:\n%s\nstderr:\n%s", err, outb, stderr.String())
	}
	steps := map[string]pyStep{}
	sc := bufio.NewScanner(bytes.NewReader(outb))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var s pyStep
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("imaplib output %q: %v", sc.Text(), err)
		}
		steps[s.Step] = s
	}
	if !steps["done"].OK {
		t.Fatalf("imaplib client did not finish:\n%s\n%s", outb, stderr.String())
	}
	return steps
}

// TestImaplibEndToEnd drives the IMAP view with Python's imaplib, a client written
// independently of go-imap: plain text on loopback, and STARTTLS on a public listener.
func TestImaplibEndToEnd(t *testing.T) {
	e := newEnv(t)
	web := e.webPassword("alice")
	e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	e.ingest("support", customer2, "Refund", "r1@example.org", "Money back, please.\r\n")
	e.ingest("billing", customer, "Invoice", "i1@example.net", "Billing only.\r\n")

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	l, public := listenPublic(t)
	go e.imap.Serve(l)
	var certDER []byte
	for _, c := range e.tlsCfg.Certificates {
		certDER = c.Certificate[0]
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		addr   string
		ca     string
		unseen []int // the second run starts with message 1 seen by the first
	}{{"loopback plain", e.imapAddr, "", []int{1, 2}}, {"STARTTLS", public, caFile, []int{2}}} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.events("imap.fetch"))
			host, port, _ := net.SplitHostPort(tc.addr)
			args := []string{host, port, "alice", e.users["alice"], web}
			if tc.ca != "" {
				args = append(args, tc.ca)
			}
			s := runImaplib(t, args...)
			if s["web_login"].OK || !strings.Contains(s["web_login"].Err, "AUTHENTICATIONFAILED") {
				t.Errorf("web password: %+v", s["web_login"])
			}
			if !s["login"].OK {
				t.Fatalf("app password login failed")
			}
			if !slices.Equal(s["list"].Mailboxes, []string{"INBOX", "support"}) {
				t.Errorf("LIST = %v", s["list"].Mailboxes)
			}
			if sel := s["select"]; !sel.OK || sel.Exists != 2 || sel.UIDValidity == 0 {
				t.Errorf("SELECT = %+v", sel)
			}
			f := s["fetch"]
			if !f.OK || !slices.Equal(f.UIDs, []uint32{1, 2}) || len(f.Bodies) != 2 ||
				!strings.Contains(f.Bodies[0], "Hello, my order is late.") || !strings.Contains(f.Bodies[0], "X-Mailgate-Verified: yes") ||
				!strings.Contains(f.Bodies[1], "Money back") || strings.Contains(strings.Join(f.Bodies, ""), "Billing only") {
				t.Errorf("UID FETCH = %+v", f)
			}
			if ft := s["fetch_text"]; !ft.OK || !strings.Contains(jsonText(ft.Text), "Hello, my order is late.") {
				t.Errorf("FETCH BODY[TEXT] = %+v", ft)
			}
			if !slices.Equal(s["search_unseen"].Seqs, tc.unseen) {
				t.Errorf("SEARCH UNSEEN = %v, want %v", s["search_unseen"].Seqs, tc.unseen)
			}
			if !strings.Contains(s["flags"].Flags, `\Seen`) {
				t.Errorf("FLAGS after BODY[TEXT] = %q", s["flags"].Flags)
			}
			for step, want := range map[string]string{"store_examine": "EXAMINE", "append": "read-only", "create": "[CANNOT]", "select_other": "[NONEXISTENT]"} {
				if st := s[step]; st.OK || !strings.Contains(jsonText(st.Text), want) {
					t.Errorf("%s = %+v, want a refusal saying %q", step, st, want)
				}
			}
			var n int
			for _, ev := range e.events("imap.fetch")[before:] {
				if ev.Actor == "alice" && ev.Result == audit.OK {
					n++
				}
			}
			if n != 3 { // BODY.PEEK[] of two messages, then BODY[TEXT] of one
				t.Errorf("%d imap.fetch events for imaplib's reads, want 3", n)
			}
		})
	}
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// pyFetchAll logs in with imaplib and prints every message of mailbox support as JSON.
const pyFetchAll = `
import imaplib, json, sys
c = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=30)
c.login(sys.argv[3], sys.argv[4])
c.select("support", readonly=True)
typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
print(json.dumps([d[1].decode("utf-8", "replace") for d in data if isinstance(d, tuple)]))
c.logout()
`

// TestImaplibSeesNoStolenIDsOrBidiNames: through imaplib, a message whose Message-ID an
// earlier one holds carries its own view id (a reply to it reaches its own ticket, issue
// 11.2), and a name with a bidi override arrives neutralised (issue 11.5).
func TestImaplibSeesNoStolenIDsOrBidiNames(t *testing.T) {
	e := newEnv(t)
	first := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	stolen := e.ingest("support", customer2, "Invoice update", "o1@example.net", "Pay to this account.\r\n")
	raw := customerMail(customer, "support@example.com", "invoice", "bidi@example.net",
		"--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/octet-stream\r\n"+
			"Content-Disposition: attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe\r\n\r\nMZ\r\n--B--\r\n",
		"MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=B")
	if _, err := e.tk.Ingest(tickets.Incoming{Queue: "support", Raw: raw, Via: "smtp"}); err != nil {
		t.Fatal(err)
	}
	if first == stolen {
		t.Fatalf("the second message joined ticket %d", first)
	}
	host, port, _ := net.SplitHostPort(e.imapAddr)
	out, err := exec.Command(tool(t, python), "-c", pyFetchAll, host, port, "alice", e.users["alice"]).CombinedOutput()
	if err != nil {
		t.Fatalf("imaplib: %v\n%s", err, out)
	}
	var bodies []string
	if err := json.Unmarshal(out, &bodies); err != nil || len(bodies) != 3 {
		t.Fatalf("imaplib output %q: %v", out, err)
	}
	if !strings.Contains(bodies[0], "Message-ID: <o1@example.net>") {
		t.Errorf("the holder of the id lost it:\n%s", bodies[0])
	}
	if strings.Contains(bodies[1], "<o1@example.net>") || !strings.Contains(bodies[1], fmt.Sprintf("Message-ID: <mailgate-view.%d.1@%s>", stolen, testHost)) {
		t.Errorf("the message reusing the id:\n%s", bodies[1])
	}
	if strings.Contains(bodies[2], "\u202e") || strings.Contains(bodies[2], "%E2%80%AE") || !strings.Contains(bodies[2], "invoicefdp.exe") {
		t.Errorf("the bidi name:\n%s", bodies[2])
	}
}
