// Package store owns mailgate's bbolt database: buckets, the schema version, sealing every value
// with XChaCha20-Poly1305 under keys that live outside the file, keyed-HMAC lookup keys, group
// commit and online backup. It knows nothing about tickets, agents or mail.
package store

import (
	"archive/tar"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/crypto/hkdf"
)

// SchemaVersion is the layout this binary writes. Open migrates older files up to it and
// refuses newer ones, so a downgrade cannot silently misread data.
//
//	1: every value sealed as it is, inside the B-tree.
//	2: values compressed, large ones in segment files beside the database (segment.go).
//	3: the same layout; tickets keeps new inbound messages' text in a record of its own,
//	   which a schema-2 mailgate would show as an empty message.
//	4: the same layout; tickets keeps new inbound messages' headers with their text, and only
//	   a stub of them in the B-tree, which a schema-3 mailgate would show as a blank message.
const SchemaVersion = 4

// migrations[i] moves a database from schema version i to i+1. Version 0 is an empty file.
var migrations = []func(db *DB) error{
	func(db *DB) error { return nil }, // 0 → 1: the first layout; buckets are created on first use
	migrateToSegments,                 // 1 → 2
	func(db *DB) error { return nil }, // 2 → 3: nothing to rewrite; older records read as they are
	func(db *DB) error { return nil }, // 3 → 4: the same
}

const (
	metaBucket  = "meta"
	scopeBucket = "scopekeys"
)

var (
	// ErrLocked means another process holds the database: a second mailgate on the same data dir.
	ErrLocked = errors.New("the database is in use by another process (is mailgate already running on this data dir?)")
	// ErrWrongKey means the key file does not belong to this database.
	ErrWrongKey = errors.New("this key does not open this database (wrong key_file?)")
	// ErrScopeDestroyed means the per-scope key was deleted: its data is gone for good.
	ErrScopeDestroyed = errors.New("the data key of this record was destroyed")
)

// Options tunes Open. The zero value is sensible.
type Options struct {
	// LockTimeout bounds the wait for the file lock; default 1s.
	LockTimeout time.Duration
	// OnCommit, when set, is told the size and duration of every group commit (metrics).
	OnCommit func(batch int, took time.Duration)
	// ReadOnly opens the file for reading only (admin commands while the daemon runs use the socket instead).
	ReadOnly bool
}

// DB is an open, keyed database.
type DB struct {
	bolt     *bolt.DB
	boltOpts *bolt.Options
	data     *sealer // record values
	wrap     *sealer // per-scope data keys
	idxKey   []byte

	mu     sync.RWMutex
	scopes map[uint64]*sealer // unwrapped per-scope keys of committed scopes

	batch batcher
	segs  *segments
	// maint keeps Backup and CompactSegments apart: a backup copies the segments its snapshot
	// references, which compaction would remove.
	maint sync.Mutex
}

// Open opens (or creates) the database at path with the 32-byte master key.
func Open(path string, key []byte, opts Options) (*DB, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("open store: master key must be %d bytes, got %d", KeySize, len(key))
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// bbolt would quietly initialise an empty file as a new database; an existing file that is
	// empty was truncated, and starting afresh over it would hide the loss.
	if fi, err := os.Stat(path); err == nil && fi.Size() == 0 {
		return nil, fmt.Errorf("open %s: the database file is empty (truncated?): restore it from a backup, or remove it to start a new database", path)
	}
	bopts := &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly, NoFreelistSync: true, FreelistType: bolt.FreelistMapType, InitialMmapSize: 1 << 30}
	bdb, err := bolt.Open(path, 0o600, bopts)
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db := &DB{bolt: bdb, boltOpts: bopts, scopes: map[uint64]*sealer{}, segs: newSegments(SegmentDir(path), opts.ReadOnly)}
	db.batch.db = db
	db.batch.onCommit = opts.OnCommit
	db.data = newSealer(derive(key, "mailgate data v1"))
	db.wrap = newSealer(derive(key, "mailgate scope wrap v1"))
	db.idxKey = derive(key, "mailgate index v1")
	if err := db.init(opts.ReadOnly); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func derive(master []byte, label string) []byte {
	out := make([]byte, 32)
	if _, err := io.ReadFull(hkdf.New(sha256.New, master, nil, []byte(label)), out); err != nil {
		panic(err) // hkdf cannot fail for 32 bytes of output
	}
	return out
}

