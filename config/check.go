package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/mail"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

type reporter struct {
	file  string
	lines lineIndex
	errs  Errors
}

func (c *Config) reporter() *reporter {
	file := c.source
	if file == "" {
		file = c.Path
	}
	if file == "" {
		file = "config"
	}
	return &reporter{file: file, lines: c.lines}
}

func (r *reporter) at(path, format string, args ...any) {
	r.errs = append(r.errs, Problem{File: r.file, Line: r.lines.find(path), Msg: fmt.Sprintf(format, args...)})
}

// enum checks that val is one of allowed.
func (r *reporter) enum(path, name, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = strconv.Quote(a)
	}
	msg := fmt.Sprintf("%s is %q; write one of %s", name, val, strings.Join(quoted, ", "))
	if s := suggest(val, allowed); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	r.at(path, "%s", msg)
}

func (r *reporter) positive(path, name string, n int64, example string) {
	if n <= 0 {
		r.at(path, "%s must be positive, got %d; write e.g. %s", name, n, example)
	}
}

func (r *reporter) positiveDur(path, name string, d Duration, example string) {
	if d.Duration <= 0 {
		r.at(path, "%s must be a positive duration, got %q; write e.g. %s", name, d.String(), example)
	}
}

// tlsPair checks that cert and key are set together.
func (r *reporter) tlsPair(section, cert, key string) {
	switch {
	case cert != "" && key == "":
		r.at(section+".tls_cert", "tls_cert in [%s] is set but tls_key is not; set both or neither", section)
	case cert == "" && key != "":
		r.at(section+".tls_key", "tls_key in [%s] is set but tls_cert is not; set both or neither", section)
	}
}

var (
	queueName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	dnsLabel  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	selector  = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*$`)
)

// isDomain reports whether s is a plain DNS host name (no trailing dot).
func isDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

// isLoopback is decided from the text alone: the config package does no DNS.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.SplitN(host, "%", 2)[0], "."))
	return ip != nil && ip.IsLoopback()
}

// hostPort splits a listener or server address. needHost: a server to connect
// to (host required, port 1-65535); otherwise a listener (host "" = all
// interfaces, port 0 = any free port).
func hostPort(s string, needHost bool) (host string, err error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port", s)
	}
	n, perr := strconv.Atoi(port)
	if perr != nil || n < 0 || n > 65535 || (needHost && n == 0) {
		return "", fmt.Errorf("%q has no valid port number (%q)", s, port)
	}
	switch {
	case host == "" && needHost:
		return "", fmt.Errorf("%q has no host", s)
	case host == "", net.ParseIP(strings.SplitN(host, "%", 2)[0]) != nil, isDomain(host):
		return host, nil
	}
	return "", fmt.Errorf("%q: %q is neither an IP address nor a host name", s, host)
}

// checkValues is every check that needs no file system.
func (c *Config) checkValues() Errors {
	r := c.reporter()

	switch {
	case c.Hostname == "":
		r.at("hostname", `hostname is not set; write hostname = "mail.example.com" (this host's name: HELO, Message-IDs, authserv-id)`)
	case !isDomain(c.Hostname):
		r.at("hostname", `hostname %q is not a host name; write letters, digits, '-' and '.', e.g. "mail.example.com"`, c.Hostname)
	}
	if c.DataDir == "" {
		r.at("data_dir", `data_dir is empty; write e.g. data_dir = "/var/lib/mailgate"`)
	}
	if c.KeyFile == "" {
		r.at("key_file", `key_file is empty; write e.g. key_file = "/etc/mailgate/data.key" (mailgate init creates it)`)
	}

	c.checkSMTP(r)
	c.checkDNS(r)
	c.checkVerify(r)
	c.checkQueues(r)
	c.checkOutbound(r)
	c.checkPGP(r)
	c.checkWeb(r)
	c.checkIMAP(r)
	c.checkFetch(r)
	c.checkMetrics(r)
	c.checkListenersDistinct(r)

	if c.Retention.ClosedAfter.Duration < 0 {
		r.at("retention.closed_after", "closed_after in [retention] must not be negative; write e.g. closed_after = \"365d\", or \"0s\" to keep tickets")
	}
	r.enum("log.format", "format in [log]", c.Log.Format, "text", "json")
	r.enum("log.level", "level in [log]", c.Log.Level, "debug", "info", "warn", "error")
	return r.errs
}

