package pgp

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// reply is an agent reply of about size bytes of text as an inner entity with protected headers.
func reply(size int) []byte {
	line := "Thank you for your message. We have looked into the order and found the cause.\n"
	text := strings.Repeat(line, size/len(line)+1)[:size]
	return ProtectedInner("Re: Order #1234 [#42]", "Example Support <support@example.com>", "carol@example.net",
		"Mon, 02 Jan 2006 15:04:05 +0000", "<r1@example.com>", []byte(text))
}

// BenchmarkEncrypt: sign with the gateway key and encrypt to a customer, RFC 3156 framing
// included (the goal: >= 500 replies/s).
//
//	go test ./pgp -run '^$' -bench . -benchmem
func BenchmarkEncrypt(b *testing.B) {
	gw := testGateway(b)
	carol := publicOnly(b, customer(b, "carol@example.net", time.Now(), 0))
	for _, size := range []int{8 << 10, 10 << 10} {
		inner := reply(size)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(inner)))
			for b.Loop() {
				if _, _, err := Encrypt(inner, carol, gw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecrypt: a customer's signed and encrypted 8 KiB mail, parsed, decrypted and verified.
func BenchmarkDecrypt(b *testing.B) {
	gw := testGateway(b)
	carolPriv := customer(b, "carol@example.net", time.Now(), 0)
	carol := publicOnly(b, carolPriv)
	inner := reply(8 << 10)
	body, ct, err := Encrypt(inner, publicOnly(b, gw.Entity()), asKey(carolPriv))
	if err != nil {
		b.Fatal(err)
	}
	raw := customerMail("carol@example.net", ct, body)
	known := knownOnly(carol)
	b.SetBytes(int64(len(inner)))
	for b.Loop() {
		res, err := Decrypt(raw, gw, known)
		if err != nil || res.SignedBy == "" || !bytes.Equal(res.Inner, inner) {
			b.Fatalf("%v", err)
		}
	}
}
