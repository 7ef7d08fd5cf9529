package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailgate/audit"
	"mailgate/store"
)

// bin is the mailgate binary built once for all tests: they run it as an admin would.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailgate-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "mailgate")
	build := exec.Command("go", "build", "-race", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build mailgate:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// mailgate runs the binary in dir and waits for it.
func mailgate(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("mailgate %q: %v", args, err)
	}
	return r
}

func TestCheckConfigBadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.toml")
	os.WriteFile(path, []byte(`hostname = "mail.example.com"
data_dir = "data"
key_fiel = "data.key"

[smtp]
max_message_bytes = "big"

[[queue]]
name = "support"
address = "not an address"
`), 0o644)
	r := mailgate(t, dir, "check-config", "-config", path)
	if r.code != 1 {
		t.Fatalf("want exit 1:\n%s", r)
	}
	for _, want := range []string{path + ":3:", `"key_fiel"`, `did you mean "key_file"`, path + ":6:", path + ":10:"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("output lacks %q:\n%s", want, r)
		}
	}
	// serve refuses the same file and starts nothing.
	r = mailgate(t, dir, "serve", "-config", path)
	if r.code == 0 || !strings.Contains(r.stderr, path+":3:") {
		t.Fatalf("serve on a bad config:\n%s", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Fatalf("serve created its data dir from a bad config: %v", err)
	}
	if r := mailgate(t, dir, "check-config", "-config", filepath.Join(dir, "missing.toml")); r.code != 1 {
		t.Fatalf("missing file:\n%s", r)
	}
}

func TestInitThenCheckConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc")
	r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com")
	if r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	for _, want := range []string{
		"example.com.\tIN MX 10 mail.example.com.",
		"v=spf1",
		"mailgate._domainkey.example.com.\tIN TXT ( \"v=DKIM1; k=rsa; p=",
		"mailgate-ed25519._domainkey.example.com.\tIN TXT \"v=DKIM1; k=ed25519; p=",
		"_dmarc.example.com.\tIN TXT \"v=DMARC1;",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("init output lacks %q:\n%s", want, r.stdout)
		}
	}
	for _, f := range []string{"data.key", "dkim-rsa.key", "dkim-ed25519.key", "pgp.key", "tls.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, st.Mode().Perm())
		}
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	if r := mailgate(t, ".", "check-config", "-config", cfg); r.code != 0 || strings.TrimSpace(r.stdout) != "ok" {
		t.Fatalf("check-config on init's output:\n%s", r)
	}
	key, _ := os.ReadFile(filepath.Join(dir, "data.key"))
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code == 0 || !strings.Contains(r.stderr, "refusing to overwrite") {
		t.Fatalf("second init:\n%s", r)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "data.key")); !bytes.Equal(key, again) {
		t.Fatal("second init replaced the data key")
	}
	if r := mailgate(t, ".", "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "mailgate ") {
		t.Fatalf("version:\n%s", r)
	}
}

// daemon is a running `mailgate serve`.
type daemon struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    []string // stdout lines
	stderr bytes.Buffer
	ready  chan struct{}
	done   chan error
}

func startServe(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	return startServeWith(t, dir, nil, args...)
}

func startServeWith(t *testing.T, dir string, attr *syscall.SysProcAttr, args ...string) *daemon {
	t.Helper()
	args = append([]string{"serve", "-listen-smtp", "127.0.0.1:0", "-listen-web", "127.0.0.1:0",
		"-listen-submission", "127.0.0.1:0", "-listen-imap", "127.0.0.1:0", "-listen-metrics", "127.0.0.1:0"}, args...)
	d := &daemon{cmd: exec.Command(bin, args...), ready: make(chan struct{}), done: make(chan error, 1)}
	d.cmd.Dir = dir
	d.cmd.SysProcAttr = attr
	d.cmd.Stderr = &syncWriter{w: &d.stderr, mu: &d.mu}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		readied := false
		for sc.Scan() {
			d.mu.Lock()
			d.out = append(d.out, sc.Text())
			d.mu.Unlock()
			if sc.Text() == "ready" && !readied {
				readied = true
				close(d.ready)
			}
		}
		d.done <- d.cmd.Wait()
	}()
	t.Cleanup(func() { d.cmd.Process.Kill() }) // an error once it has exited; that is fine
	return d
}

type syncWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (d *daemon) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

func (d *daemon) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.out, "\n") + "\n--- stderr:\n" + d.stderr.String()
}

// waitReady waits for the "ready" line; the deadline only guards against a hang.
func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-d.ready:
	case err := <-d.done:
		t.Fatalf("serve exited before ready (%v):\n%s", err, d.output())
	case <-time.After(2 * time.Minute):
		t.Fatalf("serve not ready after 2 minutes:\n%s", d.output())
	}
}

func (d *daemon) line(t *testing.T, re string) []string {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	rx := regexp.MustCompile(re)
	for _, l := range d.out {
		if m := rx.FindStringSubmatch(l); m != nil {
			return m
		}
	}
	t.Fatalf("no line matching %s in:\n%s", re, strings.Join(d.out, "\n"))
	return nil
}

func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, d.output())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("serve did not stop after SIGTERM:\n%s", d.output())
	}
	if !strings.Contains(d.output(), "\nstopped\n") {
		t.Fatalf("no graceful stop:\n%s", d.output())
	}
}

func sendMail(t *testing.T, addr, from, to, subject, body string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "From: Alice <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%d@client.example.org>\r\nDate: %s\r\n\r\n%s\r\n",
		from, to, subject, time.Now().UnixNano(), time.Now().Format(time.RFC1123Z), body)
	if err := w.Close(); err != nil {
		t.Fatalf("DATA not accepted: %v", err)
	}
	c.Quit()
}

