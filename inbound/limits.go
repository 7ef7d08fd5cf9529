package inbound

import (
	"math"
	"net"
	"sync"
	"time"
)

// Limits the SMTP server enforces in memory, before anything touches the store: messages per
// minute per client, counted by ipKey (connections are counted by internal/connlimit). Nothing
// here scans the store: a limit that reads the sender's history gets slower as history grows
// (STYLE.md).

// ipKey is the unit the limits count: one IPv4 address, or one IPv6 /64. A single host is
// usually given a whole /64, so counting IPv6 addresses one by one would let it walk around
// every limit. A nil IP (a test's net.Pipe) counts as one client.
func ipKey(ip net.IP) string {
	if ip == nil {
		return "unknown"
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// remoteIP returns the client's IP address, or nil when the connection is not TCP.
func remoteIP(c net.Conn) net.IP {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP
	}
	return nil
}

// rateLimit is a token bucket per client: perMinute tokens, refilled evenly over a minute, so a
// client may burst up to perMinute messages and then send one every 60/perMinute seconds.
type rateLimit struct {
	perMinute int // <= 0: no limit
	now       func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimit(perMinute int, now func() time.Time) *rateLimit {
	return &rateLimit{perMinute: perMinute, now: now, buckets: map[string]*bucket{}}
}

// allow takes one token from key's bucket; false when it is empty.
func (r *rateLimit) allow(key string) bool {
	if r.perMinute <= 0 {
		return true
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweep(now)
	b, ok := r.buckets[key]
	if !ok {
		b = &bucket{tokens: float64(r.perMinute), last: now}
		r.buckets[key] = b
	}
	b.tokens = r.refill(b, now)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (r *rateLimit) refill(b *bucket, now time.Time) float64 {
	elapsed := now.Sub(b.last)
	if elapsed < 0 {
		elapsed = 0 // the clock went back: no refill, no penalty
	}
	return math.Min(float64(r.perMinute), b.tokens+elapsed.Minutes()*float64(r.perMinute))
}

// sweep drops, at most once a minute, the buckets that have refilled completely: a full
// bucket is what a new client gets anyway. The map so holds only clients of the last minute.
func (r *rateLimit) sweep(now time.Time) {
	if now.Sub(r.lastSweep) < time.Minute {
		return
	}
	r.lastSweep = now
	for k, b := range r.buckets {
		if r.refill(b, now) >= float64(r.perMinute) {
			delete(r.buckets, k)
		}
	}
}

// size reports how many clients the limiter remembers (tests).
func (r *rateLimit) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}
