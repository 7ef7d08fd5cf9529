package connlimit

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func ip(s string) net.IP { return net.ParseIP(s) }

// take acquires n slots for addr and fails unless exactly the first ok of them succeed.
func take(t *testing.T, l *Limiter, addr string, n, ok int, why Reason) []func() {
	t.Helper()
	var rel []func()
	for i := range n {
		r, got := l.Acquire(ip(addr))
		switch {
		case i < ok && got != None:
			t.Fatalf("%s: connection %d refused (%s), want accepted", addr, i+1, got)
		case i >= ok && got != why:
			t.Fatalf("%s: connection %d: reason %q, want %q", addr, i+1, got, why)
		case i >= ok && r != nil:
			t.Fatalf("%s: refused connection got a release", addr)
		}
		if r != nil {
			rel = append(rel, r)
		}
	}
	return rel
}

func TestPerClientIPv4(t *testing.T) {
	l := New(Limits{PerClient: 2})
	a := take(t, l, "192.0.2.7", 3, 2, Client)
	take(t, l, "::ffff:192.0.2.7", 1, 0, Client) // the same client written as IPv6
	b := take(t, l, "192.0.2.8", 2, 2, "")       // its neighbour is another client
	a[0]()
	a[0]() // a second call gives nothing back twice
	take(t, l, "192.0.2.7", 2, 1, Client)
	if n := l.Open(); n != 4 {
		t.Fatalf("open %d, want 4", n)
	}
	_ = b
}

func TestPerIPv6Net64(t *testing.T) {
	l := New(Limits{PerClient: 2})
	// Every address of a /64 is one client: walking the addresses of one host gains nothing.
	take(t, l, "2001:db8:1:2::1", 1, 1, "")
	take(t, l, "2001:db8:1:2:ffff:ffff:ffff:ffff", 1, 1, "")
	take(t, l, "2001:db8:1:2::3", 1, 0, Client)
	// The next /64 is another client.
	take(t, l, "2001:db8:1:3::1", 2, 2, "")
}

func TestPerIPv6Net48(t *testing.T) {
	l := New(Limits{PerClient: 2, PerNet48: 5})
	// An attacker with a /48 has 65536 /64s: the /48 cap stops it after 5 connections.
	n := 0
	for i := range 10 {
		_, why := l.Acquire(ip(fmt.Sprintf("2001:db8:aa:%x::1", i)))
		if why == None {
			n++
		} else if why != Net48 {
			t.Fatalf("/64 #%d: %q, want %q", i, why, Net48)
		}
	}
	if n != 5 {
		t.Fatalf("%d connections from one /48, want 5", n)
	}
	take(t, l, "2001:db8:ab::1", 2, 2, "") // another /48
	take(t, l, "192.0.2.1", 2, 2, "")      // IPv4 has no /48

	// A /48 cap below the per-client one is raised to it: one whole client always fits.
	low := New(Limits{PerClient: 4, PerNet48: 2})
	take(t, low, "2001:db8:cc::1", 5, 4, Client)
	if got := low.Limits().PerNet48; got != 4 {
		t.Fatalf("PerNet48 %d, want raised to 4", got)
	}
}

func TestTotal(t *testing.T) {
	l := New(Limits{Total: 10, PerClient: 3, PerNet48: 100})
	var rel []func()
	// 1,000 addresses with 3 connections each: only 10 connections get in, whoever asks.
	for i := range 1000 {
		for range 3 {
			r, why := l.Acquire(ip(fmt.Sprintf("127.%d.%d.1", i/256, i%256)))
			if why == None {
				rel = append(rel, r)
			} else if why != Full && why != Client {
				t.Fatalf("reason %q", why)
			}
		}
	}
	if len(rel) != 10 || l.Open() != 10 || !l.Busy() {
		t.Fatalf("%d accepted, open %d, busy %v; want 10, 10, true", len(rel), l.Open(), l.Busy())
	}
	if got := l.Refused()[Full]; got != 2990 {
		t.Fatalf("%d refused as full, want 2990", got)
	}
	for _, r := range rel {
		r()
	}
	if c, n := l.clients(); l.Open() != 0 || c != 0 || n != 0 || l.Busy() {
		t.Fatalf("after release: open %d, %d clients, %d /48s remembered, busy %v", l.Open(), c, n, l.Busy())
	}
}

func TestBusy(t *testing.T) {
	l := New(Limits{Total: 8})
	for i := range 8 {
		if busy := l.Busy(); busy != (i >= 6) {
			t.Fatalf("%d open: busy %v", i, busy)
		}
		l.Acquire(nil)
	}
	if New(Limits{}).Busy() {
		t.Fatal("no cap is never busy")
	}
}

func TestNoLimits(t *testing.T) {
	l := New(Limits{})
	for range 1000 {
		if _, why := l.Acquire(ip("192.0.2.1")); why != None {
			t.Fatal("0 must mean no cap")
		}
	}
}

