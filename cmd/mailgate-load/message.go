package main

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// loadSigner reads -dkim-key or makes the -dkim-gen key; nil when messages go unsigned.
func loadSigner(o *options) (crypto.Signer, error) {
	switch {
	case o.dkimKey != "":
		b, err := os.ReadFile(o.dkimKey)
		if err != nil {
			return nil, fmt.Errorf("-dkim-key: %w", err)
		}
		k, err := parseKey(b)
		if err != nil {
			return nil, fmt.Errorf("-dkim-key %s: %w", o.dkimKey, err)
		}
		return k, nil
	case o.dkimGen == "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case o.dkimGen == "rsa":
		return rsa.GenerateKey(rand.Reader, 2048)
	case o.dkimGen != "":
		return nil, fmt.Errorf("-dkim-gen %q: give ed25519 or rsa", o.dkimGen)
	}
	return nil, nil
}

// parseKey reads a PEM private key: PKCS#8 (RSA or Ed25519) or PKCS#1 RSA.
func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		switch k := k.(type) {
		case *rsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("a %T key cannot sign DKIM (RSA or Ed25519 only)", k)
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("not a PKCS#8 or PKCS#1 private key")
}

// dkimRecord is the DNS TXT value that publishes k's public half (RFC 6376 3.6.1, RFC 8463).
func dkimRecord(k crypto.Signer) string {
	switch pub := k.Public().(type) {
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	case *rsa.PublicKey:
		der, _ := x509.MarshalPKIXPublicKey(pub)
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	}
	return ""
}

// records are the TXT records -dns-serve answers: SPF for the sender domain (loopback may send),
// the DKIM key, and DMARC.
func records(o *options, k crypto.Signer) map[string][]string {
	dom := strings.ToLower(domainOf(o.from))
	r := map[string][]string{
		dom:             {"v=spf1 ip4:127.0.0.0/8 ip6:::1 -all"},
		"_dmarc." + dom: {"v=DMARC1; p=" + o.dmarcPolicy},
	}
	if h := strings.ToLower(o.helo); h != dom {
		r[h] = []string{"v=spf1 ip4:127.0.0.0/8 ip6:::1 -all"}
	}
	if k != nil {
		r[strings.ToLower(o.dkimSelector+"._domainkey."+o.dkimDomain)] = []string{dkimRecord(k)}
	}
	return r
}

// message is one prepared message: its id and the DATA bytes, dot-stuffed, ending in CRLF
// (the final ".\r\n" is the client's, so that it can time from there).
type message struct {
	id   string
	from string
	data []byte
}

// generator builds messages: unique Message-IDs, the requested size, optionally signed.
type generator struct {
	o      *options
	key    crypto.Signer
	run    string // random per run, so two runs never share Message-IDs
	body   []byte // filler body of roughly the right size
	domain string
}

func newGenerator(o *options, key crypto.Signer) *generator {
	var b [6]byte
	rand.Read(b[:])
	g := &generator{o: o, key: key, run: hex.EncodeToString(b[:]), domain: domainOf(o.from)}
	// Headers take about 330 bytes and a signature about 300 (Ed25519) to 520 (RSA-2048).
	over := 330
	if key != nil {
		over += 420
	}
	g.body = filler(max(o.size-over, 64))
	return g
}

// filler is readable text in 76-byte lines.
func filler(n int) []byte {
	const words = "Hello, my order has not arrived and the tracking page shows no update since Monday. "
	var b bytes.Buffer
	line := 0
	for b.Len() < n {
		for _, w := range strings.SplitAfter(words, " ") {
			if line+len(w) > 76 {
				b.WriteString("\r\n")
				line = 0
			}
			b.WriteString(w)
			line += len(w)
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// sender is the i-th message's address (rotated over -senders local parts).
func (g *generator) sender(i int) string {
	if g.o.senders <= 1 {
		return g.o.from
	}
	at := strings.LastIndexByte(g.o.from, '@')
	return g.o.from[:at] + strconv.Itoa(i%g.o.senders+1) + g.o.from[at:]
}

// make builds message i.
func (g *generator) make(i int) (message, error) {
	from := g.sender(i)
	id := fmt.Sprintf("load-%s-%d@%s", g.run, i, g.domain)
	var h bytes.Buffer
	fmt.Fprintf(&h, "From: Load Test <%s>\r\n", from)
	fmt.Fprintf(&h, "To: <%s>\r\n", g.o.to)
	fmt.Fprintf(&h, "Subject: Load test message %d\r\n", i)
	fmt.Fprintf(&h, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&h, "Message-ID: <%s>\r\n", id)
	h.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
	h.Write(g.body)
	raw := h.Bytes()
	if g.key != nil {
		var signed bytes.Buffer
		err := dkim.Sign(&signed, bytes.NewReader(raw), &dkim.SignOptions{
			Domain: g.o.dkimDomain, Selector: g.o.dkimSelector, Signer: g.key,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"},
		})
		if err != nil {
			return message{}, fmt.Errorf("dkim sign: %w", err)
		}
		raw = signed.Bytes()
	}
	return message{id: id, from: from, data: dotStuff(raw)}, nil
}

// dotStuff doubles a leading dot on every line (RFC 5321 4.5.2) and makes sure the data ends in CRLF.
func dotStuff(raw []byte) []byte {
	out := make([]byte, 0, len(raw)+16)
	for len(raw) > 0 {
		if raw[0] == '.' {
			out = append(out, '.')
		}
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			out, raw = append(out, raw...), nil
			break
		}
		out, raw = append(out, raw[:i+1]...), raw[i+1:]
	}
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		out = append(out, '\r', '\n')
	}
	return out
}

// prepare builds every message before the clock starts when they fit in -pregen-max, so that
// signing does not take CPU from the server under test; it returns nil when messages are to
// be built while sending.
func (g *generator) prepare(o *options, w io.Writer) ([]message, error) {
	est := int64(o.n) * int64(o.size+200)
	if est > o.pregenMax {
		fmt.Fprintf(w, "messages are built while sending (%d MB would exceed -pregen-max)\n", est>>20)
		return nil, nil
	}
	start := time.Now()
	msgs := make([]message, o.n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	workers := runtime.GOMAXPROCS(0)
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := w; i < o.n; i += workers {
				m, err := g.make(i)
				if err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
					return
				}
				msgs[i] = m
			}
		})
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	signed := "unsigned"
	if g.key != nil {
		signed = "DKIM-signed (d=" + o.dkimDomain + " s=" + o.dkimSelector + ")"
	}
	fmt.Fprintf(w, "prepared %d messages of %d bytes, %s, in %s\n", o.n, len(msgs[0].data)+3, signed, time.Since(start).Round(time.Millisecond))
	return msgs, nil
}
