// Package config owns mailgate's TOML schema, its defaults (including the embedded dev
// default) and validation that names file:line and what to write instead.
// It must not open sockets or any file other than the config itself (it only stats key files).
package config

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config is one mailgate.toml. Field names follow CONTRACT.md; Default lists every default.
type Config struct {
	Hostname string `toml:"hostname"` // HELO name, Message-ID domain, authserv-id
	DataDir  string `toml:"data_dir"`
	KeyFile  string `toml:"key_file"` // 32-byte data key, mode 0600, outside the database file

	SMTP      SMTP      `toml:"smtp"`
	DNS       DNS       `toml:"dns"`
	Verify    Verify    `toml:"verify"`
	Queues    []Queue   `toml:"queue"`
	Outbound  Outbound  `toml:"outbound"`
	PGP       PGP       `toml:"pgp"`
	Web       Web       `toml:"web"`
	IMAP      IMAP      `toml:"imap"`
	Fetch     Fetch     `toml:"fetch"`
	Audit     Audit     `toml:"audit"`
	Retention Retention `toml:"retention"`
	Log       Log       `toml:"log"`
	Metrics   Metrics   `toml:"metrics"`

	Dev  bool   `toml:"-"` // true for the embedded dev default
	Path string `toml:"-"` // file it came from ("" for Dev and Default)

	// lines maps key paths to the line they were written on, so Validate can
	// point at the line even after parsing; source names the text in problems.
	lines  lineIndex
	source string
}

// SMTP is the [smtp] table: the inbound MX listener and agents' submission listener.
type SMTP struct {
	Listen           []string `toml:"listen"`
	SubmissionListen []string `toml:"submission_listen"`
	TLSCert          string   `toml:"tls_cert"`
	TLSKey           string   `toml:"tls_key"`

	// SubmissionTLS is how submission_listen speaks TLS: implicit (TLS from the first byte),
	// starttls, or auto (implicit on port 465, STARTTLS elsewhere: the behaviour before the key).
	SubmissionTLS string `toml:"submission_tls"`

	// Limits go-smtp leaves open (STYLE.md "set every limit").
	MaxMessageBytes        int64    `toml:"max_message_bytes"`
	MaxRecipients          int      `toml:"max_recipients"`
	MaxLineLength          int      `toml:"max_line_length"`
	ReadTimeout            Duration `toml:"read_timeout"` // a whole message (DATA)
	WriteTimeout           Duration `toml:"write_timeout"`
	MaxConnsPerIP          int      `toml:"max_conns_per_ip"` // an IPv4 address or an IPv6 /64
	MessagesPerMinutePerIP int      `toml:"messages_per_minute_per_ip"`
	MaxDKIMSignatures      int      `toml:"max_dkim_signatures"`

	// Connection budgets (issue 11.3): a flood of one listener must not take the file
	// descriptors of the others. 0 in MaxConns and SubmissionMaxConns means a share of the
	// open-file limit, which serve fills in (connlimit.Split).
	MaxConns             int      `toml:"max_conns"`
	SubmissionMaxConns   int      `toml:"submission_max_conns"`
	MaxConnsPerIPv6Net48 int      `toml:"max_conns_per_ipv6_48"`
	IdleTimeout          Duration `toml:"idle_timeout"`      // waiting for the next command
	BusyIdleTimeout      Duration `toml:"busy_idle_timeout"` // the same once 3/4 of max_conns are taken
}

// DNS is the [dns] table.
type DNS struct {
	Resolver string   `toml:"resolver"` // "" = system resolver; "host:port" = only this server
	Timeout  Duration `toml:"timeout"`
}

// Verify is the [verify] table: what SPF/DKIM/DMARC outcomes lead to.
type Verify struct {
	DMARCReject        string   `toml:"dmarc_reject"`         // reject | quarantine
	DMARCQuarantine    string   `toml:"dmarc_quarantine"`     // quarantine | accept
	TempError          string   `toml:"temperror"`            // accept | defer
	TrustedAuthservIDs []string `toml:"trusted_authserv_ids"` // for IMAP-fetched mail
}

