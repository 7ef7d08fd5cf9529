// Package dnsmock is an in-memory DNS resolver for tests: maps of records plus a set of names
// that fail, answering like net.Resolver does (errors are *net.DNSError). It must never be
// used outside tests; it does no network I/O.
package dnsmock

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Resolver answers DNS queries from its maps. Names are matched case-insensitively, with or
// without a trailing dot. A name with no record of the queried type gives NXDOMAIN
// (&net.DNSError{IsNotFound: true}), as Go's resolver reports NODATA too.
//
// The maps must not be changed while lookups run; reading them concurrently is safe.
type Resolver struct {
	// TXT records. One string per record: the character-strings of a record are already
	// joined, as net.Resolver.LookupTXT does.
	TXT map[string][]string
	// A and AAAA records, as IP address strings ("192.0.2.1", "2001:db8::1").
	A map[string][]string
	// MX records.
	MX map[string][]*net.MX
	// PTR records, keyed by the IP address ("192.0.2.1") or by its reverse name
	// ("1.2.0.192.in-addr.arpa"). Answers get a trailing dot, like net.Resolver's.
	PTR map[string][]string
	// Fail makes queries answer SERVFAIL (&net.DNSError{IsTemporary: true}). A key is a name
	// (every query for it fails) or "TYPE name" with TYPE one of TXT, A (A and AAAA), MX, PTR
	// (only that type fails). For PTR the name is the IP address or its reverse name.
	Fail map[string]bool
	// CNAME aliases: the query continues at the target, for every type. A loop answers
	// SERVFAIL, as recursive resolvers do.
	CNAME map[string]string
	// OnQuery, when set, is called for every query with its type and name, before the answer
	// is looked up. Tests use it to count or delay lookups; it must be safe for concurrent use.
	OnQuery func(qtype, name string)
}

// maxChain bounds CNAME chains; longer chains are treated as loops.
const maxChain = 8

func norm(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// get finds key in m case-insensitively and ignoring a trailing dot.
func get[V any](m map[string]V, key string) (V, bool) {
	if v, ok := m[key]; ok {
		return v, true
	}
	k := norm(key)
	for name, v := range m {
		if norm(name) == k {
			return v, true
		}
	}
	var zero V
	return zero, false
}

func notFound(name string) error {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func servfail(name string) error {
	return &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
}

// validName reports whether name can be sent as a DNS query: net.Resolver refuses other names
// with a not-found error before asking any server.
func validName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
	}
	return true
}

// fails reports whether Fail holds name, or "qtype name", set to true.
func (r *Resolver) fails(qtype, name string) bool {
	if v, ok := get(r.Fail, name); ok && v {
		return true
	}
	v, ok := get(r.Fail, qtype+" "+name)
	return ok && v
}

// resolve follows CNAMEs from name and reports the final name, or the error a resolver gives.
func (r *Resolver) resolve(qtype, name string) (string, error) {
	if r.OnQuery != nil {
		r.OnQuery(qtype, name)
	}
	if !validName(name) {
		return "", notFound(name)
	}
	cur := name
	for range maxChain {
		if r.fails(qtype, cur) {
			return "", servfail(name)
		}
		target, ok := get(r.CNAME, cur)
		if !ok {
			return cur, nil
		}
		cur = target
	}
	return "", servfail(name)
}

// LookupTXT returns the TXT records of name.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: name, IsTimeout: true, IsTemporary: true}
	}
	cur, err := r.resolve("TXT", name)
	if err != nil {
		return nil, err
	}
	txt, ok := get(r.TXT, cur)
	if !ok || len(txt) == 0 {
		return nil, notFound(name)
	}
	return append([]string(nil), txt...), nil
}

// LookupIPAddr returns the A and AAAA records of host. Unparsable entries are skipped.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if err := ctx.Err(); err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: host, IsTimeout: true, IsTemporary: true}
	}
	cur, err := r.resolve("A", host)
	if err != nil {
		return nil, err
	}
	var out []net.IPAddr
	addrs, _ := get(r.A, cur)
	for _, s := range addrs {
		if ip := net.ParseIP(strings.TrimSpace(s)); ip != nil {
			out = append(out, net.IPAddr{IP: ip})
		}
	}
	if len(out) == 0 {
		return nil, notFound(host)
	}
	return out, nil
}

// LookupMX returns the MX records of name.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	if err := ctx.Err(); err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: name, IsTimeout: true, IsTemporary: true}
	}
	cur, err := r.resolve("MX", name)
	if err != nil {
		return nil, err
	}
	mxs, ok := get(r.MX, cur)
	if !ok || len(mxs) == 0 {
		return nil, notFound(name)
	}
	out := make([]*net.MX, len(mxs))
	for i, mx := range mxs {
		c := *mx
		out[i] = &c
	}
	return out, nil
}

// LookupAddr returns the PTR names of addr (an IP address, as net.Resolver takes it).
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: addr, IsTimeout: true, IsTemporary: true}
	}
	if r.OnQuery != nil {
		r.OnQuery("PTR", addr)
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	ip = ip.Unmap()
	keys := []string{ip.String(), ReverseName(ip)}
	for _, k := range keys {
		if r.fails("PTR", k) {
			return nil, servfail(addr)
		}
	}
	for _, k := range keys {
		if names, ok := get(r.PTR, k); ok && len(names) > 0 {
			out := make([]string, len(names))
			for i, n := range names {
				if !strings.HasSuffix(n, ".") {
					n += "."
				}
				out[i] = n
			}
			return out, nil
		}
	}
	return nil, notFound(addr)
}

// LookupTXTFunc adapts LookupTXT to the callback go-msgauth's dkim and dmarc packages take.
func (r *Resolver) LookupTXTFunc() func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		return r.LookupTXT(context.Background(), name)
	}
}

// ReverseName returns the in-addr.arpa or ip6.arpa name of ip, without a trailing dot.
func ReverseName(ip netip.Addr) string {
	ip = ip.Unmap()
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		for i := 3; i >= 0; i-- {
			b.WriteString(strconv.Itoa(int(a[i])))
			b.WriteByte('.')
		}
		b.WriteString("in-addr.arpa")
		return b.String()
	}
	const hex = "0123456789abcdef"
	a := ip.As16()
	for i := 15; i >= 0; i-- {
		b.WriteByte(hex[a[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hex[a[i]>>4])
		b.WriteByte('.')
	}
	b.WriteString("ip6.arpa")
	return b.String()
}
