package outbound

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"

	"mailgate/tickets"
)

// TestComposeAttachments: a reply with attachments is multipart/mixed, 7-bit on the wire,
// the text armored as in a single-part reply, each file back byte for byte under its
// (non-ASCII) name; an unusable content type from the client becomes octet-stream.
func TestComposeAttachments(t *testing.T) {
	e := newEnv(t, nil)
	og := outgoing()
	og.Text = "See the files.\nFrom the team\n.\n"
	pdf := append([]byte("%PDF-1.4\nFrom x\n.\n"), bytes.Repeat([]byte{0, 0xff, '\n', '\r'}, 500)...)
	og.Attachments = []tickets.ParsedAttachment{
		{Name: "Rechnung März.pdf", ContentType: "application/pdf", Data: pdf},
		{Name: "note.txt", ContentType: "text/plain\r\nX-Evil: 1", Data: []byte("plain\n")},
	}
	raw, _, err := e.ob.Compose(og)
	if err != nil {
		t.Fatal(err)
	}
	checkWire(t, raw)
	if bytes.Contains(raw, []byte("X-Evil")) {
		t.Fatalf("a content type from the client became a header:\n%s", raw)
	}
	enc := raw[bytes.Index(raw, []byte("\r\n\r\n"))+4:]
	for _, l := range bytes.Split(enc, []byte("\r\n")) {
		if bytes.HasPrefix(l, []byte("From ")) || bytes.HasPrefix(l, []byte(".")) {
			t.Errorf("encoded line %q", l)
		}
	}
	mr, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if mt, _, _ := mr.Header.ContentType(); mt != "multipart/mixed" {
		t.Fatalf("Content-Type %q", mt)
	}
	var text string
	var names, types []string
	var datas [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		switch h := p.Header.(type) {
		case *mail.InlineHeader:
			text = string(b)
		case *mail.AttachmentHeader:
			name, _ := h.Filename()
			ct, _, _ := h.ContentType()
			names, types, datas = append(names, name), append(types, ct), append(datas, b)
		}
	}
	if text != strings.ReplaceAll(og.Text, "\n", "\r\n") {
		t.Errorf("text %q", text)
	}
	if strings.Join(names, "|") != "Rechnung März.pdf|note.txt" || strings.Join(types, "|") != "application/pdf|application/octet-stream" {
		t.Fatalf("attachments %q %q", names, types)
	}
	if !bytes.Equal(datas[0], pdf) || string(datas[1]) != "plain\n" {
		t.Fatal("attachment bytes changed")
	}
	verifyGo(t, raw, e.dnsRecords(), 2)
}
