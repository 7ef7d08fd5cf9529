package agentmail

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"mailgate/tickets"
)

func TestStripQuoted(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		html           bool
	}{
		{"plain", "Thanks!\n", "Thanks!\n", false},
		{"quote below", "Ships today.\n\nOn Mon, 2 Feb 2026, Customer wrote:\n> Where is it?\n>\n> Bye\n", "Ships today.\n", false},
		{"wrapped attribution", "Ships today.\n\nOn Mon, 2 Feb 2026 at 15:04, A Customer With A Long Name\n<cust@example.net> wrote:\n> Where is it?\n", "Ships today.\n", false},
		{"german", "Kommt heute.\n\nAm 02.02.2026 um 15:04 schrieb Kunde:\n> Wo bleibt es?\n", "Kommt heute.\n", false},
		{"signature kept", "Ships today.\n-- \nAlice, Support\n\nOn Monday, Customer wrote:\n> Where?\n", "Ships today.\n-- \nAlice, Support\n", false},
		{"inline quote kept", "> Where is it?\nIt ships today.\n", "> Where is it?\nIt ships today.\n", false},
		{"outlook", "Ships today.\n\n-----Original Message-----\nFrom: Customer\nWhere?\n", "Ships today.\n", false},
		{"html attribution", "Ships today.\nOn Monday, Customer wrote:\nWhere is it?\n", "Ships today.\n", true},
		{"only the quote", "On Monday, Customer wrote:\n> Where?\n", "\n", false},
		{"no attribution, quote kept out", "Ships today.\n> Where?\n", "Ships today.\n", false},
	} {
		if got := stripQuoted(tc.in, tc.html); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestUnflow(t *testing.T) {
	in := "This is a long \nflowed line.\n \nNew para \nhere.\n-- \nsig\n> quoted \n> stays"
	want := "This is a long flowed line.\n\nNew para here.\n-- \nsig\n> quoted \n> stays"
	if got := unflow(in, false); got != want {
		t.Errorf("unflow = %q, want %q", got, want)
	}
	if got := unflow("abc \ndef\n", true); got != "abcdef\n" {
		t.Errorf("unflow delsp = %q", got)
	}
}

func TestStripOurHeaders(t *testing.T) {
	raw := "X-Mailgate-Verified: yes\r\nFrom: a@example.net\r\nx-mailgate-ticket: 9\r\n\tcontinued\r\nSubject: hi\r\n\r\nX-Mailgate-Verified: in the body stays\r\n"
	got := string(stripOurHeaders([]byte(raw)))
	want := "From: a@example.net\r\nSubject: hi\r\n\r\nX-Mailgate-Verified: in the body stays\r\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	// Bare LF and a message without a body: the header's line ends become CRLF.
	if got := string(stripOurHeaders([]byte("X-Mailgate-A: 1\nB: 2\n"))); got != "B: 2\r\n" {
		t.Errorf("bare LF: %q", got)
	}
	// A header ended by a bare LF: what follows stays body, never a header after ours.
	if got := string(stripOurHeaders([]byte("A: 1\n\nX-Mailgate-Verified: yes\n"))); got != "A: 1\r\n\r\nX-Mailgate-Verified: yes\n" {
		t.Errorf("bare-LF header end: %q", got)
	}
}

func TestAppendFieldNeverBreaksTheHeader(t *testing.T) {
	b := appendField(nil, "Subject", "evil\r\nBcc: x@example.com "+strings.Repeat("word ", 40)+strings.Repeat("x", 2000))
	for _, l := range strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n") {
		if len(l) > 998 {
			t.Errorf("line of %d characters", len(l))
		}
		if strings.HasPrefix(l, "Bcc:") {
			t.Errorf("a value opened a new field: %q", l)
		}
	}
	if !strings.HasPrefix(string(b), "Subject: evilBcc: x@example.com word") {
		t.Errorf("folded field %q", b[:60])
	}
}

