package outbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// transport delivers jobs; one transport serves one worker goroutine for one round, so a relay
// connection is reused for several messages.
type transport interface {
	send(ctx context.Context, j *job, raw []byte) []result
	close()
}

func (o *Outbound) newTransport() transport {
	if o.relay == "" {
		return &outboxTransport{dir: o.outbox}
	}
	return &smtpTransport{o: o}
}

// allResults gives every recipient the same outcome.
func allResults(rcpts []string, err error, perm bool) []result {
	out := make([]result, len(rcpts))
	for i, r := range rcpts {
		out[i] = result{rcpt: r, err: err, perm: perm}
	}
	return out
}

// outboxTransport is dev mode: each message becomes one .eml file in <data_dir>/outbox,
// written atomically (temp file, fsync, rename, fsync of the directory). The name comes from
// the job, so a retry after a crash replaces the file instead of adding a second copy.
type outboxTransport struct{ dir string }

func (t *outboxTransport) send(_ context.Context, j *job, raw []byte) []result {
	name := fmt.Sprintf("%s-t%d-m%d-j%d.eml", j.Created.UTC().Format("20060102T150405.000000000Z"), j.Ticket, j.Seq, j.ID)
	if err := writeAtomic(t.dir, name, raw); err != nil {
		return allResults(j.Rcpts, fmt.Errorf("outbox: %w", err), false)
	}
	return allResults(j.Rcpts, nil, false)
}

func (t *outboxTransport) close() {}

func writeAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, ".tmp-*.eml") // mode 0600: customer mail
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// smtpTransport speaks to the relay with go-smtp's client.
type smtpTransport struct {
	o      *Outbound
	c      *smtp.Client
	conn   net.Conn // the TCP connection under c (deadlines)
	unhook func() bool
}

// replyError is the relay's answer to one command, written as agents and admins know SMTP
// replies: "RCPT TO: 550 5.1.1 no such user".
type replyError struct {
	stage string
	err   *smtp.SMTPError
}

func (e *replyError) Error() string {
	code := strconv.Itoa(e.err.Code)
	if ec := e.err.EnhancedCode; ec != smtp.EnhancedCodeNotSet && ec[0] > 0 {
		code += fmt.Sprintf(" %d.%d.%d", ec[0], ec[1], ec[2])
	}
	return e.stage + ": " + code + " " + e.err.Message
}

func (e *replyError) Unwrap() error { return e.err }

func stageErr(stage string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &replyError{stage: stage, err: se}
	}
	return fmt.Errorf("%s: %w", stage, err)
}

// connError marks errors after which the connection cannot be reused.
type connError struct{ err error }

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

func (t *smtpTransport) send(ctx context.Context, j *job, raw []byte) []result {
	if t.c == nil {
		if err := t.dial(ctx); err != nil {
			// Connecting, TLS and AUTH problems are ours or the relay's, never the
			// recipient's: retry until give_up_after rather than bounce the reply.
			t.o.log.Error("relay unusable", "relay", t.o.relay, "tls", t.o.relayTLS, "err", err)
			return allResults(j.Rcpts, err, false)
		}
	}
	res, broken := t.transaction(j, raw)
	if broken {
		t.drop()
	}
	return res
}

// classify turns a client error into (permanent?, connection still usable?).
func classify(err error) (perm, usable bool) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code == 421 {
			return false, false // the server is closing the connection
		}
		return se.Code >= 500, true
	}
	return false, false
}

func (t *smtpTransport) transaction(j *job, raw []byte) ([]result, bool) {
	c := t.c
	if err := c.Mail(j.From, &smtp.MailOptions{Size: int64(len(raw))}); err != nil {
		perm, usable := classify(err)
		if usable {
			c.Reset()
		}
		return allResults(j.Rcpts, stageErr("MAIL FROM", err), perm), !usable
	}
	res := make([]result, 0, len(j.Rcpts))
	var accepted []string
	for i, r := range j.Rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			perm, usable := classify(err)
			res = append(res, result{rcpt: r, err: stageErr("RCPT TO", err), perm: perm})
			if !usable {
				for _, rest := range j.Rcpts[i+1:] {
					res = append(res, result{rcpt: rest, err: err})
				}
				for _, a := range accepted {
					res = append(res, result{rcpt: a, err: err})
				}
				return res, true
			}
			continue
		}
		accepted = append(accepted, r)
	}
	if len(accepted) == 0 {
		c.Reset()
		return res, false
	}
	fail := func(err error) ([]result, bool) {
		perm, usable := classify(err)
		for _, a := range accepted {
			res = append(res, result{rcpt: a, err: stageErr("DATA", err), perm: perm})
		}
		return res, !usable
	}
	w, err := c.Data()
	if err != nil {
		if _, usable := classify(err); usable {
			c.Reset()
		}
		return fail(err)
	}
	// go-smtp clears deadlines after each command; the body write needs its own.
	t.conn.SetWriteDeadline(time.Now().Add(t.o.opts.DataTimeout))
	if _, err := w.Write(raw); err != nil {
		return fail(&connError{err})
	}
	if _, err := w.CloseWithResponse(); err != nil {
		return fail(err)
	}
	for _, a := range accepted {
		res = append(res, result{rcpt: a})
	}
	return res, false
}

