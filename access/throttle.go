package access

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxThrottleEntries bounds each throttle's memory against floods of made-up names or addresses.
const maxThrottleEntries = 100_000

// throttle counts failures per key in memory (never in the store: nothing on the login path may
// grow with the attack). Past lim.Free failures each new one locks the key for a doubling window.
type throttle struct {
	lim Limit

	mu        sync.Mutex
	m         map[string]*failures
	lastSweep time.Time
}

type failures struct {
	n        int
	last     time.Time // leak clock: one failure is forgotten per lim.Leak after it
	until    time.Time // locked until
	refused  int       // attempts refused during the lock, not yet reported
	reported bool      // the first refusal of this lock was audited
}

func newThrottle(lim Limit) *throttle {
	return &throttle{lim: lim, m: map[string]*failures{}}
}

func (f *failures) decay(now time.Time, leak time.Duration) {
	if leak <= 0 || f.n == 0 {
		return
	}
	k := int(now.Sub(f.last) / leak)
	if k <= 0 {
		return
	}
	if k >= f.n {
		f.n = 0
		return
	}
	f.n -= k
	f.last = f.last.Add(time.Duration(k) * leak)
}

// check returns how long key stays locked (0: go ahead). report is true for the first refusal
// of each lock, so a hammering client yields one audit event per lock, not one per request.
func (t *throttle) check(key string, now time.Time) (wait time.Duration, report bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.m[key]
	if f == nil || !now.Before(f.until) {
		return 0, false
	}
	f.refused++
	if !f.reported {
		f.reported = true
		return f.until.Sub(now), true
	}
	return f.until.Sub(now), false
}

// fail records a failure. lock > 0 means it started a lock of that length; refused is how many
// attempts the previous lock turned away beyond the one reported.
func (t *throttle) fail(key string, now time.Time) (lock time.Duration, n, refused int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(now)
	f := t.m[key]
	if f == nil {
		f = &failures{}
		t.m[key] = f
	}
	f.decay(now, t.lim.Leak)
	f.n++
	f.last = now
	if f.n <= t.lim.Free {
		return 0, f.n, 0
	}
	lock = max(t.lim.Base, time.Nanosecond)
	for i := 0; i < f.n-t.lim.Free-1 && lock < t.lim.Max; i++ {
		lock *= 2 // stops at Max long before overflowing
	}
	lock = min(lock, t.lim.Max)
	f.until = now.Add(lock)
	refused = max(0, f.refused-1)
	f.refused, f.reported = 0, false
	return lock, f.n, refused
}

// success forgets key's failures.
func (t *throttle) success(key string) {
	t.mu.Lock()
	delete(t.m, key)
	t.mu.Unlock()
}

// sweep drops forgotten entries once a minute, and anything at all when the map is full.
func (t *throttle) sweep(now time.Time) {
	full := len(t.m) >= maxThrottleEntries
	if !full && (len(t.m) < 1024 || now.Sub(t.lastSweep) < time.Minute) {
		return
	}
	t.lastSweep = now
	for k, f := range t.m {
		f.decay(now, t.lim.Leak)
		if f.n == 0 && !now.Before(f.until) {
			delete(t.m, k)
		}
	}
	// Still full: a flood of distinct keys. Memory wins over remembering every key; unlocked
	// entries go first.
	for pass := 0; len(t.m) >= maxThrottleEntries*9/10 && pass < 2; pass++ {
		for k, f := range t.m {
			if len(t.m) < maxThrottleEntries*9/10 {
				break
			}
			if pass == 1 || !now.Before(f.until) {
				delete(t.m, k)
			}
		}
	}
}

// ipKey is the throttle key of a remote "ip:port": the address, or its /64 for IPv6 (one
// subscriber usually holds a whole /64).
func ipKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "raw:" + clip(remote, 100)
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
