package inbound

import (
	"bytes"
	"io"
	"mime"
	"regexp"
	"strings"

	gomessage "github.com/emersion/go-message"
)

// Telling machine mail from people's mail. A ticket system that answers automatic mail loops
// with it (RFC 3834 2), and a bounce of one of our replies belongs on that reply's ticket, not
// in a new one. Classify decides on headers and MIME structure only; it never refuses mail.

// Kinds of automatic mail (tickets.Incoming.Kind); "" is a message a person wrote.
const (
	// KindBounce is a delivery status notification: a DSN (RFC 3464) or a non-standard
	// bounce from a mailer daemon.
	KindBounce = "bounce"
	// KindAutoReply is an automatic response (RFC 3834: vacation, out of office), a read
	// receipt (RFC 8098), list or bulk mail.
	KindAutoReply = "auto-reply"
	// KindReport is a machine report: ARF abuse/feedback (RFC 5965), DMARC aggregate
	// (RFC 7489 7.2) or TLS-RPT (RFC 8460).
	KindReport = "report"
)

// Envelope is what SMTP said about a message. The zero value means the envelope is unknown
// (mail fetched from a mailbox); then the topmost Return-Path field stands in for MAIL FROM.
type Envelope struct {
	Known    bool   // the message came over SMTP
	MailFrom string // the reverse-path; "" with Known is the null sender <>
}

// Class is what Classify found.
type Class struct {
	Kind string
	// BounceOf holds, for a bounce, the Message-IDs (without <>) of the messages it reports
	// on: from the returned message or its headers, and In-Reply-To/References.
	BounceOf []string
	// Reason names the signal that decided, for logs and tests.
	Reason string
}

// Limits on the work one message can cause.
const (
	classifyMaxHeader = 256 << 10 // bytes of top-level header read
	classifyMaxParts  = 64
	classifyMaxDepth  = 8
	classifyMaxScan   = 1 << 20 // bytes of body searched for returned headers
	classifyMaxIDs    = 16
)

// Classify tells bounces, auto-replies and reports from mail a person wrote. raw is the
// message as received. Stronger signals win: a DSN structure makes a bounce even when it also
// says Auto-Submitted (every DSN should), a report is a report even from a list.
func Classify(raw []byte, env Envelope) Class {
	m := readMessage(raw)
	ct, params := m.contentType()
	parts := m.parts()

	// RFC 3464 / RFC 6533: the delivery-status report.
	if ct == "multipart/report" && (params["report-type"] == "delivery-status" || params["report-type"] == "global-delivery-status") {
		return m.bounce(parts, "multipart/report delivery-status")
	}
	if parts.has("message/delivery-status", "message/global-delivery-status") {
		return m.bounce(parts, "message/delivery-status part")
	}
	// Reports: ARF (RFC 5965 3), TLS-RPT (RFC 8460 5.3), DMARC aggregate (RFC 7489 7.2.1.1).
	if (ct == "multipart/report" && params["report-type"] == "feedback-report") || parts.has("message/feedback-report") {
		return Class{Kind: KindReport, Reason: "feedback report (ARF)"}
	}
	if m.get("tls-report-domain") != "" || (ct == "multipart/report" && params["report-type"] == "tlsrpt") ||
		parts.has("application/tlsrpt+gzip", "application/tlsrpt+json") {
		return Class{Kind: KindReport, Reason: "TLS report"}
	}
	subject := decodeHeader(m.get("subject"))
	if dmarcSubjectRe.MatchString(subject) &&
		(strings.Contains(strings.ToLower(subject), "submitter") || ct == "application/zip" || ct == "application/gzip" ||
			parts.has("application/zip", "application/gzip", "application/x-gzip", "application/x-zip-compressed", "application/xml", "text/xml")) {
		return Class{Kind: KindReport, Reason: "DMARC aggregate report"}
	}
	// Bounces in no standard form: Exim, qmail, Gmail, OpenSMTPD, old Exchange.
	if m.get("x-failed-recipients") != "" {
		return m.bounce(parts, "X-Failed-Recipients")
	}
	if m.fromDaemon(env) && (bounceSubjectRe.MatchString(subject) || bounceBodyRe.Match(m.bodyPrefix(8<<10))) {
		return m.bounce(parts, "mailer-daemon with a bounce subject or text")
	}
	// Read receipts (RFC 8098) are automatic answers too.
	if (ct == "multipart/report" && params["report-type"] == "disposition-notification") || parts.has("message/disposition-notification") {
		return Class{Kind: KindAutoReply, Reason: "disposition notification"}
	}
	if r := m.autoReply(subject); r != "" {
		return Class{Kind: KindAutoReply, Reason: r}
	}
	// RFC 5321 4.5.5 and RFC 3834 3.3: the null reverse-path is for automatic mail only.
	if null, known := m.nullSender(env); known && null {
		return Class{Kind: KindAutoReply, Reason: "null sender"}
	}
	return Class{}
}

