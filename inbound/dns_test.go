package inbound

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// serveDNS answers TXT queries on a loopback UDP socket from txt (unknown names: NXDOMAIN)
// and counts the queries it saw.
func serveDNS(t *testing.T, txt map[string]string) (addr string, queries <-chan string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	seen := make(chan string, 100)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			seen <- q.Name.String()
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.EnableCompression()
			_ = b.StartQuestions()
			_ = b.Question(q)
			value, ok := txt[q.Name.String()]
			if ok && q.Type == dnsmessage.TypeTXT {
				_ = b.StartAnswers()
				_ = b.TXTResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60},
					dnsmessage.TXTResource{TXT: []string{value}})
			} else if !ok {
				b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError})
				_ = b.StartQuestions()
				_ = b.Question(q)
			}
			msg, err := b.Finish()
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(msg, from)
		}
	}()
	return pc.LocalAddr().String(), seen
}

// TestNewResolverServer: with a server configured, every query goes to that server (here a
// loopback responder), whatever resolv.conf says.
func TestNewResolverServer(t *testing.T) {
	addr, queries := serveDNS(t, map[string]string{
		"_dmarc.example.test.": "v=DMARC1; p=reject",
	})
	r := NewResolver(addr, 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	txt, err := r.LookupTXT(ctx, "_dmarc.example.test.")
	if err != nil || !slices.Equal(txt, []string{"v=DMARC1; p=reject"}) {
		t.Fatalf("LookupTXT: %q, %v", txt, err)
	}
	if q := <-queries; q != "_dmarc.example.test." {
		t.Fatalf("server saw %q", q)
	}
	_, err = r.LookupTXT(ctx, "nothing.example.test.")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("NXDOMAIN gave %#v", err)
	}

	// The verifier over it: a DMARC record from the configured server.
	v := &Verifier{Resolver: r, AuthservID: "mx.test"}
	vd := v.Verify(ctx, nil, []byte("From: a@example.test\r\n\r\nhi\r\n"))
	if vd.DMARC != "fail" || vd.Policy != "reject" || vd.Disposition != "reject" {
		t.Fatalf("verdict through the configured server: %+v", vd)
	}
}

// TestNewResolverUnreachable: a server that does not answer gives a temporary error, which
// the verifier reports as temperror, never as "no record".
func TestNewResolverUnreachable(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close() // bound but silent
	r := NewResolver(pc.LocalAddr().String(), 50*time.Millisecond)
	v := &Verifier{Resolver: r, AuthservID: "mx.test", Timeout: 300 * time.Millisecond}
	vd := v.Verify(context.Background(), nil, []byte("From: a@example.test\r\n\r\nhi\r\n"))
	if vd.DMARC != "temperror" || !vd.TempError {
		t.Fatalf("silent server: %+v", vd)
	}
}

func TestNewResolverSystem(t *testing.T) {
	if c, ok := NewResolver("", time.Second).(*cachingResolver); !ok || c.r != net.DefaultResolver {
		t.Fatal(`NewResolver("") is not the (cached) system resolver`)
	}
}
