package tickets

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/internal/testutil"
	"mailgate/store"
)

// Fuzz targets for what arrives from the network: MIME into a ticket message (Parse) and the
// threading headers that decide which ticket a message joins (msgIDs and Ingest).
//
//	go test ./tickets -run '^$' -fuzz FuzzParseMessage -fuzztime 60s
//	go test ./tickets -run '^$' -fuzz FuzzThreading -fuzztime 60s

// fuzzSeedFiles returns the mail files under the testdata directories dirs (licence
// and notes files skipped), mbox files split into their messages.
func fuzzSeedFiles(f testing.TB, dirs ...string) [][]byte {
	f.Helper()
	var out [][]byte
	for _, d := range dirs {
		root := testutil.Testdata(f, d)
		err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			base := strings.ToUpper(e.Name())
			for _, skip := range []string{"LICENSE", "COPYING", "README", "AUTHORS", "EXPECTED", "RENAMED", "NOTE"} {
				if strings.HasPrefix(base, skip) {
					return nil
				}
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if strings.HasSuffix(path, ".mbox") {
				out = append(out, splitMbox(b)...)
			} else {
				out = append(out, b)
			}
			return nil
		})
		if err != nil {
			f.Fatalf("seeds from %s: %v", d, err)
		}
	}
	if len(out) == 0 {
		f.Fatalf("no seeds in %v", dirs)
	}
	return out
}

// splitMbox splits an mbox at its "From " lines.
func splitMbox(b []byte) [][]byte {
	var out [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasPrefix(line, []byte("From ")) {
			if cur.Len() > 0 {
				out = append(out, bytes.Clone(cur.Bytes()))
			}
			cur.Reset()
			continue
		}
		cur.Write(line)
		cur.WriteString("\r\n")
	}
	if cur.Len() > 0 {
		out = append(out, cur.Bytes())
	}
	return out
}

// FuzzParseMessage: Parse never panics on any input, and what it returns is safe to show and
// to store: one-line values without control characters, valid UTF-8 text, bounded lists,
// attachment names that are plain file names.
func FuzzParseMessage(f *testing.F) {
	for _, b := range fuzzSeedFiles(f, "malformed", "threading/imaptest", "threading/mox") {
		f.Add(b)
	}
	f.Add([]byte("Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"))
	f.Add([]byte("Subject: =?utf-8?b?AAAA?=\r\nFrom: \"\r\n\" <a@b>\r\nMessage-ID: a<b@c\r\n\r\n"))
	f.Add([]byte("Content-Type: text/plain; name*=utf-8''%C3%A9%00..%2F..%2Fetc%2Fpasswd\r\nContent-Disposition: attachment\r\n\r\nx"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p := Parse(raw)
		if p == nil {
			t.Fatal("Parse returned nil")
		}
		for name, v := range map[string]string{"Subject": p.Subject, "FromName": p.FromName} {
			if strings.IndexFunc(v, unicode.IsControl) >= 0 {
				t.Fatalf("%s %q holds a control character", name, v)
			}
		}
		for name, v := range map[string]string{"From": p.From, "To": p.To} {
			if strings.ContainsAny(v, "\r\n\x00") {
				t.Fatalf("%s %q holds CR, LF or NUL", name, v)
			}
		}
		if !utf8.ValidString(p.Text) || !utf8.ValidString(p.HTML) {
			t.Fatal("text or HTML is not valid UTF-8")
		}
		ids := append(append([]string{p.MessageID}, p.InReplyTo...), p.References...)
		for _, id := range ids {
			if strings.IndexFunc(id, unicode.IsSpace) >= 0 || len(id) > 900 {
				t.Fatalf("message id %q has white space or is too long", id)
			}
		}
		if len(p.InReplyTo) > maxRefs || len(p.References) > maxRefs {
			t.Fatalf("%d In-Reply-To, %d References: more than %d", len(p.InReplyTo), len(p.References), maxRefs)
		}
		if len(p.Attachments) > maxParts+1 {
			t.Fatalf("%d attachments, limit %d parts", len(p.Attachments), maxParts)
		}
		for _, a := range p.Attachments {
			n := a.Name
			if n == "" || !utf8.ValidString(n) || strings.ContainsAny(n, "/\\\"") || strings.HasPrefix(n, ".") || len(n) > 120 ||
				strings.IndexFunc(n, unicode.IsControl) >= 0 {
				t.Fatalf("attachment name %q is not a safe file name", n)
			}
		}
	})
}

// fuzzEnv is one store and service per fuzzing process: ticket 1 belongs to carol, who wrote
// <c1@customer.example>; minted is an id mailgate made for carol on ticket 1.
type fuzzEnv struct {
	svc    *Service
	minted string
	n      int
}

const (
	fuzzCarol = "carol@customer.example"
	fuzzC1    = "c1@customer.example"
)

func newFuzzEnv(f *testing.F) *fuzzEnv {
	f.Helper()
	dir := fastTempDir(f)
	db, err := store.Open(filepath.Join(dir, "fuzz.db"), bytes.Repeat([]byte{7}, 32), store.Options{})
	if err != nil {
		f.Fatal(err)
	}
	// The fuzzing engine kills its workers without running cleanups; unlinked now, the file
	// lives as long as this process holds it open and no longer.
	os.RemoveAll(dir)
	f.Cleanup(func() { db.Close() })
	log, err := audit.New(db, "")
	if err != nil {
		f.Fatal(err)
	}
	svc := New(db, log, Options{Hostname: "mail.example.com", Queues: []Queue{{Name: "support", Address: "support@example.com"}}})
	first := "From: Carol <" + fuzzCarol + ">\r\nTo: support@example.com\r\nSubject: Order late\r\nMessage-ID: <" + fuzzC1 + ">\r\n\r\nWhere is it?\r\n"
	r, err := svc.Ingest(Incoming{Queue: "support", Raw: []byte(first), Auth: Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}, Via: "smtp"})
	if err != nil || r.Ticket != 1 {
		f.Fatalf("first ticket: %+v %v", r, err)
	}
	return &fuzzEnv{svc: svc, minted: svc.MintMessageID(1, fuzzCarol)}
}

