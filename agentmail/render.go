package agentmail

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-message/textproto"

	"mailgate/tickets"
)

// Limits on the MIME structure served as is. Deeper or wider mail is served rendered (its text
// and a note), because go-imap's structure extraction has no limits and a hostile message
// would make every client's FETCH slow (cost grows with depth times size).
const (
	maxServedDepth = 16
	maxServedParts = 256
)

// headerPrefix is the family of headers mailgate adds to what it serves. Any such header in
// the stored mail came from its sender and is removed, so a customer cannot forge a verdict.
const headerPrefix = "x-mailgate-"

// renderer turns ticket messages into the RFC 5322 messages IMAP clients see. The stored raw
// bytes are never changed: headers are prepended (and forged ones dropped) on the way out.
type renderer struct {
	hostname  string
	queueAddr func(queue string) string
}

// served is one message as the client sees it.
type served struct {
	msg  *tickets.Message
	body []byte
	date time.Time
}

// render builds what the client sees of message m with raw bytes raw (nil for notes); queue is
// the mailbox it is served in. m nil means the message is gone (retention, or access lost).
func (r *renderer) render(queue string, ticket uint64, seq int, m *tickets.Message, raw []byte) *served {
	if m == nil {
		return &served{body: r.gone(ticket, seq)}
	}
	date := m.Received
	if date.IsZero() {
		date = m.Date
	}
	head := r.ourHeaders(m)
	if raw != nil && !m.Encrypted {
		deep, hidden := inspectServed(raw)
		if hidden {
			// A mail client would show the name as sent: "invoice\u202Efdp.exe" reads
			// "invoiceexe.pdf". The text form lists the names as the web page does.
			head = appendField(head, "X-Mailgate-Problem", "attachment names hold invisible or bidi control characters: this is its text; the attachments are on the ticket's web page")
		} else if !deep {
			if m.IDTaken {
				// An earlier message holds this Message-ID: a mail client's reply to this one
				// must name this message (its view id), or it would land in the other ticket.
				head = appendField(head, "Message-ID", "<"+r.viewID(m.Ticket, m.Seq)+">")
				return &served{msg: m, date: date, body: append(head, stripFields(raw, true)...)}
			}
			return &served{msg: m, date: date, body: append(head, stripOurHeaders(raw)...)}
		} else {
			head = appendField(head, "X-Mailgate-Problem", "MIME structure too deep or too wide to serve as is: this is its text; the original is kept on the ticket")
		}
	}
	if m.Encrypted {
		head = appendField(head, "X-Mailgate-Encrypted", "yes")
	}
	return &served{msg: m, date: date, body: r.rendered(queue, m, head)}
}

