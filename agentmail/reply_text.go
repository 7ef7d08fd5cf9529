package agentmail

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"regexp"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"mailgate/tickets"
)

// inspection is what the submission path learns from a message's MIME structure.
type inspection struct {
	extra       []string // attachments and other parts that a text reply would silently drop
	attachments []tickets.ParsedAttachment
	broken      []string // structure mailgate will not take apart (too deep, too many parts)
	encrypted   bool
	flowed      bool // the text part is format=flowed (RFC 3676)
	delSp       bool
}

// Parts a text reply may leave out without loss: signatures and keys the agent's client adds.
var ignoredTypes = map[string]bool{
	"application/pgp-signature":     true,
	"application/pgp-keys":          true,
	"application/pkcs7-signature":   true,
	"application/x-pkcs7-signature": true,
}

// inspect walks raw's MIME structure within the serving limits.
func inspect(raw []byte, p *tickets.Parsed) inspection {
	var in inspection
	in.encrypted = strings.Contains(p.Text, "-----BEGIN PGP MESSAGE-----")
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return in
	}
	parts := 0
	textSeen := false
	var walk func(h textproto.Header, body io.Reader, depth int, related bool)
	walk = func(h textproto.Header, body io.Reader, depth int, related bool) {
		mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
		if mt == "" {
			mt = "text/plain"
		}
		switch {
		case mt == "multipart/encrypted" || mt == "application/pkcs7-mime" || mt == "application/x-pkcs7-mime":
			in.encrypted = true
			return
		case strings.HasPrefix(mt, "multipart/"):
			if depth >= maxServedDepth {
				in.broken = append(in.broken, "deeply nested parts")
				return
			}
			mr := textproto.NewMultipartReader(body, params["boundary"])
			for {
				part, err := mr.NextPart()
				if err != nil {
					return
				}
				if parts++; parts > maxServedParts {
					in.broken = append(in.broken, "too many parts")
					return
				}
				walk(part.Header, part, depth+1, related || mt == "multipart/related")
			}
		}
		disp, dparams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
		name := dparams["filename"]
		if name == "" {
			name = params["name"]
		}
		switch {
		case (mt == "text/plain" || mt == "text/html") && disp != "attachment" && name == "":
			if mt == "text/plain" && !textSeen {
				textSeen = true
				in.flowed = strings.EqualFold(params["format"], "flowed")
				in.delSp = strings.EqualFold(params["delsp"], "yes")
			}
			return
		case ignoredTypes[mt]:
			return
		case related && disp != "attachment":
			return // an image of the HTML version, which a text reply does not carry
		}
		if name == "" {
			name = mt
		}
		name = tickets.SafeFilename(name, mt)
		in.extra = append(in.extra, name)
		// go-message undoes the transfer encoding; the submission size limit bounds the read.
		// The copy is labelled octet-stream so no charset conversion touches the file's bytes.
		dh := h.Copy()
		dh.Set("Content-Type", "application/octet-stream")
		e, err := message.New(message.Header{Header: dh}, body)
		if err != nil {
			in.broken = append(in.broken, name+": "+err.Error())
			return
		}
		data, err := io.ReadAll(e.Body)
		if err != nil {
			in.broken = append(in.broken, name+": "+err.Error())
			return
		}
		in.attachments = append(in.attachments, tickets.ParsedAttachment{Name: name, ContentType: mt, Data: data})
	}
	walk(h, br, 0, false)
	return in
}

// forwardText is the agent's whole text for colleagues: unflowed, the forwarded message kept.
func forwardText(p *tickets.Parsed, in inspection) string {
	text := p.Text
	if strings.TrimSpace(text) == "" && p.HTML != "" {
		text = tickets.HTMLToText(p.HTML)
	}
	text = strings.ReplaceAll(text, "\r\n", "\n")
	if in.flowed {
		text = unflow(text, in.delSp)
	}
	return text
}

// ourFieldRe matches a header line the IMAP view adds (X-Mailgate-*) or that inbound wrote
// (Authentication-Results), as it appears in a forwarded or quoted message's text, possibly
// behind quote marks.
var ourFieldRe = regexp.MustCompile(`(?i)^([ \t]*(?:>[ \t]?)*)(x-mailgate-[a-z0-9-]*|authentication-results)[ \t]*:`)