// Queue is one [[queue]]: an address customers write to.
type Queue struct {
	Name    string `toml:"name"`
	Address string `toml:"address"`
	AutoAck bool   `toml:"auto_ack"`
	// AutoAckText is the acknowledgement's body; {ticket} becomes the ticket number.
	// "" uses a short built-in text.
	AutoAckText string `toml:"auto_ack_text"`
	// AutoAckTexts are acknowledgements per language ("de", "fr-ch"…), chosen by the customer's
	// Content-Language or Accept-Language; a language without one gets AutoAckText. Default: none.
	AutoAckTexts map[string]string `toml:"auto_ack_texts"`
	// Aliases are further addresses of the queue, typically its old addresses: customers keep
	// replying to them long after a change.
	Aliases []string `toml:"aliases"`
	// Postmaster makes this queue receive postmaster@ mail (RFC 5321 4.5.1) and the DMARC
	// reports init's record asks for; when no queue sets it, the first queue does.
	Postmaster bool `toml:"postmaster"`
}

// Outbound is the [outbound] table: relay and DKIM signing.
type Outbound struct {
	Relay             string `toml:"relay"`     // "" = write .eml files to <data_dir>/outbox
	RelayTLS          string `toml:"relay_tls"` // starttls | tls | none
	RelayUsername     string `toml:"relay_username"`
	RelayPasswordFile string `toml:"relay_password_file"`

	DKIMDomain          string `toml:"dkim_domain"`
	DKIMSelector        string `toml:"dkim_selector"`
	DKIMKeyFile         string `toml:"dkim_key_file"`
	DKIMEd25519Selector string `toml:"dkim_ed25519_selector"`
	DKIMEd25519KeyFile  string `toml:"dkim_ed25519_key_file"` // optional second key: both sign

	GiveUpAfter Duration `toml:"give_up_after"`
	FirstRetry  Duration `toml:"first_retry"`
	// AutoAckPerHour caps automatic acknowledgements per sender address per hour.
	AutoAckPerHour int `toml:"auto_ack_per_hour"`
}

// PGP is the [pgp] table.
type PGP struct {
	KeyFile string `toml:"key_file"` // "" = no PGP
	Encrypt string `toml:"encrypt"`  // never | when-key-known | required
	WKD     bool   `toml:"wkd"`
	WKDURL  string `toml:"wkd_url"` // override the WKD base URL (tests)
}

// Web is the [web] table: the agents' pages.
type Web struct {
	Listen  string `toml:"listen"`
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// MaxConns caps the page's connections; 0 = a share of the open-file limit.
	MaxConns int `toml:"max_conns"`
	// AllowedHosts are names besides hostname that requests may carry in Host (DNS rebinding).
	AllowedHosts []string `toml:"allowed_hosts"`
}

// IMAP is the [imap] table: agents' mail clients.
type IMAP struct {
	Listen  []string `toml:"listen"`
	TLSCert string   `toml:"tls_cert"`
	TLSKey  string   `toml:"tls_key"`

	// TLS is how listen speaks TLS: implicit, starttls, or auto (implicit on port 993,
	// STARTTLS elsewhere: the behaviour before the key).
	TLS string `toml:"tls"`

	MaxConns int `toml:"max_conns"` // 0 = a share of the open-file limit
}

// Fetch is the [fetch] table.
type Fetch struct {
	Accounts []FetchAccount `toml:"account"`
}

// FetchAccount is one [[fetch.account]]: an upstream mailbox mailgate pulls mail from.
type FetchAccount struct {
	URL          string   `toml:"url"` // imaps://host:993/INBOX
	Username     string   `toml:"username"`
	PasswordFile string   `toml:"password_file"`
	Queue        string   `toml:"queue"`
	TLS          string   `toml:"tls"`  // implicit | starttls | none
	Move         string   `toml:"move"` // folder for fetched mail; "" = mark \Seen
	Poll         Duration `toml:"poll"`
}

// Audit is the [audit] table.
type Audit struct {
	File string `toml:"file"` // optional JSON-lines mirror of the audit chain
}