// The key check record proves the key opens this file. Version 2 also carries the anchor (see
// Tx.Anchor) after this prefix; version 1 files get one when the audit log first opens them.
var (
	keyCheckPlain   = []byte("mailgate key check v1")
	keyCheckPlainV2 = []byte("mailgate key check v2\n")
)

var keyCheckKey = []byte("keycheck")

// ErrNoKeyCheck means the file holds data but not the record that ties it to its key: someone
// deleted it (perhaps to make the file pass as new), or the file is damaged.
var ErrNoKeyCheck = errors.New("the database holds data but its sealed key check record (meta/keycheck) is missing: the file was tampered with or is damaged; restore it from a backup")

// openKeyCheck returns the anchor carried by a sealed key check record; v2 is false for a
// version 1 record, which carries none.
func (db *DB) openKeyCheck(sealed []byte) (anchor []byte, v2 bool, err error) {
	plain, err := db.data.open(sealed, ad(metaBucket, keyCheckKey, 0))
	switch {
	case err != nil:
		return nil, false, ErrWrongKey
	case bytes.Equal(plain, keyCheckPlain):
		return nil, false, nil
	case bytes.HasPrefix(plain, keyCheckPlainV2):
		return plain[len(keyCheckPlainV2):], true, nil
	}
	return nil, false, ErrWrongKey
}

// hasData reports whether the file holds anything besides an empty meta bucket.
func hasData(btx *bolt.Tx) bool {
	found := false
	btx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if string(name) != metaBucket {
			found = true
		} else if k, _ := b.Cursor().First(); k != nil {
			found = true
		}
		return nil
	})
	return found
}

