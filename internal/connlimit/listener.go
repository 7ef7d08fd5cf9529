package connlimit

import (
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// Listener applies a Limiter at Accept, before any protocol runs (neither go-smtp, go-imap
// nor net/http caps connections): a connection over a limit goes to Refuse and never reaches
// the server. Accepted connections give their slot back when closed.
type Listener struct {
	net.Listener
	Limiter *Limiter
	// Refuse tells a refused client why and closes c. It runs in the accept loop, so it must
	// not wait for the client (Reply and ReplyHTTP do not). nil closes c at once.
	Refuse func(c net.Conn, why Reason)
}

// Accept returns the next connection within the limits.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, why := l.Limiter.Acquire(IP(c.RemoteAddr()))
		if why != None {
			if l.Refuse != nil {
				l.Refuse(c, why)
			} else {
				c.Close()
			}
			continue
		}
		return &Conn{Conn: c, release: release}, nil
	}
}

// Conn is an accepted connection holding a slot until Close.
type Conn struct {
	net.Conn
	release func()
}

// Close closes the connection and gives its slot back.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// CloseWrite lets net/http half-close as it does on a bare TCP connection.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// IP returns the address of a TCP peer, nil for anything else.
func IP(a net.Addr) net.IP {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP
	}
	return nil
}

// Reply writes line and CRLF to a refused client and closes c. The client of a line protocol
// (SMTP, IMAP) waits for the greeting and has sent nothing, so the close is a clean FIN and the
// line arrives; a fresh socket's send buffer takes it at once, and the deadline only guards
// against a peer that does not read.
func Reply(c net.Conn, line string) {
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte(line + "\r\n"))
	c.Close()
}

// lingering bounds the refused HTTP connections kept open for a moment (see ReplyHTTP): a flood
// must not turn the refusals themselves into held descriptors.
var lingering = make(chan struct{}, 64)

// ReplyHTTP answers a refused plain-HTTP client with 503 and closes c. An HTTP client sends its
// request at once, and closing a socket with unread input resets it, which can destroy the
// answer before the client reads it; so the request is read and dropped for up to a second
// first, by at most 64 connections at a time (the rest are closed at once).
func ReplyHTTP(c net.Conn) {
	const body = "too many connections, try later\n"
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Retry-After: 5\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
	select {
	case lingering <- struct{}{}:
		go func() {
			defer func() { <-lingering }()
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			io.Copy(io.Discard, io.LimitReader(c, 64<<10))
			c.Close()
		}()
	default:
		c.Close()
	}
}

// Log says at most once per interval that connections were refused, with how many since the
// last line, so a flood cannot flood the log too.
type Log struct {
	Every time.Duration
	mu    sync.Mutex
	last  time.Time
	count int
}

// Refused counts one refusal and reports whether to log now, with the number of refusals the
// line stands for.
func (l *Log) Refused(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.count++
	if !l.last.IsZero() && now.Sub(l.last) < l.Every && now.After(l.last) {
		return false, 0
	}
	n := l.count
	l.last, l.count = now, 0
	return true, n
}
