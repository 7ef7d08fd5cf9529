package inbound

import (
	"bytes"
	"strings"

	"github.com/emersion/go-msgauth/authres"
)

// Reading and writing Authentication-Results (RFC 8601) and the header section it lives in.

// field is one header field of a raw message.
type field struct {
	name       string // as written, without trailing white space
	value      []byte // after the colon, folding kept
	start, end int    // byte range in the message, line ends included
	valueStart int
}

// headerFields splits the header section of raw. bodyStart is the offset of the body (after
// the empty line); complete is false when the message has no empty line, i.e. it is all
// header. A line without a colon (an mbox "From " line, junk) becomes a field with an empty
// name. Both CRLF and bare LF line ends are understood.
func headerFields(raw []byte) (fields []field, bodyStart int, complete bool) {
	pos := 0
	for pos < len(raw) {
		end := lineEnd(raw, pos)
		line := raw[pos:end]
		if isBlankLine(line) {
			return fields, end, true
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			f := &fields[len(fields)-1]
			f.end = end
			if f.name != "" {
				f.value = raw[f.valueStart:end]
			}
			pos = end
			continue
		}
		f := field{start: pos, end: end}
		if i := bytes.IndexByte(line, ':'); i > 0 {
			f.name = strings.TrimRight(string(line[:i]), " \t")
			f.valueStart = pos + i + 1
			f.value = raw[f.valueStart:end]
		}
		fields = append(fields, f)
		pos = end
	}
	return fields, len(raw), false
}

// lineEnd returns the offset just past the line starting at pos (past its LF, or len(raw)).
func lineEnd(raw []byte, pos int) int {
	if i := bytes.IndexByte(raw[pos:], '\n'); i >= 0 {
		return pos + i + 1
	}
	return len(raw)
}

func isBlankLine(line []byte) bool {
	return len(line) == 0 || string(line) == "\n" || string(line) == "\r\n"
}

// unfold turns a folded field value into one line without its line ends.
func unfold(v []byte) string {
	s := strings.ReplaceAll(string(v), "\r\n", "")
	s = strings.ReplaceAll(s, "\n", "")
	return strings.TrimSpace(s)
}

// authservID returns the authserv-id of an Authentication-Results value: the first token or
// quoted-string, skipping CFWS (white space and nested comments). authres.Parse cannot be
// used here: it splits on ';' without skipping comments, so "(;) ours;" would fool it.
func authservID(value string) string {
	s := skipCFWS(value)
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			switch s[i] {
			case '\\':
				if i+1 < len(s) {
					i++
					b.WriteByte(s[i])
				}
			case '"':
				return b.String()
			default:
				b.WriteByte(s[i])
			}
		}
		return "" // unterminated: no usable id
	}
	end := strings.IndexAny(s, " \t\r\n;(\"")
	if end < 0 {
		end = len(s)
	}
	return s[:end]
}

// skipCFWS drops leading white space and comments (which nest and take quoted-pairs).
func skipCFWS(s string) string {
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if !strings.HasPrefix(s, "(") {
			return s
		}
		depth := 0
		i := 0
		for ; i < len(s); i++ {
			switch s[i] {
			case '\\':
				i++
			case '(':
				depth++
			case ')':
				depth--
			}
			if depth == 0 {
				break
			}
		}
		if i >= len(s) {
			return "" // unterminated comment: nothing usable follows
		}
		s = s[i+1:]
	}
}

