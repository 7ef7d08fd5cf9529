// Package audit owns mailgate's tamper-evident log: append-only events, each sealed in the store
// and chained to the previous one by SHA-256, with verification and JSON-lines export.
// Callers that read customer data append in the same transaction, so the read cannot skip it.
package audit

import (
	"bufio"
	"bytes"
	"crypto/hmac"
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

// The head is seq (8) || hash (32) || HMAC (32) over both; the anchor (store.Tx.Anchor) is
// seq || hash, sealed into the store's key check record, or empty before the first event.
const (
	hashLen   = sha256.Size
	headLen   = 8 + hashLen + sha256.Size
	anchorLen = 8 + hashLen
	macHead   = "audit head"
)

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

// record is what is sealed (compact, record.go): the event plus its place in the chain. Its
// JSON is the mirror's and export's line, and what older versions stored.
type record struct {
	Event
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// Log appends to and reads the chain.
type Log struct {
	db         *store.DB
	mirrorPath string
	mac        func(parts ...[]byte) []byte // the head's HMAC

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
// line too (appended, fsynced), for shipping to a separate log host; Verify compares it with
// the database.
//
// A database written before the chain state was anchored gets its anchor and authenticated
// head here, but only after the whole chain verifies: a broken chain is left as it is, for
// Verify to report.
func New(db *store.DB, mirrorFile string) (*Log, error) {
	l := &Log{db: db, mac: db.MACFunc(macHead)}
	if err := l.upgrade(); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if mirrorFile != "" {
		if err := l.rotateMirror(mirrorFile); err != nil {
			return nil, fmt.Errorf("audit mirror: %w", err)
		}
		f, err := os.OpenFile(mirrorFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("audit mirror: %w", err)
		}
		l.mirror, l.mirrorPath = f, mirrorFile
	}
	return l, nil
}

func (l *Log) upgrade() error {
	var anchored bool
	if err := l.db.View(func(tx *store.Tx) (err error) {
		_, anchored, err = tx.Anchor()
		return err
	}); err != nil || anchored {
		return err
	}
	return l.db.Update(func(tx *store.Tx) error {
		if _, anchored, err := tx.Anchor(); err != nil || anchored {
			return err
		}
		n, last, err := l.walk(tx, nil)
		if err == nil {
			err = l.checkEnd(tx, false, n, last)
		}
		if _, broken := IsChainError(err); broken {
			return nil // left without an anchor: Verify reports the break, serve refuses to start
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return tx.SetAnchor(nil)
		}
		return l.putState(tx, n, last)
	})
}

// putState writes the authenticated head and the anchor for the chain ending at seq with hash h.
func (l *Log) putState(tx *store.Tx, seq uint64, h []byte) error {
	head := append(append(store.U64(seq), h...), l.headMAC(seq, h)...)
	if err := tx.PutPlain(headBucket, headKey, head); err != nil {
		return fmt.Errorf("audit head: %w", err)
	}
	if err := tx.SetAnchor(append(store.U64(seq), h...)); err != nil {
		return fmt.Errorf("audit anchor: %w", err)
	}
	return nil
}

func (l *Log) headMAC(seq uint64, h []byte) []byte {
	return l.mac(store.U64(seq), h)
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
	// Only a database that is consistent in itself looks like a restore. One whose chain does
	// not check out was tampered with or damaged: its mirror stays where it is, as evidence,
	// and the check (audit verify, serve's start) reports the break. l.mirrorPath is not set
	// yet, so this check leaves the mirror out.
	n, err := l.CheckHead()
	if _, broken := IsChainError(err); broken {
		return nil
	}
	if err != nil {
		return err
	}
	seq := uint64(n)
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
//
// The next event follows the anchor, not whatever the bucket holds: after the events were
// deleted, appending must not start a fresh chain that would verify, and it never overwrites an
// event that is there.
func (l *Log) AppendTx(tx *store.Tx, ev Event) error {
	anchor, anchored, err := tx.Anchor()
	if err != nil {
		return fmt.Errorf("audit anchor: %w", err)
	}
	var last uint64
	var prev string
	switch {
	case anchored && len(anchor) == anchorLen:
		last, prev = store.FromU64(anchor), hex.EncodeToString(anchor[8:])
	case anchored && len(anchor) != 0:
		return errors.New("audit anchor is malformed")
	case !anchored:
		// A chain that did not verify when this version first opened it: carry on from its head.
		head, err := tx.GetPlain(headBucket, headKey)
		if err != nil {
			return fmt.Errorf("audit head: %w", err)
		}
		last = tx.Seq(Bucket)
		if len(head) >= 8+hashLen {
			prev = hex.EncodeToString(head[8 : 8+hashLen])
		}
	}
	seq := last + 1
	if old, err := tx.GetPlain(Bucket, store.U64(seq)); err != nil || old != nil {
		return fmt.Errorf("audit append: seq %d is already taken: the stored chain and its sealed state disagree (run mailgate audit verify)", seq)
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
	b, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	// The mirror gets the JSON of the record, as export does; only the database stores it compact.
	var line []byte
	if l.mirror != nil {
		if line, err = json.Marshal(rec); err != nil {
			return err
		}
	}
	// Hashes and ids make up most of a record: compressing one saved 4 of its 224 bytes.
	if err := tx.PutIncompressible(Bucket, store.U64(seq), b); err != nil {
		return fmt.Errorf("audit append: %w", err)
	}
	if err := l.putState(tx, seq, h); err != nil {
		return err
	}
	tx.OnCommit(func() { l.committed(ev, line) })
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
	// Mirror is set when the database is consistent in itself but the [audit] file mirror
	// shows events it lacks: the whole file was rolled back or replaced (or restored from a
	// backup on purpose).
	Mirror bool
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at seq %d: %s", e.Seq, e.Reason)
}

// Verify walks the whole chain and checks its end against the authenticated head and the
// sealed anchor, then every line of the [audit] file mirror against the database. It returns
// the number of good events, and a *ChainError for the first deleted, edited, reordered or
// swapped event, for a cut, erased or rolled-back log, and for a mirror that is ahead of the
// database or disagrees with it.
func (l *Log) Verify() (int, error) {
	return l.check(true)
}

// CheckHead is Verify without decrypting every event: it checks the last event, that the keys
// run from 1 to it without a gap, the head, the anchor and the mirror's last megabyte. It finds
// erasure, a cut tail, deleted events and rolled-back audit buckets at a cost that grows only
// with the number of pages (serve runs it at every start); an event edited in the middle needs
// Verify.
func (l *Log) CheckHead() (int, error) {
	return l.check(false)
}

// mirrorTailBytes is how much of the mirror CheckHead reads: a few thousand events.
const mirrorTailBytes = 1 << 20

func (l *Log) check(full bool) (int, error) {
	// Only what the mirror held before the read transaction began is compared: every line
	// there was committed first, so a concurrent append cannot look like the mirror is ahead.
	mirrorSize := int64(-1)
	if l.mirrorPath != "" {
		fi, err := os.Stat(l.mirrorPath)
		switch {
		case err == nil:
			mirrorSize = fi.Size()
		case !errors.Is(err, os.ErrNotExist): // moved away (shipped, rotated): nothing to compare
			return 0, fmt.Errorf("audit mirror: %w", err)
		}
	}
	var n uint64
	err := l.db.View(func(tx *store.Tx) error {
		anchor, anchored, err := tx.Anchor()
		if err != nil {
			return err
		}
		var last, prefixes []byte
		if full {
			if mirrorSize >= 0 {
				prefixes = []byte{}
			}
			n, last, err = l.walk(tx, &prefixes)
		} else {
			n, last, err = l.lastEvent(tx)
		}
		if err != nil {
			return err
		}
		if anchored {
			if err := l.checkAnchor(anchor, n, last); err != nil {
				return err
			}
		}
		if err := l.checkEnd(tx, anchored, n, last); err != nil {
			return err
		}
		if mirrorSize < 0 {
			return nil
		}
		from := int64(0)
		if !full {
			from = max(mirrorSize-mirrorTailBytes, 0)
		}
		return l.checkMirror(tx, from, mirrorSize, n, prefixes)
	})
	return int(n), err
}

// prefixLen is how much of each event's hash Verify keeps to compare the mirror with: enough
// to tell events apart, little enough for millions of them.
const prefixLen = 8

// walk checks every event from the first; it returns the count of good events and the last
// one's hash. With prefixes it appends each event's hash prefix there, for the mirror.
func (l *Log) walk(tx *store.Tx, prefixes *[]byte) (uint64, []byte, error) {
	var prev string
	var last []byte
	want := uint64(1)
	c := tx.Cursor(Bucket)
	for k := c.First(); k != nil; k = c.Next() {
		seq := store.FromU64(k)
		if len(k) != 8 || seq != want {
			reason := "event missing (deleted or reordered)"
			if len(k) == 8 && seq > want {
				reason = fmt.Sprintf("events %d..%d missing (deleted)", want, seq-1)
			}
			return want - 1, last, &ChainError{Seq: want, Reason: reason}
		}
		rec, err := readRecord(tx, seq)
		if err != nil {
			return want - 1, last, err
		}
		if rec.Prev != prev {
			return want - 1, last, &ChainError{Seq: seq, Reason: "previous-hash does not match (an earlier event was changed or removed)"}
		}
		h := chainHash(prev, rec.Event)
		if hex.EncodeToString(h) != rec.Hash {
			return want - 1, last, &ChainError{Seq: seq, Reason: "hash does not match the event"}
		}
		if prefixes != nil && *prefixes != nil {
			*prefixes = append(*prefixes, h[:prefixLen]...)
		}
		prev, last = rec.Hash, h
		want++
	}
	return want - 1, last, nil
}

// lastEvent checks the last stored event on its own (it must open, carry its seq and match its
// hash) and that the keys before it are exactly 1..seq-1, from the bucket's key count.
func (l *Log) lastEvent(tx *store.Tx) (uint64, []byte, error) {
	c := tx.Cursor(Bucket)
	k := c.Last()
	if k == nil {
		return 0, nil, nil
	}
	seq := store.FromU64(k)
	if len(k) != 8 {
		return 0, nil, &ChainError{Seq: seq, Reason: "event key malformed"}
	}
	if first := c.First(); len(first) != 8 || store.FromU64(first) != 1 {
		if len(first) == 8 && store.FromU64(first) > 1 {
			return 0, nil, &ChainError{Seq: 1, Reason: fmt.Sprintf("events 1..%d missing (deleted)", store.FromU64(first)-1)}
		}
		return 0, nil, &ChainError{Seq: 1, Reason: "event missing (deleted or reordered)"}
	}
	if count := uint64(tx.Count(Bucket)); count != seq {
		return 0, nil, &ChainError{Seq: seq, Reason: fmt.Sprintf("%d events missing before seq %d (deleted; audit verify names the first)", seq-min(count, seq), seq)}
	}
	rec, err := readRecord(tx, seq)
	if err != nil {
		return 0, nil, err
	}
	h := chainHash(rec.Prev, rec.Event)
	if hex.EncodeToString(h) != rec.Hash {
		return 0, nil, &ChainError{Seq: seq, Reason: "hash does not match the event"}
	}
	return seq, h, nil
}

func readRecord(tx *store.Tx, seq uint64) (record, error) {
	var rec record
	v, err := tx.Get(Bucket, store.U64(seq))
	if err != nil {
		return rec, &ChainError{Seq: seq, Reason: "record does not authenticate (edited, swapped or moved)"}
	}
	if v == nil {
		return rec, &ChainError{Seq: seq, Reason: "event missing (deleted)"}
	}
	if rec, err = decodeRecord(v); err != nil {
		return rec, &ChainError{Seq: seq, Reason: "record unreadable"}
	}
	if rec.Seq != seq {
		return rec, &ChainError{Seq: seq, Reason: fmt.Sprintf("record claims seq %d", rec.Seq)}
	}
	return rec, nil
}

// checkAnchor compares the chain's end with the sealed anchor, which only the key can write and
// which the store cannot open without.
func (l *Log) checkAnchor(anchor []byte, n uint64, last []byte) error {
	var want uint64
	var wantHash []byte
	switch len(anchor) {
	case 0:
	case anchorLen:
		want, wantHash = store.FromU64(anchor), anchor[8:]
	default:
		return &ChainError{Seq: n + 1, Reason: "the sealed audit state is malformed"}
	}
	switch {
	case n == 0 && want > 0:
		return &ChainError{Seq: 1, Reason: fmt.Sprintf("all %d events are gone: the audit log was erased (the sealed audit state records %d events)", want, want)}
	case n < want:
		return &ChainError{Seq: n + 1, Reason: fmt.Sprintf("events %d..%d missing at the end: the log was cut or rolled back (the sealed audit state records %d events)", n+1, want, want)}
	case n > want:
		return &ChainError{Seq: want + 1, Reason: fmt.Sprintf("events %d..%d are not covered by the sealed audit state (added without the key, or the state was rolled back)", want+1, n)}
	case n > 0 && !hmac.Equal(last, wantHash):
		return &ChainError{Seq: n, Reason: "the last event does not match the sealed audit state (replaced or rolled back)"}
	}
	return nil
}

// checkEnd compares the chain's end with the head.
func (l *Log) checkEnd(tx *store.Tx, anchored bool, n uint64, last []byte) error {
	head, err := tx.GetPlain(headBucket, headKey)
	if err != nil {
		return err
	}
	switch {
	case head == nil && n > 0:
		return &ChainError{Seq: n, Reason: "chain head missing (deleted)"}
	case head == nil:
	case len(head) < 8+hashLen:
		return &ChainError{Seq: n, Reason: "chain head malformed"}
	case store.FromU64(head) > n:
		hs := store.FromU64(head)
		return &ChainError{Seq: n + 1, Reason: fmt.Sprintf("events %d..%d missing at the end", n+1, hs)}
	case store.FromU64(head) < n || !hmac.Equal(head[8:8+hashLen], last):
		return &ChainError{Seq: n, Reason: "chain head does not match the last event"}
	case anchored && len(head) != headLen:
		return &ChainError{Seq: n, Reason: "chain head carries no authentication code (rewritten without the key)"}
	case anchored && !hmac.Equal(head[8+hashLen:], l.headMAC(n, last)):
		return &ChainError{Seq: n, Reason: "chain head does not authenticate (forged or rewritten without the key)"}
	}
	return nil
}

type mirrorLine struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// checkMirror compares the mirror's lines in [from, to) with the database, whose chain has n
// good events: a line beyond n means the database lost events the mirror saw committed; a line
// whose hash differs means the database's history at that seq was replaced. prefixes, when
// set, holds the hash prefixes of events 1..n; otherwise each line's event is read. Torn or
// foreign lines are skipped: a crash can leave a half-written last line.
func (l *Log) checkMirror(tx *store.Tx, from, to int64, n uint64, prefixes []byte) error {
	f, err := os.Open(l.mirrorPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit mirror: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.NewSectionReader(f, from, to-from))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	if from > 0 {
		sc.Scan() // the first line is cut
	}
	var ahead uint64
	var differs *ChainError
	for sc.Scan() {
		var m mirrorLine
		if json.Unmarshal(sc.Bytes(), &m) != nil || m.Seq == 0 || len(m.Hash) != 2*hashLen {
			continue
		}
		if m.Seq > n {
			ahead = max(ahead, m.Seq)
			continue
		}
		if differs != nil {
			continue
		}
		var same bool
		if prefixes != nil {
			p, err := hex.DecodeString(m.Hash[:2*prefixLen])
			same = err == nil && bytes.Equal(p, prefixes[(m.Seq-1)*prefixLen:m.Seq*prefixLen])
		} else {
			rec, err := readRecord(tx, m.Seq)
			same = err == nil && rec.Hash == m.Hash
		}
		if !same {
			differs = &ChainError{Seq: m.Seq, Mirror: true, Reason: fmt.Sprintf("the mirror file %s has another event at seq %d than the database: the database's history was replaced from there (rolled back or restored, then written to)", l.mirrorPath, m.Seq)}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit mirror %s: %w", l.mirrorPath, err)
	}
	if ahead > 0 {
		return &ChainError{Seq: n + 1, Mirror: true, Reason: fmt.Sprintf("the mirror file %s is ahead of the database: it has events up to seq %d, the database %d (the database was rolled back, replaced or restored from a backup)", l.mirrorPath, ahead, n)}
	}
	if differs != nil {
		return differs
	}
	return nil
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
			rec, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("audit seq %d: %w", store.FromU64(k), err)
			}
			if !f.match(rec.Event) {
				continue
			}
			line, err := json.Marshal(rec)
			if err != nil {
				return fmt.Errorf("audit seq %d: %w", store.FromU64(k), err)
			}
			bw.Write(line)
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
			rec, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("audit seq %d: %w", store.FromU64(k), err)
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
