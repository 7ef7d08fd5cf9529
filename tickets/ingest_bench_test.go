package tickets

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// benchBody is an 8 KB customer message: the filler of cmd/mailgate-load with a few words that
// differ per message, so the index sees new words as well as common ones.
func benchBody(i int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Order %d, reference ref%dx, tracking TRK%d.\r\n", i, i*7919, i*104729)
	for b.Len() < 8000 {
		b.WriteString("Hello, my order has not arrived and the tracking page shows no update since\r\nMonday. ")
	}
	return b.String()
}

// BenchmarkIngest8KB files 8 KB messages from 8 goroutines into one durable store, each a new
// ticket, as the SMTP server does under cmd/mailgate-load: msg/s is the commit rate, and
// cpu-ms/msg includes the background indexer's work for the same messages (run to the end
// before the clock stops).
func BenchmarkIngest8KB(b *testing.B) {
	e := newEnv(b)
	var n atomic.Int64
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	cpu0, start := cpuTime(), time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			raw := fmt.Sprintf("From: Load Test <load%d@load.example>\r\nTo: <support@example.com>\r\nSubject: Load test message %d\r\n"+
				"Date: Mon, 02 Jan 2026 15:04:05 +0000\r\nMessage-ID: <load-%d@load.example>\r\nMIME-Version: 1.0\r\n"+
				"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n%s", i%50, i, i, benchBody(i))
			_, err := e.svc.Ingest(Incoming{Queue: "support", Raw: []byte(raw), Via: "smtp", Remote: "127.0.0.1:2525",
				Auth: Auth{SPF: "pass", DKIM: "pass", DMARC: "pass", Verified: true}})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	if err := e.svc.indexPending(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/msg")
}
