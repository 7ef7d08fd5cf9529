package inbound

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/mail"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
)

// Verifier checks who sent a message: SPF (blitiri spf behind a conformance layer), DKIM
// (go-msgauth) and DMARC (evaluated here). It holds no per-message state and is safe for
// concurrent use. It knows nothing of SMTP sessions or storage.
type Verifier struct {
	// Resolver answers every DNS query; nil means the system resolver.
	Resolver
	// AuthservID names mailgate in the Authentication-Results it writes (the hostname).
	AuthservID string
	// MaxSignatures bounds the DKIM signatures checked per message; 0 means 5. Further
	// signatures are ignored (RFC 6376 6.1 lets a verifier limit them).
	MaxSignatures int
	// Timeout bounds each phase's DNS work (SPF from StartSPF; DKIM and DMARC in Verify);
	// 0 means 20 seconds. A lookup that runs out of time counts as a temporary error.
	Timeout time.Duration
	// Rand returns a number in [0, n); it samples messages for DMARC pct=. nil means
	// math/rand/v2.IntN. Tests set it to make sampling deterministic.
	Rand func(n int) int
}

// Verdict is the outcome of the checks, in RFC 8601 result words: pass fail softfail neutral
// none temperror permerror (and policy, for a DKIM signature go-msgauth refuses on policy).
type Verdict struct {
	SPF, SPFHelo, DKIM, DMARC string
	// DKIMDomains are the d= of the signatures that passed.
	DKIMDomains []string
	// From is the RFC5322.From address with its domain lowercased; FromDomain its domain
	// (lowercase, IDN as A-labels). Both are empty unless the message has exactly one From
	// address.
	From       string
	FromDomain string
	// Policy is the DMARC p= (or sp=) that applies: none, quarantine, reject, or "" without
	// a usable record.
	Policy string
	// Disposition is what DMARC asks for this message after pct= sampling: none, quarantine
	// or reject. It is none unless DMARC is fail.
	Disposition string
	// Verified is DMARC pass: an SPF or DKIM pass aligned with the From domain (RFC 7489 3.1,
	// with the record's adkim/aspf) for a domain that publishes a DMARC record. The issue and
	// CONTRACT.md define it so: a domain without a record has told receivers nothing about how
	// its mail is authenticated, so its mail is shown as unverified even with an aligned pass
	// (Aligned says whether there was one). Never set without exactly one From address.
	Verified bool
	// Aligned is an SPF or DKIM pass aligned with From, whether or not DMARC applies.
	Aligned bool
	// TempError means a DNS lookup failed temporarily and the verdict may change on retry:
	// DMARC is temperror, or nothing verified the sender and SPF or DKIM hit temperror.
	TempError bool
	// AuthResults is the complete header field "Authentication-Results: ...\r\n" that
	// carries this verdict, with the Verifier's AuthservID.
	AuthResults string
}

// SPFCheck is an SPF evaluation started by StartSPF; Verify collects it.
type SPFCheck struct {
	done chan struct{}
	// set before the goroutines start
	sender string // the MAIL FROM identity checked (postmaster@helo for the null sender)
	helo   string
	domain string // the domain DMARC aligns against: MAIL FROM's, or HELO's when null
	// written by the goroutine before done is closed
	result, heloResult spf.Result
}

const (
	defaultMaxSignatures = 5
	defaultTimeout       = 20 * time.Second
)

func (v *Verifier) resolver() Resolver {
	if v.Resolver == nil {
		return net.DefaultResolver
	}
	return v.Resolver
}

func (v *Verifier) timeout() time.Duration {
	if v.Timeout <= 0 {
		return defaultTimeout
	}
	return v.Timeout
}

// StartSPF begins the SPF checks of the MAIL FROM identity (for the null sender mailFrom ""
// that is postmaster@helo, RFC 7208 2.4) and of the HELO identity (2.3), each in its own
// goroutine, so that the DNS work overlaps the DATA transfer. ctx bounds them together with
// Timeout; cancelling it ends them with temperror.
func (v *Verifier) StartSPF(ctx context.Context, ip net.IP, helo, mailFrom string) *SPFCheck {
	c := &SPFCheck{done: make(chan struct{}), helo: helo}
	helo = strings.TrimSuffix(helo, ".")
	if mailFrom == "" {
		c.sender = "postmaster@" + helo
		c.domain = helo
	} else {
		c.sender = mailFrom
		if i := strings.LastIndexByte(mailFrom, '@'); i >= 0 {
			c.domain = mailFrom[i+1:]
		} else {
			c.domain = helo
		}
	}
	r := v.resolver()
	ctx, cancel := context.WithTimeout(ctx, v.timeout())
	heloDone := make(chan spf.Result, 1)
	go func() {
		heloDone <- heloSPF(ctx, r, ip, helo)
	}()
	go func() {
		defer close(c.done)
		defer cancel()
		c.result = orTempError(ctx, checkSPF(ctx, r, ip, helo, c.sender))
		c.heloResult = orTempError(ctx, <-heloDone)
	}()
	return c
}