var (
	// "Report Domain: example.com Submitter: ..." with tags some reporters put in front, such
	// as Outlook's "[Preview] ".
	dmarcSubjectRe = regexp.MustCompile(`(?i)^\s*(\[[^\]]*\]\s*)?report[ -]?domain\s*:`)
	// Subjects daemons give their bounces.
	bounceSubjectRe = regexp.MustCompile(`(?i)(undeliver|undelivered mail|delivery status notification|delivery (status )?notification|failure notice|mail delivery failed|returned mail|delivery fail|non-?delivery|could not be delivered|delayed mail|delivery delayed|mail delivery (subsystem|system)|returned to sender|message you sent (was )?blocked|warning: could not send)`)
	// Phrases in the first lines of a bounce without a telling subject.
	bounceBodyRe = regexp.MustCompile(`(?i)(this is the qmail-send program|created automatically by mail delivery software|could not be delivered to one or more|delivery to the following recipients? failed|delivery has failed to these recipients|i'm afraid i wasn't able to deliver)`)
	// Subjects of automatic replies in the languages support desks see most.
	autoSubjectRe = regexp.MustCompile(`(?i)^\s*(auto(matic)?[ -]?(reply|response|antwort|respon)|autoreply|out of (the )?office|abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica|vacation( reply)?:|on vacation)`)
	// Message-ID lines of a returned message quoted in a bounce's text.
	quotedIDRe = regexp.MustCompile(`(?im)^[ \t]*message-id:[ \t]*<([^<>\s]{1,250})>`)
	msgIDRe    = regexp.MustCompile(`<([^<>\s]{1,250})>`)
)

// daemonLocals are the local parts mail systems send bounces from.
var daemonLocals = map[string]bool{
	"mailer-daemon": true, "mailer_daemon": true, "maildaemon": true, "mail-daemon": true,
	"postmaster": true, "mailerdaemon": true,
}

// autoReply returns why the message is an automatic reply, or "".
func (m *msg) autoReply(subject string) string {
	// RFC 3834 5: any Auto-Submitted other than "no".
	if v := m.get("auto-submitted"); v != "" {
		kw := strings.ToLower(strings.TrimSpace(v))
		if i := strings.IndexAny(kw, ";("); i >= 0 {
			kw = strings.TrimSpace(kw[:i])
		}
		if kw != "no" {
			return "Auto-Submitted: " + kw
		}
	}
	// Vacation programs and mail servers that predate RFC 3834.
	for _, h := range []string{"x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from",
		"x-mail-autoreply", "x-autogenerated", "x-auto-response-suppress", "x-ms-exchange-inbox-rules-loop",
		"x-ms-exchange-generated-message-source", "x-vacation", "x-fc-machinegenerated", "x-precedence"} {
		if m.has(h) {
			return h
		}
	}
	if strings.EqualFold(m.get("x-apple-action"), "vacation") {
		return "x-apple-action: vacation"
	}
	if strings.Contains(strings.ToLower(m.get("x-post-messageclass")), "autoresponder") {
		return "x-post-messageclass: autoresponder"
	}
	switch strings.ToLower(strings.TrimSpace(m.get("precedence"))) {
	case "bulk", "junk", "list", "auto_reply", "auto-reply":
		return "Precedence: " + strings.ToLower(strings.TrimSpace(m.get("precedence")))
	}
	// Mailing lists (RFC 2369, RFC 2919) and bulk senders' feedback loops.
	for _, f := range m.fields {
		if strings.HasPrefix(f.name, "list-") {
			return f.name
		}
	}
	if m.has("feedback-id") {
		return "feedback-id"
	}
	if autoSubjectRe.MatchString(subject) {
		return "automatic-reply subject"
	}
	return ""
}

