package inbound

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailgate/internal/dnsmock"
)

func TestCachingResolver(t *testing.T) {
	var queries atomic.Int64
	m := &dnsmock.Resolver{
		TXT:  map[string][]string{"example.org": {"v=spf1 -all"}},
		Fail: map[string]bool{"servfail.example": true},
		OnQuery: func(qtype, name string) {
			queries.Add(1)
		},
	}
	now := time.Now()
	c := NewCachingResolver(m).(*cachingResolver)
	c.now = func() time.Time { return now }
	ctx := context.Background()

	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, err := c.LookupTXT(ctx, "example.org"); err != nil || v[0] != "v=spf1 -all" {
				t.Errorf("%v %v", v, err)
			}
		}()
	}
	wg.Wait()
	if n := queries.Load(); n != 1 {
		t.Fatalf("%d queries for one name, want 1", n)
	}
	// NXDOMAIN is kept briefly, SERVFAIL never.
	for i := 0; i < 3; i++ {
		_, err := c.LookupTXT(ctx, "nx.example")
		if de, ok := err.(*net.DNSError); !ok || !de.IsNotFound {
			t.Fatalf("nx: %v", err)
		}
		c.LookupTXT(ctx, "servfail.example")
	}
	if n := queries.Load(); n != 1+1+3 {
		t.Fatalf("queries %d, want 5 (one NXDOMAIN, three SERVFAIL)", n)
	}
	// Answers expire.
	now = now.Add(cacheTTL + time.Second)
	c.LookupTXT(ctx, "example.org")
	if n := queries.Load(); n != 6 {
		t.Fatalf("expired answer served from cache (queries %d)", n)
	}
	// A caller cannot change what others get.
	v, _ := c.LookupTXT(ctx, "example.org")
	v[0] = "changed"
	if v2, _ := c.LookupTXT(ctx, "example.org"); v2[0] != "v=spf1 -all" {
		t.Fatal("cached answer was modified through a returned slice")
	}
}
