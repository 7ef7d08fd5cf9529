package dnsmock

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
)

func isNotFound(err error) bool {
	var e *net.DNSError
	return errors.As(err, &e) && e.IsNotFound && !e.Temporary()
}

func isServfail(err error) bool {
	var e *net.DNSError
	return errors.As(err, &e) && e.Temporary() && !e.IsNotFound
}

func TestResolver(t *testing.T) {
	ctx := context.Background()
	r := &Resolver{
		TXT: map[string][]string{"Example.COM.": {"v=spf1 -all"}, "target.test": {"hello"}},
		A:   map[string][]string{"mail.example.com": {"192.0.2.1", "2001:db8::1", "junk"}},
		MX:  map[string][]*net.MX{"example.com": {{Host: "mail.example.com.", Pref: 10}}},
		PTR: map[string][]string{
			"192.0.2.1":              {"mail.example.com"},
			"2.2.0.192.in-addr.arpa": {"two.example.com."},
			ReverseName(netip.MustParseAddr("2001:db8::1")): {"six.example.com"},
		},
		CNAME: map[string]string{"alias.test": "TARGET.test.", "loop1.test": "loop2.test", "loop2.test": "loop1.test"},
		Fail:  map[string]bool{"broken.test": true, "MX example.com": true, "PTR 192.0.2.9": true},
	}

	if txt, err := r.LookupTXT(ctx, "example.com"); err != nil || !slices.Equal(txt, []string{"v=spf1 -all"}) {
		t.Errorf("TXT example.com: %q %v", txt, err)
	}
	if txt, err := r.LookupTXT(ctx, "EXAMPLE.com."); err != nil || len(txt) != 1 {
		t.Errorf("TXT EXAMPLE.com.: %q %v", txt, err)
	}
	if txt, err := r.LookupTXT(ctx, "alias.test"); err != nil || !slices.Equal(txt, []string{"hello"}) {
		t.Errorf("TXT through CNAME: %q %v", txt, err)
	}
	if _, err := r.LookupTXT(ctx, "loop1.test"); !isServfail(err) {
		t.Errorf("CNAME loop: %v", err)
	}
	if _, err := r.LookupTXT(ctx, "nowhere.test"); !isNotFound(err) {
		t.Errorf("unknown name: %v", err)
	}
	if _, err := r.LookupTXT(ctx, "mail.example.com"); !isNotFound(err) {
		t.Errorf("name without TXT: %v", err)
	}
	if _, err := r.LookupTXT(ctx, "broken.test"); !isServfail(err) {
		t.Errorf("failing name: %v", err)
	}
	if _, err := r.LookupTXT(ctx, "a..b.test"); !isNotFound(err) {
		t.Errorf("empty label: %v", err)
	}

	ips, err := r.LookupIPAddr(ctx, "Mail.Example.Com")
	if err != nil || len(ips) != 2 || !ips[0].IP.Equal(net.ParseIP("192.0.2.1")) {
		t.Errorf("A/AAAA: %v %v", ips, err)
	}
	if _, err := r.LookupMX(ctx, "example.com"); !isServfail(err) {
		t.Errorf("MX with \"MX name\" failure: %v", err)
	}
	if txt, err := r.LookupTXT(ctx, "example.com"); err != nil || len(txt) != 1 {
		t.Errorf("a typed failure leaks to TXT: %v", err)
	}

	for addr, want := range map[string]string{
		"192.0.2.1":   "mail.example.com.",
		"192.0.2.2":   "two.example.com.",
		"2001:db8::1": "six.example.com.",
	} {
		names, err := r.LookupAddr(ctx, addr)
		if err != nil || !slices.Equal(names, []string{want}) {
			t.Errorf("PTR %s: %q %v", addr, names, err)
		}
	}
	if _, err := r.LookupAddr(ctx, "192.0.2.9"); !isServfail(err) {
		t.Errorf("PTR failure: %v", err)
	}
	if _, err := r.LookupAddr(ctx, "192.0.2.3"); !isNotFound(err) {
		t.Errorf("PTR unknown: %v", err)
	}

	if txt, err := r.LookupTXTFunc()("target.test"); err != nil || txt[0] != "hello" {
		t.Errorf("LookupTXTFunc: %q %v", txt, err)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.LookupTXT(cancelled, "example.com"); !isServfail(err) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestReverseName(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":        "1.2.0.192.in-addr.arpa",
		"::ffff:192.0.2.1": "1.2.0.192.in-addr.arpa",
		"2001:db8::cb01":   "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
	} {
		if got := ReverseName(netip.MustParseAddr(in)); got != want {
			t.Errorf("ReverseName(%s) = %s, want %s", in, got, want)
		}
	}
}
