package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"mailgate/inbound"
)

// The SMTP adapter must keep satisfying the server's interface.
var _ inbound.Metrics = SMTP{}
var _ inbound.VerdictMetrics = SMTP{}

// value returns the value of the metric name with exactly the given labels, or -1.
func value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !match(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return -1
}

func match(m *dto.Metric, labels map[string]string) bool {
	if len(m.GetLabel()) != len(labels) {
		return false
	}
	for _, lp := range m.GetLabel() {
		if labels[lp.GetName()] != lp.GetValue() {
			return false
		}
	}
	return true
}

func TestSMTPAdapterMapsResults(t *testing.T) {
	cases := []struct{ result, outcome string }{
		{"accepted", Accepted}, {"quarantined", Accepted}, {"too_large", Rejected}, {"bare_newline", Rejected}, {"nul", Rejected},
		{"dmarc_reject", Rejected}, {"dns_defer", Deferred}, {"storage_error", Deferred}, {"read_error", Error},
		{"something_new", "other"},
	}
	for _, c := range cases {
		before := value(t, "mailgate_smtp_messages_total", map[string]string{"outcome": c.outcome, "reason": c.result})
		SMTP{}.Message(c.result, 8192, 3*time.Millisecond)
		after := value(t, "mailgate_smtp_messages_total", map[string]string{"outcome": c.outcome, "reason": c.result})
		if after != max(before, 0)+1 {
			t.Errorf("%s: counter %v -> %v, want +1 under outcome %s", c.result, before, after, c.outcome)
		}
	}
	if n := value(t, "mailgate_smtp_data_seconds", map[string]string{"outcome": Accepted}); n < 2 {
		t.Errorf("latency histogram has %v samples for accepted, want >= 2", n)
	}
	SMTP{}.Threading("threaded")
	SMTP{}.Verdict("pass", "pass", "pass")
	if value(t, "mailgate_tickets_threading_total", map[string]string{"outcome": "threaded"}) < 1 ||
		value(t, "mailgate_verify_results_total", map[string]string{"method": "dmarc", "result": "pass"}) < 1 {
		t.Error("threading or verdict not counted")
	}
	SMTP{}.Connection("accepted")
	SMTP{}.Command("rcpt", "unknown")
	if value(t, "mailgate_smtp_connections_total", map[string]string{"result": "accepted"}) < 1 ||
		value(t, "mailgate_smtp_commands_total", map[string]string{"command": "rcpt", "result": "unknown"}) < 1 {
		t.Error("connection or command not counted")
	}
}

func TestVerificationWords(t *testing.T) {
	Verification("pass", "FAIL", "bogus\r\nword")
	for _, c := range []struct{ method, result string }{{"spf", "pass"}, {"dkim", "fail"}, {"dmarc", "other"}} {
		if value(t, "mailgate_verify_results_total", map[string]string{"method": c.method, "result": c.result}) < 1 {
			t.Errorf("%s=%s not counted", c.method, c.result)
		}
	}
}

func TestAuditCountsLogins(t *testing.T) {
	get := func(kind, result string) float64 {
		return max(value(t, "mailgate_logins_total", map[string]string{"kind": kind, "result": result}), 0)
	}
	webOK, webFail, app := get("web", "ok"), get("web", "failed"), get("app", "ok")
	AuditEvent("login", "ok") // password right: not yet a login
	AuditEvent("login.code", "ok")
	AuditEvent("login", "denied")
	AuditEvent("login.app", "ok")
	if get("web", "ok") != webOK+1 || get("web", "failed") != webFail+1 || get("app", "ok") != app+1 {
		t.Errorf("logins: web ok %v->%v, failed %v->%v, app %v->%v", webOK, get("web", "ok"), webFail, get("web", "failed"), app, get("app", "ok"))
	}
	if value(t, "mailgate_audit_events_total", map[string]string{"action": "login.code", "result": "ok"}) < 1 {
		t.Error("audit event not counted")
	}
}

// A flood of distinct label values (say, actions echoing input) stays bounded.
func TestLabelCardinalityIsCapped(t *testing.T) {
	for i := 0; i < 3*maxSeries; i++ {
		Threading("outcome-" + strings.Repeat("x", i%50) + string(rune('a'+i%26)) + time.Duration(i).String())
	}
	mfs, _ := Registry().Gather()
	for _, mf := range mfs {
		if mf.GetName() == "mailgate_tickets_threading_total" && len(mf.GetMetric()) > maxSeries+1 {
			t.Fatalf("%d series, cap is %d", len(mf.GetMetric()), maxSeries)
		}
	}
	if value(t, "mailgate_tickets_threading_total", map[string]string{"outcome": "other"}) < 1 {
		t.Error("overflow not counted as other")
	}
}

func TestFuncGaugesAndFetch(t *testing.T) {
	QueueDepth(func() int { return 7 })
	Store(func() (int64, int) { return 4096, 3 })
	Fetch(FetchState{Account: "imaps://u@h:993/INBOX", Connected: true, Fetched: 5, LastSuccess: time.Unix(100, 0)})
	Delivery("retry", 1, 2, 0, 40*time.Millisecond)
	BuildInfo("v1.2.3 (abc)")
	StoreCommit(5, 4*time.Millisecond)
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"mailgate_outbound_queue_depth", nil, 7},
		{"mailgate_store_file_bytes", nil, 4096},
		{"mailgate_store_page_writes_total", nil, 3},
		{"mailgate_fetch_connected", map[string]string{"account": "imaps://u@h:993/INBOX"}, 1},
		{"mailgate_fetch_messages_total", map[string]string{"account": "imaps://u@h:993/INBOX", "result": "fetched"}, 5},
		{"mailgate_fetch_last_success_timestamp_seconds", map[string]string{"account": "imaps://u@h:993/INBOX"}, 100},
		{"mailgate_outbound_recipients_total", map[string]string{"result": "deferred"}, 2},
		{"mailgate_build_info", map[string]string{"version": "v1.2.3__abc_"}, 1},
		{"mailgate_store_commit_batch_size", nil, 1},
		{"mailgate_store_commit_seconds", nil, 1},
	}
	for _, c := range checks {
		if got := value(t, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	QueueDepth(nil)
	if got := value(t, "mailgate_outbound_queue_depth", nil); got != 0 {
		t.Errorf("queue depth after nil = %v", got)
	}
}

// Handler serves mailgate's collectors, all named mailgate_*, beside the runtime's.
func TestHandlerServesEverything(t *testing.T) {
	SMTPAccepted(time.Millisecond)
	w := httptest.NewRecorder()
	Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	text := string(body)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, text)
	}
	for _, want := range []string{"mailgate_smtp_messages_total{", "mailgate_smtp_data_seconds_bucket{", "go_goroutines ", "mailgate_outbound_queue_depth "} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	mfs, err := Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "mailgate_") {
			t.Errorf("metric %s is not named mailgate_*", mf.GetName())
		}
	}
}

func TestCleanLabel(t *testing.T) {
	for in, want := range map[string]string{"": "none", "ok": "ok", "Login.Code": "login.code", "a b\n": "a_b_", "ctl.agent.list": "ctl.agent.list"} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkSMTPMessage(b *testing.B) {
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			SMTP{}.Message("accepted", 8192, time.Millisecond)
		}
	})
}
