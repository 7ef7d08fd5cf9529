package store

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// putPrepared stores p as scope/bucket/key in a transaction of its own.
func putPrepared(t testing.TB, db *DB, scope uint64, bucket string, key []byte, p *Prepared) {
	t.Helper()
	if err := db.Batch(func(tx *Tx) error { return tx.PutScopedPrepared(scope, bucket, key, p) }); err != nil {
		t.Fatal(err)
	}
}

// The reference of a prepared blob is sealed: the database file shows neither the blob's key
// nor where the blob is, and the blob's bytes show no plaintext. It reads back, after a reopen
// too, and destroying its scope (purge) makes it unreadable for good.
func TestPreparedReferenceIsSealed(t *testing.T) {
	db, path := openTest(t)
	val := mail(1)
	p := db.Prepare(val)
	if p.err != nil || p.blob == nil {
		t.Fatalf("prepared value was not written ahead: %v", p.err)
	}
	key := append([]byte(nil), p.blob.key...)
	putPrepared(t, db, 5, "raw", U64(5), p)
	var ref []byte
	db.View(func(tx *Tx) error {
		ref, _ = tx.GetPlain("raw", U64(5))
		if got, err := tx.GetScoped(5, "raw", U64(5)); err != nil || !bytes.Equal(got, val) {
			t.Errorf("read back: %v", err)
		}
		return nil
	})
	if len(ref) != blobRefLen || ref[0] != blobRefFormat {
		t.Fatalf("reference is %d bytes of format %d, want %d of format %d", len(ref), ref[0], blobRefLen, blobRefFormat)
	}
	place := blobKeyRef{seg: p.blob.seg, off: p.blob.off, n: p.blob.n}.plain()[:16]
	if bytes.Contains(ref, place) {
		t.Error("the reference shows the blob's place in the clear")
	}
	db.Close()
	file, _ := os.ReadFile(path)
	seg := segBytes(t, path)
	for name, b := range map[string][]byte{"database": file, "segments": seg} {
		if bytes.Contains(b, key) {
			t.Errorf("the blob key is in the %s file", name)
		}
		if bytes.Contains(b, []byte("has not arrived")) {
			t.Errorf("plaintext in the %s file", name)
		}
	}
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.View(func(tx *Tx) error {
		if got, err := tx.GetScoped(5, "raw", U64(5)); err != nil || !bytes.Equal(got, val) {
			t.Errorf("read back after reopen: %v", err)
		}
		return nil
	})
	// Purge: the scope's key goes, the reference is put back by someone with the file.
	if err := db2.Update(func(tx *Tx) error { return errors.Join(tx.Delete("raw", U64(5)), tx.DestroyScope(5)) }); err != nil {
		t.Fatal(err)
	}
	db2.Update(func(tx *Tx) error { return tx.PutPlain("raw", U64(5), ref) })
	db2.View(func(tx *Tx) error {
		if v, err := tx.GetScoped(5, "raw", U64(5)); !errors.Is(err, ErrScopeDestroyed) {
			t.Errorf("purged prepared blob: %v, %d bytes", err, len(v))
		}
		// Even a new key for the scope does not open it.
		return nil
	})
	db2.Update(func(tx *Tx) error { _, err := tx.scope(5, true); return err })
	db2.View(func(tx *Tx) error {
		if _, err := tx.GetScoped(5, "raw", U64(5)); err == nil {
			t.Error("purged prepared blob opened under the scope's new key")
		}
		return nil
	})
}

