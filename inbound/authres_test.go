package inbound

import (
	"bytes"
	"strings"
	"testing"
)

func TestAuthservID(t *testing.T) {
	for in, want := range map[string]string{
		"mx.example.com; spf=pass":                      "mx.example.com",
		"  mx.example.com ; spf=pass":                   "mx.example.com",
		"mx.example.com 1; none":                        "mx.example.com",
		"(comment) mx.example.com; none":                "mx.example.com",
		"(nested (comment; with) semicolons) mx.a; x=y": "mx.a",
		"(esc \\) paren) mx.b; none":                    "mx.b",
		"\r\n\t(folded)\r\n mx.c;\r\n spf=pass":         "mx.c",
		`"quoted.example"; none`:                        "quoted.example",
		`"q\"x"; none`:                                  `q"x`,
		"mx.example.com(comment); none":                 "mx.example.com",
		"mx.example.com;spf=pass":                       "mx.example.com",
		"":                                              "",
		"(unterminated mx.example.com; none":            "",
		`"unterminated; none`:                           "",
		"; spf=pass":                                    "",
	} {
		if got := authservID(in); got != want {
			t.Errorf("authservID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStripAuthResults(t *testing.T) {
	const id = "mx.mailgate.test"
	body := "\r\nAuthentication-Results: mx.mailgate.test; in the body, untouched\r\n"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"nothing to strip",
			"From: a@b.c\r\n",
			"From: a@b.c\r\n"},
		{"ours, folded, between others",
			"Received: x\r\nAuthentication-Results: mx.mailgate.test;\r\n\tspf=pass\r\n smtp.mailfrom=a@b.c\r\nFrom: a@b.c\r\n",
			"Received: x\r\nFrom: a@b.c\r\n"},
		{"name case, space before colon",
			"authentication-results : MX.Mailgate.Test; dkim=pass\r\nFrom: a@b.c\r\n",
			"From: a@b.c\r\n"},
		{"comment hiding the id from a naive parser",
			"Authentication-Results: (a;b) mx.mailgate.test; dmarc=pass\r\nFrom: a@b.c\r\n",
			"From: a@b.c\r\n"},
		{"others stay",
			"Authentication-Results: upstream.test; spf=pass\r\nAuthentication-Results: mx.mailgate.test.evil; spf=pass\r\n" +
				"Authentication-Results: (mx.mailgate.test) upstream.test; dkim=pass\r\nFrom: a@b.c\r\n",
			"Authentication-Results: upstream.test; spf=pass\r\nAuthentication-Results: mx.mailgate.test.evil; spf=pass\r\n" +
				"Authentication-Results: (mx.mailgate.test) upstream.test; dkim=pass\r\nFrom: a@b.c\r\n"},
		{"several of ours, first and last",
			"Authentication-Results: mx.mailgate.test; a=b\r\nFrom: a@b.c\r\nAuthentication-Results: mx.mailgate.test; c=d\r\n",
			"From: a@b.c\r\n"},
		{"ARC-Authentication-Results is not ours to touch",
			"ARC-Authentication-Results: i=1; mx.mailgate.test; spf=pass\r\nFrom: a@b.c\r\n",
			"ARC-Authentication-Results: i=1; mx.mailgate.test; spf=pass\r\nFrom: a@b.c\r\n"},
	} {
		got := StripAuthResults([]byte(tc.in+body), id)
		if string(got) != tc.want+body {
			t.Errorf("%s:\ngot  %q\nwant %q", tc.name, got, tc.want+body)
		}
	}

	// Bare LF line ends and a header-only message.
	lf := "Authentication-Results: mx.mailgate.test;\n spf=pass\nFrom: a@b.c\n\nbody\n"
	if got := string(StripAuthResults([]byte(lf), id)); got != "From: a@b.c\n\nbody\n" {
		t.Errorf("LF message: %q", got)
	}
	hdrOnly := "From: a@b.c\r\nAuthentication-Results: mx.mailgate.test; none"
	if got := string(StripAuthResults([]byte(hdrOnly), id)); got != "From: a@b.c\r\n" {
		t.Errorf("header-only message: %q", got)
	}
}

func TestPrepend(t *testing.T) {
	raw := []byte("From: a@b.c\r\n\r\nbody")
	got := Prepend(raw, "X-Test: 1")
	if string(got) != "X-Test: 1\r\nFrom: a@b.c\r\n\r\nbody" {
		t.Errorf("%q", got)
	}
	got[0] = 'Y'
	if raw[0] != 'F' {
		t.Error("Prepend wrote into its input")
	}
	if got := Prepend(raw, "X-Test: 1\r\n"); !bytes.HasPrefix(got, []byte("X-Test: 1\r\nFrom")) {
		t.Errorf("%q", got)
	}
}

func TestFold(t *testing.T) {
	short := "mx; spf=pass"
	if fold(short) != short {
		t.Errorf("short value folded: %q", fold(short))
	}
	long := `mx.example.com; spf=pass smtp.mailfrom=a@b.c; dkim=fail reason="x; y" header.d=b.c; dmarc=fail header.from=b.c`
	f := fold(long)
	if strings.Contains(f, "\"x;\r\n") {
		t.Errorf("folded inside a quoted string: %q", f)
	}
	if strings.ReplaceAll(f, ";\r\n\t", "; ") != long {
		t.Errorf("unfolding does not give the value back: %q", f)
	}
	for _, line := range strings.Split(f, "\r\n") {
		if len(line) > 78 {
			t.Errorf("line longer than 78: %q", line)
		}
	}
}

func TestHeaderFields(t *testing.T) {
	raw := []byte("From mbox line\r\nA: 1\r\n  2\r\nB:3\r\n\r\nC: body\r\n")
	fields, body, complete := headerFields(raw)
	if !complete || string(raw[body:]) != "C: body\r\n" {
		t.Fatalf("body at %d, complete %v", body, complete)
	}
	if len(fields) != 3 || fields[0].name != "" || fields[1].name != "A" || string(fields[1].value) != " 1\r\n  2\r\n" || fields[2].name != "B" {
		t.Fatalf("%+v", fields)
	}
	if _, _, complete := headerFields([]byte("A: 1\r\n")); complete {
		t.Error("a message without an empty line was taken as complete")
	}
}

func FuzzStripAuthResults(f *testing.F) {
	f.Add([]byte("Authentication-Results: mx.test; spf=pass\r\nFrom: a@b.c\r\n\r\nbody"), "mx.test")
	f.Add([]byte("Authentication-Results: (x;(y)) \"mx.test\"\r\n\r\n"), "MX.TEST")
	f.Add([]byte("\n\n"), "")
	f.Add([]byte("Authentication-Results:\r\n \r\n(\r\n"), "(")
	f.Fuzz(func(t *testing.T, raw []byte, id string) {
		out := StripAuthResults(raw, id)
		_, bodyIn, _ := headerFields(raw)
		_, bodyOut, _ := headerFields(out)
		if !bytes.Equal(raw[bodyIn:], out[bodyOut:]) {
			t.Fatalf("body changed: %q -> %q", raw, out)
		}
		if len(out) > len(raw) {
			t.Fatalf("grew: %q -> %q", raw, out)
		}
		again := StripAuthResults(out, id)
		if !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q -> %q -> %q", raw, out, again)
		}
	})
}