// TestConcurrent races acquire and release from many goroutines (run with -race): the caps
// hold at every moment and everything is given back.
func TestConcurrent(t *testing.T) {
	l := New(Limits{Total: 50, PerClient: 4, PerNet48: 8})
	var wg sync.WaitGroup
	var mu sync.Mutex
	over := 0
	for g := range 32 {
		wg.Go(func() {
			for i := range 500 {
				addr := fmt.Sprintf("2001:db8:%x:%x::%x", g%3, i%5, i)
				if g%2 == 0 {
					addr = fmt.Sprintf("127.0.%d.%d", g, i%7)
				}
				r, why := l.Acquire(ip(addr))
				if why != None {
					continue
				}
				if n := l.Open(); n > 50 {
					mu.Lock()
					over++
					mu.Unlock()
				}
				r()
			}
		})
	}
	wg.Wait()
	if c, n := l.clients(); over != 0 || l.Open() != 0 || c != 0 || n != 0 {
		t.Fatalf("over the cap %d times; left open %d, %d clients, %d /48s", over, l.Open(), c, n)
	}
}

func TestSplit(t *testing.T) {
	for _, nofile := range []int{0, 64, 256, 1024, 4096, 20000, 1 << 20} {
		b := Split(nofile)
		limit := nofile
		if limit == 0 {
			limit = 1024
		}
		if b.SMTP < 4 || b.Submission < 4 || b.IMAP < 4 || b.Web < 4 {
			t.Errorf("nofile %d: a service has no room: %+v", nofile, b)
		}
		if limit >= 256 && b.Sum()+128 > limit {
			t.Errorf("nofile %d: caps %+v add up to %d, leaving less than 128 for the rest", nofile, b, b.Sum())
		}
	}
	if b := Split(1024); b.SMTP != 358 || b.Web != 179 {
		t.Errorf("Split(1024) = %+v", b)
	}
	if b := Split(1 << 20); b.SMTP != 2000 || b.Submission != 200 || b.IMAP != 500 || b.Web != 500 {
		t.Errorf("ceilings: %+v", b)
	}
	if FileLimit() <= 0 {
		t.Error("FileLimit cannot read RLIMIT_NOFILE")
	}
}

func TestLog(t *testing.T) {
	var lg Log
	lg.Every = 10 * time.Second
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if ok, n := lg.Refused(now); !ok || n != 1 {
		t.Fatalf("first refusal: %v %d", ok, n)
	}
	for range 99 {
		if ok, _ := lg.Refused(now.Add(time.Second)); ok {
			t.Fatal("logged again within the interval")
		}
	}
	if ok, n := lg.Refused(now.Add(11 * time.Second)); !ok || n != 100 {
		t.Fatalf("after the interval: %v %d, want true 100", ok, n)
	}
}

// TestListener drives the wrapper over real loopback TCP: the connection over the cap gets the
// refusal line and EOF, and a closed connection frees its slot.
func TestListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Listener{Listener: inner, Limiter: New(Limits{Total: 2}),
		Refuse: func(c net.Conn, why Reason) { Reply(c, "421 4.7.0 too many connections, try later") }}
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 hello\r\n"))
			accepted <- c
		}
	}()
	dial := func() (net.Conn, string) {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return c, strings.TrimSpace(line)
	}
	a, la := dial()
	b, lb := dial()
	c, lc := dial()
	defer a.Close()
	defer b.Close()
	defer c.Close()
	if la != "220 hello" || lb != "220 hello" || lc != "421 4.7.0 too many connections, try later" {
		t.Fatalf("greetings %q %q %q", la, lb, lc)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the refused connection stays open")
	}
	(<-accepted).Close()
	for l.Limiter.Open() != 1 {
		time.Sleep(time.Millisecond) // Close is synchronous; this only waits for the goroutine above
	}
	d, ld := dial()
	defer d.Close()
	if ld != "220 hello" {
		t.Fatalf("after a close: %q", ld)
	}
}

// TestReplyHTTP checks that a refused HTTP client reads the 503 even though it sent its request
// before the server answered.
func TestReplyHTTP(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	go func() {
		for {
			c, err := inner.Accept()
			if err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond) // let the request arrive first, as in a flood
			ReplyHTTP(c)
		}
	}()
	for range 20 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.HasPrefix(line, "HTTP/1.1 503 ") {
			t.Fatalf("got %q, %v", line, err)
		}
	}
}

// BenchmarkAcquire measures a slot taken and given back, as every accepted connection does,
// from many goroutines and addresses.
func BenchmarkAcquire(b *testing.B) {
	l := New(Limits{Total: 1 << 20, PerClient: 1 << 20, PerNet48: 1 << 20})
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			r, _ := l.Acquire(net.IPv4(127, 0, byte(i>>8), byte(i)))
			r()
		}
	})
}
