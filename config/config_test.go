package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// minimal is the smallest file that passes Parse; extra goes between the
// top-level keys and the [[queue]] block, so it may open tables.
func minimal(extra string) string {
	return `hostname = "mail.example.com"
data_dir = "/var/lib/mailgate"
key_file = "/etc/mailgate/data.key"
` + extra + `
[[queue]]
name = "support"
address = "support@example.com"
`
}

// problems parses src and returns its problems (nil when it parses).
func problems(t *testing.T, src string) Errors {
	t.Helper()
	_, err := Parse("test.toml", []byte(src))
	if err == nil {
		return nil
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse returned %T (%v), want *Errors", err, err)
	}
	return *errs
}

// lineOf is the 1-based line of the first occurrence of needle in src.
func lineOf(t *testing.T, src, needle string) int {
	t.Helper()
	i := strings.Index(src, needle)
	if i < 0 {
		t.Fatalf("test bug: %q not in source", needle)
	}
	return strings.Count(src[:i], "\n") + 1
}

func TestMinimalGetsDefaults(t *testing.T) {
	c, err := Parse("min.toml", []byte(minimal("")))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Hostname = "mail.example.com"
	want.Queues = []Queue{{Name: "support", Address: "support@example.com", Aliases: []string{}}}
	want.Path = "min.toml"
	want.lines, want.source = c.lines, c.source
	if !reflect.DeepEqual(c, want) {
		t.Errorf("minimal config:\n got %+v\nwant %+v", c, want)
	}
	// Spot-check the defaults the brief names, so a wrong Default() fails here too.
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"max_message_bytes", c.SMTP.MaxMessageBytes, int64(26214400)},
		{"max_recipients", c.SMTP.MaxRecipients, 50},
		{"max_line_length", c.SMTP.MaxLineLength, 4096},
		{"read_timeout", c.SMTP.ReadTimeout.Duration, 10 * time.Minute},
		{"write_timeout", c.SMTP.WriteTimeout.Duration, time.Minute},
		{"max_conns_per_ip", c.SMTP.MaxConnsPerIP, 20},
		{"messages_per_minute_per_ip", c.SMTP.MessagesPerMinutePerIP, 600},
		{"max_dkim_signatures", c.SMTP.MaxDKIMSignatures, 5},
		{"max_conns", c.SMTP.MaxConns, 0},
		{"max_conns_per_ipv6_48", c.SMTP.MaxConnsPerIPv6Net48, 50},
		{"idle_timeout", c.SMTP.IdleTimeout.Duration, 5 * time.Minute},
		{"busy_idle_timeout", c.SMTP.BusyIdleTimeout.Duration, 10 * time.Second},
		{"metrics.listen", c.Metrics.Listen, "127.0.0.1:9025"},
		{"dns.timeout", c.DNS.Timeout.Duration, 10 * time.Second},
		{"dmarc_reject", c.Verify.DMARCReject, "reject"},
		{"dmarc_quarantine", c.Verify.DMARCQuarantine, "quarantine"},
		{"temperror", c.Verify.TempError, "accept"},
		{"relay_tls", c.Outbound.RelayTLS, "starttls"},
		{"dkim_selector", c.Outbound.DKIMSelector, "mailgate"},
		{"dkim_ed25519_selector", c.Outbound.DKIMEd25519Selector, "mailgate-ed25519"},
		{"give_up_after", c.Outbound.GiveUpAfter.Duration, 120 * time.Hour},
		{"first_retry", c.Outbound.FirstRetry.Duration, 30 * time.Second},
		{"encrypt", c.PGP.Encrypt, "when-key-known"},
		{"web.listen", c.Web.Listen, "127.0.0.1:8443"},
		{"log.format", c.Log.Format, "text"},
		{"log.level", c.Log.Level, "info"},
		{"queue.auto_ack", c.Queues[0].AutoAck, false},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestFetchAccountDefaults(t *testing.T) {
	c, err := Parse("f.toml", []byte(minimal(`
[[fetch.account]]
url = "imaps://imap.example.com/INBOX"
username = "u"
password_file = "/p"
queue = "support"

[[fetch.account]]
url = "imap://imap.example.com/INBOX"
username = "u"
password_file = "/p"
queue = "support"
poll = "5m"
`)))
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Fetch.Accounts[0], c.Fetch.Accounts[1]
	if a.TLS != "implicit" || a.Poll.Duration != 60*time.Second || a.Move != "" {
		t.Errorf("imaps account defaults: %+v", a)
	}
	if b.TLS != "starttls" || b.Poll.Duration != 5*time.Minute {
		t.Errorf("imap account: %+v", b)
	}
}