// fastTempDir is a temporary directory in /dev/shm when there is one: every Ingest fsyncs,
// and on a disk that caps the fuzzer at a few dozen inputs a second; on tmpfs fsync is free.
// Durability is not what this target tests.
func fastTempDir(f *testing.F) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "mailgate-fuzz-"); err == nil {
			f.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return f.TempDir()
}

// threadingSeeds are header values from real threads: In-Reply-To and References as mailers
// write them, with comments, folding and missing brackets.
func threadingSeeds(f *testing.F) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range fuzzSeedFiles(f, "threading/imaptest", "threading/mox", "threading/notmuch/threading", "threading/notmuch/broken") {
		p := Parse(m)
		for _, k := range []string{"In-Reply-To", "References"} {
			if p.Header.Len() == 0 {
				continue
			}
			v := p.Header.Get(k)
			if v != "" && !seen[v] && len(out) < 200 {
				seen[v] = true
				out = append(out, v)
			}
		}
	}
	return out
}

// FuzzThreading: whatever a stranger writes in From, In-Reply-To, References and Subject, a
// message joins carol's ticket only when it comes from carol (a participant) and refers to a
// message of that ticket, or carries its tag and is DMARC-verified (DESIGN.md invariant 2).
// msgIDs keeps its own promises on the way: bounded, non-empty ids without white space.
func FuzzThreading(f *testing.F) {
	e := newFuzzEnv(f)
	for i, v := range threadingSeeds(f) {
		from := []string{fuzzCarol, "mallory@evil.example"}[i%2]
		f.Add(from, v, v, "Re: Order late", i%3 == 0)
	}
	for _, from := range []string{fuzzCarol, "CAROL@Customer.Example", "mallory@evil.example", "carol@customer.example.evil.example", "\"carol@customer.example\" <mallory@evil.example>"} {
		for _, ref := range []string{"<" + fuzzC1 + ">", fuzzC1, "<" + e.minted + ">", "<mg.1.0000000000000000.00000000000000000000@mail.example.com>", "<" + strings.ToUpper(fuzzC1) + ">", "(comment) <" + fuzzC1 + "> junk"} {
			f.Add(from, ref, "", "Re: [#1] Order late", true)
			f.Add(from, "", ref, "[#1]", false)
		}
	}
	admin := access.Actor{Name: "fuzz", Role: access.RoleAdmin}
	f.Fuzz(func(t *testing.T, from, inReplyTo, references, subject string, verified bool) {
		for _, v := range []string{inReplyTo, references} {
			ids := msgIDs(v, maxRefs)
			if len(ids) > maxRefs {
				t.Fatalf("msgIDs gave %d ids, max %d", len(ids), maxRefs)
			}
			for _, id := range ids {
				if id == "" || len(id) > 900 || strings.IndexFunc(id, unicode.IsSpace) >= 0 {
					t.Fatalf("msgIDs(%q) gave id %q", v, id)
				}
			}
		}
		e.n++
		raw := fmt.Sprintf("From: %s\r\nTo: support@example.com\r\nSubject: %s\r\nMessage-ID: <fuzz-%d@sender.example>\r\nIn-Reply-To: %s\r\nReferences: %s\r\n\r\nbody\r\n",
			from, subject, e.n, inReplyTo, references)
		p := Parse([]byte(raw)) // what Ingest will read, whatever the values injected
		// The tickets the references point at before this message is stored.
		before := map[uint64]bool{}
		for _, ref := range append(append([]string(nil), p.InReplyTo...), p.References...) {
			if tk, _, ok := e.svc.FindMessage(ref); ok {
				before[tk] = true
			}
			if tk, _, _, ok := e.svc.minted(ref); ok {
				before[tk] = true
			}
		}
		auth := Auth{SPF: "fail", DKIM: "none", DMARC: "fail"}
		if verified {
			auth = Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}
		}
		r, err := e.svc.Ingest(Incoming{Queue: "support", Raw: []byte(raw), Auth: auth, Via: "smtp", Remote: "192.0.2.1:25"})
		if err != nil {
			t.Fatalf("ingest: %v", err)
		}
		if r.Ticket == 1 && !strings.EqualFold(p.From, fuzzCarol) {
			t.Fatalf("%q joined carol's ticket (%s)", p.From, r.Outcome)
		}
		switch r.Outcome {
		case OutcomeThreaded:
			if !before[r.Ticket] {
				t.Fatalf("threaded into %d without a reference to it (refs %q %q)", r.Ticket, p.InReplyTo, p.References)
			}
		case OutcomeTagged:
			if !verified || !strings.Contains(p.Subject, fmt.Sprintf("[#%d]", r.Ticket)) {
				t.Fatalf("tagged into %d: verified %t, subject %q", r.Ticket, verified, p.Subject)
			}
		case OutcomeNew, OutcomeLinked, OutcomeDuplicate:
		default:
			t.Fatalf("outcome %q", r.Outcome)
		}
		tk, _, err := e.svc.Get(admin, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(tk.Participants) != 1 || tk.Participants[0].Address != fuzzCarol {
			t.Fatalf("carol's ticket has participants %+v", tk.Participants)
		}
	})
}
