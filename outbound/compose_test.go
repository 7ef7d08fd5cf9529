package outbound

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-msgauth/dkim"

	"mailgate/tickets"
)

func outgoing() tickets.Outgoing {
	return tickets.Outgoing{
		Ticket:     tickets.Ticket{ID: 7},
		Queue:      tickets.Queue{Name: "Süpport Team", Address: queueAddr},
		To:         customer,
		Cc:         []string{"other@example.org", "CUST@example.net", queueAddr},
		Subject:    "Re: Drucker brennt — ça ne marche pas [#7]",
		Text:       "Hallo Jürgen,\nline two ends in a space \n\n.\nFrom the team\n",
		MessageID:  "mg.7.0123456789abcdef.0123456789abcdef0123@mail.example.com",
		InReplyTo:  "c1@example.net",
		References: []string{"r0@example.net", "c1@example.net"},
		Date:       time.Date(2025, 3, 1, 12, 30, 0, 0, time.UTC),
	}
}

// parse reads raw as a mail reader would and returns its header, the decoded text and the
// raw header field names in order.
func parse(t *testing.T, raw []byte) (mail.Header, string, []string) {
	t.Helper()
	th, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("read header: %v", err)
	}
	var keys []string
	for f := th.Fields(); f.Next(); {
		keys = append(keys, f.Key())
	}
	mr, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	p, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(p.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mr.Header, string(body), keys
}

// checkWire asserts what every message we send must be: CRLF only, lines within RFC 5322's
// 998, 7-bit.
func checkWire(t *testing.T, raw []byte) {
	t.Helper()
	if n := bareLF(raw); n >= 0 {
		t.Fatalf("bare LF at %d", n)
	}
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\r")) {
		t.Fatal("bare CR")
	}
	for i, l := range bytes.Split(raw, []byte("\r\n")) {
		if len(l) > 998 {
			t.Fatalf("line %d is %d bytes", i, len(l))
		}
	}
	for i, c := range raw {
		if c >= 0x80 {
			t.Fatalf("8-bit byte at %d", i)
		}
	}
}

func TestComposeReply(t *testing.T) {
	e := newEnv(t, nil)
	og := outgoing()
	raw, enc, err := e.ob.Compose(og)
	if err != nil {
		t.Fatal(err)
	}
	if enc {
		t.Fatal("encrypted with encrypt = never")
	}
	checkWire(t, raw)
	h, body, keys := parse(t, raw)
	if keys[0] != "Dkim-Signature" || keys[1] != "Dkim-Signature" {
		t.Errorf("header starts %v, want two DKIM-Signature fields on top", keys[:2])
	}
	from, err := h.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Name != "Süpport Team" || from[0].Address != queueAddr {
		t.Errorf("From = %v (%v)", from, err)
	}
	if !strings.Contains(h.Get("From"), "=?utf-8?") {
		t.Errorf("non-ASCII display name not RFC 2047 encoded: %q", h.Get("From"))
	}
	if to, _ := h.AddressList("To"); len(to) != 1 || to[0].Address != customer {
		t.Errorf("To = %v", to)
	}
	cc, _ := h.AddressList("Cc")
	if len(cc) != 1 || cc[0].Address != "other@example.org" {
		t.Errorf("Cc = %v, want only other@example.org (the customer and the queue are not repeated)", cc)
	}
	if s, err := h.Subject(); err != nil || s != og.Subject {
		t.Errorf("Subject = %q (%v), want %q", s, err, og.Subject)
	}
	if id, _ := h.MessageID(); id != og.MessageID {
		t.Errorf("Message-ID = %q", id)
	}
	if l, _ := h.MsgIDList("In-Reply-To"); len(l) != 1 || l[0] != "c1@example.net" {
		t.Errorf("In-Reply-To = %v", l)
	}
	if l, _ := h.MsgIDList("References"); strings.Join(l, " ") != "r0@example.net c1@example.net" {
		t.Errorf("References = %v", l)
	}
	if d, _ := h.Date(); !d.Equal(og.Date) {
		t.Errorf("Date = %v", d)
	}
	if h.Get("MIME-Version") != "1.0" || h.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Errorf("MIME-Version %q, CTE %q", h.Get("MIME-Version"), h.Get("Content-Transfer-Encoding"))
	}
	if ct, params, _ := h.ContentType(); ct != "text/plain" || params["charset"] != "utf-8" {
		t.Errorf("Content-Type %q %v", ct, params)
	}
	if h.Has("Auto-Submitted") || h.Has("X-Auto-Response-Suppress") {
		t.Error("an agent's reply is marked automatic")
	}
	want := strings.ReplaceAll(og.Text, "\n", "\r\n")
	if body != want {
		t.Errorf("body = %q, want %q", body, want)
	}

	og.AutoReply = true
	raw, _, err = e.ob.Compose(og)
	if err != nil {
		t.Fatal(err)
	}
	h, _, _ = parse(t, raw)
	if h.Get("Auto-Submitted") != "auto-replied" || h.Get("X-Auto-Response-Suppress") != "All" {
		t.Errorf("auto-reply headers: Auto-Submitted %q, X-Auto-Response-Suppress %q", h.Get("Auto-Submitted"), h.Get("X-Auto-Response-Suppress"))
	}
}

