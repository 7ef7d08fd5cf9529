package inbound

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"

	"mailgate/internal/dnsmock"
)

// testKey signs the test messages; its public half is published for every domain in
// testDomains under selector "s".
var testKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

var testDomains = []string{
	"example.com", "mail.example.com", "sub.example.com", "direct.example.com",
	"strict.example", "mail.strict.example", "other.test", "pct.example", "pctq.example",
	"nodmarc.example", "multi.example", "bad.example", "tempdmarc.example", "none.example",
	"tempspf.example", "co.uk", "alice.co.uk", "bob.co.uk",
}

const clientIP = "192.0.2.1"

func testResolver() *dnsmock.Resolver {
	key := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(testKey.Public().(ed25519.PublicKey))
	r := &dnsmock.Resolver{
		TXT: map[string][]string{
			"_dmarc.example.com":        {"v=DMARC1; p=reject; sp=quarantine"},
			"_dmarc.direct.example.com": {"v=DMARC1; p=none"},
			"_dmarc.strict.example":     {"v=DMARC1; p=reject; adkim=s; aspf=s"},
			"_dmarc.pct.example":        {"v=DMARC1; p=reject; pct=50"},
			"_dmarc.pctq.example":       {"v=DMARC1; p=quarantine; pct=50"},
			"_dmarc.none.example":       {"v=DMARC1; p=none"},
			"_dmarc.multi.example":      {"v=DMARC1; p=none", "v=DMARC1; p=reject"},
			"_dmarc.bad.example":        {"v=DMARC1; p=bogus"},
			"_dmarc.tempkey.example":    {"v=DMARC1; p=reject"},
			"_dmarc.tempspf.example":    {"v=DMARC1; p=reject"},
			"_dmarc.bob.co.uk":          {"v=DMARC1; p=reject"},
			"example.com":               {"v=spf1 ip4:" + clientIP + " -all"},
			"mail.example.com":          {"v=spf1 ip4:" + clientIP + " -all"},
			"mail.strict.example":       {"v=spf1 ip4:" + clientIP + " -all"},
			"other.test":                {"v=spf1 ip4:" + clientIP + " -all"},
			"mx.example.com":            {"v=spf1 ip4:" + clientIP + " -all"},
			"bob.co.uk":                 {"v=spf1 -all"},
			"alice.co.uk":               {"v=spf1 ip4:" + clientIP + " -all"},
		},
		Fail: map[string]bool{
			"_dmarc.tempdmarc.example":     true,
			"s._domainkey.tempkey.example": true,
			"TXT tempspf.example":          true,
		},
	}
	for _, d := range testDomains {
		r.TXT["s._domainkey."+d] = []string{key}
	}
	return r
}

// message builds a message with the given From fields, signed by each signer domain in turn.
func message(t testing.TB, froms []string, signers ...string) []byte {
	t.Helper()
	var b strings.Builder
	for _, f := range froms {
		b.WriteString("From: " + f + "\r\n")
	}
	b.WriteString("To: support@mailgate.test\r\nSubject: help\r\nMessage-ID: <1@x>\r\n\r\nThe body.\r\n")
	raw := []byte(b.String())
	for _, d := range signers {
		var out bytes.Buffer
		err := dkim.Sign(&out, bytes.NewReader(raw), &dkim.SignOptions{
			Domain: d, Selector: "s", Signer: testKey, Hash: crypto.SHA256,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             []string{"From", "To", "Subject", "Message-ID"},
		})
		if err != nil {
			t.Fatal(err)
		}
		raw = out.Bytes()
	}
	return raw
}

type want struct {
	spf, dkim, dmarc, policy, disposition string
	verified, temp                        bool
}