// init checks the key against the file's key check and runs migrations.
func (db *DB) init(readOnly bool) error {
	var version uint64
	var fresh bool
	tail := segMark{seg: 1}
	err := db.bolt.View(func(btx *bolt.Tx) error {
		tx := &Tx{db: db, btx: btx}
		check, err := tx.GetPlain(metaBucket, keyCheckKey)
		if err != nil {
			return err
		}
		if check == nil {
			// Only a file with nothing in it is new: a file with data and no key check would
			// otherwise be taken for new and get a fresh anchor, hiding what was removed.
			if hasData(btx) {
				return ErrNoKeyCheck
			}
			fresh = true
			return nil
		}
		if _, _, err := db.openKeyCheck(check); err != nil {
			return err
		}
		v, _ := tx.GetPlain(metaBucket, []byte("schema"))
		if v != nil {
			version = FromU64(v)
		}
		t, _ := tx.GetPlain(metaBucket, segTailKey)
		tail, _ = parseMark(t)
		return nil
	})
	if err != nil {
		return err
	}
	if version > SchemaVersion {
		return fmt.Errorf("the database has schema version %d but this mailgate knows only up to %d: use a newer mailgate", version, SchemaVersion)
	}
	if readOnly {
		if fresh {
			return errors.New("the database is empty: start mailgate once to create it")
		}
		if version < SchemaVersion {
			return fmt.Errorf("the database has schema version %d: start mailgate serve once to migrate it", version)
		}
		return nil
	}
	if err := db.segs.recover(tail); err != nil {
		return fmt.Errorf("open segments: %w", err)
	}
	if !fresh && version == SchemaVersion {
		return nil
	}
	if fresh {
		// A new file starts with an empty anchor, so its users can tell "nothing recorded
		// yet" from "the record of what was recorded is gone".
		err := db.Update(func(tx *Tx) error { return tx.SetAnchor(nil) })
		if err != nil {
			return err
		}
	}
	// Each migration commits as it goes (a big file does not fit one transaction) and must be
	// safe to run again after a crash; the version is bumped once all of them are through.
	for v := version; v < SchemaVersion; v++ {
		if err := migrations[v](db); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	return db.Update(func(tx *Tx) error {
		return tx.PutPlain(metaBucket, []byte("schema"), U64(SchemaVersion))
	})
}

// Close closes the file.
func (db *DB) Close() error {
	err := db.bolt.Close()
	db.segs.close()
	return err
}

// Path is the database file's path.
func (db *DB) Path() string { return db.bolt.Path() }

// Update runs fn in a write transaction and commits it durably (fsync) before returning.
func (db *DB) Update(fn func(*Tx) error) error {
	return db.update(func(btx *bolt.Tx) error { return db.run(btx, fn) })
}

// testHookBeforeCommit runs before bbolt commits a transaction that stores a blob reference,
// after the transaction's own appends are synced (crash tests).
var testHookBeforeCommit func()

// update is bolt's Update with the segments kept in step: what fn appended is fsynced and the
// end of what it references recorded before the commit, and its appends are forgotten when the
// transaction rolls back. Blobs written ahead by DB.Prepare are durable already.
func (db *DB) update(fn func(*bolt.Tx) error) error {
	return db.bolt.Update(func(btx *bolt.Tx) error {
		sg := db.segs
		sg.begin()
		err := fn(btx)
		if err == nil && sg.txRefs {
			if err = sg.sync(); err == nil {
				err = recordTail(btx, sg.txEnd)
			}
			if err == nil && testHookBeforeCommit != nil {
				testHookBeforeCommit()
			}
		}
		if err != nil {
			sg.rollback()
		}
		return err
	})
}

// recordTail raises meta/segtail to end. It never lowers it: a blob prepared early may be
// committed after one prepared later, or after the segment it is in was closed.
func recordTail(btx *bolt.Tx, end segMark) error {
	meta, err := btx.CreateBucketIfNotExists([]byte(metaBucket))
	if err != nil {
		return err
	}
	if cur, ok := parseMark(meta.Get(segTailKey)); ok && !end.after(cur) {
		return nil
	}
	return meta.Put(segTailKey, end.bytes())
}

// View runs fn in a read-only transaction.
func (db *DB) View(fn func(*Tx) error) error {
	return db.bolt.View(func(btx *bolt.Tx) error { return fn(&Tx{db: db, btx: btx}) })
}

// Batch is Update for concurrent writers: calls that arrive together share one commit and one
// fsync. fn may run more than once, so it must have no effects outside the transaction.
func (db *DB) Batch(fn func(*Tx) error) error {
	return db.batch.do(fn)
}

func (db *DB) run(btx *bolt.Tx, fn func(*Tx) error) error {
	tx := &Tx{db: db, btx: btx}
	if err := fn(tx); err != nil {
		return err
	}
	if len(tx.newScopes) > 0 {
		scopes := tx.newScopes
		btx.OnCommit(func() {
			db.mu.Lock()
			for id, s := range scopes {
				db.scopes[id] = s
			}
			db.mu.Unlock()
		})
	}
	return nil
}

// Writable reports whether a durable write succeeds now (for /healthz).
func (db *DB) Writable() error {
	return db.Update(func(tx *Tx) error {
		return tx.PutPlain(metaBucket, []byte("health"), U64(uint64(time.Now().Unix())))
	})
}

// Index returns the lookup key for a value that must not be readable from the file
// (an address, a Message-ID): HMAC-SHA256 under a key derived from the master key.
func (db *DB) Index(kind, value string) []byte {
	m := hmac.New(sha256.New, db.idxKey)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(value))
	return m.Sum(nil)
}

// MAC returns an HMAC-SHA256 over parts under a key derived for purpose; used for tokens that
// the server must later recognise as its own (Message-IDs it minted, for example).
func (db *DB) MAC(purpose string, parts ...[]byte) []byte {
	return db.MACFunc(purpose)(parts...)
}

