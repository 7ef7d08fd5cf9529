package outbound

import (
	"bufio"
	"bytes"
	"crypto"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
	"github.com/emersion/go-message/textproto"

	"mailgate/config"
	"mailgate/tickets"
)

func pgpEnv(t *testing.T, policy string, mut func(*config.Config)) *env {
	t.Helper()
	return newEnvWith(t, func(c *config.Config) {
		c.PGP.Encrypt = policy
		if mut != nil {
			mut(c)
		}
	}, func(e *env, _ *Options) { e.pgp = true })
}

// customerKey makes a customer's key pair with go-crypto, created at `created`, living
// `lifetime` seconds (0 = forever), and imports its public half for customer.
func (e *env) customerKey(created time.Time, lifetime uint32) *openpgp.Entity {
	e.t.Helper()
	return e.keyFor(customer, created, lifetime)
}

func (e *env) keyFor(addr string, created time.Time, lifetime uint32) *openpgp.Entity {
	e.t.Helper()
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519, DefaultHash: crypto.SHA256,
		Time: func() time.Time { return created }, KeyLifetimeSecs: lifetime}
	ent, err := openpgp.NewEntity("Customer", "", addr, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	var pub bytes.Buffer
	w, _ := armor.Encode(&pub, openpgp.PublicKeyType, nil)
	if err := ent.Serialize(w); err != nil {
		e.t.Fatal(err)
	}
	w.Close()
	e.keyNow.Set(created.Add(time.Minute))
	if _, err := e.keyring.Import(addr, pub.Bytes(), "test"); err != nil {
		e.t.Fatal(err)
	}
	e.keyNow.Set(time.Now())
	return ent
}

// armoredMessage cuts the PGP MESSAGE block out of a PGP/MIME body.
func armoredMessage(t *testing.T, raw []byte) []byte {
	t.Helper()
	i := bytes.Index(raw, []byte("-----BEGIN PGP MESSAGE-----"))
	j := bytes.Index(raw, []byte("-----END PGP MESSAGE-----"))
	if i < 0 || j < i {
		t.Fatalf("no PGP MESSAGE in\n%s", raw)
	}
	return raw[i : j+len("-----END PGP MESSAGE-----\r\n")]
}

// checkOuter asserts the outside of an encrypted reply: threading headers present, the
// neutral subject, PGP/MIME content type, and nothing of the text.
func checkOuter(t *testing.T, raw []byte, text string) {
	t.Helper()
	checkWire(t, raw)
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if s := h.Get("Subject"); s != "..." {
		t.Errorf("outer Subject %q, want ...", s)
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "multipart/encrypted;") || !strings.Contains(ct, `protocol="application/pgp-encrypted"`) {
		t.Errorf("outer Content-Type %q", ct)
	}
	for _, k := range []string{"From", "To", "Date", "Message-Id", "In-Reply-To", "References", "Mime-Version"} {
		if !h.Has(k) {
			t.Errorf("outer header lacks %s", k)
		}
	}
	if h.Has("Content-Transfer-Encoding") {
		t.Error("a multipart carries a Content-Transfer-Encoding")
	}
	if bytes.Contains(raw, []byte("Printer")) || bytes.Contains(raw, []byte(text[:10])) {
		t.Error("the subject or the text shows outside the encryption")
	}
}

