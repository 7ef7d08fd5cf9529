package inbound

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"mailgate/config"
)

// dialFrom connects to addr from the loopback address local (any 127.x.y.z works on Linux
// without configuration), so a test can be many clients.
func dialFrom(t testing.TB, addr, local string) *rawConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// TestServerMaxConns fills [smtp] max_conns from many addresses, each under its own per-address
// limit: the next client, from yet another address, gets 421 and is closed at once.
func TestServerMaxConns(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.MaxConns = 6; c.SMTP.MaxConnsPerIP = 2 }, nil)
	for i := range 6 {
		r := dialFrom(t, e.addr, "127.0.9."+string(rune('1'+i/2)))
		r.expect(r.reply(), "220")
	}
	over := dialFrom(t, e.addr, "127.0.9.200")
	if got := over.reply(); got != "421 4.7.0 too many connections, try later" {
		t.Fatalf("over max_conns: %q", got)
	}
	over.expect(over.reply(), "EOF")
	if n := e.metrics.get("conn full"); n != 1 {
		t.Fatalf("full counted %d times", n)
	}
	if open := e.srv.Conns().Open(); open != 6 {
		t.Fatalf("%d connections hold a slot, want 6", open)
	}
}

// TestServerBusyIdleTimeout: once 3/4 of max_conns are taken, connections waiting for a command
// get busy_idle_timeout, counted from when they began to wait, also those that began while the
// server was quiet. A transaction under way keeps idle_timeout and completes.
func TestServerBusyIdleTimeout(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) {
		c.SMTP.MaxConns = 8
		c.SMTP.IdleTimeout = config.Duration{Duration: time.Minute}
		c.SMTP.BusyIdleTimeout = config.Duration{Duration: 300 * time.Millisecond}
	}, nil)
	tx := dialFrom(t, e.addr, "127.0.0.1") // good.example's SPF names 127.0.0.1
	tx.expect(tx.reply(), "220")
	tx.expect(tx.cmd("EHLO client.good.example"), "250")
	tx.expect(tx.cmd("MAIL FROM:<alice@good.example>"), "250")
	tx.expect(tx.cmd("RCPT TO:<support@example.com>"), "250")

	early := dialFrom(t, e.addr, "127.0.8.2") // waits with the quiet server's minute
	early.expect(early.reply(), "220")
	early.expect(early.cmd("EHLO idle.example"), "250")

	var flood []*rawConn
	for i := range 4 { // 6 of 8: busy
		r := dialFrom(t, e.addr, "127.0.8."+string(rune('3'+i)))
		r.expect(r.reply(), "220")
		flood = append(flood, r)
	}
	// Each idle connection is told and closed well before the minute (the read deadline of
	// dialFrom is 30 s, so a connection still waiting for its minute fails the test).
	for i, r := range append(flood, early) {
		if got := r.reply(); !strings.HasPrefix(got, "421 4.4.2") {
			t.Fatalf("idle connection %d: %q, want 421 4.4.2", i, got)
		}
	}
	tx.expect(tx.cmd("DATA"), "354")
	tx.write(strings.ReplaceAll(string(srvMail("alice@good.example", "busy", "busy@good.example")), "\r\n.", "\r\n..") + "\r\n.\r\n")
	tx.expect(tx.reply(), "250")
}

// TestServerIdleTimeout: a client that sends nothing after the greeting is closed after
// idle_timeout, while the message itself has read_timeout.
func TestServerIdleTimeout(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) {
		c.SMTP.IdleTimeout = config.Duration{Duration: 200 * time.Millisecond}
		c.SMTP.ReadTimeout = config.Duration{Duration: time.Minute}
	}, nil)
	r := dialRaw(t, e.addr)
	r.expect(r.reply(), "220")
	r.expect(r.reply(), "421 4.4.2")
}

// TestServerIPv6Limits: a client walking the addresses of its /64 is one client, and one walking
// the /64s of its /48 stops at max_conns_per_ipv6_48. Driven through the listener with
// addresses set by a fake, since tests bind loopback only.
func TestServerIPv6Limits(t *testing.T) {
	e := newSrvEnv(t, func(c *config.Config) { c.SMTP.MaxConnsPerIP = 2; c.SMTP.MaxConnsPerIPv6Net48 = 3 }, nil)
	l := &listener{Listener: &fakeAddrListener{addrs: []string{
		"2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:1::3", // one /64: the third is refused
		"2001:db8:1:2::1", "2001:db8:1:3::1", // the /48 is full after the first
		"2001:db8:2::1", // another /48
	}}, s: e.srv}
	var got []string
	for {
		c, err := l.Accept()
		if err != nil {
			break
		}
		got = append(got, c.RemoteAddr().(*net.TCPAddr).IP.String())
	}
	if strings.Join(got, " ") != "2001:db8:1:1::1 2001:db8:1:1::2 2001:db8:1:2::1 2001:db8:2::1" {
		t.Fatalf("accepted %v", got)
	}
	if n := e.metrics.get("conn too_many"); n != 2 {
		t.Fatalf("too_many counted %d times, want 2", n)
	}
}

// fakeAddrListener hands out pipe connections that claim the given remote addresses.
type fakeAddrListener struct {
	addrs []string
}

func (f *fakeAddrListener) Accept() (net.Conn, error) {
	if len(f.addrs) == 0 {
		return nil, net.ErrClosed
	}
	a, b := net.Pipe()
	go func() { // the refused ones are told 421; read it so the write does not block
		buf := make([]byte, 512)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	ip := net.ParseIP(f.addrs[0])
	f.addrs = f.addrs[1:]
	return &addrConn{Conn: a, remote: &net.TCPAddr{IP: ip, Port: 25}}, nil
}

func (f *fakeAddrListener) Close() error   { return nil }
func (f *fakeAddrListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv6loopback, Port: 25} }

type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