// listeners checks each address of a listen list. When why is set, a
// non-loopback address without TLS is an error and why says what would leak.
func (r *reporter) listeners(path, name string, addrs []string, example string, tls bool, why string) {
	for i, a := range addrs {
		p := indexPath(path, i)
		host, err := hostPort(a, false)
		if err != nil {
			r.at(p, "%s: %v; write e.g. %q", name, err, example)
			continue
		}
		if !tls && why != "" && !isLoopback(host) {
			r.at(p, "%s: %q is not a loopback address and there is no TLS, so %s; set tls_cert and tls_key, or listen on 127.0.0.1", name, a, why)
		}
	}
}

func (c *Config) checkSMTP(r *reporter) {
	s := &c.SMTP
	tls := s.TLSCert != ""
	r.listeners("smtp.listen", "listen in [smtp]", s.Listen, "0.0.0.0:25", tls, "")
	r.listeners("smtp.submission_listen", "submission_listen in [smtp]", s.SubmissionListen, "0.0.0.0:587", tls,
		"agents' passwords would cross the network in clear text")
	r.tlsPair("smtp", s.TLSCert, s.TLSKey)
	r.listenerTLS("smtp.submission_tls", "submission_tls in [smtp]", s.SubmissionTLS, tls, len(s.SubmissionListen) > 0)
	r.positive("smtp.max_message_bytes", "max_message_bytes in [smtp]", s.MaxMessageBytes, "max_message_bytes = 26214400")
	r.positive("smtp.max_recipients", "max_recipients in [smtp]", int64(s.MaxRecipients), "max_recipients = 50")
	if s.MaxLineLength < 1000 {
		r.at("smtp.max_line_length", "max_line_length in [smtp] is %d; RFC 5321 4.5.3.1.6 requires at least 1000, write e.g. max_line_length = 4096", s.MaxLineLength)
	}
	r.positiveDur("smtp.read_timeout", "read_timeout in [smtp]", s.ReadTimeout, `read_timeout = "10m"`)
	r.positiveDur("smtp.write_timeout", "write_timeout in [smtp]", s.WriteTimeout, `write_timeout = "1m"`)
	r.positive("smtp.max_conns_per_ip", "max_conns_per_ip in [smtp]", int64(s.MaxConnsPerIP), "max_conns_per_ip = 20")
	r.positive("smtp.messages_per_minute_per_ip", "messages_per_minute_per_ip in [smtp]", int64(s.MessagesPerMinutePerIP), "messages_per_minute_per_ip = 600")
	r.positive("smtp.max_dkim_signatures", "max_dkim_signatures in [smtp]", int64(s.MaxDKIMSignatures), "max_dkim_signatures = 5")
	r.maxConns("smtp.max_conns", "max_conns in [smtp]", s.MaxConns)
	r.maxConns("smtp.submission_max_conns", "submission_max_conns in [smtp]", s.SubmissionMaxConns)
	r.positive("smtp.max_conns_per_ipv6_48", "max_conns_per_ipv6_48 in [smtp]", int64(s.MaxConnsPerIPv6Net48), "max_conns_per_ipv6_48 = 50")
	if s.MaxConns > 0 && s.MaxConns < s.MaxConnsPerIP {
		r.at("smtp.max_conns", "max_conns in [smtp] (%d) is below max_conns_per_ip (%d); raise max_conns, or write 0 for a share of the open-file limit", s.MaxConns, s.MaxConnsPerIP)
	}
	r.positiveDur("smtp.idle_timeout", "idle_timeout in [smtp]", s.IdleTimeout, `idle_timeout = "5m"`)
	r.positiveDur("smtp.busy_idle_timeout", "busy_idle_timeout in [smtp]", s.BusyIdleTimeout, `busy_idle_timeout = "10s"`)
	if s.BusyIdleTimeout.Duration > s.IdleTimeout.Duration && s.IdleTimeout.Duration > 0 {
		r.at("smtp.busy_idle_timeout", "busy_idle_timeout in [smtp] (%s) is longer than idle_timeout (%s); it is the shorter timeout used when the server is busy, write e.g. busy_idle_timeout = \"10s\"", s.BusyIdleTimeout, s.IdleTimeout)
	}
}

