package agentmail

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// BenchmarkIMAPFetch measures one UID FETCH of 100 whole messages (BODY.PEEK[]) over a loopback
// connection with go-imap's client: each message is read through tickets.Raw, which unseals it
// and commits its audit event (the window of FetchWindow reads shares commits).
func BenchmarkIMAPFetch(b *testing.B) {
	e := newEnv(b)
	body := strings.Repeat("A line of a customer's message, long enough to look like mail.\r\n", 40) // ~2.6 KB
	for i := 0; i < 100; i++ {
		e.ingest("support", fmt.Sprintf("c%d@example.net", i), fmt.Sprintf("Question %d", i), fmt.Sprintf("q%d@example.net", i), body)
	}
	c := e.imapClient("alice", nil)
	if _, err := c.Select("support", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	var all imap.UIDSet
	all.AddRange(1, 0)
	opts := &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		msgs, err := c.Fetch(all, opts).Collect()
		if err != nil {
			b.Fatal(err)
		}
		if len(msgs) != 100 {
			b.Fatalf("%d messages", len(msgs))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*100), "µs/message")
}
