package agentmail

import (
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailgate/access"
	"mailgate/audit"
)

// dialFrom connects to addr from the loopback address src, so throttling by address can be
// tested with real clients.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func imapFrom(t *testing.T, e *env, src string) *imapclient.Client {
	t.Helper()
	c := imapclient.New(dialFrom(t, src, e.imapAddr), nil)
	t.Cleanup(func() { c.Close() })
	return c
}

func submitAuthFrom(t *testing.T, e *env, src, user, pass string) error {
	t.Helper()
	c := smtp.NewClient(dialFrom(t, src, e.subAddr))
	defer c.Close()
	if err := c.Hello("client.example.com"); err != nil {
		return err
	}
	return c.Auth(sasl.NewPlainClient("", user, pass))
}

// Issue 11.4 for mail clients: wrong app passwords from 127.0.0.2 lock that address out of
// alice's account, while alice's own client at 127.0.0.3 logs in over IMAP and submission.
func TestAppLoginLockoutIsNotDenialOfService(t *testing.T) {
	e := newEnv(t, withAccountLimit(3))
	const attacker, agent = "127.0.0.2", "127.0.0.3"
	c := imapFrom(t, e, attacker)
	for i := range 4 {
		if err := c.Login("alice", "guess-"+string(rune('a'+i))).Wait(); imapCode(err) != imap.ResponseCodeAuthenticationFailed {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	if err := c.Login("alice", e.users["alice"]).Wait(); imapCode(err) != imap.ResponseCodeUnavailable {
		t.Fatalf("attacker's address with the right app password: %v, want UNAVAILABLE", err)
	}
	if err := submitAuthFrom(t, e, attacker, "alice", e.users["alice"]); smtpCode(err) != 454 {
		t.Fatalf("attacker's address, submission: %v, want 454", err)
	}

	if err := imapFrom(t, e, agent).Login("alice", e.users["alice"]).Wait(); err != nil {
		t.Fatalf("alice's IMAP login from another address: %v", err)
	}
	if err := submitAuthFrom(t, e, agent, "alice", e.users["alice"]); err != nil {
		t.Fatalf("alice's submission login from another address: %v", err)
	}
	err := imapFrom(t, e, attacker).Login("alice", e.users["alice"]).Wait()
	if imapCode(err) != imap.ResponseCodeUnavailable || !strings.Contains(err.Error(), "too many failed logins") {
		t.Fatalf("attacker's address after alice's login: %v, want still locked", err)
	}
}

// Issue 11.8: IMAP refusals are audited: STATUS of another queue's mailbox, and a session that
// outlives the agent's queue membership or account.
func TestIMAPRefusalsAudited(t *testing.T) {
	e := newEnv(t)
	denied := func(action, object string) bool {
		for _, ev := range e.events(action) {
			if ev.Actor == "alice" && ev.Result == audit.Denied && ev.Object == object {
				return true
			}
		}
		return false
	}
	c := e.imapClient("alice", nil)
	if _, err := c.Status("billing", &imap.StatusOptions{NumMessages: true}).Wait(); imapCode(err) != imap.ResponseCodeNonExistent {
		t.Fatalf("STATUS billing: %v, want NONEXISTENT", err)
	}
	if !denied("imap.status", "mailbox/billing") {
		t.Fatal("no denied imap.status event")
	}
	if _, err := c.Select("support", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := e.acc.SetQueues(access.Ctl, "alice", []string{"billing"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Search(&imap.SearchCriteria{}, nil).Wait(); err == nil {
		t.Fatal("SEARCH after losing the queue succeeded")
	}
	if !denied("imap.session", "queue/support") {
		t.Fatal("no denied event for the lost queue")
	}
	c2 := e.imapClient("alice", nil)
	if err := e.acc.Disable(access.Ctl, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.List("", "*", nil).Collect(); err == nil {
		t.Fatal("LIST after the account was disabled succeeded")
	}
	if !denied("imap.session", "agent/alice") {
		t.Fatal("no denied event for the disabled account")
	}
}

// Issue 11.8: a submission login that asks to act as someone else is refused and audited.
func TestSubmissionAuthorizationIdentityAudited(t *testing.T) {
	e := newEnv(t)
	c, err := smtp.Dial(e.subAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.com"); err != nil {
		t.Fatal(err)
	}
	err = c.Auth(sasl.NewPlainClient("bob", "alice", e.users["alice"]))
	if smtpCode(err) != 535 || !strings.Contains(err.Error(), "authorization identity") {
		t.Fatalf("AUTH as alice for bob: %v, want 535", err)
	}
	var denied bool
	for _, ev := range e.events("login.app") {
		denied = denied || (ev.Actor == "alice" && ev.Result == audit.Denied && strings.Contains(ev.Detail, `"bob"`))
	}
	if !denied {
		t.Fatal("no denied login.app event")
	}
}