// maxConns checks a connection cap: 0 (a share of the open-file limit) or a positive number.
func (r *reporter) maxConns(path, name string, n int) {
	if n < 0 {
		r.at(path, "%s must not be negative, got %d; write 0 for a share of the open-file limit, or a number such as 500", name, n)
	}
}

func (c *Config) checkDNS(r *reporter) {
	if c.DNS.Resolver != "" {
		host, err := hostPort(c.DNS.Resolver, true)
		if err == nil && net.ParseIP(host) == nil {
			err = fmt.Errorf("%q: a resolver must be given by IP address", c.DNS.Resolver)
		}
		if err != nil {
			r.at("dns.resolver", `resolver in [dns]: %v; write e.g. resolver = "127.0.0.1:53", or "" for the system resolver`, err)
		}
	}
	r.positiveDur("dns.timeout", "timeout in [dns]", c.DNS.Timeout, `timeout = "10s"`)
}

func (c *Config) checkVerify(r *reporter) {
	v := &c.Verify
	r.enum("verify.dmarc_reject", "dmarc_reject in [verify]", v.DMARCReject, "reject", "quarantine")
	r.enum("verify.dmarc_quarantine", "dmarc_quarantine in [verify]", v.DMARCQuarantine, "quarantine", "accept")
	r.enum("verify.temperror", "temperror in [verify]", v.TempError, "accept", "defer")
	for i, id := range v.TrustedAuthservIDs {
		if id == "" || strings.ContainsAny(id, " \t\r\n;\"") {
			r.at(indexPath("verify.trusted_authserv_ids", i),
				"trusted_authserv_ids in [verify]: %q is not an authserv-id; write the host name the upstream server puts in Authentication-Results, e.g. \"mx.example.com\"", id)
		}
	}
}

func (c *Config) checkQueues(r *reporter) {
	if len(c.Queues) == 0 {
		r.at("queue", `no [[queue]] is defined; add one: [[queue]] name = "support" address = "support@example.com"`)
		return
	}
	names := map[string]int{}
	addrs := map[string]int{}
	for i, q := range c.Queues {
		p := indexPath("queue", i)
		sec := fmt.Sprintf("[[queue]] #%d", i+1)
		switch {
		case q.Name == "":
			r.at(p+".name", `%s has no name; write e.g. name = "support"`, sec)
		case !queueName.MatchString(q.Name):
			r.at(p+".name", "name in %s is %q; use lower-case letters, digits and '-' (up to 63), e.g. %q",
				sec, q.Name, simpleName(q.Name))
		default:
			if j, dup := names[q.Name]; dup {
				r.at(p+".name", "name in %s is %q, already used by [[queue]] #%d; queue names must be unique", sec, q.Name, j+1)
			} else {
				names[q.Name] = i
			}
		}
		for lang, text := range q.AutoAckTexts {
			switch {
			case !langTag.MatchString(lang):
				r.at(p+".auto_ack_texts", "auto_ack_texts in %s has the language %q; write a language tag in lower case, e.g. de or fr-ch", sec, lang)
			case strings.TrimSpace(text) == "":
				r.at(p+".auto_ack_texts", "auto_ack_texts in %s has an empty text for %q; write the text or leave the language out", sec, lang)
			}
		}
		switch a, err := mail.ParseAddress(q.Address); {
		case q.Address == "":
			r.at(p+".address", `%s has no address; write e.g. address = "support@example.com"`, sec)
		case err != nil:
			r.at(p+".address", "address in %s: %q is not an e-mail address (%v); write e.g. \"support@example.com\"", sec, q.Address, err)
		case a.Address != q.Address:
			r.at(p+".address", "address in %s is %q; write only the address: %q", sec, q.Address, a.Address)
		default:
			key := strings.ToLower(a.Address)
			if j, dup := addrs[key]; dup {
				r.at(p+".address", "address in %s is %q, already used by [[queue]] #%d; each address feeds one queue", sec, q.Address, j+1)
			} else {
				addrs[key] = i
			}
		}
	}
	postmasters := 0
	for i, q := range c.Queues {
		p := indexPath("queue", i)
		sec := fmt.Sprintf("[[queue]] #%d", i+1)
		if q.Postmaster {
			if postmasters++; postmasters == 2 {
				r.at(p+".postmaster", "postmaster = true in %s too; only one queue receives postmaster@ mail, set it on one", sec)
			}
		}
		for j, al := range q.Aliases {
			ap := indexPath(p+".aliases", j)
			a, err := mail.ParseAddress(al)
			switch {
			case err != nil:
				r.at(ap, "aliases in %s: %q is not an e-mail address (%v); write e.g. aliases = [\"help@example.com\"]", sec, al, err)
				continue
			case a.Address != al:
				r.at(ap, "aliases in %s has %q; write only the address: %q", sec, al, a.Address)
				continue
			}
			key := strings.ToLower(al)
			if k, dup := addrs[key]; dup {
				r.at(ap, "aliases in %s has %q, already used by [[queue]] #%d; each address feeds one queue", sec, al, k+1)
			} else {
				addrs[key] = i
			}
		}
	}
}

