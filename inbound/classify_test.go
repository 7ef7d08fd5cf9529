package inbound

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"mailgate/internal/testutil"
)

// expectedKind derives the right answer from the corpus file names: sisimai names its files
// by what they are (lhost-*, rfc3464-*: bounces; rfc3834-*: auto-replies; arf-*: feedback
// reports; is-not-bounce-*: neither), and every mox file is a DMARC or TLS report.
func expectedKind(name string) (kind, category string) {
	switch {
	case strings.HasPrefix(name, "lhost-"):
		return KindBounce, "bounce (lhost-*)"
	case strings.HasPrefix(name, "rfc3464-"):
		return KindBounce, "bounce (rfc3464-*)"
	case strings.HasPrefix(name, "rfc3834-"):
		return KindAutoReply, "auto-reply (rfc3834-*)"
	case strings.HasPrefix(name, "arf-"):
		return KindReport, "ARF report (arf-*)"
	case strings.HasPrefix(name, "is-not-bounce-"):
		return "", "person (is-not-bounce-*)"
	case strings.HasPrefix(name, "dmarc-reports-"):
		return KindReport, "DMARC aggregate (mox)"
	case strings.HasPrefix(name, "tlsreports-"):
		return KindReport, "TLS-RPT (mox)"
	}
	return "?", "?"
}