// heloSPF checks the HELO identity; a HELO that is an address literal or not a domain name
// has no SPF identity to check (none).
func heloSPF(ctx context.Context, r Resolver, ip net.IP, helo string) spf.Result {
	if helo == "" || strings.HasPrefix(helo, "[") || net.ParseIP(helo) != nil {
		return spf.None
	}
	return checkSPF(ctx, r, ip, helo, "postmaster@"+helo)
}

// orTempError turns any result reached after ctx ended into temperror: lookups cut short by
// the deadline may have looked like NXDOMAIN.
func orTempError(ctx context.Context, r spf.Result) spf.Result {
	if ctx.Err() != nil {
		return spf.TempError
	}
	return r
}

// wait returns the SPF results, or temperror for both when ctx ends first.
func (c *SPFCheck) wait(ctx context.Context) (mailFrom, helo spf.Result) {
	select {
	case <-c.done:
		return c.result, c.heloResult
	case <-ctx.Done():
		return spf.TempError, spf.TempError
	}
}

// Verify finishes the checks of a message received over SMTP: it collects the SPF results
// of spfc (nil: spf=none), verifies DKIM on raw exactly as received, and evaluates DMARC
// for the single RFC5322.From address. raw must still carry every header as it arrived;
// strip Authentication-Results afterwards (StripAuthResults).
func (v *Verifier) Verify(ctx context.Context, spfc *SPFCheck, raw []byte) Verdict {
	return v.verify(ctx, raw, func([]field) spfOutcome {
		if spfc == nil {
			return spfOutcome{mailFrom: "none", helo: "none"}
		}
		mf, h := spfc.wait(ctx)
		return spfOutcome{mailFrom: string(mf), helo: string(h), domain: spfc.domain,
			sender: spfc.sender, heloName: spfc.helo}
	})
}

// VerifyNoEnvelope checks a message that came without an SMTP envelope (fetched over IMAP):
// DKIM, and DMARC through DKIM alignment, plus the SPF result that an upstream host wrote in
// Authentication-Results, but only from the topmost such field whose authserv-id is one of
// trustedAuthservIDs (else spf=none). SPFHelo is always none.
func (v *Verifier) VerifyNoEnvelope(ctx context.Context, raw []byte, trustedAuthservIDs []string) Verdict {
	return v.verify(ctx, raw, func(fields []field) spfOutcome {
		if res, d, id, ok := upstreamSPF(fields, trustedAuthservIDs); ok && isResultWord(string(res)) {
			return spfOutcome{mailFrom: string(res), helo: "none", domain: d, reason: "reported by " + id}
		}
		return spfOutcome{mailFrom: "none", helo: "none"}
	})
}

// spfOutcome is what the DMARC evaluation and the header need to know about SPF.
type spfOutcome struct {
	mailFrom, helo   string // result words
	domain           string // the domain to align with From
	sender, heloName string // the identities checked, for the header
	reason           string
}

// verify runs DKIM and DMARC policy discovery concurrently, collects SPF from spfOf and puts
// the verdict together.
func (v *Verifier) verify(ctx context.Context, raw []byte, spfOf func([]field) spfOutcome) Verdict {
	ctx, cancel := context.WithTimeout(ctx, v.timeout())
	defer cancel()
	fields, _, complete := headerFields(raw)

	from := parseFrom(fields)
	pol := v.startPolicy(ctx, from)
	dkc := make(chan []dkimResult, 1)
	go func() { dkc <- v.verifyDKIM(ctx, raw, complete) }()

	so := spfOf(fields)
	vd := Verdict{SPF: so.mailFrom, SPFHelo: so.helo}
	var dk []dkimResult
	select {
	case dk = <-dkc:
	case <-ctx.Done():
		dk = []dkimResult{{value: "temperror", reason: "timed out"}}
	}
	var p policyRecord
	select {
	case p = <-pol:
	case <-ctx.Done():
		p = policyRecord{result: "temperror"}
	}
	v.finish(&vd, dk, from, p, so.domain)
	vd.Aligned, vd.Verified = vd.Verified, vd.DMARC == "pass"
	vd.AuthResults = v.authResults(vd, dk, so, from)
	return vd
}

