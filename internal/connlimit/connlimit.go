// Package connlimit owns the connection budgets of mailgate's listeners: a cap on all the
// connections of one service, per client (an IPv4 address or an IPv6 /64) and per IPv6 /48,
// and the share of the process's open-file limit each service gets by default, so that a
// flood of one service cannot take the file descriptors the others need. It decides only
// whether a connection may stay; what a refused client is told belongs to its protocol.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Limits are the caps of one service. A value <= 0 means no cap.
type Limits struct {
	Total     int // every connection of the service, all listeners together
	PerClient int // one IPv4 address, or one IPv6 /64 (one host is usually given a whole /64)
	PerNet48  int // one IPv6 /48, the usual allocation of a site: walking its /64s ends here
}

// Reason says why a connection was refused.
type Reason string

// Reasons, also used as metric labels.
const (
	None   Reason = ""
	Full   Reason = "full"   // Total reached
	Client Reason = "client" // PerClient reached
	Net48  Reason = "net48"  // PerNet48 reached
)

// Limiter counts the open connections of one service. It is safe for concurrent use; the maps
// hold only clients with a connection open now, so memory follows the live connections.
type Limiter struct {
	lim Limits

	mu     sync.Mutex
	total  int
	client map[netip.Prefix]int
	net48  map[netip.Prefix]int
	open   atomic.Int64 // total, readable without the lock (Busy runs before every SMTP command)

	refused [3]atomic.Uint64 // Full, Client, Net48
}

// New returns a Limiter enforcing l. A PerNet48 below PerClient is raised to it: a /48 always
// has room for one whole client (a config that raised max_conns_per_ip keeps working).
func New(l Limits) *Limiter {
	if l.PerNet48 > 0 && l.PerNet48 < l.PerClient {
		l.PerNet48 = l.PerClient
	}
	return &Limiter{lim: l, client: map[netip.Prefix]int{}, net48: map[netip.Prefix]int{}}
}

// Limits returns what l enforces.
func (l *Limiter) Limits() Limits { return l.lim }

// unknown stands for a peer without an IP address (a test's net.Pipe): one client.
var unknown = netip.PrefixFrom(netip.IPv4Unspecified(), 32)

// keys returns the client key of ip and, for IPv6, its /48.
func keys(ip net.IP) (client netip.Prefix, n48 netip.Prefix, v6 bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return unknown, netip.Prefix{}, false
	}
	a = a.Unmap() // ::ffff:192.0.2.7 is the IPv4 client 192.0.2.7
	if a.Is4() {
		return netip.PrefixFrom(a, 32), netip.Prefix{}, false
	}
	c, _ := a.Prefix(64)
	n, _ := a.Prefix(48)
	return c, n, true
}

// Acquire takes a slot for a connection from ip (nil: a peer without an address). It returns
// the function that gives the slot back (safe to call more than once) and None, or nil and
// the Reason of the refusal.
func (l *Limiter) Acquire(ip net.IP) (release func(), why Reason) {
	c, n, v6 := keys(ip)
	l.mu.Lock()
	switch {
	case l.lim.PerClient > 0 && l.client[c] >= l.lim.PerClient:
		why = Client
	case v6 && l.lim.PerNet48 > 0 && l.net48[n] >= l.lim.PerNet48:
		why = Net48
	case l.lim.Total > 0 && l.total >= l.lim.Total:
		why = Full
	}
	if why != None {
		l.mu.Unlock()
		l.refused[reasonIndex(why)].Add(1)
		return nil, why
	}
	l.total++
	l.open.Store(int64(l.total))
	l.client[c]++
	if v6 {
		l.net48[n]++
	}
	l.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { l.release(c, n, v6) }) }, None
}

func (l *Limiter) release(c, n netip.Prefix, v6 bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	l.open.Store(int64(l.total))
	dec(l.client, c)
	if v6 {
		dec(l.net48, n)
	}
}

func dec(m map[netip.Prefix]int, k netip.Prefix) {
	if m[k] <= 1 {
		delete(m, k)
		return
	}
	m[k]--
}

func reasonIndex(r Reason) int {
	switch r {
	case Full:
		return 0
	case Client:
		return 1
	}
	return 2
}

// Open returns the number of connections holding a slot.
func (l *Limiter) Open() int { return int(l.open.Load()) }

// Busy reports whether the service holds three quarters of Total or more: the point from which
// idle connections get a shorter timeout, so a flood of idle connections drains quickly while
// real clients, which send their next command at once, do not notice.
func (l *Limiter) Busy() bool {
	if l.lim.Total <= 0 {
		return false
	}
	return l.Open()*4 >= l.lim.Total*3
}

// Refused returns how many connections were refused, by reason.
func (l *Limiter) Refused() map[Reason]uint64 {
	return map[Reason]uint64{Full: l.refused[0].Load(), Client: l.refused[1].Load(), Net48: l.refused[2].Load()}
}

// clients returns how many clients and /48s are remembered (tests: nothing may leak).
func (l *Limiter) clients() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.client), len(l.net48)
}
