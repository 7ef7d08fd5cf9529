package tickets

import (
	"strconv"
	"syscall"
	"testing"
	"time"

	"mailgate/store"
)

// BenchmarkWork100k measures one work-queue request over 100,000 tickets on one goroutine: the
// list in waiting order, and searches (one address, a word in every ticket), each with its
// audit event committed. BenchmarkScale in web measures the same through HTTP under 8 clients.
func BenchmarkWork100k(b *testing.B) {
	const n = 100000
	e := newEnv(b)
	base := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	h := headersOf(e.db)
	h.mu.Lock()
	h.loaded = true
	for i := 1; i <= n; i++ {
		q := []string{"support", "sales"}[i%2]
		h.set(&Ticket{ID: uint64(i), Queue: q, Subject: "Question " + strconv.Itoa(i), Status: StatusNew,
			Customer: "c" + strconv.Itoa(i) + "@customer.example", Created: base, Updated: base.Add(time.Duration(i) * time.Second),
			Waiting: base.Add(time.Duration(n-i) * time.Second), Messages: 1})
	}
	h.mu.Unlock()
	for start := 1; start <= n; start += 2000 {
		err := e.db.Update(func(tx *store.Tx) error {
			for i := start; i < start+2000 && i <= n; i++ {
				t := h.byID[uint64(i)]
				m := &Message{Seq: 1, From: t.Customer, Subject: t.Subject, Text: "Hello, my order " + strconv.Itoa(i) + " is late."}
				if err := e.svc.indexMessage(tx, t, m); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	all := agentA
	all.Queues = []string{"support", "sales"}
	for _, c := range []struct{ name, search, sort string }{
		{"list-waiting", "", ""}, {"list-activity", "", SortActivity},
		{"search-address", "c4711@customer.example", ""}, {"search-common-word", "late", ""}, {"search-two-words", "order 4711", ""},
	} {
		b.Run(c.name, func(b *testing.B) {
			cpu0 := cpuTime()
			for b.Loop() {
				r, err := e.svc.Work(all, ListQuery{Search: c.search, Sort: c.sort})
				if err != nil || len(r.Tickets) == 0 {
					b.Fatalf("%d tickets, %v", len(r.Tickets), err)
				}
			}
			// The machine is shared: wall time per op includes waiting for a core; CPU time
			// per op is what the request itself costs.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
