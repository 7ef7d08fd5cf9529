package inbound

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"blitiri.com.ar/go/spf"
)

// mailgate's SPF path: blitiri's evaluator behind a thin layer that closes the gaps between it
// and RFC 7208 as the OpenSPF suite checks them:
//   - the <domain> argument is checked first (RFC 7208 4.3): malformed or single-label → none;
//   - an empty local-part becomes "postmaster" (4.3);
//   - every SPF record the evaluation fetches is checked against the full ABNF of section 12
//     before blitiri sees it (blitiri parses terms lazily, so a syntax error after a matching
//     term, a bad exp=, a non-ASCII byte or a bad domain-end went unnoticed). A record that
//     fails is replaced by one blitiri rejects at its first term, so its own include/redirect
//     propagation yields permerror exactly where RFC 7208 4.6 wants it;
//   - names that macro expansion made longer than 253 octets are cut from the left (7.3);
//   - %{p} is expanded to the validated domain name of the IP (7.3; blitiri always says
//     "unknown"), preferring one within <domain>, before blitiri sees the record;
//   - a literal domain-spec with a "/" (a macro-literal the ABNF allows, which blitiri refuses)
//     in a, mx or exists is handed to blitiri as an alias under .invalid that the resolver
//     maps back, so the lookups and the limits are the same.
// The rest (mechanism matching, limits, the other macros) is blitiri's.

// checkSPF runs check_host() for sender (already "postmaster@helo" for a null sender).
func checkSPF(ctx context.Context, r Resolver, ip net.IP, helo, sender string) spf.Result {
	local, domain := sender, helo
	if i := strings.LastIndexByte(sender, '@'); i >= 0 {
		local, domain = sender[:i], sender[i+1:]
	}
	if local == "" {
		local = "postmaster"
	}
	if !spfDomainOK(domain) {
		return spf.None
	}
	sr := &spfResolver{Resolver: r, ip: ip}
	res, _ := spf.CheckHostWithSender(ip, helo, local+"@"+domain,
		spf.WithResolver(sr), spf.WithContext(ctx))
	if sr.invalid() {
		return spf.PermError
	}
	return res
}

// spfDomainOK is RFC 7208 4.3: a multi-label name whose labels are 1 to 63 octets.
func spfDomainOK(d string) bool {
	d = strings.TrimSuffix(d, ".")
	if len(d) == 0 || len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
	}
	return true
}

// spfResolver wraps the resolver for one check_host() run.
type spfResolver struct {
	Resolver
	ip net.IP

	mu      sync.Mutex
	bad     bool
	aliases map[string]string // alias name → domain-spec it stands for
	ptrDone bool
	ptr     []string // validated names of ip, for %{p}
}

func (r *spfResolver) invalid() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bad
}

// badRecord is what a record with a syntax error is replaced by: "%" is neither a mechanism
// nor a modifier, so blitiri answers permerror before evaluating anything.
const badRecord = "v=spf1 %"

func (r *spfResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txts, err := r.Resolver.LookupTXT(ctx, r.queryName(name))
	if err != nil {
		return txts, err
	}
	// Record selection as RFC 7208 4.5 does it; more than one record is blitiri's permerror.
	idx := -1
	for i, t := range txts {
		if isSPFRecord(t) {
			if idx >= 0 {
				return txts, nil
			}
			idx = i
		}
	}
	if idx >= 0 && !validSPFRecord(txts[idx]) {
		r.mu.Lock()
		r.bad = true
		r.mu.Unlock()
		out := append([]string(nil), txts...)
		out[idx] = badRecord
		return out, nil
	}
	if idx >= 0 {
		out := append([]string(nil), txts...)
		out[idx] = r.rewrite(ctx, txts[idx], strings.TrimSuffix(name, "."))
		return out, nil
	}
	return txts, nil
}

func (r *spfResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return r.Resolver.LookupMX(ctx, r.queryName(name))
}

func (r *spfResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return r.Resolver.LookupIPAddr(ctx, r.queryName(host))
}

// aliasSuffix is the reserved TLD (RFC 2606) under which aliases are made.
const aliasSuffix = ".spf-alias.mailgate.invalid"

