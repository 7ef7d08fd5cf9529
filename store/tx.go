package store

import (
	"bytes"
	"crypto/rand"
	"fmt"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Tx is a transaction. Values read from it are fresh copies, valid after it ends.
type Tx struct {
	db        *DB
	btx       *bolt.Tx
	newScopes map[uint64]*sealer
}

// OnCommit runs fn after the transaction commits durably; never when it rolls back or re-runs.
func (tx *Tx) OnCommit(fn func()) { tx.btx.OnCommit(fn) }

// DB is the store tx belongs to: for caches kept beside it that must learn of each commit.
func (tx *Tx) DB() *DB { return tx.db }

// Writable reports whether tx may write.
func (tx *Tx) Writable() bool { return tx.btx.Writable() }

// appendFill: most buckets have their keys appended in order (ids, sequence numbers), and with
// bbolt's default fill of 0.5 every page such appends leave behind stays half empty. Buckets
// keyed by a hash take keys anywhere, and for them a full page split leaves a page nine tenths
// full beside one almost empty, so they keep the default.
const appendFill = 0.9

func (tx *Tx) bucket(name string, create bool) (*bolt.Bucket, error) {
	if b := tx.btx.Bucket([]byte(name)); b != nil || !create {
		return b, nil
	}
	b, err := tx.btx.CreateBucket([]byte(name))
	if err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", name, err)
	}
	return b, nil
}

// Put seals val under the data key, bound to bucket and key, and stores it: compressed when
// that pays, in a segment file when it is large (segment.go).
func (tx *Tx) Put(bucket string, key, val []byte) error {
	return tx.putSealed(tx.db.data, 0, bucket, key, val)
}

// PutIncompressible is Put without the attempt to compress val: for short values made mostly
// of hashes and ids (an audit event), where zstd would run inside the write lock to save a few
// bytes. Get reads it like any other value.
func (tx *Tx) PutIncompressible(bucket string, key, val []byte) error {
	if len(val) >= blobMin {
		return tx.Put(bucket, key, val)
	}
	return tx.putCompressed(tx.db.data, 0, bucket, key, val, nil)
}

// Get opens the value at bucket/key; nil, nil when there is none.
func (tx *Tx) Get(bucket string, key []byte) ([]byte, error) {
	v, err := tx.GetPlain(bucket, key)
	if v == nil || err != nil {
		return nil, err
	}
	plain, err := tx.db.openStored(tx.db.data, 0, bucket, key, v)
	if err != nil {
		return nil, fmt.Errorf("%s/%x: %w", bucket, key, err)
	}
	return plain, nil
}

// Prepared is a value made ready ahead of the transaction that stores it, so that the work is
// done by the writer's own goroutine and not inside the write lock that every writer waits on:
// compressed, and when DB.Prepare made it and it is large, already sealed, written to a
// segment and fsynced (segment.go).
type Prepared struct {
	val, c []byte
	db     *DB
	blob   *blobKeyRef // nil unless written ahead
	err    error       // writing it ahead failed: PutScopedPrepared returns it
}

// prepareCompressed compresses val for PutScopedPrepared, with no blob written ahead. Not
// exported: a second Prepare that silently skipped the write ahead would put the segment fsync
// back into the commit of whoever called it.
func prepareCompressed(val []byte) *Prepared {
	p := &Prepared{val: val}
	if len(val) >= compressMin {
		p.c = compress(val)
	}
	return p
}

// Prepare compresses val (which must not change afterwards) for PutScopedPrepared and, for a
// value that will be a blob, also seals it under a fresh key of
// its own and writes and fsyncs it before returning, so the transaction that stores it only
// adds a reference and its commit waits for no segment fsync. The fsync is shared with the
// other callers preparing at the same time. A Prepared that is never stored leaves its blob
// orphaned, for compaction to reclaim; an error is kept for PutScopedPrepared to return.
func (db *DB) Prepare(val []byte) *Prepared {
	return db.PrepareAll([][]byte{val})[0]
}

// PrepareAll is Prepare for the values of one message (raw mail, text, attachments): all are
// written first, then one wait covers them.
func (db *DB) PrepareAll(vals [][]byte) []*Prepared {
	ps := make([]*Prepared, len(vals))
	rounds := make([]*syncRound, len(vals))
	for i, val := range vals {
		ps[i], rounds[i] = db.prepareWrite(val)
	}
	for i, r := range rounds {
		if r == nil {
			continue
		}
		if err := db.segs.wait(r); err != nil {
			ps[i].err, ps[i].db, ps[i].blob = fmt.Errorf("prepare blob: %w", err), nil, nil
		}
	}
	return ps
}

