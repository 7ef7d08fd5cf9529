package outbound

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"mailgate/pgp"
	"mailgate/tickets"
)

// ErrAutoAckLimited is returned by Compose for an automatic acknowledgement to an address that
// already got its share this hour; nothing is sent and nothing is wrong.
var ErrAutoAckLimited = errors.New("automatic acknowledgement not sent: this address already got one within the hour")

// ErrHeader wraps every refusal to build a header from bad data (an address or Message-ID
// with control characters, spaces or angle brackets): such data never reaches the wire.
var ErrHeader = errors.New("unsafe header value")

const (
	dateLayout    = "Mon, 02 Jan 2006 15:04:05 -0700"
	maxNameRunes  = 200
	maxSubjRunes  = 900
	maxMsgIDBytes = 250 // keeps every References entry on one line of at most 998 bytes
	maxRefs       = 20
)

// header is an ordered list of fields; go-message's Header inserts at the top, so it is
// filled from this list in reverse.
type header [][2]string

func (h *header) add(k, v string) { *h = append(*h, [2]string{k, v}) }

func (h header) textproto() textproto.Header {
	var th textproto.Header
	for i := len(h) - 1; i >= 0; i-- {
		th.Add(h[i][0], h[i][1])
	}
	return th
}

// Compose builds the message for o exactly as it will be sent: headers from checked data,
// a UTF-8 quoted-printable text body (or an RFC 3156 PGP/MIME body, by policy), CRLF line
// ends, DKIM signatures on top. encrypted tells whether it went out encrypted.
func (o *Outbound) Compose(og tickets.Outgoing) (raw []byte, encrypted bool, err error) {
	from, err := checkAddr(og.Queue.Address)
	if err != nil {
		return nil, false, fmt.Errorf("from address: %w", err)
	}
	to, err := checkAddr(og.To)
	if err != nil {
		return nil, false, fmt.Errorf("to address: %w", err)
	}
	var cc []string
	seen := map[string]bool{strings.ToLower(to): true, strings.ToLower(from): true}
	for _, a := range og.Cc {
		a, err := checkAddr(a)
		if err != nil {
			return nil, false, fmt.Errorf("cc address: %w", err)
		}
		if k := strings.ToLower(a); !seen[k] {
			seen[k] = true
			cc = append(cc, a)
		}
	}
	msgID := strings.Trim(strings.TrimSpace(og.MessageID), "<>")
	if !msgIDOK(msgID) {
		return nil, false, fmt.Errorf("message-id %q: %w", og.MessageID, ErrHeader)
	}
	date := og.Date
	if date.IsZero() {
		date = o.now()
	}
	subject := cleanText(og.Subject, maxSubjRunes)

	key, err := o.encryptionKey(og, to, cc)
	if err != nil {
		return nil, false, err
	}

	fromValue := (&mail.Address{Name: cleanText(og.Queue.Name, maxNameRunes), Address: from}).String()
	h := header{}
	h.add("Date", date.Format(dateLayout))
	h.add("From", fromValue)
	h.add("To", to)
	if len(cc) > 0 {
		h.add("Cc", strings.Join(cc, ", "))
	}
	outerSubject := subject
	if key != nil {
		outerSubject = pgp.OuterSubject
	}
	h.add("Subject", mime.QEncoding.Encode("utf-8", outerSubject))
	h.add("Message-ID", "<"+msgID+">")
	if id := strings.Trim(strings.TrimSpace(og.InReplyTo), "<>"); msgIDOK(id) {
		h.add("In-Reply-To", "<"+id+">")
	}
	if refs := refList(og.References); refs != "" {
		h.add("References", refs)
	}
	if og.AutoReply {
		// RFC 3834 5: mark it, and ask Exchange-style responders not to answer it.
		h.add("Auto-Submitted", "auto-replied")
		h.add("X-Auto-Response-Suppress", "All")
	} else if og.Forward {
		h.add("X-Auto-Response-Suppress", "All")
	}
	h.add("MIME-Version", "1.0")

	text := bodyText(og.Text)
	var msg bytes.Buffer
	msg.Grow(len(text)*11/10 + 1024)
	if key != nil {
		inner := pgp.ProtectedInner(subject, fromValue, to, date.Format(dateLayout), msgID, []byte(text))
		if len(og.Attachments) > 0 {
			if inner, err = protectedMixed(subject, fromValue, to, date.Format(dateLayout), msgID, text, og.Attachments); err != nil {
				return nil, false, err
			}
		}
		body, ct, err := pgp.EncryptTo(inner, key, o.gateway)
		if err != nil {
			return nil, false, fmt.Errorf("encrypt reply to %s: %w", to, err)
		}
		h.add("Content-Type", ct)
		if err := textproto.WriteHeader(&msg, h.textproto()); err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrHeader, err)
		}
		msg.Write(body)
	} else if len(og.Attachments) > 0 {
		mh := message.Header{Header: h.textproto()}
		mh.SetContentType("multipart/mixed", nil)
		headerLen, err := writeMixed(&msg, mh, text, og.Attachments)
		if err != nil {
			return nil, false, err
		}
		if !bytes.HasSuffix(msg.Bytes(), []byte("\r\n")) {
			msg.WriteString("\r\n")
		}
		// The text part is quoted-printable and the attachments base64, so armoring the
		// whole body touches only the text part's lines.
		body := armorQP(msg.Bytes()[headerLen:])
		msg.Truncate(headerLen)
		msg.Write(body)
	} else {
		h.add("Content-Type", "text/plain; charset=utf-8")
		h.add("Content-Transfer-Encoding", "quoted-printable")
		// message.CreateWriter writes the header through go-message's textproto (which refuses
		// CR/LF in values and folds long lines) and quoted-printable-encodes the body with CRLF.
		w, err := message.CreateWriter(&msg, message.Header{Header: h.textproto()})
		if err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrHeader, err)
		}
		headerLen := msg.Len()
		if _, err := w.Write([]byte(text)); err != nil {
			return nil, false, fmt.Errorf("compose: %w", err)
		}
		if err := w.Close(); err != nil {
			return nil, false, fmt.Errorf("compose: %w", err)
		}
		if !bytes.HasSuffix(msg.Bytes(), []byte("\r\n")) {
			msg.WriteString("\r\n")
		}
		body := armorQP(msg.Bytes()[headerLen:])
		msg.Truncate(headerLen)
		msg.Write(body)
	}
	if n := bareLF(msg.Bytes()); n >= 0 {
		return nil, false, fmt.Errorf("compose: bare LF at byte %d; refusing to sign what would not be sent as is", n)
	}
	raw, err = sign(msg.Bytes(), o.keys)
	if err != nil {
		return nil, false, fmt.Errorf("compose: %w", err)
	}
	// The rate limit is taken last, and only for a message that is ready: Compose runs once
	// per acknowledgement actually about to be queued, while the AutoAck hook may run for
	// mail that never gets one. Repeated calls for the same ticket reuse its slot.
	if og.AutoReply && !o.limiter.take(to, og.Ticket.ID, o.now()) {
		return nil, false, ErrAutoAckLimited
	}
	return raw, key != nil, nil
}

