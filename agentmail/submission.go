package agentmail

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

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/internal/connlimit"
	"mailgate/store"
	"mailgate/tickets"
)

// SubmissionOptions wires a Submission server.
type SubmissionOptions struct {
	Tickets *tickets.Service
	Access  *access.Service
	Audit   *audit.Log
	// TLSConfig carries the [smtp] certificate; AUTH is offered only over TLS. Without it only
	// loopback listeners are served (AUTH in plain text is allowed there).
	TLSConfig *tls.Config
	// TLSMode is TLSAuto (""; implicit TLS on port 465, STARTTLS elsewhere), TLSImplicit or
	// TLSStartTLS, for every listener ([smtp] submission_tls).
	TLSMode  string
	Hostname string // greeting name (cfg.Hostname)
	Logger   *slog.Logger
	// Limits; zero means the default in brackets.
	MaxMessageBytes int64         // [25 MiB] a reply with its attachments, as submitted (base64 grows them by a third)
	MaxRecipients   int           // [20]
	ReadTimeout     time.Duration // [5m] covers a whole DATA transfer (go-smtp sets it once)
	WriteTimeout    time.Duration // [1m]
	MaxConnsPerIP   int           // [10] one IPv4 address or IPv6 /64; a /48 gets three times this
	MaxConns        int           // [no cap] all listeners together ([smtp] submission_max_conns)
}

// Submission is the SMTP submission server for agents' mail clients (RFC 6409). It accepts an
// agent's answer to a ticket message and files it through tickets.Reply, the path the web
// page takes: tickets decides the recipients (the ticket's customer and participants), the
// queue address sends, outbound signs, encrypts and queues. The recipients select between a
// reply (To/Cc name the customer or the queue address; other Cc addresses join the ticket),
// an internal note (<queue local part>+note@<queue domain>) and a forward to colleagues or
// queues (tickets.Forward); anything else is refused, see plan.
type Submission struct {
	opts   SubmissionOptions
	log    *slog.Logger
	render *renderer // recognises the Message-IDs of rendered notes as ticket references

	secure *smtp.Server // non-loopback listeners: AUTH only over TLS
	local  *smtp.Server // loopback listeners: AUTH in plain text allowed

	conns   *connlimit.Limiter
	refused func(connlimit.Reason)

	mu        sync.Mutex
	closed    bool
	listeners []*limitListener
}

// submittedBucket remembers submissions already filed, by agent and Message-ID, so a client
// that lost our 250 and sends again does not answer the customer twice.
// Key: HMAC("submission", agent NUL message-id); value: U64(ticket).
const submittedBucket = "agentmail_submitted"

// NewSubmission returns a Submission server; call Serve for each listener.
func NewSubmission(opts SubmissionOptions) *Submission {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 25 << 20
	}
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = 20
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 5 * time.Minute
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = time.Minute
	}
	if opts.MaxConnsPerIP == 0 {
		opts.MaxConnsPerIP = 10
	}
	if opts.Hostname == "" {
		opts.Hostname = "localhost"
	}
	opts.TLSConfig = tlsConfig(opts.TLSConfig)
	s := &Submission{opts: opts, log: opts.Logger.With("component", "submission")}
	s.conns = connlimit.New(limits(opts.MaxConns, opts.MaxConnsPerIP))
	s.refused = refusalLog(s.log, s.conns)
	s.render = &renderer{hostname: opts.Hostname}
	mk := func(insecure bool) *smtp.Server {
		srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
		srv.Domain = opts.Hostname
		srv.TLSConfig = opts.TLSConfig
		srv.AllowInsecureAuth = insecure
		srv.MaxMessageBytes = opts.MaxMessageBytes
		srv.MaxRecipients = opts.MaxRecipients
		srv.MaxLineLength = 2000 // RFC 5321 4.5.3.1.6 allows 1000; mail clients stay below
		srv.ReadTimeout = opts.ReadTimeout
		srv.WriteTimeout = opts.WriteTimeout
		srv.ErrorLog = smtpLogger{s.log}
		return srv
	}
	s.secure, s.local = mk(false), mk(true)
	return s
}

// Serve answers SMTP submission on l until Close. A loopback listener allows AUTH in plain
// text; any other needs the TLS certificate (implicit TLS or STARTTLS by TLSMode).
func (s *Submission) Serve(l net.Listener) error { return s.serve(l, s.opts.TLSMode) }

// ServeTLS is Serve with TLS from the first byte whatever the port and mode.
func (s *Submission) ServeTLS(l net.Listener) error { return s.serve(l, TLSImplicit) }