// prepareWrite compresses val and, when it will be a blob, seals and writes it; the round is
// the group sync that makes it durable, nil when there is nothing to wait for.
func (db *DB) prepareWrite(val []byte) (*Prepared, *syncRound) {
	p := prepareCompressed(val)
	if len(val) < blobMin || db.segs.readOnly {
		return p, nil
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		p.err = err
		return p, nil
	}
	n := len(p.c) + sealOverhead
	seg, off, err := db.segs.reserve(n)
	if err == nil {
		err = db.segs.writeAt(seg, newSealer(key).sealAs(blobRefFormat, p.c, blobKeyAD(seg, off)), off)
	}
	if err != nil {
		p.err = fmt.Errorf("prepare blob: %w", err)
		return p, nil
	}
	p.db, p.blob = db, &blobKeyRef{seg: seg, off: off, n: n, key: key}
	return p, db.segs.register(seg)
}

// PutScopedPrepared is PutScoped with the compression, and for a blob from DB.Prepare the
// writing, already done. p may be stored by a transaction that runs more than once.
func (tx *Tx) PutScopedPrepared(scope uint64, bucket string, key []byte, p *Prepared) error {
	if p.err != nil {
		return p.err
	}
	s, err := tx.scope(scope, true)
	if err != nil {
		return err
	}
	if b := p.blob; b != nil && p.db == tx.db && tx.btx.Writable() && !tx.db.segs.isGone(b.seg) {
		// Counted before the commit, so a compaction that decided to remove the segment
		// without seeing this reference notices and keeps the segment.
		sg := tx.db.segs
		if sg.stores == nil {
			sg.stores = map[uint32]int64{}
		}
		sg.stores[b.seg]++
		sg.referenced(b.seg, b.off+int64(b.n))
		return tx.PutPlain(bucket, key, sealRef(s, scope, ad(bucket, key, scope), *b))
	}
	// Not written ahead, or into a segment compaction removed since: written here.
	return tx.putCompressed(s, scope, bucket, key, p.val, p.c)
}

// putSealed stores val sealed under s for scope: as it is when short, compressed when that
// pays, and in a segment with only a reference in the B-tree when it is large.
func (tx *Tx) putSealed(s *sealer, scope uint64, bucket string, key, val []byte) error {
	var c []byte
	if len(val) >= compressMin {
		c = compress(val)
	}
	return tx.putCompressed(s, scope, bucket, key, val, c)
}

// putCompressed is putSealed with c = compress(val), or nil for short values.
func (tx *Tx) putCompressed(s *sealer, scope uint64, bucket string, key, val, c []byte) error {
	if !tx.btx.Writable() {
		return berrors.ErrTxNotWritable
	}
	a := ad(bucket, key, scope)
	if c == nil {
		return tx.PutPlain(bucket, key, s.seal(val, a))
	}
	switch {
	case len(val) >= blobMin:
		return tx.putBlob(s, scope, bucket, key, a, c)
	case len(c) < len(val):
		return tx.PutPlain(bucket, key, s.sealAs(zstdFormat, c, append(a, zstdFormat)))
	}
	return tx.PutPlain(bucket, key, s.seal(val, a))
}

func (tx *Tx) putBlob(s *sealer, scope uint64, bucket string, key, recordAD, c []byte) error {
	n := len(c) + sealOverhead
	// The place is part of the AD, so it is reserved before sealing.
	sg := tx.db.segs
	seg, off, err := sg.reserve(n)
	if err != nil {
		return err
	}
	if err := sg.writeTx(seg, off, s.sealAs(refFormat, c, blobAD(recordAD, seg, off))); err != nil {
		return err
	}
	return tx.PutPlain(bucket, key, blobRef{seg: seg, off: off, n: n, scope: scope}.bytes())
}

// putKeyBlob writes c as a blob under a fresh key of its own, in the transaction (compaction
// moving a prepared blob), and stores its sealed reference.
func (tx *Tx) putKeyBlob(s *sealer, scope uint64, bucket string, key, recordAD, c []byte) error {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	n := len(c) + sealOverhead
	sg := tx.db.segs
	seg, off, err := sg.reserve(n)
	if err != nil {
		return err
	}
	if err := sg.writeTx(seg, off, newSealer(k).sealAs(blobRefFormat, c, blobKeyAD(seg, off))); err != nil {
		return err
	}
	return tx.PutPlain(bucket, key, sealRef(s, scope, recordAD, blobKeyRef{seg: seg, off: off, n: n, key: k}))
}