// stripComments removes comments outside quoted strings, so that authres.Parse (which splits
// on ';') sees only the results.
func stripComments(s string) string {
	var b strings.Builder
	depth, quoted := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			if depth == 0 {
				b.WriteByte(c)
				b.WriteByte(s[i+1])
			}
			i++
			continue
		case quoted:
			if c == '"' {
				quoted = false
			}
		case c == '"' && depth == 0:
			quoted = true
		case c == '(':
			depth++
			continue
		case c == ')' && depth > 0:
			depth--
			if depth == 0 {
				b.WriteByte(' ')
			}
			continue
		}
		if depth == 0 {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isAuthResults(name string) bool {
	return strings.EqualFold(name, "Authentication-Results")
}

// StripAuthResults returns raw without the Authentication-Results fields whose authserv-id is
// authservID (compared case-insensitively), so that no sender can forge mailgate's own
// verdict (RFC 8601 5). Other fields, other authserv-ids and the body are left byte for byte.
// DKIM must be verified on the message before this. The stored form of a message is
// Prepend(StripAuthResults(raw, id), verdict.AuthResults).
func StripAuthResults(raw []byte, authservID string) []byte {
	fields, _, _ := headerFields(raw)
	var drop [][2]int
	for _, f := range fields {
		if isAuthResults(f.name) && strings.EqualFold(authservIDOf(f), authservID) {
			drop = append(drop, [2]int{f.start, f.end})
		}
	}
	if len(drop) == 0 {
		return raw
	}
	out := make([]byte, 0, len(raw))
	pos := 0
	for _, d := range drop {
		out = append(out, raw[pos:d[0]]...)
		pos = d[1]
	}
	return append(out, raw[pos:]...)
}

func authservIDOf(f field) string {
	return authservID(unfold(f.value))
}

// Prepend returns a new message with header (a complete field, e.g. Verdict.AuthResults)
// in front of raw. A missing line end is added.
func Prepend(raw []byte, header string) []byte {
	if !strings.HasSuffix(header, "\n") {
		header += "\r\n"
	}
	out := make([]byte, 0, len(header)+len(raw))
	out = append(out, header...)
	return append(out, raw...)
}

// upstreamSPF finds the topmost Authentication-Results field written by one of the trusted
// authserv-ids and returns its spf result, the domain it was for (smtp.mailfrom, else
// smtp.helo) and that authserv-id. ok is false when there is none.
func upstreamSPF(fields []field, trusted []string) (res authres.ResultValue, domain, authserv string, ok bool) {
	for _, f := range fields {
		if !isAuthResults(f.name) {
			continue
		}
		v := unfold(f.value)
		id := authservID(v)
		if id == "" || !containsFold(trusted, id) {
			continue
		}
		// Only the topmost trusted field counts: it was added by the last trusted hop, which
		// removed forged ones carrying its id below it.
		_, results, err := authres.Parse(stripComments(v))
		if err != nil {
			return "", "", "", false
		}
		for _, r := range results {
			if s, isSPF := r.(*authres.SPFResult); isSPF {
				d := s.From
				if d == "" {
					d = s.Helo
				}
				if i := strings.LastIndexByte(d, '@'); i >= 0 {
					d = d[i+1:]
				}
				return authres.ResultValue(strings.ToLower(string(s.Value))), d, id, true
			}
		}
		return "", "", "", false
	}
	return "", "", "", false
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// formatAuthResults renders the whole field, folded at the result separators when long.
func formatAuthResults(authservID string, results []authres.Result) string {
	// authres.Format one result at a time: joined whole it leaves a space before each ';'
	// and at the end of a result without parameters.
	parts := []string{clean(authservID)}
	for _, r := range results {
		s := strings.TrimPrefix(authres.Format("", []authres.Result{r}), "; ")
		parts = append(parts, strings.TrimRight(s, " "))
	}
	return "Authentication-Results: " + fold(strings.Join(parts, "; ")) + "\r\n"
}

// fold breaks "a; b; c" after each "; " outside quoted strings once the line is long.
func fold(v string) string {
	if len("Authentication-Results: ")+len(v) <= 78 {
		return v
	}
	var b strings.Builder
	quoted := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\' && quoted && i+1 < len(v):
			b.WriteByte(c)
			i++
			c = v[i]
		case c == '"':
			quoted = !quoted
		case c == ';' && !quoted && i+1 < len(v) && v[i+1] == ' ':
			b.WriteString(";\r\n\t")
			i++
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// clean makes a value that came from the network safe inside a header field: no control
// characters (no CR/LF injection), no quotes or backslashes that could end a quoted string
// early, at most 255 bytes.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
	if len(s) > 255 {
		s = strings.ToValidUTF8(s[:255], "")
	}
	return s
}