func TestVerifyDMARC(t *testing.T) {
	res := testResolver()
	for _, tc := range []struct {
		name     string
		mailFrom string
		helo     string
		from     []string
		signers  []string
		rand     int // what Rand(100) answers
		want     want
	}{
		{name: "dkim aligned relaxed", mailFrom: "x@other.test", from: []string{"a@example.com"}, signers: []string{"mail.example.com"},
			want: want{"pass", "pass", "pass", "reject", "none", true, false}},
		{name: "dkim aligned exact", from: []string{"Alice <a@EXAMPLE.com>"}, signers: []string{"example.com"},
			want: want{"none", "pass", "pass", "reject", "none", true, false}},
		{name: "dkim strict mode rejects subdomain", mailFrom: "x@nowhere.invalid", from: []string{"a@strict.example"}, signers: []string{"mail.strict.example"},
			want: want{"none", "pass", "fail", "reject", "reject", false, false}},
		{name: "spf aligned relaxed", mailFrom: "bounce@mail.example.com", from: []string{"a@example.com"},
			want: want{"pass", "none", "pass", "reject", "none", true, false}},
		{name: "spf strict mode rejects subdomain", mailFrom: "b@mail.strict.example", from: []string{"a@strict.example"},
			want: want{"pass", "none", "fail", "reject", "reject", false, false}},
		{name: "spf pass unaligned", mailFrom: "x@other.test", from: []string{"a@example.com"},
			want: want{"pass", "none", "fail", "reject", "reject", false, false}},
		{name: "dkim pass unaligned", mailFrom: "x@nowhere.invalid", from: []string{"a@example.com"}, signers: []string{"other.test"},
			want: want{"none", "pass", "fail", "reject", "reject", false, false}},
		{name: "spf fail", mailFrom: "a@bob.co.uk", from: []string{"a@bob.co.uk"},
			want: want{"fail", "none", "fail", "reject", "reject", false, false}},
		{name: "public suffix siblings do not align", mailFrom: "a@alice.co.uk", from: []string{"a@bob.co.uk"}, signers: []string{"alice.co.uk"},
			want: want{"pass", "pass", "fail", "reject", "reject", false, false}},
		{name: "subdomain gets sp", mailFrom: "x@nowhere.invalid", from: []string{"a@sub.example.com"},
			want: want{"none", "none", "fail", "quarantine", "quarantine", false, false}},
		{name: "subdomain with own record gets its p", mailFrom: "x@nowhere.invalid", from: []string{"a@direct.example.com"},
			want: want{"none", "none", "fail", "none", "none", false, false}},
		{name: "subdomain aligned via parent record", mailFrom: "x@nowhere.invalid", from: []string{"a@sub.example.com"}, signers: []string{"example.com"},
			want: want{"none", "pass", "pass", "quarantine", "none", true, false}},
		{name: "null sender uses helo", mailFrom: "", helo: "mx.example.com", from: []string{"mailer-daemon@example.com"},
			want: want{"pass", "none", "pass", "reject", "none", true, false}},
		{name: "pct sampled in", mailFrom: "x@nowhere.invalid", from: []string{"a@pct.example"}, rand: 49,
			want: want{"none", "none", "fail", "reject", "reject", false, false}},
		{name: "pct sampled out lowers reject", mailFrom: "x@nowhere.invalid", from: []string{"a@pct.example"}, rand: 50,
			want: want{"none", "none", "fail", "reject", "quarantine", false, false}},
		{name: "pct sampled out lowers quarantine", mailFrom: "x@nowhere.invalid", from: []string{"a@pctq.example"}, rand: 99,
			want: want{"none", "none", "fail", "quarantine", "none", false, false}},
		{name: "pct irrelevant on pass", mailFrom: "x@nowhere.invalid", from: []string{"a@pct.example"}, signers: []string{"pct.example"}, rand: 99,
			want: want{"none", "pass", "pass", "reject", "none", true, false}},
		{name: "p=none", mailFrom: "x@nowhere.invalid", from: []string{"a@none.example"},
			want: want{"none", "none", "fail", "none", "none", false, false}},
		{name: "two From fields", from: []string{"a@example.com", "b@example.com"}, signers: []string{"example.com"},
			want: want{"none", "pass", "permerror", "", "none", false, false}},
		{name: "two addresses in From", from: []string{"a@example.com, b@example.com"}, signers: []string{"example.com"},
			want: want{"none", "pass", "permerror", "", "none", false, false}},
		{name: "From without domain", from: []string{"undisclosed-recipients:;"},
			want: want{"none", "none", "permerror", "", "none", false, false}},
		{name: "From with address literal", from: []string{"a@[192.0.2.1]"},
			want: want{"none", "none", "permerror", "", "none", false, false}},
		{name: "From with trailing dot", from: []string{"a@example.com."},
			want: want{"none", "none", "permerror", "", "none", false, false}},
		{name: "no From", from: nil,
			want: want{"none", "none", "none", "", "none", false, false}},
		{name: "no record, aligned dkim is not DMARC-verified", mailFrom: "x@nowhere.invalid", from: []string{"a@nodmarc.example"}, signers: []string{"nodmarc.example"},
			want: want{"none", "pass", "none", "", "none", false, false}},
		{name: "no record, nothing aligned", mailFrom: "x@nowhere.invalid", from: []string{"a@nodmarc.example"},
			want: want{"none", "none", "none", "", "none", false, false}},
		{name: "two records", mailFrom: "x@nowhere.invalid", from: []string{"a@multi.example"},
			want: want{"none", "none", "permerror", "", "none", false, false}},
		{name: "bad record", mailFrom: "x@nowhere.invalid", from: []string{"a@bad.example"},
			want: want{"none", "none", "permerror", "", "none", false, false}},
		{name: "dmarc lookup servfail", mailFrom: "x@nowhere.invalid", from: []string{"a@tempdmarc.example"},
			want: want{"none", "none", "temperror", "", "none", false, true}},
		{name: "dmarc lookup servfail, exact dkim is not yet verified", mailFrom: "x@nowhere.invalid", from: []string{"a@tempdmarc.example"}, signers: []string{"tempdmarc.example"},
			want: want{"none", "pass", "temperror", "", "none", false, true}},
		{name: "aligned dkim key servfail", mailFrom: "x@nowhere.invalid", from: []string{"a@tempkey.example"}, signers: []string{"tempkey.example"},
			want: want{"none", "temperror", "temperror", "reject", "none", false, true}},
		{name: "unaligned dkim key servfail", mailFrom: "x@nowhere.invalid", from: []string{"a@example.com"}, signers: []string{"tempkey.example"},
			want: want{"none", "temperror", "fail", "reject", "reject", false, true}},
		{name: "aligned spf servfail", mailFrom: "a@tempspf.example", from: []string{"a@tempspf.example"},
			want: want{"temperror", "none", "temperror", "reject", "none", false, true}},
		{name: "aligned spf servfail but dkim passes", mailFrom: "a@tempspf.example", from: []string{"a@tempspf.example"}, signers: []string{"tempspf.example"},
			want: want{"temperror", "pass", "pass", "reject", "none", true, false}},
		{name: "one good signature among bad ones", mailFrom: "x@nowhere.invalid", from: []string{"a@example.com"}, signers: []string{"other.test", "tempkey.example", "example.com"},
			want: want{"none", "pass", "pass", "reject", "none", true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &Verifier{Resolver: res, AuthservID: "mx.mailgate.test", Rand: func(n int) int {
				if n != 100 {
					t.Errorf("Rand(%d), want Rand(100)", n)
				}
				return tc.rand
			}}
			helo := tc.helo
			if helo == "" {
				helo = "client.nowhere.invalid"
			}
			c := v.StartSPF(context.Background(), net.ParseIP(clientIP), helo, tc.mailFrom)
			vd := v.Verify(context.Background(), c, message(t, tc.from, tc.signers...))
			got := want{vd.SPF, vd.DKIM, vd.DMARC, vd.Policy, vd.Disposition, vd.Verified, vd.TempError}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v\n%s", got, tc.want, vd.AuthResults)
			}
			if _, results, err := authres.Parse(strings.TrimPrefix(unfold([]byte(vd.AuthResults)), "Authentication-Results:")); err != nil || len(results) < 3 {
				t.Errorf("AuthResults %q does not parse back: %v", vd.AuthResults, err)
			}
			if !strings.Contains(vd.AuthResults, "dmarc="+tc.want.dmarc) {
				t.Errorf("AuthResults %q lacks dmarc=%s", vd.AuthResults, tc.want.dmarc)
			}
		})
	}
}