// openStored opens a value in any of the formats putSealed writes.
func (db *DB) openStored(s *sealer, scope uint64, bucket string, key, v []byte) ([]byte, error) {
	a := ad(bucket, key, scope)
	if len(v) == 0 {
		return s.open(v, a) // not a sealed value: the error says so
	}
	switch v[0] {
	case zstdFormat:
		c, err := s.openAs(zstdFormat, v, append(a, zstdFormat))
		if err != nil {
			return nil, err
		}
		return decompress(c)
	case refFormat:
		r, err := parseRef(v)
		if err != nil {
			return nil, err
		}
		rec, err := db.segs.read(r.seg, r.off, r.n)
		if err != nil {
			return nil, err
		}
		c, err := s.openAs(refFormat, rec, blobAD(a, r.seg, r.off))
		if err != nil {
			return nil, err
		}
		return decompress(c)
	case blobRefFormat:
		c, _, err := db.openKeyBlob(s, a, v)
		if err != nil {
			return nil, err
		}
		return decompress(c)
	}
	return s.open(v, a)
}

// openKeyBlob opens a sealed reference and the blob it points at, returning the blob's
// compressed plaintext.
func (db *DB) openKeyBlob(s *sealer, recordAD, v []byte) ([]byte, blobKeyRef, error) {
	r, err := openRef(s, recordAD, v)
	if err != nil {
		return nil, r, err
	}
	rec, err := db.segs.read(r.seg, r.off, r.n)
	if err != nil {
		return nil, r, err
	}
	c, err := newSealer(r.key).openAs(blobRefFormat, rec, blobKeyAD(r.seg, r.off))
	return c, r, err
}

// PutPlain stores val as is: only for values that reveal nothing (counters, hashes, ids).
func (tx *Tx) PutPlain(bucket string, key, val []byte) error {
	b, err := tx.bucket(bucket, true)
	if err != nil {
		return err
	}
	if last, _ := b.Cursor().Last(); last == nil || bytes.Compare(key, last) > 0 {
		b.FillPercent = appendFill
	} else {
		b.FillPercent = bolt.DefaultFillPercent
	}
	return b.Put(key, val)
}

// GetPlain returns a copy of the raw value; nil, nil when there is none.
func (tx *Tx) GetPlain(bucket string, key []byte) ([]byte, error) {
	b, err := tx.bucket(bucket, false)
	if b == nil || err != nil {
		return nil, err
	}
	v := b.Get(key)
	if v == nil {
		return nil, nil
	}
	// A present but empty value comes back non-nil, so callers can tell it from an absent one.
	return append(make([]byte, 0, len(v)), v...), nil
}

// Delete removes bucket/key; absent keys are fine.
func (tx *Tx) Delete(bucket string, key []byte) error {
	b, err := tx.bucket(bucket, false)
	if b == nil || err != nil {
		return err
	}
	return b.Delete(key)
}

// Anchor returns the small value sealed into the file's key check record, the one record the
// store cannot open without: it cannot be deleted without the file refusing to open, nor
// forged or swapped for another file's without the key. The audit log keeps the state of its
// chain there, so erasing or cutting the chain shows. ok is false for a file made before
// anchors existed that has not been given one yet (SetAnchor does that).
func (tx *Tx) Anchor() (anchor []byte, ok bool, err error) {
	check, err := tx.GetPlain(metaBucket, keyCheckKey)
	if err != nil {
		return nil, false, err
	}
	if check == nil {
		return nil, false, ErrNoKeyCheck
	}
	return tx.db.openKeyCheck(check)
}

// SetAnchor replaces the anchor (see Anchor). It rewrites the key check record, so it costs
// one seal per call.
func (tx *Tx) SetAnchor(anchor []byte) error {
	plain := append(append(make([]byte, 0, len(keyCheckPlainV2)+len(anchor)), keyCheckPlainV2...), anchor...)
	return tx.PutPlain(metaBucket, keyCheckKey, tx.db.data.seal(plain, ad(metaBucket, keyCheckKey, 0)))
}

// NextSeq returns the bucket's next sequence number, 1, 2, …; it rolls back with the tx.
func (tx *Tx) NextSeq(bucket string) (uint64, error) {
	b, err := tx.bucket(bucket, true)
	if err != nil {
		return 0, err
	}
	return b.NextSequence()
}

// Seq returns the bucket's current sequence number without changing it.
func (tx *Tx) Seq(bucket string) uint64 {
	b, _ := tx.bucket(bucket, false)
	if b == nil {
		return 0
	}
	return b.Sequence()
}

// Count returns the number of keys in bucket (reads bucket stats, not a scan of values).
func (tx *Tx) Count(bucket string) int {
	b, _ := tx.bucket(bucket, false)
	if b == nil {
		return 0
	}
	return b.Stats().KeyN
}