// encryptionKey applies the [pgp] encrypt policy: the customer's key when the reply must or
// may be encrypted, nil for plain text, or an error that tells the agent why nothing was sent.
func (o *Outbound) encryptionKey(og tickets.Outgoing, to string, cc []string) ([]*openpgp.Entity, error) {
	if o.policy == EncryptNever || o.keyring == nil || o.gateway == nil {
		return nil, nil
	}
	key, _, err := o.keyring.Lookup(to)
	must := o.policy == EncryptRequired
	switch {
	case err != nil && must:
		return nil, fmt.Errorf("no valid OpenPGP key for %s; encrypt = required: import one with `mailgate pgp import` (%v)", to, err)
	case errors.Is(err, pgp.ErrNoKey):
		// when-key-known: no key, plain text, even if the customer once wrote encrypted
		// (the gateway key they used is ours, not theirs).
		return nil, nil
	case err != nil && og.Encrypt:
		// The customer writes encrypted and has a key that stopped working: sending their
		// conversation in clear text would be worse than not sending.
		return nil, fmt.Errorf("the customer writes encrypted but their OpenPGP key cannot be used (%v); import a current key with `mailgate pgp import`", err)
	case err != nil:
		return nil, nil
	}
	keys := []*openpgp.Entity{key}
	var missing []string
	for _, addr := range cc {
		k, _, err := o.keyring.Lookup(addr)
		if err != nil {
			missing = append(missing, addr)
			continue
		}
		keys = append(keys, k)
	}
	if len(missing) > 0 {
		// Every recipient must be able to read it; one reader without a key means clear text
		// for everyone, which policy may forbid.
		if must || og.Encrypt {
			return nil, fmt.Errorf("this reply must be encrypted, but there is no valid OpenPGP key for the Cc recipient(s) %s: import one with `mailgate pgp import`", strings.Join(missing, ", "))
		}
		return nil, nil
	}
	return keys, nil
}