// Two prepared references swapped between records do not open, nor do two prepared blobs
// swapped in the segment, nor a blob moved in the segment with its reference re-pointed at
// the new place by someone holding the key.
func TestSwappedPreparedRefsAndBlobsDoNotOpen(t *testing.T) {
	db, path := openTest(t)
	a, b := mail(1), mail(2)
	pa, pb := db.Prepare(a), db.Prepare(b)
	db.Batch(func(tx *Tx) error {
		return errors.Join(tx.PutScopedPrepared(1, "raw", U64(1), pa), tx.PutScopedPrepared(1, "raw", U64(2), pb))
	})
	var refA, refB []byte
	db.View(func(tx *Tx) error {
		refA, _ = tx.GetPlain("raw", U64(1))
		refB, _ = tx.GetPlain("raw", U64(2))
		return nil
	})
	db.Update(func(tx *Tx) error {
		return errors.Join(tx.PutPlain("raw", U64(1), refB), tx.PutPlain("raw", U64(2), refA))
	})
	db.View(func(tx *Tx) error {
		for _, k := range []uint64{1, 2} {
			if v, err := tx.GetScoped(1, "raw", U64(k)); err == nil {
				t.Errorf("record %d opened with the other record's reference: %d bytes", k, len(v))
			}
		}
		return nil
	})
	db.Update(func(tx *Tx) error {
		return errors.Join(tx.PutPlain("raw", U64(1), refA), tx.PutPlain("raw", U64(2), refB))
	})
	ra, rb := *pa.blob, *pb.blob
	if ra.seg != rb.seg || ra.off+int64(ra.n) != rb.off {
		t.Fatalf("blobs not adjacent: %+v %+v", ra, rb)
	}
	db.Close()

	segPath := filepath.Join(SegmentDir(path), segName(ra.seg))
	seg, _ := os.ReadFile(segPath)
	blobA := append([]byte(nil), seg[ra.off:ra.off+int64(ra.n)]...)
	blobB := append([]byte(nil), seg[rb.off:rb.off+int64(rb.n)]...)
	swapped := append(append(append([]byte(nil), seg[:ra.off]...), blobB...), blobA...)
	os.WriteFile(segPath, append(swapped, seg[rb.off+int64(rb.n):]...), 0o600)
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.View(func(tx *Tx) error {
		for _, k := range []uint64{1, 2} {
			if _, err := tx.GetScoped(1, "raw", U64(k)); err == nil {
				t.Errorf("record %d opened after the blobs were swapped", k)
			}
		}
		return nil
	})
	// Re-point both references at where their blobs now are, keys and all: the blobs are bound
	// to their old places.
	db2.Update(func(tx *Tx) error {
		s, err := tx.scope(1, false)
		if err != nil {
			return err
		}
		na := ra
		na.off = ra.off + int64(rb.n)
		nb := rb
		nb.off = ra.off
		return errors.Join(tx.PutPlain("raw", U64(1), sealRef(s, 1, ad("raw", U64(1), 1), na)),
			tx.PutPlain("raw", U64(2), sealRef(s, 1, ad("raw", U64(2), 1), nb)))
	})
	db2.View(func(tx *Tx) error {
		for _, k := range []uint64{1, 2} {
			if _, err := tx.GetScoped(1, "raw", U64(k)); err == nil {
				t.Errorf("record %d opened a blob moved in the segment", k)
			}
		}
		return nil
	})
}

// A commit that stores only prepared values fsyncs no segment: the blobs were made durable by
// their preparers. A value put in the transaction still is fsynced there.
func TestPreparedCommitSkipsSegmentSync(t *testing.T) {
	db, _ := openTest(t)
	var syncs atomic.Int64
	testHookSegmentSync = func() { syncs.Add(1) }
	defer func() { testHookSegmentSync = nil }()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := db.Prepare(mail(i))
			if err := db.Batch(func(tx *Tx) error { return tx.PutScopedPrepared(uint64(i+1), "raw", U64(uint64(i)), p) }); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := syncs.Load(); n != 0 {
		t.Errorf("16 commits of prepared values made %d segment fsyncs in the transaction", n)
	}
	if err := db.Batch(func(tx *Tx) error { return tx.PutScoped(99, "raw", U64(99), mail(99)) }); err != nil {
		t.Fatal(err)
	}
	if syncs.Load() != 1 {
		t.Errorf("a value put in the transaction made %d segment fsyncs, want 1", syncs.Load())
	}
	db.View(func(tx *Tx) error {
		for i := range 16 {
			if v, err := tx.GetScoped(uint64(i+1), "raw", U64(uint64(i))); err != nil || !bytes.HasPrefix(v, fmt.Appendf(nil, "Subject: order %d\r\n", i)) {
				t.Errorf("value %d: %v", i, err)
			}
		}
		return nil
	})
}