// Retention is the [retention] table.
type Retention struct {
	// ClosedAfter destroys a ticket (its data key, so for good) once it has been closed this
	// long; 0 keeps tickets forever.
	ClosedAfter Duration `toml:"closed_after"`
}

// Log is the [log] table.
type Log struct {
	Format string `toml:"format"` // text | json
	Level  string `toml:"level"`  // debug | info | warn | error
}

// Metrics is the [metrics] table: where Prometheus scrapes /metrics (and a detailed /healthz),
// apart from the agents' page, whose /healthz says only ok or not.
type Metrics struct {
	Listen    string `toml:"listen"`     // "" = no metrics listener
	TokenFile string `toml:"token_file"` // "" = no token; required off loopback
}

// Duration is a TOML string such as "10m" or "120h".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string, or a whole number of days such as "365d"
// (retention periods are thought of in days).
func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseUint(n, 10, 32)
		if err == nil && days <= 100*365 {
			d.Duration = time.Duration(days) * 24 * time.Hour
			return nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (write e.g. \"90s\", \"10m\", \"120h\", \"365d\")", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the shortest form ("10m", not "10m0s"), as an admin would.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// String formats like MarshalText.
func (d Duration) String() string {
	v := d.Duration
	switch {
	case v == 0:
		return "0s"
	case v%time.Hour == 0:
		return fmt.Sprintf("%dh", v/time.Hour)
	case v%time.Minute == 0:
		return fmt.Sprintf("%dm", v/time.Minute)
	case v%time.Second == 0:
		return fmt.Sprintf("%ds", v/time.Second)
	}
	return v.String()
}

func dur(v time.Duration) Duration { return Duration{v} }

// Default returns a Config holding every default; Parse starts from it, so a
// minimal file (hostname, key_file, one [[queue]]) is enough. Each default sits
// beside its key. Hostname and Queues have no default.
func Default() *Config {
	return &Config{
		DataDir: "/var/lib/mailgate",      // bbolt database, outbox, control socket
		KeyFile: "/etc/mailgate/data.key", // kept apart from data_dir on purpose
		SMTP: SMTP{
			Listen:                 []string{"0.0.0.0:25"}, // public MX
			SubmissionListen:       []string{},             // off until asked for
			SubmissionTLS:          "auto",                 // implicit on :465, STARTTLS elsewhere
			MaxMessageBytes:        26214400,               // 25 MiB
			MaxRecipients:          50,                     //
			MaxLineLength:          4096,                   // RFC 5321 asks for at least 1000
			ReadTimeout:            dur(10 * time.Minute),  // a whole DATA transfer
			WriteTimeout:           dur(time.Minute),       //
			MaxConnsPerIP:          20,                     //
			MessagesPerMinutePerIP: 600,                    //
			MaxDKIMSignatures:      5,                      // verify at most this many per message
			MaxConns:               0,                      // a share of the open-file limit
			SubmissionMaxConns:     0,                      // a share of the open-file limit
			MaxConnsPerIPv6Net48:   50,                     // a site's /48 holds 65536 /64s; at least MaxConnsPerIP
			IdleTimeout:            dur(5 * time.Minute),   // RFC 5321 4.5.3.2.7
			BusyIdleTimeout:        dur(10 * time.Second),  // as postfix under stress
		},
		DNS: DNS{
			Resolver: "",                    // system resolver
			Timeout:  dur(10 * time.Second), //
		},
		Verify: Verify{
			DMARCReject:        "reject",     // DMARC fail under p=reject
			DMARCQuarantine:    "quarantine", // DMARC fail under p=quarantine
			TempError:          "accept",     // DNS trouble: accept (marked) rather than defer
			TrustedAuthservIDs: []string{},   // none: fetched mail is verified by us
		},
		Outbound: Outbound{
			Relay:               "",                    // dev: outbox folder
			RelayTLS:            "starttls",            // never silently plain text
			DKIMSelector:        "mailgate",            //
			DKIMEd25519Selector: "mailgate-ed25519",    //
			GiveUpAfter:         dur(120 * time.Hour),  // 5 days, as MTAs usually do
			FirstRetry:          dur(30 * time.Second), // doubles on each failure
			AutoAckPerHour:      3,                     // a few per sender: enough for a person, too few for a loop
		},
		PGP: PGP{
			KeyFile: "",               // no PGP
			Encrypt: "when-key-known", //
			WKD:     false,            // looking keys up tells the customer's domain we write to them
		},
		Web: Web{
			Listen:       "127.0.0.1:8443", // loopback until TLS is set up
			MaxConns:     0,                // a share of the open-file limit
			AllowedHosts: []string{},       // hostname and the listener's own address only
		},
		IMAP: IMAP{
			Listen:   []string{}, // off until asked for
			TLS:      "auto",     // implicit on :993, STARTTLS elsewhere
			MaxConns: 0,          // a share of the open-file limit
		},
		Audit:     Audit{File: ""},                    // no mirror
		Retention: Retention{ClosedAfter: Duration{}}, // keep closed tickets until an admin purges them
		Log: Log{
			Format: "text", //
			Level:  "info", //
		},
		Metrics: Metrics{
			Listen:    "127.0.0.1:9025", // loopback: the counts are for the operator only
			TokenFile: "",               // no token
		},
	}
}

// defaultQueue is where each [[queue]] starts.
func defaultQueue() Queue {
	return Queue{AutoAck: false, Aliases: []string{}}
}

// defaultFetchAccount is where each [[fetch.account]] starts. TLS is filled from
// the URL scheme after decoding when the file does not say (imaps → implicit).
func defaultFetchAccount() FetchAccount {
	return FetchAccount{
		TLS:  "", // from the scheme: imaps → implicit, imap → starttls
		Poll: dur(60 * time.Second),
	}
}

// QueueByAddress finds the queue for a recipient address, ignoring case in
// both the local part and the domain. Surrounding angle brackets are ignored.
// Aliases and postmaster addresses count (see Recipients).
func (c *Config) QueueByAddress(addr string) (*Queue, bool) {
	addr = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(addr), "<"), ">"))
	if name, ok := c.Recipients()[addr]; ok {
		return c.QueueByName(name)
	}
	return nil, false
}

