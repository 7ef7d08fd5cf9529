package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"mailgate/tickets"
)

// backend creates a session per EHLO (go-smtp calls NewSession at the first HELO/EHLO and
// again after STARTTLS).
type backend struct{ s *Server }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.s
	if s.draining.Load() {
		return nil, errShuttingDown(s.cfg.Hostname)
	}
	nc := c.Conn()
	var tlsState *tls.ConnectionState
	if tc, ok := nc.(*tls.Conn); ok {
		st := tc.ConnectionState()
		tlsState = &st
		nc = tc.NetConn()
	}
	cn, _ := nc.(*conn) // nil only if go-smtp was handed a connection we did not accept
	id := newID()
	if cn != nil {
		id = cn.id
	}
	sess := &session{
		s:      s,
		c:      cn,
		id:     id,
		remote: c.Conn().RemoteAddr().String(),
		ip:     remoteIP(c.Conn()),
		helo:   c.Hostname(),
		tls:    tlsState,
		ctx:    s.ctx,
	}
	sess.log = s.log.With("conn", id)
	if tlsState != nil {
		sess.log.Debug("session", "remote", sess.remote, "helo", cleanHELO(sess.helo), "tls", tls.VersionName(tlsState.Version))
	} else {
		sess.log.Debug("session", "remote", sess.remote, "helo", cleanHELO(sess.helo))
	}
	return sess, nil
}

// session is one SMTP session: from EHLO to QUIT or STARTTLS.
type session struct {
	s      *Server
	c      *conn
	id     string
	remote string
	ip     net.IP
	helo   string
	tls    *tls.ConnectionState
	log    *slog.Logger
	n      int // messages in this session, for the Received: id

	// the transaction, from MAIL to the end of DATA or RSET
	hasFrom  bool
	mailFrom string
	queues   []string
	spf      *SPFCheck
	cancel   context.CancelFunc
	ctx      context.Context
}

func errShuttingDown(host string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: host + " is shutting down, try again later"}
}

// Mail begins a transaction. The null sender <> (from == "") is accepted: bounces use it.
// The SPF checks start here so their DNS work overlaps the DATA transfer.
func (x *session) Mail(from string, opts *smtp.MailOptions) error {
	s := x.s
	if s.draining.Load() {
		s.opts.Metrics.Command("mail", "shutting_down")
		return errShuttingDown(s.cfg.Hostname)
	}
	if !s.rate.allow(ipKey(x.ip)) {
		s.opts.Metrics.Command("mail", "rate_limited")
		x.log.Warn("rate limited", "remote", x.remote, "per_minute", s.cfg.SMTP.MessagesPerMinutePerIP)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: "too many messages from your address, try again in a minute"}
	}
	x.clearTx()
	x.hasFrom, x.mailFrom = true, from
	x.ctx, x.cancel = context.WithCancel(s.ctx)
	if x.ip != nil {
		x.spf = s.v.StartSPF(x.ctx, x.ip, x.helo, from)
	}
	if x.c != nil {
		x.c.setTx(true)
	}
	s.opts.Metrics.Command("mail", "ok")
	return nil
}

// Rcpt accepts a queue address (see Server.queueFor) and refuses anything else with 550 5.1.1
// here, at RCPT, so that no message for a stranger is ever read.
func (x *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	q, ok := x.s.queueFor(to)
	if !ok {
		x.s.opts.Metrics.Command("rcpt", "unknown")
		x.log.Info("unknown recipient", "remote", x.remote)
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
			Message: "no such mailbox here; check the address"}
	}
	for _, have := range x.queues {
		if have == q {
			x.s.opts.Metrics.Command("rcpt", "ok")
			return nil // support@ and Support+x@ are one delivery
		}
	}
	x.queues = append(x.queues, q)
	x.s.opts.Metrics.Command("rcpt", "ok")
	return nil
}