// Concurrent preparers share their fsyncs: one group fdatasync covers all who wrote before it.
func TestPreparersShareFsync(t *testing.T) {
	db, _ := openTest(t)
	var syncs atomic.Int64
	testHookFsync = func(uint32) error { syncs.Add(1); return nil }
	defer func() { testHookFsync = nil }()
	var wg sync.WaitGroup
	start := make(chan struct{})
	ps := make([]*Prepared, 40)
	for i := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ps[i] = db.Prepare(mail(i))
		}()
	}
	close(start)
	wg.Wait()
	t.Logf("40 preparers, %d fsyncs", syncs.Load())
	if n := syncs.Load(); n == 0 || n >= 40 {
		t.Errorf("40 preparers made %d fsyncs", n)
	}
	for i, p := range ps {
		if p.err != nil || p.blob == nil {
			t.Fatalf("prepare %d: %v", i, p.err)
		}
	}
}

// The blobs of one message (raw mail, attachments) are written first and made durable by one
// fsync, not one each; a short value among them is only compressed.
func TestPrepareAllWaitsOnce(t *testing.T) {
	db, _ := openTest(t)
	var syncs atomic.Int64
	testHookFsync = func(uint32) error { syncs.Add(1); return nil }
	defer func() { testHookFsync = nil }()
	ps := db.PrepareAll([][]byte{mail(1), []byte("short"), mail(2), mail(3)})
	if n := syncs.Load(); n != 1 {
		t.Errorf("4 values of one message took %d fsyncs", n)
	}
	if ps[1].blob != nil || ps[0].blob == nil || ps[3].blob == nil {
		t.Fatalf("blobs: %v %v %v", ps[0].blob, ps[1].blob, ps[3].blob)
	}
	err := db.Batch(func(tx *Tx) error {
		for i, p := range ps {
			if err := tx.PutScopedPrepared(1, "raw", U64(uint64(i)), p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		for i, want := range []string{"Subject: order 1\r\n", "short", "Subject: order 2\r\n", "Subject: order 3\r\n"} {
			if v, err := tx.GetScoped(1, "raw", U64(uint64(i))); err != nil || !bytes.HasPrefix(v, []byte(want)) {
				t.Errorf("value %d: %v", i, err)
			}
		}
		return nil
	})
}

// A failed fsync while preparing is kept and returned where the value is stored; nothing of it
// is committed, and a value prepared after the failure is stored normally.
func TestPrepareErrorIsReturnedByPut(t *testing.T) {
	db, _ := openTest(t)
	testHookFsync = func(uint32) error { return errors.New("injected fsync failure") }
	p := db.Prepare(mail(1))
	testHookFsync = nil
	err := db.Batch(func(tx *Tx) error { return tx.PutScopedPrepared(1, "raw", U64(1), p) })
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("injected fsync failure")) {
		t.Fatalf("store of a value whose blob did not sync: %v", err)
	}
	db.View(func(tx *Tx) error {
		if v, _ := tx.GetPlain("raw", U64(1)); v != nil {
			t.Error("a reference to an unsynced blob was committed")
		}
		return nil
	})
	p = db.Prepare(mail(2))
	putPrepared(t, db, 1, "raw", U64(2), p)
	db.View(func(tx *Tx) error {
		if v, err := tx.GetScoped(1, "raw", U64(2)); err != nil || !bytes.HasPrefix(v, []byte("Subject: order 2\r\n")) {
			t.Errorf("value prepared after the failure: %v", err)
		}
		return nil
	})
}

// TestCrashAfterPreparedBlobSynced kills a process (SIGKILL) whose prepared blob is written and
// fsynced, while the transaction storing its reference is about to commit; before that, some
// prepared values were never stored (orphans). The database opens with every committed value
// readable, the killed one absent, and compaction reclaims the orphans.
func TestCrashAfterPreparedBlobSynced(t *testing.T) {
	oldMax := segMax
	segMax = 64 << 10
	defer func() { segMax = oldMax }()
	if os.Getenv("MAILGATE_STORE_PREPARE_CRASH_DB") != "" {
		prepareCrashChild()
		return
	}
	path := filepath.Join(t.TempDir(), "mailgate.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashAfterPreparedBlobSynced$")
	cmd.Env = append(os.Environ(), "MAILGATE_STORE_PREPARE_CRASH_DB="+path)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed: %v\n%s", err, out)
	}
	db, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	check := func(db *DB) {
		t.Helper()
		db.View(func(tx *Tx) error {
			for i := range prepareCrashCommitted {
				if v, err := tx.GetScoped(9, "raw", U64(uint64(i))); err != nil || !bytes.Equal(v, crashMail(i)) {
					t.Errorf("committed value %d: %v", i, err)
				}
			}
			if v, _ := tx.GetPlain("raw", U64(99)); v != nil {
				t.Error("the killed transaction's reference is in the database")
			}
			return nil
		})
	}
	check(db)
	if tail := db.segs.mark(); tail.seg < 2 {
		t.Fatalf("the child's writes did not rotate the segments (at %+v)", tail)
	}
	seg1 := filepath.Join(SegmentDir(path), segName(1))
	fi, err := os.Stat(seg1)
	if err != nil {
		t.Fatal(err)
	}
	st, err := db.CompactSegments()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("segment 1 was %d bytes; compaction: %+v", fi.Size(), st)
	if _, err := os.Stat(seg1); !errors.Is(err, os.ErrNotExist) || st.Reclaimed < fi.Size() {
		t.Errorf("the segment holding the orphans was not reclaimed: %+v, %v", st, err)
	}
	check(db)
	db.Close()
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	check(db2)
	p := db2.Prepare(crashMail(100))
	putPrepared(t, db2, 9, "raw", U64(100), p)
	db2.View(func(tx *Tx) error {
		if v, err := tx.GetScoped(9, "raw", U64(100)); err != nil || !bytes.Equal(v, crashMail(100)) {
			t.Errorf("write after recovery: %v", err)
		}
		return nil
	})
}