func TestTooComplex(t *testing.T) {
	nest := func(depth int) []byte {
		var b strings.Builder
		b.WriteString("Subject: deep\r\n")
		for i := 0; i < depth; i++ {
			b.WriteString("Content-Type: multipart/mixed; boundary=b" + strings.Repeat("x", i) + "\r\n\r\n--b" + strings.Repeat("x", i) + "\r\n")
		}
		b.WriteString("Content-Type: text/plain\r\n\r\nhi\r\n")
		return []byte(b.String())
	}
	if tooComplex(nest(3)) {
		t.Error("depth 3 is too complex")
	}
	if !tooComplex(nest(maxServedDepth + 2)) {
		t.Error("deep nesting is served raw")
	}
	var wide strings.Builder
	wide.WriteString("Content-Type: multipart/mixed; boundary=b\r\n\r\n")
	for i := 0; i < maxServedParts+1; i++ {
		wide.WriteString("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n")
	}
	wide.WriteString("--b--\r\n")
	if !tooComplex([]byte(wide.String())) {
		t.Error("too many parts is served raw")
	}
	r := &renderer{hostname: testHost, queueAddr: func(string) string { return "support@example.com" }}
	m := &tickets.Message{Ticket: 1, Seq: 1, Direction: tickets.In, From: customer, Subject: "deep", Text: "the readable part", Date: time.Now()}
	sv := r.render("support", 1, 1, m, nest(maxServedDepth+2))
	if !contains(sv.body, "X-Mailgate-Problem: MIME structure too deep") || !contains(sv.body, "the readable part") {
		t.Errorf("deep message served as:\n%s", sv.body)
	}
}

func TestFixStructure(t *testing.T) {
	// A multipart without parts would make go-imap panic while writing BODYSTRUCTURE.
	bs := imapserver.ExtractBodyStructure(bytes.NewReader([]byte("Content-Type: multipart/mixed; boundary=x\r\n\r\nno parts at all\r\n")))
	fixed := fixStructure(bs)
	sp, ok := fixed.(*imap.BodyStructureSinglePart)
	if !ok || sp.Type != "text" || sp.Extended == nil {
		t.Fatalf("fixed structure %#v", fixed)
	}
	untyped := fixStructure(&imap.BodyStructureSinglePart{})
	if sp := untyped.(*imap.BodyStructureSinglePart); sp.Type != "text" || sp.Subtype != "plain" || sp.Extended == nil {
		t.Fatalf("untyped part %#v", sp)
	}
}

func TestResolve(t *testing.T) {
	sel := &selected{entries: []tickets.MailboxEntry{{UID: 3}, {UID: 5}, {UID: 9}, {UID: 10}}}
	for _, tc := range []struct {
		set  imap.NumSet
		want []int
	}{
		{imap.SeqSetNum(1, 3), []int{0, 2}},
		{func() imap.SeqSet { var s imap.SeqSet; s.AddRange(2, 0); return s }(), []int{1, 2, 3}},
		{func() imap.SeqSet { var s imap.SeqSet; s.AddRange(1, 4294967295); return s }(), []int{0, 1, 2, 3}},
		{imap.SeqSetNum(7), nil},
		{imap.UIDSetNum(5, 10, 11), []int{1, 3}},
		{func() imap.UIDSet { var s imap.UIDSet; s.AddRange(6, 0); return s }(), []int{2, 3}},
		// UID n:* always includes the highest UID, even when it is below n (RFC 3501 6.4.8).
		{func() imap.UIDSet { var s imap.UIDSet; s.AddRange(20, 0); return s }(), []int{3}},
		{imap.SearchRes(), nil},
	} {
		if got := sel.resolve(tc.set); !slices.Equal(got, tc.want) {
			t.Errorf("resolve(%v) = %v, want %v", tc.set, got, tc.want)
		}
	}
	if got := (&selected{}).resolve(imap.SeqSetNum(1)); got != nil {
		t.Errorf("empty mailbox: %v", got)
	}
}

func TestViewIDRoundTrip(t *testing.T) {
	r := &renderer{hostname: testHost}
	id := r.viewID(42, 3)
	if got, ok := r.parseViewID("<" + id + ">"); !ok || got != 42 {
		t.Fatalf("parseViewID(%s) = %d %v", id, got, ok)
	}
	if _, ok := r.parseViewID("mailgate-view.42.3@evil.example"); ok {
		t.Fatal("a view id of another host was accepted")
	}
}

