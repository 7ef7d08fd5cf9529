package agentmail

import (
	"bytes"
	"crypto/rand"
	"io"
	"mime"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-message"

	"mailgate/access"
)

// Issue 12.3: attachments in replies from mail clients are sent, stored and encrypted.

// smtplibAttach builds the reply with Python's email package and sends it with smtplib, as a
// mail client would: AUTH PLAIN on loopback, the file as an application/pdf attachment.
const smtplibAttach = `
import smtplib, sys
from email.message import EmailMessage
host, port, user, pw, to, ref, path = sys.argv[1:8]
m = EmailMessage()
m['From'] = 'Alice <alice@example.com>'
m['To'] = to
m['Subject'] = 'Re: Order late'
m['In-Reply-To'] = '<%s>' % ref
m['References'] = '<%s>' % ref
m['Message-ID'] = '<att-%s@example.com>' % port
m.set_content('The shipping label is attached.\n\nAlice\n')
m.add_attachment(open(path, 'rb').read(), maintype='application', subtype='pdf', filename='label.pdf')
s = smtplib.SMTP(host, int(port))
s.ehlo('client.example.com')
s.login(user, pw)
s.send_message(m)
s.quit()
`

// labelFile is binary content with the lines transports like to mangle ("From ", ".").
func labelFile(t *testing.T) (string, []byte) {
	t.Helper()
	data := []byte("%PDF-1.4\n")
	rnd := make([]byte, 6000)
	rand.Read(rnd)
	data = append(data, rnd...)
	data = append(data, "\nFrom the warehouse\n.\n\x00end"...)
	f := filepath.Join(t.TempDir(), "label.pdf")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return f, data
}

func (e *env) smtplibSendAttachment(t *testing.T, file string) {
	t.Helper()
	host, port, _ := strings.Cut(e.subAddr, ":")
	cmd := exec.Command(tool(t, python), "-c", smtplibAttach, host, port, "alice", e.users["alice"], customer, "o1@example.net", file)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
}

// attachmentOf walks a MIME entity and returns the text/plain part and the data of the part
// whose filename is name.
func attachmentOf(t *testing.T, raw []byte, name string) (text string, data []byte) {
	t.Helper()
	ent, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("read MIME: %v\n%s", err, raw)
	}
	found := false
	err = ent.Walk(func(_ []int, part *message.Entity, err error) error {
		if err != nil {
			return err
		}
		mt, _, _ := part.Header.ContentType()
		_, dp, _ := part.Header.ContentDisposition()
		switch {
		case dp["filename"] == name:
			found = true
			data, err = io.ReadAll(part.Body)
		case mt == "text/plain" && text == "":
			var b []byte
			b, err = io.ReadAll(part.Body)
			text = string(b)
		}
		return err
	})
	if err != nil {
		t.Fatalf("walk MIME: %v", err)
	}
	if !found {
		t.Fatalf("no part named %s in\n%s", name, raw)
	}
	return text, data
}

// TestSubmissionAttachmentPlain: a reply with a PDF attached, sent by smtplib, reaches the
// customer with the file byte for byte, DKIM-valid by python3-dkim, and the file is stored
// (sealed) on the ticket.
func TestSubmissionAttachmentPlain(t *testing.T) {
	e := newEnv(t)
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	file, want := labelFile(t)
	e.smtplibSendAttachment(t, file)
	raw := e.delivered(id, 2)
	if n := bareLFIndex(raw); n >= 0 {
		t.Fatalf("bare LF at %d", n)
	}
	text, got := attachmentOf(t, raw, "label.pdf")
	if !bytes.Equal(got, want) {
		t.Fatalf("the customer's attachment differs: %d bytes, want %d", len(got), len(want))
	}
	if !strings.Contains(text, "The shipping label is attached.") {
		t.Fatalf("text part %q", text)
	}
	if res := dkimVerify(t, raw, e.dkimRecords()); len(res) == 0 || slices.Contains(res, false) {
		t.Fatalf("python3-dkim: %v\n%s", res, raw)
	}
	msgs := e.thread(id)
	if len(msgs) != 2 || len(msgs[1].Attachments) != 1 || msgs[1].Attachments[0].Name != "label.pdf" || msgs[1].Attachments[0].Size != len(want) {
		t.Fatalf("thread %+v", msgs)
	}
	att, stored, err := e.tk.Attachment(access.Ctl, id, 2, 0)
	if err != nil || !bytes.Equal(stored, want) || att.ContentType != "application/pdf" {
		t.Fatalf("stored attachment %+v (%d bytes): %v", att, len(stored), err)
	}
}

