package inbound

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"time"
)

// cachingResolver keeps answers for a short while. Support mail comes in bursts from the same
// few providers, and every message needs the same SPF, DKIM key and DMARC records: without a
// cache the lookups were the largest single cost per message. Answers live cacheTTL (the
// resolver API hides the records' own TTLs, so the bound is short), NXDOMAIN negCacheTTL, and
// temporary failures are never kept. Concurrent lookups of one name share one query.
type cachingResolver struct {
	r   Resolver
	now func() time.Time

	mu       sync.Mutex
	entries  map[cacheKey]*cacheEntry
	inflight map[cacheKey]chan struct{}
}

const (
	cacheTTL     = 60 * time.Second
	negCacheTTL  = 30 * time.Second
	cacheMaxSize = 20000
)

type cacheKey struct{ kind, name string }

type cacheEntry struct {
	val any
	err error
	exp time.Time
}

// NewCachingResolver wraps r with the short-lived cache described above.
func NewCachingResolver(r Resolver) Resolver {
	if _, ok := r.(*cachingResolver); ok {
		return r
	}
	return &cachingResolver{r: r, now: time.Now, entries: map[cacheKey]*cacheEntry{}, inflight: map[cacheKey]chan struct{}{}}
}

func (c *cachingResolver) lookup(ctx context.Context, k cacheKey, fetch func() (any, error)) (any, error) {
	for {
		c.mu.Lock()
		if e, ok := c.entries[k]; ok && c.now().Before(e.exp) {
			c.mu.Unlock()
			return e.val, e.err
		}
		wait, busy := c.inflight[k]
		if !busy {
			done := make(chan struct{})
			c.inflight[k] = done
			c.mu.Unlock()
			val, err := fetch()
			c.mu.Lock()
			delete(c.inflight, k)
			if ttl := cacheFor(err); ttl > 0 {
				if len(c.entries) >= cacheMaxSize {
					c.evict()
				}
				c.entries[k] = &cacheEntry{val: val, err: err, exp: c.now().Add(ttl)}
			}
			c.mu.Unlock()
			close(done)
			return val, err
		}
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, &net.DNSError{Err: ctx.Err().Error(), Name: k.name, IsTimeout: true, IsTemporary: true}
		}
	}
}

// evict drops expired entries, or everything when none has expired (a flood of distinct names).
func (c *cachingResolver) evict() {
	now := c.now()
	for k, e := range c.entries {
		if !now.Before(e.exp) {
			delete(c.entries, k)
		}
	}
	if len(c.entries) >= cacheMaxSize {
		clear(c.entries)
	}
}

func cacheFor(err error) time.Duration {
	if err == nil {
		return cacheTTL
	}
	var de *net.DNSError
	if errors.As(err, &de) && de.IsNotFound && !de.IsTemporary {
		return negCacheTTL
	}
	return 0
}

func (c *cachingResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	v, err := c.lookup(ctx, cacheKey{"TXT", name}, func() (any, error) { return c.r.LookupTXT(ctx, name) })
	s, _ := v.([]string)
	return slices.Clone(s), err
}

func (c *cachingResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	v, err := c.lookup(ctx, cacheKey{"MX", name}, func() (any, error) { return c.r.LookupMX(ctx, name) })
	s, _ := v.([]*net.MX)
	out := make([]*net.MX, len(s))
	for i, mx := range s {
		cp := *mx
		out[i] = &cp
	}
	return out, err
}

func (c *cachingResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	v, err := c.lookup(ctx, cacheKey{"IP", host}, func() (any, error) { return c.r.LookupIPAddr(ctx, host) })
	s, _ := v.([]net.IPAddr)
	return slices.Clone(s), err
}

func (c *cachingResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	v, err := c.lookup(ctx, cacheKey{"PTR", addr}, func() (any, error) { return c.r.LookupAddr(ctx, addr) })
	s, _ := v.([]string)
	return slices.Clone(s), err
}