func TestVerifyFromField(t *testing.T) {
	v := &Verifier{Resolver: testResolver(), AuthservID: "mx.test"}
	vd := v.Verify(context.Background(), nil, message(t, []string{`"Ünïcode =?x-unknown?q?name?=" <Bob.Smith@Mail.EXAMPLE.com>`}))
	if vd.From != "Bob.Smith@mail.example.com" || vd.FromDomain != "mail.example.com" {
		t.Errorf("From %q, FromDomain %q", vd.From, vd.FromDomain)
	}
	vd = v.Verify(context.Background(), nil, message(t, []string{"Jörg <jörg@bücher.example>"}))
	if vd.FromDomain != "xn--bcher-kva.example" || vd.From != "jörg@bücher.example" {
		t.Errorf("IDN From %q, FromDomain %q", vd.From, vd.FromDomain)
	}
}

// TestSPFStartsEarly: StartSPF's lookups run before Verify is called (they overlap the DATA
// transfer), and Verify waits for them.
func TestSPFStartsEarly(t *testing.T) {
	res := testResolver()
	var queries atomic.Int32
	release := make(chan struct{})
	res.OnQuery = func(qtype, name string) {
		if qtype == "TXT" && strings.EqualFold(strings.TrimSuffix(name, "."), "mail.example.com") {
			queries.Add(1)
			<-release
		}
	}
	v := &Verifier{Resolver: res, AuthservID: "mx.test"}
	c := v.StartSPF(context.Background(), net.ParseIP(clientIP), "client.nowhere.invalid", "bounce@mail.example.com")
	for queries.Load() == 0 {
		time.Sleep(time.Millisecond) // wait for the goroutine to reach the lookup, not a timing assertion
	}
	done := make(chan Verdict)
	go func() { done <- v.Verify(context.Background(), c, message(t, []string{"a@example.com"})) }()
	select {
	case vd := <-done:
		t.Fatalf("Verify returned before the SPF lookup finished: %+v", vd)
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	if vd := <-done; vd.SPF != "pass" || vd.DMARC != "pass" {
		t.Fatalf("after release: %+v", vd)
	}
}

// TestVerifyCancelled: a context that ends before the lookups answer gives temperror, never
// a guess.
func TestVerifyCancelled(t *testing.T) {
	res := testResolver()
	block := make(chan struct{})
	defer close(block)
	res.OnQuery = func(qtype, name string) {
		if strings.Contains(name, "example.com") {
			<-block
		}
	}
	v := &Verifier{Resolver: res, AuthservID: "mx.test"}
	ctx, cancel := context.WithCancel(context.Background())
	c := v.StartSPF(ctx, net.ParseIP(clientIP), "client.nowhere.invalid", "bounce@mail.example.com")
	cancel()
	vd := v.Verify(ctx, c, message(t, []string{"a@example.com"}))
	if vd.SPF != "temperror" || vd.DMARC != "temperror" || !vd.TempError || vd.Verified {
		t.Fatalf("cancelled: %+v", vd)
	}
}

func TestSPFHelo(t *testing.T) {
	v := &Verifier{Resolver: testResolver()}
	for _, tc := range []struct{ helo, want string }{
		{"mx.example.com", "pass"},
		{"mx.example.com.", "pass"},
		{"bob.co.uk", "fail"},
		{"[192.0.2.1]", "none"},
		{"192.0.2.1", "none"},
		{"localhost", "none"},
		{"", "none"},
	} {
		c := v.StartSPF(context.Background(), net.ParseIP(clientIP), tc.helo, "a@example.com")
		_, h := c.wait(context.Background())
		if string(h) != tc.want {
			t.Errorf("HELO %q: spf=%s, want %s", tc.helo, h, tc.want)
		}
	}
}

// TestVerifyNoEnvelope: IMAP-fetched mail takes SPF only from a trusted upstream
// Authentication-Results, and only the topmost one.
func TestVerifyNoEnvelope(t *testing.T) {
	v := &Verifier{Resolver: testResolver(), AuthservID: "mx.mailgate.test"}
	base := message(t, []string{"a@example.com"})
	for _, tc := range []struct {
		name    string
		headers string
		dmarc   string
		spf     string
	}{
		{"trusted pass aligned", "Authentication-Results: imap.provider.test; spf=pass smtp.mailfrom=bounce@mail.example.com\r\n", "pass", "pass"},
		{"trusted id case-insensitive, comments", "Authentication-Results: (upstream; hi) IMAP.Provider.TEST (x); spf=pass (good; ok) smtp.mailfrom=example.com\r\n", "pass", "pass"},
		{"untrusted id", "Authentication-Results: evil.test; spf=pass smtp.mailfrom=example.com\r\n", "fail", "none"},
		{"our own id is not trusted", "Authentication-Results: mx.mailgate.test; spf=pass smtp.mailfrom=example.com\r\n", "fail", "none"},
		{"topmost trusted wins", "Authentication-Results: imap.provider.test; spf=fail smtp.mailfrom=example.com\r\n" +
			"Authentication-Results: imap.provider.test; spf=pass smtp.mailfrom=example.com\r\n", "fail", "fail"},
		{"trusted pass unaligned", "Authentication-Results: imap.provider.test; spf=pass smtp.mailfrom=other.test\r\n", "fail", "pass"},
		{"trusted helo only", "Authentication-Results: imap.provider.test; spf=pass smtp.helo=mail.example.com\r\n", "pass", "pass"},
		{"garbage result word", "Authentication-Results: imap.provider.test; spf=great smtp.mailfrom=example.com\r\n", "fail", "none"},
	} {
		raw := append([]byte(tc.headers), base...)
		vd := v.VerifyNoEnvelope(context.Background(), raw, []string{"imap.provider.test"})
		if vd.DMARC != tc.dmarc || vd.SPF != tc.spf || vd.SPFHelo != "none" {
			t.Errorf("%s: spf=%s dmarc=%s, want spf=%s dmarc=%s", tc.name, vd.SPF, vd.DMARC, tc.spf, tc.dmarc)
		}
	}
	raw := append([]byte("Authentication-Results: imap.provider.test; spf=pass smtp.mailfrom=example.com\r\n"), base...)
	vd := v.VerifyNoEnvelope(context.Background(), raw, []string{"imap.provider.test"})
	if !strings.Contains(vd.AuthResults, `spf=pass reason="reported by imap.provider.test"`) {
		t.Errorf("upstream SPF not marked as such: %q", vd.AuthResults)
	}
	signed := message(t, []string{"a@example.com"}, "example.com")
	if vd := v.VerifyNoEnvelope(context.Background(), signed, nil); vd.DKIM != "pass" || vd.DMARC != "pass" || !vd.Verified {
		t.Errorf("signed, no envelope: %+v", vd)
	}
}

// TestForgedAuthResults: a sender's Authentication-Results claiming mailgate's authserv-id
// never counts and is removed; other hosts' fields stay; DKIM still verifies on the original
// bytes.
func TestForgedAuthResults(t *testing.T) {
	v := &Verifier{Resolver: testResolver(), AuthservID: "mx.mailgate.test"}
	signed := message(t, []string{"ceo@example.com"}, "example.com")
	forged := "Authentication-Results: MX.MAILGATE.TEST; spf=pass; dkim=pass;\r\n dmarc=pass header.from=example.com\r\n" +
		"Authentication-Results: (comment; with semicolon) mx.mailgate.test;\r\n\tdmarc=pass\r\n" +
		"Authentication-Results: upstream.test; dmarc=pass\r\n"
	raw := append([]byte(forged), signed...)
	spoof := append([]byte(forged), message(t, []string{"ceo@example.com"})...)

	vd := v.Verify(context.Background(), nil, spoof)
	if vd.Verified || vd.DMARC != "fail" || vd.Disposition != "reject" {
		t.Fatalf("forged header counted: %+v", vd)
	}
	vd = v.Verify(context.Background(), nil, raw)
	if !vd.Verified {
		t.Fatalf("signed message with forged headers: %+v", vd)
	}
	stored := Prepend(StripAuthResults(raw, v.AuthservID), vd.AuthResults)
	if n := bytes.Count(stored, []byte("mx.mailgate.test")); n != 1 {
		t.Errorf("%d mentions of our authserv-id after stripping, want 1 (ours):\n%s", n, stored)
	}
	if !bytes.HasPrefix(stored, []byte(vd.AuthResults)) || !bytes.Contains(stored, []byte("Authentication-Results: upstream.test; dmarc=pass\r\n")) {
		t.Errorf("stored message:\n%s", stored)
	}
	if !bytes.HasSuffix(stored, signed) {
		t.Errorf("the signed message was changed:\n%s", stored)
	}
	// The stored form still verifies (our own header is not signed by anyone).
	if vd2 := v.Verify(context.Background(), nil, stored); !vd2.Verified {
		t.Errorf("stored form no longer verifies: %+v", vd2)
	}
}

// TestAuthResultsInjection: values from the network cannot break out of the field.
func TestAuthResultsInjection(t *testing.T) {
	v := &Verifier{Resolver: testResolver(), AuthservID: "mx.test"}
	c := v.StartSPF(context.Background(), net.ParseIP(clientIP), "evil\r\nX-Injected: 1", "a\"b\\@example.com")
	vd := v.Verify(context.Background(), c, message(t, []string{"a@example.com"}))
	body := strings.TrimSuffix(vd.AuthResults, "\r\n")
	for _, line := range strings.Split(body, "\r\n")[1:] {
		if line == "" || (line[0] != ' ' && line[0] != '\t') {
			t.Fatalf("AuthResults has a line that is not a continuation: %q", vd.AuthResults)
		}
	}
	if strings.Contains(vd.AuthResults, "\nX-Injected") || strings.ContainsAny(body, "\n\r") && !strings.Contains(body, "\r\n\t") {
		t.Fatalf("injection: %q", vd.AuthResults)
	}
}

// BenchmarkVerify: the whole check of an 8 KB signed message against the mock DNS: both SPF
// checks, DKIM, DMARC policy discovery and the Authentication-Results field.
func BenchmarkVerify(b *testing.B) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	pkix, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	res := testResolver()
	res.TXT["r._domainkey.example.com"] = []string{"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pkix)}
	body := strings.Repeat("This is line of a support request that is about sixty-four chars.\r\n", 120)
	raw := []byte("From: Alice <a@example.com>\r\nTo: support@mailgate.test\r\nSubject: help\r\n" +
		"Message-ID: <1@x>\r\nDate: Mon, 02 Feb 2026 10:00:00 +0000\r\n\r\n" + body)
	for _, bc := range []struct {
		name     string
		selector string
		key      crypto.Signer
	}{
		{"ed25519", "s", testKey},
		{"rsa2048", "r", rsaKey},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var out bytes.Buffer
			if err := dkim.Sign(&out, bytes.NewReader(raw), &dkim.SignOptions{
				Domain: "example.com", Selector: bc.selector, Signer: bc.key, Hash: crypto.SHA256,
				HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			}); err != nil {
				b.Fatal(err)
			}
			signed := out.Bytes()
			v := &Verifier{Resolver: res, AuthservID: "mx.mailgate.test"}
			ip := net.ParseIP(clientIP)
			b.SetBytes(int64(len(signed)))
			b.ReportAllocs()
			for b.Loop() {
				c := v.StartSPF(context.Background(), ip, "mx.example.com", "bounce@mail.example.com")
				vd := v.Verify(context.Background(), c, signed)
				if !vd.Verified || vd.DKIM != "pass" || vd.SPF != "pass" {
					b.Fatalf("%+v", vd)
				}
			}
		})
	}
}

