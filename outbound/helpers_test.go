package outbound

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/config"
	"mailgate/internal/testutil"
	"mailgate/pgp"
	"mailgate/store"
	"mailgate/tickets"
)

// One RSA and one Ed25519 key for the whole test binary: RSA generation is slow.
var (
	keysOnce      sync.Once
	rsaPEM, edPEM []byte
	rsaTXT, edTXT string
	keysErr       error
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		if rsaPEM, rsaTXT, keysErr = GenerateDKIMKey("rsa"); keysErr != nil {
			return
		}
		edPEM, edTXT, keysErr = GenerateDKIMKey("ed25519")
	})
	if keysErr != nil {
		t.Fatal(keysErr)
	}
}

type clock = testutil.Clock

// env is one mailgate data dir with store, audit log, tickets and an Outbound.
type env struct {
	t        testing.TB
	dir      string
	key      []byte
	cfg      *config.Config
	db       *store.DB
	log      *audit.Log
	tk       *tickets.Service
	ob       *Outbound
	clock    *clock
	opts     Options
	attempts chan Attempt
	autoAck  bool
	// pgp: a gateway key (made once per env) and a customer keyring on the store.
	pgp     bool
	gateway *pgp.Key
	keyring *pgp.Keyring
	keyNow  *clock
}

var admin = access.Actor{Name: "alice", Role: access.RoleAdmin, Remote: "test"}

const (
	testHost   = "mail.example.com"
	testDomain = "example.com"
	queueAddr  = "support@example.com"
	customer   = "cust@example.net"
)

func newEnv(t testing.TB, mut func(*config.Config)) *env {
	t.Helper()
	return newEnvWith(t, mut, nil)
}

// newEnvWith also lets the test change the Options (RootCAs, AutoAckPerHour…).
func newEnvWith(t testing.TB, mut func(*config.Config), omut func(*env, *Options)) *env {
	t.Helper()
	testKeys(t)
	dir := t.TempDir()
	e := &env{t: t, dir: dir, key: make([]byte, store.KeySize), attempts: make(chan Attempt, 1000),
		clock: testutil.NewClock(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))}
	rand.Read(e.key)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := config.Default()
	cfg.Hostname = testHost
	cfg.DataDir = dir
	cfg.Outbound.DKIMDomain = testDomain
	cfg.Outbound.DKIMKeyFile = write("dkim-rsa.key", rsaPEM)
	cfg.Outbound.DKIMEd25519KeyFile = write("dkim-ed25519.key", edPEM)
	cfg.PGP.Encrypt = "never"
	if mut != nil {
		mut(cfg)
	}
	e.cfg = cfg
	e.opts = Options{Now: e.clock.Now, Observe: func(a Attempt) { e.attempts <- a },
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}
	if omut != nil {
		omut(e, &e.opts)
	}
	e.open()
	t.Cleanup(e.close)
	return e
}