// jsonOut runs an admin command with --json and decodes its output.
func jsonOut(t *testing.T, dir string, v any, args ...string) {
	t.Helper()
	r := mailgate(t, dir, append(args, "--json")...)
	if r.code != 0 {
		t.Fatalf("mailgate %q:\n%s", args, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("mailgate %q: %v\n%s", args, err, r)
	}
}

type ticketJSON struct {
	ID       *uint64 `json:"id"`
	Queue    string  `json:"queue"`
	Subject  string  `json:"subject"`
	Status   string  `json:"status"`
	Customer string  `json:"customer"`
	Created  string  `json:"created"`
	Updated  string  `json:"updated"`
	Messages *int    `json:"messages"`
}

func checkTicket(t *testing.T, tk ticketJSON, subject string) {
	t.Helper()
	if tk.ID == nil || *tk.ID == 0 || tk.Queue != "support" || tk.Subject != subject || tk.Status != "new" ||
		tk.Customer != "alice@example.org" || tk.Messages == nil || *tk.Messages != 1 {
		t.Fatalf("ticket fields: %+v", tk)
	}
	for _, ts := range []string{tk.Created, tk.Updated} {
		if _, err := time.Parse(time.RFC3339, ts); err != nil {
			t.Fatalf("time %q is not RFC 3339: %v", ts, err)
		}
	}
}

// TestDevModeEndToEnd runs `mailgate serve` in dev mode as a new user would and drives it with
// a real SMTP client and the admin commands, over the socket and directly.
func TestDevModeEndToEnd(t *testing.T) {
	dir := t.TempDir()
	d := startServe(t, dir)
	d.waitReady(t)

	smtpAddr := d.line(t, `^listening: smtp (127\.0\.0\.1:\d+) \(STARTTLS\)$`)[1]
	webURL := d.line(t, `^listening: web (http://127\.0\.0\.1:\d+/)$`)[1]
	d.line(t, `^listening: submission 127\.0\.0\.1:\d+`)
	d.line(t, `^listening: imap 127\.0\.0\.1:\d+`)
	d.line(t, `^tls certificate sha256: ([0-9A-F]{2}:){31}[0-9A-F]{2}$`)
	password := d.line(t, `^  admin password: (\S+)$`)[1]
	d.line(t, `^  admin TOTP:     otpauth://totp/\S+secret=[A-Z2-7]+`)
	if strings.Contains(d.logs(), password) {
		t.Fatal("the admin password reached the log")
	}
	for _, f := range []string{"data.key", "dkim.key", "pgp.key", "tls.key", "mailgate.db"} {
		if st, err := os.Stat(filepath.Join(dir, "mailgate-data", f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v", f, err, st.Mode())
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "mailgate-data", "control.sock")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v %v", err, st.Mode())
	}

	metricsURL := d.line(t, `^listening: metrics (http://127\.0\.0\.1:\d+/)metrics$`)[1]
	if body := httpGet(t, webURL+"healthz"); strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %q", body)
	}
	if body := httpGet(t, metricsURL+"healthz"); strings.TrimSpace(body) != "ok" {
		t.Fatalf("metrics listener /healthz: %q", body)
	}
	if body := httpGet(t, metricsURL+"metrics"); !strings.Contains(body, "mailgate_") || !strings.Contains(body, `mailgate_connections_max{service="smtp"}`) {
		t.Fatalf("/metrics has no mailgate_ metrics")
	}
	if resp, err := http.Get(webURL + "metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics on the public web listener: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	sendMail(t, smtpAddr, "alice@example.org", "support@localhost", "Where is my order?", "Order 1234 has not arrived.")

	// Through the control socket while the daemon runs.
	var list []ticketJSON
	jsonOut(t, dir, &list, "ticket", "list")
	if len(list) != 1 {
		t.Fatalf("ticket list: %+v", list)
	}
	checkTicket(t, list[0], "Where is my order?")
	id := fmt.Sprint(*list[0].ID)
	if body := httpGet(t, metricsURL+"metrics"); !strings.Contains(body, `mailgate_tickets_threading_total{outcome="new"} 1`) {
		t.Errorf("/metrics does not count the new ticket")
	}

	var show1, show2 map[string]any
	jsonOut(t, dir, &show1, "ticket", "show", id)
	jsonOut(t, dir, &show2, "ticket", "--json", "show", "--json", id)
	if fmt.Sprint(show1["subject"]) != "Where is my order?" || fmt.Sprint(show1["messages"]) != fmt.Sprint(show2["messages"]) {
		t.Fatalf("ticket show in both flag orders:\n%v\n%v", show1, show2)
	}
	msgs, _ := show1["messages"].([]any)
	if len(msgs) != 1 {
		t.Fatalf("messages: %v", show1["messages"])
	}
	m := msgs[0].(map[string]any)
	for _, k := range []string{"direction", "from", "to", "subject", "message_id", "date", "text", "encrypted", "auth", "verified"} {
		if _, ok := m[k]; !ok {
			t.Errorf("message lacks %q: %v", k, m)
		}
	}
	auth, _ := m["auth"].(map[string]any)
	for _, k := range []string{"spf", "dkim", "dmarc"} {
		if _, ok := auth[k].(string); !ok {
			t.Errorf("auth lacks %q: %v", k, m["auth"])
		}
	}
	if m["direction"] != "in" || m["from"] != "alice@example.org" || !strings.Contains(fmt.Sprint(m["text"]), "Order 1234") || m["verified"] != false {
		t.Errorf("message: %v", m)
	}

	// A second daemon on the same data dir fails fast and leaves the first alone.
	r := mailgate(t, dir, "serve", "-listen-smtp", "127.0.0.1:0", "-listen-web", "127.0.0.1:0", "-listen-submission", "none", "-listen-imap", "none")
	if r.code == 0 || !strings.Contains(r.stderr, "already running") {
		t.Fatalf("second serve:\n%s", r)
	}

	// Admin commands over the socket.
	var cred map[string]any
	jsonOut(t, dir, &cred, "agent", "add", "-name", "bob", "-email", "bob@example.org", "-role", "agent", "-queue", "support")
	if s, _ := cred["totp_uri"].(string); !strings.HasPrefix(s, "otpauth://") || cred["password"] == "" {
		t.Fatalf("agent add: %v", cred)
	}
	reply := filepath.Join(dir, "reply.txt")
	os.WriteFile(reply, []byte("It ships tomorrow.\n"), 0o600)
	if r := mailgate(t, dir, "ticket", "reply", id, "-agent", "bob", "-text-file", reply); r.code != 0 {
		t.Fatalf("ticket reply:\n%s", r)
	}
	var outMsg map[string]any
	jsonOut(t, dir, &show1, "ticket", "show", id)
	if msgs, _ := show1["messages"].([]any); len(msgs) != 2 {
		t.Fatalf("after reply: %v", show1["messages"])
	} else {
		outMsg = msgs[1].(map[string]any)
	}
	if outMsg["direction"] != "out" || outMsg["to"] != "alice@example.org" || outMsg["author"] != "bob" {
		t.Fatalf("reply message: %v", outMsg)
	}
	// Dev mode delivers into the outbox folder; the running daemon's queue does it.
	waitFor(t, "the reply in the outbox", func() bool {
		files, _ := filepath.Glob(filepath.Join(dir, "mailgate-data", "outbox", "*.eml"))
		for _, f := range files {
			if b, _ := os.ReadFile(f); bytes.Contains(b, []byte("It ships tomorrow.")) && bytes.Contains(b, []byte("DKIM-Signature:")) {
				return true
			}
		}
		return false
	})
	if r := mailgate(t, dir, "pgp", "export-public"); r.code != 0 || !strings.Contains(r.stdout, "BEGIN PGP PUBLIC KEY BLOCK") {
		t.Fatalf("pgp export-public:\n%s", r)
	}

	// An online backup opens with the same key, and its audit chain verifies.
	backupFile := filepath.Join(t.TempDir(), "backup.tar")
	if r := mailgate(t, dir, "backup", "-out", backupFile); r.code != 0 {
		t.Fatalf("backup:\n%s", r)
	}
	checkBackup(t, filepath.Join(dir, "mailgate-data", "data.key"), backupFile)

	if r := mailgate(t, dir, "audit", "verify"); r.code != 0 {
		t.Fatalf("audit verify while running:\n%s", r)
	}

	d.stop(t)
	if _, err := os.Stat(filepath.Join(dir, "mailgate-data", "control.sock")); !os.IsNotExist(err) {
		t.Errorf("control socket left after stop: %v", err)
	}

	// Directly against the database once the daemon is gone.
	list = nil
	jsonOut(t, dir, &list, "ticket", "list", "-queue", "support")
	if len(list) != 1 || list[0].Subject != "Where is my order?" {
		t.Fatalf("direct ticket list: %+v", list)
	}

	// The audit log shows the socket calls (peer uid and pid) and the direct one, as ctl.
	r = mailgate(t, dir, "audit", "export")
	if r.code != 0 {
		t.Fatalf("audit export:\n%s", r)
	}
	var viaSocket, direct, starts, stops int
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev audit.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("audit export line %q: %v", l, err)
		}
		switch {
		case ev.Action == "ctl.ticket.list" && ev.Actor == "ctl" && strings.HasPrefix(ev.Detail, "uid="):
			viaSocket++
		case ev.Action == "ctl.ticket.list" && ev.Actor == "ctl" && strings.HasPrefix(ev.Detail, "direct "):
			direct++
		case ev.Action == "daemon.start":
			starts++
		case ev.Action == "daemon.stop":
			stops++
		}
		if strings.Contains(l, password) {
			t.Fatal("the admin password is in the audit log")
		}
	}
	if viaSocket != 1 || direct != 1 || starts != 1 || stops != 1 {
		t.Fatalf("audit: %d socket and %d direct ticket lists, %d starts, %d stops:\n%s", viaSocket, direct, starts, stops, r.stdout)
	}
	since := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if r := mailgate(t, dir, "audit", "export", "-since", since); r.code != 0 || r.stdout != "" {
		t.Fatalf("audit export -since the future:\n%s", r)
	}

	// Tamper: edit event 3 with a correctly sealed record; only the chain can tell.
	if r := mailgate(t, dir, "audit", "verify"); r.code != 0 {
		t.Fatalf("audit verify after stop:\n%s", r)
	}
	tamper(t, filepath.Join(dir, "mailgate-data"), 3)
	r = mailgate(t, dir, "audit", "verify")
	if r.code != 1 || !strings.Contains(r.stdout, "seq 3") {
		t.Fatalf("audit verify on a tampered chain:\n%s", r)
	}
	r = mailgate(t, dir, "audit", "verify", "--json")
	var v struct {
		OK     bool   `json:"ok"`
		BadSeq uint64 `json:"bad_seq"`
	}
	if r.code != 1 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.OK || v.BadSeq != 3 {
		t.Fatalf("audit verify --json on a tampered chain:\n%s", r)
	}

	// Restore as the README says: with mailgate stopped, remove the database and its segments
	// and extract the backup into data_dir (same key_file), then audit verify.
	data := filepath.Join(dir, "mailgate-data")
	if err := errors.Join(os.Remove(filepath.Join(data, "mailgate.db")), os.RemoveAll(filepath.Join(data, "mailgate.db.segments"))); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-xf", backupFile, "-C", data).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf: %v\n%s", err, out)
	}
	if r := mailgate(t, dir, "audit", "verify"); r.code != 0 {
		t.Fatalf("audit verify after restore:\n%s", r)
	}
	jsonOut(t, dir, &show1, "ticket", "show", id)
	if msgs, _ := show1["messages"].([]any); len(msgs) != 2 {
		t.Fatalf("restored ticket: %v", show1)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

// waitFor polls cond for what the daemon does in the background; the deadline only guards
// against a hang, it asserts nothing about speed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after a minute", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func openDB(t *testing.T, keyFile, dbFile string) *store.DB {
	t.Helper()
	key, err := store.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(dbFile, key, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func checkBackup(t *testing.T, keyFile, backupFile string) {
	t.Helper()
	// Restored as the README says: extracted into an empty data directory.
	restored := t.TempDir()
	if out, err := exec.Command("tar", "-xf", backupFile, "-C", restored).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf %s: %v\n%s", backupFile, err, out)
	}
	db := openDB(t, keyFile, filepath.Join(restored, "mailgate.db"))
	defer db.Close()
	l, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	n, err := l.Verify()
	if err != nil || n == 0 {
		t.Fatalf("backup's audit chain: %d events, %v", n, err)
	}
}

func tamper(t *testing.T, dataDir string, seq uint64) {
	t.Helper()
	db := openDB(t, filepath.Join(dataDir, "data.key"), filepath.Join(dataDir, "mailgate.db"))
	defer db.Close()
	editEvent(t, db, seq, "detail", "edited")
}

// editEvent sets field of audit event seq to value and seals the record back with the key,
// without rehashing the chain. The record is read through export (the stored form is the audit
// package's own) and written back as JSON, the form older versions stored, which is still read.
func editEvent(t *testing.T, db *store.DB, seq uint64, field, value string) {
	t.Helper()
	l, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := l.Export(&out, audit.Filter{}); err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		if r["seq"] == float64(seq) {
			rec = r
		}
	}
	if rec == nil {
		t.Fatalf("no audit event %d in:\n%s", seq, out.String())
	}
	if rec[field] == value {
		t.Fatalf("event %d already has %s %q", seq, field, value)
	}
	rec[field] = value
	b, _ := json.Marshal(rec)
	if err := db.Update(func(tx *store.Tx) error { return tx.Put(audit.Bucket, store.U64(seq), b) }); err != nil {
		t.Fatal(err)
	}
}

