package tickets

import (
	"bytes"
	"io"
	"mime"
	"net/mail"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // non-UTF-8 mail must become readable text
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Limits on what one message may make us do; beyond them the message is still stored raw and
// the parse stops with a Problem noted.
const (
	maxDepth       = 16
	maxParts       = 256
	maxHeaderBytes = 256 << 10
	maxRefs        = 64
)

// Parsed is what mailgate reads out of a raw message.
type Parsed struct {
	From        string
	FromName    string
	To          string
	Cc          []string
	Subject     string
	MessageID   string
	InReplyTo   []string
	References  []string
	Date        time.Time
	Text        string
	HTML        string
	Attachments []ParsedAttachment
	Header      textproto.Header
	// Problem is set when the message was not well formed; whatever could be read is kept.
	Problem string
}

// ParsedAttachment is one attachment's metadata and bytes.
type ParsedAttachment struct {
	Name        string
	ContentType string
	Data        []byte
}

// Parse reads raw into a Parsed. It never fails: malformed input yields what could be read and
// a Problem, and the caller stores the raw bytes regardless.
func Parse(raw []byte) *Parsed {
	p := &Parsed{}
	e, err := message.ReadWithOptions(bytes.NewReader(raw), &message.ReadOptions{MaxHeaderBytes: maxHeaderBytes})
	if err != nil && e == nil {
		p.Problem = "unreadable header: " + err.Error()
		p.Text = string(bytes.ToValidUTF8(raw, []byte("\uFFFD")))
		return p
	}
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		p.Problem = err.Error()
	}
	p.Header = e.Header.Header
	h := gomail.Header{Header: e.Header}
	if s, err := h.Subject(); err == nil {
		p.Subject = s
	} else {
		p.Subject = h.Get("Subject")
	}
	p.Subject = cleanLine(p.Subject)
	if from, err := h.AddressList("From"); err == nil && len(from) > 0 {
		p.From = strings.ToLower(from[0].Address)
		p.FromName = cleanLine(from[0].Name)
	} else if a, err := mail.ParseAddress(h.Get("From")); err == nil {
		p.From = strings.ToLower(a.Address)
	}
	if to, err := h.AddressList("To"); err == nil && len(to) > 0 {
		p.To = strings.ToLower(to[0].Address)
	}
	if cc, err := h.AddressList("Cc"); err == nil {
		for _, a := range cc {
			p.Cc = append(p.Cc, strings.ToLower(a.Address))
		}
	}
	p.MessageID = msgIDs(h.Get("Message-Id"), 1).first()
	p.InReplyTo = msgIDs(h.Get("In-Reply-To"), maxRefs)
	p.References = msgIDs(strings.Join(h.Values("References"), " "), maxRefs)
	if d, err := h.Date(); err == nil {
		p.Date = d
	}
	readBody(p, e)
	// Readable text uses LF like every other text mailgate shows; the raw message keeps CRLF.
	p.Text = strings.ReplaceAll(p.Text, "\r\n", "\n")
	return p
}

type idList []string

func (l idList) first() string {
	if len(l) == 0 {
		return ""
	}
	return l[0]
}

var msgIDRe = regexp.MustCompile(`<([^<>\s]{1,900})>`)

// msgIDs extracts message ids from a header value. It is lenient on purpose: mailers write
// ids without brackets or with comments, and a thread should not break on that.
func msgIDs(v string, max int) idList {
	var out idList
	ms := msgIDRe.FindAllStringSubmatch(v, -1)
	if len(ms) == 0 {
		if f := strings.Fields(v); len(f) == 1 && strings.Contains(f[0], "@") && len(f[0]) < 900 {
			return idList{strings.Trim(f[0], "<>")}
		}
		return nil
	}
	// Keep the last ones: the nearest ancestors matter most for threading.
	if len(ms) > max {
		ms = ms[len(ms)-max:]
	}
	for _, m := range ms {
		out = append(out, m[1])
	}
	return out
}

func readBody(p *Parsed, e *message.Entity) {
	parts := 0
	var walk func(e *message.Entity, depth int)
	walk = func(e *message.Entity, depth int) {
		if depth > maxDepth {
			p.Problem = "MIME nesting too deep; the rest is kept only in the raw message"
			return
		}
		if mr := e.MultipartReader(); mr != nil {
			for {
				part, err := mr.NextPart()
				if err == io.EOF {
					return
				}
				if err != nil && (part == nil || !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err)) {
					p.Problem = "malformed MIME: " + err.Error()
					return
				}
				parts++
				if parts > maxParts {
					p.Problem = "too many MIME parts; the rest is kept only in the raw message"
					return
				}
				walk(part, depth+1)
			}
		}
		leaf(p, e)
	}
	walk(e, 0)
}