func TestExplicitEmptyListOverridesDefault(t *testing.T) {
	c, err := Parse("e.toml", []byte(minimal("[smtp]\nlisten = []\n")))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.SMTP.Listen) != 0 {
		t.Errorf("listen = %q, want none (fetch-only setups turn SMTP off)", c.SMTP.Listen)
	}
}

func TestQueueLookup(t *testing.T) {
	c, err := Parse("q.toml", []byte(minimal(`
[[queue]]
name = "billing"
address = "Billing@Example.COM"
`)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr, want string
	}{
		{"support@example.com", "support"},
		{"SUPPORT@EXAMPLE.COM", "support"},
		{"Support@example.com", "support"},
		{"<support@example.com>", "support"},
		{"billing@example.com", "billing"},
		{"billing@EXAMPLE.com", "billing"},
		{"sales@example.com", ""},
		{"support@example.org", ""},
		{"", ""},
	} {
		q, ok := c.QueueByAddress(tc.addr)
		switch {
		case tc.want == "" && ok:
			t.Errorf("QueueByAddress(%q) = %q, want none", tc.addr, q.Name)
		case tc.want != "" && (!ok || q.Name != tc.want):
			t.Errorf("QueueByAddress(%q) = %v, %v; want %q", tc.addr, q, ok, tc.want)
		}
	}
	q, ok := c.QueueByName("billing")
	if !ok || q.Address != "Billing@Example.COM" {
		t.Errorf("QueueByName(billing) = %v, %v", q, ok)
	}
	q.AutoAck = true // the pointer is into the config, not a copy
	if q, _ := c.QueueByName("billing"); !q.AutoAck {
		t.Error("QueueByName returned a copy")
	}
	if _, ok := c.QueueByName("nope"); ok {
		t.Error("QueueByName(nope) found something")
	}
}

func TestDataPath(t *testing.T) {
	c := &Config{DataDir: "/var/lib/mailgate"}
	if got := c.DataPath("outbox", "1.eml"); got != "/var/lib/mailgate/outbox/1.eml" {
		t.Errorf("DataPath = %q", got)
	}
	if got := c.DataPath(); got != "/var/lib/mailgate" {
		t.Errorf("DataPath() = %q", got)
	}
}

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		out  string
	}{
		{"10m", 10 * time.Minute, "10m"},
		{"120h", 120 * time.Hour, "120h"},
		{"90s", 90 * time.Second, "90s"},
		{"1m30s", 90 * time.Second, "90s"},
		{"1500ms", 1500 * time.Millisecond, "1.5s"},
		{"0s", 0, "0s"},
	} {
		var d Duration
		if err := d.UnmarshalText([]byte(tc.in)); err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if d.Duration != tc.want {
			t.Errorf("%q = %v, want %v", tc.in, d.Duration, tc.want)
		}
		b, _ := d.MarshalText()
		if string(b) != tc.out {
			t.Errorf("%q marshals to %q, want %q", tc.in, b, tc.out)
		}
		var back Duration
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("%q does not round-trip: %v %v", b, back, err)
		}
	}
	var d Duration
	if err := d.UnmarshalText([]byte("10 minutes")); err == nil {
		t.Error(`"10 minutes" parsed`)
	}
}

func TestRelativePathsFollowTheFile(t *testing.T) {
	src := `hostname = "mail.example.com"
data_dir = "data"
key_file = "keys/data.key"
[outbound]
dkim_domain = "example.com"
dkim_key_file = "/abs/dkim.key"
[audit]
file = "audit.jsonl"
[[queue]]
name = "support"
address = "support@example.com"
`
	c, err := Parse(filepath.Join("/etc/mailgate", "mailgate.toml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		c.DataDir:              "/etc/mailgate/data",
		c.KeyFile:              "/etc/mailgate/keys/data.key",
		c.Outbound.DKIMKeyFile: "/abs/dkim.key",
		c.Audit.File:           "/etc/mailgate/audit.jsonl",
		c.PGP.KeyFile:          "",
	} {
		if got != want {
			t.Errorf("path %q, want %q", got, want)
		}
	}
}

func TestLoadReadError(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load(missing) = %v, want a wrapped not-exist error", err)
	}
}

