package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"mailgate/store"
)

func testRecords() map[string]record {
	h1, h2 := hexHash("", Event{Seq: 1}), hexHash("x", Event{Seq: 2})
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 123456000, time.UTC)
	return map[string]record{
		"empty fields, first event": {Event: Event{Seq: 1, Time: t0}, Hash: h1},
		"mail.receive": {Event: Event{Seq: 125000, Time: t0, Actor: "smtp:127.0.0.1", Action: "mail.receive", Object: "ticket/98765",
			Remote: "127.0.0.1:54321", Result: OK, Detail: "via=smtp outcome=new dmarc=pass verified=true"}, Prev: h1, Hash: h2},
		"unicode and JSON's special characters": {Event: Event{Seq: 7, Time: t0, Actor: "zoë", Action: "ticket.view", Object: "ticket/1",
			Remote: "[::1]:25", Result: Denied, Detail: "\"<script>\" & \x00\n\u2028 日本語 🙂"}, Prev: h2, Hash: h1},
		"long detail": {Event: Event{Seq: 1 << 40, Time: t0, Actor: "a", Detail: strings.Repeat("0123456789", 20000)}, Prev: h1, Hash: h2},
		"before 1970": {Event: Event{Seq: 2, Time: time.Date(1969, 7, 20, 20, 17, 40, 1000, time.UTC), Result: Failed}, Prev: h2, Hash: h1},
		"extremes": {Event: Event{Seq: math.MaxUint64, Time: time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC)},
			Prev: h1, Hash: h2},
		"year 0": {Event: Event{Seq: 3, Time: time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)}, Prev: h1, Hash: h2},
	}
}

// A record comes back exactly, so its JSON (the mirror line, the export line) is the JSON that
// older versions stored.
func TestRecordRoundTrip(t *testing.T) {
	for name, rec := range testRecords() {
		t.Run(name, func(t *testing.T) {
			b, err := encodeRecord(rec)
			if err != nil {
				t.Fatal(err)
			}
			if b[0] != recordFormat {
				t.Fatalf("format byte %d", b[0])
			}
			got, err := decodeRecord(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, rec) {
				t.Fatalf("got  %+v\nwant %+v", got, rec)
			}
			want, err := json.Marshal(rec)
			if err != nil {
				t.Fatal(err)
			}
			if line, _ := json.Marshal(got); !bytes.Equal(line, want) {
				t.Fatalf("JSON differs:\n%s\n%s", line, want)
			}
			// The JSON form reads as the same record.
			old, err := decodeRecord(want)
			if err != nil || !reflect.DeepEqual(old, rec) {
				t.Fatalf("from JSON: %+v, %v", old, err)
			}
		})
	}
}

