// Package metrics owns mailgate's Prometheus collectors, every one named mailgate_*, and the
// /metrics handler. Other packages tell it what happened through small functions; it must not
// import them, and nothing here may block or fail a caller (a metric is never worth a lost mail).
package metrics

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// registry holds mailgate's own collectors. Handler serves it merged with the default
// registry, which carries the Go runtime and process collectors and whatever a library
// registered there (web's request counters).
var registry = prometheus.NewRegistry()

// Registry returns the registry the mailgate_* collectors live in (tests gather from it).
func Registry() *prometheus.Registry { return registry }

// Handler serves the Prometheus text format: mailgate's collectors and the default registry's.
// A collector that fails is reported in the output and the rest are still served.
func Handler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{registry, prometheus.DefaultGatherer},
		promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Latency buckets from 0.5 ms to 10 s: the DATA-to-250 goal is 20 ms at p99, so the
// interesting range is fine-grained below 50 ms.
var latencyBuckets = []float64{.0005, .001, .002, .005, .0075, .01, .015, .02, .03, .05, .1, .25, .5, 1, 2.5, 5, 10}

var (
	smtpConns = newCounterVec("mailgate_smtp_connections_total",
		"SMTP connections by result: accepted, too_many (per-client or per-/48 limit), full (max_conns), shutting_down.", "result")
	smtpCommands = newCounterVec("mailgate_smtp_commands_total",
		"SMTP MAIL and RCPT commands by result.", "command", "result")
	smtpMessages = newCounterVec("mailgate_smtp_messages_total",
		"Messages at the end of DATA by outcome (accepted, rejected = 5xx, deferred = 4xx, error = the transfer broke) and reason.",
		"outcome", "reason")
	smtpBytes = register(prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "mailgate_smtp_message_bytes", Help: "Size of messages received over SMTP, as received.",
		Buckets: prometheus.ExponentialBuckets(1024, 4, 9), // 1 KiB .. 64 MiB
	}))
	smtpLatency = register(prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "mailgate_smtp_data_seconds",
		Help:    "Time from the end of DATA to the reply (verification and durable commit), by outcome.",
		Buckets: latencyBuckets,
	}, []string{"outcome"}))

	verify = newCounterVec("mailgate_verify_results_total",
		"Sender verification results by method (spf, dkim, dmarc) and RFC 8601 result word.", "method", "result")
	threading = newCounterVec("mailgate_tickets_threading_total",
		"Where inbound messages went: new, threaded, tagged, linked, bounce, duplicate.", "outcome")

	queueDepth = register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mailgate_outbound_queue_depth", Help: "Messages waiting in the outbound delivery queue.",
	}, func() float64 { return call(&queueDepthFn) }))
	deliveries = newCounterVec("mailgate_outbound_deliveries_total",
		"Delivery attempts by outcome: sent, retry (some recipient deferred), failed (given up or refused).", "outcome")
	deliveryRcpts = newCounterVec("mailgate_outbound_recipients_total",
		"Recipients per delivery attempt by result: sent, deferred, failed.", "result")
	deliveryLatency = register(prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "mailgate_outbound_delivery_seconds", Help: "Time of one delivery attempt to the relay, by outcome.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
	}, []string{"outcome"}))

	logins = newCounterVec("mailgate_logins_total",
		"Agent logins by kind (web = password and code, app = app password for IMAP/submission) and result (ok, failed, locked).",
		"kind", "result")
	auditEvents = newCounterVec("mailgate_audit_events_total",
		"Audit events committed, by action and result.", "action", "result")

	storeBytes = register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mailgate_store_file_bytes", Help: "Size of the database file and its segment files.",
	}, func() float64 { b, _ := storeStats(); return b }))
	storeWrites = register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "mailgate_store_page_writes_total", Help: "Page writes to the database file since it was opened (bbolt TxStats.Write).",
	}, func() float64 { _, w := storeStats(); return w }))
	commitBatch = register(prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "mailgate_store_commit_batch_size", Help: "Writers sharing one group commit (one fsync pair).",
		Buckets: []float64{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256},
	}))
	commitLatency = register(prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "mailgate_store_commit_seconds", Help: "Time of one group commit: running the writers, writing the pages, fsync.",
		Buckets: latencyBuckets,
	}))

	buildInfo = newGaugeVec("mailgate_build_info", "Always 1; the version label says which mailgate runs.", "version")
)

