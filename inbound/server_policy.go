package inbound

import (
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// decision is what the [verify] policy makes of a verdict.
type decision struct {
	refuse     *smtp.SMTPError // non-nil: answer this instead of storing
	result     string          // Result* value when refused
	quarantine bool            // store, but marked quarantined and unverified
}

// policy applies [verify] to a verdict (issue 3):
//   - DMARC fail under p=reject: 550 5.7.1 at the end of DATA (RFC 7489 6.7, 7.1), or
//     quarantine when dmarc_reject = "quarantine";
//   - DMARC fail under p=quarantine: stored, quarantined and unverified, or stored as any
//     unverified mail when dmarc_quarantine = "accept";
//   - a temporary DNS error that left the sender unverified: stored unverified, or 451 when
//     temperror = "defer" (the sender tries again; RFC 7489 6.6.3 lets a receiver defer).
//
// Disposition already accounts for pct= sampling, and is "none" unless DMARC is fail.
func (s *Server) policy(vd Verdict) decision {
	switch vd.Disposition {
	case "reject":
		if s.cfg.Verify.DMARCReject == "quarantine" {
			return decision{quarantine: true}
		}
		return decision{result: ResultDMARCReject, refuse: &smtp.SMTPError{
			Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: fmt.Sprintf("message refused: it failed the DMARC check of %s, whose policy is to reject it", clean(vd.FromDomain)),
		}}
	case "quarantine":
		if s.cfg.Verify.DMARCQuarantine == "accept" {
			return decision{}
		}
		return decision{quarantine: true}
	}
	if vd.TempError && !vd.Verified && s.cfg.Verify.TempError == "defer" {
		return decision{result: ResultDNSDefer, refuse: &smtp.SMTPError{
			Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 3},
			Message: "temporary DNS failure while checking the sender; try again later",
		}}
	}
	return decision{}
}

// received is the trace field of RFC 5321 4.4 for one message:
//
//	Received: from <helo> ([<ip>]) by <hostname> (mailgate) with ESMTP[S] (<tls>) id <id>; <date>
//
// It names the client by its HELO and IP literal only (no reverse lookup on the path to 250)
// and holds nothing secret: no recipients (Bcc), no session state.
func (x *session) received(now time.Time) string {
	x.n++
	with := "ESMTP"
	var tlsInfo string
	if x.tls != nil {
		with = "ESMTPS" // RFC 3848
		tlsInfo = " (" + tls.VersionName(x.tls.Version) + " " + tls.CipherSuiteName(x.tls.CipherSuite) + ")"
	}
	ip := "unknown"
	if x.ip != nil {
		if x.ip.To4() != nil {
			ip = x.ip.String()
		} else {
			ip = "IPv6:" + x.ip.String()
		}
	}
	helo := cleanHELO(x.helo)
	if helo == "" {
		helo = "unknown"
	}
	return "Received: from " + helo + " ([" + ip + "])\r\n" +
		"\tby " + clean(x.s.cfg.Hostname) + " (mailgate) with " + with + tlsInfo + "\r\n" +
		"\tid " + x.id + "." + strconv.Itoa(x.n) + ";\r\n" +
		"\t" + now.Format(time.RFC1123Z) + "\r\n"
}

// cleanHELO keeps the characters a domain or address literal may hold, so that a hostile HELO
// cannot inject header text or log lines.
func cleanHELO(h string) string {
	if len(h) > 255 {
		h = h[:255]
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		case strings.ContainsRune(".-_:[]", r):
			return r
		}
		return -1
	}, h)
}
