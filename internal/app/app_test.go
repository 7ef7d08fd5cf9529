package app

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailgate/audit"
	"mailgate/pgp"
	"mailgate/store"
	"mailgate/tickets"
)

func TestParseArgsFlagsAnywhere(t *testing.T) {
	cases := []struct {
		args []string
		pos  []string
		json bool
		out  string
	}{
		{[]string{"7", "--json"}, []string{"7"}, true, ""},
		{[]string{"--json", "7"}, []string{"7"}, true, ""},
		{[]string{"-json", "7", "-out", "x"}, []string{"7"}, true, "x"},
		{[]string{"7", "--out=y", "8"}, []string{"7", "8"}, false, "y"},
		{[]string{"--out", "-", "7"}, []string{"7"}, false, "-"},
		{[]string{"7", "--", "--json"}, []string{"7", "--json"}, false, ""},
		{[]string{"-json=false", "7"}, []string{"7"}, false, ""},
	}
	for _, c := range cases {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		j := fs.Bool("json", false, "")
		out := fs.String("out", "", "")
		pos, err := ParseArgs(fs, c.args)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if !reflect.DeepEqual(pos, c.pos) || *j != c.json || *out != c.out {
			t.Errorf("%q: pos %q json %v out %q; want %q %v %q", c.args, pos, *j, *out, c.pos, c.json, c.out)
		}
	}
	for _, bad := range [][]string{{"--nope"}, {"7", "-out"}, {"---json"}} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(new(strings.Builder))
		fs.String("out", "", "")
		if _, err := ParseArgs(fs, bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestStringsFlag(t *testing.T) {
	var s Strings
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Var(&s, "queue", "")
	if _, err := ParseArgs(fs, []string{"-queue", "a", "--queue=b,c"}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual([]string(s), []string{"a", "b", "c"}) {
		t.Fatalf("got %q", s)
	}
}

// newDevApp opens a dev-mode App in a temp dir, as `mailgate serve` would on first start.
func newDevApp(t *testing.T) *App {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	cfg, err := DevConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := PrepareDev(cfg); err != nil {
		t.Fatal(err)
	}
	a, err := Open(cfg, Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func dispatch(t *testing.T, a *App, cmd string, args any) Response {
	t.Helper()
	req := Request{Cmd: cmd}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			t.Fatal(err)
		}
		req.Args = b
	}
	return a.Dispatch(context.Background(), Caller{Remote: "ctl", Detail: "test"}, req)
}

func TestPrepareDevIsIdempotentAndPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cfg, err := DevConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := PrepareDev(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(s1.Created) != 4 || s1.TLSFingerprint == "" {
		t.Fatalf("first start created %q, fingerprint %q", s1.Created, s1.TLSFingerprint)
	}
	for _, f := range []string{cfg.KeyFile, cfg.Outbound.DKIMKeyFile, cfg.PGP.KeyFile, cfg.SMTP.TLSKey} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", f, err, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v", st.Mode().Perm())
	}
	key1, _ := os.ReadFile(cfg.KeyFile)
	s2, err := PrepareDev(cfg)
	if err != nil {
		t.Fatal(err)
	}
	key2, _ := os.ReadFile(cfg.KeyFile)
	if len(s2.Created) != 0 || s2.TLSFingerprint != s1.TLSFingerprint || string(key1) != string(key2) {
		t.Fatalf("second start changed files: created %q", s2.Created)
	}
}

func TestPrepareDevRefusesNewKeyForOldDatabase(t *testing.T) {
	a := newDevApp(t)
	a.Close()
	if err := os.Remove(a.Cfg.KeyFile); err != nil {
		t.Fatal(err)
	}
	_, err := PrepareDev(a.Cfg)
	if err == nil || !strings.Contains(err.Error(), "missing but the database") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(a.Cfg.KeyFile); err == nil {
		t.Fatal("a new key was written beside the old database")
	}
}

func TestOpenStoreErrors(t *testing.T) {
	a := newDevApp(t)
	// Held by a (open): a second opener is told it is running.
	_, err := OpenStore(a.Cfg, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("locked: %v", err)
	}
	a.Close()

	// Another key: says the key does not open the database.
	other := *a.Cfg
	other.KeyFile = filepath.Join(t.TempDir(), "other.key")
	if err := store.WriteNewKey(other.KeyFile); err != nil {
		t.Fatal(err)
	}
	_, err = OpenStore(&other, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "does not open the database") {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestDispatchAuditsEveryCommandAsCtl(t *testing.T) {
	a := newDevApp(t)
	r := dispatch(t, a, "agent.add", AgentAddArgs{Name: "bob", Email: "bob@example.com", Role: "agent", Queues: []string{"support"}})
	if !r.OK {
		t.Fatalf("agent add: %+v", r)
	}
	var cred struct {
		Password      string   `json:"password"`
		TOTPURI       string   `json:"totp_uri"`
		RecoveryCodes []string `json:"recovery_codes"`
	}
	if err := json.Unmarshal(r.Data, &cred); err != nil || cred.Password == "" || !strings.HasPrefix(cred.TOTPURI, "otpauth://") || len(cred.RecoveryCodes) != 10 {
		t.Fatalf("agent add data %s (%v)", r.Data, err)
	}
	if r := dispatch(t, a, "agent.add", AgentAddArgs{Name: "bob", Email: "b@example.com", Role: "agent"}); r.OK || r.Exit == 0 || r.Error == "" {
		t.Fatalf("duplicate agent accepted: %+v", r)
	}
	if r := dispatch(t, a, "agent.app-password", AgentArgs{Name: "bob"}); !r.OK || !strings.Contains(string(r.Data), `"password"`) {
		t.Fatalf("app-password: %+v", r)
	}
	if r := dispatch(t, a, "nope", nil); r.OK || r.Exit != 2 {
		t.Fatalf("unknown command: %+v", r)
	}
	if r := dispatch(t, a, "ticket.show", map[string]any{"id": 1, "extra": true}); r.OK || !strings.Contains(r.Error, "bad arguments") {
		t.Fatalf("unknown argument accepted: %+v", r)
	}

	evs, err := a.Audit.Query(audit.Filter{Actor: "ctl", Limit: 100}, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, ev := range evs {
		if ev.Remote != "ctl" {
			t.Errorf("event %d remote %q", ev.Seq, ev.Remote)
		}
		if strings.Contains(ev.Detail, cred.Password) {
			t.Errorf("event %d leaks the password", ev.Seq)
		}
		if _, seen := got[ev.Action]; !seen {
			got[ev.Action] = ev.Result // newest first: the last call of each action
		}
	}
	for action, result := range map[string]string{
		"ctl.agent.add": "failed", "ctl.agent.app-password": "ok", "ctl.ticket.show": "failed",
	} {
		if got[action] != result {
			t.Errorf("%s: result %q, want %q (all: %v)", action, got[action], result, got)
		}
	}
}

func TestAuditVerifyNamesTheBadSeq(t *testing.T) {
	a := newDevApp(t)
	for i := 0; i < 3; i++ {
		if err := a.Audit.Append(audit.Event{Actor: "t", Action: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if r := dispatch(t, a, "audit.verify", nil); !r.OK || r.Exit != 0 {
		t.Fatalf("intact chain: %+v", r)
	}
	// Edit event 2 with valid sealing: only the chain can tell. The event is read through export
	// (the stored form is the audit package's own) and sealed back as JSON, the form older
	// versions stored, which is still read.
	var out bytes.Buffer
	if err := a.Audit.Export(&out, audit.Filter{}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 2 || !strings.Contains(lines[1], `"seq":2,`) || !strings.Contains(lines[1], `"action":"x"`) {
		t.Fatalf("export:\n%s", out.String())
	}
	edited := strings.Replace(lines[1], `"action":"x"`, `"action":"y"`, 1)
	if err := a.DB.Update(func(tx *store.Tx) error { return tx.Put(audit.Bucket, store.U64(2), []byte(edited)) }); err != nil {
		t.Fatal(err)
	}
	r := dispatch(t, a, "audit.verify", nil)
	if r.OK || r.Exit != 1 || !strings.Contains(r.Text, "seq 2") {
		t.Fatalf("tampered chain: %+v", r)
	}
	var d struct {
		BadSeq uint64 `json:"bad_seq"`
	}
	if json.Unmarshal(r.Data, &d); d.BadSeq != 2 {
		t.Fatalf("bad_seq %d in %s", d.BadSeq, r.Data)
	}
}

func TestBackupRefusesTheLiveFile(t *testing.T) {
	a := newDevApp(t)
	for _, out := range []string{a.DB.Path(), "relative.db", filepath.Join(t.TempDir(), "no", "such", "dir.db")} {
		if r := dispatch(t, a, "backup", BackupArgs{Out: out}); r.OK {
			t.Errorf("backup to %s accepted", out)
		}
	}
	out := filepath.Join(t.TempDir(), "copy.db")
	if r := dispatch(t, a, "backup", BackupArgs{Out: out}); !r.OK {
		t.Fatalf("backup: %+v", r)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", err, st.Mode())
	}
}

func TestControlSocket(t *testing.T) {
	a := newDevApp(t)
	sock := SocketPath(a.Cfg)
	if _, err := Call(context.Background(), sock, Request{Cmd: "agent.list"}); err == nil || !strings.Contains(err.Error(), ErrNoDaemon.Error()) {
		t.Fatalf("no daemon: %v", err)
	}
	// A stale socket file (a crashed daemon) is also "no daemon", and is replaced.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := Call(context.Background(), sock, Request{Cmd: "agent.list"}); err == nil || !strings.Contains(err.Error(), ErrNoDaemon.Error()) {
		t.Fatalf("stale socket: %v", err)
	}
	ln, err := ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v)", st.Mode(), err)
	}
	ctl := a.ServeControl(ln)
	resp, err := Call(context.Background(), sock, Request{Cmd: "audit.verify"})
	if err != nil || !resp.OK {
		t.Fatalf("call: %+v %v", resp, err)
	}
	evs, _ := a.Audit.Query(audit.Filter{Action: "ctl.audit.verify", Limit: 1}, 0)
	if len(evs) != 1 || !strings.Contains(evs[0].Detail, "uid=") || !strings.Contains(evs[0].Detail, "pid=") {
		t.Fatalf("audit event of a socket call: %+v", evs)
	}
	if err := ctl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// TestControlSocketRefusesOtherUsers runs a client as another uid against a socket whose file
// mode would let it in, so only the SO_PEERCRED check stands in the way.
func TestControlSocketRefusesOtherUsers(t *testing.T) {
	if os.Getenv("MAILGATE_TEST_PEER") != "" {
		resp, err := Call(context.Background(), os.Getenv("MAILGATE_TEST_PEER"), Request{Cmd: "agent.list"})
		if err != nil {
			os.Stdout.WriteString("ERR " + err.Error())
			os.Exit(3)
		}
		b, _ := json.Marshal(resp)
		os.Stdout.Write(b)
		os.Exit(0)
	}
	if os.Getuid() != 0 {
		t.Skip("running a peer under another uid needs root (CI runs as root)")
	}
	a := newDevApp(t)
	dir, err := os.MkdirTemp("", "mgpeer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	os.Chmod(sock, 0o777)
	ctl := a.ServeControl(ln)
	defer ctl.Close()

	// The test binary sits in a private build dir; the peer runs a copy from dir.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "peer.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestControlSocketRefusesOtherUsers$")
	cmd.Env = append(os.Environ(), "MAILGATE_TEST_PEER="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("peer as uid 65534: %v: %s", err, out)
	}
	var resp Response
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("peer output %q: %v", out, err)
	}
	if resp.OK || !strings.Contains(resp.Error, "only the user mailgate runs as") {
		t.Fatalf("another uid was served: %+v", resp)
	}
	evs, _ := a.Audit.Query(audit.Filter{Action: "ctl.agent.list", Limit: 1}, 0)
	if len(evs) != 0 {
		t.Fatalf("refused call ran: %+v", evs)
	}
	// Issue 11.8: the refusal itself is on record.
	evs, _ = a.Audit.Query(audit.Filter{Action: "ctl.connect", Result: audit.Denied}, 0)
	if len(evs) != 1 || !strings.Contains(evs[0].Detail, "peer uid=65534") {
		t.Fatalf("refused peer not audited: %+v", evs)
	}
}

func TestInitRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pgp.key"), []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	err := Init(dir, "example.com", &out)
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("got %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("a refused init wrote files: %v", entries)
	}
	if err := Init(t.TempDir(), "not a domain", &out); err == nil {
		t.Fatal("bad domain accepted")
	}
}

func TestDNSRecordsSplitLongTXT(t *testing.T) {
	long := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 392)
	s := DNSRecords("example.com", "mail.example.com", []DKIMRecord{{"mailgate", long}, {"mailgate-ed25519", "v=DKIM1; k=ed25519; p=abc"}}, nil)
	for _, want := range []string{
		"example.com.\tIN MX 10 mail.example.com.",
		`example.com.	IN TXT "v=spf1 mx -all"`,
		"mailgate._domainkey.example.com.\tIN TXT ( \"v=DKIM1; k=rsa; p=AAA",
		`mailgate-ed25519._domainkey.example.com.	IN TXT "v=DKIM1; k=ed25519; p=abc"`,
		`_dmarc.example.com.	IN TXT "v=DMARC1; p=none`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q in\n%s", want, s)
		}
	}
	for _, line := range strings.Split(s, "\n") {
		if !strings.Contains(line, "IN TXT") {
			continue
		}
		for _, part := range strings.Split(line, `"`) {
			if len(part) > 255 {
				t.Errorf("TXT string of %d bytes", len(part))
			}
		}
	}
}

func TestAgentAndPGPCommands(t *testing.T) {
	a := newDevApp(t)
	if _, _, _, err := a.Access.EnsureAdmin(DevAdminName, DevAdminEmail); err != nil {
		t.Fatal(err)
	}
	if r := dispatch(t, a, "agent.add", AgentAddArgs{Name: "carol", Email: "carol@example.org", Role: "auditor"}); !r.OK {
		t.Fatalf("add: %+v", r)
	}
	r := dispatch(t, a, "agent.reset-mfa", AgentArgs{Name: "carol"})
	if !r.OK || !strings.Contains(string(r.Data), "otpauth://") {
		t.Fatalf("reset-mfa: %+v", r)
	}
	if r := dispatch(t, a, "agent.disable", AgentArgs{Name: "carol"}); !r.OK {
		t.Fatalf("disable: %+v", r)
	}
	// The only admin cannot be disabled: that would lock everybody out.
	if r := dispatch(t, a, "agent.disable", AgentArgs{Name: DevAdminName}); r.OK || !strings.Contains(r.Error, "no enabled admin") {
		t.Fatalf("disable the last admin: %+v", r)
	}
	r = dispatch(t, a, "agent.list", nil)
	var agents []struct {
		Name     string `json:"name"`
		Disabled bool   `json:"disabled"`
	}
	if err := json.Unmarshal(r.Data, &agents); err != nil || len(agents) != 2 || agents[1].Name != "carol" || !agents[1].Disabled {
		t.Fatalf("list: %s (%v)", r.Data, err)
	}
	if !strings.Contains(r.Text, "disabled") {
		t.Fatalf("list text:\n%s", r.Text)
	}
	// A disabled agent cannot reply through the admin command either.
	r = dispatch(t, a, "ticket.reply", TicketReplyArgs{ID: 1, Agent: "carol", Text: "hi"})
	if r.OK || !strings.Contains(r.Error, "disabled") {
		t.Fatalf("reply as a disabled agent: %+v", r)
	}

	// A customer key: the public half of a fresh key with the customer's address.
	armored, err := pgp.GenerateKey("Dave", "dave@example.org")
	if err != nil {
		t.Fatal(err)
	}
	k, err := pgp.ParseKey(armored)
	if err != nil {
		t.Fatal(err)
	}
	r = dispatch(t, a, "pgp.import", PGPImportArgs{Email: "dave@example.org", Key: string(k.ArmoredPublic())})
	if !r.OK || !strings.Contains(string(r.Data), k.Fingerprint()) {
		t.Fatalf("pgp import: %+v", r)
	}
	if _, info, err := a.Keyring.Lookup("dave@example.org"); err != nil || info.Fingerprint != k.Fingerprint() {
		t.Fatalf("imported key: %+v %v", info, err)
	}
	if r := dispatch(t, a, "pgp.import", PGPImportArgs{Email: "eve@example.org", Key: string(k.ArmoredPublic())}); r.OK {
		t.Fatal("a key without a user ID for the address was imported")
	}
	r = dispatch(t, a, "pgp.export-public", nil)
	if !r.OK || !strings.HasPrefix(r.Text, "-----BEGIN PGP PUBLIC KEY BLOCK-----") || !strings.Contains(string(r.Data), a.Gateway.Fingerprint()) {
		t.Fatalf("export-public: %+v", r)
	}
}

func TestTicketPurge(t *testing.T) {
	a := newDevApp(t)
	res, err := a.Tickets.Ingest(tickets.Incoming{Queue: "support", Via: "smtp", MailFrom: "alice@example.org",
		Raw: []byte("From: alice@example.org\r\nTo: support@localhost\r\nSubject: forget me\r\nMessage-ID: <p1@example.org>\r\n\r\nplease\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	if r := dispatch(t, a, "ticket.show", TicketArgs{ID: res.Ticket}); !r.OK {
		t.Fatalf("show before purge: %+v", r)
	}
	if r := dispatch(t, a, "ticket.purge", TicketArgs{ID: res.Ticket}); !r.OK {
		t.Fatalf("purge: %+v", r)
	}
	if r := dispatch(t, a, "ticket.show", TicketArgs{ID: res.Ticket}); r.OK {
		t.Fatalf("show after purge: %+v", r)
	}
	if r := dispatch(t, a, "audit.verify", nil); !r.OK {
		t.Fatalf("audit after purge: %+v", r)
	}
}
