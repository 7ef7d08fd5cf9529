package config

import (
	"strings"
	"testing"
)

// wantProblem asserts that errs holds a problem on line containing every
// fragment of msg.
func wantProblem(t *testing.T, errs Errors, line int, msg ...string) {
	t.Helper()
	for _, p := range errs {
		if p.Line != line {
			continue
		}
		ok := true
		for _, m := range msg {
			if !strings.Contains(p.Msg, m) {
				ok = false
			}
		}
		if ok {
			return
		}
	}
	t.Errorf("no problem on line %d containing %q; got:\n%v", line, msg, errs.Error())
}

func TestUnknownKeys(t *testing.T) {
	for _, tc := range []struct {
		name, src, at string
		msg           []string
	}{
		{"typo in table", minimal("[smtp]\nmax_msg_bytes = 1000\n"), "max_msg_bytes",
			[]string{`unknown key "max_msg_bytes" in [smtp]`, `did you mean "max_message_bytes"?`}},
		{"typo at top", strings.Replace(minimal(""), "hostname", "hostnme", 1), "hostnme",
			[]string{`unknown key "hostnme"`, `did you mean "hostname"?`}},
		{"wrong case", minimal("[web]\nListen = \"127.0.0.1:1\"\n"), "Listen",
			[]string{`unknown key "Listen" in [web]`, `did you mean "listen"?`}},
		{"key in the wrong table", minimal("[dns]\ntls_cert = \"/x\"\n"), "tls_cert",
			[]string{`unknown key "tls_cert" in [dns]`, `belongs in [smtp], [web] or [imap]`}},
		{"unknown table", minimal("[smpt]\nlisten = []\n"), "[smpt]",
			[]string{`unknown key "smpt"`, `did you mean "smtp"?`}},
		{"nothing close", minimal("[log]\ncolour = true\n"), "colour",
			[]string{`unknown key "colour" in [log]`, "known keys here: format, level"}},
		{"in second queue", minimal("[[queue]]\nname = \"b\"\naddress = \"b@example.com\"\nauto_ak = true\n"), "auto_ak",
			[]string{`unknown key "auto_ak" in [[queue]] #1`, `did you mean "auto_ack"?`}},
		{"in fetch account", minimal("[[fetch.account]]\nurl = \"imaps://h/INBOX\"\nusername = \"u\"\npassword_file = \"/p\"\nqueue = \"support\"\npasword_file = \"/q\"\n"), "pasword_file",
			[]string{`unknown key "pasword_file" in [[fetch.account]] #1`, `did you mean "password_file"?`}},
		{"dotted key", minimal("smtp.max_recipents = 5\n"), "smtp.max_recipents",
			[]string{`unknown key "max_recipents" in [smtp]`, `did you mean "max_recipients"?`}},
		{"table in the wrong place", minimal("[[account]]\nurl = \"imaps://h/INBOX\"\n"), "[[account]]",
			[]string{`unknown key "account"`, `"account" belongs in [fetch]`}},
		{"inline table", minimal("web = { listen = \"127.0.0.1:1\", tls = true }\n"), "web =",
			[]string{`unknown key "tls" in [web]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := problems(t, tc.src)
			wantProblem(t, errs, lineOf(t, tc.src, tc.at), tc.msg...)
			for _, p := range errs {
				if p.File != "test.toml" {
					t.Errorf("problem names file %q", p.File)
				}
			}
		})
	}
}

// The queue in "in second queue" above is the second [[queue]] of the file
// but the first in minimal's order; check numbering and lines with two.
func TestProblemsInArrayOfTablesPointAtTheirElement(t *testing.T) {
	src := `hostname = "mail.example.com"
key_file = "/k"

[[queue]]
name = "support"
address = "support@example.com"
auto_ack = "yes"

[[queue]]
name = "billing"
address = "billing@example.com"
auto_ack = "yes"
`
	errs := problems(t, src)
	wantProblem(t, errs, 7, "auto_ack in [[queue]] #1 must be a boolean", "auto_ack = true or auto_ack = false")
	wantProblem(t, errs, 12, "auto_ack in [[queue]] #2 must be a boolean")
	if len(errs) != 2 {
		t.Errorf("want 2 problems, got:\n%v", errs.Error())
	}
}

func TestWrongTypes(t *testing.T) {
	for _, tc := range []struct {
		name, src, at string
		msg           []string
	}{
		{"int as string", minimal("[smtp]\nmax_recipients = \"50\"\n"), "max_recipients",
			[]string{"max_recipients in [smtp] must be an integer, not a string", "max_recipients = 50 (no quotes)"}},
		{"int as float", minimal("[smtp]\nmax_message_bytes = 2.5e7\n"), "max_message_bytes",
			[]string{"must be an integer, not a float", "max_message_bytes = 25000000"}},
		{"string as int", minimal("[web]\nlisten = 8443\n"), "listen",
			[]string{"listen in [web] must be a string, not an integer", `listen = "8443"`}},
		{"list as string", minimal("[smtp]\nlisten = \"0.0.0.0:25\"\n"), "listen",
			[]string{"must be an array of strings, not a string", `listen = ["0.0.0.0:25"]`}},
		{"list element", minimal("[imap]\nlisten = [\n  \"127.0.0.1:1\",\n  143,\n]\n"), "143",
			[]string{"element 2 must be a string, not an integer", `quote it: "143"`}},
		{"duration as int", minimal("[smtp]\nread_timeout = 600\n"), "read_timeout",
			[]string{"must be a duration string, not an integer", `read_timeout = "600s"`}},
		{"bad duration", minimal("[dns]\ntimeout = \"10 seconds\"\n"), "timeout",
			[]string{`timeout in [dns]: "10 seconds" is not a duration`, `"90s"`}},
		{"bool as string", minimal("[pgp]\nwkd = \"true\"\n"), "wkd",
			[]string{"wkd in [pgp] must be a boolean, not a string"}},
		{"table as value", minimal("smtp = 5\n"), "smtp",
			[]string{"smtp must be a table, not an integer", "write [smtp] on a line of its own"}},
		{"single brackets for queue", strings.Replace(minimal(""), "[[queue]]", "[queue]", 1), "[queue]",
			[]string{"queue must be written [[queue]] (double brackets"}},
		{"date as string", strings.Replace(minimal(""), `"mail.example.com"`, "1979-05-27", 1), "hostname",
			[]string{"hostname must be a string, not a date/time"}},
		{"queue array of strings", minimal("[fetch]\naccount = [\"x\"]\n"), "account",
			[]string{"account in [fetch]: element 1 must be a table"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantProblem(t, problems(t, tc.src), lineOf(t, tc.src, tc.at), tc.msg...)
		})
	}
}

func TestSyntaxErrorHasLine(t *testing.T) {
	src := "hostname = \"mail.example.com\"\n\n[smtp]\nlisten = [\"a\"\nmax = 3\n"
	errs := problems(t, src)
	if len(errs) != 1 || errs[0].Line < 4 || !strings.Contains(errs[0].Msg, "TOML syntax") {
		t.Fatalf("want one syntax problem at line >= 4, got:\n%v", errs.Error())
	}
	dup := minimal("[smtp]\nmax_recipients = 1\nmax_recipients = 2\n")
	errs = problems(t, dup)
	if len(errs) != 1 || errs[0].Line != strings.Count(dup[:strings.LastIndex(dup, "max_recipients")], "\n")+1 {
		t.Fatalf("duplicate key: got:\n%v", errs.Error())
	}
}

// All problems come back together, in line order, with type, schema and
// value problems mixed.
func TestManyProblemsReportedTogether(t *testing.T) {
	src := `hostname = ""
key_file = "/k"

[smtp]
listen = ["0.0.0.0"]
max_recipients = -1
max_msg_bytes = 5

[web]
listen = "0.0.0.0:80"

[outbound]
relay = "smtp.example.com:587"
relay_tls = "none"

[log]
level = "verbose"
`
	errs := problems(t, src)
	want := []struct {
		line int
		msg  string
	}{
		{1, "hostname is not set"},
		{5, `"0.0.0.0" is not host:port`},
		{6, "max_recipients in [smtp] must be positive"},
		{7, `unknown key "max_msg_bytes"`},
		{10, "plain HTTP is allowed only on a loopback address"},
		{14, `relay_tls = "none" is allowed only for a loopback relay`},
		{17, `level in [log] is "verbose"`},
		{0, "no [[queue]] is defined"},
	}
	for _, w := range want {
		wantProblem(t, errs, w.line, w.msg)
	}
	if len(errs) != len(want) {
		t.Errorf("want %d problems, got %d:\n%v", len(want), len(errs), errs.Error())
	}
	for i := 1; i < len(errs); i++ {
		if errs[i].Line < errs[i-1].Line {
			t.Errorf("problems out of line order:\n%v", errs.Error())
		}
	}
	text := (&errs).Error()
	if !strings.HasPrefix(text, "test.toml: no [[queue]]") || !strings.Contains(text, "\ntest.toml:1: hostname is not set") {
		t.Errorf("Error() text:\n%s", text)
	}
}