// ourHeaders are the verdict and ticket headers put on top of every served message.
func (r *renderer) ourHeaders(m *tickets.Message) []byte {
	var b []byte
	b = appendField(b, "X-Mailgate-Ticket", strconv.FormatUint(m.Ticket, 10))
	b = appendField(b, "X-Mailgate-Direction", m.Direction)
	if m.Direction == tickets.In {
		b = appendField(b, "X-Mailgate-Verified", yesNo(m.Verified))
		if m.Auth != nil {
			b = appendField(b, "X-Mailgate-Auth", fmt.Sprintf("spf=%s dkim=%s dmarc=%s", word(m.Auth.SPF), word(m.Auth.DKIM), word(m.Auth.DMARC)))
		}
		if m.Quarantined {
			b = appendField(b, "X-Mailgate-Quarantined", "yes")
		}
	}
	if m.Author != "" {
		b = appendField(b, "X-Mailgate-Author", m.Author)
	}
	if m.Problem != "" {
		b = appendField(b, "X-Mailgate-Problem", m.Problem)
	}
	return b
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

var wordRe = regexp.MustCompile(`^[a-z]{1,20}$`)

// word keeps an RFC 8601 result word, or says "none".
func word(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if !wordRe.MatchString(s) {
		return "none"
	}
	return s
}

// rendered is a plain text message built from the stored fields: for notes, for encrypted mail
// (the decrypted text, never the ciphertext), and for mail too complex to serve raw.
func (r *renderer) rendered(queue string, m *tickets.Message, head []byte) []byte {
	b := head
	date := m.Date
	if date.IsZero() {
		date = m.Received
	}
	if !date.IsZero() {
		b = appendField(b, "Date", date.Format(time.RFC1123Z))
	}
	switch m.Direction {
	case tickets.Note:
		b = appendField(b, "From", address(m.Author+" (internal note)", r.queueAddr(queue)))
	default:
		b = appendField(b, "From", address(m.FromName, m.From))
	}
	if m.To != "" {
		b = appendField(b, "To", address("", m.To))
	}
	if len(m.Cc) > 0 {
		var cc []string
		for _, a := range m.Cc {
			cc = append(cc, address("", a))
		}
		b = appendField(b, "Cc", strings.Join(cc, ", "))
	}
	subj := m.Subject
	if m.Direction == tickets.Note {
		subj = "[note] " + subj
	}
	b = appendField(b, "Subject", mime.QEncoding.Encode("utf-8", cleanOneLine(subj)))
	id := m.MessageID
	// A message whose Message-ID an earlier one holds gets a view id: a mail client's reply
	// to it must reach its own ticket, not the one the index names.
	if !msgIDOK(id) || m.IDTaken {
		id = r.viewID(m.Ticket, m.Seq)
	}
	b = appendField(b, "Message-ID", "<"+id+">")
	if refs := idList(m.InReplyTo); refs != "" {
		b = appendField(b, "In-Reply-To", refs)
	}
	if refs := idList(m.References); refs != "" {
		b = appendField(b, "References", refs)
	}
	b = appendField(b, "MIME-Version", "1.0")
	b = appendField(b, "Content-Type", "text/plain; charset=utf-8")
	b = appendField(b, "Content-Transfer-Encoding", "quoted-printable")
	b = append(b, "\r\n"...)

	text := m.Text
	if len(m.Attachments) > 0 {
		var sb strings.Builder
		sb.WriteString(text)
		sb.WriteString("\n\n[mailgate] Attachments, on the ticket's web page:\n")
		for _, a := range m.Attachments {
			fmt.Fprintf(&sb, "  %s (%s, %d bytes)\n", cleanOneLine(tickets.SafeFilename(a.Name, a.ContentType)), cleanOneLine(a.ContentType), a.Size)
		}
		text = sb.String()
	}
	var body bytes.Buffer
	qp := quotedprintable.NewWriter(&body)
	io.WriteString(qp, strings.ReplaceAll(text, "\r\n", "\n"))
	qp.Close()
	return append(b, body.Bytes()...)
}

// gone is what a client sees of a message whose ticket was deleted or is no longer visible.
func (r *renderer) gone(ticket uint64, seq int) []byte {
	var b []byte
	b = appendField(b, "X-Mailgate-Ticket", strconv.FormatUint(ticket, 10))
	b = appendField(b, "From", address("mailgate", "mailgate@"+r.hostname))
	b = appendField(b, "Subject", "[mailgate] message no longer available")
	b = appendField(b, "Message-ID", "<"+r.viewID(ticket, seq)+">")
	b = appendField(b, "MIME-Version", "1.0")
	b = appendField(b, "Content-Type", "text/plain; charset=us-ascii")
	b = append(b, "\r\nThis message was deleted from its ticket, or you may no longer see it.\r\n"...)
	return b
}

// viewID is the Message-ID of a message mailgate renders without one (a note). Submission
// accepts it as a ticket reference, so an agent can answer a note from the mail client.
func (r *renderer) viewID(ticket uint64, seq int) string {
	return fmt.Sprintf("mailgate-view.%d.%d@%s", ticket, seq, r.hostname)
}

var viewIDRe = regexp.MustCompile(`^mailgate-view\.(\d{1,19})\.(\d{1,9})@(.+)$`)

// parseViewID returns the ticket a viewID names.
func (r *renderer) parseViewID(id string) (uint64, bool) {
	m := viewIDRe.FindStringSubmatch(strings.ToLower(strings.Trim(id, "<> ")))
	if m == nil || !strings.EqualFold(m[3], r.hostname) {
		return 0, false
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	return n, err == nil
}

func address(name, addr string) string {
	addr = cleanOneLine(addr)
	if addr == "" {
		addr = "unknown@invalid"
	}
	return (&mail.Address{Name: cleanOneLine(name), Address: addr}).String()
}

var msgIDRe = regexp.MustCompile(`^[^<>\s"()\\,;:\x00-\x1f\x7f]{1,500}@[^<>\s"()\\,;:@\x00-\x1f\x7f]{1,300}$`)

func msgIDOK(id string) bool { return msgIDRe.MatchString(id) }

func idList(ids []string) string {
	var out []string
	for _, id := range ids {
		if msgIDOK(id) {
			out = append(out, "<"+id+">")
		}
	}
	return strings.Join(out, " ")
}

// appendField appends "Name: value" folded at spaces to lines of at most 78 characters where
// possible, with control characters removed, so no value can end the header early.
func appendField(b []byte, name, value string) []byte {
	value = cleanOneLine(value)
	line := name + ":"
	n := len(line)
	b = append(b, line...)
	for i, w := range strings.Split(value, " ") {
		if w == "" && i > 0 {
			continue
		}
		if len(w) > 900 {
			w = w[:900] // RFC 5322 2.1.1: no line over 998 characters
		}
		if n+1+len(w) > 78 && n > len(name)+1 {
			b = append(b, "\r\n"...)
			n = 0
		}
		b = append(b, ' ')
		b = append(b, w...)
		n += 1 + len(w)
	}
	return append(b, "\r\n"...)
}

// stripOurHeaders returns raw without header fields named X-Mailgate-* (and their continuation
// lines), with the header section's line ends made CRLF. The body is kept byte for byte.
// The line ends matter: fetched mail may end its header with a bare LF, and after our CRLF
// headers a strict client would read on past it and take body lines for header fields (a
// forged X-Mailgate-Verified among them).
func stripOurHeaders(raw []byte) []byte { return stripFields(raw, false) }

// stripFields is stripOurHeaders that also drops the Message-ID field when msgID is set.
func stripFields(raw []byte, msgID bool) []byte {
	out := make([]byte, 0, len(raw)+64)
	skipping := false
	i := 0
	for i < len(raw) {
		end := len(raw)
		if j := bytes.IndexByte(raw[i:], '\n'); j >= 0 {
			end = i + j + 1
		}
		line := raw[i:end]
		content := bytes.TrimRight(line, "\r\n")
		if len(content) == 0 {
			// The empty line: the body follows, as it is.
			return append(append(out, "\r\n"...), raw[end:]...)
		}
		if line[0] != ' ' && line[0] != '\t' {
			skipping = len(line) >= len(headerPrefix) && strings.EqualFold(string(line[:len(headerPrefix)]), headerPrefix) ||
				msgID && len(line) >= len("Message-ID:") && strings.EqualFold(string(line[:len("Message-ID:")]), "Message-ID:")
		}
		if !skipping {
			out = append(append(out, content...), "\r\n"...)
		}
		i = end
	}
	return out
}

// tooComplex reports whether raw nests MIME deeper than maxServedDepth or holds more than
// maxServedParts parts, or has an unreadable top header. Its cost is bounded by the limits.
func tooComplex(raw []byte) bool {
	deep, _ := inspectServed(raw)
	return deep
}

// inspectServed is tooComplex that also reports, in the same walk, whether a part's file name
// holds a character tickets.SafeFilename drops (bidi controls and other invisible ones).
func inspectServed(raw []byte) (deep, hidden bool) {
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return true, false
	}
	parts := 0
	deep = complexPart(h, br, 0, &parts, &hidden)
	return deep, hidden
}

func complexPart(h textproto.Header, body io.Reader, depth int, parts *int, hidden *bool) bool {
	mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if !*hidden {
		_, dparams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
		*hidden = tickets.HiddenInName(dparams["filename"]) || tickets.HiddenInName(params["name"])
	}
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		if depth >= maxServedDepth {
			return true
		}
		mr := textproto.NewMultipartReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				return false // end, or malformed: go-imap stops there too
			}
			*parts++
			if *parts > maxServedParts || complexPart(p.Header, p, depth+1, parts, hidden) {
				return true
			}
		}
	case mt == "message/rfc822" || mt == "message/global":
		if depth >= maxServedDepth {
			return true
		}
		br := bufio.NewReader(body)
		inner, err := textproto.ReadHeader(br)
		if err != nil {
			return false
		}
		return complexPart(inner, br, depth+1, parts, hidden)
	}
	return false
}

