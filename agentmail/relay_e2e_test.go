package agentmail

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"mailgate/audit"
	"mailgate/outbound"
	"mailgate/tickets"
)

// relaySink is Debian's postfix smtp-sink on a loopback port, the relay a real outbound talks
// to: an SMTP server we did not write, dumping each transaction into a file.
type relaySink struct {
	addr, dir string
	cmd       *exec.Cmd
}

func startRelaySink(t *testing.T) *relaySink {
	t.Helper()
	bin := "/usr/sbin/smtp-sink"
	if p, err := exec.LookPath("smtp-sink"); err == nil {
		bin = p
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("smtp-sink (Debian package postfix) is required for this end-to-end test: %v", err)
	}
	// A port that was free a moment ago: smtp-sink takes an address, not a listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := &relaySink{addr: addr, dir: t.TempDir()}
	args := []string{"-d", filepath.Join(s.dir, "%Y%m%d%H%M%S.")}
	if os.Geteuid() == 0 {
		// smtp-sink will not run as root without -u; it writes only into the temp dir.
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "-u", u.Username)
	}
	s.cmd = exec.Command(bin, append(args, addr, "10")...)
	var stderr bytes.Buffer
	s.cmd.Stderr = &stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start smtp-sink: %v", err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	})
	for deadline := time.Now().Add(20 * time.Second); ; { // a hang guard, not a speed check
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink did not listen on %s: %v\n%s", addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sunk is one transaction smtp-sink stored: its envelope and the message with CRLF restored.
type sunk struct {
	mailFrom string
	rcpts    []string
	data     []byte
}

// stored reads every transaction smtp-sink dumped. A dump is smtp-sink's X-*-Args lines, its
// own Received header (with continuation lines), then the message with LF line ends and one
// empty line appended.
func (s *relaySink) stored(t *testing.T) []sunk {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(s.dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []sunk
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m sunk
		lines := strings.SplitAfter(string(b), "\n")
		i := 0
		for ; i < len(lines) && !strings.HasPrefix(lines[i], "Received: "); i++ {
			if v, ok := strings.CutPrefix(lines[i], "X-Mail-Args: "); ok {
				m.mailFrom = strings.Fields(v)[0]
			}
			if v, ok := strings.CutPrefix(lines[i], "X-Rcpt-Args: "); ok {
				m.rcpts = append(m.rcpts, strings.Fields(v)[0])
			}
		}
		if i == len(lines) {
			t.Fatalf("%s: no Received line in smtp-sink's dump:\n%s", f, b)
		}
		for i++; i < len(lines) && (strings.HasPrefix(lines[i], " ") || strings.HasPrefix(lines[i], "\t")); i++ {
		}
		msg := strings.TrimSuffix(strings.Join(lines[i:], ""), "\n")
		m.data = []byte(strings.ReplaceAll(msg, "\n", "\r\n"))
		out = append(out, m)
	}
	return out
}

// dkimCheck verifies every DKIM-Signature of msg with Debian's python3-dkim, which asks the
// test's records instead of DNS.
const dkimCheck = `
import sys, json, dkim
msg = open(sys.argv[1], 'rb').read()
recs = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    n = (name.decode() if isinstance(name, bytes) else name).rstrip('.').lower()
    r = recs.get(n)
    return r.encode() if r is not None else None
d = dkim.DKIM(msg)
n = sum(1 for k, v in d.headers if k.lower() == b'dkim-signature')
res = []
for i in range(n):
    try:
        res.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
    except Exception as ex:
        print(json.dumps({"error": str(ex)}), file=sys.stderr)
        res.append(False)
print(json.dumps(res))
`

func dkimVerify(t *testing.T, msg []byte, records map[string]string) []bool {
	t.Helper()
	py := tool(t, python)
	dir := t.TempDir()
	mf, rf := filepath.Join(dir, "msg.eml"), filepath.Join(dir, "dns.json")
	rj, _ := json.Marshal(records)
	if err := os.WriteFile(mf, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rf, rj, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-c", dkimCheck, mf, rf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3-dkim (Debian package python3-dkim must be installed): %v\n%s", err, stderr.String())
	}
	var res []bool
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python3-dkim output %q: %v", out, err)
	}
	return res
}

// waitSent waits for the outbound attempt of ticket id's message seq and fails unless it was sent.
func (e *env) waitSent(t *testing.T, id uint64, seq int) outbound.Attempt {
	t.Helper()
	timeout := time.After(30 * time.Second) // a hang guard, not a speed check
	for {
		select {
		case a := <-e.attempts:
			if a.Ticket != id || a.Seq != seq {
				continue
			}
			if a.Outcome != "sent" {
				t.Fatalf("delivery to the relay: %+v", a)
			}
			return a
		case <-timeout:
			t.Fatalf("ticket %d message %d never reached the relay", id, seq)
		}
	}
}