// queryName maps an alias back and applies truncateName.
func (r *spfResolver) queryName(name string) string {
	if strings.HasSuffix(strings.ToLower(strings.TrimSuffix(name, ".")), aliasSuffix) {
		r.mu.Lock()
		real, ok := r.aliases[strings.ToLower(strings.TrimSuffix(name, "."))]
		r.mu.Unlock()
		if ok {
			return real
		}
	}
	return truncateName(name)
}

// rewrite prepares a valid record for blitiri: %{p} macros expanded, literal domain-specs
// with "/" in a, mx and exists replaced by aliases.
func (r *spfResolver) rewrite(ctx context.Context, rec, domain string) string {
	terms := strings.Split(rec, " ")
	for i, term := range terms {
		if term == "" {
			continue
		}
		if strings.Contains(term, "%{p") || strings.Contains(term, "%{P") {
			term = r.expandP(ctx, term, domain)
		}
		name, rest := termName(term)
		q := ""
		if name != "" && strings.ContainsRune("+-?~", rune(name[0])) {
			q, name = name[:1], name[1:]
		}
		arg, hasArg := strings.CutPrefix(rest, ":")
		switch strings.ToLower(name) {
		case "a", "mx", "exists":
			if !hasArg {
				break
			}
			d, cidr := arg, ""
			if !strings.EqualFold(name, "exists") {
				d, cidr, _ = splitDomainCIDR(arg)
			}
			if strings.Contains(d, "/") && !strings.Contains(d, "%") {
				term = q + name + ":" + r.alias(d) + cidr
			}
		}
		terms[i] = term
	}
	return strings.Join(terms, " ")
}

func (r *spfResolver) alias(d string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aliases == nil {
		r.aliases = map[string]string{}
	}
	a := "a" + strconv.Itoa(len(r.aliases)) + aliasSuffix
	r.aliases[a] = d
	return a
}

// expandP replaces the %{p...} macros in term by their expansion (RFC 7208 7.3), quoting any
// "%" in the result so that blitiri's expander reproduces it.
func (r *spfResolver) expandP(ctx context.Context, term, domain string) string {
	var b strings.Builder
	for i := 0; i < len(term); i++ {
		c := term[i]
		if c != '%' || i+1 >= len(term) {
			b.WriteByte(c)
			continue
		}
		if term[i+1] != '{' || i+2 >= len(term) || (term[i+2]|0x20) != 'p' {
			b.WriteByte(c)
			b.WriteByte(term[i+1])
			i++
			continue
		}
		end := strings.IndexByte(term[i:], '}')
		body := term[i+2 : i+end]
		v := transformMacro(r.pValue(ctx, domain), body[1:])
		b.WriteString(strings.ReplaceAll(v, "%", "%%"))
		i += end
	}
	return b.String()
}

// transformMacro applies a macro's transformers and delimiters (already validated) to value.
func transformMacro(value, spec string) string {
	j := 0
	for j < len(spec) && isDigit(spec[j]) {
		j++
	}
	n, _ := strconv.Atoi(spec[:j])
	spec = spec[j:]
	reverse := spec != "" && (spec[0]|0x20) == 'r'
	if reverse {
		spec = spec[1:]
	}
	delims := spec
	if delims == "" {
		delims = "."
	}
	parts := strings.FieldsFunc(value, func(c rune) bool { return strings.ContainsRune(delims, c) })
	if reverse {
		slices.Reverse(parts)
	}
	if n > 0 && n < len(parts) {
		parts = parts[len(parts)-n:]
	}
	return strings.Join(parts, ".")
}

// pValue is the %{p} value for <domain>: a validated name of the IP, one equal to or under
// domain if there is one, else "unknown" (RFC 7208 7.3). The reverse lookup runs once per
// check; its errors just mean "unknown".
func (r *spfResolver) pValue(ctx context.Context, domain string) string {
	r.mu.Lock()
	done := r.ptrDone
	names := r.ptr
	r.mu.Unlock()
	if !done {
		names = validatedNames(ctx, r.Resolver, r.ip)
		r.mu.Lock()
		r.ptrDone, r.ptr = true, names
		r.mu.Unlock()
	}
	for _, n := range names {
		if strings.EqualFold(n, domain) || strings.HasSuffix(strings.ToLower(n), "."+strings.ToLower(domain)) {
			return n
		}
	}
	if len(names) > 0 {
		return names[0]
	}
	return "unknown"
}

