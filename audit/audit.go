// Package audit owns mailgate's tamper-evident log: append-only events, each sealed in the store
// and chained to the previous one by SHA-256, with verification and JSON-lines export.
// Callers that read customer data append in the same transaction, so the read cannot skip it.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"mailgate/store"
)

// Bucket is where events live, keyed by 8-byte big-endian sequence numbers (CONTRACT.md).
const Bucket = "audit"

const headBucket = "audit_head"

var headKey = []byte("head")

// Results.
const (
	OK     = "ok"
	Denied = "denied"
	Failed = "failed"
)

// Event is one audited action.
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Object string    `json:"object"`
	Remote string    `json:"remote"`
	Result string    `json:"result"`
	Detail string    `json:"detail"`
}

// record is what is sealed: the event plus its place in the chain.
type record struct {
	Event
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// Log appends to and reads the chain.
type Log struct {
	db *store.DB

	mu     sync.Mutex
	mirror *os.File
	// OnAppend, when set, is called after each committed event (metrics).
	OnAppend func(Event)
	// MirrorRotated is set by New when the mirror file held events the database does not
	// (it was restored from a backup): that file was renamed to this name and a new one began.
	MirrorRotated string
	// MirrorAhead is the last seq the rotated mirror held.
	MirrorAhead uint64
}

// New opens the log on db. mirrorFile, when not empty, receives every committed event as a JSON
// line too (appended, fsynced), for shipping to a separate log host.
func New(db *store.DB, mirrorFile string) (*Log, error) {
	l := &Log{db: db}
	if mirrorFile != "" {
		if err := l.rotateMirror(mirrorFile); err != nil {
			return nil, fmt.Errorf("audit mirror: %w", err)
		}
		f, err := os.OpenFile(mirrorFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("audit mirror: %w", err)
		}
		l.mirror = f
	}
	return l, nil
}

// rotateMirror starts a new mirror segment when the mirror is ahead of the database. After a
// restore the database's chain continues from the backup's last seq, so appending to the old
// mirror would give it two different events under the same seq; the old file is kept, renamed,
// as the record of what happened before the restore.
func (l *Log) rotateMirror(file string) error {
	last, err := lastMirrorSeq(file)
	if err != nil || last == 0 {
		return err
	}
	var seq uint64
	if err := l.db.View(func(tx *store.Tx) error { seq = tx.Seq(Bucket); return nil }); err != nil {
		return err
	}
	if last <= seq {
		return nil
	}
	name := fmt.Sprintf("%s.before-restore.%s.seq%d", file, time.Now().UTC().Format("20060102T150405Z"), last)
	if _, err := os.Lstat(name); err == nil {
		return fmt.Errorf("%s holds events up to seq %d but the database only up to %d, and %s exists already; move it away", file, last, seq, name)
	}
	if err := os.Rename(file, name); err != nil {
		return err
	}
	l.MirrorRotated, l.MirrorAhead = name, last
	return nil
}

// lastMirrorSeq returns the seq of the mirror's last complete line (0: no file, no event).
func lastMirrorSeq(file string) (uint64, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	const tail = 1 << 20 // events are far shorter than this
	off := max(0, st.Size()-tail)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var ev struct {
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal(lines[i], &ev) == nil && ev.Seq > 0 {
			return ev.Seq, nil
		}
	}
	return 0, nil
}

// Close closes the mirror file.
func (l *Log) Close() error {
	if l.mirror != nil {
		return l.mirror.Close()
	}
	return nil
}

// Append writes ev in its own group-committed transaction and returns once it is durable.
func (l *Log) Append(ev Event) error {
	return l.db.Batch(func(tx *store.Tx) error { return l.AppendTx(tx, ev) })
}

// AppendTx writes ev inside the caller's write transaction, so the event and the change it
// describes commit together or not at all.
func (l *Log) AppendTx(tx *store.Tx, ev Event) error {
	head, err := tx.GetPlain(headBucket, headKey)
	if err != nil {
		return fmt.Errorf("audit head: %w", err)
	}
	var prev string
	if len(head) > 8 {
		prev = hex.EncodeToString(head[8:])
	}
	seq, err := tx.NextSeq(Bucket)
	if err != nil {
		return fmt.Errorf("audit seq: %w", err)
	}
	ev.Seq = seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC().Truncate(time.Microsecond)
	if ev.Result == "" {
		ev.Result = OK
	}
	h := chainHash(prev, ev)
	rec := record{Event: ev, Prev: prev, Hash: hex.EncodeToString(h)}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := tx.Put(Bucket, store.U64(seq), b); err != nil {
		return fmt.Errorf("audit append: %w", err)
	}
	if err := tx.PutPlain(headBucket, headKey, append(store.U64(seq), h...)); err != nil {
		return fmt.Errorf("audit head: %w", err)
	}
	tx.OnCommit(func() { l.committed(ev, b) })
	return nil
}

func (l *Log) committed(ev Event, line []byte) {
	if l.mirror != nil {
		l.mu.Lock()
		l.mirror.Write(append(line, '\n'))
		l.mirror.Sync()
		l.mu.Unlock()
	}
	if l.OnAppend != nil {
		l.OnAppend(ev)
	}
}

// chainHash = SHA-256(prev hash || the event's canonical JSON). The JSON of a struct has a fixed
// field order, so the same event always hashes the same.
func chainHash(prev string, ev Event) []byte {
	b, _ := json.Marshal(ev)
	h := sha256.New()
	h.Write([]byte(prev))
	h.Write([]byte{0})
	h.Write(b)
	return h.Sum(nil)
}

// ChainError names the first event that breaks the chain.
type ChainError struct {
	Seq    uint64
	Reason string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at seq %d: %s", e.Seq, e.Reason)
}

// Verify walks the whole chain. It returns the number of good events, and a *ChainError for the
// first deleted, edited, reordered or swapped event.
func (l *Log) Verify() (int, error) {
	n := 0
	err := l.db.View(func(tx *store.Tx) error {
		head, err := tx.GetPlain(headBucket, headKey)
		if err != nil {
			return err
		}
		var prev string
		want := uint64(1)
		c := tx.Cursor(Bucket)
		for k := c.First(); k != nil; k = c.Next() {
			seq := store.FromU64(k)
			if len(k) != 8 || seq != want {
				return &ChainError{Seq: want, Reason: "event missing (deleted or reordered)"}
			}
			v, err := tx.Get(Bucket, k)
			if err != nil {
				return &ChainError{Seq: seq, Reason: "record does not authenticate (edited, swapped or moved)"}
			}
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return &ChainError{Seq: seq, Reason: "record unreadable"}
			}
			if rec.Seq != seq {
				return &ChainError{Seq: seq, Reason: fmt.Sprintf("record claims seq %d", rec.Seq)}
			}
			if rec.Prev != prev {
				return &ChainError{Seq: seq, Reason: "previous-hash does not match (an earlier event was changed or removed)"}
			}
			h := hex.EncodeToString(chainHash(prev, rec.Event))
			if h != rec.Hash {
				return &ChainError{Seq: seq, Reason: "hash does not match the event"}
			}
			prev = h
			want++
			n++
		}
		if head == nil {
			if n > 0 {
				return &ChainError{Seq: 1, Reason: "chain head missing"}
			}
			return nil
		}
		headSeq := store.FromU64(head)
		if headSeq != uint64(n) {
			return &ChainError{Seq: uint64(n) + 1, Reason: fmt.Sprintf("events %d..%d missing at the end", n+1, headSeq)}
		}
		if hex.EncodeToString(head[8:]) != prev {
			return &ChainError{Seq: headSeq, Reason: "chain head does not match the last event"}
		}
		return nil
	})
	return n, err
}