const prepareCrashCommitted = 12

func prepareCrashChild() {
	db, err := Open(os.Getenv("MAILGATE_STORE_PREPARE_CRASH_DB"), testKey(1), Options{})
	if err != nil {
		panic(err)
	}
	store := func(i int) {
		p := db.Prepare(crashMail(i))
		if err := db.Batch(func(tx *Tx) error { return tx.PutScopedPrepared(9, "raw", U64(uint64(i)), p) }); err != nil {
			panic(err)
		}
	}
	for i := range 3 {
		store(i)
	}
	// Orphans: prepared (written and fsynced) but never stored, like duplicates.
	for i := range 10 {
		if p := db.Prepare(crashMail(50 + i)); p.err != nil {
			panic(p.err)
		}
	}
	for i := 3; i < prepareCrashCommitted; i++ {
		store(i) // past the orphans, and on into a second segment
	}
	p := db.Prepare(crashMail(99))
	testHookBeforeCommit = func() { syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	db.Batch(func(tx *Tx) error { return tx.PutScopedPrepared(9, "raw", U64(99), p) })
	panic("not killed")
}

// Concurrent preparers and transactions, with segments rotating every few blobs, values put in
// the transaction beside prepared ones, transactions that roll back, prepared values never
// stored, and compaction running all the while: every committed value reads back, also after
// a reopen and a final compaction. Run with -race.
func TestConcurrentPrepareBatchRotation(t *testing.T) {
	oldMax := segMax
	segMax = 16 << 10
	defer func() { segMax = oldMax }()
	db, path := openTest(t)
	value := func(w, i int) []byte {
		b := make([]byte, 2500+w*100+i)
		rand.Read(b[:1200])
		copy(b[1200:], fmt.Sprintf("writer %d value %d", w, i))
		return b
	}
	type rec struct {
		scope  uint64
		bucket string
		i      int
	}
	var mu sync.Mutex
	want := map[rec][]byte{}
	boom := errors.New("boom")
	stop := make(chan struct{})
	var compactions, moved atomic.Int64
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			st, err := db.CompactSegments()
			if err != nil {
				t.Error(err)
				return
			}
			compactions.Add(1)
			moved.Add(int64(st.Moved))
		}
	}()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			scope := uint64(w + 1)
			for i := range 30 {
				v := value(w, i)
				p := db.Prepare(v)
				k := Key(U64(scope), U64(uint64(i))) // scoped buckets are keyed by their scope
				switch {
				case i%7 == 3: // a duplicate: never stored
					continue
				case i%5 == 4: // rolls back
					err := db.Batch(func(tx *Tx) error {
						if err := tx.PutScopedPrepared(scope, "raw", k, p); err != nil {
							return err
						}
						return boom
					})
					if !errors.Is(err, boom) {
						t.Errorf("rolled-back batch: %v", err)
					}
					continue
				}
				inTx := value(w, 100+i)
				err := db.Batch(func(tx *Tx) error {
					if err := tx.PutScopedPrepared(scope, "raw", k, p); err != nil {
						return err
					}
					if i%3 == 0 {
						return tx.PutScoped(scope, "text", k, inTx)
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				want[rec{scope, "raw", i}] = v
				if i%3 == 0 {
					want[rec{scope, "text", i}] = inTx
				}
				// Some records are deleted again, so compaction has something to move.
				if i%4 == 1 {
					delete(want, rec{scope, "raw", i})
					mu.Unlock()
					if err := db.Batch(func(tx *Tx) error { return tx.Delete("raw", k) }); err != nil {
						t.Error(err)
					}
					continue
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	check := func(db *DB, when string) {
		t.Helper()
		db.View(func(tx *Tx) error {
			for k, v := range want {
				got, err := tx.GetScoped(k.scope, k.bucket, Key(U64(k.scope), U64(uint64(k.i))))
				if err != nil || !bytes.Equal(got, v) {
					t.Errorf("%s: %+v: %v", when, k, err)
				}
			}
			return nil
		})
	}
	check(db, "after the writers")
	ids, _ := db.segs.list()
	t.Logf("%d values, %d segments left, %d compactions moved %d blobs", len(want), len(ids), compactions.Load(), moved.Load())
	if db.segs.mark().seg < 10 {
		t.Errorf("the segments rotated only to %d", db.segs.mark().seg)
	}
	db.Close()
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	check(db2, "after reopen")
	if _, err := db2.CompactSegments(); err != nil {
		t.Fatal(err)
	}
	check(db2, "after the last compaction")
}

// A prepared value whose reference is committed while compaction runs, after its scan found
// nothing live in the (closed) segment the blob is in: the segment is kept, and the blob is
// moved by the next run.
func TestCompactionKeepsSegmentOfLatePreparedRef(t *testing.T) {
	oldMax := segMax
	segMax = 16 << 10
	defer func() { segMax = oldMax }()
	db, path := openTest(t)
	p := db.Prepare(crashMail(1))
	if p.blob == nil || p.blob.seg != 1 {
		t.Fatalf("not prepared into segment 1: %+v %v", p.blob, p.err)
	}
	// Fill segment 1 and go on into segment 3 with values that are then deleted.
	for i := 10; db.segs.mark().seg < 3; i++ {
		if err := db.Update(func(tx *Tx) error { return tx.PutScoped(2, "raw", U64(uint64(i)), crashMail(i)) }); err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *Tx) error { return tx.Delete("raw", U64(uint64(i))) }); err != nil {
			t.Fatal(err)
		}
	}
	testHookCompactScanned = func() { putPrepared(t, db, 1, "raw", U64(1), p) }
	st, err := db.CompactSegments()
	testHookCompactScanned = nil
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first run: %+v", st)
	read := func(db *DB, when string) {
		t.Helper()
		db.View(func(tx *Tx) error {
			if v, err := tx.GetScoped(1, "raw", U64(1)); err != nil || !bytes.Equal(v, crashMail(1)) {
				t.Errorf("%s: %v", when, err)
			}
			return nil
		})
	}
	read(db, "after the first compaction")
	if _, err := os.Stat(filepath.Join(SegmentDir(path), segName(1))); err != nil {
		t.Errorf("segment 1 removed under a reference committed during the compaction: %v", err)
	}
	st, err = db.CompactSegments()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second run: %+v", st)
	if st.Moved != 1 {
		t.Errorf("the second run moved %d blobs, want the prepared one", st.Moved)
	}
	read(db, "after the second compaction")
	db.Close()
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	read(db2, "after reopen")
}

// A backup taken while preparers write, with segments rotating under them, restores to a
// database whose every reference opens.
func TestBackupUnderPreparedWrites(t *testing.T) {
	oldMax := segMax
	segMax = 32 << 10
	defer func() { segMax = oldMax }()
	db, _ := openTest(t)
	stop, going := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	var n atomic.Uint64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := n.Add(1)
				p := db.Prepare(mail(int(i)))
				if i%5 == 0 {
					continue // never stored
				}
				if err := db.Batch(func(tx *Tx) error { return tx.PutScopedPrepared(1, "raw", U64(i), p) }); err != nil {
					t.Error(err)
					return
				}
				if i >= 40 {
					once.Do(func() { close(going) })
				}
			}
		}()
	}
	<-going
	out := filepath.Join(t.TempDir(), "b.tar")
	if _, err := db.Backup(out); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	got := backupRecords(t, out)
	t.Logf("backup under prepared writes: %d records, segments at %+v", got, db.segs.mark())
	if got < 30 {
		t.Errorf("backup holds %d records", got)
	}
}