// langTag is a language tag as auto_ack_texts keys it: a primary language and maybe a region.
var langTag = regexp.MustCompile(`^[a-z]{2,3}(-[a-z0-9]{2,8})?$`)

// simpleName turns "Support Team" into "support-team" for a suggestion.
func simpleName(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-")
	if out == "" {
		return "support"
	}
	if len(out) > 63 {
		out = out[:63]
	}
	return out
}

func (c *Config) checkOutbound(r *reporter) {
	o := &c.Outbound
	r.enum("outbound.relay_tls", "relay_tls in [outbound]", o.RelayTLS, "starttls", "tls", "none")
	if o.Relay != "" {
		host, err := hostPort(o.Relay, true)
		switch {
		case err != nil:
			r.at("outbound.relay", `relay in [outbound]: %v; write e.g. relay = "smtp.example.com:587", or "" to write mail to <data_dir>/outbox`, err)
		case o.RelayTLS == "none" && !isLoopback(host):
			r.at("outbound.relay_tls", `relay_tls = "none" is allowed only for a loopback relay, and relay is %q; write relay_tls = "starttls" (or "tls" for port 465)`, o.Relay)
		}
	}
	switch {
	case o.RelayUsername != "" && o.RelayPasswordFile == "":
		r.at("outbound.relay_username", "relay_username in [outbound] is set but relay_password_file is not; write relay_password_file = \"/etc/mailgate/relay.pass\" (a file with mode 0600 holding the password)")
	case o.RelayUsername == "" && o.RelayPasswordFile != "":
		r.at("outbound.relay_password_file", "relay_password_file in [outbound] is set but relay_username is not; set both or neither")
	}
	if o.DKIMKeyFile != "" || o.DKIMEd25519KeyFile != "" {
		switch {
		case o.DKIMDomain == "":
			r.at("outbound.dkim_domain", `dkim_domain in [outbound] is empty but a DKIM key is set; write e.g. dkim_domain = "example.com" (the From domain of your replies)`)
		case !isDomain(o.DKIMDomain):
			r.at("outbound.dkim_domain", `dkim_domain in [outbound] is %q, not a domain; write e.g. dkim_domain = "example.com"`, o.DKIMDomain)
		}
	} else if o.DKIMDomain != "" && !isDomain(o.DKIMDomain) {
		r.at("outbound.dkim_domain", `dkim_domain in [outbound] is %q, not a domain; write e.g. dkim_domain = "example.com"`, o.DKIMDomain)
	}
	if o.DKIMKeyFile != "" && !selector.MatchString(o.DKIMSelector) {
		r.at("outbound.dkim_selector", `dkim_selector in [outbound] is %q; use letters, digits, '-' and '_', e.g. "mailgate"`, o.DKIMSelector)
	}
	if o.DKIMEd25519KeyFile != "" {
		switch {
		case !selector.MatchString(o.DKIMEd25519Selector):
			r.at("outbound.dkim_ed25519_selector", `dkim_ed25519_selector in [outbound] is %q; use letters, digits, '-' and '_', e.g. "mailgate-ed25519"`, o.DKIMEd25519Selector)
		case o.DKIMKeyFile != "" && strings.EqualFold(o.DKIMSelector, o.DKIMEd25519Selector):
			r.at("outbound.dkim_ed25519_selector", `dkim_ed25519_selector and dkim_selector in [outbound] are both %q; one DNS record cannot hold two keys, write e.g. dkim_ed25519_selector = "mailgate-ed25519"`, o.DKIMSelector)
		}
	}
	r.positiveDur("outbound.give_up_after", "give_up_after in [outbound]", o.GiveUpAfter, `give_up_after = "120h"`)
	r.positiveDur("outbound.first_retry", "first_retry in [outbound]", o.FirstRetry, `first_retry = "30s"`)
	r.positive("outbound.auto_ack_per_hour", "auto_ack_per_hour in [outbound]", int64(o.AutoAckPerHour), "auto_ack_per_hour = 3")
	if o.FirstRetry.Duration > 0 && o.GiveUpAfter.Duration > 0 && o.FirstRetry.Duration > o.GiveUpAfter.Duration {
		r.at("outbound.first_retry", "first_retry in [outbound] (%s) is longer than give_up_after (%s); mail would bounce before its first retry", o.FirstRetry, o.GiveUpAfter)
	}
}