func TestAdminCommandErrors(t *testing.T) {
	dir := t.TempDir()
	// No daemon, no dev data dir here, no -config.
	r := mailgate(t, dir, "ticket", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "no -config given") {
		t.Fatalf("no data dir:\n%s", r)
	}
	for _, args := range [][]string{
		{"ticket", "show"}, {"ticket", "show", "x"}, {"ticket", "show", "1", "2"}, {"backup"},
		{"agent", "frobnicate"}, {"audit", "export", "-since", "yesterday"}, {"ticket", "list", "--nope"},
	} {
		if r := mailgate(t, dir, args...); r.code != 2 {
			t.Errorf("%q: want usage error (exit 2):\n%s", args, r)
		}
	}
}

func TestServeStoreErrors(t *testing.T) {
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	// Make the database with the right key, then swap the key.
	dbFile := filepath.Join(dir, "data", "mailgate.db")
	db := openDB(t, filepath.Join(dir, "data.key"), dbFile)
	db.Close()
	os.Rename(filepath.Join(dir, "data.key"), filepath.Join(dir, "data.key.orig"))
	if err := store.WriteNewKey(filepath.Join(dir, "data.key")); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(dbFile)
	r := mailgate(t, dir, "serve", "-config", cfg, "-listen-smtp", "127.0.0.1:0", "-listen-web", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, "does not open the database") {
		t.Fatalf("wrong key:\n%s", r)
	}
	r = mailgate(t, dir, "audit", "verify", "-config", cfg)
	if r.code == 0 || !strings.Contains(r.stderr, "does not open the database") {
		t.Fatalf("admin command with the wrong key:\n%s", r)
	}
	if after, _ := os.ReadFile(dbFile); !bytes.Equal(before, after) {
		t.Fatal("the database was written to under the wrong key")
	}
	os.Rename(filepath.Join(dir, "data.key.orig"), filepath.Join(dir, "data.key"))

	// A truncated database file: a clear error, no panic, the file left as it was.
	b, _ := os.ReadFile(dbFile)
	os.WriteFile(dbFile, b[:1000], 0o600)
	r = mailgate(t, dir, "serve", "-config", cfg, "-listen-smtp", "127.0.0.1:0", "-listen-web", "127.0.0.1:0")
	if r.code == 0 || strings.Contains(r.stderr, "panic") || !strings.Contains(r.stderr, dbFile) || !strings.Contains(r.stderr, "restore") {
		t.Fatalf("truncated database:\n%s", r)
	}
	if after, _ := os.ReadFile(dbFile); len(after) != 1000 {
		t.Fatalf("the truncated file was written to (%d bytes)", len(after))
	}
}