func TestDecodeRecordRejectsDamage(t *testing.T) {
	for name, rec := range testRecords() {
		b, err := encodeRecord(rec)
		if err != nil {
			t.Fatal(err)
		}
		for i := range b {
			if _, err := decodeRecord(b[:i]); err == nil {
				t.Fatalf("%s: cut to %d of %d bytes: decoded", name, i, len(b))
			}
		}
		if _, err := decodeRecord(append(b[:len(b):len(b)], 0)); err == nil {
			t.Fatalf("%s: a trailing byte went unnoticed", name)
		}
	}
	b, _ := encodeRecord(testRecords()["mail.receive"])
	badPrev := append([]byte(nil), b...)
	badPrev[len(b)-1-2*hashLen] = hashLen - 1
	for name, v := range map[string][]byte{
		"prev length not 0 or 32":     badPrev,
		"string longer than the rest": {recordFormat, 1, 2, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a'},
		"length overflowing uint64":   {recordFormat, 1, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"year beyond 9999":            append(binary.AppendVarint([]byte{recordFormat, 1}, math.MaxInt64/2), make([]byte, 6+1+hashLen)...),
		"not JSON either":             []byte("junk"),
		"empty":                       nil,
	} {
		if _, err := decodeRecord(v); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// encodeRecord refuses what would not come back the same, or could not be exported.
func TestEncodeRecordRefuses(t *testing.T) {
	good := testRecords()["mail.receive"]
	for name, change := range map[string]func(r *record){
		"local time":        func(r *record) { r.Time = r.Time.In(time.FixedZone("CET", 3600)) },
		"nanoseconds":       func(r *record) { r.Time = r.Time.Add(1) },
		"year 10000":        func(r *record) { r.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
		"negative year":     func(r *record) { r.Time = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) },
		"uppercase hash":    func(r *record) { r.Hash = strings.ToUpper(r.Hash) },
		"short hash":        func(r *record) { r.Hash = r.Hash[:62] },
		"no hash":           func(r *record) { r.Hash = "" },
		"prev not hex":      func(r *record) { r.Prev = "g" + r.Prev[1:] },
		"prev half a hash":  func(r *record) { r.Prev = r.Prev[:32] },
		"prev with newline": func(r *record) { r.Prev = r.Prev[:63] + "\n" },
	} {
		r := good
		change(&r)
		if _, err := encodeRecord(r); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

// A database written by older versions (JSON records, no anchor) reads, verifies and exports
// as before; events the new code appends to it are compact, and the mixed chain verifies and
// exports the JSON lines the old storage would have held.
func TestLegacyJSONThenCompact(t *testing.T) {
	f := copyLegacy(t)
	l, db := f.open(t)
	stored := storedValues(t, db)
	if len(stored) != 5 {
		t.Fatalf("%d legacy events", len(stored))
	}
	for i, v := range stored {
		if v[0] != '{' {
			t.Fatalf("legacy event %d is not JSON: %q", i+1, v)
		}
	}
	var before bytes.Buffer
	if err := l.Export(&before, Filter{}); err != nil {
		t.Fatal(err)
	}
	if want := string(bytes.Join(stored, []byte("\n"))) + "\n"; before.String() != want {
		t.Fatalf("export of the legacy events:\n%s\nwant the stored JSON:\n%s", before.String(), want)
	}
	for i := 0; i < 3; i++ {
		if err := l.Append(Event{Actor: "smtp:127.0.0.1", Action: "mail.receive", Object: "ticket/1", Remote: "127.0.0.1:2525", Detail: "ü"}); err != nil {
			t.Fatal(err)
		}
	}
	checkMixed(t, l, db, 5, 8)
	l.Close()
	db.Close()
	l, db = f.open(t) // the mirror holds events 6..8 only: it began after the legacy ones
	checkMixed(t, l, db, 5, 8)
}

// The same for a database of the anchored schema whose events are JSON (written by the
// version just before the compact form), with the mirror holding every event.
func TestJSONThenCompact(t *testing.T) {
	l, db := newLog(t, 4)
	for seq := uint64(1); seq <= 4; seq++ {
		putJSONRecord(t, db, seq, rawRecord(t, db, seq))
	}
	for i := 0; i < 4; i++ {
		if err := l.Append(Event{Actor: "alice", Action: "ticket.view", Object: "ticket/2"}); err != nil {
			t.Fatal(err)
		}
	}
	checkMixed(t, l, db, 4, 8)
	mirror := mirrorLines(t, l.mirror.Name())
	if len(mirror) != 8 {
		t.Fatalf("mirror has %d lines", len(mirror))
	}
	for i, m := range mirror {
		if rec := rawRecord(t, db, uint64(i+1)); !reflect.DeepEqual(m, rec) {
			t.Fatalf("mirror line %d: %+v, database %+v", i+1, m, rec)
		}
	}
}

func storedValues(t *testing.T, db *store.DB) [][]byte {
	t.Helper()
	var out [][]byte
	err := db.View(func(tx *store.Tx) error {
		c := tx.Cursor(Bucket)
		for k := c.First(); k != nil; k = c.Next() {
			v, err := tx.Get(Bucket, k)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkMixed wants events 1..nJSON stored as JSON and the rest up to n compact, the chain
// intact, and export giving for each event the JSON line the old storage held.
func checkMixed(t *testing.T, l *Log, db *store.DB, nJSON, n int) {
	t.Helper()
	stored := storedValues(t, db)
	if len(stored) != n {
		t.Fatalf("%d events stored, want %d", len(stored), n)
	}
	var want bytes.Buffer
	for i, v := range stored {
		if isJSON := v[0] == '{'; isJSON != (i < nJSON) {
			t.Fatalf("event %d stored as %q", i+1, v[:1])
		}
		rec, err := decodeRecord(v)
		if err != nil {
			t.Fatal(err)
		}
		line, _ := json.Marshal(rec)
		if i < nJSON && !bytes.Equal(line, v) {
			t.Fatalf("event %d: JSON %s, stored %s", i+1, line, v)
		}
		want.Write(line)
		want.WriteByte('\n')
	}
	for name, check := range map[string]func() (int, error){"Verify": l.Verify, "CheckHead": l.CheckHead} {
		if got, err := check(); err != nil || got != n {
			t.Fatalf("%s: %d events, %v", name, got, err)
		}
	}
	var got bytes.Buffer
	if err := l.Export(&got, Filter{}); err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Fatalf("export:\n%s\nwant:\n%s", got.String(), want.String())
	}
	evs, err := l.Query(Filter{Limit: n}, 0)
	if err != nil || len(evs) != n || evs[0].Seq != uint64(n) || evs[n-1].Seq != 1 {
		t.Fatalf("query: %d events, %v", len(evs), err)
	}
}

// TestRecordSize reports what a typical mail.receive event costs stored, as JSON (older
// versions) and compact (-v shows it): the compact form must stay under the store's compression threshold
// (256 bytes), so sealing it never tries zstd.
func TestRecordSize(t *testing.T) {
	rec := testRecords()["mail.receive"]
	js, _ := json.Marshal(rec)
	bin, err := encodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	_, db := newLog(t, 0)
	var sealedJSON, sealedBin int
	err = db.Update(func(tx *store.Tx) error {
		// tx.Put is how AppendTx stores the record, in both versions.
		if err := tx.Put("size", []byte("json"), js); err != nil {
			return err
		}
		if err := tx.Put("size", []byte("compact"), bin); err != nil {
			return err
		}
		a, _ := tx.GetPlain("size", []byte("json"))
		b, _ := tx.GetPlain("size", []byte("compact"))
		sealedJSON, sealedBin = len(a), len(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mail.receive event: JSON %d bytes (sealed %d), compact %d bytes (sealed %d)", len(js), sealedJSON, len(bin), sealedBin)
	if len(bin) >= 256 {
		t.Fatalf("compact record %d bytes: at or over the store's compression threshold", len(bin))
	}
}

// BenchmarkRecordEncode compares the stored form's cost: JSON as before, compact now.
func BenchmarkRecordEncode(b *testing.B) {
	rec := testRecords()["mail.receive"]
	b.Run("json", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			v, _ := json.Marshal(rec)
			var r record
			json.Unmarshal(v, &r)
		}
	})
	b.Run("compact", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			v, _ := encodeRecord(rec)
			decodeRecord(v)
		}
	})
}

func FuzzDecodeRecord(f *testing.F) {
	for _, rec := range testRecords() {
		b, _ := encodeRecord(rec)
		f.Add(b)
		js, _ := json.Marshal(rec)
		f.Add(js)
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		rec, err := decodeRecord(v)
		if err != nil || len(v) == 0 || v[0] != recordFormat {
			return
		}
		b, err := encodeRecord(rec)
		if err != nil {
			t.Fatalf("a decoded record does not encode: %v", err)
		}
		if again, err := decodeRecord(b); err != nil || !reflect.DeepEqual(again, rec) {
			t.Fatalf("re-encoded record reads as %+v, %v; want %+v", again, err, rec)
		}
	})
}
