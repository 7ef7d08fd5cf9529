package web

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"mailgate/access"
	"mailgate/audit"
)

// Issue 11.4: an attacker guessing alice's password from 127.0.0.2 locks that address out, not
// alice at 127.0.0.3; many addresses together still hit the per-account ceiling.
func TestLoginLockoutIsNotDenialOfService(t *testing.T) {
	e := newEnv(t)
	e.addAgent("alice", access.RoleAgent, "support")
	attacker := e.client()
	attacker.remote = "127.0.0.2:40000"
	locked := false
	for i := range 20 {
		w := attacker.post("/login", url.Values{"username": {"alice"}, "password": {fmt.Sprint("guess ", i)}})
		if w.Code == http.StatusTooManyRequests {
			locked = true
			break
		}
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, w.Code)
		}
	}
	if !locked {
		t.Fatal("the attacker's address was never throttled")
	}
	agent := e.client()
	agent.remote = "127.0.0.3:40001"
	agent.login("alice") // fails the test unless password and code both pass
	if w := agent.get("/tickets"); w.Code != http.StatusOK {
		t.Fatalf("agent's ticket list: %d", w.Code)
	}
	if w := attacker.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}}); w.Code != http.StatusTooManyRequests {
		t.Fatalf("attacker's address with the right password after the agent's login: %d, want 429", w.Code)
	}

	// The ceiling: 5 guesses from each of 12 addresses (each under its own limit of 5) lock
	// alice everywhere, even at a fresh address with the right password.
	for a := 10; a < 22; a++ {
		c := e.client()
		c.remote = fmt.Sprintf("127.0.1.%d:1", a)
		for i := range 5 {
			c.post("/login", url.Values{"username": {"alice"}, "password": {fmt.Sprint("distributed ", i)}})
		}
	}
	fresh := e.client()
	fresh.remote = "127.0.0.4:1"
	if w := fresh.post("/login", url.Values{"username": {"alice"}, "password": {e.pw["alice"]}}); w.Code != http.StatusTooManyRequests {
		t.Fatalf("fresh address after a distributed attack: %d, want 429", w.Code)
	}
	var ceiling bool
	for _, ev := range e.events(audit.Filter{Action: "login.lockout"}) {
		ceiling = ceiling || strings.Contains(ev.Detail, "account from every address")
	}
	if !ceiling {
		t.Error("no lockout event for the per-account ceiling")
	}
}
