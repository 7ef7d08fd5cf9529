package metrics

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// HandlerOptions configure the [metrics] listener's handler.
type HandlerOptions struct {
	// Token, when set, must come as "Authorization: Bearer <token>" on every request.
	Token string
	// Health is the detailed /healthz: why mailgate is unwell, which the public page never says.
	Health func() error
	// Hostname is accepted in Host besides the address the client connected to and, on a
	// loopback connection, "localhost".
	Hostname string
}

// ListenerHandler serves /metrics and a detailed /healthz for the [metrics] listener. Every
// request must name this server in Host, so that a web page a browser on this machine loads
// cannot read the counters by pointing its own name at 127.0.0.1 (DNS rebinding), and carry
// the token when one is set.
func ListenerHandler(o HandlerOptions) http.Handler {
	var want [32]byte
	if o.Token != "" {
		want = sha256.Sum256([]byte(o.Token))
	}
	metrics := Handler()
	host := strings.TrimSuffix(strings.ToLower(o.Hostname), ".")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !hostAllowed(r, host) {
			http.Error(w, "this server does not answer to that host name", http.StatusMisdirectedRequest)
			return
		}
		if o.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			sum := sha256.Sum256([]byte(strings.TrimSpace(got))) // hashes: equal length, no length leak
			if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="mailgate metrics"`)
				http.Error(w, "a bearer token is required (the content of [metrics] token_file)", http.StatusUnauthorized)
				return
			}
		}
		switch {
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
		case r.URL.Path == "/metrics":
			metrics.ServeHTTP(w, r)
		case r.URL.Path == "/healthz":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if o.Health != nil {
				if err := o.Health(); err != nil {
					w.WriteHeader(http.StatusServiceUnavailable)
					fmt.Fprintf(w, "unavailable: %v\n", err)
					return
				}
			}
			fmt.Fprint(w, "ok\n")
		default:
			http.NotFound(w, r)
		}
	})
}

// hostAllowed is web's Host rule (web/middleware.go checkHost) for the metrics listener.
func hostAllowed(r *http.Request, hostname string) bool {
	host := r.Host
	if host == "" {
		return true // no browser sends a request without Host
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")), ".")
	if hostname != "" && host == hostname {
		return true
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr)
	if local == nil {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.Equal(local.IP)
	}
	return host == "localhost" && local.IP.IsLoopback()
}

// --- connections --------------------------------------------------------------------------

// ConnStats is what one service's connection limiter reports at a scrape.
type ConnStats struct {
	Open    int
	Max     int               // 0: no cap
	Refused map[string]uint64 // by reason: full, client, net48
}

var (
	connMu    sync.Mutex
	connFuncs = map[string]func() ConnStats{}

	connOpenDesc    = prometheus.NewDesc("mailgate_connections_open", "Open connections by service (smtp, submission, imap, web).", []string{"service"}, nil)
	connMaxDesc     = prometheus.NewDesc("mailgate_connections_max", "Connection cap by service (max_conns; 0 = none).", []string{"service"}, nil)
	connRefusedDesc = prometheus.NewDesc("mailgate_connections_refused_total",
		"Connections refused at accept by service and reason: full (max_conns), client (per address or IPv6 /64), net48 (per IPv6 /48).",
		[]string{"service", "reason"}, nil)
)

type connCollector struct{}

func (connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- connOpenDesc
	ch <- connMaxDesc
	ch <- connRefusedDesc
}

func (connCollector) Collect(ch chan<- prometheus.Metric) {
	connMu.Lock()
	fns := make(map[string]func() ConnStats, len(connFuncs))
	for k, v := range connFuncs {
		fns[k] = v
	}
	connMu.Unlock()
	for service, fn := range fns {
		st := fn()
		ch <- prometheus.MustNewConstMetric(connOpenDesc, prometheus.GaugeValue, float64(st.Open), service)
		ch <- prometheus.MustNewConstMetric(connMaxDesc, prometheus.GaugeValue, float64(st.Max), service)
		for reason, n := range st.Refused {
			ch <- prometheus.MustNewConstMetric(connRefusedDesc, prometheus.CounterValue, float64(n), service, clean(reason))
		}
	}
}

var _ = register(connCollector{})

// Connections makes the mailgate_connections_* metrics of service read fn at each scrape
// (a connlimit.Limiter's counts); nil removes the service. fn must be cheap.
func Connections(service string, fn func() ConnStats) {
	connMu.Lock()
	defer connMu.Unlock()
	if fn == nil {
		delete(connFuncs, service)
		return
	}
	connFuncs[clean(service)] = fn
}