// checkAddr accepts a plain ASCII addr-spec (no display name, no spaces, no control
// characters) and returns it lowercased in the domain. Anything else is refused: an address
// goes into To/Cc and into RCPT TO, where a CR or LF would start a new header or command.
func checkAddr(a string) (string, error) {
	if a == "" || len(a) > 254 {
		return "", fmt.Errorf("%w: address %q is empty or too long", ErrHeader, a)
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`<>(),;:\"`, c) >= 0 {
			return "", fmt.Errorf("%w: address %q contains %q", ErrHeader, a, c)
		}
	}
	p, err := mail.ParseAddress("<" + a + ">")
	if err != nil || p.Name != "" || !strings.EqualFold(p.Address, a) {
		return "", fmt.Errorf("%w: %q is not an email address", ErrHeader, a)
	}
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 {
		return "", fmt.Errorf("%w: %q is not an email address", ErrHeader, a)
	}
	return a[:at] + "@" + strings.ToLower(a[at+1:]), nil
}

// msgIDOK accepts an id-left@id-right without brackets made of printable ASCII, none of the
// characters that would end or confuse a msg-id, and short enough for one header line.
func msgIDOK(id string) bool {
	if id == "" || len(id) > maxMsgIDBytes || strings.Count(id, "@") < 1 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c <= ' ' || c >= 0x7f || c == '<' || c == '>' || c == '(' || c == ')' || c == '"' || c == ',' || c == ';' || c == '\\' {
			return false
		}
	}
	return true
}

// refList renders References: the ids that are safe, the root and the nearest ancestors
// when there are too many (RFC 5322 3.6.4).
func refList(ids []string) string {
	var ok []string
	for _, id := range ids {
		if id = strings.Trim(strings.TrimSpace(id), "<>"); msgIDOK(id) {
			ok = append(ok, id)
		}
	}
	if len(ok) > maxRefs {
		ok = append(ok[:1], ok[len(ok)-maxRefs+1:]...)
	}
	if len(ok) == 0 {
		return ""
	}
	return "<" + strings.Join(ok, "> <") + ">"
}

