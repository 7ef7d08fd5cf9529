package pgp

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

func TestParseAutocrypt(t *testing.T) {
	for _, c := range []struct {
		name, value string
		addr, pref  string
		kd          string
		err         string
	}{
		{name: "minimal", value: "addr=a@example.com; keydata=AQID", addr: "a@example.com", kd: "\x01\x02\x03"},
		{name: "folded", value: "addr=A@Example.com;\r\n prefer-encrypt=mutual;\r\n keydata=AQ\r\n ID", addr: "a@example.com", pref: "mutual", kd: "\x01\x02\x03"},
		{name: "non-critical ignored", value: "addr=a@example.com; _foo=bar; keydata=AQID", addr: "a@example.com", kd: "\x01\x02\x03"},
		{name: "nopreference", value: "addr=a@example.com; prefer-encrypt=nopreference; keydata=AQID", addr: "a@example.com", kd: "\x01\x02\x03"},
		{name: "critical unknown", value: "addr=a@example.com; foo=bar; keydata=AQID", err: "critical"},
		{name: "no addr", value: "keydata=AQID", err: "no addr"},
		{name: "bad addr", value: "addr=nobody; keydata=AQID", err: "not an email"},
		{name: "no keydata", value: "addr=a@example.com", err: "no keydata"},
		{name: "bad base64", value: "addr=a@example.com; keydata=***", err: "base64"},
		{name: "twice", value: "addr=a@example.com; addr=b@example.com; keydata=AQID", err: "twice"},
		{name: "no value", value: "addr; keydata=AQID", err: "no value"},
		{name: "huge", value: "addr=a@example.com; keydata=" + strings.Repeat("A", maxAutocryptHeader), err: "limit"},
	} {
		ac, err := ParseAutocrypt(c.value)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if ac.Addr != c.addr || ac.PreferEncrypt != c.pref || string(ac.KeyData) != c.kd {
			t.Errorf("%s: got %+v", c.name, ac)
		}
	}
}

// TestAutocryptHeaderRoundTrip writes the gateway's header through go-message (which folds it)
// and reads it back as a customer's client would.
func TestAutocryptHeaderRoundTrip(t *testing.T) {
	k := testGateway(t)
	v := k.AutocryptHeader("Support@example.com")
	if v == "" {
		t.Fatal("no header for a key address")
	}
	if k.AutocryptHeader("sales@example.com") != "" {
		t.Error("header for an address the key has no user ID for")
	}
	var h textproto.Header
	h.Set("Autocrypt", v)
	var buf bytes.Buffer
	if err := textproto.WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(buf.String(), "\r\n") {
		if len(line) > 78 {
			t.Errorf("header line of %d characters", len(line))
		}
	}
	back, err := textproto.ReadHeader(bufio.NewReader(&buf))
	if err != nil {
		t.Fatal(err)
	}
	ac, err := ParseAutocrypt(back.Get("Autocrypt"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := readOneKey(ac.KeyData)
	if err != nil {
		t.Fatal(err)
	}
	if fingerprint(e) != k.Fingerprint() || e.PrivateKey != nil || len(e.Identities) != 1 {
		t.Errorf("keydata: wrong key, private part, or %d user IDs", len(e.Identities))
	}
	if ac.Addr != "support@example.com" || ac.PreferEncrypt != "mutual" {
		t.Errorf("parsed %+v", ac)
	}
}