func TestPGPPolicy(t *testing.T) {
	const text = "Your invoice number is 12345."
	type want int
	const (
		plain want = iota
		encrypted
		refused
	)
	cases := []struct {
		name    string
		policy  string
		key     string // "", "valid", "expired"
		cc      bool
		ccKey   bool // the Cc'd participant has a key too
		custEnc bool // the customer wrote encrypted
		want    want
		errHas  string
	}{
		{"never with a key", "never", "valid", false, false, true, plain, ""},
		{"when-key-known without a key", "when-key-known", "", false, false, false, plain, ""},
		{"when-key-known without a key, customer encrypted", "when-key-known", "", false, false, true, plain, ""},
		{"when-key-known with a key", "when-key-known", "valid", false, false, false, encrypted, ""},
		{"when-key-known with a key and Cc", "when-key-known", "valid", true, false, false, plain, ""},
		{"when-key-known, customer encrypted, Cc", "when-key-known", "valid", true, false, true, refused, "Cc recipient(s) other@example.org"},
		{"when-key-known with an expired key", "when-key-known", "expired", false, false, false, plain, ""},
		{"when-key-known, customer encrypted, expired key", "when-key-known", "expired", false, false, true, refused, "expired"},
		{"required without a key", "required", "", false, false, false, refused,
			"no valid OpenPGP key for cust@example.net; encrypt = required: import one with `mailgate pgp import`"},
		{"required with an expired key", "required", "expired", false, false, false, refused, "no valid OpenPGP key for cust@example.net"},
		{"required with a key", "required", "valid", false, false, false, encrypted, ""},
		{"required with a key and Cc", "required", "valid", true, false, false, refused, "Cc recipient(s) other@example.org"},
		{"required with keys for the customer and the Cc", "required", "valid", true, true, false, encrypted, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := pgpEnv(t, c.policy, nil)
			var cust *openpgp.Entity
			switch c.key {
			case "valid":
				cust = e.customerKey(time.Now().Add(-time.Hour), 0)
			case "expired":
				cust = e.customerKey(time.Now().Add(-72*time.Hour), 24*3600)
			}
			var ccEnt *openpgp.Entity
			if c.ccKey {
				ccEnt = e.keyFor("other@example.org", time.Now().Add(-time.Hour), 0)
			}
			og := outgoing()
			og.Text, og.Encrypt = text, c.custEnc
			if !c.cc {
				og.Cc = nil
			}
			raw, enc, err := e.ob.Compose(og)
			switch c.want {
			case refused:
				if err == nil || !strings.Contains(err.Error(), c.errHas) {
					t.Fatalf("err = %v, want one saying %q", err, c.errHas)
				}
				return
			case plain:
				if err != nil || enc || !bytes.Contains(raw, []byte("12345")) {
					t.Fatalf("want plain text: err %v, encrypted %v", err, enc)
				}
				return
			}
			if err != nil || !enc {
				t.Fatalf("want encrypted: err %v, encrypted %v", err, enc)
			}
			checkOuter(t, raw, text)
			verifyGo(t, raw, e.dnsRecords(), 2)
			inner := decryptGo(t, raw, cust, e)
			if ccEnt != nil && !bytes.Equal(decryptGo(t, raw, ccEnt, e), inner) {
				t.Error("the Cc'd participant reads something else")
			}
			for _, s := range []string{"Subject: =?utf-8?q?Re:_Drucker_brennt", `protected-headers="v1"`, "Your invoice number is 12345."} {
				if !bytes.Contains(inner, []byte(s)) {
					t.Errorf("inner part lacks %q:\n%s", s, inner)
				}
			}
		})
	}
}

// decryptGo opens an encrypted reply with the customer's private key and checks the
// gateway's signature inside.
func decryptGo(t *testing.T, raw []byte, cust *openpgp.Entity, e *env) []byte {
	t.Helper()
	blk, err := armor.Decode(bytes.NewReader(armoredMessage(t, raw)))
	if err != nil {
		t.Fatal(err)
	}
	md, err := openpgp.ReadMessage(blk.Body, openpgp.EntityList{cust, e.gateway.Entity()}, nil, &packet.Config{})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatal(err)
	}
	if !md.IsEncrypted || !md.IsSigned || md.SignatureError != nil || md.SignedBy == nil {
		t.Errorf("encrypted %v signed %v by %v: %v", md.IsEncrypted, md.IsSigned, md.SignedBy, md.SignatureError)
	}
	return inner
}

