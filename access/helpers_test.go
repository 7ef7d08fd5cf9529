package access

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailgate/audit"
	"mailgate/internal/testutil"
	"mailgate/store"
)

type clock = testutil.Clock

type env struct {
	s   *Service
	db  *store.DB
	log *audit.Log
	clk *clock
}

// fastArgon2 keeps tests quick; the benchmark uses the real defaults.
var fastArgon2 = Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "mailgate.db"), bytes.Repeat([]byte{7}, 32), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	clk := testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	opts := Options{Now: clk.Now, Argon2: fastArgon2, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&opts)
	}
	return &env{s: New(db, l, opts), db: db, log: l, clk: clk}
}

// user is an agent with its secrets, as a test knows them.
type user struct {
	name, password, uri string
	secret              []byte
	codes               []string
}

func (e *env) add(t testing.TB, name string, role Role, queues ...string) *user {
	t.Helper()
	c, err := e.s.Create(Ctl, name, name+"@example.com", role, queues)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return &user{name: name, password: c.Password, uri: c.TOTPURI, secret: secretOf(t, c.TOTPURI), codes: c.RecoveryCodes}
}

func secretOf(t testing.TB, uri string) []byte {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "otpauth" || u.Host != "totp" {
		t.Fatalf("bad otpauth URI %q: %v", uri, err)
	}
	q := u.Query()
	if q.Get("algorithm") != "SHA1" || q.Get("digits") != "6" || q.Get("period") != "30" {
		t.Fatalf("URI %q: want SHA1, 6 digits, 30 s", uri)
	}
	b, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(strings.ToUpper(q.Get("secret")))
	if err != nil || len(b) < 16 {
		t.Fatalf("URI %q: secret: %v", uri, err)
	}
	return b
}

// rfc6238 is an independent TOTP implementation (RFC 6238 with RFC 4226's truncation), so the
// tests do not check the library against itself.
func rfc6238(secret []byte, at time.Time) string {
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], uint64(at.Unix()/30))
	m := hmac.New(sha1.New, secret)
	m.Write(msg[:])
	sum := m.Sum(nil)
	off := sum[len(sum)-1] & 0xf
	v := binary.BigEndian.Uint32(sum[off:]) & 0x7fffffff
	return fmt.Sprintf("%06d", v%1_000_000)
}

// login runs both steps with a fresh TOTP code (the clock moves one step first, since each
// code works once) and returns the agent.
func (e *env) login(t testing.TB, u *user, remote string) *Agent {
	t.Helper()
	p, err := e.s.CheckPassword(u.name, u.password, remote)
	if err != nil {
		t.Fatalf("password step for %s: %v", u.name, err)
	}
	e.clk.Add(30 * time.Second)
	a, err := e.s.CheckCode(p, rfc6238(u.secret, e.clk.Now()), remote)
	if err != nil {
		t.Fatalf("code step for %s: %v", u.name, err)
	}
	return a
}

func (e *env) session(t testing.TB, u *user, remote string) (id, csrf string) {
	t.Helper()
	id, csrf, err := e.s.NewSession(e.login(t, u, remote), remote)
	if err != nil {
		t.Fatal(err)
	}
	return id, csrf
}

// events returns the audit events matching f, oldest first.
func (e *env) events(t testing.TB, f audit.Filter) []audit.Event {
	t.Helper()
	f.Limit = 10000
	evs, err := e.log.Query(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
	return evs
}

func results(evs []audit.Event) string {
	var r []string
	for _, ev := range evs {
		r = append(r, ev.Action+":"+ev.Result)
	}
	return strings.Join(r, " ")
}

func (e *env) record(t testing.TB, name string) *record {
	t.Helper()
	var r *record
	if err := e.db.View(func(tx *store.Tx) error {
		var err error
		r, err = getRecord(tx, name)
		return err
	}); err != nil || r == nil {
		t.Fatalf("record %s: %v", name, err)
	}
	return r
}