func TestErrorsFormat(t *testing.T) {
	e := Errors{
		{File: "a.toml", Line: 3, Msg: "bad"},
		{File: "a.toml", Line: 0, Msg: "whole file"},
	}
	want := "a.toml:3: bad\na.toml: whole file"
	if got := e.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestSuggest(t *testing.T) {
	names := []string{"listen", "submission_listen", "max_message_bytes", "max_recipients", "tls_cert"}
	for in, want := range map[string]string{
		"max_msg_bytes":    "max_message_bytes",
		"max_recipents":    "max_recipients",
		"lsiten":           "listen",
		"LISTEN":           "listen",
		"tls-cert":         "tls_cert",
		"submision_listen": "submission_listen",
		"colour":           "",
		"x":                "",
	} {
		if got := suggest(in, names); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRetentionDays(t *testing.T) {
	c, err := Parse("r.toml", []byte(minimalForRetention+"[retention]\nclosed_after = \"365d\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Retention.ClosedAfter.Duration != 365*24*time.Hour {
		t.Fatalf("closed_after = %v", c.Retention.ClosedAfter)
	}
	if _, err := Parse("r.toml", []byte(minimalForRetention+"[retention]\nclosed_after = \"-5d\"\n")); err == nil {
		t.Fatal("negative retention accepted")
	}
}

const minimalForRetention = `hostname = "mail.example.com"
data_dir = "/var/lib/mailgate"
key_file = "/etc/mailgate/data.key"
[[queue]]
name = "support"
address = "support@example.com"
`

func TestAutoAckTextsPerLanguage(t *testing.T) {
	src := minimal("") + "auto_ack_texts = { de = \"Danke: #{ticket}\", fr-ch = \"Merci: #{ticket}\" }\n"
	c, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Queues[0].AutoAckTexts; got["de"] != "Danke: #{ticket}" || got["fr-ch"] != "Merci: #{ticket}" {
		t.Fatalf("auto_ack_texts: %v", got)
	}
	for _, bad := range []string{`{ German = "Danke" }`, `{ de = " " }`} {
		src := minimal("") + "auto_ack_texts = " + bad + "\n"
		errs := problems(t, src)
		if len(errs) != 1 || !strings.Contains(errs[0].Msg, "auto_ack_texts") || errs[0].Line != lineOf(t, src, "auto_ack_texts") {
			t.Errorf("%s: %v", bad, errs)
		}
	}
}

func TestQueueAliasesAndPostmaster(t *testing.T) {
	c, err := Parse("q.toml", []byte(`hostname = "mx.example.net"
[[queue]]
name = "support"
address = "support@example.com"
aliases = ["help@example.com", "Support@Old-Example.org"]
[[queue]]
name = "billing"
address = "billing@example.com"
`))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{
		"help@example.com": "support", "support@old-example.org": "support", "SUPPORT@OLD-EXAMPLE.ORG": "support",
		"postmaster@example.com": "support", "Postmaster@old-example.org": "support", "postmaster@mx.example.net": "support",
		"postmaster": "support", "billing@example.com": "billing", "postmaster@example.org": "", "help@old-example.org": "",
	} {
		q, ok := c.QueueByAddress(addr)
		if want == "" && ok || want != "" && (!ok || q.Name != want) {
			t.Errorf("QueueByAddress(%q) = %v, %v; want %q", addr, q, ok, want)
		}
	}
	// postmaster = true moves postmaster mail; an explicit alias keeps its queue.
	c, err = Parse("q.toml", []byte(`hostname = "mx.example.net"
[[queue]]
name = "support"
address = "support@example.com"
aliases = ["postmaster@old-example.org"]
[[queue]]
name = "reports"
address = "dmarc@example.com"
postmaster = true
`))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{"postmaster@example.com": "reports", "postmaster": "reports", "postmaster@old-example.org": "support"} {
		if q, ok := c.QueueByAddress(addr); !ok || q.Name != want {
			t.Errorf("QueueByAddress(%q) = %v, %v; want %q", addr, q, ok, want)
		}
	}

	src := `hostname = "mx.example.net"
[[queue]]
name = "support"
address = "support@example.com"
aliases = ["not an address", "billing@example.com"]
postmaster = true
[[queue]]
name = "billing"
address = "billing@example.com"
postmaster = true
`
	_, err = Parse("bad.toml", []byte(src))
	if err == nil {
		t.Fatal("bad aliases accepted")
	}
	for _, want := range []string{
		"bad.toml:" + strconv.Itoa(lineOf(t, src, "aliases")) + `: aliases in [[queue]] #1: "not an address" is not an e-mail address`,
		`aliases in [[queue]] #1 has "billing@example.com", already used by [[queue]] #2`,
		"bad.toml:" + strconv.Itoa(lineOf(t, src, `name = "billing"`)+2) + ": postmaster = true in [[queue]] #2 too",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