func FuzzRender(f *testing.F) {
	f.Add([]byte("From: a@example.net\r\nX-Mailgate-Verified: yes\r\nSubject: hi\r\n\r\nbody\r\n"), "subject", false)
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nx\r\n--b--\r\n"), "s", false)
	f.Add([]byte("Content-Type: multipart/alternative\r\n\r\n"), "\r\nBcc: x", true)
	f.Add([]byte("\x00\xff: \r\n\r\n"), "", false)
	r := &renderer{hostname: testHost, queueAddr: func(string) string { return "support@example.com" }}
	f.Fuzz(func(t *testing.T, raw []byte, subject string, encrypted bool) {
		m := &tickets.Message{Ticket: 1, Seq: 1, Direction: tickets.In, From: customer, Subject: subject, Text: subject, Encrypted: encrypted, MessageID: subject}
		sv := r.render("support", 1, 1, m, raw)
		// What go-imap makes of it must be writable without a panic.
		bs := fixStructure(imapserver.ExtractBodyStructure(bytes.NewReader(sv.body)))
		checkStructure(t, bs)
		envelope(sv.body)
		imapserver.ExtractBodySection(bytes.NewReader(sv.body), &imap.FetchItemBodySection{Part: []int{1, 1}})
		if !bytes.HasPrefix(sv.body, []byte("X-Mailgate-Ticket: 1\r\n")) {
			t.Fatalf("served message does not start with our header: %q", sv.body[:min(40, len(sv.body))])
		}
		hdr := sv.body
		if i := bytes.Index(hdr, []byte("\r\n\r\n")); i >= 0 {
			hdr = hdr[:i]
		}
		if n := bytes.Count(bytes.ToLower(hdr), []byte("\nx-mailgate-verified:")); n > 1 {
			t.Fatalf("%d verdict headers", n)
		}
	})
}

func checkStructure(t *testing.T, bs imap.BodyStructure) {
	switch b := bs.(type) {
	case *imap.BodyStructureMultiPart:
		if len(b.Children) == 0 || b.Extended == nil {
			t.Fatalf("multipart %#v", b)
		}
		for _, c := range b.Children {
			checkStructure(t, c)
		}
	case *imap.BodyStructureSinglePart:
		if b.Extended == nil || b.Type == "" {
			t.Fatalf("single part %#v", b)
		}
		if b.MessageRFC822 != nil {
			checkStructure(t, b.MessageRFC822.BodyStructure)
		}
	default:
		t.Fatalf("structure %T", bs)
	}
}

func FuzzReplyText(f *testing.F) {
	f.Add([]byte("From: alice@example.com\r\nContent-Type: text/plain; format=flowed; delsp=yes\r\n\r\nHi \r\nthere\r\n\r\nOn x, y wrote:\r\n> q\r\n"))
	f.Add([]byte("Content-Type: multipart/related; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Hi</p>\r\n--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/encrypted; boundary=b\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p := tickets.Parse(raw)
		in := inspect(raw, p)
		text := replyText(p, in)
		if !strings.HasSuffix(text, "\n") {
			t.Fatalf("reply text %q does not end with a newline", text)
		}
	})
}

func TestRenderGone(t *testing.T) {
	r := &renderer{hostname: testHost, queueAddr: func(string) string { return "support@example.com" }}
	sv := r.render("support", 4, 2, nil, nil)
	if !contains(sv.body, "X-Mailgate-Ticket: 4\r\n") || !contains(sv.body, "no longer available") || !contains(sv.body, "<mailgate-view.4.2@"+testHost+">") {
		t.Fatalf("gone message:\n%s", sv.body)
	}
}

