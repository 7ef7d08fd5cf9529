package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailgate/store"
)

func newLog(t *testing.T, n int) (*Log, *store.DB) {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "a.db"), bytes.Repeat([]byte{3}, 32), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := New(db, filepath.Join(t.TempDir(), "mirror.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := l.Append(Event{Actor: "alice", Action: "ticket.view", Object: "ticket/1", Remote: "127.0.0.1", Detail: "d"}); err != nil {
			t.Fatal(err)
		}
	}
	return l, db
}

func rawRecord(t *testing.T, db *store.DB, seq uint64) record {
	t.Helper()
	var rec record
	err := db.View(func(tx *store.Tx) error {
		v, err := tx.Get(Bucket, store.U64(seq))
		if err != nil {
			return err
		}
		rec, err = decodeRecord(v)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// putRecord seals rec at seq in the compact form, as someone with the key could.
func putRecord(t *testing.T, db *store.DB, seq uint64, rec record) {
	t.Helper()
	b, err := encodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	putStored(t, db, seq, b)
}

// putJSONRecord seals rec at seq as JSON, the form of older versions, which is still read.
func putJSONRecord(t *testing.T, db *store.DB, seq uint64, rec record) {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	putStored(t, db, seq, b)
}

func putStored(t *testing.T, db *store.DB, seq uint64, v []byte) {
	t.Helper()
	if err := db.Update(func(tx *store.Tx) error { return tx.Put(Bucket, store.U64(seq), v) }); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyIntact(t *testing.T) {
	l, _ := newLog(t, 5)
	n, err := l.Verify()
	if err != nil || n != 5 {
		t.Fatalf("n=%d err=%v", n, err)
	}
	mirror, _ := os.ReadFile(l.mirror.Name())
	if got := strings.Count(string(mirror), "\n"); got != 5 {
		t.Fatalf("mirror has %d lines", got)
	}
}

func TestVerifyFindsTampering(t *testing.T) {
	cases := []struct {
		name    string
		tamper  func(t *testing.T, db *store.DB)
		wantSeq uint64
	}{
		{"deleted", func(t *testing.T, db *store.DB) {
			db.Update(func(tx *store.Tx) error { return tx.Delete(Bucket, store.U64(3)) })
		}, 3},
		{"deleted last", func(t *testing.T, db *store.DB) {
			db.Update(func(tx *store.Tx) error { return tx.Delete(Bucket, store.U64(5)) })
		}, 5},
		{"edited with the key", func(t *testing.T, db *store.DB) {
			rec := rawRecord(t, db, 2)
			rec.Actor = "mallory"
			putRecord(t, db, 2, rec)
		}, 2},
		{"edited with the key, stored as JSON", func(t *testing.T, db *store.DB) {
			rec := rawRecord(t, db, 2)
			rec.Actor = "mallory"
			putJSONRecord(t, db, 2, rec)
		}, 2},
		{"edited and rehashed", func(t *testing.T, db *store.DB) {
			rec := rawRecord(t, db, 2)
			rec.Result = Denied
			rec.Hash = hexHash(rec.Prev, rec.Event)
			putRecord(t, db, 2, rec)
		}, 3},
		{"swapped raw bytes", func(t *testing.T, db *store.DB) {
			db.Update(func(tx *store.Tx) error {
				a, _ := tx.GetPlain(Bucket, store.U64(2))
				b, _ := tx.GetPlain(Bucket, store.U64(4))
				tx.PutPlain(Bucket, store.U64(2), b)
				return tx.PutPlain(Bucket, store.U64(4), a)
			})
		}, 2},
		{"reordered with the key", func(t *testing.T, db *store.DB) {
			a, b := rawRecord(t, db, 2), rawRecord(t, db, 3)
			putRecord(t, db, 2, b)
			putRecord(t, db, 3, a)
		}, 2},
		{"edited and rehashed, stored as JSON", func(t *testing.T, db *store.DB) {
			rec := rawRecord(t, db, 2)
			rec.Result = Denied
			rec.Hash = hexHash(rec.Prev, rec.Event)
			putJSONRecord(t, db, 2, rec)
		}, 3},
		{"garbage", func(t *testing.T, db *store.DB) {
			db.Update(func(tx *store.Tx) error { return tx.PutPlain(Bucket, store.U64(4), []byte("junk")) })
		}, 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, db := newLog(t, 5)
			c.tamper(t, db)
			_, err := l.Verify()
			ce, ok := IsChainError(err)
			if !ok {
				t.Fatalf("err = %v, want a chain error", err)
			}
			if ce.Seq != c.wantSeq {
				t.Fatalf("first bad seq %d, want %d (%v)", ce.Seq, c.wantSeq, err)
			}
		})
	}
}

func hexHash(prev string, ev Event) string {
	h := chainHash(prev, ev)
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 64)
	for _, b := range h {
		out = append(out, digits[b>>4], digits[b&15])
	}
	return string(out)
}

func TestExportAndQuery(t *testing.T) {
	l, _ := newLog(t, 3)
	l.Append(Event{Actor: "bob", Action: "login", Result: Failed})
	var buf bytes.Buffer
	if err := l.Export(&buf, Filter{Since: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines", len(lines))
	}
	var first map[string]any
	json.Unmarshal([]byte(lines[0]), &first)
	for _, k := range []string{"seq", "time", "actor", "action", "object", "remote", "result", "detail", "hash"} {
		if _, ok := first[k]; !ok {
			t.Errorf("export lacks %q", k)
		}
	}
	buf.Reset()
	l.Export(&buf, Filter{Since: time.Now().Add(time.Hour)})
	if buf.Len() != 0 {
		t.Error("since filter ignored")
	}
	evs, _ := l.Query(Filter{Actor: "bob"}, 0)
	if len(evs) != 1 || evs[0].Seq != 4 {
		t.Fatalf("query: %+v", evs)
	}
}

// BenchmarkAppend measures durable audit appends with 1 and 16 concurrent writers sharing
// group commits (events/s = 1e9 / ns/op).
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			db, err := store.Open(filepath.Join(b.TempDir(), "a.db"), bytes.Repeat([]byte{3}, 32), store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			l, _ := New(db, "")
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := l.Append(Event{Actor: "alice", Action: "ticket.view", Object: "ticket/1", Remote: "127.0.0.1:4242"}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkAppendTx measures the CPU cost of an append without the fsync: 100 events per
// transaction (ns/op is per event).
func BenchmarkAppendTx(b *testing.B) {
	db, err := store.Open(filepath.Join(b.TempDir(), "a.db"), bytes.Repeat([]byte{3}, 32), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	l, _ := New(db, "")
	b.ResetTimer()
	for done := 0; done < b.N; {
		err := db.Update(func(tx *store.Tx) error {
			for i := 0; i < 100 && done < b.N; i++ {
				if err := l.AppendTx(tx, Event{Actor: "alice", Action: "ticket.view", Object: "ticket/1", Remote: "127.0.0.1:4242"}); err != nil {
					return err
				}
				done++
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