// TestComposeHeaderInjection feeds CR, LF and other control characters through every header
// built from data: subjects and names are cleaned, addresses and ids refused or dropped, and
// no input can start a header of its own.
func TestComposeHeaderInjection(t *testing.T) {
	e := newEnv(t, nil)
	const evil = "Bcc: victim@evil.example"
	cases := []struct {
		name    string
		mut     func(o *tickets.Outgoing)
		wantErr bool
		check   func(t *testing.T, h mail.Header)
	}{
		{"subject CRLF", func(o *tickets.Outgoing) { o.Subject = "Hi\r\n" + evil }, false, func(t *testing.T, h mail.Header) {
			if s, _ := h.Subject(); s != "Hi "+evil {
				t.Errorf("subject %q", s)
			}
		}},
		{"subject LF", func(o *tickets.Outgoing) { o.Subject = "Hi\n" + evil }, false, nil},
		{"subject CR", func(o *tickets.Outgoing) { o.Subject = "Hi\r" + evil }, false, nil},
		{"subject folded", func(o *tickets.Outgoing) { o.Subject = "Hi\r\n " + evil }, false, nil},
		{"subject NUL ESC", func(o *tickets.Outgoing) { o.Subject = "Hi\x00\x1b[31m\u2028" + evil }, false, func(t *testing.T, h mail.Header) {
			if s, _ := h.Subject(); strings.ContainsAny(s, "\x00\x1b\u2028") {
				t.Errorf("control characters survive in %q", s)
			}
		}},
		{"subject non-ASCII CRLF", func(o *tickets.Outgoing) { o.Subject = "Grüße\r\n" + evil }, false, nil},
		{"subject double CRLF body", func(o *tickets.Outgoing) { o.Subject = "Hi\r\n\r\n" + evil }, false, nil},
		{"name CRLF", func(o *tickets.Outgoing) { o.Queue.Name = "Support\r\n" + evil }, false, func(t *testing.T, h mail.Header) {
			from, err := h.AddressList("From")
			if err != nil || len(from) != 1 || from[0].Address != queueAddr || strings.ContainsAny(from[0].Name, "\r\n") {
				t.Errorf("From = %v (%v)", from, err)
			}
		}},
		{"name LF quotes", func(o *tickets.Outgoing) { o.Queue.Name = "Sup\"port\n<x@evil.example>" }, false, func(t *testing.T, h mail.Header) {
			from, _ := h.AddressList("From")
			if len(from) != 1 || from[0].Address != queueAddr {
				t.Errorf("From = %v", from)
			}
		}},
		{"name non-ASCII LF", func(o *tickets.Outgoing) { o.Queue.Name = "Süpport\n" + evil }, false, nil},
		{"to CRLF", func(o *tickets.Outgoing) { o.To = customer + "\r\n" + evil }, true, nil},
		{"to with name", func(o *tickets.Outgoing) { o.To = "Eve <eve@evil.example>" }, true, nil},
		{"to two addresses", func(o *tickets.Outgoing) { o.To = "a@example.net, b@example.net" }, true, nil},
		{"cc LF", func(o *tickets.Outgoing) { o.Cc = []string{"x@example.org\n" + evil} }, true, nil},
		{"from NUL", func(o *tickets.Outgoing) { o.Queue.Address = "support@example.com\x00" }, true, nil},
		{"message-id CRLF", func(o *tickets.Outgoing) { o.MessageID = "a@b\r\n" + evil }, true, nil},
		{"message-id bracket", func(o *tickets.Outgoing) { o.MessageID = "a@b> <c@d" }, true, nil},
		{"in-reply-to CRLF", func(o *tickets.Outgoing) { o.InReplyTo = "c1@example.net\r\n" + evil }, false, func(t *testing.T, h mail.Header) {
			if h.Has("In-Reply-To") {
				t.Errorf("unsafe In-Reply-To kept: %q", h.Get("In-Reply-To"))
			}
		}},
		{"references CRLF", func(o *tickets.Outgoing) { o.References = []string{"ok@example.net", "x@y\n" + evil, "c1@example.net"} }, false, func(t *testing.T, h mail.Header) {
			if l, _ := h.MsgIDList("References"); strings.Join(l, " ") != "ok@example.net c1@example.net" {
				t.Errorf("References = %v", l)
			}
		}},
	}
	allowed := map[string]bool{"Dkim-Signature": true, "Date": true, "From": true, "To": true, "Cc": true, "Subject": true,
		"Message-Id": true, "In-Reply-To": true, "References": true, "Mime-Version": true, "Content-Type": true, "Content-Transfer-Encoding": true}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			og := outgoing()
			c.mut(&og)
			raw, _, err := e.ob.Compose(og)
			if c.wantErr {
				if !errors.Is(err, ErrHeader) {
					t.Fatalf("err = %v, want ErrHeader", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkWire(t, raw)
			h, body, keys := parse(t, raw)
			count := map[string]int{}
			for _, k := range keys {
				count[k]++
				if !allowed[k] {
					t.Errorf("unexpected header field %q", k)
				}
			}
			for _, k := range []string{"From", "To", "Subject", "Date", "Message-Id"} {
				if count[k] != 1 {
					t.Errorf("%d %s fields", count[k], k)
				}
			}
			if !strings.HasPrefix(body, "Hallo") {
				t.Errorf("body moved: %q", body)
			}
			if c.check != nil {
				c.check(t, h)
			}
		})
	}
}

