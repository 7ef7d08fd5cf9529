package outbound

import (
	"errors"
	"strings"
	"testing"

	"mailgate/config"
)

// FuzzComposeHeaders: whatever a subject, a display name, an address or a Message-ID holds,
// Compose either refuses it with ErrHeader or writes a message whose header holds only the
// fields it means to write, one From, one To, one Subject, with CRLF lines.
func FuzzComposeHeaders(f *testing.F) {
	f.Add("Re: hello [#1]", "Support", customer, "c1@example.net", "r0@example.net")
	f.Add("Hi\r\nBcc: x@y", "Sup\nport", customer, "a@b\r\nX: y", "x\n")
	f.Add("Grüße\x00\x1b", "Süpport \"team\"", "a@b.example", "<a@b>", "<c@d> <e@f>")
	f.Add(strings.Repeat("x", 2000), strings.Repeat("é", 300), "x@y", "", "")
	e := newEnv(f, func(c *config.Config) { c.Outbound.DKIMKeyFile, c.Outbound.DKIMEd25519KeyFile = "", "" })
	allowed := map[string]bool{"Date": true, "From": true, "To": true, "Cc": true, "Subject": true, "Message-Id": true,
		"In-Reply-To": true, "References": true, "Mime-Version": true, "Content-Type": true, "Content-Transfer-Encoding": true}
	f.Fuzz(func(t *testing.T, subject, name, to, irt, ref string) {
		og := outgoing()
		og.Subject, og.Queue.Name, og.To, og.InReplyTo, og.References = subject, name, to, irt, []string{ref}
		og.Cc = nil
		raw, _, err := e.ob.Compose(og)
		if err != nil {
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		checkWire(t, raw)
		_, _, keys := parse(t, raw)
		count := map[string]int{}
		for _, k := range keys {
			if !allowed[k] {
				t.Fatalf("header field %q from subject %q name %q to %q", k, subject, name, to)
			}
			count[k]++
		}
		if count["From"] != 1 || count["To"] != 1 || count["Subject"] != 1 {
			t.Fatalf("fields %v", count)
		}
	})
}
