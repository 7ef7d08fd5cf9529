package inbound

import (
	"context"
	"net"
	"time"
)

// Resolver is the DNS the sender checks use: the methods of blitiri spf.DNSResolver, which
// *net.Resolver and internal/dnsmock.Resolver both have. Errors must be *net.DNSError so that
// NXDOMAIN (IsNotFound) and SERVFAIL/timeouts (Temporary) can be told apart.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// NewResolver returns the resolver for the [dns] resolver setting, behind a short-lived cache
// (see cachingResolver): "" is the system resolver;
// "host:port" sends every query to that server only (Go's own stub resolver, UDP with TCP
// fallback, whatever /etc/resolv.conf says). timeout bounds each exchange with the server;
// zero leaves the system default.
func NewResolver(server string, timeout time.Duration) Resolver {
	if server == "" {
		return NewCachingResolver(net.DefaultResolver)
	}
	d := &net.Dialer{Timeout: timeout}
	return NewCachingResolver(&net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			// The address the stub picked from resolv.conf is ignored on purpose: the admin
			// named one server, and queries must not leak to another.
			return d.DialContext(ctx, network, server)
		},
	})
}