// validatedNames returns the PTR names of ip (at most 10 looked at, RFC 7208 4.6.4) whose
// address records include ip, without trailing dots. Names with characters a host name
// cannot have are skipped.
func validatedNames(ctx context.Context, res Resolver, ip net.IP) []string {
	ptrs, err := res.LookupAddr(ctx, ip.String())
	if err != nil {
		return nil
	}
	if len(ptrs) > 10 {
		ptrs = ptrs[:10]
	}
	var out []string
	for _, n := range ptrs {
		n = strings.TrimSuffix(n, ".")
		if !hostnameChars(n) {
			continue
		}
		addrs, err := res.LookupIPAddr(ctx, n)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.IP.Equal(ip) {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

func hostnameChars(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !isAlpha(c) && !isDigit(c) && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}

// truncateName is RFC 7208 7.3: an expanded domain longer than 253 characters loses labels on
// the left until it fits.
func truncateName(name string) string {
	abs := strings.HasSuffix(name, ".")
	n := strings.TrimSuffix(name, ".")
	for len(n) > 253 {
		_, rest, ok := strings.Cut(n, ".")
		if !ok {
			break
		}
		n = rest
	}
	if abs {
		return n + "."
	}
	return n
}

// isSPFRecord is the version check of RFC 7208 4.5: "v=spf1" then a space or the end.
func isSPFRecord(txt string) bool {
	if len(txt) < 6 || !strings.EqualFold(txt[:6], "v=spf1") {
		return false
	}
	return len(txt) == 6 || txt[6] == ' '
}

// validSPFRecord checks a record against RFC 7208 section 12:
//
//	record = version terms *SP ; terms = *( 1*SP ( directive / modifier ) )
func validSPFRecord(rec string) bool {
	if !isSPFRecord(rec) {
		return false
	}
	var redirect, exp bool
	for term := range strings.SplitSeq(rec[6:], " ") {
		if term == "" {
			continue // runs of SP and trailing SP are allowed
		}
		name, rest := termName(term)
		if rest != "" && rest[0] == '=' {
			// modifier = redirect / explanation / unknown-modifier
			if !validModifierName(name) {
				return false // includes a qualifier on a modifier
			}
			value := rest[1:]
			switch strings.ToLower(name) {
			case "redirect":
				if redirect || !validDomainSpec(value) {
					return false
				}
				redirect = true
			case "exp":
				if exp || !validDomainSpec(value) {
					return false
				}
				exp = true
			default:
				if !validMacroString(value, false) {
					return false
				}
			}
			continue
		}
		if !validDirective(name, rest) {
			return false
		}
	}
	return true
}

// termName splits a term at the first ':', '/' or '=' (RFC 7208 4.6.1).
func termName(term string) (name, rest string) {
	if i := strings.IndexAny(term, ":/="); i >= 0 {
		return term[:i], term[i:]
	}
	return term, ""
}

// validModifierName: name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
func validModifierName(n string) bool {
	if n == "" || !isAlpha(n[0]) {
		return false
	}
	for i := 1; i < len(n); i++ {
		c := n[i]
		if !isAlpha(c) && !isDigit(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

// validDirective: directive = [ qualifier ] mechanism.
func validDirective(name, rest string) bool {
	if name != "" && strings.ContainsRune("+-?~", rune(name[0])) {
		name = name[1:]
	}
	arg, hasArg := strings.CutPrefix(rest, ":")
	switch strings.ToLower(name) {
	case "all":
		return rest == ""
	case "include", "exists":
		return hasArg && validDomainSpec(arg)
	case "ptr":
		return rest == "" || (hasArg && validDomainSpec(arg))
	case "a", "mx":
		if !hasArg {
			return validDualCIDR(rest)
		}
		return validDomainWithCIDR(arg)
	case "ip4":
		if !hasArg {
			return false
		}
		addr, cidr, _ := strings.Cut(arg, "/")
		if strings.Contains(arg, "/") && !validCIDR(cidr, 32) {
			return false
		}
		return validIP4(addr)
	case "ip6":
		if !hasArg {
			return false
		}
		addr, cidr, _ := strings.Cut(arg, "/")
		if strings.Contains(arg, "/") && !validCIDR(cidr, 128) {
			return false
		}
		ip, err := netip.ParseAddr(addr)
		return err == nil && ip.Is6() && ip.Zone() == ""
	}
	return false
}

// validDomainWithCIDR: domain-spec [ dual-cidr-length ].
func validDomainWithCIDR(s string) bool {
	_, _, ok := splitDomainCIDR(s)
	return ok
}

// splitDomainCIDR splits domain-spec [ dual-cidr-length ]. macro-literal allows "/", so the
// split is the one whose tail is a valid dual-cidr-length and whose head a valid domain-spec.
func splitDomainCIDR(s string) (domain, cidr string, ok bool) {
	if validDomainSpec(s) {
		return s, "", true
	}
	for i := len(s) - 1; i > 0; i-- {
		if s[i] == '/' && validDualCIDR(s[i:]) && validDomainSpec(s[:i]) {
			return s[:i], s[i:], true
		}
	}
	return "", "", false
}

// validDualCIDR: [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
func validDualCIDR(s string) bool {
	if s == "" {
		return true
	}
	if v6, ok := strings.CutPrefix(s, "//"); ok {
		return validCIDR(v6, 128)
	}
	v4, ok := strings.CutPrefix(s, "/")
	if !ok {
		return false
	}
	v4, v6, two := strings.Cut(v4, "//")
	if !validCIDR(v4, 32) {
		return false
	}
	return !two || validCIDR(v6, 128)
}

// validCIDR: "0" / %x31-39 *DIGIT, at most max.
func validCIDR(s string, max int) bool {
	if s == "" || len(s) > 3 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n <= max
}

// validIP4: qnum "." qnum "." qnum "." qnum, no leading zeros.
func validIP4(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if !validCIDR(p, 255) {
			return false
		}
	}
	return true
}

// validDomainSpec: domain-spec = macro-string domain-end;
// domain-end = ( "." toplabel [ "." ] ) / macro-expand.
func validDomainSpec(s string) bool {
	ok, endsInMacro := scanMacroString(s, false)
	if !ok || s == "" {
		return false
	}
	if endsInMacro {
		return true
	}
	t := strings.TrimSuffix(s, ".")
	i := strings.LastIndexByte(t, '.')
	if i < 0 {
		return false
	}
	return validTopLabel(t[i+1:])
}

// validTopLabel: ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
func validTopLabel(l string) bool {
	if l == "" {
		return false
	}
	alpha := false
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case isAlpha(c):
			alpha = true
		case isDigit(c):
		case c == '-':
			if i == 0 || i == len(l)-1 {
				return false
			}
		default:
			return false
		}
	}
	return alpha || strings.Contains(l, "-")
}

// validMacroString: *( macro-expand / macro-literal ).
func validMacroString(s string, explanation bool) bool {
	ok, _ := scanMacroString(s, explanation)
	return ok
}

// scanMacroString checks a macro-string and reports whether it ends with a macro-expand. In a
// record (not an explanation) the letters c, r and t are not allowed (RFC 7208 7.2), nor is a
// DIGIT transformer of 0 (7.3).
func scanMacroString(s string, explanation bool) (ok, endsInMacro bool) {
	for i := 0; i < len(s); i++ {
		endsInMacro = false
		c := s[i]
		if c != '%' {
			if c < 0x21 || c > 0x7e {
				return false, false
			}
			continue
		}
		i++
		if i >= len(s) {
			return false, false
		}
		endsInMacro = true
		switch s[i] {
		case '%', '_', '-':
			continue
		case '{':
		default:
			return false, false
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 || !validMacroBody(s[i+1:i+end], explanation) {
			return false, false
		}
		i += end
	}
	return true, endsInMacro
}

// validMacroBody: macro-letter transformers *delimiter, transformers = *DIGIT [ "r" ].
func validMacroBody(b string, explanation bool) bool {
	if b == "" {
		return false
	}
	letter := b[0] | 0x20
	switch letter {
	case 's', 'l', 'o', 'd', 'i', 'p', 'h', 'v':
	case 'c', 'r', 't':
		if !explanation {
			return false
		}
	default:
		return false
	}
	b = b[1:]
	j := 0
	for j < len(b) && isDigit(b[j]) {
		j++
	}
	if j > 0 && strings.Trim(b[:j], "0") == "" {
		return false
	}
	b = b[j:]
	if b != "" && (b[0]|0x20) == 'r' {
		b = b[1:]
	}
	for k := 0; k < len(b); k++ {
		if !strings.ContainsRune(".-+,/_=", rune(b[k])) {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return (c|0x20) >= 'a' && (c|0x20) <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
