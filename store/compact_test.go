package store

import (
	"bytes"
	"os"
	"testing"
)

// TestCompactSegmentsReclaimsPurgedBlobs: after most records of the closed segments are
// deleted and one scope destroyed (a purge), compaction frees their space, and every record
// still referenced reads back, also after a reopen.
func TestCompactSegmentsReclaimsPurgedBlobs(t *testing.T) {
	oldMax := segMax
	segMax = 64 << 10
	defer func() { segMax = oldMax }()
	db, path := openTest(t)
	const n = 60
	for i := range n {
		err := db.Update(func(tx *Tx) error { return tx.PutScoped(uint64(i%3+1), "raw", U64(uint64(i)), crashMail(i)) })
		if err != nil {
			t.Fatal(err)
		}
	}
	keep := map[int]bool{}
	err := db.Update(func(tx *Tx) error {
		for i := range n {
			switch {
			case i%3 == 2: // scope 3 is purged below
				if err := tx.Delete("raw", U64(uint64(i))); err != nil {
					return err
				}
			case i%5 == 0:
				keep[i] = true
			default:
				if err := tx.Delete("raw", U64(uint64(i))); err != nil {
					return err
				}
			}
		}
		return tx.DestroyScope(3)
	})
	if err != nil {
		t.Fatal(err)
	}
	before := db.segs.size()
	old, err := db.bolt.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := db.segs.list()
	st, err := db.CompactSegments()
	if err != nil {
		t.Fatal(err)
	}
	after := db.segs.size()
	t.Logf("%d segments, %d bytes before, %d after; %+v", len(ids), before, after, st)
	if st.Segments == 0 || after > before/2 {
		t.Errorf("compaction left %d of %d bytes (%+v)", after, before, st)
	}
	check := func(db *DB) {
		db.View(func(tx *Tx) error {
			for i := range keep {
				v, err := tx.GetScoped(uint64(i%3+1), "raw", U64(uint64(i)))
				if err != nil || !bytes.Equal(v, crashMail(i)) {
					t.Errorf("record %d after compaction: %v", i, err)
				}
			}
			return nil
		})
	}
	check(db)
	// A read transaction that began before the compaction still reads the blobs it references
	// in the removed segments.
	oldTx := &Tx{db: db, btx: old}
	for i := range keep {
		if v, err := oldTx.GetScoped(uint64(i%3+1), "raw", U64(uint64(i))); err != nil || !bytes.Equal(v, crashMail(i)) {
			t.Errorf("record %d in a transaction older than the compaction: %v", i, err)
		}
	}
	old.Rollback()
	// A second run closes the handles kept for old readers and never grows the files.
	if st, err := db.CompactSegments(); err != nil || db.segs.size() > after {
		t.Errorf("second compaction: %+v %v, %d bytes", st, err, db.segs.size())
	}
	check(db)
	db.Close()
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	check(db2)
	if _, err := os.Stat(SegmentDir(path)); err != nil {
		t.Fatal(err)
	}
}
