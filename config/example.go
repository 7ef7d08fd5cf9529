package config

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Names of the files `mailgate init -dir DIR` creates in DIR; Example points at them.
const (
	ExampleConfigFile     = "mailgate.toml"
	ExampleDataDir        = "data"
	ExampleKeyFile        = "data.key"
	ExampleDKIMKeyFile    = "dkim-rsa.key"
	ExampleDKIMEd25519Key = "dkim-ed25519.key"
	ExamplePGPKeyFile     = "pgp.key"
	ExampleTLSCert        = "tls.crt"
	ExampleTLSKey         = "tls.key"
)

// Example returns the commented mailgate.toml that `mailgate init -dir dir
// -domain domain` writes: every key with its default and a one-line comment,
// paths under dir (made absolute, so the file can move without breaking).
func Example(domain, dir string) string {
	return ExampleWith(domain, dir, "")
}

// ExampleWith is Example with data_dir set to dataDir ("" = DIR/data).
func ExampleWith(domain, dir, dataDir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	d := Default()
	in := func(name string) string { return quote(filepath.Join(dir, name)) }
	v := map[string]string{
		"HOSTNAME": quote("mail." + domain),
		"DOMAIN":   domain,
		"DATA_DIR": in(ExampleDataDir),

		"KEY_FILE":     in(ExampleKeyFile),
		"TLS_CERT":     in(ExampleTLSCert),
		"TLS_KEY":      in(ExampleTLSKey),
		"DKIM_DOMAIN":  quote(domain),
		"DKIM_RSA":     in(ExampleDKIMKeyFile),
		"DKIM_ED25519": in(ExampleDKIMEd25519Key),
		"PGP_KEY":      in(ExamplePGPKeyFile),
		"QUEUE_ADDR":   quote("support@" + domain),
		"IMAP_USER":    quote("support@" + domain),
		"IMAP_PASS":    in("imap.pass"),

		"MAX_MESSAGE_BYTES":   fmt.Sprint(d.SMTP.MaxMessageBytes),
		"MAX_RECIPIENTS":      fmt.Sprint(d.SMTP.MaxRecipients),
		"MAX_LINE_LENGTH":     fmt.Sprint(d.SMTP.MaxLineLength),
		"READ_TIMEOUT":        quote(d.SMTP.ReadTimeout.String()),
		"WRITE_TIMEOUT":       quote(d.SMTP.WriteTimeout.String()),
		"MAX_CONNS_PER_IP":    fmt.Sprint(d.SMTP.MaxConnsPerIP),
		"MESSAGES_PER_MINUTE": fmt.Sprint(d.SMTP.MessagesPerMinutePerIP),
		"MAX_DKIM_SIGNATURES": fmt.Sprint(d.SMTP.MaxDKIMSignatures),
		"MAX_CONNS_PER_48":    fmt.Sprint(d.SMTP.MaxConnsPerIPv6Net48),
		"IDLE_TIMEOUT":        quote(d.SMTP.IdleTimeout.String()),
		"BUSY_IDLE_TIMEOUT":   quote(d.SMTP.BusyIdleTimeout.String()),
		"METRICS_LISTEN":      quote(d.Metrics.Listen),
		"DNS_TIMEOUT":         quote(d.DNS.Timeout.String()),
		"DMARC_REJECT":        quote(d.Verify.DMARCReject),
		"DMARC_QUARANTINE":    quote(d.Verify.DMARCQuarantine),
		"TEMPERROR":           quote(d.Verify.TempError),
		"RELAY_TLS":           quote(d.Outbound.RelayTLS),
		"DKIM_SELECTOR":       quote(d.Outbound.DKIMSelector),
		"DKIM_SELECTOR_RAW":   d.Outbound.DKIMSelector,
		"DKIM_ED25519_SEL":    quote(d.Outbound.DKIMEd25519Selector),
		"GIVE_UP_AFTER":       quote(d.Outbound.GiveUpAfter.String()),
		"FIRST_RETRY":         quote(d.Outbound.FirstRetry.String()),
		"ENCRYPT":             quote(d.PGP.Encrypt),
		"WKD":                 fmt.Sprint(d.PGP.WKD),
		"WEB_LISTEN":          quote(d.Web.Listen),
		"POLL":                quote(defaultFetchAccount().Poll.String()),
		"LOG_FORMAT":          quote(d.Log.Format),
		"LOG_LEVEL":           quote(d.Log.Level),
		"SMTP_LISTEN":         quote(d.SMTP.Listen[0]),
		"DEFAULT_DATA_DIR":    d.DataDir,
	}
	if dataDir != "" {
		v["DATA_DIR"] = quote(dataDir)
	}
	return alignComments(expand(exampleTemplate, v))
}

