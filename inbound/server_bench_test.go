package inbound

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"mailgate/config"
	"mailgate/internal/dnsmock"
)

var benchKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// benchMessage is an 8 KB message from good.example, DKIM-signed with RSA-2048 over From, To,
// Subject and Date. The Message-ID is left out of the signature so each delivery can carry
// its own (one ticket per message) without signing again in the client.
func benchMessage(b *testing.B) []byte {
	var body strings.Builder
	for body.Len() < 8<<10 {
		body.WriteString("Hello support, my order 4711 has not arrived and the tracking page says nothing.\r\n")
	}
	msg := "From: Alice <alice@good.example>\r\nTo: support@example.com\r\nSubject: Where is my order?\r\n" +
		"Date: Fri, 02 Jan 2026 03:04:05 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body.String()
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(msg), &dkim.SignOptions{
		Domain: "good.example", Selector: "bench", Signer: benchKey(),
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject", "Date"},
	})
	if err != nil {
		b.Fatal(err)
	}
	return out.Bytes()
}

// BenchmarkSMTPDelivery measures the whole inbound path over loopback: go-smtp client →
// server → SPF, DKIM (RSA-2048) and DMARC against the mock DNS → tickets.Ingest with a durable
// (fsynced) group commit → 250. Each client is one connection sending messages back to back.
//
//	go test -run '^$' -bench BenchmarkSMTPDelivery -benchtime 3000x ./inbound
func BenchmarkSMTPDelivery(b *testing.B) {
	for _, clients := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) { benchDelivery(b, clients) })
	}
}

func benchDelivery(b *testing.B, clients int) {
	pub, err := x509.MarshalPKIXPublicKey(&benchKey().PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	e := newSrvEnvDNS(b, func(c *config.Config) {
		c.SMTP.MaxConnsPerIP = 1000
		c.SMTP.MessagesPerMinutePerIP = 0
	}, nil, func(r *dnsmock.Resolver) {
		r.TXT["bench._domainkey.good.example"] = []string{"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub)}
	})
	msg := benchMessage(b)
	var conns []*smtp.Client
	for range clients {
		c, err := smtp.Dial(e.addr)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Hello("client.good.example"); err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	var next atomic.Int64
	lat := make([][]time.Duration, clients)
	errs := make([]error, clients)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				if err := c.Mail("alice@good.example", nil); err != nil {
					errs[i] = err
					return
				}
				if err := c.Rcpt("support@example.com", nil); err != nil {
					errs[i] = err
					return
				}
				w, err := c.Data()
				if err != nil {
					errs[i] = err
					return
				}
				fmt.Fprintf(w, "Message-ID: <bench.%d@good.example>\r\n", n)
				w.Write(msg)
				t0 := time.Now()
				if err := w.Close(); err != nil { // sends CRLF.CRLF, waits for the 250
					errs[i] = err
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range conns {
		c.Quit()
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) != b.N {
		b.Fatalf("%d deliveries, want %d", len(all), b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
	// Each message stored exactly once.
	_, entries, err := e.tk.Mailbox("support", 0)
	if err != nil {
		b.Fatal(err)
	}
	if len(entries) != b.N {
		b.Fatalf("stored %d messages, want %d", len(entries), b.N)
	}
}