// cleanText makes one header line out of a subject or display name from the data: control
// characters (CR, LF, NUL, ESC…) are removed, tabs and line breaks become spaces, runs of
// spaces collapse, invalid UTF-8 is replaced. Stripping rather than refusing: a customer's odd
// subject must not stop an agent's reply, and nothing of it can start a header.
func cleanText(s string, maxRunes int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	b.Grow(len(s))
	space := false
	n := 0
	for _, r := range s {
		if r == '\t' || r == '\r' || r == '\n' || unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || r == '\uFEFF' {
			continue
		}
		if n >= maxRunes {
			break
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// bodyText makes the reply text valid UTF-8 ending in a line break; quoted-printable turns
// its line breaks into CRLF.
func bodyText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s
}

// armorQP rewrites quoted-printable lines that start with "From " or "." as "=46rom " and
// "=2E": the same text, but safe from mbox ">From " munging and from transports that mangle
// leading dots, either of which would break the DKIM body hash. Lines stay within 76
// characters (RFC 2045 6.7) by a soft line break placed outside any =XX escape.
func armorQP(body []byte) []byte {
	var out bytes.Buffer
	out.Grow(len(body) + 64)
	for _, l := range bytes.SplitAfter(body, []byte("\r\n")) {
		switch {
		case bytes.HasPrefix(l, []byte("From ")):
			l = append([]byte("=46"), l[1:]...)
		case bytes.HasPrefix(l, []byte(".")):
			l = append([]byte("=2E"), l[1:]...)
		default:
			out.Write(l)
			continue
		}
		content := bytes.TrimSuffix(l, []byte("\r\n"))
		if len(content) <= 76 {
			out.Write(l)
			continue
		}
		p := 75
		for p > 3 && (content[p-1] == '=' || content[p-2] == '=' || content[p] == '.' || bytes.HasPrefix(content[p:], []byte("From "))) {
			p--
		}
		out.Write(content[:p])
		out.WriteString("=\r\n")
		out.Write(l[p:])
	}
	return out.Bytes()
}

// bareLF returns the offset of the first LF not preceded by CR, or -1.
func bareLF(b []byte) int {
	for i := bytes.IndexByte(b, '\n'); i >= 0; {
		if i == 0 || b[i-1] != '\r' {
			return i
		}
		j := bytes.IndexByte(b[i+1:], '\n')
		if j < 0 {
			return -1
		}
		i += 1 + j
	}
	return -1
}

// writeMixed writes a multipart/mixed entity with header h: the text as a quoted-printable
// first part, then each attachment base64-encoded. It returns the length of the top header.
func writeMixed(buf *bytes.Buffer, h message.Header, text string, atts []tickets.ParsedAttachment) (int, error) {
	start := buf.Len()
	w, err := message.CreateWriter(buf, h)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrHeader, err)
	}
	headerLen := buf.Len() - start
	var th message.Header
	th.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
	th.Set("Content-Transfer-Encoding", "quoted-printable")
	pw, err := w.CreatePart(th)
	if err != nil {
		return 0, fmt.Errorf("compose: %w", err)
	}
	if _, err := pw.Write([]byte(text)); err != nil {
		return 0, fmt.Errorf("compose: %w", err)
	}
	if err := pw.Close(); err != nil {
		return 0, fmt.Errorf("compose: %w", err)
	}
	for _, a := range atts {
		name := tickets.SafeFilename(a.Name, a.ContentType)
		ct := strings.ToLower(a.ContentType)
		if t, _, err := mime.ParseMediaType(ct); err != nil || t != ct || !strings.Contains(ct, "/") {
			ct = "application/octet-stream"
		}
		var ah message.Header
		ah.SetContentType(ct, map[string]string{"name": name})
		ah.SetContentDisposition("attachment", map[string]string{"filename": name})
		ah.Set("Content-Transfer-Encoding", "base64")
		aw, err := w.CreatePart(ah)
		if err != nil {
			return 0, fmt.Errorf("compose: attachment %q: %w", name, err)
		}
		if _, err := aw.Write(a.Data); err != nil {
			return 0, fmt.Errorf("compose: attachment %q: %w", name, err)
		}
		if err := aw.Close(); err != nil {
			return 0, fmt.Errorf("compose: attachment %q: %w", name, err)
		}
	}
	if err := w.Close(); err != nil {
		return 0, fmt.Errorf("compose: %w", err)
	}
	return headerLen, nil
}

// protectedMixed is pgp.ProtectedInner for a reply with attachments: a multipart/mixed entity
// carrying the protected headers (RFC 9788 style, protected-headers="v1"), the text and the
// attachments, all of which go inside the encryption.
func protectedMixed(subject, from, to, date, msgID, text string, atts []tickets.ParsedAttachment) ([]byte, error) {
	var h message.Header
	h.SetContentType("multipart/mixed", map[string]string{"protected-headers": "v1"})
	h.Set("From", from)
	h.Set("To", to)
	h.Set("Subject", mime.QEncoding.Encode("utf-8", subject))
	h.Set("Date", date)
	h.Set("Message-ID", "<"+msgID+">")
	var b bytes.Buffer
	if _, err := writeMixed(&b, h, text, atts); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