// TestServeWithConfig runs an installation made by `init`: JSON logs, SIGHUP reloads (a bad
// file changes nothing), and SIGTERM drains: a transaction under way still gets its 250 while
// a new connection is turned away with 421.
func TestServeWithConfig(t *testing.T) {
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	orig, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(orig), `format = "text"`, `format = "json"`, 1)
	os.WriteFile(cfg, []byte(text), 0o640)

	d := startServe(t, dir, "-config", cfg)
	d.waitReady(t)
	smtpAddr := d.line(t, `^listening: smtp (127\.0\.0\.1:\d+) \(STARTTLS\)$`)[1]
	d.line(t, `^listening: web https://127\.0\.0\.1:\d+/$`)

	// A good file: reloaded. A bad one: refused, and the daemon keeps running.
	os.WriteFile(cfg, []byte(strings.Replace(text, `level = "info"`, `level = "debug"`, 1)), 0o640)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload in the log", func() bool { return strings.Contains(d.logs(), "config reloaded") })
	os.WriteFile(cfg, []byte(text+"\nbogus = 1\n"), 0o640)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the refused reload in the log", func() bool { return strings.Contains(d.logs(), "config not reloaded") })
	os.WriteFile(cfg, []byte(text), 0o640)

	// A transaction under way when SIGTERM arrives is finished; new connections get 421.
	c, err := smtp.Dial(smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("support@example.com", nil); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "421 for a new connection while draining", func() bool {
		nc, err := smtp.Dial(smtpAddr)
		if err != nil {
			var se *smtp.SMTPError
			return errors.As(err, &se) && se.Code == 421
		}
		defer nc.Close()
		err = nc.Hello("late.example.org")
		var se *smtp.SMTPError
		return errors.As(err, &se) && se.Code == 421
	})
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA while draining: %v", err)
	}
	fmt.Fprintf(w, "From: alice@example.org\r\nTo: support@example.com\r\nSubject: in flight\r\nMessage-ID: <inflight@example.org>\r\n\r\nsent during shutdown\r\n")
	if err := w.Close(); err != nil {
		t.Fatalf("the transaction under way was not accepted: %v", err)
	}
	c.Quit()
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, d.output())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("serve did not stop:\n%s", d.output())
	}

	for _, l := range strings.Split(strings.TrimSpace(d.logs()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil || m["msg"] == nil || m["level"] == nil {
			t.Fatalf("log line is not slog JSON: %q", l)
		}
	}
	var list []ticketJSON
	jsonOut(t, dir, &list, "ticket", "list", "-config", cfg)
	if len(list) != 1 || list[0].Subject != "in flight" {
		t.Fatalf("the message accepted while draining: %+v", list)
	}
	r := mailgate(t, dir, "audit", "export", "-config", cfg)
	var reloads []string
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev audit.Event
		json.Unmarshal([]byte(l), &ev)
		if ev.Action == "config.reload" {
			reloads = append(reloads, ev.Result)
		}
	}
	if strings.Join(reloads, ",") != "ok,failed" {
		t.Fatalf("config.reload events: %v\n%s", reloads, r.stdout)
	}
}
