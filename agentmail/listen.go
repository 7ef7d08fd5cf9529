package agentmail

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
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

// ipKey is the unit the connection limit counts: one IPv4 address or one IPv6 /64.
func ipKey(addr net.Addr) string {
	ta, ok := addr.(*net.TCPAddr)
	if !ok || ta.IP == nil {
		return "unknown"
	}
	if v4 := ta.IP.To4(); v4 != nil {
		return v4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// limitListener closes connections beyond max per client address at accept, before any
// protocol runs (neither go-imap nor go-smtp caps connections), and remembers the live ones so
// a shutdown that runs out of patience can end them.
type limitListener struct {
	net.Listener
	max int // <= 0: no cap

	mu   sync.Mutex
	n    map[string]int
	live map[*limitConn]struct{}
}

func newLimitListener(l net.Listener, max int) *limitListener {
	return &limitListener{Listener: l, max: max, n: map[string]int{}, live: map[*limitConn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		k := ipKey(c.RemoteAddr())
		l.mu.Lock()
		ok := l.max <= 0 || l.n[k] < l.max
		var lc *limitConn
		if ok {
			l.n[k]++
			lc = &limitConn{Conn: c}
			lc.release = func() { l.release(k, lc) }
			l.live[lc] = struct{}{}
		}
		l.mu.Unlock()
		if !ok {
			c.Close()
			continue
		}
		return lc, nil
	}
}

func (l *limitListener) release(k string, c *limitConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.live, c)
	if l.n[k] <= 1 {
		delete(l.n, k)
		return
	}
	l.n[k]--
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

// prepare wraps l for serving: a connection cap, then TLS from the first byte when mode says
// so (TLSAuto: on implicitPort). It refuses a non-loopback listener without TLS, and an
// explicit implicit-TLS listener without a certificate.
func prepare(l net.Listener, cfg *tls.Config, implicitPort int, mode string, maxPerIP int) (net.Listener, *limitListener, bool, error) {
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
	ll := newLimitListener(l, maxPerIP)
	var out net.Listener = ll
	if cfg != nil && implicitFor(mode, l.Addr(), implicitPort) {
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