// open (re)opens the store and builds tickets and outbound on it, not started.
func (e *env) open() {
	t := e.t
	t.Helper()
	db, err := store.Open(filepath.Join(e.dir, "mailgate.db"), e.key, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	var ob *Outbound
	tk := tickets.New(db, log, tickets.Options{
		Hostname: testHost,
		Queues:   []tickets.Queue{{Name: "Support", Address: queueAddr, AutoAck: e.autoAck}},
		AutoAck:  func(p *tickets.Parsed, in tickets.Incoming) bool { return ob.AutoAck(p, in) },
		Now:      e.clock.Now,
	})
	e.keyring = nil
	if e.pgp {
		if e.gateway == nil {
			armored, err := pgp.GenerateKey("Example Support", queueAddr)
			if err != nil {
				t.Fatal(err)
			}
			if e.gateway, err = pgp.ParseKey(armored); err != nil {
				t.Fatal(err)
			}
			e.keyNow = testutil.NewClock(time.Now())
		}
		e.keyring = pgp.NewKeyring(db, pgp.KeyringOptions{Now: e.keyNow.Now})
	}
	ob, err = New(e.cfg, db, log, tk, e.keyring, e.gateway, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	tk.SetMailer(ob)
	e.db, e.log, e.tk, e.ob = db, log, tk, ob
}

func (e *env) close() {
	if e.db == nil {
		return
	}
	e.ob.Stop()
	e.log.Close()
	e.db.Close()
	e.db = nil
}

func (e *env) reopen() {
	e.close()
	e.open()
}

func (e *env) start() {
	e.t.Helper()
	if err := e.ob.Start(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
}

var msgCounter struct {
	sync.Mutex
	n int
}

// customerMail is a plain message from addr to the support queue.
func customerMail(from, subject string) []byte {
	msgCounter.Lock()
	msgCounter.n++
	n := msgCounter.n
	msgCounter.Unlock()
	return []byte(fmt.Sprintf("From: Customer <%s>\r\nTo: %s\r\nSubject: %s\r\nDate: Sat, 01 Mar 2025 11:00:00 +0000\r\n"+
		"Message-ID: <c%d.%d@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease help.\r\n",
		from, queueAddr, subject, n, time.Now().UnixNano()))
}

// ticket opens a ticket with a verified customer message and returns its id.
func (e *env) ticket(from string) uint64 {
	e.t.Helper()
	res, err := e.tk.Ingest(tickets.Incoming{
		Queue: "Support", Raw: customerMail(from, "Printer on fire"), Via: "smtp", MailFrom: from, Remote: "192.0.2.1",
		Auth: tickets.Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Ticket
}

func (e *env) reply(id uint64, text string) *tickets.Message {
	e.t.Helper()
	m, err := e.tk.Reply(admin, id, text)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// wait returns the next recorded attempt; a generous deadline only turns a hang into a failure.
func (e *env) wait() Attempt {
	e.t.Helper()
	select {
	case a := <-e.attempts:
		return a
	case <-time.After(60 * time.Second):
		e.t.Fatal("no delivery attempt was recorded")
	}
	return Attempt{}
}

// message returns message seq of ticket id as agents see it.
func (e *env) message(id uint64, seq int) tickets.Message {
	e.t.Helper()
	_, msgs, err := e.tk.Get(admin, id)
	if err != nil {
		e.t.Fatal(err)
	}
	if seq < 1 || seq > len(msgs) {
		e.t.Fatalf("ticket %d has %d messages, want #%d", id, len(msgs), seq)
	}
	return msgs[seq-1]
}

func (e *env) messages(id uint64) []tickets.Message {
	e.t.Helper()
	_, msgs, err := e.tk.Get(admin, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return msgs
}

// audited lists the audit events whose action starts with prefix, newest first.
func (e *env) audited(prefix string) []audit.Event {
	e.t.Helper()
	evs, err := e.log.Query(audit.Filter{Limit: 100000}, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []audit.Event
	for _, ev := range evs {
		if strings.HasPrefix(ev.Action, prefix) {
			out = append(out, ev)
		}
	}
	return out
}

// dnsRecords maps the DKIM record names of e's keys to their TXT values.
func (e *env) dnsRecords() map[string]string {
	m := map[string]string{}
	for _, k := range e.ob.DKIMKeys() {
		m[k.RecordName()] = k.Record()
	}
	return m
}

const pyVerify = `
import sys, json, re, dkim
msg = open(sys.argv[1], 'rb').read()
recs = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    n = (name.decode() if isinstance(name, bytes) else name).rstrip('.').lower()
    r = recs.get(n)
    return r.encode() if r is not None else None
d = dkim.DKIM(msg)
sigs = [v for k, v in d.headers if k.lower() == b'dkim-signature']
out = []
for i, v in enumerate(sigs):
    a = re.search(rb'a=([a-z0-9-]+)', re.sub(rb'\s+', b'', v)).group(1).decode()
    try:
        ok = bool(d.verify(idx=i, dnsfunc=dnsfunc))
    except Exception as ex:
        ok = False
    out.append({"a": a, "ok": ok})
print(json.dumps(out))
`

type pyResult struct {
	A  string `json:"a"`
	OK bool   `json:"ok"`
}

// pythonVerify runs Debian's python3-dkim over msg with records as its DNS and returns one
// result per signature.
func pythonVerify(t testing.TB, msg []byte, records map[string]string) []pyResult {
	t.Helper()
	dir := t.TempDir()
	mf := filepath.Join(dir, "msg.eml")
	rf := filepath.Join(dir, "dns.json")
	rj, _ := json.Marshal(records)
	if err := os.WriteFile(mf, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rf, rj, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/usr/bin/python3", "-c", pyVerify, mf, rf).CombinedOutput()
	if err != nil {
		t.Fatalf("python3-dkim (Debian package python3-dkim must be installed): %v\n%s", err, out)
	}
	var res []pyResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python3-dkim output %q: %v", out, err)
	}
	return res
}

// requireBothVerify checks that python3-dkim found an RSA and an Ed25519 signature and that
// both verify.
func requireBothVerify(t testing.TB, msg []byte, records map[string]string) {
	t.Helper()
	res := pythonVerify(t, msg, records)
	algs := map[string]bool{}
	for _, r := range res {
		if !r.OK {
			t.Errorf("python3-dkim: %s signature does not verify", r.A)
		}
		algs[r.A] = true
	}
	if !algs["rsa-sha256"] || !algs["ed25519-sha256"] || len(res) != 2 {
		t.Errorf("python3-dkim saw signatures %+v, want one rsa-sha256 and one ed25519-sha256", res)
	}
}
