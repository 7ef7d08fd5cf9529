package inbound

import (
	"bytes"
	"io"
	"sync"
)

// strictReader passes the DATA stream through (go-smtp has already removed the dot-stuffing
// and stopped at CRLF.CRLF) and notes whether it holds a bare CR or a bare LF: a CR not
// followed by LF, or an LF not preceded by CR.
//
// Such a message is refused (550 5.6.0), not normalised. RFC 5321 2.3.8 says clients MUST NOT
// send CR or LF except together as CRLF, and 4.1.1.4 ends DATA only at CRLF.CRLF; a message
// with "\n.\n" or "\r.\r" in it is the SMTP smuggling attack (a relay that ends DATA at a bare
// LF sees two messages where the next hop sees one). go-smtp already ends DATA only at
// CRLF.CRLF, so nothing can be smuggled past it, but storing such bytes would hand the second
// "message" to whatever reads them later (an IMAP client, a forward), and rewriting them would
// change what a DKIM signature covers. Legitimate MTAs (Postfix, Exim, Exchange, Gmail) send
// CRLF only, so refusing costs only broken scripts, which get a clear permanent error. This is
// chasquid's choice too; Postfix normalises instead.
//
// It also notes NUL bytes. Mail text may not hold NUL (RFC 5322 3.5 "text" excludes it, RFC
// 2045 2.7 and 2.8 forbid it in 7bit and 8bit data; only BINARYMIME allows it, and mailgate
// does not offer BINARYMIME). Exchange refuses it, and Postfix's documented setting is
// message_reject_characters = \0. Binary content travels base64-encoded, so a NUL in the
// stream is a broken or hostile client; C code downstream (an IMAP client, a filter) would cut
// the message at it and see something other than what was verified.
//
// go-smtp (the copy in third_party, see PATCHED.md) hands the CR of a CRLF "." CR "X" line on
// instead of dropping it, so that form is caught here too; BDAT chunks pass through the same
// reader.
type strictReader struct {
	r      io.Reader
	prevCR bool
	bare   bool
	nul    bool
}

func (s *strictReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 && !s.bare {
		s.scan(p[:n])
	}
	if n > 0 && !s.nul && bytes.IndexByte(p[:n], 0) >= 0 {
		s.nul = true
	}
	if err == io.EOF && s.prevCR {
		s.bare = true // cannot happen after CRLF.CRLF, but a BDAT body may end anywhere
	}
	return n, err
}

// scan checks b, carrying whether the previous chunk ended in CR.
func (s *strictReader) scan(b []byte) {
	prevCR := s.prevCR
	for len(b) > 0 {
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			if prevCR {
				s.bare = true
			}
			prevCR = false
			break
		}
		if prevCR && (i > 0 || b[0] != '\n') {
			s.bare = true // CR followed by something other than LF
			return
		}
		if b[i] == '\n' {
			if i > 0 || !prevCR {
				s.bare = true // LF without CR before it
				return
			}
			prevCR = false
		} else {
			prevCR = true
		}
		b = b[i+1:]
	}
	s.prevCR = prevCR
}

// buffers recycles message buffers between transactions. Buffers that grew past maxPooled
// are dropped so one large message does not pin its memory for good.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooled = 1 << 20

func getBuffer() *bytes.Buffer {
	b := buffers.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

func putBuffer(b *bytes.Buffer) {
	if b.Cap() <= maxPooled {
		buffers.Put(b)
	}
}