func leaf(p *Parsed, e *message.Entity) {
	ct, params, err := e.Header.ContentType()
	if err != nil || ct == "" {
		ct = "text/plain"
	}
	disp, dparams, _ := e.Header.ContentDisposition()
	body, err := io.ReadAll(e.Body)
	if err != nil && p.Problem == "" {
		p.Problem = "body: " + err.Error()
	}
	name := dparams["filename"]
	if name == "" {
		name = params["name"]
	}
	isText := strings.HasPrefix(ct, "text/")
	if disp != "attachment" && isText && (ct == "text/plain" || ct == "text/html") {
		if ct == "text/plain" && p.Text == "" {
			p.Text = string(bytes.ToValidUTF8(body, []byte("\uFFFD")))
			return
		}
		if ct == "text/html" && p.HTML == "" {
			p.HTML = string(bytes.ToValidUTF8(body, []byte("\uFFFD")))
			return
		}
	}
	if disp != "attachment" && disp != "inline" && name == "" && isText {
		// A second text part: append it rather than hide it.
		if ct == "text/plain" {
			p.Text += "\n\n" + string(bytes.ToValidUTF8(body, []byte("\uFFFD")))
			return
		}
	}
	if strings.HasPrefix(ct, "multipart/") {
		return
	}
	p.Attachments = append(p.Attachments, ParsedAttachment{Name: SafeFilename(name, ct), ContentType: ct, Data: body})
}

// SafeFilename turns an attacker-chosen file name into one safe to offer for download.
func SafeFilename(name, contentType string) string {
	if dec, err := new(mime.WordDecoder).DecodeHeader(name); err == nil {
		name = dec
	}
	name = strings.ReplaceAll(name, "\\", "/")
	name = filepath.Base(name)
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || hiddenFormat(r) || r == '/' || r == '"' || r == unicode.ReplacementChar {
			return -1
		}
		return r
	}, name)
	name = strings.TrimLeft(strings.TrimSpace(name), ".")
	if len(name) > 120 {
		// Keep the end (the extension) and cut on a character boundary.
		cut := len(name) - 120
		for cut < len(name) && !utf8.RuneStart(name[cut]) {
			cut++
		}
		name = name[cut:]
	}
	if name == "" || name == "." {
		name = "attachment"
		if exts, _ := mime.ExtensionsByType(contentType); len(exts) > 0 {
			name += exts[0]
		}
	}
	return name
}

// HiddenInName reports whether a file name as sent (RFC 2047 words allowed) holds a character
// SafeFilename drops as a control or hidden format character: where mailgate passes a name on
// as it came (the IMAP view), it must not.
func HiddenInName(name string) bool {
	if name == "" {
		return false
	}
	if dec, err := new(mime.WordDecoder).DecodeHeader(name); err == nil {
		name = dec
	}
	return strings.ContainsFunc(name, func(r rune) bool { return unicode.IsControl(r) || hiddenFormat(r) })
}

// hiddenFormat reports the invisible characters that can make a file name read as something it
// is not: the bidi controls (U+202E turns "invoice\u202Efdp.exe" into "invoiceexe.pdf" on the
// screen, Unicode TR36 2.2), every other format character (zero-width spaces, word joiners,
// byte order marks, tag characters) and the line and paragraph separators. Zero-width
// (non-)joiners stay: Persian and Indic names need them, and they reorder nothing.
func hiddenFormat(r rune) bool {
	if r == '\u200C' || r == '\u200D' {
		return false
	}
	return unicode.Is(unicode.Bidi_Control, r) || unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Zl, r) || unicode.Is(unicode.Zp, r)
}

// cleanLine removes control characters (CR, LF, NUL…) from a one-line value so it can never
// break a header or a terminal.
func cleanLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' {
			return ' '
		}
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
}

func equalAddr(a, b string) bool { return strings.EqualFold(a, b) }

// HTMLToText is a last-resort plain rendering of an HTML-only mail for the text field.
func HTMLToText(h string) string {
	h = scriptRe.ReplaceAllString(h, "")
	h = breakRe.ReplaceAllString(h, "\n")
	h = htmlTagRe.ReplaceAllString(h, "")
	return strings.TrimSpace(entities.Replace(h))
}

// Compiled once: HTMLToText runs on the ingest path for HTML-only mail.
var (
	scriptRe  = regexp.MustCompile(`(?is)<(script|style)[^>]*>.*?</(script|style)>`)
	breakRe   = regexp.MustCompile(`(?i)<br\s*/?>|</p>|</div>|</tr>`)
	htmlTagRe = regexp.MustCompile(`<[^>]*>`)
	entities  = strings.NewReplacer("&nbsp;", " ", "&amp;", "&", "&lt;", "<", "&gt;", ">", "&quot;", `"`, "&#39;", "'")
)