// Data reads the message, checks it, and answers 250 only once every queue's copy is committed.
func (x *session) Data(r io.Reader) error {
	s := x.s
	if !s.beginData() {
		return errShuttingDown(s.cfg.Hostname)
	}
	defer s.endData()
	if x.c != nil {
		x.c.beginData()
	}
	buf := getBuffer()
	defer putBuffer(buf)
	sr := &strictReader{r: r}
	_, err := buf.ReadFrom(sr)
	start := time.Now() // the end of DATA: metrics measure from here to the reply
	if err != nil {
		return x.readError(err, buf.Len(), start)
	}
	if sr.bare {
		return x.refuse(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
			Message: "message refused: it holds a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)"},
			ResultBareNewline, buf.Len(), start, nil)
	}
	if sr.nul {
		return x.refuse(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
			Message: "message refused: it holds a NUL byte, which mail text may not contain (RFC 5322 3.5); send binary data as a base64 attachment"},
			ResultNUL, buf.Len(), start, nil)
	}
	raw := buf.Bytes()

	vd := s.v.Verify(x.ctx, x.spf, raw)
	if m, ok := s.opts.Metrics.(VerdictMetrics); ok {
		m.Verdict(vd.SPF, vd.DKIM, vd.DMARC)
	}
	d := s.policy(vd)
	if d.refuse != nil {
		return x.refuse(d.refuse, d.result, len(raw), start, &vd)
	}
	class := Classify(raw, Envelope{Known: true, MailFrom: x.mailFrom})
	stored := Prepend(Prepend(StripAuthResults(raw, s.cfg.Hostname), x.received(s.opts.Now())), vd.AuthResults)
	auth := tickets.Auth{
		SPF: vd.SPF, DKIM: vd.DKIM, DMARC: vd.DMARC,
		Verified:    vd.Verified && !d.quarantine,
		Quarantined: d.quarantine,
		Results:     strings.TrimRight(vd.AuthResults, "\r\n"),
	}
	results, err := x.ingest(stored, auth, class)
	if err != nil {
		x.log.Error("storing failed", "remote", x.remote, "queues", x.queues, "err", err)
		return x.refuse(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
			Message: "could not store the message; try again later"}, ResultStorageError, len(raw), start, &vd)
	}
	result := ResultAccepted
	if d.quarantine {
		result = ResultQuarantined
	}
	s.opts.Metrics.Message(result, len(raw), time.Since(start))
	attrs := []any{"remote", x.remote, "size", len(raw), "spf", vd.SPF, "dkim", vd.DKIM, "dmarc", vd.DMARC,
		"verified", auth.Verified, "result", result}
	if class.Kind != "" {
		attrs = append(attrs, "kind", class.Kind)
	}
	for i, r := range results {
		attrs = append(attrs, "queue."+strconv.Itoa(i), x.queues[i], "ticket."+strconv.Itoa(i), r.Ticket, "outcome."+strconv.Itoa(i), r.Outcome)
	}
	x.log.Info("message", attrs...)
	return nil
}

// ingest files the message into every queue it was addressed to: one Ingest per queue, run
// together so that they share a group commit. Any failure fails the whole message (the
// client sends it again; tickets drops the copies already stored as duplicates).
func (x *session) ingest(raw []byte, auth tickets.Auth, class Class) ([]tickets.Result, error) {
	in := func(q string) tickets.Incoming {
		return tickets.Incoming{
			Queue: q, Raw: raw, Auth: auth, Via: "smtp", MailFrom: x.mailFrom,
			Remote: x.remote, Kind: class.Kind, BounceOf: class.BounceOf,
		}
	}
	if len(x.queues) == 1 {
		r, err := x.s.tk.Ingest(in(x.queues[0]))
		return []tickets.Result{r}, err
	}
	results := make([]tickets.Result, len(x.queues))
	errs := make([]error, len(x.queues))
	var wg sync.WaitGroup
	for i, q := range x.queues {
		wg.Go(func() { results[i], errs[i] = x.s.tk.Ingest(in(q)) })
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// readError maps an error from the DATA reader. go-smtp's own errors (ErrDataTooLarge: 552)
// are returned as they are; a plain error would become 554, a permanent failure, so anything
// that may be passing (a timeout, a dropped connection) becomes 451.
func (x *session) readError(err error, n int, start time.Time) error {
	var se *smtp.SMTPError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		result := ResultReadError
		if se == smtp.ErrDataTooLarge {
			result = ResultTooLarge
		}
		return x.refuse(se, result, n, start, nil)
	case errors.Is(err, smtp.ErrTooLongLine):
		return x.refuse(&smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
			Message: fmt.Sprintf("line too long (limit %d bytes); the message was not accepted", x.s.cfg.SMTP.MaxLineLength)},
			ResultReadError, n, start, nil)
	case errors.As(err, &ne) && ne.Timeout():
		return x.refuse(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
			Message: "timed out reading the message; try again"}, ResultReadError, n, start, nil)
	default:
		return x.refuse(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0},
			Message: "could not read the message; try again"}, ResultReadError, n, start, nil)
	}
}

// refuse records a refused or deferred message and returns the reply.
func (x *session) refuse(e *smtp.SMTPError, result string, size int, start time.Time, vd *Verdict) error {
	s := x.s
	s.opts.Metrics.Message(result, size, time.Since(start))
	attrs := []any{"remote", x.remote, "size", size, "result", result, "code", e.Code}
	if vd != nil {
		attrs = append(attrs, "spf", vd.SPF, "dkim", vd.DKIM, "dmarc", vd.DMARC, "from_domain", vd.FromDomain)
	}
	x.log.Info("message refused", attrs...)
	if s.opts.OnRefused != nil {
		s.opts.OnRefused(Refusal{
			Remote: x.remote, ConnID: x.id, HELO: cleanHELO(x.helo), MailFrom: x.mailFrom,
			Queues: append([]string(nil), x.queues...), Code: e.Code, Result: result,
			Reason: e.Message, Verdict: vd,
		})
	}
	return e
}

// Reset ends the transaction (after DATA, on RSET, on a repeated EHLO).
func (x *session) Reset() { x.endTx() }

// Logout ends the session (connection closed, or STARTTLS).
func (x *session) Logout() error {
	x.endTx()
	return nil
}

func (x *session) endTx() {
	x.clearTx()
	if x.c != nil {
		x.c.setTx(false)
	}
}

func (x *session) clearTx() {
	if x.cancel != nil {
		x.cancel() // stops SPF lookups nobody will read
	}
	x.hasFrom, x.mailFrom, x.queues, x.spf, x.cancel = false, "", nil, nil, nil
	x.ctx = x.s.ctx
}