// TLSMode describes what a listener on addr speaks: "implicit TLS", "STARTTLS", or why neither.
func (s *Submission) TLSMode(addr net.Addr) string {
	return describeTLS(s.opts.TLSConfig, s.opts.TLSMode, addr, implicitTLSSubmission)
}

func (s *Submission) serve(l net.Listener, mode string) error {
	pl, ll, loop, err := prepare(l, s.opts.TLSConfig, implicitTLSSubmission, mode, s.conns,
		"421 4.7.0 too many connections, try later", s.refused)
	if err != nil {
		l.Close()
		return fmt.Errorf("submission: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners = append(s.listeners, ll)
	s.mu.Unlock()
	srv := s.secure
	if loop {
		srv = s.local
	}
	err = srv.Serve(pl)
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if err != nil && !closed && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("submission on %s: %w", l.Addr(), err)
	}
	return nil
}

// Conns returns the connection limiter of the submission listeners (metrics, tests).
func (s *Submission) Conns() *connlimit.Limiter { return s.conns }

// Close stops the listeners and ends every connection now. A reply is committed before its
// 250, so an interrupted client sends again, and the second copy is recognised, not re-sent.
func (s *Submission) Close() error {
	if !s.markClosed() {
		return nil
	}
	var errs []error
	for _, srv := range []*smtp.Server{s.secure, s.local} {
		if err := srv.Close(); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.closeConns()
	return errors.Join(errs...)
}

// Shutdown stops the listeners, lets open conversations finish until ctx ends, then ends them.
func (s *Submission) Shutdown(ctx context.Context) error {
	if !s.markClosed() {
		return nil
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, srv := range []*smtp.Server{s.secure, s.local} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Shutdown(context.Background()); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return errors.Join(errs...)
	case <-ctx.Done():
	}
	for {
		s.closeConns()
		select {
		case <-done:
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Submission) markClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.closed = true
	return true
}

func (s *Submission) closeConns() {
	s.mu.Lock()
	ls := append([]*limitListener(nil), s.listeners...)
	s.mu.Unlock()
	for _, l := range ls {
		l.closeAll()
	}
}

// subSession is one SMTP conversation (go-smtp makes a new one after STARTTLS).
type subSession struct {
	srv    *Submission
	remote string
	tls    bool
	loop   bool

	agent *access.Agent
	actor access.Actor
	rcpts []string
}

func (s *Submission) newSession(c *smtp.Conn) (smtp.Session, error) {
	nc := c.Conn()
	return &subSession{srv: s, remote: remoteString(nc), tls: isTLS(nc), loop: isLoopback(nc.RemoteAddr())}, nil
}

func (ss *subSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (ss *subSession) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if !ss.tls && !ss.loop { // go-smtp already hides AUTH here; this holds if a listener is misfiled
			return &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "TLS is required to log in: use STARTTLS"}
		}
		ag, err := login(ss.srv.opts.Access, user, pass, ss.remote)
		if err != nil {
			switch classifyLogin(err) {
			case loginThrottled:
				return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: err.Error()}
			case loginDisabled:
				return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: err.Error()}
			case loginInternal:
				ss.srv.log.Error("app password check failed", "remote", ss.remote, "err", err)
				return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "temporary problem checking the password; try again"}
			}
			return smtp.ErrAuthFailed
		}
		// Checked after the password, so only a client that knows one can write this event
		// (an anonymous flood of AUTH commands cannot fill the audit log).
		if identity != "" && identity != user {
			if err := ss.srv.opts.Audit.Append(audit.Event{Actor: ag.Name, Action: "login.app", Object: "agent/" + ag.Name, Remote: ss.remote,
				Result: audit.Denied, Detail: "SASL authorization identity " + strconv.QuoteToASCII(clip(identity, 64)) + " is not the user name"}); err != nil {
				ss.srv.log.Error("audit submission refusal", "err", err)
			}
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "the authorization identity must be empty or your user name"}
		}
		ss.agent, ss.actor = ag, ag.Actor(ss.remote)
		return nil
	}), nil
}

func (ss *subSession) Mail(from string, _ *smtp.MailOptions) error {
	if ss.agent == nil {
		// Not audited: nobody has claimed to be an agent yet, and an anonymous client could
		// otherwise fill the audit log (and its fsyncs) with MAIL commands.
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "authentication required: log in with your mailgate app password (AUTH PLAIN)"}
	}
	if !strings.EqualFold(strings.TrimSpace(from), ss.agent.Email) {
		return ss.refuse(0, &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: fmt.Sprintf("MAIL FROM must be your own address <%s>", ss.agent.Email)},
			"envelope sender is not the agent's address: "+clip(cleanOneLine(from), 200))
	}
	return nil
}