// dial connects, secures, greets and authenticates as [outbound] says.
func (t *smtpTransport) dial(ctx context.Context) error {
	o := t.o
	d := net.Dialer{Timeout: o.opts.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", o.relay)
	if err != nil {
		return fmt.Errorf("connect to relay %s: %w", o.relay, err)
	}
	if o.relayTLS == TLSNone {
		if ap, ok := conn.RemoteAddr().(*net.TCPAddr); !ok || !ap.IP.IsLoopback() {
			conn.Close()
			return fmt.Errorf("relay %s resolved to %v, which is not a loopback address; relay_tls = \"none\" is refused", o.relay, conn.RemoteAddr())
		}
	}
	// Stop closes the connection at once; a relay that stalls during setup is cut off.
	unhook := context.AfterFunc(ctx, func() { conn.Close() })
	watchdog := time.AfterFunc(o.opts.CommandTimeout, func() { conn.Close() })
	defer watchdog.Stop()
	fail := func(err error) error {
		unhook()
		conn.Close()
		return err
	}
	tlsCfg := &tls.Config{ServerName: o.relayHost, MinVersion: tls.VersionTLS12, RootCAs: o.opts.RootCAs}
	var c *smtp.Client
	switch o.relayTLS {
	case TLSImplicit:
		tc := tls.Client(conn, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(fmt.Errorf("TLS with relay %s: %w", o.relay, err))
		}
		c = smtp.NewClient(tc)
	case TLSStartTLS:
		// The EHLO before STARTTLS says "localhost" (go-smtp); ours follows inside TLS.
		c, err = smtp.NewClientStartTLS(conn, tlsCfg)
		if err != nil {
			return fail(fmt.Errorf("relay %s: STARTTLS failed or is not offered; refusing to send in clear text (relay_tls = \"starttls\"): %w", o.relay, err))
		}
	default:
		c = smtp.NewClient(conn)
	}
	c.CommandTimeout = o.opts.CommandTimeout
	c.SubmissionTimeout = o.opts.DataTimeout
	// The TLS handshake of STARTTLS is lazy: a bad certificate shows up here.
	if err := c.Hello(o.hostname); err != nil {
		c.Close()
		return fail(fmt.Errorf("relay %s: EHLO: %w", o.relay, err))
	}
	if o.relayTLS != TLSNone {
		st, ok := c.TLSConnectionState()
		if !ok || !st.HandshakeComplete {
			c.Close()
			return fail(fmt.Errorf("relay %s: the connection is not encrypted; refusing to send", o.relay))
		}
	}
	if o.username != "" {
		if ok := c.SupportsAuth(sasl.Plain); !ok {
			c.Close()
			return fail(fmt.Errorf("relay %s does not offer AUTH PLAIN", o.relay))
		}
		if err := c.Auth(sasl.NewPlainClient("", o.username, o.password)); err != nil {
			c.Close()
			// The error is the relay's reply; it never contains our password.
			return fail(fmt.Errorf("relay %s: AUTH PLAIN as %s: %w", o.relay, o.username, err))
		}
	}
	if !watchdog.Stop() {
		c.Close()
		return fail(fmt.Errorf("relay %s: no answer within %s", o.relay, o.opts.CommandTimeout))
	}
	t.c, t.conn, t.unhook = c, conn, unhook
	return nil
}

func (t *smtpTransport) drop() {
	if t.c != nil {
		t.c.Close()
	}
	if t.unhook != nil {
		t.unhook()
	}
	t.c, t.conn, t.unhook = nil, nil, nil
}

func (t *smtpTransport) close() {
	if t.c != nil {
		t.c.Quit() // also closes
	}
	t.drop()
}