// Filter selects events for Export and Query.
type Filter struct {
	Since  time.Time
	Actor  string
	Action string
	Object string
	Result string
	Limit  int // newest first when Limit > 0 in Query
}

func (f Filter) match(ev Event) bool {
	return (f.Since.IsZero() || !ev.Time.Before(f.Since)) &&
		(f.Actor == "" || f.Actor == ev.Actor) &&
		(f.Action == "" || f.Action == ev.Action) &&
		(f.Object == "" || f.Object == ev.Object) &&
		(f.Result == "" || f.Result == ev.Result)
}

// Export writes the matching events as JSON lines, oldest first, with their chain hashes.
func (l *Log) Export(w io.Writer, f Filter) error {
	bw := bufio.NewWriter(w)
	err := l.db.View(func(tx *store.Tx) error {
		c := tx.Cursor(Bucket)
		for k := c.First(); k != nil; k = c.Next() {
			v, err := tx.Get(Bucket, k)
			if err != nil {
				return fmt.Errorf("audit seq %d: %w", store.FromU64(k), err)
			}
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if !f.match(rec.Event) {
				continue
			}
			bw.Write(v)
			bw.WriteByte('\n')
		}
		return nil
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// Query returns matching events, newest first, at most f.Limit (default 100), skipping offset.
func (l *Log) Query(f Filter, offset int) ([]Event, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	var out []Event
	err := l.db.View(func(tx *store.Tx) error {
		c := tx.Cursor(Bucket)
		skipped := 0
		for k := c.Last(); k != nil && len(out) < f.Limit; k = c.Prev() {
			v, err := tx.Get(Bucket, k)
			if err != nil {
				return err
			}
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if !f.match(rec.Event) {
				continue
			}
			if skipped < offset {
				skipped++
				continue
			}
			out = append(out, rec.Event)
		}
		return nil
	})
	return out, err
}

// IsChainError reports whether err is a broken chain (as opposed to an I/O problem).
func IsChainError(err error) (*ChainError, bool) {
	var ce *ChainError
	ok := errors.As(err, &ce)
	return ce, ok
}