// Recipients maps every address mailgate receives for, lower-cased, to its queue's name: each
// queue's address and aliases, and postmaster at each of their domains and at hostname, plus
// the bare "postmaster" (RFC 5321 4.5.1 requires all of these). Postmaster mail goes to the
// queue with postmaster = true, else to the first queue; a queue whose own address or alias
// is a postmaster address keeps it.
func (c *Config) Recipients() map[string]string {
	m := map[string]string{}
	var domains []string
	for _, q := range c.Queues {
		for _, a := range append([]string{q.Address}, q.Aliases...) {
			a = strings.ToLower(a)
			if _, dup := m[a]; !dup {
				m[a] = q.Name
			}
			if at := strings.LastIndexByte(a, '@'); at >= 0 {
				domains = append(domains, a[at+1:])
			}
		}
	}
	pm := c.PostmasterQueue()
	if pm == "" {
		return m
	}
	if h := strings.TrimSuffix(strings.ToLower(c.Hostname), "."); h != "" {
		domains = append(domains, h)
	}
	for _, d := range append(domains, "") {
		a := "postmaster"
		if d != "" {
			a += "@" + d
		}
		if _, ok := m[a]; !ok {
			m[a] = pm
		}
	}
	return m
}

// PostmasterQueue names the queue postmaster@ mail goes to ("" without queues).
func (c *Config) PostmasterQueue() string {
	for _, q := range c.Queues {
		if q.Postmaster {
			return q.Name
		}
	}
	if len(c.Queues) > 0 {
		return c.Queues[0].Name
	}
	return ""
}

// QueueByName finds a queue by its name.
func (c *Config) QueueByName(name string) (*Queue, bool) {
	for i := range c.Queues {
		if c.Queues[i].Name == name {
			return &c.Queues[i], true
		}
	}
	return nil, false
}

// DataPath joins elem under DataDir.
func (c *Config) DataPath(elem ...string) string {
	return filepath.Join(append([]string{c.DataDir}, elem...)...)
}