func (ss *subSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.agent == nil {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *subSession) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "timed out reading the message; send it again"}
		}
		return err // ErrDataTooLarge keeps its 552
	}
	if ss.agent == nil {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	}
	return ss.file(raw)
}

func (ss *subSession) Reset()        { ss.rcpts = nil }
func (ss *subSession) Logout() error { return nil }

// refuse audits an agent's submission that never reaches tickets ("submission.refused") and
// returns e. If the audit record cannot be written the client is told to try again later.
func (ss *subSession) refuse(ticket uint64, e *smtp.SMTPError, detail string) error {
	actor := ss.agent.Name
	object := "submission"
	if ticket != 0 {
		object = fmt.Sprintf("ticket/%d", ticket)
	}
	err := ss.srv.opts.Audit.Append(audit.Event{Actor: actor, Action: "submission.refused", Object: object,
		Remote: ss.remote, Result: audit.Denied, Detail: detail})
	if err != nil {
		ss.srv.log.Error("audit submission refusal", "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary problem; try again"}
	}
	// The detail (addresses, names) stays in the sealed audit log, out of the plain-text log.
	ss.srv.log.Info("submission refused", "agent", actor, "remote", ss.remote, "code", e.Code)
	return e
}

func permanent(code int, class, detail int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{5, class, detail}, Message: msg}
}

// file turns a submitted message into a reply or a note. 250 is sent only after tickets has
// committed it (and its delivery job) durably.
func (ss *subSession) file(raw []byte) error {
	p := tickets.Parse(raw)
	if !strings.EqualFold(p.From, ss.agent.Email) {
		return ss.refuse(0, permanent(550, 7, 1, fmt.Sprintf("the From: header must be your own address <%s>", ss.agent.Email)),
			"From header is not the agent's address: "+clip(cleanOneLine(p.From), 200))
	}
	note, err := ss.noteMode()
	if err != nil {
		return err
	}
	id, ok := ss.ticketOf(p)
	if !ok {
		return ss.refuse(0, permanent(550, 7, 1, "this message names no ticket: answer a message of a ticket (In-Reply-To or References must name it)"),
			"no ticket reference")
	}
	in := inspect(raw, p)
	if in.encrypted {
		return ss.refuse(id, permanent(550, 7, 0, "mailgate cannot read encrypted submissions: send the reply unencrypted over this TLS connection; mailgate encrypts to the customer itself"),
			"encrypted submission")
	}
	if len(in.broken) > 0 {
		return ss.refuse(id, permanent(550, 6, 0, "the message's MIME structure cannot be taken apart ("+clip(strings.Join(in.broken, ", "), 200)+"): send the text and attach files directly"),
			"unreadable structure")
	}
	if note && len(in.attachments) > 0 {
		return ss.refuse(id, permanent(550, 6, 0, "a note carries text only: attach files to a reply or a forward ("+clip(strings.Join(in.extra, ", "), 200)+")"),
			fmt.Sprintf("note with attachments: %d", len(in.attachments)))
	}
	var pl plan
	if !note {
		ad, err := ss.srv.opts.Tickets.Addressing(ss.actor, id, "ticket.reply")
		if errors.Is(err, tickets.ErrNotFound) {
			return permanent(550, 7, 1, fmt.Sprintf("ticket #%d is not in your queues (or no longer exists)", id))
		}
		if err != nil {
			ss.srv.log.Error("ticket addressing", "agent", ss.agent.Name, "ticket", id, "err", err)
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary problem; try again"}
		}
		var perr *smtp.SMTPError
		var detail string
		if pl, perr, detail = ss.plan(p, ad, id); perr != nil {
			return ss.refuse(id, perr, detail)
		}
	}
	key := ss.dedupeKey(p.MessageID)
	if key != nil && ss.seenBefore(key) {
		ss.srv.log.Info("duplicate submission ignored", "agent", ss.agent.Name, "ticket", id)
		return nil
	}
	what := "reply"
	switch {
	case note:
		what = "note"
		_, err = ss.srv.opts.Tickets.AddNote(ss.actor, id, replyText(p, in))
	case pl.forward:
		what = "forward"
		_, err = ss.srv.opts.Tickets.Forward(ss.actor, id, forwardText(p, in), pl.to, in.attachments)
	default:
		_, err = ss.srv.opts.Tickets.ReplyWith(ss.actor, id, replyText(p, in),
			tickets.ReplyOptions{Cc: pl.cc, Attachments: customerAttachments(in.attachments)})
	}
	switch {
	case err == nil:
	case errors.Is(err, tickets.ErrNotFound):
		// tickets audited the denial.
		return permanent(550, 7, 1, fmt.Sprintf("ticket #%d is not in your queues (or no longer exists)", id))
	case errors.Is(err, tickets.ErrForbidden):
		return permanent(550, 7, 1, fmt.Sprintf("you may not write in the queue of ticket #%d", id))
	case errors.Is(err, tickets.ErrInvalid):
		return ss.refuse(id, permanent(550, 6, 0, err.Error()), what+": "+err.Error())
	case errors.Is(err, tickets.ErrNotSent):
		// Composing failed for a reason retrying will not fix (PGP policy, a bad address);
		// tickets audited it and left a note on the ticket.
		return permanent(554, 7, 0, err.Error())
	default:
		ss.srv.log.Error("file submission", "agent", ss.agent.Name, "ticket", id, "what", what, "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary problem filing the " + what + "; try again"}
	}
	if key != nil {
		ss.remember(key, id)
	}
	ss.srv.log.Info("submission filed", "agent", ss.agent.Name, "ticket", id, "what", what)
	return nil
}