func (c *Config) checkPGP(r *reporter) {
	p := &c.PGP
	r.enum("pgp.encrypt", "encrypt in [pgp]", p.Encrypt, "never", "when-key-known", "required")
	if p.Encrypt == "required" && p.KeyFile == "" {
		r.at("pgp.encrypt", `encrypt = "required" in [pgp] needs key_file (the gateway's private key); set key_file, or write encrypt = "when-key-known"`)
	}
	if p.WKDURL != "" {
		u, err := url.Parse(p.WKDURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			r.at("pgp.wkd_url", `wkd_url in [pgp] is %q; write an http(s) URL, e.g. "https://openpgpkey.example.com", or "" for the standard WKD lookup`, p.WKDURL)
		}
	}
}

func (c *Config) checkWeb(r *reporter) {
	w := &c.Web
	r.tlsPair("web", w.TLSCert, w.TLSKey)
	if w.Listen == "" {
		r.at("web.listen", `listen in [web] is empty; write e.g. listen = "127.0.0.1:8443"`)
		return
	}
	host, err := hostPort(w.Listen, false)
	switch {
	case err != nil:
		r.at("web.listen", `listen in [web]: %v; write e.g. listen = "127.0.0.1:8443"`, err)
	case w.TLSCert == "" && !isLoopback(host):
		r.at("web.listen", `listen in [web] is %q without tls_cert; plain HTTP is allowed only on a loopback address: set tls_cert and tls_key, or write listen = "127.0.0.1:8443"`, w.Listen)
	}
	r.maxConns("web.max_conns", "max_conns in [web]", w.MaxConns)
	for i, h := range w.AllowedHosts {
		if !isDomain(strings.TrimSuffix(h, ".")) {
			r.at(indexPath("web.allowed_hosts", i), `allowed_hosts in [web]: %q is not a host name; write names only, without port or scheme, e.g. allowed_hosts = ["support.example.com"]`, h)
		}
	}
}

func (c *Config) checkMetrics(r *reporter) {
	m := &c.Metrics
	if m.Listen == "" {
		return
	}
	host, err := hostPort(m.Listen, false)
	switch {
	case err != nil:
		r.at("metrics.listen", `listen in [metrics]: %v; write e.g. listen = "127.0.0.1:9025", or "" for no metrics listener`, err)
	case isLoopback(host):
	case m.TokenFile == "":
		r.at("metrics.listen", `listen in [metrics] is %q, not a loopback address, and there is no token_file, so anyone who reaches it reads the counters; set token_file, or write listen = "127.0.0.1:9025"`, m.Listen)
	case c.Web.TLSCert == "":
		r.at("metrics.listen", `listen in [metrics] is %q, not a loopback address, and [web] has no tls_cert, so the token would cross the network in clear text; set tls_cert and tls_key in [web] (the metrics listener uses them), or write listen = "127.0.0.1:9025"`, m.Listen)
	}
}

func (c *Config) checkIMAP(r *reporter) {
	m := &c.IMAP
	r.listeners("imap.listen", "listen in [imap]", m.Listen, "0.0.0.0:993", m.TLSCert != "",
		"agents' passwords and customer mail would cross the network in clear text")
	r.tlsPair("imap", m.TLSCert, m.TLSKey)
	r.listenerTLS("imap.tls", "tls in [imap]", m.TLS, m.TLSCert != "", len(m.Listen) > 0)
	r.maxConns("imap.max_conns", "max_conns in [imap]", m.MaxConns)
}