func isResultWord(s string) bool {
	switch s {
	case "pass", "fail", "softfail", "neutral", "none", "temperror", "permerror":
		return true
	}
	return false
}

// fromAddress is the parsed RFC5322.From.
type fromAddress struct {
	addr, domain string
	// result is "" for exactly one usable address, else the dmarc= word: none (no From),
	// permerror (several From fields or addresses, or one that does not parse).
	result string
}

// parseFrom extracts the single RFC5322.From address (RFC 7489 6.6.1).
func parseFrom(fields []field) fromAddress {
	var values []string
	for _, f := range fields {
		if strings.EqualFold(f.name, "From") {
			values = append(values, unfold(f.value))
		}
	}
	switch len(values) {
	case 0:
		return fromAddress{result: "none"}
	case 1:
	default:
		return fromAddress{result: "permerror"}
	}
	p := mail.AddressParser{WordDecoder: &wordDecoder}
	list, err := p.ParseList(values[0])
	if err != nil || len(list) != 1 {
		return fromAddress{result: "permerror"}
	}
	i := strings.LastIndexByte(list[0].Address, '@')
	if i <= 0 {
		return fromAddress{result: "permerror"}
	}
	domain := asciiDomain(list[0].Address[i+1:])
	if domain == "" || !strings.Contains(domain, ".") || strings.HasPrefix(domain, "[") {
		// DMARC needs a DNS domain: not a bare label, not an address literal.
		return fromAddress{result: "permerror"}
	}
	local := list[0].Address[:i]
	return fromAddress{
		addr:   local + "@" + strings.ToLower(strings.TrimSuffix(list[0].Address[i+1:], ".")),
		domain: domain,
	}
}

// wordDecoder leaves display names in unknown charsets undecoded: only the address matters
// here, and a strange charset must not make the From unparsable.
var wordDecoder = mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}

// startPolicy starts DMARC policy discovery for from in the background.
func (v *Verifier) startPolicy(ctx context.Context, from fromAddress) <-chan policyRecord {
	ch := make(chan policyRecord, 1)
	if from.result != "" {
		ch <- policyRecord{result: from.result}
		return ch
	}
	r := v.resolver()
	go func() { ch <- discoverPolicy(ctx, r, from.domain) }()
	return ch
}

// dkimResult is the outcome of one DKIM signature.
type dkimResult struct {
	value      string // RFC 8601 word
	domain, id string
	reason     string
}

// verifyDKIM checks up to MaxSignatures signatures on raw as received. A message that is all
// header gets the empty line it lacks, which does not change its canonical form.
func (v *Verifier) verifyDKIM(ctx context.Context, raw []byte, complete bool) []dkimResult {
	max := v.MaxSignatures
	if max <= 0 {
		max = defaultMaxSignatures
	}
	r := v.resolver()
	var src io.Reader = bytes.NewReader(raw)
	if !complete {
		src = io.MultiReader(bytes.NewReader(raw), strings.NewReader("\r\n"))
	}
	verifs, err := dkim.VerifyWithOptions(src, &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if !strings.HasSuffix(name, ".") {
				name += "."
			}
			return r.LookupTXT(ctx, name)
		},
		MaxVerifications: max,
	})
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		// The header could not be read, or a signature hit an unexpected error: there are
		// signatures we cannot judge.
		return []dkimResult{{value: "permerror", reason: "unreadable message"}}
	}
	out := make([]dkimResult, 0, len(verifs))
	for _, vf := range verifs {
		d := dkimResult{domain: strings.ToLower(vf.Domain), id: vf.Identifier}
		switch {
		case vf.Err == nil:
			d.value = "pass"
		case dkim.IsTempFail(vf.Err):
			d.value = "temperror"
		case dkim.IsPermFail(vf.Err):
			d.value = "permerror"
		default:
			d.value = "fail"
		}
		if vf.Err != nil {
			d.reason = strings.TrimPrefix(vf.Err.Error(), "dkim: ")
			if d.value == "temperror" && ctx.Err() != nil {
				d.reason = "lookup timed out"
			}
		}
		out = append(out, d)
	}
	return out
}

// dkimRank orders results for the summary: a pass anywhere is a pass; a temporary error may
// still become one.
var dkimRank = map[string]int{"pass": 5, "temperror": 4, "fail": 3, "policy": 2, "permerror": 1}