// Cursor iterates over a bucket's keys in byte order. Values are read with Get/GetScoped.
// Cursors are for listings and admin tools, never for the mail write path.
func (tx *Tx) Cursor(bucket string) *Cursor {
	b, _ := tx.bucket(bucket, false)
	if b == nil {
		return &Cursor{}
	}
	return &Cursor{c: b.Cursor()}
}

// Cursor walks keys; every method returns nil at the end.
type Cursor struct{ c *bolt.Cursor }

func (c *Cursor) key(k, _ []byte) []byte {
	if k == nil {
		return nil
	}
	return append([]byte(nil), k...)
}

// First moves to the first key.
func (c *Cursor) First() []byte {
	if c.c == nil {
		return nil
	}
	return c.key(c.c.First())
}

// Last moves to the last key.
func (c *Cursor) Last() []byte {
	if c.c == nil {
		return nil
	}
	return c.key(c.c.Last())
}

// Next moves forward.
func (c *Cursor) Next() []byte {
	if c.c == nil {
		return nil
	}
	return c.key(c.c.Next())
}

// Prev moves backward.
func (c *Cursor) Prev() []byte {
	if c.c == nil {
		return nil
	}
	return c.key(c.c.Prev())
}

// Seek moves to the first key >= k.
func (c *Cursor) Seek(k []byte) []byte {
	if c.c == nil {
		return nil
	}
	return c.key(c.c.Seek(k))
}

// ForEach calls fn with every key and opened value of bucket, in key order.
func (tx *Tx) ForEach(bucket string, fn func(k, v []byte) error) error {
	c := tx.Cursor(bucket)
	for k := c.First(); k != nil; k = c.Next() {
		v, err := tx.Get(bucket, k)
		if err != nil {
			return err
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// PutScoped seals val under the data key of scope (a ticket), created on first use. Deleting the
// scope's key with DestroyScope makes every such value unreadable for good.
func (tx *Tx) PutScoped(scope uint64, bucket string, key, val []byte) error {
	s, err := tx.scope(scope, true)
	if err != nil {
		return err
	}
	return tx.putSealed(s, scope, bucket, key, val)
}

// GetScoped opens a value written by PutScoped; nil, nil when there is none.
func (tx *Tx) GetScoped(scope uint64, bucket string, key []byte) ([]byte, error) {
	v, err := tx.GetPlain(bucket, key)
	if v == nil || err != nil {
		return nil, err
	}
	s, err := tx.scope(scope, false)
	if err != nil {
		return nil, err
	}
	plain, err := tx.db.openStored(s, scope, bucket, key, v)
	if err != nil {
		return nil, fmt.Errorf("%s/%x: %w", bucket, key, err)
	}
	return plain, nil
}

// DestroyScope deletes scope's data key: its values can never be opened again (crypto-shredding).
// The caller should also delete the values themselves to reclaim space.
func (tx *Tx) DestroyScope(scope uint64) error {
	if err := tx.Delete(scopeBucket, U64(scope)); err != nil {
		return err
	}
	delete(tx.newScopes, scope)
	tx.btx.OnCommit(func() {
		tx.db.mu.Lock()
		delete(tx.db.scopes, scope)
		tx.db.mu.Unlock()
	})
	return nil
}

func (tx *Tx) scope(id uint64, create bool) (*sealer, error) {
	if s := tx.newScopes[id]; s != nil {
		return s, nil
	}
	k := U64(id)
	wrapped, err := tx.GetPlain(scopeBucket, k)
	if err != nil {
		return nil, err
	}
	if wrapped != nil {
		tx.db.mu.RLock()
		s := tx.db.scopes[id]
		tx.db.mu.RUnlock()
		if s != nil {
			return s, nil
		}
		raw, err := tx.db.wrap.open(wrapped, ad(scopeBucket, k, 0))
		if err != nil {
			return nil, fmt.Errorf("scope key %d: %w", id, err)
		}
		s = newSealer(raw)
		tx.db.mu.Lock()
		tx.db.scopes[id] = s
		tx.db.mu.Unlock()
		return s, nil
	}
	if !create {
		return nil, ErrScopeDestroyed
	}
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	if err := tx.PutPlain(scopeBucket, k, tx.db.wrap.seal(raw, ad(scopeBucket, k, 0))); err != nil {
		return nil, err
	}
	s := newSealer(raw)
	if tx.newScopes == nil {
		tx.newScopes = map[uint64]*sealer{}
	}
	tx.newScopes[id] = s
	return s, nil
}

// SetSeq raises the bucket's sequence to n (never lowers it), so NextSeq continues after n.
func (tx *Tx) SetSeq(bucket string, n uint64) error {
	b, err := tx.bucket(bucket, true)
	if err != nil {
		return err
	}
	if n <= b.Sequence() {
		return nil
	}
	return b.SetSequence(n)
}
