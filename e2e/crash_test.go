package e2e

import (
	"testing"
	"time"
)

// TestCrashSafety: mail keeps arriving while mailgate is SIGKILLed three times and started
// again. Every message that got a 250 must be stored (DESIGN.md invariant 1: the 250 follows
// the fsync), and the audit chain must still verify.
func TestCrashSafety(t *testing.T) {
	s := newSite(t, "")
	d := s.start(t)
	// Bounded by time: the load tool retries connections while the daemon is down.
	l := s.startLoad(t, "-n", "1000000", "-c", "8", "-size", "4096", "-timeout", "10s")
	for i, after := range []time.Duration{1500 * time.Millisecond, 2 * time.Second, 2 * time.Second} {
		time.Sleep(after)
		d.kill()
		t.Logf("kill %d: %v", i+1, d.err)
		time.Sleep(200 * time.Millisecond) // let some clients find it down
		d = s.start(t)
	}
	r, ids := l.wait(t)
	if code := d.stop(); code != 0 {
		t.Fatalf("mailgate exited %d after SIGTERM:\n%s", code, d.out)
	}
	if r.Accepted == 0 {
		t.Fatalf("no message was accepted: %+v", r)
	}
	noPermanentFailures(t, r)
	if r.Failures["net"] == 0 && r.ConnectFailures["net"] == 0 {
		t.Errorf("no connection broke: the kills did not land during the load (%+v)", r)
	}
	s.auditVerify(t)
	a := s.open(t)
	checkStored(t, a, ids)
	if n := len(allTickets(t, a)); n < len(ids) {
		t.Errorf("%d tickets for %d acknowledged messages", n, len(ids))
	}
	t.Logf("%d acknowledged messages all stored across 3 SIGKILLs; %d failed with %v", len(ids), r.Attempted-r.Accepted, r.Failures)
}