// benchValue is an 8 KB message-like value: half text that compresses, half random bytes.
func benchValue() []byte {
	r := make([]byte, 4096)
	rand.Read(r)
	return append(bytes.Repeat([]byte("my order has not arrived yet\r\n"), 4096/30+1)[:4096], r...)
}

// BenchmarkPrepareBatch8: 8 concurrent writers each preparing an 8 KB value and storing it with
// Batch, as the mail path does. intx prepares with Prepare (compressed only; sealed, written
// and fsynced inside the transaction: the code before DB.Prepare); prewrite with DB.Prepare.
// loop-us/write is the time the group-commit loop is busy per write, the figure that bounds the
// daemon's ingest rate once other work shares the loop; /32 runs 32 writers; /work spends
// 0.3 ms of CPU per write inside the transaction, as the daemon's Ingest closures do, so the
// loop has work that a flush outside it can overlap.
func BenchmarkPrepareBatch8(b *testing.B) {
	for _, writers := range []int{8, 32} {
		for _, mode := range []string{"intx", "prewrite"} {
			name := mode
			if writers != 8 {
				name = fmt.Sprintf("%s/%d", mode, writers)
			}
			b.Run(name, func(b *testing.B) { benchPrepareBatch(b, mode, writers, 0) })
		}
	}
	// With 0.3 ms of CPU per write inside the transaction, as the daemon's Ingest closures take.
	for _, mode := range []string{"intx", "prewrite"} {
		b.Run(mode+"/work", func(b *testing.B) { benchPrepareBatch(b, mode, 8, 300*time.Microsecond) })
	}
}