// finish fills the DKIM summary and the DMARC part of vd.
func (v *Verifier) finish(vd *Verdict, dk []dkimResult, from fromAddress, pol policyRecord, spfDomain string) {
	vd.DKIM = "none"
	for _, d := range dk {
		if dkimRank[d.value] > dkimRank[vd.DKIM] {
			vd.DKIM = d.value
		}
		if d.value == "pass" {
			vd.DKIMDomains = append(vd.DKIMDomains, d.domain)
		}
	}
	vd.From, vd.FromDomain = from.addr, from.domain
	vd.Disposition = "none"
	defer func() {
		// Only a verdict that is still open can change on retry.
		vd.TempError = vd.DMARC == "temperror" ||
			(!vd.Verified && (vd.SPF == "temperror" || vd.DKIM == "temperror"))
	}()
	if from.result != "" {
		// No single author: nothing can be aligned with it (RFC 7489 6.6.1).
		vd.DMARC = from.result
		return
	}

	// Alignment modes: the record's; without a record relaxed, the RFC default; when the
	// record could not be fetched strict, which holds whatever it says.
	dkimMode, spfMode := dmarc.AlignmentMode(dmarc.AlignmentRelaxed), dmarc.AlignmentMode(dmarc.AlignmentRelaxed)
	switch {
	case pol.rec != nil:
		dkimMode, spfMode = pol.rec.DKIMAlignment, pol.rec.SPFAlignment
	case pol.result == "temperror":
		dkimMode, spfMode = dmarc.AlignmentStrict, dmarc.AlignmentStrict
	}

	// RFC 7489 4.2: an SPF or DKIM pass for a domain aligned with From authenticates it.
	var tempPossible bool
	for _, d := range dk {
		if !aligned(d.domain, from.domain, dkimMode) {
			continue
		}
		switch d.value {
		case "pass":
			vd.Verified = true
		case "temperror":
			tempPossible = true
		}
	}
	if aligned(spfDomain, from.domain, spfMode) {
		switch vd.SPF {
		case "pass":
			vd.Verified = true
		case "temperror":
			tempPossible = true
		}
	}

	if pol.result != "" {
		// No usable policy (none, permerror, temperror): no disposition, but an aligned pass
		// still authenticates the author.
		vd.DMARC = pol.result
		return
	}
	vd.Policy = string(pol.policy)
	switch {
	case vd.Verified:
		vd.DMARC = "pass"
	case tempPossible:
		// An aligned identifier could not be checked: no disposition on a guess.
		vd.DMARC = "temperror"
	default:
		vd.DMARC = "fail"
		p := pol.policy
		if rec := pol.rec; rec.Percent != nil && *rec.Percent < 100 && p != dmarc.PolicyNone && !v.sampled(*rec.Percent) {
			p = lowerPolicy(p)
		}
		vd.Disposition = string(p)
	}
}

// sampled reports whether a failing message falls within pct percent (RFC 7489 6.6.4).
func (v *Verifier) sampled(pct int) bool {
	if pct <= 0 {
		return false
	}
	n := rand.IntN
	if v.Rand != nil {
		n = v.Rand
	}
	return n(100) < pct
}

// authResults renders the verdict as the Authentication-Results field mailgate writes.
func (v *Verifier) authResults(vd Verdict, dk []dkimResult, so spfOutcome, from fromAddress) string {
	results := []authres.Result{&authres.SPFResult{
		Value: authres.ResultValue(vd.SPF), From: clean(so.sender), Reason: clean(so.reason),
	}}
	if so.heloName != "" {
		results = append(results, &authres.SPFResult{Value: authres.ResultValue(vd.SPFHelo), Helo: clean(so.heloName)})
	}
	if len(dk) == 0 {
		results = append(results, &authres.DKIMResult{Value: authres.ResultNone})
	}
	for _, d := range dk {
		results = append(results, &authres.DKIMResult{
			Value:      authres.ResultValue(d.value),
			Reason:     clean(d.reason),
			Domain:     clean(d.domain),
			Identifier: clean(d.id),
		})
	}
	dm := &authres.DMARCResult{Value: authres.ResultValue(vd.DMARC), From: clean(from.domain)}
	if vd.Policy != "" {
		dm.Reason = "p=" + vd.Policy + " dis=" + strings.ToUpper(vd.Disposition)
	}
	results = append(results, dm)
	return formatAuthResults(v.AuthservID, results)
}