// MACFunc is MAC with the key for purpose derived once, for callers on a hot path.
func (db *DB) MACFunc(purpose string) func(parts ...[]byte) []byte {
	key := derive(db.idxKey, "mac "+purpose)
	return func(parts ...[]byte) []byte {
		m := hmac.New(sha256.New, key)
		for _, p := range parts {
			var n [4]byte
			binary.BigEndian.PutUint32(n[:], uint32(len(p)))
			m.Write(n[:])
			m.Write(p)
		}
		return m.Sum(nil)
	}
}

// Backup writes a consistent copy of the database and its segments to path while writers go
// on, as a tar archive (restore: extract it into the data directory), fsyncs it and renames it
// into place, so a crash never leaves a half-written backup under that name. The copy is one
// read transaction's view: the database as of that transaction, and of every segment the bytes
// it references, which are never rewritten in place.
func (db *DB) Backup(path string) (int64, error) {
	db.maint.Lock()
	defer db.maint.Unlock()
	var size int64
	err := db.bolt.View(func(btx *bolt.Tx) error {
		dir := filepath.Dir(path)
		f, err := os.CreateTemp(dir, ".backup-*")
		if err != nil {
			return err
		}
		tmp := f.Name()
		defer os.Remove(tmp)
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return err
		}
		cw := &countWriter{w: f}
		if err := db.writeArchive(btx, cw); err != nil {
			f.Close()
			return err
		}
		size = cw.n
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
		return syncDir(dir)
	})
	if err != nil {
		return 0, fmt.Errorf("backup to %s: %w", path, err)
	}
	return size, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeArchive writes btx's database and the segments it references to w as a tar archive
// whose names are relative to the data directory.
func (db *DB) writeArchive(btx *bolt.Tx, w io.Writer) error {
	tail := segMark{seg: 1}
	if meta := btx.Bucket([]byte(metaBucket)); meta != nil {
		tail, _ = parseMark(meta.Get(segTailKey))
	}
	now := time.Now().Truncate(time.Second)
	tw := tar.NewWriter(w)
	dbName := filepath.Base(db.bolt.Path())
	if err := tw.WriteHeader(&tar.Header{Name: dbName, Mode: 0o600, Size: btx.Size(), ModTime: now, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := btx.WriteTo(tw); err != nil {
		return err
	}
	segDir := filepath.Base(db.segs.dir)
	if err := tw.WriteHeader(&tar.Header{Name: segDir + "/", Mode: 0o700, ModTime: now, Typeflag: tar.TypeDir}); err != nil {
		return err
	}
	ids, err := db.segs.list()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if id > tail.seg {
			break // begun after this snapshot
		}
		p := filepath.Join(db.segs.dir, segName(id))
		sf, err := os.Open(p)
		if err != nil {
			return err
		}
		n := tail.pos
		if id < tail.seg {
			// Closed segments do not change any more.
			fi, err := sf.Stat()
			if err != nil {
				sf.Close()
				return err
			}
			n = fi.Size()
		}
		err = tw.WriteHeader(&tar.Header{Name: segDir + "/" + segName(id), Mode: 0o600, Size: n, ModTime: now, Typeflag: tar.TypeReg})
		if err == nil {
			_, err = io.CopyN(tw, sf, n)
		}
		sf.Close()
		if err != nil {
			return fmt.Errorf("segment %d: %w", id, err)
		}
	}
	return tw.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Stats reports the size of the database and its segments and the number of write transactions, for metrics.
func (db *DB) Stats() (fileBytes int64, writes int) {
	if fi, err := os.Stat(db.bolt.Path()); err == nil {
		fileBytes = fi.Size()
	}
	fileBytes += db.segs.size()
	st := db.bolt.Stats()
	return fileBytes, int(st.TxStats.GetWrite())
}

// U64 encodes n as 8 bytes big-endian, so keys sort numerically.
func U64(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

// FromU64 decodes U64. A short slice decodes as 0.
func FromU64(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// Key joins parts into one bucket key; numeric parts should already be U64-encoded.
func Key(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