// burn spends about d of CPU.
func burn(d time.Duration) {
	h := sha256.New()
	buf := make([]byte, 4096)
	for start := time.Now(); time.Since(start) < d; {
		h.Write(buf)
	}
}

func benchPrepareBatch(b *testing.B, mode string, writers int, work time.Duration) {
	var commits, busy, fsyncs atomic.Int64
	testHookFsync = func(uint32) error { fsyncs.Add(1); return nil }
	defer func() { testHookFsync = nil }()
	db, err := Open(filepath.Join(b.TempDir(), "b.db"), testKey(1), Options{OnCommit: func(_ int, took time.Duration) {
		commits.Add(1)
		busy.Add(int64(took))
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	val := benchValue()
	var seq atomic.Uint64
	b.SetParallelism(max(1, writers/runtime.GOMAXPROCS(0)))
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var p *Prepared
			if mode == "intx" {
				p = prepareCompressed(val)
			} else {
				p = db.Prepare(val)
			}
			n := seq.Add(1)
			if err := db.Batch(func(tx *Tx) error { burn(work); return tx.PutScopedPrepared(n, "raw", U64(n), p) }); err != nil {
				b.Error(err)
			}
		}
	})
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(commits.Load())/el, "commits/s")
	b.ReportMetric(float64(b.N)/el, "writes/s")
	b.ReportMetric(float64(busy.Load())/1e3/float64(b.N), "loop-us/write")
	b.ReportMetric(float64(b.N)/float64(commits.Load()), "writes/commit")
	b.ReportMetric(float64(fsyncs.Load())/float64(b.N), "segfsyncs/write")
}
