package store

import (
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// CompactStats says what CompactSegments did.
type CompactStats struct {
	Segments  int   // closed segments rewritten or removed
	Moved     int   // live blobs copied into the active segment
	Reclaimed int64 // bytes of segment files freed
}

// compactBatch is how many blobs one compaction transaction moves.
const compactBatch = 200

// CompactSegments reclaims the space of blobs no record references any more (purged tickets,
// rewritten records, delivered outbound mail, prepared values never stored). It counts the live
// bytes of every closed segment against the references in the database; a segment with nothing
// live is removed, one that is less than half live has its live blobs copied to the active
// segment (re-sealed for their new place, committed like any write) and is then removed. A
// crash at any point leaves either the old reference and the old segment, or the new reference
// and a segment with nothing live that the next run removes. Removed files stay open for read
// transactions that began before the move, and are closed on the next run. It runs in the
// background, never on the mail path.
//
// A value prepared ahead (DB.Prepare) may hold a place in a closed segment and have its
// reference committed only after the scan: the count of such references stored into each
// segment is taken in a write transaction before the scan and checked again in the write
// transaction that removes the segment, which is kept when the count moved.
func (db *DB) CompactSegments() (CompactStats, error) {
	db.maint.Lock()
	defer db.maint.Unlock()
	var st CompactStats
	if db.segs.readOnly {
		return st, nil
	}
	db.segs.closeRetired()

	stores := map[uint32]int64{}
	if err := db.Update(func(*Tx) error {
		clear(stores)
		for id, n := range db.segs.stores {
			stores[id] = n
		}
		return nil
	}); err != nil {
		return st, err
	}

	type loc struct {
		bucket string
		key    []byte
	}
	live := map[uint32]int64{}
	refs := map[uint32][]loc{}
	var tail segMark
	err := db.View(func(tx *Tx) error {
		btx := tx.btx
		tail = segMark{seg: 1}
		if meta := btx.Bucket([]byte(metaBucket)); meta != nil {
			tail, _ = parseMark(meta.Get(segTailKey))
		}
		return btx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if string(name) == metaBucket || string(name) == scopeBucket {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				var seg uint32
				var n int
				switch {
				case len(v) == refLen && v[0] == refFormat:
					r, err := parseRef(v)
					if err != nil {
						return nil
					}
					seg, n = r.seg, r.n
				case len(v) == blobRefLen && v[0] == blobRefFormat:
					// A reference that does not open (its scope destroyed, or tampered
					// with) makes its blob unreadable anyway: it keeps nothing live.
					r, ok := tx.openBlobRef(string(name), k, v)
					if !ok {
						return nil
					}
					seg, n = r.seg, r.n
				default:
					return nil
				}
				live[seg] += int64(n)
				if seg < tail.seg {
					refs[seg] = append(refs[seg], loc{string(name), append([]byte(nil), k...)})
				}
				return nil
			})
		})
	})
	if err != nil {
		return st, err
	}
	if testHookCompactScanned != nil {
		testHookCompactScanned()
	}
	ids, err := db.segs.list()
	if err != nil {
		return st, err
	}
	for _, id := range ids {
		if id >= tail.seg {
			break // the active segment, and any begun after the scan
		}
		p := filepath.Join(db.segs.dir, segName(id))
		fi, err := os.Stat(p)
		if err != nil {
			return st, err
		}
		if live[id] > 0 && live[id] >= fi.Size()/2 {
			continue
		}
		todo := refs[id]
		for len(todo) > 0 {
			n := min(len(todo), compactBatch)
			chunk := todo[:n]
			todo = todo[n:]
			moved := 0
			err := db.Update(func(tx *Tx) error {
				moved = 0
				for _, l := range chunk {
					ok, err := tx.moveBlob(l.bucket, l.key, id)
					if err != nil {
						return err
					}
					if ok {
						moved++
					}
				}
				return nil
			})
			if err != nil {
				return st, fmt.Errorf("compact segment %d: %w", id, err)
			}
			st.Moved += moved
		}
		removed := false
		err = db.Update(func(*Tx) error {
			if db.segs.stores[id] != stores[id] {
				return nil // a prepared reference committed since the scan: next run
			}
			removed = true
			return db.segs.retire(id)
		})
		if err != nil {
			return st, err
		}
		if removed {
			st.Segments++
			st.Reclaimed += fi.Size()
		}
	}
	return st, nil
}

// testHookCompactScanned runs after compaction has counted the live blobs (tests).
var testHookCompactScanned func()

// openBlobRef opens the sealed reference v at bucket/key with the key of the scope it names;
// ok is false when that does not open it.
func (tx *Tx) openBlobRef(bucket string, key, v []byte) (r blobKeyRef, ok bool) {
	scope, _ := refScope(v)
	s := tx.db.data
	if scope != 0 {
		var err error
		if s, err = tx.scope(scope, false); err != nil {
			return r, false
		}
	}
	r, err := openRef(s, ad(bucket, key, scope), v)
	return r, err == nil
}

// moveBlob re-seals the blob of bucket/key into the active segment if it still lives in seg.
func (tx *Tx) moveBlob(bucket string, key []byte, seg uint32) (bool, error) {
	v, err := tx.GetPlain(bucket, key)
	if err != nil || len(v) == 0 {
		return false, err
	}
	if v[0] == blobRefFormat {
		return tx.moveKeyBlob(bucket, key, v, seg)
	}
	if len(v) != refLen || v[0] != refFormat {
		return false, nil
	}
	r, err := parseRef(v)
	if err != nil || r.seg != seg {
		return false, err
	}
	s := tx.db.data
	if r.scope != 0 {
		if s, err = tx.scope(r.scope, false); err != nil {
			return false, fmt.Errorf("%s/%x: %w", bucket, key, err)
		}
	}
	a := ad(bucket, key, r.scope)
	rec, err := tx.db.segs.read(r.seg, r.off, r.n)
	if err != nil {
		return false, err
	}
	c, err := s.openAs(refFormat, rec, blobAD(a, r.seg, r.off))
	if err != nil {
		return false, fmt.Errorf("%s/%x: %w", bucket, key, err)
	}
	return true, tx.putBlob(s, r.scope, bucket, key, a, c)
}

// moveKeyBlob moves a prepared blob: re-sealed under a new key of its own at its new place,
// with a new sealed reference.
func (tx *Tx) moveKeyBlob(bucket string, key, v []byte, seg uint32) (bool, error) {
	scope, _ := refScope(v)
	s := tx.db.data
	if scope != 0 {
		var err error
		if s, err = tx.scope(scope, false); err != nil {
			return false, nil // destroyed since the scan: nothing to keep
		}
	}
	a := ad(bucket, key, scope)
	r, err := openRef(s, a, v)
	if err != nil || r.seg != seg {
		return false, nil
	}
	c, _, err := tx.db.openKeyBlob(s, a, v)
	if err != nil {
		return false, fmt.Errorf("%s/%x: %w", bucket, key, err)
	}
	return true, tx.putKeyBlob(s, scope, bucket, key, a, c)
}
