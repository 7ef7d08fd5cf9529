package inbound

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// DMARC evaluation (RFC 7489). go-msgauth only parses records; policy discovery, the
// organizational domain, alignment and pct are done here.

// OrgDomain returns the organizational domain of domain (RFC 7489 3.2): the public suffix
// plus one label, from golang.org/x/net/publicsuffix (ICANN and private sections). It returns ""
// when domain is itself a public suffix or is not a usable name. The answer is lowercase
// ASCII (IDN labels as A-labels), without a trailing dot.
func OrgDomain(domain string) string {
	d := asciiDomain(domain)
	if d == "" {
		return ""
	}
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return ""
	}
	return org
}

// asciiDomain lowercases d, converts IDN labels to A-labels and drops one trailing dot. It
// returns "" for a name with an empty label.
func asciiDomain(d string) string {
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return ""
	}
	if a, err := idna.ToASCII(d); err == nil {
		d = a
	}
	d = strings.ToLower(d)
	for l := range strings.SplitSeq(d, ".") {
		if l == "" {
			return ""
		}
	}
	return d
}

// aligned reports whether an authenticated domain aligns with the From domain (RFC 7489
// 3.1): equal names in strict mode, the same organizational domain in relaxed mode.
func aligned(authDomain, fromDomain string, mode dmarc.AlignmentMode) bool {
	a, f := asciiDomain(authDomain), asciiDomain(fromDomain)
	if a == "" || f == "" {
		return false
	}
	if a == f {
		return true
	}
	if mode == dmarc.AlignmentStrict {
		return false
	}
	org := OrgDomain(f)
	return org != "" && org == OrgDomain(a)
}

// policyRecord is the outcome of DMARC policy discovery.
type policyRecord struct {
	rec *dmarc.Record
	// result is "" when rec was found, else the dmarc= word: none, temperror or permerror.
	result string
	// policy is p= of the record, or sp= when it was found at the organizational domain.
	policy dmarc.Policy
}

// discoverPolicy is RFC 7489 6.6.3: the record at the From domain, else at its organizational
// domain (where sp= applies to the subdomain). np= (RFC 9091) is not used.
func discoverPolicy(ctx context.Context, r Resolver, fromDomain string) policyRecord {
	recs, res := dmarcRecords(ctx, r, fromDomain)
	atOrg := false
	if res == "" && len(recs) == 0 {
		org := OrgDomain(fromDomain)
		if org != "" && org != fromDomain {
			recs, res = dmarcRecords(ctx, r, org)
			atOrg = true
		}
	}
	switch {
	case res != "":
		return policyRecord{result: res}
	case len(recs) == 0:
		return policyRecord{result: "none"}
	case len(recs) > 1:
		// "If the remaining set contains multiple records ... DMARC processing is not
		// applied": a publishing error, reported as permerror.
		return policyRecord{result: "permerror"}
	}
	rec, err := dmarc.Parse(recs[0])
	if err != nil {
		return policyRecord{result: "permerror"}
	}
	p := rec.Policy
	if atOrg && rec.SubdomainPolicy != "" {
		p = rec.SubdomainPolicy
	}
	return policyRecord{rec: rec, policy: p}
}

// dmarcRecords fetches the TXT records at _dmarc.<domain> and keeps those that start with
// the DMARC version tag. res is "temperror" when the lookup failed temporarily.
func dmarcRecords(ctx context.Context, r Resolver, domain string) (recs []string, res string) {
	txts, err := r.LookupTXT(ctx, "_dmarc."+domain+".")
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, ""
		}
		// SERVFAIL, timeouts and anything unexpected: the answer may differ later.
		return nil, "temperror"
	}
	for _, t := range txts {
		if isDMARCRecord(t) {
			recs = append(recs, t)
		}
	}
	return recs, ""
}

// isDMARCRecord: dmarc-version = "v" *WSP "=" *WSP "DMARC1", first in the record.
func isDMARCRecord(txt string) bool {
	first, _, _ := strings.Cut(txt, ";")
	k, v, ok := strings.Cut(first, "=")
	return ok && strings.EqualFold(strings.TrimSpace(k), "v") && strings.TrimSpace(v) == "DMARC1"
}

// lowerPolicy is RFC 7489 6.6.4: a failing message that pct= sampled out gets the next
// policy down.
func lowerPolicy(p dmarc.Policy) dmarc.Policy {
	switch p {
	case dmarc.PolicyReject:
		return dmarc.PolicyQuarantine
	default:
		return dmarc.PolicyNone
	}
}