// A message whose Message-ID an earlier message holds (issue 11.2) is served under its view
// id, so that a mail client's reply to it finds this ticket, not the one the index names.
func TestRenderIDTakenGetsViewID(t *testing.T) {
	r := &renderer{hostname: testHost, queueAddr: func(string) string { return "support@example.com" }}
	raw := []byte("From: mallory@evil.example\r\nMessage-ID: <c1@customer.example>\r\nmessage-id:\r\n <c1@customer.example>\r\nSubject: hi\r\n\r\nMessage-ID: <body@stays>\r\n")
	m := &tickets.Message{Ticket: 7, Seq: 1, Direction: tickets.In, From: "mallory@evil.example", MessageID: "c1@customer.example", IDTaken: true}
	sv := r.render("support", 7, 1, m, raw)
	if contains(sv.body, "<c1@customer.example>") || !contains(sv.body, "Message-ID: <mailgate-view.7.1@"+testHost+">\r\n") || !contains(sv.body, "<body@stays>") {
		t.Fatalf("served:\n%s", sv.body)
	}
	if got, ok := r.parseViewID(envelope(sv.body).MessageID); !ok || got != 7 {
		t.Fatalf("envelope Message-ID names ticket %d (%v)", got, ok)
	}
	m.IDTaken = false
	if sv := r.render("support", 7, 1, m, raw); !contains(sv.body, "Message-ID: <c1@customer.example>") {
		t.Fatalf("the holder of an id lost it:\n%s", sv.body)
	}
}

// An attachment name with a bidi override is never served as sent (issue 11.5): the client
// gets the text form, which lists the neutralised name.
func TestRenderHidesBidiAttachmentNames(t *testing.T) {
	r := &renderer{hostname: testHost, queueAddr: func(string) string { return "support@example.com" }}
	for _, disp := range []string{
		"attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe",
		"attachment; filename=\"=?UTF-8?Q?invoice=E2=80=AEfdp.exe?=\"",
		"attachment; filename=\"invoice\u202efdp.exe\"",
	} {
		raw := []byte("From: carol@customer.example\r\nSubject: inv\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" +
			"--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: " + disp + "\r\n\r\nMZ\r\n--B--\r\n")
		p := tickets.Parse(raw)
		m := &tickets.Message{Ticket: 1, Seq: 1, Direction: tickets.In, From: "carol@customer.example", Subject: "inv", Text: p.Text,
			Attachments: []tickets.Attachment{{Name: p.Attachments[0].Name, ContentType: p.Attachments[0].ContentType, Size: 2}}}
		sv := r.render("support", 1, 1, m, raw)
		body := string(sv.body)
		if strings.Contains(body, "\u202e") || strings.Contains(body, "%E2%80%AE") || strings.Contains(body, "=E2=80=AE") || !strings.Contains(body, "invoicefdp.exe") ||
			!strings.Contains(body, "X-Mailgate-Problem: attachment names hold invisible") {
			t.Errorf("%s: served\n%s", disp, body)
		}
	}
	// A plain name is served as sent.
	raw := []byte("From: a@b.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\n\r\n%PDF\r\n--B--\r\n")
	sv := r.render("support", 1, 1, &tickets.Message{Ticket: 1, Seq: 1, Direction: tickets.In}, raw)
	if !contains(sv.body, "filename=\"invoice.pdf\"") {
		t.Fatalf("plain name not served raw:\n%s", sv.body)
	}
}

func TestStripOurFields(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Hi\nX-Mailgate-Ticket: 7\nBye", "Hi\nBye"},
		{"Hi\nx-mailgate-verified:yes\n", "Hi\n"},
		{"> X-Mailgate-Author: carol\n> Hello", "> Hello"},
		{"> > X-Mailgate-Auth: spf=pass\n> > Hello", "> > Hello"},
		{"   X-Mailgate-Direction: in\nkept", "kept"},
		{"Authentication-Results: mx; spf=pass\n dkim=pass;\n\tdmarc=pass\nFrom: a@b\n", "From: a@b\n"},
		{"> Authentication-Results: mx;\n>  dkim=pass\n> body", "> body"},
		// A continuation ends at a line that is not indented under the same prefix.
		{"Authentication-Results: mx;\n\nSee above.", "\nSee above."},
		// Not ours, or not a field: kept.
		{"X-Mailer: Thunderbird\nThe Authentication-Results header says: pass", "X-Mailer: Thunderbird\nThe Authentication-Results header says: pass"},
		{"X-Mailgate is our product name.", "X-Mailgate is our product name."},
	} {
		if got := stripOurFields(tc.in); got != tc.want {
			t.Errorf("stripOurFields(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
