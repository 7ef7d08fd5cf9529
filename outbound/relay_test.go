package outbound

import (
	"bytes"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailgate/config"
)

func TestRelayModes(t *testing.T) {
	cert, pool := testCert(t)
	cases := []struct {
		name       string
		relay      relayOpts
		mode       string
		trust      bool
		user, pass string
		ok         bool
		errHas     string
	}{
		{"starttls with auth", relayOpts{mode: TLSStartTLS, cert: &cert, user: "mg", pass: "s3cret pass"}, TLSStartTLS, true, "mg", "s3cret pass", true, ""},
		{"starttls without auth", relayOpts{mode: TLSStartTLS, cert: &cert}, TLSStartTLS, true, "", "", true, ""},
		{"implicit tls with auth", relayOpts{mode: TLSImplicit, cert: &cert, user: "mg", pass: "pw"}, TLSImplicit, true, "mg", "pw", true, ""},
		{"starttls not offered", relayOpts{mode: TLSStartTLS}, TLSStartTLS, true, "", "", false, "STARTTLS"},
		{"starttls untrusted certificate", relayOpts{mode: TLSStartTLS, cert: &cert}, TLSStartTLS, false, "", "", false, "certificate"},
		{"implicit tls untrusted certificate", relayOpts{mode: TLSImplicit, cert: &cert}, TLSImplicit, false, "", "", false, "certificate"},
		{"tls 1.1 relay refused", relayOpts{mode: TLSStartTLS, cert: &cert, maxVersion: tls.VersionTLS11}, TLSStartTLS, true, "", "", false, "version"},
		{"wrong password", relayOpts{mode: TLSStartTLS, cert: &cert, user: "mg", pass: "right"}, TLSStartTLS, true, "mg", "wrong", false, "AUTH"},
		{"auth not offered", relayOpts{mode: TLSStartTLS, cert: &cert}, TLSStartTLS, true, "mg", "pw", false, "AUTH PLAIN"},
		{"plain on loopback", relayOpts{mode: TLSNone}, TLSNone, false, "", "", true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := startGoRelay(t, c.relay)
			e := newEnvWith(t, func(cf *config.Config) {
				cf.Outbound.Relay, cf.Outbound.RelayTLS = r.Addr, c.mode
				if c.user != "" {
					f := filepath.Join(t.TempDir(), "relay.pass")
					if err := os.WriteFile(f, []byte(c.pass+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					cf.Outbound.RelayUsername, cf.Outbound.RelayPasswordFile = c.user, f
				}
			}, func(e *env, o *Options) {
				if c.trust {
					o.RootCAs = pool
				} else {
					_, o.RootCAs = testCert(t)
				}
			})
			e.start()
			id := e.ticket(customer)
			m := e.reply(id, "hello over "+c.mode)
			a := e.wait()
			got := r.received()
			if !c.ok {
				if a.Outcome != "retry" || !strings.Contains(a.Err, c.errHas) {
					t.Fatalf("attempt %+v, want a retry with an error about %q", a, c.errHas)
				}
				if r.mailCommands() != 0 || len(got) != 0 {
					t.Fatalf("the relay saw %d MAIL commands and %d messages; nothing may be sent", r.mailCommands(), len(got))
				}
				if e.message(id, m.Seq).Delivery != "queued" || e.ob.Queued() != 1 {
					t.Error("the reply must stay queued")
				}
				if strings.Contains(a.Err, c.pass) && c.pass != "" {
					t.Error("the password appears in an error")
				}
				return
			}
			if a.Outcome != "sent" || len(got) != 1 {
				t.Fatalf("attempt %+v, relay got %d messages", a, len(got))
			}
			g := got[0]
			if !bytes.Equal(g.Data, e.raw(id, m.Seq)) {
				t.Error("the relay got other bytes than the ticket stores")
			}
			if g.TLS != (c.mode != TLSNone) {
				t.Errorf("TLS = %v in mode %s", g.TLS, c.mode)
			}
			if g.User != c.user || g.Helo != testHost || g.From != queueAddr || strings.Join(g.Rcpts, ",") != customer {
				t.Errorf("relay saw user %q helo %q from %q rcpts %v", g.User, g.Helo, g.From, g.Rcpts)
			}
			requireBothVerify(t, g.Data, e.dnsRecords())
		})
	}
}

// TestRelayReusesConnections: queued replies share a few relay sessions (at most Concurrency
// per round) instead of one connection per message.
func TestRelayReusesConnections(t *testing.T) {
	r := startGoRelay(t, relayOpts{mode: TLSNone})
	e := newEnv(t, func(c *config.Config) { c.Outbound.Relay, c.Outbound.RelayTLS = r.Addr, TLSNone })
	const n = 20
	for range n {
		e.reply(e.ticket(customer), "one of many")
	}
	e.start()
	for range n {
		if a := e.wait(); a.Outcome != "sent" {
			t.Fatalf("attempt %+v", a)
		}
	}
	if got := len(r.received()); got != n {
		t.Errorf("relay got %d messages, want %d", got, n)
	}
	if s := r.sessionCount(); s < 1 || s > defaultConcurrency {
		t.Errorf("%d relay sessions for %d messages, want 1..%d", s, n, defaultConcurrency)
	}
}
