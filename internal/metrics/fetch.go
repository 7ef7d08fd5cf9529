package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FetchState is what the fetch metrics show about one upstream mailbox: the fields of
// inbound.FetchStatus that are numbers. The counts are totals since start.
type FetchState struct {
	Account     string // scheme://user@host:port/mailbox, no secrets
	Connected   bool
	LastSuccess time.Time
	LastError   time.Time
	Fetched     uint64
	Duplicates  uint64
	Skipped     uint64
	Failures    uint64
}

// Fetch records the current state of one upstream mailbox (call it from
// inbound.FetchOptions.OnStatus). Accounts come from the config, so their number is small.
func Fetch(s FetchState) {
	s.Account = strings.ToValidUTF8(s.Account, "?") // a label value must be UTF-8
	fetch.mu.Lock()
	fetch.m[s.Account] = s
	fetch.mu.Unlock()
}

var fetch = func() *fetchCollector {
	c := &fetchCollector{m: map[string]FetchState{}}
	registry.MustRegister(c)
	return c
}()

// fetchCollector turns the latest FetchState of each account into metrics at scrape time.
type fetchCollector struct {
	mu sync.Mutex
	m  map[string]FetchState
}

var (
	fetchConnected = prometheus.NewDesc("mailgate_fetch_connected",
		"1 while the upstream mailbox is logged in and selected.", []string{"account"}, nil)
	fetchSuccess = prometheus.NewDesc("mailgate_fetch_last_success_timestamp_seconds",
		"End of the last sync pass that worked (Unix time; 0 = never).", []string{"account"}, nil)
	fetchErrorAt = prometheus.NewDesc("mailgate_fetch_last_error_timestamp_seconds",
		"Time of the last failure (Unix time; 0 = none since start).", []string{"account"}, nil)
	fetchMessages = prometheus.NewDesc("mailgate_fetch_messages_total",
		"Messages seen upstream by result: fetched (handed to tickets), duplicate, skipped (too large).", []string{"account", "result"}, nil)
	fetchFailures = prometheus.NewDesc("mailgate_fetch_failures_total",
		"Failed fetch sessions (each followed by a backoff).", []string{"account"}, nil)
)

func (c *fetchCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fetchConnected, fetchSuccess, fetchErrorAt, fetchMessages, fetchFailures} {
		ch <- d
	}
}

func (c *fetchCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	states := make([]FetchState, 0, len(c.m))
	for _, s := range c.m {
		states = append(states, s)
	}
	c.mu.Unlock()
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}
	for _, s := range states {
		conn := 0.0
		if s.Connected {
			conn = 1
		}
		ch <- prometheus.MustNewConstMetric(fetchConnected, prometheus.GaugeValue, conn, s.Account)
		ch <- prometheus.MustNewConstMetric(fetchSuccess, prometheus.GaugeValue, unix(s.LastSuccess), s.Account)
		ch <- prometheus.MustNewConstMetric(fetchErrorAt, prometheus.GaugeValue, unix(s.LastError), s.Account)
		ch <- prometheus.MustNewConstMetric(fetchMessages, prometheus.CounterValue, float64(s.Fetched), s.Account, "fetched")
		ch <- prometheus.MustNewConstMetric(fetchMessages, prometheus.CounterValue, float64(s.Duplicates), s.Account, "duplicate")
		ch <- prometheus.MustNewConstMetric(fetchMessages, prometheus.CounterValue, float64(s.Skipped), s.Account, "skipped")
		ch <- prometheus.MustNewConstMetric(fetchFailures, prometheus.CounterValue, float64(s.Failures), s.Account)
	}
}
