package config

import (
	"strings"
	"testing"
)

// Every value rule, each with a file that breaks it (and must name the line
// and say what to write) and the same file fixed (which must parse).
func TestValueRules(t *testing.T) {
	top := func(host, data, key string) string {
		return "hostname = " + host + "\ndata_dir = " + data + "\nkey_file = " + key + "\n" +
			"[[queue]]\nname = \"support\"\naddress = \"support@example.com\"\n"
	}
	const okHost, okData, okKey = `"mail.example.com"`, `"/d"`, `"/k"`
	fetch := func(body string) string {
		return minimal("[[fetch.account]]\n" + body)
	}
	const okAccount = "url = \"imaps://imap.example.com/INBOX\"\nusername = \"u\"\npassword_file = \"/p\"\nqueue = \"support\"\n"

	for _, tc := range []struct {
		name      string
		bad, good string
		at        string // text on the line the problem must point at ("" = line 0)
		msg       []string
	}{
		{"hostname empty", top(`""`, okData, okKey), top(okHost, okData, okKey), "hostname", []string{"hostname is not set", "mail.example.com"}},
		{"hostname syntax", top(`"mail example.com"`, okData, okKey), top(`"localhost"`, okData, okKey), "hostname", []string{`hostname "mail example.com" is not a host name`}},
		{"hostname injection", top(`"a.example\r\nX: y"`, okData, okKey), top(okHost, okData, okKey), "hostname", []string{"is not a host name"}},
		{"data_dir empty", top(okHost, `""`, okKey), top(okHost, okData, okKey), "data_dir", []string{"data_dir is empty"}},
		{"key_file empty", top(okHost, okData, `""`), top(okHost, okData, okKey), "key_file", []string{"key_file is empty", "mailgate init"}},

		{"no queue", "hostname = \"mail.example.com\"\nkey_file = \"/k\"\n", minimal(""), "", []string{"no [[queue]] is defined", "[[queue]]"}},
		{"queue name missing", minimal("[[queue]]\naddress = \"b@example.com\"\n"), minimal("[[queue]]\nname = \"b\"\naddress = \"b@example.com\"\n"),
			"[[queue]]", []string{"[[queue]] #1 has no name"}},
		{"queue name not simple", minimal("[[queue]]\nname = \"Billing Team\"\naddress = \"b@example.com\"\n"), minimal("[[queue]]\nname = \"billing-team\"\naddress = \"b@example.com\"\n"),
			"name = \"Billing", []string{`name in [[queue]] #1 is "Billing Team"`, `"billing-team"`}},
		{"queue name duplicate", minimal("[[queue]]\nname = \"support\"\naddress = \"b@example.com\"\n"), minimal("[[queue]]\nname = \"b\"\naddress = \"b@example.com\"\n"),
			"name = \"support\"\naddress = \"support@", []string{`name in [[queue]] #2 is "support", already used by [[queue]] #1`}},
		{"queue address missing", minimal("[[queue]]\nname = \"b\"\n"), minimal("[[queue]]\nname = \"b\"\naddress = \"b@example.com\"\n"),
			"[[queue]]", []string{"[[queue]] #1 has no address"}},
		{"queue address bad", minimal("[[queue]]\nname = \"b\"\naddress = \"billing at example.com\"\n"), minimal("[[queue]]\nname = \"b\"\naddress = \"b@example.com\"\n"),
			"address = \"billing", []string{`"billing at example.com" is not an e-mail address`}},
		{"queue address display name", minimal("[[queue]]\nname = \"b\"\naddress = \"Billing <b@example.com>\"\n"), minimal("[[queue]]\nname = \"b\"\naddress = \"b@example.com\"\n"),
			"address = \"Billing", []string{`write only the address: "b@example.com"`}},
		{"queue address duplicate", minimal("[[queue]]\nname = \"b\"\naddress = \"SUPPORT@example.com\"\n"), minimal("[[queue]]\nname = \"b\"\naddress = \"b@example.com\"\n"),
			"address = \"support@", []string{`already used by [[queue]] #1`}},

		{"smtp listen not host:port", minimal("[smtp]\nlisten = [\"0.0.0.0\"]\n"), minimal("[smtp]\nlisten = [\"0.0.0.0:25\"]\n"), "listen", []string{`listen in [smtp]: "0.0.0.0" is not host:port`, `"0.0.0.0:25"`}},
		{"smtp listen bad port", minimal("[smtp]\nlisten = [\":99999\"]\n"), minimal("[smtp]\nlisten = [\":2525\"]\n"), "listen", []string{"no valid port number"}},
		{"smtp listen bad host", minimal("[smtp]\nlisten = [\"ex ample:25\"]\n"), minimal("[smtp]\nlisten = [\"[::1]:25\"]\n"), "listen", []string{"neither an IP address nor a host name"}},
		{"smtp listen element line", minimal("[smtp]\nlisten = [\n  \"127.0.0.1:25\",\n  \"nope\",\n]\n"), minimal("[smtp]\nlisten = [\n  \"127.0.0.1:25\",\n  \"127.0.0.2:25\",\n]\n"), "\"nope\"", []string{`"nope" is not host:port`}},
		{"submission without TLS", minimal("[smtp]\nsubmission_listen = [\"0.0.0.0:587\"]\n"), minimal("[smtp]\nsubmission_listen = [\"127.0.0.1:587\"]\n"),
			"submission_listen", []string{"no TLS", "passwords", "listen on 127.0.0.1"}},
		{"submission with TLS", minimal("[smtp]\nsubmission_listen = [\"0.0.0.0:587\"]\ntls_cert = \"/c\"\n"), minimal("[smtp]\nsubmission_listen = [\"0.0.0.0:587\"]\ntls_cert = \"/c\"\ntls_key = \"/k2\"\n"),
			"tls_cert", []string{"tls_cert in [smtp] is set but tls_key is not"}},
		{"submission_tls unknown", minimal("[smtp]\nsubmission_tls = \"ssl\"\n"), minimal("[smtp]\nsubmission_tls = \"implicit\"\n"),
			"submission_tls", []string{`submission_tls in [smtp] is "ssl"`, `"auto", "implicit", "starttls"`}},
		{"submission_tls implicit without cert", minimal("[smtp]\nsubmission_listen = [\"127.0.0.1:5870\"]\nsubmission_tls = \"implicit\"\n"), minimal("[smtp]\nsubmission_listen = [\"127.0.0.1:5870\"]\nsubmission_tls = \"starttls\"\n"),
			"submission_tls", []string{`submission_tls in [smtp] is "implicit" but no tls_cert is set`}},
		{"imap tls unknown", minimal("[imap]\ntls = \"STARTTLS\"\n"), minimal("[imap]\ntls = \"starttls\"\n"),
			"tls =", []string{`tls in [imap] is "STARTTLS"`, `did you mean "starttls"?`}},
		{"imap tls implicit without cert", minimal("[imap]\nlisten = [\"127.0.0.1:1430\"]\ntls = \"implicit\"\n"), minimal("[imap]\nlisten = [\"127.0.0.1:1430\"]\ntls = \"auto\"\n"),
			"tls =", []string{`tls in [imap] is "implicit" but no tls_cert is set`}},
		{"smtp tls key alone", minimal("[smtp]\ntls_key = \"/k2\"\n"), minimal("[smtp]\n"), "tls_key", []string{"tls_key in [smtp] is set but tls_cert is not"}},
		{"max_message_bytes", minimal("[smtp]\nmax_message_bytes = 0\n"), minimal("[smtp]\nmax_message_bytes = 1\n"), "max_message_bytes", []string{"must be positive, got 0"}},
		{"max_recipients", minimal("[smtp]\nmax_recipients = -3\n"), minimal("[smtp]\nmax_recipients = 1\n"), "max_recipients", []string{"must be positive, got -3"}},
		{"max_line_length", minimal("[smtp]\nmax_line_length = 998\n"), minimal("[smtp]\nmax_line_length = 1000\n"), "max_line_length", []string{"at least 1000"}},
		{"read_timeout", minimal("[smtp]\nread_timeout = \"0s\"\n"), minimal("[smtp]\nread_timeout = \"1s\"\n"), "read_timeout", []string{"must be a positive duration"}},
		{"write_timeout", minimal("[smtp]\nwrite_timeout = \"-1m\"\n"), minimal("[smtp]\nwrite_timeout = \"1m\"\n"), "write_timeout", []string{"must be a positive duration", `"-1m"`}},
		{"max_conns_per_ip", minimal("[smtp]\nmax_conns_per_ip = 0\n"), minimal("[smtp]\nmax_conns_per_ip = 1\n"), "max_conns_per_ip", []string{"must be positive"}},
		{"messages_per_minute_per_ip", minimal("[smtp]\nmessages_per_minute_per_ip = 0\n"), minimal("[smtp]\nmessages_per_minute_per_ip = 1\n"), "messages_per_minute_per_ip", []string{"must be positive"}},
		{"max_dkim_signatures", minimal("[smtp]\nmax_dkim_signatures = 0\n"), minimal("[smtp]\nmax_dkim_signatures = 1\n"), "max_dkim_signatures", []string{"must be positive"}},
		{"smtp max_conns", minimal("[smtp]\nmax_conns = -1\n"), minimal("[smtp]\nmax_conns = 0\n"), "max_conns", []string{"must not be negative", "write 0"}},
		{"smtp max_conns below per ip", minimal("[smtp]\nmax_conns = 5\n"), minimal("[smtp]\nmax_conns = 20\n"), "max_conns", []string{"below max_conns_per_ip (20)"}},
		{"submission_max_conns", minimal("[smtp]\nsubmission_max_conns = -2\n"), minimal("[smtp]\nsubmission_max_conns = 50\n"), "submission_max_conns", []string{"must not be negative"}},
		{"max_conns_per_ipv6_48", minimal("[smtp]\nmax_conns_per_ipv6_48 = 0\n"), minimal("[smtp]\nmax_conns_per_ipv6_48 = 20\n"), "max_conns_per_ipv6_48", []string{"must be positive"}},
		{"idle_timeout", minimal("[smtp]\nidle_timeout = \"0s\"\n"), minimal("[smtp]\nidle_timeout = \"1m\"\n"), "idle_timeout", []string{"must be a positive duration"}},
		{"busy_idle_timeout", minimal("[smtp]\nbusy_idle_timeout = \"0s\"\n"), minimal("[smtp]\nbusy_idle_timeout = \"5s\"\n"), "busy_idle_timeout", []string{"must be a positive duration"}},
		{"busy_idle_timeout above idle", minimal("[smtp]\nbusy_idle_timeout = \"10m\"\n"), minimal("[smtp]\nbusy_idle_timeout = \"5m\"\n"), "busy_idle_timeout", []string{"longer than idle_timeout (5m)"}},

		{"dns resolver", minimal("[dns]\nresolver = \"dns.example.com:53\"\n"), minimal("[dns]\nresolver = \"127.0.0.1:5353\"\n"), "resolver", []string{"by IP address", `"127.0.0.1:53"`}},
		{"dns resolver port", minimal("[dns]\nresolver = \"127.0.0.1\"\n"), minimal("[dns]\nresolver = \"[::1]:53\"\n"), "resolver", []string{"not host:port"}},
		{"dns timeout", minimal("[dns]\ntimeout = \"0s\"\n"), minimal("[dns]\ntimeout = \"2s\"\n"), "timeout", []string{"must be a positive duration"}},

		{"dmarc_reject", minimal("[verify]\ndmarc_reject = \"accept\"\n"), minimal("[verify]\ndmarc_reject = \"quarantine\"\n"), "dmarc_reject", []string{`write one of "reject", "quarantine"`}},
		{"dmarc_quarantine", minimal("[verify]\ndmarc_quarantine = \"reject\"\n"), minimal("[verify]\ndmarc_quarantine = \"accept\"\n"), "dmarc_quarantine", []string{`write one of "quarantine", "accept"`}},
		{"temperror", minimal("[verify]\ntemperror = \"defr\"\n"), minimal("[verify]\ntemperror = \"defer\"\n"), "temperror", []string{`did you mean "defer"?`}},
		{"trusted_authserv_ids", minimal("[verify]\ntrusted_authserv_ids = [\"mx.example.com; x\"]\n"), minimal("[verify]\ntrusted_authserv_ids = [\"mx.example.com\"]\n"), "trusted_authserv_ids", []string{"is not an authserv-id"}},

		{"relay not host:port", minimal("[outbound]\nrelay = \"smtp.example.com\"\n"), minimal("[outbound]\nrelay = \"smtp.example.com:587\"\n"), "relay =", []string{"not host:port", "smtp.example.com:587"}},
		{"relay port 0", minimal("[outbound]\nrelay = \"smtp.example.com:0\"\n"), minimal("[outbound]\nrelay = \"smtp.example.com:25\"\n"), "relay =", []string{"no valid port"}},
		{"relay_tls none remote", minimal("[outbound]\nrelay = \"smtp.example.com:25\"\nrelay_tls = \"none\"\n"), minimal("[outbound]\nrelay = \"127.0.0.1:25\"\nrelay_tls = \"none\"\n"),
			"relay_tls", []string{`relay_tls = "none" is allowed only for a loopback relay`, `"smtp.example.com:25"`}},
		{"relay_tls none localhost", minimal("[outbound]\nrelay = \"localhost.example.com:25\"\nrelay_tls = \"none\"\n"), minimal("[outbound]\nrelay = \"localhost:25\"\nrelay_tls = \"none\"\n"),
			"relay_tls", []string{"loopback"}},
		{"relay_tls enum", minimal("[outbound]\nrelay_tls = \"startls\"\n"), minimal("[outbound]\nrelay_tls = \"tls\"\n"), "relay_tls", []string{`did you mean "starttls"?`}},
		{"relay user without password", minimal("[outbound]\nrelay_username = \"u\"\n"), minimal("[outbound]\nrelay_username = \"u\"\nrelay_password_file = \"/p\"\n"), "relay_username", []string{"relay_password_file is not"}},
		{"relay password without user", minimal("[outbound]\nrelay_password_file = \"/p\"\n"), minimal("[outbound]\n"), "relay_password_file", []string{"relay_username is not"}},
		{"dkim key without domain", minimal("[outbound]\ndkim_key_file = \"/d\"\n"), minimal("[outbound]\ndkim_key_file = \"/d\"\ndkim_domain = \"example.com\"\n"), "[outbound]", []string{"dkim_domain in [outbound] is empty"}},
		{"dkim domain syntax", minimal("[outbound]\ndkim_domain = \"example..com\"\n"), minimal("[outbound]\ndkim_domain = \"example.com\"\n"), "dkim_domain", []string{"not a domain"}},
		{"dkim selector", minimal("[outbound]\ndkim_domain = \"example.com\"\ndkim_key_file = \"/d\"\ndkim_selector = \"a b\"\n"), minimal("[outbound]\ndkim_domain = \"example.com\"\ndkim_key_file = \"/d\"\ndkim_selector = \"2024-01\"\n"), "dkim_selector", []string{`dkim_selector in [outbound] is "a b"`}},
		{"dkim ed25519 selector", minimal("[outbound]\ndkim_domain = \"example.com\"\ndkim_ed25519_key_file = \"/e\"\ndkim_ed25519_selector = \"\"\n"), minimal("[outbound]\ndkim_domain = \"example.com\"\ndkim_ed25519_key_file = \"/e\"\n"), "dkim_ed25519_selector", []string{"dkim_ed25519_selector in [outbound]"}},
		{"dkim selectors clash", minimal("[outbound]\ndkim_domain = \"example.com\"\ndkim_key_file = \"/d\"\ndkim_ed25519_key_file = \"/e\"\ndkim_ed25519_selector = \"mailgate\"\n"), minimal("[outbound]\ndkim_domain = \"example.com\"\ndkim_key_file = \"/d\"\ndkim_ed25519_key_file = \"/e\"\n"), "dkim_ed25519_selector", []string{"one DNS record cannot hold two keys"}},
		{"give_up_after", minimal("[outbound]\ngive_up_after = \"0s\"\n"), minimal("[outbound]\ngive_up_after = \"1h\"\n"), "give_up_after", []string{"must be a positive duration"}},
		{"first_retry", minimal("[outbound]\nfirst_retry = \"-5s\"\n"), minimal("[outbound]\nfirst_retry = \"5s\"\n"), "first_retry", []string{"must be a positive duration"}},
		{"first_retry after give_up", minimal("[outbound]\nfirst_retry = \"2h\"\ngive_up_after = \"1h\"\n"), minimal("[outbound]\nfirst_retry = \"1h\"\ngive_up_after = \"1h\"\n"), "first_retry", []string{"longer than give_up_after"}},

		{"pgp encrypt enum", minimal("[pgp]\nencrypt = \"always\"\n"), minimal("[pgp]\nencrypt = \"never\"\n"), "encrypt", []string{`write one of "never", "when-key-known", "required"`}},
		{"pgp required without key", minimal("[pgp]\nencrypt = \"required\"\n"), minimal("[pgp]\nencrypt = \"required\"\nkey_file = \"/g\"\n"), "encrypt", []string{"needs key_file"}},
		{"pgp wkd_url", minimal("[pgp]\nwkd_url = \"ftp://x\"\n"), minimal("[pgp]\nwkd_url = \"http://127.0.0.1:1/\"\n"), "wkd_url", []string{"write an http(s) URL"}},

		{"web listen empty", minimal("[web]\nlisten = \"\"\n"), minimal("[web]\nlisten = \"[::1]:8443\"\n"), "listen", []string{"listen in [web] is empty"}},
		{"web listen syntax", minimal("[web]\nlisten = \"localhost\"\n"), minimal("[web]\nlisten = \"localhost:8443\"\n"), "listen", []string{"not host:port"}},
		{"web plain http public", minimal("[web]\nlisten = \":8443\"\n"), minimal("[web]\nlisten = \":8443\"\ntls_cert = \"/c\"\ntls_key = \"/k2\"\n"), "listen", []string{"plain HTTP is allowed only on a loopback address"}},
		{"web max_conns", minimal("[web]\nmax_conns = -1\n"), minimal("[web]\nmax_conns = 100\n"), "max_conns", []string{"max_conns in [web] must not be negative"}},
		{"web allowed_hosts", minimal("[web]\nallowed_hosts = [\"https://support.example.com\"]\n"), minimal("[web]\nallowed_hosts = [\"support.example.com\"]\n"), "allowed_hosts", []string{"is not a host name", "without port or scheme"}},
		{"imap max_conns", minimal("[imap]\nmax_conns = -1\n"), minimal("[imap]\nmax_conns = 0\n"), "max_conns", []string{"max_conns in [imap] must not be negative"}},
		{"metrics listen syntax", minimal("[metrics]\nlisten = \"9025\"\n"), minimal("[metrics]\nlisten = \"\"\n"), "listen", []string{"listen in [metrics]", "not host:port"}},
		{"metrics public without token", minimal("[metrics]\nlisten = \"0.0.0.0:9025\"\n"), minimal("[metrics]\nlisten = \"[::1]:9025\"\n"), "listen", []string{"no token_file", "anyone"}},
		{"metrics public without tls", minimal("[metrics]\nlisten = \"0.0.0.0:9025\"\ntoken_file = \"/t\"\n"), minimal("[metrics]\nlisten = \"0.0.0.0:9025\"\ntoken_file = \"/t\"\n[web]\ntls_cert = \"/c\"\ntls_key = \"/k2\"\n"), "listen", []string{"clear text"}},
		{"metrics port clash", minimal("[metrics]\nlisten = \"127.0.0.1:8443\"\n"), minimal("[metrics]\nlisten = \"127.0.0.1:9443\"\n"), "listen = \"127.0.0.1:8443\"", []string{"also used by listen in [web]"}},
		{"web plain http public v6", minimal("[web]\nlisten = \"[2001:db8::1]:80\"\n"), minimal("[web]\nlisten = \"127.0.0.2:80\"\n"), "listen", []string{"plain HTTP"}},
		{"web tls pair", minimal("[web]\ntls_cert = \"/c\"\n"), minimal("[web]\n"), "tls_cert", []string{"tls_cert in [web] is set but tls_key is not"}},

		{"imap without TLS", minimal("[imap]\nlisten = [\"0.0.0.0:143\"]\n"), minimal("[imap]\nlisten = [\"127.0.0.1:143\"]\n"), "listen", []string{"no TLS", "listen on 127.0.0.1"}},
		{"imap listen syntax", minimal("[imap]\nlisten = [\"143\"]\n"), minimal("[imap]\nlisten = [\"0.0.0.0:993\"]\ntls_cert = \"/c\"\ntls_key = \"/k2\"\n"), "listen", []string{"not host:port"}},
		{"imap tls pair", minimal("[imap]\ntls_key = \"/k2\"\n"), minimal("[imap]\n"), "tls_key", []string{"tls_key in [imap] is set but tls_cert is not"}},

		{"listeners clash", minimal("[smtp]\nlisten = [\"127.0.0.1:2525\"]\n[imap]\nlisten = [\"127.0.0.1:2525\"]\n"), minimal("[smtp]\nlisten = [\"127.0.0.1:2525\"]\n[imap]\nlisten = [\"127.0.0.1:2143\"]\n"),
			"listen = [\"127.0.0.1:2525\"]\n\n", []string{`listen in [imap] "127.0.0.1:2525" is also used by listen in [smtp]`}},
		{"port 0 may repeat", minimal("[smtp]\nlisten = [\"127.0.0.1:0\"]\n[web]\nlisten = \"127.0.0.1\"\n"), minimal("[smtp]\nlisten = [\"127.0.0.1:0\"]\n[web]\nlisten = \"127.0.0.1:0\"\n"), "listen = \"127", []string{"not host:port"}},

		{"fetch url missing", fetch("username = \"u\"\npassword_file = \"/p\"\nqueue = \"support\"\n"), fetch(okAccount), "[[fetch.account]]", []string{"[[fetch.account]] #1 has no url"}},
		{"fetch url scheme", fetch(strings.Replace(okAccount, "imaps://", "https://", 1)), fetch(okAccount), "url", []string{`url in [[fetch.account]] #1 is "https://`}},
		{"fetch url password", fetch(strings.Replace(okAccount, "imaps://", "imaps://u:secret@", 1)), fetch(strings.Replace(okAccount, "imaps://", "imaps://u@", 1)), "url", []string{"holds a password", "password_file"}},
		{"fetch url port", fetch(strings.Replace(okAccount, "example.com/", "example.com:99999/", 1)), fetch(strings.Replace(okAccount, "example.com/", "example.com:993/", 1)), "url", []string{`has port "99999"`}},
		{"fetch tls enum", fetch(okAccount + "tls = \"ssl\"\n"), fetch(okAccount + "tls = \"implicit\"\n"), "tls =", []string{`tls in [[fetch.account]] #1 is "ssl"`}},
		{"fetch imaps with starttls", fetch(okAccount + "tls = \"starttls\"\n"), fetch(strings.Replace(okAccount, "imaps://", "imap://", 1) + "tls = \"starttls\"\n"), "tls =", []string{`url is imaps:// but tls is "starttls"`}},
		{"fetch imap with implicit", fetch(strings.Replace(okAccount, "imaps://", "imap://", 1) + "tls = \"implicit\"\n"), fetch(strings.Replace(okAccount, "imaps://", "imap://", 1)), "tls =", []string{`url is imap:// but tls = "implicit"`}},
		{"fetch tls none remote", fetch(strings.Replace(okAccount, "imaps://", "imap://", 1) + "tls = \"none\"\n"), fetch(strings.NewReplacer("imaps://", "imap://", "imap.example.com", "127.0.0.1:1143").Replace(okAccount) + "tls = \"none\"\n"),
			"tls =", []string{`tls = "none" is allowed only for a loopback host`, `"imap.example.com"`}},
		{"fetch username", fetch(strings.Replace(okAccount, "username = \"u\"\n", "", 1)), fetch(okAccount), "[[fetch.account]]", []string{"has no username"}},
		{"fetch password_file", fetch(strings.Replace(okAccount, "password_file = \"/p\"\n", "", 1)), fetch(okAccount), "[[fetch.account]]", []string{"has no password_file"}},
		{"fetch queue missing", fetch(strings.Replace(okAccount, "queue = \"support\"\n", "", 1)), fetch(okAccount), "[[fetch.account]]", []string{"has no queue", `queue = "support"`}},
		{"fetch queue unknown", fetch(strings.Replace(okAccount, "\"support\"", "\"suport\"", 1)), fetch(okAccount), "queue = \"suport\"", []string{`queue in [[fetch.account]] #1 is "suport", but no [[queue]] has that name; did you mean "support"?`}},
		{"fetch poll", fetch(okAccount + "poll = \"0s\"\n"), fetch(okAccount + "poll = \"10s\"\n"), "poll", []string{"poll in [[fetch.account]] #1 must be a positive duration"}},

		{"log format", minimal("[log]\nformat = \"logfmt\"\n"), minimal("[log]\nformat = \"json\"\n"), "format", []string{`format in [log] is "logfmt"`}},
		{"log level", minimal("[log]\nlevel = \"warning\"\n"), minimal("[log]\nlevel = \"warn\"\n"), "level", []string{`did you mean "warn"?`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := problems(t, tc.bad)
			line := 0
			if tc.at != "" {
				line = lineOf(t, tc.bad, tc.at)
			}
			wantProblem(t, errs, line, tc.msg...)
			if len(errs) != 1 {
				t.Errorf("want exactly one problem, got:\n%v", errs.Error())
			}
			if errs := problems(t, tc.good); errs != nil {
				t.Errorf("fixed file still fails:\n%v\n--- file:\n%s", errs.Error(), tc.good)
			}
		})
	}
}

func TestIsLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "localhost": true, "LOCALHOST": true,
		"": false, "0.0.0.0": false, "::": false, "192.0.2.1": false, "localhost.example.com": false,
		"mail.example.com": false, "::ffff:127.0.0.1": true,
	} {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", host, got, want)
		}
	}
}

// Validate also runs the value checks, for configs built in code.
func TestValidateBuiltInCode(t *testing.T) {
	c := Default()
	c.Hostname = "mail.example.com"
	c.Queues = []Queue{{Name: "support", Address: "support@example.com"}}
	c.KeyFile = ""
	c.Web.Listen = "0.0.0.0:80"
	err := Validate(c)
	if err == nil {
		t.Fatal("Validate passed a config without key_file and with public plain HTTP")
	}
	for _, want := range []string{"config: key_file is empty", "config: listen in [web]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error lacks %q:\n%v", want, err)
		}
	}
}