// TestSubmissionReachesRelaySigned is issue 7's end-to-end path: an agent submits a reply with
// swaks (AUTH PLAIN on loopback), the real outbound delivers it to smtp-sink as the relay
// (relay_tls = "none" on loopback), and the bytes the relay got verify with python3-dkim and
// come from the queue address to the customer.
func TestSubmissionReachesRelaySigned(t *testing.T) {
	swaks := tool(t, "swaks")
	sink := startRelaySink(t)
	e := newEnv(t)
	e.cfg.Outbound.Relay, e.cfg.Outbound.RelayTLS = sink.addr, "none"
	e.restart() // outbound now relays to smtp-sink instead of the outbox
	if e.ob.Outbox() != "" {
		t.Fatalf("outbound still writes to the outbox %s", e.ob.Outbox())
	}
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")

	msg := agentReply("alice@example.com", customer, "o1@example.net", "a1@example.com",
		"Your parcel ships today.\r\n\r\nAlice\r\n")
	file := filepath.Join(t.TempDir(), "reply.eml")
	if err := os.WriteFile(file, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(swaks, "--server", e.subAddr, "--ehlo", "client.example.com",
		"--auth", "PLAIN", "--auth-user", "alice", "--auth-password", e.users["alice"],
		"--from", "alice@example.com", "--to", customer, "--data", "@"+file).CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	e.waitSent(t, id, 2)

	got := sink.stored(t)
	if len(got) != 1 {
		t.Fatalf("smtp-sink stored %d messages, want 1", len(got))
	}
	s := got[0]
	if s.mailFrom != "<support@example.com>" || strings.Join(s.rcpts, ",") != "<"+customer+">" {
		t.Errorf("envelope: MAIL FROM %s, RCPT TO %v; want <support@example.com> to <%s>", s.mailFrom, s.rcpts, customer)
	}
	m, err := mail.ReadMessage(bytes.NewReader(s.data))
	if err != nil {
		t.Fatalf("the relayed message does not parse: %v\n%s", err, s.data)
	}
	from, err := mail.ParseAddress(m.Header.Get("From"))
	if err != nil || from.Address != "support@example.com" {
		t.Errorf("From: %q (%v), want the queue address support@example.com", m.Header.Get("From"), err)
	}
	to, err := mail.ParseAddressList(m.Header.Get("To"))
	if err != nil || len(to) != 1 || to[0].Address != customer {
		t.Errorf("To: %q (%v), want %s", m.Header.Get("To"), err, customer)
	}
	if irt := m.Header.Get("In-Reply-To"); irt != "<o1@example.net>" {
		t.Errorf("In-Reply-To: %q", irt)
	}
	if !contains(s.data, "Your parcel ships today.") {
		t.Errorf("the relayed message lacks the reply text:\n%s", s.data)
	}
	if contains(s.data, "alice@example.com") {
		t.Errorf("the agent's own address leaked to the customer:\n%s", s.data)
	}

	// The independent verifier, with the test's key as DNS.
	records := map[string]string{}
	for _, k := range e.ob.DKIMKeys() {
		records[k.RecordName()] = k.Record()
	}
	if res := dkimVerify(t, s.data, records); len(res) == 0 || slices.Contains(res, false) {
		t.Errorf("python3-dkim on the relayed bytes: %v, want every signature (at least one) to verify\n%s", res, s.data)
	}
	// The same bytes with one word of the body changed must not verify: the check above can fail.
	tampered := bytes.Replace(s.data, []byte("ships today"), []byte("ships Friday"), 1)
	if res := dkimVerify(t, tampered, records); len(res) == 0 || slices.Contains(res, true) {
		t.Errorf("python3-dkim verifies a changed body: %v", res)
	}

	msgs := e.thread(id)
	if len(msgs) != 2 || msgs[1].Direction != tickets.Out || msgs[1].Author != "alice" || msgs[1].Delivery != "sent" {
		t.Fatalf("the ticket after the relay took the reply: %+v", msgs)
	}
	var replied bool
	for _, ev := range e.events("ticket.reply") {
		replied = replied || (ev.Actor == "alice" && ev.Result == audit.OK && ev.Object == fmt.Sprintf("ticket/%d", id))
	}
	if !replied {
		t.Error("no ticket.reply event by alice")
	}
}