// stripOurFields removes those header lines and their continuation lines from text: a
// customer must not get mailgate's verdicts on their own or anybody's mail, nor ticket
// internals such as the author's account name, when an agent forwards or quotes a message
// with its header shown.
func stripOurFields(text string) string {
	lines := strings.Split(text, "\n")
	out := lines[:0]
	skipping, prefix := false, ""
	for _, l := range lines {
		if skipping {
			rest, ok := strings.CutPrefix(l, prefix)
			if ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') && strings.TrimSpace(rest) != "" {
				continue
			}
			skipping = false
		}
		if m := ourFieldRe.FindStringSubmatch(l); m != nil {
			skipping, prefix = true, m[1]
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// replyText is the agent's own words: the first text part (or the HTML rendered as text),
// unflowed, without the quoted message a mail client appends below a reply.
func replyText(p *tickets.Parsed, in inspection) string {
	text, fromHTML := p.Text, false
	if strings.TrimSpace(text) == "" && p.HTML != "" {
		text, fromHTML = tickets.HTMLToText(p.HTML), true
	}
	text = strings.ReplaceAll(text, "\r\n", "\n")
	if in.flowed {
		text = unflow(text, in.delSp)
	}
	return stripQuoted(stripOurFields(text), fromHTML)
}

// unflow joins the soft line breaks of format=flowed text (RFC 3676 4.1, 4.2, 4.4). Quoted lines
// are left as they are: they are about to be cut.
func unflow(text string, delSp bool) string {
	var out []string
	var cur strings.Builder
	open := false
	flush := func() {
		if open {
			out = append(out, cur.String())
			cur.Reset()
			open = false
		}
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, ">") {
			flush()
			out = append(out, l)
			continue
		}
		l = strings.TrimPrefix(l, " ") // space-stuffing
		if l == "-- " {                // the signature separator is never flowed
			flush()
			out = append(out, l)
			continue
		}
		if strings.HasSuffix(l, " ") {
			if delSp {
				l = l[:len(l)-1]
			}
			cur.WriteString(l)
			open = true
			continue
		}
		cur.WriteString(l)
		open = true
		flush()
	}
	flush()
	return strings.Join(out, "\n")
}

var (
	attributionRe = regexp.MustCompile(`(?i)^(on|am|le|el|il|op|em|den)\b.*\b(wrote|schrieb|a écrit|escribió|ha scritto|schreef|escreveu|skrev).*:\s*$`)
	outlookRe     = regexp.MustCompile(`(?i)^-{2,}\s*(original message|ursprüngliche nachricht|message d'origine)\s*-{2,}$`)
)

// stripQuoted removes the quoted message below a reply: a trailing block of "> " lines with the
// attribution line above it ("On … wrote:", also wrapped over two lines), or everything from
// Outlook's "-----Original Message-----". For text rendered from HTML, whose quote marks are
// gone, it cuts at the last attribution line. Quotes inside the reply stay.
func stripQuoted(text string, fromHTML bool) string {
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if outlookRe.MatchString(strings.TrimSpace(l)) {
			lines = lines[:i]
			break
		}
	}
	end := len(lines)
	quoted := false
	for end > 0 {
		t := strings.TrimSpace(lines[end-1])
		if t != "" && !strings.HasPrefix(t, ">") {
			break
		}
		quoted = quoted || t != ""
		end--
	}
	if quoted {
		lines = lines[:end]
		lines = dropAttribution(lines)
	} else if fromHTML {
		for i := len(lines) - 1; i >= 0; i-- {
			if attributionRe.MatchString(strings.TrimSpace(lines[i])) {
				lines = dropAttribution(lines[:i+1])
				break
			}
		}
	}
	return strings.TrimRight(strings.Join(lines, "\n"), " \t\n") + "\n"
}

// dropAttribution removes a trailing attribution line (or one wrapped over two lines).
func dropAttribution(lines []string) []string {
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	n := len(lines)
	if n == 0 {
		return lines
	}
	if attributionRe.MatchString(strings.TrimSpace(lines[n-1])) {
		return lines[:n-1]
	}
	if n >= 2 && attributionRe.MatchString(strings.TrimSpace(lines[n-2])+" "+strings.TrimSpace(lines[n-1])) {
		return lines[:n-2]
	}
	return lines
}
