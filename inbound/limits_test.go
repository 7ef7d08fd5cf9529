package inbound

import (
	"net"
	"testing"
	"time"
)

func TestIPKey(t *testing.T) {
	cases := map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64", // same /64: one client
		"2001:db8:1:3::1":      "2001:db8:1:3::/64",
	}
	for in, want := range cases {
		if got := ipKey(net.ParseIP(in)); got != want {
			t.Errorf("ipKey(%s) = %s, want %s", in, got, want)
		}
	}
	if ipKey(nil) != "unknown" {
		t.Error("nil IP")
	}
}

func TestRateLimit(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := newRateLimit(60, func() time.Time { return now })
	for i := range 60 {
		if !r.allow("a") {
			t.Fatalf("message %d of the burst refused", i)
		}
	}
	if r.allow("a") {
		t.Fatal("61st message in the same instant allowed")
	}
	if !r.allow("b") {
		t.Fatal("b limited by a")
	}
	now = now.Add(time.Second) // 60/min: one token a second
	if !r.allow("a") || r.allow("a") {
		t.Fatal("refill is not one token per second")
	}
	now = now.Add(-time.Hour) // the clock goes back: no refill, no panic
	if r.allow("a") {
		t.Fatal("clock going back refilled the bucket")
	}
	// A minute later every bucket is full again and is forgotten at the next sweep.
	now = now.Add(2 * time.Hour)
	r.allow("c")
	if n := r.size(); n != 1 {
		t.Fatalf("limiter remembers %d clients, want 1 (only c)", n)
	}
	if u := newRateLimit(0, time.Now); !u.allow("x") || u.size() != 0 {
		t.Fatal("0 must mean no limit and no memory")
	}
}