// FuzzVerify: any message, however broken, gives a verdict made of RFC 8601 words and a
// single well-formed header field.
func FuzzVerify(f *testing.F) {
	f.Add(message(f, []string{"a@example.com"}, "example.com"))
	f.Add(message(f, []string{"a@example.com", "b@example.com"}))
	f.Add([]byte("From: =?utf-8?q?x?= <a@[1.2.3.4]>\r\nDKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s; h=from; bh=; b=\r\n"))
	f.Add([]byte("DKIM-Signature: v=1\n\nFrom: a@b.c\n"))
	f.Add([]byte("From: \"\\\r\n\r\n"))
	v := &Verifier{Resolver: testResolver(), AuthservID: "mx.test"}
	words := map[string]bool{"pass": true, "fail": true, "softfail": true, "neutral": true, "none": true,
		"temperror": true, "permerror": true, "policy": true}
	f.Fuzz(func(t *testing.T, raw []byte) {
		vd := v.Verify(context.Background(), nil, raw)
		for _, w := range []string{vd.SPF, vd.SPFHelo, vd.DKIM, vd.DMARC} {
			if !words[w] {
				t.Fatalf("result %q in %+v", w, vd)
			}
		}
		if vd.Verified && vd.FromDomain == "" {
			t.Fatalf("verified without a From domain: %+v", vd)
		}
		h := strings.TrimSuffix(vd.AuthResults, "\r\n")
		if !strings.HasPrefix(h, "Authentication-Results: mx.test;") {
			t.Fatalf("AuthResults %q", vd.AuthResults)
		}
		for i, line := range strings.Split(h, "\r\n") {
			if strings.ContainsAny(line, "\r\n") || (i > 0 && !strings.HasPrefix(line, "\t")) {
				t.Fatalf("AuthResults is not one field: %q", vd.AuthResults)
			}
		}
	})
}

