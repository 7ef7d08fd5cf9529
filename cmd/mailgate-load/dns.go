package main

import (
	"errors"
	"net"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers TXT queries over UDP from a fixed table, so that a benchmark's sender
// domain passes SPF, DKIM and DMARC without the network. Names not in the table are NXDOMAIN;
// other types for a name in the table get an empty answer (NODATA). It is a test fixture of
// some forty lines, not a DNS server: no TCP, no EDNS, no recursion.
type dnsServer struct {
	pc  net.PacketConn
	txt map[string][]string // lower-case name without the final dot → records
}

func serveDNS(addr string, txt map[string][]string) (*dnsServer, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	d := &dnsServer{pc: pc, txt: txt}
	go d.loop()
	return d, nil
}

func (d *dnsServer) Addr() net.Addr { return d.pc.LocalAddr() }
func (d *dnsServer) Close() error   { return d.pc.Close() }

func (d *dnsServer) loop() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		if out, ok := d.answer(buf[:n]); ok {
			d.pc.WriteTo(out, from)
		}
	}
}

// answer builds the reply to one query; false for input that is not a query.
func (d *dnsServer) answer(q []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil, false
	}
	qs, err := p.Question()
	if err != nil {
		return nil, false
	}
	// Authoritative and RecursionAvailable: Go's resolver takes an empty answer without them
	// for a lame referral.
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	recs, known := d.txt[strings.ToLower(strings.TrimSuffix(qs.Name.String(), "."))]
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	if b.StartQuestions() != nil || b.Question(qs) != nil {
		return nil, false
	}
	if known && qs.Type == dnsmessage.TypeTXT {
		if b.StartAnswers() != nil {
			return nil, false
		}
		for _, r := range recs {
			// A character-string holds at most 255 bytes; a resolver joins a record's strings.
			var parts []string
			for len(r) > 255 {
				parts, r = append(parts, r[:255]), r[255:]
			}
			parts = append(parts, r)
			if b.TXTResource(dnsmessage.ResourceHeader{Name: qs.Name, Class: dnsmessage.ClassINET, TTL: 300},
				dnsmessage.TXTResource{TXT: parts}) != nil {
				return nil, false
			}
		}
	}
	out, err := b.Finish()
	return out, err == nil
}