func register[C prometheus.Collector](c C) C {
	registry.MustRegister(c)
	return c
}

func newCounterVec(name, help string, labels ...string) *capped {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	registry.MustRegister(v)
	return &capped{vec: v, seen: map[string]struct{}{}}
}

func newGaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return register(prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels))
}

// maxSeries bounds the label combinations of one counter. Label values come from code, but a
// value that slipped in from the network (a verdict word, an action name) must not be able
// to grow the process's memory without bound: past the cap, new combinations count as "other".
const maxSeries = 256

// capped is a CounterVec with bounded, cleaned label values.
type capped struct {
	vec  *prometheus.CounterVec
	mu   sync.Mutex
	seen map[string]struct{}
}

func (c *capped) add(n float64, values ...string) {
	for i, v := range values {
		values[i] = clean(v)
	}
	key := strings.Join(values, "\x00")
	c.mu.Lock()
	if _, ok := c.seen[key]; !ok {
		if len(c.seen) >= maxSeries {
			for i := range values {
				values[i] = "other"
			}
		} else {
			c.seen[key] = struct{}{}
		}
	}
	c.mu.Unlock()
	c.vec.WithLabelValues(values...).Add(n)
}

func (c *capped) inc(values ...string) { c.add(1, values...) }

// clean keeps a label value short and printable: lower-case letters, digits and ._-: only.
func clean(v string) string {
	if v == "" {
		return "none"
	}
	if len(v) > 48 {
		v = v[:48]
	}
	ok := true
	for i := 0; i < len(v); i++ {
		if !labelByte(v[i]) {
			ok = false
			break
		}
	}
	if ok {
		return v
	}
	return strings.Map(func(r rune) rune {
		if r < 0x80 && labelByte(byte(r)) {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '_'
	}, v)
}

func labelByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-' || b == ':'
}

// funcs set at run time; read by the GaugeFuncs on every scrape.
var (
	queueDepthFn atomic.Pointer[func() int]
	storeFn      atomic.Pointer[func() (int64, int)]
)

func call(p *atomic.Pointer[func() int]) float64 {
	if f := p.Load(); f != nil {
		return float64((*f)())
	}
	return 0
}

func storeStats() (float64, float64) {
	if f := storeFn.Load(); f != nil {
		b, w := (*f)()
		return float64(b), float64(w)
	}
	return 0, 0
}

// BuildInfo sets mailgate_build_info{version}.
func BuildInfo(version string) {
	buildInfo.Reset()
	buildInfo.WithLabelValues(clean(version)).Set(1)
}

// --- SMTP ---------------------------------------------------------------------------------

// SMTP outcomes (the outcome label of mailgate_smtp_messages_total).
const (
	Accepted = "accepted"
	Rejected = "rejected" // a 5xx: the sender bounces it
	Deferred = "deferred" // a 4xx: the sender tries again
	Error    = "error"    // the transfer broke (timeout, dropped connection)
)

// SMTPMessage counts one message at the end of DATA: its outcome, the reason (the inbound
// Result* word), its size and the time from the end of DATA to the reply.
func SMTPMessage(outcome, reason string, size int, d time.Duration) {
	smtpMessages.inc(outcome, reason)
	if size >= 0 {
		smtpBytes.Observe(float64(size))
	}
	smtpLatency.WithLabelValues(clean(outcome)).Observe(d.Seconds())
}

// SMTPAccepted counts a message answered 250 after d (end of DATA to the 250).
func SMTPAccepted(d time.Duration) { SMTPMessage(Accepted, Accepted, -1, d) }

// SMTPRejected counts a message refused with a 5xx for reason.
func SMTPRejected(reason string) { smtpMessages.inc(Rejected, reason) }

// SMTPDeferred counts a message answered with a 4xx for reason.
func SMTPDeferred(reason string) { smtpMessages.inc(Deferred, reason) }

// SMTP implements inbound.Metrics (ServerOptions.Metrics): give the server metrics.SMTP{}.
type SMTP struct{}

// Connection counts a TCP connection by result.
func (SMTP) Connection(result string) { smtpConns.inc(result) }

// Command counts MAIL and RCPT outcomes.
func (SMTP) Command(cmd, result string) { smtpCommands.inc(cmd, result) }

// Message maps an inbound Result* value to its outcome and counts it.
func (SMTP) Message(result string, size int, d time.Duration) {
	SMTPMessage(Outcome(result), result, size, d)
}

