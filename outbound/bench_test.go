package outbound

import (
	"bytes"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailgate/config"
	"mailgate/store"
	"mailgate/tickets"
)

// text8K is an 8 KB reply with non-ASCII text, so quoted-printable has work to do.
var text8K = func() string {
	line := "Grüße aus dem Support: please restart the printer and try again. "
	return strings.Repeat(line+"\n", 8192/(len(line)+1))
}()

// benchKeys selects the signing keys: "rsa+ed25519", "ed25519" or "rsa".
func benchKeys(kind string) func(*config.Config) {
	return func(c *config.Config) {
		if !strings.Contains(kind, "rsa") {
			c.Outbound.DKIMKeyFile = ""
		}
		if !strings.Contains(kind, "ed25519") {
			c.Outbound.DKIMEd25519KeyFile = ""
		}
	}
}

// BenchmarkCompose: building and DKIM-signing one 8 KB reply.
func BenchmarkCompose(b *testing.B) {
	for _, kind := range []string{"rsa+ed25519", "ed25519", "rsa"} {
		b.Run(kind, func(b *testing.B) {
			e := newEnv(b, benchKeys(kind))
			og := outgoing()
			og.Text = text8K
			b.SetBytes(int64(len(text8K)))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, _, err := e.ob.Compose(og); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkComposeAttachment: building and signing an 8 KB reply with a 1 MiB attachment
// (base64 encoding and the DKIM body hash over 1.4 MB dominate).
func BenchmarkComposeAttachment(b *testing.B) {
	e := newEnv(b, benchKeys("rsa+ed25519"))
	og := outgoing()
	og.Text = text8K
	og.Attachments = []tickets.ParsedAttachment{{Name: "label.pdf", ContentType: "application/pdf", Data: bytes.Repeat([]byte("0123456789abcdef"), 1<<16)}}
	b.SetBytes(int64(len(text8K) + len(og.Attachments[0].Data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := e.ob.Compose(og); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkQueueEnqueue: committing a queued 8 KB message durably (fsync), from concurrent
// callers sharing group commits as Reply does.
func BenchmarkQueueEnqueue(b *testing.B) {
	e := newEnv(b, nil)
	raw, _, err := e.ob.Compose(outgoing())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	b.ResetTimer()
	b.SetParallelism(16) // many agents replying at once
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			err := e.db.Batch(func(tx *store.Tx) error {
				return e.ob.EnqueueTx(tx, 1, 1, queueAddr, []string{customer}, raw)
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkReplyDelivered is the figure: replies composed, signed, queued (durably)
// and delivered to a local smtp-sink, per second. Reported as replies/s.
func BenchmarkReplyDelivered(b *testing.B) {
	for _, kind := range []string{"ed25519", "rsa", "rsa+ed25519"} {
		b.Run(kind, func(b *testing.B) {
			s := runSink(b, freeAddr(b), false) // discard: measure mailgate, not smtp-sink's disk
			var done atomic.Int64
			var mu sync.Mutex
			var failed []string
			all := make(chan struct{})
			var target atomic.Int64
			e := newEnvWith(b, func(c *config.Config) {
				benchKeys(kind)(c)
				c.Outbound.Relay, c.Outbound.RelayTLS = s.Addr, TLSNone
			}, func(e *env, o *Options) {
				o.Observe = func(a Attempt) {
					if a.Outcome != "sent" {
						mu.Lock()
						failed = append(failed, a.Err)
						mu.Unlock()
					}
					if done.Add(1) == target.Load() {
						close(all)
					}
				}
			})
			e.start()
			og := outgoing()
			og.Cc = nil
			og.Text = "Thanks for writing; the fix is on its way.\n"
			target.Store(int64(b.N))
			start := time.Now()
			b.ResetTimer()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					raw, _, err := e.ob.Compose(og)
					if err == nil {
						err = e.db.Batch(func(tx *store.Tx) error {
							return e.ob.EnqueueTx(tx, 1, 1, queueAddr, []string{customer}, raw)
						})
					}
					if err != nil {
						b.Error(err)
						return
					}
					e.ob.Kick()
				}
			})
			select {
			case <-all:
			case <-time.After(10 * time.Minute):
				b.Fatalf("only %d of %d delivered", done.Load(), b.N)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "replies/s")
			if len(failed) > 0 {
				b.Fatalf("%d deliveries failed, first: %s", len(failed), failed[0])
			}
		})
	}
}

// TestBenchHelpers keeps the benchmark setup honest in normal test runs.
func TestBenchHelpers(t *testing.T) {
	if len(text8K) < 7000 || len(text8K) > 8192 {
		t.Errorf("text8K is %d bytes", len(text8K))
	}
	for _, k := range []string{"rsa", "ed25519", "rsa+ed25519"} {
		e := newEnv(t, benchKeys(k))
		if n := len(e.ob.DKIMKeys()); n != strings.Count(k, "+")+1 {
			t.Errorf("%s: %d keys", k, n)
		}
	}
}