// TestClassifyCorpus runs every sample of the two corpora through Classify as fetched mail
// (no envelope: the Return-Path field stands in) and prints the accuracy per category.
func TestClassifyCorpus(t *testing.T) {
	dirs := []string{
		testutil.Testdata(t, "autoreplies-bounces/sisimai"),
		testutil.Testdata(t, "dmarc/mox-report-mails"),
	}
	type tally struct{ ok, total, withIDs int }
	byCat := map[string]*tally{}
	files := 0
	for _, dir := range dirs {
		names, err := filepath.Glob(filepath.Join(dir, "*.eml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range names {
			name := filepath.Base(path)
			want, cat := expectedKind(name)
			if want == "?" {
				t.Errorf("%s: no expectation for this file name", name)
				continue
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			files++
			got := Classify(raw, Envelope{})
			tl := byCat[cat]
			if tl == nil {
				tl = &tally{}
				byCat[cat] = tl
			}
			tl.total++
			if got.Kind == want {
				tl.ok++
			} else {
				t.Errorf("%s: kind %q (%s), want %q", name, got.Kind, got.Reason, want)
			}
			if got.Kind == KindBounce && len(got.BounceOf) > 0 {
				tl.withIDs++
			}
			t.Logf("%-28s %-10s %-40s %v", name, got.Kind, got.Reason, got.BounceOf)
		}
	}
	if files < 50 {
		t.Fatalf("only %d sample files found", files)
	}
	var cats []string
	for c := range byCat {
		cats = append(cats, c)
	}
	sort.Strings(cats)
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-26s %8s %8s\n", "category", "correct", "bounces with original Message-ID")
	var ok, total int
	for _, c := range cats {
		tl := byCat[c]
		ok, total = ok+tl.ok, total+tl.total
		ids := ""
		if strings.HasPrefix(c, "bounce") {
			ids = fmt.Sprintf("%d/%d", tl.withIDs, tl.total)
		}
		fmt.Fprintf(&b, "%-26s %4d/%-3d %s\n", c, tl.ok, tl.total, ids)
	}
	fmt.Fprintf(&b, "%-26s %4d/%-3d\n", "all", ok, total)
	b.WriteString("(the 7 lhost bounces without an id quote a returned message that has no Message-ID)\n")
	t.Log(b.String())
}

// TestClassifyBounceOf checks the Message-IDs found for bounces of each form.
func TestClassifyBounceOf(t *testing.T) {
	cases := []struct {
		file string
		want string // must be among BounceOf
	}{
		{"lhost-postfix-03.eml", "20140701000000.000000000000@e1.example.ne.jp"}, // message/rfc822 part
		{"lhost-amazonses-01.eml", ""},
		{"rfc3464-07.eml", "000000000000000@list.example.jp"},               // text/rfc822-headers part
		{"lhost-qmail-03.eml", "00000000000000.5529.qmail@nijo.example.jp"}, // quoted in text
		{"lhost-exim-02.eml", "E1X58pB-0004bW-2s@marutamachi.example.org"},
		{"lhost-gmail-01.eml", "D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com"},
		{"rfc3464-09.eml", "00000000000000000000000000000000000000000@example.org"},
	}
	dir := testutil.Testdata(t, "autoreplies-bounces/sisimai")
	for _, c := range cases {
		raw, err := os.ReadFile(filepath.Join(dir, c.file))
		if err != nil {
			t.Fatal(err)
		}
		got := Classify(raw, Envelope{})
		if got.Kind != KindBounce {
			t.Fatalf("%s: kind %q", c.file, got.Kind)
		}
		own := firstID(readMessage(raw).get("message-id"))
		for _, id := range got.BounceOf {
			if strings.EqualFold(id, own) {
				t.Errorf("%s: the bounce's own Message-ID %s is listed", c.file, own)
			}
		}
		if c.want == "" { // any id but its own
			if len(got.BounceOf) == 0 {
				t.Errorf("%s: no Message-ID found", c.file)
			}
			continue
		}
		found := false
		for _, id := range got.BounceOf {
			found = found || id == c.want
		}
		if !found {
			t.Errorf("%s: BounceOf %v lacks %s", c.file, got.BounceOf, c.want)
		}
	}
}

// TestClassifySignals checks each signal on its own, and that the envelope wins over headers.
func TestClassifySignals(t *testing.T) {
	person := "From: Carol <carol@example.org>\r\nTo: support@example.com\r\nSubject: my order\r\nMessage-ID: <p1@example.org>\r\n\r\nWhere is it?\r\n"
	with := func(h string) []byte { return []byte(h + "\r\n" + person) }
	cases := []struct {
		name string
		raw  []byte
		env  Envelope
		want string
	}{
		{"a person", []byte(person), Envelope{Known: true, MailFrom: "carol@example.org"}, ""},
		{"Auto-Submitted: no", with("Auto-Submitted: no"), Envelope{Known: true, MailFrom: "carol@example.org"}, ""},
		{"Auto-Submitted: auto-replied", with("Auto-Submitted: auto-replied"), Envelope{Known: true, MailFrom: "c@example.org"}, KindAutoReply},
		{"Auto-Submitted: auto-generated (comment)", with("Auto-Submitted: Auto-Generated (x)"), Envelope{}, KindAutoReply},
		{"Auto-Submitted empty comment", with("Auto-Submitted: ;"), Envelope{}, KindAutoReply},
		{"X-Autoreply", with("X-Autoreply: yes"), Envelope{}, KindAutoReply},
		{"Precedence: bulk", with("Precedence: bulk"), Envelope{}, KindAutoReply},
		{"Precedence: list", with("Precedence: List"), Envelope{}, KindAutoReply},
		{"Precedence: first-class", with("Precedence: first-class"), Envelope{}, ""},
		{"List-Id", with("List-Id: <talk.lists.example.org>"), Envelope{}, KindAutoReply},
		{"List-Unsubscribe", with("List-Unsubscribe: <mailto:u@example.org>"), Envelope{}, KindAutoReply},
		{"vacation subject", []byte(strings.Replace(person, "my order", "Out of Office: back Monday", 1)), Envelope{}, KindAutoReply},
		{"null sender, nothing else", []byte(person), Envelope{Known: true}, KindAutoReply},
		{"null Return-Path, no envelope", with("Return-Path: <>"), Envelope{}, KindAutoReply},
		{"envelope beats Return-Path", with("Return-Path: <>"), Envelope{Known: true, MailFrom: "carol@example.org"}, ""},
		{"X-Failed-Recipients", with("X-Failed-Recipients: x@example.net"), Envelope{}, KindBounce},
		{"mailer-daemon with a bounce subject", []byte("From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n"), Envelope{}, KindBounce},
		{"postmaster asking a question", []byte("From: postmaster@example.net\r\nSubject: your server\r\n\r\nhi\r\n"), Envelope{Known: true, MailFrom: "postmaster@example.net"}, ""},
		{"TLS-Report-Domain", with("TLS-Report-Domain: example.com"), Envelope{}, KindReport},
		{"DMARC subject, no attachment, no submitter", []byte(strings.Replace(person, "my order", "Report Domain: example.com", 1)), Envelope{}, ""},
		{"DMARC subject with submitter", []byte(strings.Replace(person, "my order", "Report Domain: example.com Submitter: google.com Report-ID: 1", 1)), Envelope{}, KindReport},
		{"read receipt", []byte("From: c@example.org\r\nContent-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nread\r\n--x--\r\n"), Envelope{}, KindAutoReply},
		{"malformed Content-Type with report-type", []byte("From: a@example.org\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\r\n\r\nbody\r\n"), Envelope{}, KindBounce},
		{"empty", nil, Envelope{}, ""},
		{"header only, no body", []byte("Auto-Submitted: auto-replied"), Envelope{}, KindAutoReply},
		{"mbox From line", []byte("From MAILER-DAEMON Mon Sep 20 19:29:27 2021\nFrom: a@example.org\nAuto-Submitted: auto-replied\n\nx\n"), Envelope{}, KindAutoReply},
	}
	for _, c := range cases {
		if got := Classify(c.raw, c.env); got.Kind != c.want {
			t.Errorf("%s: kind %q (%s), want %q", c.name, got.Kind, got.Reason, c.want)
		}
	}
}

// FuzzClassify: Classify reads network input; it must never panic or run away.
func FuzzClassify(f *testing.F) {
	dir := testutil.Testdata(f, "autoreplies-bounces/sisimai")
	names, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	for _, n := range names[:10] {
		raw, _ := os.ReadFile(n)
		f.Add(raw, "", true)
	}
	f.Add([]byte("Content-Type: multipart/report; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n\r\nMessage-ID: <x>\r\n--a--"), "", false)
	f.Fuzz(func(t *testing.T, raw []byte, from string, known bool) {
		c := Classify(raw, Envelope{Known: known, MailFrom: from})
		if len(c.BounceOf) > classifyMaxIDs {
			t.Fatalf("%d ids", len(c.BounceOf))
		}
		if c.Kind != "" && c.Kind != KindBounce && c.Kind != KindAutoReply && c.Kind != KindReport {
			t.Fatalf("kind %q", c.Kind)
		}
	})
}