// listenerTLS checks a listener's TLS mode; implicit TLS cannot work without a certificate.
func (r *reporter) listenerTLS(path, name, mode string, haveCert, used bool) {
	r.enum(path, name, mode, "auto", "implicit", "starttls")
	if mode == "implicit" && !haveCert && used {
		r.at(path, `%s is "implicit" but no tls_cert is set: TLS from the first byte needs a certificate; set tls_cert and tls_key, or write %s = "starttls" (plain text on loopback only)`, name, path[strings.LastIndexByte(path, '.')+1:])
	}
}

func (c *Config) checkFetch(r *reporter) {
	for i, a := range c.Fetch.Accounts {
		p := indexPath("fetch.account", i)
		sec := fmt.Sprintf("[[fetch.account]] #%d", i+1)
		r.enum(p+".tls", "tls in "+sec, a.TLS, "implicit", "starttls", "none")
		u, err := url.Parse(a.URL)
		switch {
		case a.URL == "":
			r.at(p+".url", `%s has no url; write e.g. url = "imaps://imap.example.com:993/INBOX"`, sec)
		case err != nil || (u.Scheme != "imap" && u.Scheme != "imaps") || u.Hostname() == "":
			r.at(p+".url", `url in %s is %q; write e.g. url = "imaps://imap.example.com:993/INBOX"`, sec, a.URL)
		default:
			if _, has := u.User.Password(); has {
				r.at(p+".url", "url in %s holds a password; remove it from the url and put it in password_file (mode 0600)", sec)
			}
			if port := u.Port(); port != "" {
				if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
					r.at(p+".url", "url in %s has port %q; write a number from 1 to 65535", sec, port)
				}
			}
			switch {
			case a.TLS != "implicit" && a.TLS != "starttls" && a.TLS != "none":
				// reported by the enum check above
			case u.Scheme == "imaps" && a.TLS != "implicit":
				r.at(p+".tls", `%s: url is imaps:// but tls is %q; write url = "imap://..." for tls = %q, or remove tls`, sec, a.TLS, a.TLS)
			case u.Scheme == "imap" && a.TLS == "implicit":
				r.at(p+".tls", `%s: url is imap:// but tls = "implicit"; write url = "imaps://..." or tls = "starttls"`, sec)
			case a.TLS == "none" && !isLoopback(u.Hostname()):
				r.at(p+".tls", `%s: tls = "none" is allowed only for a loopback host, and the url's host is %q; write tls = "starttls" or use imaps://`, sec, u.Hostname())
			}
		}
		if a.Username == "" {
			r.at(p+".username", `%s has no username; write e.g. username = "support@example.com"`, sec)
		}
		if a.PasswordFile == "" {
			r.at(p+".password_file", `%s has no password_file; write e.g. password_file = "/etc/mailgate/imap.pass" (a file with mode 0600)`, sec)
		}
		switch {
		case a.Queue == "":
			r.at(p+".queue", "%s has no queue; write queue = %q (the name of a [[queue]])", sec, c.firstQueueName())
		default:
			if _, ok := c.QueueByName(a.Queue); !ok {
				msg := fmt.Sprintf("queue in %s is %q, but no [[queue]] has that name", sec, a.Queue)
				if s := suggest(a.Queue, c.queueNames()); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				}
				r.at(p+".queue", "%s", msg)
			}
		}
		r.positiveDur(p+".poll", "poll in "+sec, a.Poll, `poll = "60s"`)
	}
}

func (c *Config) queueNames() []string {
	out := make([]string, 0, len(c.Queues))
	for _, q := range c.Queues {
		out = append(out, q.Name)
	}
	return out
}

func (c *Config) firstQueueName() string {
	if len(c.Queues) > 0 && c.Queues[0].Name != "" {
		return c.Queues[0].Name
	}
	return "support"
}

// checkListenersDistinct catches two services on one address, which would
// otherwise surface only at start-up as "address already in use".
func (c *Config) checkListenersDistinct(r *reporter) {
	type use struct{ path, name string }
	seen := map[string]use{}
	add := func(path, name, addr string) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || port == "0" {
			return // reported elsewhere, or a fresh port each time
		}
		key := net.JoinHostPort(strings.ToLower(host), port)
		if prev, dup := seen[key]; dup {
			r.at(path, "%s %q is also used by %s; give each listener its own port", name, addr, prev.name)
			return
		}
		seen[key] = use{path, name}
	}
	for i, a := range c.SMTP.Listen {
		add(indexPath("smtp.listen", i), "listen in [smtp]", a)
	}
	for i, a := range c.SMTP.SubmissionListen {
		add(indexPath("smtp.submission_listen", i), "submission_listen in [smtp]", a)
	}
	if c.Web.Listen != "" {
		add("web.listen", "listen in [web]", c.Web.Listen)
	}
	for i, a := range c.IMAP.Listen {
		add(indexPath("imap.listen", i), "listen in [imap]", a)
	}
	if c.Metrics.Listen != "" {
		add("metrics.listen", "listen in [metrics]", c.Metrics.Listen)
	}
}