// Verdict counts a verification verdict (same as Verification), for servers that report it.
func (SMTP) Verdict(spf, dkim, dmarc string) { Verification(spf, dkim, dmarc) }

// Threading counts where a message went (same as the package's Threading).
func (SMTP) Threading(outcome string) { Threading(outcome) }

// Outcome maps inbound's Result* words to accepted, rejected, deferred or error.
func Outcome(result string) string {
	switch result {
	case "accepted", "quarantined":
		return Accepted
	case "too_large", "bare_newline", "nul", "dmarc_reject", "unknown_recipient", "policy":
		return Rejected
	case "dns_defer", "storage_error", "rate_limited", "shutting_down":
		return Deferred
	case "read_error":
		return Error
	}
	return "other"
}

// --- verification, threading --------------------------------------------------------------

// resultWords are RFC 8601's result words; anything else is counted as "other".
var resultWords = map[string]bool{
	"pass": true, "fail": true, "softfail": true, "neutral": true, "none": true,
	"temperror": true, "permerror": true, "policy": true,
}

func word(w string) string {
	w = strings.ToLower(strings.TrimSpace(w))
	if w == "" {
		return "none"
	}
	if resultWords[w] {
		return w
	}
	return "other"
}

// Verification counts one message's SPF, DKIM and DMARC results (RFC 8601 words).
func Verification(spf, dkim, dmarc string) {
	verify.inc("spf", word(spf))
	verify.inc("dkim", word(dkim))
	verify.inc("dmarc", word(dmarc))
}

// Threading counts where an inbound message went (tickets.Outcome* values).
func Threading(outcome string) { threading.inc(outcome) }

// --- outbound -----------------------------------------------------------------------------

// QueueDepth makes mailgate_outbound_queue_depth read fn at each scrape (outbound.Queued).
// fn must be cheap and safe for concurrent use; nil reports 0.
func QueueDepth(fn func() int) {
	if fn == nil {
		queueDepthFn.Store(nil)
		return
	}
	queueDepthFn.Store(&fn)
}

// Delivery counts one delivery attempt: outcome (sent, retry, failed), how many recipients
// were sent, deferred and failed, and how long the attempt took (0 when unknown).
func Delivery(outcome string, sent, deferred, failed int, d time.Duration) {
	deliveries.inc(outcome)
	if sent > 0 {
		deliveryRcpts.add(float64(sent), "sent")
	}
	if deferred > 0 {
		deliveryRcpts.add(float64(deferred), "deferred")
	}
	if failed > 0 {
		deliveryRcpts.add(float64(failed), "failed")
	}
	if d > 0 {
		deliveryLatency.WithLabelValues(clean(outcome)).Observe(d.Seconds())
	}
}

// --- logins, audit ------------------------------------------------------------------------

// Login counts an agent login: kind "web" (password and code) or "app" (app password), result
// "ok", "failed" or "locked".
func Login(kind, result string) { logins.inc(kind, result) }

// AuditEvent counts one committed audit event; give it to audit.Log.OnAppend. Logins are
// counted from here too, since every login path audits: "login" failures and "login.code"
// are web logins, "login.app" the app-password logins of IMAP and submission, and
// "login.lockout" a throttle lock.
func AuditEvent(action, result string) {
	auditEvents.inc(action, result)
	switch action {
	case "login":
		if result != "ok" { // a right password is only half a web login
			Login("web", "failed")
		}
	case "login.code":
		Login("web", okOrFailed(result))
	case "login.app":
		Login("app", okOrFailed(result))
	case "login.lockout":
		Login("any", "locked")
	}
}

func okOrFailed(result string) string {
	if result == "ok" {
		return "ok"
	}
	return "failed"
}

// --- store --------------------------------------------------------------------------------

// StoreCommit records one group commit: how many writers shared it and how long it took.
// Small batches at high load mean the path before the commit is the bottleneck; long commits
// mean the disk's fsync is.
func StoreCommit(batch int, d time.Duration) {
	commitBatch.Observe(float64(batch))
	commitLatency.Observe(d.Seconds())
}

// Store makes the store gauges read fn (store.DB.Stats: file size, page writes) at each
// scrape; nil reports 0.
func Store(fn func() (fileBytes int64, writes int)) {
	if fn == nil {
		storeFn.Store(nil)
		return
	}
	storeFn.Store(&fn)
}