func TestComposeLongSubject(t *testing.T) {
	e := newEnv(t, nil)
	for _, subj := range []string{
		strings.Repeat("word ", 300) + "[#7]",
		strings.Repeat("Größenänderung ", 80) + "[#7]",
		strings.Repeat("x", 1500),
		strings.Repeat("日本語", 200),
	} {
		og := outgoing()
		og.Subject = subj
		raw, _, err := e.ob.Compose(og)
		if err != nil {
			t.Fatal(err)
		}
		checkWire(t, raw)
		h, _, _ := parse(t, raw)
		got, err := h.Subject()
		if err != nil {
			t.Fatal(err)
		}
		want := cleanText(subj, maxSubjRunes)
		// A word longer than a header line must be split by the folding; only that case may
		// differ, by the inserted folding space.
		if got != want && strings.ReplaceAll(got, " ", "") != strings.ReplaceAll(want, " ", "") {
			t.Errorf("subject of %d bytes came back as %d bytes", len(want), len(got))
		}
		verifyGo(t, raw, e.dnsRecords(), 2)
	}
}

func TestComposeDedupesAndNeedsRecipient(t *testing.T) {
	e := newEnv(t, nil)
	og := outgoing()
	og.To = ""
	if _, _, err := e.ob.Compose(og); !errors.Is(err, ErrHeader) {
		t.Errorf("empty To: err = %v", err)
	}
}

// verifyGo checks raw with go-msgauth against records and wants n passing signatures.
func verifyGo(t *testing.T, raw []byte, records map[string]string, n int) []*dkim.Verification {
	t.Helper()
	vs := goVerify(t, raw, records)
	if len(vs) != n {
		t.Fatalf("%d signatures, want %d", len(vs), n)
	}
	for _, v := range vs {
		if v.Err != nil {
			t.Errorf("signature by %s does not verify: %v", v.Domain, v.Err)
		}
	}
	return vs
}

// goVerify runs go-msgauth's verifier with records as DNS.
func goVerify(t *testing.T, raw []byte, records map[string]string) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if r, ok := records[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
			return []string{r}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}})
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// TestComposeBodyArmor: body lines that start with "From " or "." are escaped in the
// quoted-printable form, so mbox munging or a careless transport cannot break the DKIM body
// hash, and the text still decodes to what the agent wrote.
func TestComposeBodyArmor(t *testing.T) {
	e := newEnv(t, nil)
	og := outgoing()
	og.Text = "From the team\n.\n.hidden\nFrom " + strings.Repeat("é", 40) + "\nFrom " + strings.Repeat("a", 69) + "=b\n" +
		strings.Repeat("x", 74) + " From end\n\nFrom\n"
	raw, _, err := e.ob.Compose(og)
	if err != nil {
		t.Fatal(err)
	}
	checkWire(t, raw)
	_, body, _ := parse(t, raw)
	if want := strings.ReplaceAll(og.Text, "\n", "\r\n"); body != want {
		t.Errorf("body = %q\nwant %q", body, want)
	}
	enc := raw[bytes.Index(raw, []byte("\r\n\r\n"))+4:]
	for _, l := range bytes.Split(enc, []byte("\r\n")) {
		if bytes.HasPrefix(l, []byte("From ")) || bytes.HasPrefix(l, []byte(".")) {
			t.Errorf("encoded line %q", l)
		}
		if len(l) > 76 {
			t.Errorf("encoded line of %d characters: %q", len(l), l)
		}
	}
	verifyGo(t, raw, e.dnsRecords(), 2)
}