// fileKind says how a path setting is checked on disk.
type fileKind int

const (
	pathOnly   fileKind = iota // not checked (created by mailgate)
	publicFile                 // must exist
	secretFile                 // must exist, mode 0600 or stricter
)

type fileRef struct {
	path string // key path, for the line
	name string // how to name it in messages
	val  *string
	kind fileKind
}

// files lists every setting that names a file, for path resolution and checks.
func (c *Config) files() []fileRef {
	refs := []fileRef{
		{"key_file", "key_file", &c.KeyFile, secretFile},
		{"smtp.tls_cert", "tls_cert in [smtp]", &c.SMTP.TLSCert, publicFile},
		{"smtp.tls_key", "tls_key in [smtp]", &c.SMTP.TLSKey, secretFile},
		{"outbound.relay_password_file", "relay_password_file in [outbound]", &c.Outbound.RelayPasswordFile, secretFile},
		{"outbound.dkim_key_file", "dkim_key_file in [outbound]", &c.Outbound.DKIMKeyFile, secretFile},
		{"outbound.dkim_ed25519_key_file", "dkim_ed25519_key_file in [outbound]", &c.Outbound.DKIMEd25519KeyFile, secretFile},
		{"pgp.key_file", "key_file in [pgp]", &c.PGP.KeyFile, secretFile},
		{"web.tls_cert", "tls_cert in [web]", &c.Web.TLSCert, publicFile},
		{"web.tls_key", "tls_key in [web]", &c.Web.TLSKey, secretFile},
		{"imap.tls_cert", "tls_cert in [imap]", &c.IMAP.TLSCert, publicFile},
		{"imap.tls_key", "tls_key in [imap]", &c.IMAP.TLSKey, secretFile},
		{"audit.file", "file in [audit]", &c.Audit.File, pathOnly},
		{"metrics.token_file", "token_file in [metrics]", &c.Metrics.TokenFile, secretFile},
	}
	for i := range c.Fetch.Accounts {
		refs = append(refs, fileRef{
			indexPath("fetch.account", i) + ".password_file",
			fmt.Sprintf("password_file in [[fetch.account]] #%d", i+1),
			&c.Fetch.Accounts[i].PasswordFile, secretFile,
		})
	}
	return refs
}

// checkFiles stats every key and certificate file. It never opens them: the
// packages that use a key read it and report its content.
func (c *Config) checkFiles() Errors {
	r := c.reporter()
	if st, err := os.Stat(c.DataDir); c.DataDir != "" && err == nil && !st.IsDir() {
		r.at("data_dir", "data_dir %q is not a directory; point data_dir at a directory (mailgate creates it when missing)", c.DataDir)
	}
	for _, f := range c.files() {
		if f.kind == pathOnly || *f.val == "" {
			continue
		}
		name := *f.val
		st, err := os.Stat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if c.Dev {
				continue // the daemon creates dev keys on first start
			}
			if f.path == "key_file" {
				r.at(f.path, "key_file %q does not exist; run \"mailgate init -dir DIR -domain DOMAIN\" to create the data key (and the other keys), or point key_file at your data key", name)
			} else {
				r.at(f.path, "%s %q does not exist; create it (\"mailgate init\" writes keys and certificates) or correct the path", f.name, name)
			}
			continue
		case err != nil:
			r.at(f.path, "%s: %v", f.name, err)
			continue
		case !st.Mode().IsRegular():
			r.at(f.path, "%s %q is not a regular file", f.name, name)
			continue
		}
		// Windows has no Unix permission bits to check.
		if f.kind == secretFile && runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
			r.at(f.path, "%s %q has mode %04o, readable by others; run \"chmod 600 %s\"", f.name, name, st.Mode().Perm(), name)
		}
	}
	return r.errs
}