func bareLFIndex(b []byte) int {
	for i := range b {
		if b[i] == '\n' && (i == 0 || b[i-1] != '\r') {
			return i
		}
	}
	return -1
}

// gpgRun runs GnuPG with home as its home directory.
func gpgRun(t *testing.T, home string, stdin []byte, args ...string) (stdout, status string) {
	t.Helper()
	var out, st bytes.Buffer
	cmd := exec.Command("gpg", append([]string{"--homedir", home, "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", "--status-fd", "2"}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &st
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpg %v: %v\n%s", args, err, st.String())
	}
	return out.String(), st.String()
}

// TestSubmissionAttachmentEncryptedGnuPG: the customer has a key (made by GnuPG); a reply with
// an attachment goes out PGP/MIME-encrypted with the attachment inside; gpg decrypts it and
// the file is there byte for byte; python3-dkim verifies the outer message.
func TestSubmissionAttachmentEncryptedGnuPG(t *testing.T) {
	tool(t, "gpg")
	home, err := os.MkdirTemp("", "mg-gpg") // short: gpg-agent's socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(home, 0o700)
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	gpgRun(t, home, nil, "--quick-gen-key", "Customer <"+customer+">", "future-default", "default", "never")
	pub, _ := gpgRun(t, home, nil, "--armor", "--export", customer)

	e, sink := newRelayEnv(t, withPGP("when-key-known"))
	if _, err := e.keyring.Import(customer, []byte(pub), "test"); err != nil {
		t.Fatalf("import the key gpg made: %v", err)
	}
	gpgRun(t, home, e.gateway.ArmoredPublic(), "--import")
	id := e.ingest("support", customer, "Order late", "o1@example.net", "Hello, my order is late.\r\n")
	file, want := labelFile(t)
	e.smtplibSendAttachment(t, file)
	e.waitSent(t, id, 2)

	got := sink.stored(t)
	if len(got) != 1 {
		t.Fatalf("smtp-sink stored %d messages", len(got))
	}
	raw := got[0].data
	ent, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if mt, _, _ := ent.Header.ContentType(); mt != "multipart/encrypted" {
		t.Fatalf("outer Content-Type %q", mt)
	}
	if contains(raw, "label.pdf") || contains(raw, "shipping label") {
		t.Fatalf("the file name or text is outside the encryption:\n%s", raw)
	}
	if res := dkimVerify(t, raw, e.dkimRecords()); len(res) == 0 || slices.Contains(res, false) {
		t.Fatalf("python3-dkim: %v", res)
	}
	i, j := bytes.Index(raw, []byte("-----BEGIN PGP MESSAGE-----")), bytes.Index(raw, []byte("-----END PGP MESSAGE-----"))
	if i < 0 || j < i {
		t.Fatalf("no PGP MESSAGE in\n%s", raw)
	}
	f := filepath.Join(t.TempDir(), "msg.asc")
	os.WriteFile(f, raw[i:j+len("-----END PGP MESSAGE-----\r\n")], 0o600)
	inner, status := gpgRun(t, home, nil, "--decrypt", f)
	if !strings.Contains(status, "[GNUPG:] DECRYPTION_OKAY") || !strings.Contains(status, "[GNUPG:] GOODSIG") {
		t.Fatalf("gpg status:\n%s", status)
	}
	ih, err := message.Read(strings.NewReader(inner))
	if err != nil {
		t.Fatal(err)
	}
	if mt, params, _ := ih.Header.ContentType(); mt != "multipart/mixed" || params["protected-headers"] != "v1" {
		t.Errorf("inner Content-Type %q %v", mt, params)
	}
	if subj, _ := new(mime.WordDecoder).DecodeHeader(ih.Header.Get("Subject")); subj != "Re: Order late [#1]" {
		t.Errorf("protected Subject %q", subj)
	}
	text, data := attachmentOf(t, []byte(inner), "label.pdf")
	if !bytes.Equal(data, want) {
		t.Fatalf("decrypted attachment: %d bytes, want %d equal bytes", len(data), len(want))
	}
	if !strings.Contains(text, "The shipping label is attached.") {
		t.Fatalf("decrypted text %q", text)
	}
	msgs := e.thread(id)
	if len(msgs) != 2 || !msgs[1].Encrypted || len(msgs[1].Attachments) != 1 {
		t.Fatalf("thread %+v", msgs)
	}
}