// TestMaxSignatures: only the first MaxSignatures signatures (from the top) are checked, so a
// pile of junk signatures can neither cost unbounded DNS work nor be outweighed by one deep
// down.
func TestMaxSignatures(t *testing.T) {
	res := testResolver()
	var keyQueries atomic.Int32
	res.OnQuery = func(qtype, name string) {
		if strings.Contains(name, "._domainkey.") {
			keyQueries.Add(1)
		}
	}
	// dkim.Sign puts each new signature on top: the good one ends up at the bottom.
	raw := message(t, []string{"a@example.com"}, "example.com",
		"nokey1.example", "nokey2.example", "nokey3.example", "nokey4.example", "nokey5.example")
	for _, tc := range []struct {
		max      int
		dmarc    string
		verified bool
		queries  int32
	}{
		{0, "fail", false, 5}, // the default is 5
		{5, "fail", false, 5},
		{6, "pass", true, 6},
	} {
		keyQueries.Store(0)
		v := &Verifier{Resolver: res, AuthservID: "mx.test", MaxSignatures: tc.max}
		vd := v.Verify(context.Background(), nil, raw)
		if vd.DMARC != tc.dmarc || vd.Verified != tc.verified || keyQueries.Load() != tc.queries {
			t.Errorf("MaxSignatures %d: dmarc=%s verified=%v key lookups=%d, want %s %v %d",
				tc.max, vd.DMARC, vd.Verified, keyQueries.Load(), tc.dmarc, tc.verified, tc.queries)
		}
	}
}