// fixStructure repairs what go-imap would panic on or clients would choke on: a multipart
// with no parts becomes an empty text part, and a part without a type is text/plain.
func fixStructure(bs imap.BodyStructure) imap.BodyStructure {
	switch b := bs.(type) {
	case *imap.BodyStructureMultiPart:
		if len(b.Children) == 0 {
			return &imap.BodyStructureSinglePart{
				Type: "text", Subtype: "plain", Params: map[string]string{"charset": "us-ascii"},
				Text: &imap.BodyStructureText{}, Extended: &imap.BodyStructureSinglePartExt{},
			}
		}
		for i, c := range b.Children {
			b.Children[i] = fixStructure(c)
		}
		if b.Extended == nil {
			b.Extended = &imap.BodyStructureMultiPartExt{}
		}
		if b.Subtype == "" {
			b.Subtype = "mixed"
		}
	case *imap.BodyStructureSinglePart:
		if b.Type == "" || b.Subtype == "" {
			b.Type, b.Subtype = "text", "plain"
			if b.Text == nil {
				b.Text = &imap.BodyStructureText{}
			}
		}
		if b.Extended == nil {
			b.Extended = &imap.BodyStructureSinglePartExt{}
		}
		if b.MessageRFC822 != nil {
			b.MessageRFC822.BodyStructure = fixStructure(b.MessageRFC822.BodyStructure)
		}
	case nil:
		return fixStructure(&imap.BodyStructureMultiPart{})
	}
	return bs
}