// alignComments lines up the "\t#" comments of each block of lines (blocks
// end at a blank line or a table header). The tab cannot come from a value:
// quote escapes control characters.
func alignComments(s string) string {
	lines := strings.Split(s, "\n")
	flush := func(block []int) {
		width := 0
		for _, i := range block {
			if n := strings.Index(lines[i], "\t#"); n > width {
				width = n
			}
		}
		for _, i := range block {
			if n := strings.Index(lines[i], "\t#"); n >= 0 {
				lines[i] = lines[i][:n] + strings.Repeat(" ", width-n+2) + lines[i][n+1:]
			}
		}
	}
	var block []int
	for i, l := range lines {
		if l == "" || strings.HasPrefix(l, "[") {
			flush(block)
			block = block[:0]
		}
		block = append(block, i)
	}
	flush(block)
	return strings.Join(lines, "\n")
}

// expand replaces {{NAME}} with v[NAME].
func expand(tmpl string, v map[string]string) string {
	var b strings.Builder
	for {
		i := strings.Index(tmpl, "{{")
		if i < 0 {
			b.WriteString(tmpl)
			return b.String()
		}
		j := strings.Index(tmpl[i:], "}}")
		if j < 0 {
			b.WriteString(tmpl)
			return b.String()
		}
		b.WriteString(tmpl[:i])
		b.WriteString(v[tmpl[i+2:i+j]])
		tmpl = tmpl[i+j+2:]
	}
}

// quote writes a TOML basic string. strconv.Quote is not enough: TOML has no
// \x escapes.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

