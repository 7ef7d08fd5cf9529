package agentmail

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"mailgate/internal/connlimit"
)

// Ports on which a listener in TLSAuto mode speaks TLS from the first byte (RFC 8314);
// everything else offers STARTTLS.
const (
	implicitTLSIMAP       = 993
	implicitTLSSubmission = 465
)

// TLS modes of a listener ([smtp] submission_tls, [imap] tls).
const (
	// TLSAuto is implicit TLS on the well-known port (465, 993) and STARTTLS elsewhere: what
	// mailgate did before the mode could be set, kept as the default so that existing
	// installations serve their clients as before.
	TLSAuto     = "auto"
	TLSImplicit = "implicit" // TLS from the first byte, whatever the port
	TLSStartTLS = "starttls" // plain text until STARTTLS, whatever the port
)

// implicitFor reports whether a listener on addr speaks TLS from the first byte.
func implicitFor(mode string, addr net.Addr, implicitPort int) bool {
	switch mode {
	case TLSImplicit:
		return true
	case TLSStartTLS:
		return false
	}
	return port(addr) == implicitPort
}

// describeTLS is what the start-up lines and the log say about a listener: the mode it
// really serves, with the reason when it is not the configured one.
func describeTLS(cfg *tls.Config, mode string, addr net.Addr, implicitPort int) string {
	switch {
	case cfg == nil && isLoopback(addr):
		return "plain text: loopback only, no certificate"
	case cfg == nil:
		return "refused: no certificate for a non-loopback address"
	case implicitFor(mode, addr, implicitPort):
		return "implicit TLS"
	default:
		return "STARTTLS"
	}
}

// errNoTLS is returned by Serve for a listener that would carry passwords in the clear.
var errNoTLS = errors.New("no TLS certificate is configured, so only a loopback address may be served; set tls_cert and tls_key or listen on 127.0.0.1")

// isLoopback reports whether addr (a listener's or a peer's) is a loopback address.
func isLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case nil:
		return false
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func port(addr net.Addr) int {
	_, p, err := net.SplitHostPort(addr.String())
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// tlsConfig copies c and raises its floor to TLS 1.2 (STYLE.md).
func tlsConfig(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	c = c.Clone()
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}

// limitListener applies a service's connection caps at accept, before any protocol runs
// (neither go-imap nor go-smtp caps connections), and remembers the live connections so a
// shutdown that runs out of patience can end them. A refused client is told refuse (unless
// the listener speaks TLS from the first byte, where plain text would be garbage) and closed.
type limitListener struct {
	net.Listener
	lim     *connlimit.Limiter
	refuse  string                 // the line a refused client reads; "" = close at once
	refused func(connlimit.Reason) // told about each refusal (logs); may be nil

	mu   sync.Mutex
	live map[*limitConn]struct{}
}

func newLimitListener(l net.Listener, lim *connlimit.Limiter, refuse string, refused func(connlimit.Reason)) *limitListener {
	return &limitListener{Listener: l, lim: lim, refuse: refuse, refused: refused, live: map[*limitConn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, why := l.lim.Acquire(connlimit.IP(c.RemoteAddr()))
		if why != connlimit.None {
			if l.refused != nil {
				l.refused(why)
			}
			if l.refuse != "" {
				connlimit.Reply(c, l.refuse)
			} else {
				c.Close()
			}
			continue
		}
		lc := &limitConn{Conn: c}
		lc.release = func() {
			release()
			l.mu.Lock()
			delete(l.live, lc)
			l.mu.Unlock()
		}
		l.mu.Lock()
		l.live[lc] = struct{}{}
		l.mu.Unlock()
		return lc, nil
	}
}

// closeAll ends every live connection.
func (l *limitListener) closeAll() {
	l.mu.Lock()
	live := make([]*limitConn, 0, len(l.live))
	for c := range l.live {
		live = append(live, c)
	}
	l.mu.Unlock()
	for _, c := range live {
		c.Close()
	}
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// limits are the caps of one agentmail service: max is all its listeners together, perIP one
// IPv4 address or IPv6 /64, and a /48 may hold three clients' worth.
func limits(max, perIP int) connlimit.Limits {
	return connlimit.Limits{Total: max, PerClient: perIP, PerNet48: 3 * perIP}
}

// refusalLog logs refusals of service at most every 10 s, with their count.
func refusalLog(log *slog.Logger, lim *connlimit.Limiter) func(connlimit.Reason) {
	every := &connlimit.Log{Every: 10 * time.Second}
	return func(why connlimit.Reason) {
		if ok, n := every.Refused(time.Now()); ok {
			l := lim.Limits()
			log.Warn("connections refused", "reason", string(why), "refused", n, "open", lim.Open(),
				"max_conns", l.Total, "max_conns_per_ip", l.PerClient)
		}
	}
}

// prepare wraps l for serving: the connection caps, then TLS from the first byte when mode says
// so (TLSAuto: on implicitPort). It refuses a non-loopback listener without TLS, and an
// explicit implicit-TLS listener without a certificate. A client over a cap is told refuse,
// unless the listener speaks TLS from the first byte, where plain text would be garbage.
func prepare(l net.Listener, cfg *tls.Config, implicitPort int, mode string, lim *connlimit.Limiter, refuse string, refused func(connlimit.Reason)) (net.Listener, *limitListener, bool, error) {
	loop := isLoopback(l.Addr())
	if cfg == nil && !loop {
		return nil, nil, false, fmt.Errorf("%s: %w", l.Addr(), errNoTLS)
	}
	switch mode {
	case "", TLSAuto, TLSImplicit, TLSStartTLS:
	default:
		return nil, nil, false, fmt.Errorf("%s: unknown TLS mode %q (want auto, implicit or starttls)", l.Addr(), mode)
	}
	if mode == TLSImplicit && cfg == nil {
		return nil, nil, false, fmt.Errorf("%s: implicit TLS needs a certificate: %w", l.Addr(), errNoTLS)
	}
	tlsFirst := cfg != nil && implicitFor(mode, l.Addr(), implicitPort)
	if tlsFirst {
		refuse = ""
	}
	ll := newLimitListener(l, lim, refuse, refused)
	var out net.Listener = ll
	if tlsFirst {
		out = tls.NewListener(ll, cfg)
	}
	return out, ll, loop, nil
}

// remoteString is the peer address as access and audit record it.
func remoteString(c net.Conn) string {
	if c == nil || c.RemoteAddr() == nil {
		return ""
	}
	return c.RemoteAddr().String()
}

// isTLS reports whether c is a TLS connection (implicit or after STARTTLS).
func isTLS(c net.Conn) bool {
	_, ok := c.(*tls.Conn)
	return ok
}

// clip shortens s for logs and audit details.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// cleanOneLine removes control characters so a value cannot break a header or a log line.
func cleanOneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' {
			return ' '
		}
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