// msg is the part of a message Classify looks at.
type msg struct {
	fields []hfield
	body   []byte // after the header's empty line
	whole  []byte // header and body, without an mbox "From " line
}

type hfield struct {
	name  string // lowercase
	value string // unfolded, trimmed
}

// readMessage splits raw into its top-level header fields and body. It never fails: a line
// without a colon is skipped, an mbox "From " line in front is dropped, LF or CRLF both end
// lines, and the header is cut at classifyMaxHeader.
func readMessage(raw []byte) *msg {
	m := &msg{}
	if bytes.HasPrefix(raw, []byte("From ")) {
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			raw = raw[i+1:]
		} else {
			raw = nil
		}
	}
	m.whole = raw
	pos := 0
	for pos < len(raw) && pos < classifyMaxHeader {
		end := len(raw)
		if i := bytes.IndexByte(raw[pos:], '\n'); i >= 0 {
			end = pos + i + 1
		}
		line := bytes.TrimRight(raw[pos:end], "\r\n")
		pos = end
		if len(line) == 0 {
			m.body = raw[pos:]
			return m
		}
		if (line[0] == ' ' || line[0] == '\t') && len(m.fields) > 0 {
			f := &m.fields[len(m.fields)-1]
			f.value = strings.TrimSpace(f.value + " " + strings.TrimSpace(string(line)))
			continue
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			continue
		}
		m.fields = append(m.fields, hfield{
			name:  strings.ToLower(strings.TrimSpace(string(line[:i]))),
			value: strings.TrimSpace(string(line[i+1:])),
		})
	}
	if pos < len(raw) {
		m.body = raw[pos:]
	}
	return m
}

func (m *msg) get(name string) string {
	for _, f := range m.fields {
		if f.name == name {
			return f.value
		}
	}
	return ""
}

func (m *msg) has(name string) bool {
	for _, f := range m.fields {
		if f.name == name {
			return true
		}
	}
	return false
}

func (m *msg) bodyPrefix(n int) []byte {
	if len(m.body) > n {
		return m.body[:n]
	}
	return m.body
}

// contentType returns the top-level media type and parameters, lowercased. A header that
// mime.ParseMediaType refuses still gives its type and its report-type.
func (m *msg) contentType() (string, map[string]string) {
	v := m.get("content-type")
	if v == "" {
		return "text/plain", map[string]string{}
	}
	t, params, err := mime.ParseMediaType(v)
	if err != nil {
		t = strings.TrimSpace(strings.SplitN(v, ";", 2)[0])
		params = map[string]string{}
		if mt := reportTypeRe.FindStringSubmatch(v); mt != nil {
			params["report-type"] = mt[1]
		}
	}
	for k, p := range params {
		params[k] = strings.ToLower(p)
	}
	return strings.ToLower(t), params
}

var reportTypeRe = regexp.MustCompile(`(?i)report-type\s*=\s*"?([a-z0-9-]+)`)

// partList is what the MIME walk found.
type partList struct {
	types    map[string]bool
	returned []string // Message-IDs in returned messages or their headers
}

func (p partList) has(types ...string) bool {
	for _, t := range types {
		if p.types[t] {
			return true
		}
	}
	return false
}

