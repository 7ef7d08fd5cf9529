package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

// upstream is one connection to the upstream server. Every command runs under a watchdog
// (do): the client library waits forever for an answer that never comes.
type upstream struct {
	c       *imapclient.Client
	raw     net.Conn
	timeout time.Duration
	// events gets a token for every EXISTS the server sends; the handler runs on the
	// library's reader goroutine, so it only hands the news over and never blocks.
	events chan struct{}
	idle   bool // the server offers IDLE
	move   bool // the server offers MOVE (else the library copies, flags and expunges)
}

// do runs fn, a command and its wait, closing the connection if it takes longer than d or
// ctx ends first. Closing makes the pending command fail, so fn always returns.
func (u *upstream) do(ctx context.Context, what string, d time.Duration, fn func() error) error {
	var fired atomic.Bool
	t := time.AfterFunc(d, func() {
		fired.Store(true)
		u.raw.Close()
	})
	stop := context.AfterFunc(ctx, func() { u.raw.Close() })
	err := fn()
	t.Stop()
	stop()
	switch {
	case fired.Load():
		return fmt.Errorf("%s: no answer within %s; connection closed", what, d)
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// close ends the connection; polite when the server still answers.
func (u *upstream) close(logout bool) {
	if logout && u.c != nil {
		_ = u.do(context.Background(), "LOGOUT", 5*time.Second, func() error { return u.c.Logout().Wait() })
	}
	if u.c != nil {
		u.c.Close()
	} else {
		u.raw.Close()
	}
}

// connect dials, negotiates TLS as configured, waits for the greeting and logs in.
func (f *Fetcher) connect(ctx context.Context) (*upstream, error) {
	password, err := f.password()
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: f.opts.CommandTimeout, KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", f.addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", f.addr, err)
	}
	u := &upstream{raw: raw, timeout: f.opts.CommandTimeout, events: make(chan struct{}, 1)}
	opts := &imapclient.Options{
		TLSConfig: f.tlsConfig(),
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					select {
					case u.events <- struct{}{}:
					default: // one pending token is enough: the sync reads everything new
					}
				}
			},
		},
	}
	ok := false
	defer func() {
		if !ok {
			u.close(false)
		}
	}()
	switch f.acct.TLS {
	case "implicit":
		tc := tls.Client(raw, opts.TLSConfig)
		if err := u.do(ctx, "TLS handshake with "+f.addr, u.timeout, func() error { return tc.HandshakeContext(ctx) }); err != nil {
			return nil, err
		}
		u.c = imapclient.New(tc, opts)
	case "starttls":
		// NewStartTLS sends STARTTLS whatever the server advertises: no fallback to clear text.
		err := u.do(ctx, "STARTTLS with "+f.addr, u.timeout, func() error {
			c, err := imapclient.NewStartTLS(raw, opts)
			u.c = c
			return err
		})
		if err != nil {
			return nil, err
		}
	default: // "none": loopback only, checked by config and parseURL
		u.c = imapclient.New(raw, opts)
	}
	var caps imap.CapSet
	err = u.do(ctx, "greeting from "+f.addr, u.timeout, func() error {
		if err := u.c.WaitGreeting(); err != nil {
			return err
		}
		caps = u.c.Caps()
		if caps == nil {
			return errors.New("no CAPABILITY answer")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if u.c.State() == imap.ConnStateNotAuthenticated {
		if err := f.login(ctx, u, caps, password); err != nil {
			return nil, err
		}
	}
	// Capabilities may change after login (the OK carries the new list).
	err = u.do(ctx, "CAPABILITY", u.timeout, func() error {
		caps = u.c.Caps()
		if caps == nil {
			return errors.New("no answer")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	u.idle = caps.Has(imap.CapIdle) || caps.Has(imap.CapIMAP4rev2)
	u.move = caps.Has(imap.CapMove) || caps.Has(imap.CapIMAP4rev2)
	ok = true
	return u, nil
}

// login prefers AUTHENTICATE PLAIN and falls back to LOGIN. The password never reaches a
// log: errors carry the server's text only.
func (f *Fetcher) login(ctx context.Context, u *upstream, caps imap.CapSet, password string) error {
	user := f.acct.Username
	if caps.Has(imap.AuthCap(sasl.Plain)) {
		return u.do(ctx, "AUTHENTICATE PLAIN as "+user, u.timeout, func() error {
			return u.c.Authenticate(sasl.NewPlainClient("", user, password))
		})
	}
	if caps.Has(imap.CapLoginDisabled) {
		return fmt.Errorf("log in as %s: the server offers neither AUTH=PLAIN nor LOGIN", user)
	}
	return u.do(ctx, "LOGIN as "+user, u.timeout, func() error { return u.c.Login(user, password).Wait() })
}

// password reads password_file now, so that a changed password needs no restart.
func (f *Fetcher) password() (string, error) {
	b, err := os.ReadFile(f.acct.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("read password_file: %w", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", fmt.Errorf("password_file %s is empty", f.acct.PasswordFile)
	}
	return p, nil
}

func (f *Fetcher) tlsConfig() *tls.Config {
	var tc *tls.Config
	if f.opts.TLSConfig != nil {
		tc = f.opts.TLSConfig.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc.ServerName = f.host
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	return tc
}

// selectMailbox opens the configured mailbox read-write (flags and moves need it).
func (f *Fetcher) selectMailbox(ctx context.Context, u *upstream) (*imap.SelectData, error) {
	var sel *imap.SelectData
	err := u.do(ctx, "SELECT "+f.mailbox, u.timeout, func() error {
		var err error
		sel, err = u.c.Select(f.mailbox, nil).Wait()
		return err
	})
	return sel, err
}

// errClosed reports a connection the server (or the network) ended between commands.
var errClosed = errors.New("connection closed by the server")

// waitForMail returns when there may be new mail: an EXISTS during IDLE, the recheck
// interval while idling, or the poll interval without IDLE. It returns ctx.Err() once ctx
// ends, with IDLE already stopped.
func (f *Fetcher) waitForMail(ctx context.Context, u *upstream) error {
	if !u.idle {
		t := time.NewTimer(f.acct.Poll.Duration)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-u.events: // unilateral EXISTS after the last command: no need to wait
			return nil
		case <-u.c.Closed():
			return errClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var idle *imapclient.IdleCommand
	err := u.do(ctx, "IDLE", u.timeout, func() error {
		var err error
		idle, err = u.c.Idle()
		return err
	})
	if err != nil {
		return err
	}
	t := time.NewTimer(f.opts.IdleRecheck)
	defer t.Stop()
	var cause error
	select {
	case <-u.events:
	case <-t.C:
	case <-u.c.Closed():
		cause = errClosed
	case <-ctx.Done():
		cause = ctx.Err()
	}
	// Stop IDLE before any other command: the library refuses commands while it runs.
	stopCtx := ctx
	if ctx.Err() != nil {
		stopCtx = context.Background() // stop politely, then log out
	}
	err = u.do(stopCtx, "DONE (end of IDLE)", u.timeout, func() error {
		if err := idle.Close(); err != nil {
			return err
		}
		return idle.Wait()
	})
	if cause != nil {
		return cause
	}
	return err
}