// TestPGPRequiredRefusesReply: through tickets.Reply, encrypt = required without a key
// refuses the reply, queues nothing, and the ticket says why.
func TestPGPRequiredRefusesReply(t *testing.T) {
	e := pgpEnv(t, "required", nil)
	e.start()
	id := e.ticket(customer)
	_, err := e.tk.Reply(admin, id, "secret")
	if err == nil || !strings.Contains(err.Error(), "no valid OpenPGP key for cust@example.net; encrypt = required: import one with `mailgate pgp import`") {
		t.Fatalf("err = %v", err)
	}
	if countJobs(t, e.db) != 0 || e.ob.Queued() != 0 {
		t.Error("a refused reply was queued")
	}
	msgs := e.messages(id)
	last := msgs[len(msgs)-1]
	if last.Direction != tickets.Note || !strings.Contains(last.Text, "mailgate pgp import") {
		t.Errorf("the ticket does not say why: %+v", last)
	}
	for _, m := range msgs {
		if m.Direction == tickets.Out {
			t.Error("an outbound message was stored")
		}
	}
}

// gpg runs GnuPG with home as its home directory.
func gpg(t *testing.T, home string, stdin []byte, args ...string) (stdout, status string) {
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

// TestPGPGnuPGReadsReply is the interoperability check: GnuPG makes the customer's key,
// mailgate encrypts and signs a reply to it and delivers it through smtp-sink; python3-dkim
// verifies the outer message; gpg decrypts it and verifies the gateway's signature.
func TestPGPGnuPGReadsReply(t *testing.T) {
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Fatalf("gpg (Debian package gnupg) is required: %v", err)
	}
	home, err := os.MkdirTemp("", "mg-gpg") // short: gpg-agent's socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(home, 0o700)
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	gpg(t, home, nil, "--quick-gen-key", "Customer <"+customer+">", "future-default", "default", "never")
	pub, _ := gpg(t, home, nil, "--armor", "--export", customer)

	s := startSink(t, freeAddr(t))
	e := pgpEnv(t, "when-key-known", func(c *config.Config) { c.Outbound.Relay, c.Outbound.RelayTLS = s.Addr, TLSNone })
	if _, err := e.keyring.Import(customer, []byte(pub), "test"); err != nil {
		t.Fatalf("import the key gpg made: %v", err)
	}
	gpg(t, home, e.gateway.ArmoredPublic(), "--import")
	e.start()
	id := e.ticket(customer)
	const text = "Your new password reset code is 927163."
	m := e.reply(id, text)
	if !m.Encrypted {
		t.Fatal("the reply is not marked encrypted")
	}
	if a := e.wait(); a.Outcome != "sent" {
		t.Fatalf("attempt %+v", a)
	}
	got := s.messages(t)
	if len(got) != 1 {
		t.Fatalf("smtp-sink stored %d messages", len(got))
	}
	raw := got[0].Data
	checkOuter(t, raw, text)
	requireBothVerify(t, raw, e.dnsRecords())

	f := filepath.Join(t.TempDir(), "msg.asc")
	os.WriteFile(f, armoredMessage(t, raw), 0o600)
	inner, status := gpg(t, home, nil, "--decrypt", f)
	if !strings.Contains(status, "[GNUPG:] DECRYPTION_OKAY") || !strings.Contains(status, "[GNUPG:] GOODSIG") {
		t.Errorf("gpg status:\n%s", status)
	}
	if v := regexp.MustCompile(`\[GNUPG:\] VALIDSIG \S+ .* ([0-9A-F]{40})\n`).FindStringSubmatch(status); v == nil || v[1] != e.gateway.Fingerprint() {
		t.Errorf("signature not by the gateway key %s:\n%s", e.gateway.Fingerprint(), status)
	}
	for _, want := range []string{"Subject: Re: Printer on fire [#1]", "927163", "Content-Type: text/plain"} {
		if !strings.Contains(inner, want) {
			t.Errorf("decrypted part lacks %q:\n%s", want, inner)
		}
	}
}