// parts walks the MIME tree of a multipart message, within the limits: the part types, and
// the Message-ID of each returned message (message/rfc822, text/rfc822-headers). A broken
// structure ends the walk with what was found so far.
func (m *msg) parts() partList {
	out := partList{types: map[string]bool{}}
	if ct, _ := m.contentType(); !strings.HasPrefix(ct, "multipart/") {
		return out
	}
	e, err := gomessage.Read(bytes.NewReader(m.whole))
	if err != nil && !gomessage.IsUnknownCharset(err) && !gomessage.IsUnknownEncoding(err) {
		return out
	}
	n := 0
	e.Walk(func(path []int, part *gomessage.Entity, err error) error {
		n++
		if n > classifyMaxParts || len(path) > classifyMaxDepth {
			return io.EOF
		}
		t, _, _ := part.Header.ContentType()
		t = strings.ToLower(t)
		out.types[t] = true
		switch t {
		case "message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/global", "message/global-headers":
			head, _ := io.ReadAll(io.LimitReader(part.Body, 64<<10))
			inner := readMessage(head)
			if id := firstID(inner.get("message-id")); id != "" {
				out.returned = append(out.returned, id)
			}
		}
		return nil
	})
	return out
}

// fromDaemon reports whether the message comes from a mail system rather than a person: the
// null sender, or MAILER-DAEMON or postmaster as sender or From.
func (m *msg) fromDaemon(env Envelope) bool {
	if null, known := m.nullSender(env); known && null {
		return true
	}
	sender := env.MailFrom
	if !env.Known {
		sender = strings.Trim(m.get("return-path"), "<> ")
	}
	if isDaemon(sender) {
		return true
	}
	from := m.get("from")
	if a := msgIDRe.FindStringSubmatch(from); a != nil {
		from = a[1]
	} else if f := strings.Fields(from); len(f) > 0 {
		from = f[0]
	}
	return isDaemon(from)
}

// nullSender reports whether the reverse-path is <>; known is false when neither the
// envelope nor a Return-Path field says.
func (m *msg) nullSender(env Envelope) (null, known bool) {
	if env.Known {
		return env.MailFrom == "", true
	}
	for _, f := range m.fields {
		if f.name == "return-path" {
			return strings.Trim(f.value, "<> \t") == "", true
		}
	}
	return false, false
}

func isDaemon(addr string) bool {
	local := strings.ToLower(strings.Trim(addr, "<> \t\"'"))
	if i := strings.LastIndexByte(local, '@'); i >= 0 {
		local = local[:i]
	}
	return daemonLocals[local]
}

// bounce builds the Class of a bounce with the Message-IDs it reports on.
func (m *msg) bounce(parts partList, reason string) Class {
	own := firstID(m.get("message-id"))
	var ids []string
	add := func(id string) {
		id = strings.TrimSpace(id)
		if id == "" || strings.EqualFold(id, own) || len(ids) >= classifyMaxIDs {
			return
		}
		for _, have := range ids {
			if strings.EqualFold(have, id) {
				return
			}
		}
		ids = append(ids, id)
	}
	for _, id := range parts.returned {
		add(id)
	}
	// Returned messages quoted in plain text (qmail, Exim, Gmail, Exchange's HTML part).
	body := m.body
	if len(body) > classifyMaxScan {
		body = body[:classifyMaxScan]
	}
	for _, mt := range quotedIDRe.FindAllSubmatch(body, classifyMaxIDs*2) {
		add(string(mt[1]))
	}
	for _, h := range []string{"in-reply-to", "references"} {
		for _, mt := range msgIDRe.FindAllStringSubmatch(m.get(h), classifyMaxIDs) {
			add(mt[1])
		}
	}
	return Class{Kind: KindBounce, BounceOf: ids, Reason: reason}
}

// firstID returns the first <id> in a Message-ID value, without the brackets.
func firstID(v string) string {
	if mt := msgIDRe.FindStringSubmatch(v); mt != nil {
		return mt[1]
	}
	return ""
}

// headerDecoder decodes RFC 2047 words for matching; words in a charset it does not know
// stay as they are (only ASCII prefixes are matched).
var headerDecoder = mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}

func decodeHeader(v string) string {
	d, err := headerDecoder.DecodeHeader(v)
	if err != nil {
		return v
	}
	return d
}