const exampleTemplate = `# mailgate configuration, written by "mailgate init".
# Check it with: mailgate check-config -config THIS_FILE
# Every key is shown with its default; remove a line to use the default.
# Relative paths are taken relative to the directory of this file.

hostname = {{HOSTNAME}}	# this host's name: HELO, Message-ID domain, authserv-id
data_dir = {{DATA_DIR}}	# database, outbox, control socket (default {{DEFAULT_DATA_DIR}})
key_file = {{KEY_FILE}}	# 32-byte data key, mode 0600; back it up apart from data_dir

[smtp]
listen = [{{SMTP_LISTEN}}]	# where customers' mail servers connect (MX)
submission_listen = []	# e.g. ["0.0.0.0:587"]: agents' mail clients, AUTH required
submission_tls = "auto"	# implicit (TLS from the first byte) | starttls | auto (implicit on :465, else STARTTLS)
tls_cert = {{TLS_CERT}}	# PEM certificate; STARTTLS is offered when set
tls_key = {{TLS_KEY}}	# PEM private key, mode 0600
max_message_bytes = {{MAX_MESSAGE_BYTES}}	# larger messages are refused (552)
max_recipients = {{MAX_RECIPIENTS}}	# RCPT TO commands per message
max_line_length = {{MAX_LINE_LENGTH}}	# bytes per line; RFC 5321 needs at least 1000
read_timeout = {{READ_TIMEOUT}}	# time allowed to receive a whole message (DATA)
write_timeout = {{WRITE_TIMEOUT}}	# time allowed for each reply to reach a client
max_conns_per_ip = {{MAX_CONNS_PER_IP}}	# simultaneous connections from one IPv4 address or IPv6 /64
messages_per_minute_per_ip = {{MESSAGES_PER_MINUTE}}	# accepted messages per minute from one address
max_dkim_signatures = {{MAX_DKIM_SIGNATURES}}	# DKIM signatures verified per message; more are ignored
max_conns = 0	# connections to the listen addresses together; 0 = 40% of the open-file limit after a reserve, at most 2000
submission_max_conns = 0	# the same for submission_listen; 0 = 10% of the open-file limit after a reserve, at most 200
max_conns_per_ipv6_48 = {{MAX_CONNS_PER_48}}	# simultaneous connections from one IPv6 /48 (never below max_conns_per_ip)
idle_timeout = {{IDLE_TIMEOUT}}	# time a client may take to send its next command
busy_idle_timeout = {{BUSY_IDLE_TIMEOUT}}	# idle_timeout outside a transaction once 3/4 of max_conns are taken

[dns]
resolver = ""	# "" = system resolver; "127.0.0.1:53" = only this server
timeout = {{DNS_TIMEOUT}}	# per SPF/DKIM/DMARC lookup

[verify]
dmarc_reject = {{DMARC_REJECT}}	# DMARC fail under p=reject: reject | quarantine
dmarc_quarantine = {{DMARC_QUARANTINE}}	# DMARC fail under p=quarantine: quarantine | accept
temperror = {{TEMPERROR}}	# DNS failure while checking: accept (marked unverified) | defer (4xx)
trusted_authserv_ids = []	# Authentication-Results of these hosts are trusted for fetched mail

[[queue]]	# one block per address customers write to
name = "support"	# lower-case letters, digits and '-'
address = {{QUEUE_ADDR}}
auto_ack = true	# answer new tickets with an automatic acknowledgement
auto_ack_text = ""	# its body; {ticket} is the ticket number; "" = a short built-in text
auto_ack_texts = {}	# per language, e.g. { de = "…", fr-ch = "…" }: the customer's Content-Language (else Accept-Language) picks one, de-ch falls back to de, any other gets auto_ack_text
aliases = []	# more addresses of this queue, e.g. old ones customers still reply to
postmaster = false	# receives postmaster@ and DMARC reports; default: the first queue

[outbound]
relay = ""	# "" = write .eml files to <data_dir>/outbox; e.g. "smtp.example.com:587"
relay_tls = {{RELAY_TLS}}	# starttls | tls | none (none only for a loopback relay)
relay_username = ""	# AUTH to the relay; needs relay_password_file
relay_password_file = ""	# file holding the relay password, mode 0600
dkim_domain = {{DKIM_DOMAIN}}	# d= of outgoing signatures; your From domain
dkim_selector = {{DKIM_SELECTOR}}	# s= for the RSA key: publish {{DKIM_SELECTOR_RAW}}._domainkey.{{DOMAIN}}
dkim_key_file = {{DKIM_RSA}}	# PEM private key (RSA or Ed25519), mode 0600
dkim_ed25519_selector = {{DKIM_ED25519_SEL}}	# s= for the second key
dkim_ed25519_key_file = {{DKIM_ED25519}}	# optional second key, so mail carries RSA and Ed25519 signatures
give_up_after = {{GIVE_UP_AFTER}}	# bounce to the agent after retrying this long
first_retry = {{FIRST_RETRY}}	# first retry delay; it doubles after each failure
auto_ack_per_hour = 3	# automatic acknowledgements per sender address per hour, at most

[pgp]
key_file = {{PGP_KEY}}	# gateway's armored private key, mode 0600; "" = no PGP
encrypt = {{ENCRYPT}}	# never | when-key-known | required
wkd = {{WKD}}	# look up customers' keys by Web Key Directory (contacts their domain)
wkd_url = ""	# "" = standard WKD; a base URL overrides it (tests)

[web]
listen = {{WEB_LISTEN}}	# agents' pages; plain HTTP only on a loopback address
tls_cert = {{TLS_CERT}}	# PEM certificate; "" = plain HTTP (loopback only)
tls_key = {{TLS_KEY}}	# PEM private key, mode 0600
max_conns = 0	# connections to the page; 0 = 20% of the open-file limit after a reserve, at most 500
allowed_hosts = []	# names besides hostname the page is reached by; other Host headers get 421

[imap]
listen = []	# e.g. ["0.0.0.0:993"]: agents' mail clients, one folder per queue
tls = "auto"	# implicit (TLS from the first byte) | starttls | auto (implicit on :993, else STARTTLS)
tls_cert = {{TLS_CERT}}	# PEM certificate; required unless listen is loopback
tls_key = {{TLS_KEY}}	# PEM private key, mode 0600
max_conns = 0	# connections to the IMAP listeners together; 0 = 20% of the open-file limit after a reserve, at most 500

# Optional: pull mail from an existing mailbox, beside or instead of SMTP.
[fetch]
# [[fetch.account]]
# url = "imaps://imap.{{DOMAIN}}:993/INBOX"	# imaps:// (TLS) or imap:// (STARTTLS)
# username = {{IMAP_USER}}
# password_file = {{IMAP_PASS}}	# mode 0600
# queue = "support"	# the [[queue]] fetched mail goes to
# tls = "implicit"	# implicit | starttls | none (none only for loopback)
# move = ""	# folder to move fetched mail into; "" = mark it \Seen
# poll = {{POLL}}	# how often to look for new mail

[audit]
file = ""	# also append each audit event to this file as JSON lines

[retention]
closed_after = "0s"	# destroy tickets closed this long ago (e.g. "365d"); "0s" keeps them

[log]
format = {{LOG_FORMAT}}	# text | json
level = {{LOG_LEVEL}}	# debug | info | warn | error

[metrics]
listen = {{METRICS_LISTEN}}	# Prometheus /metrics and a detailed /healthz; "" = off
token_file = ""	# file holding a bearer token, mode 0600; required off loopback (with [web] tls_cert)
`