// noteMode reports whether the message is a note: its recipients are note addresses of a
// queue. A mix of note addresses and others is refused, because it is unclear what is meant.
func (ss *subSession) noteMode() (bool, error) {
	notes := 0
	for _, r := range ss.rcpts {
		if ss.isNoteAddress(r) {
			notes++
		}
	}
	if notes > 0 && notes != len(ss.rcpts) {
		return false, ss.refuse(0, permanent(550, 5, 3, "a note goes to the note address alone (<queue>+note@<domain>); send the reply to the customer as a separate message"),
			"note address mixed with other recipients")
	}
	return notes > 0, nil
}

func (ss *subSession) isNoteAddress(addr string) bool {
	addr = strings.Trim(strings.TrimSpace(addr), "<>")
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return false
	}
	local, domain := addr[:at], addr[at+1:]
	base, tag, ok := strings.Cut(local, "+")
	if !ok || !strings.EqualFold(tag, "note") {
		return false
	}
	for _, q := range ss.srv.opts.Tickets.Queues() {
		if strings.EqualFold(q.Address, base+"@"+domain) {
			return true
		}
	}
	return false
}

// ticketOf finds the ticket the message answers: the nearest referenced message that mailgate
// knows (In-Reply-To first, then References from the last), or a rendered note's Message-ID.
// Whether the agent may answer in that ticket is tickets' decision.
func (ss *subSession) ticketOf(p *tickets.Parsed) (uint64, bool) {
	refs := append([]string(nil), p.InReplyTo...)
	for i := len(p.References) - 1; i >= 0; i-- {
		refs = append(refs, p.References[i])
	}
	for _, id := range refs {
		if t, _, ok := ss.srv.opts.Tickets.FindMessage(id); ok {
			return t, true
		}
		if t, ok := ss.srv.render.parseViewID(id); ok {
			return t, true
		}
	}
	return 0, false
}

func (ss *subSession) dedupeKey(msgID string) []byte {
	if msgID == "" {
		return nil
	}
	return ss.srv.opts.Tickets.DB().Index("submission", ss.agent.Name+"\x00"+strings.ToLower(msgID))
}

func (ss *subSession) seenBefore(key []byte) bool {
	var found bool
	ss.srv.opts.Tickets.DB().View(func(tx *store.Tx) error {
		v, err := tx.GetPlain(submittedBucket, key)
		found = err == nil && v != nil
		return nil
	})
	return found
}

// remember records a filed submission. It runs after tickets' commit: if it fails, a resent
// copy would be filed again, which is logged; the customer's answer itself is safe.
func (ss *subSession) remember(key []byte, ticket uint64) {
	err := ss.srv.opts.Tickets.DB().Batch(func(tx *store.Tx) error {
		return tx.PutPlain(submittedBucket, key, store.U64(ticket))
	})
	if err != nil {
		ss.srv.log.Warn("remember submission", "ticket", ticket, "err", err)
	}
}

// smtpLogger sends go-smtp's messages to slog; they carry no message content.
type smtpLogger struct{ l *slog.Logger }

func (l smtpLogger) Printf(format string, v ...any) { l.l.Warn(fmt.Sprintf(format, v...)) }
func (l smtpLogger) Println(v ...any)               { l.l.Warn(strings.TrimSpace(fmt.Sprintln(v...))) }
