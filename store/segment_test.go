package store

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// extract restores a backup archive into dir the way the README says: GNU tar.
func extract(t *testing.T, archive, dir string) {
	t.Helper()
	if out, err := exec.Command("tar", "-xf", archive, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf: %v\n%s", err, out)
	}
}

// mail is a message-like value: text that compresses, with a random part that does not.
func mail(i int) []byte {
	r := make([]byte, 1500)
	rand.Read(r)
	return []byte(fmt.Sprintf("Subject: order %d\r\nX-Noise: %x\r\n\r\n%s", i, r, strings.Repeat(fmt.Sprintf("my order %d has not arrived\r\n", i), 300)))
}

func segBytes(t *testing.T, path string) []byte {
	t.Helper()
	var all []byte
	ents, _ := os.ReadDir(SegmentDir(path))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(SegmentDir(path), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

func TestLargeValuesLiveInSegmentsSealed(t *testing.T) {
	db, path := openTest(t)
	big, small := mail(1), []byte("a short note")
	text := bytes.Repeat([]byte("the same decoded text line\n"), 60) // compresses below blobMin
	err := db.Update(func(tx *Tx) error {
		return errors.Join(tx.PutScoped(7, "raw", U64(7), big), tx.PutScoped(7, "small", U64(7), small),
			tx.Put("text", []byte("t"), text))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		v, _ := tx.GetPlain("raw", U64(7))
		if len(v) != refLen || v[0] != refFormat {
			t.Errorf("large value stored inline (%d bytes, format %d)", len(v), v[0])
		}
		v, _ = tx.GetPlain("text", []byte("t"))
		if v[0] != zstdFormat || len(v) >= len(text) {
			t.Errorf("compressible text stored as format %d, %d bytes", v[0], len(v))
		}
		return nil
	})
	db.Close()
	seg := segBytes(t, path)
	if len(seg) == 0 || len(seg) > len(big)/2 {
		t.Errorf("segments hold %d bytes for a %d-byte value", len(seg), len(big))
	}
	file, _ := os.ReadFile(path)
	for _, b := range [][]byte{seg, file} {
		if bytes.Contains(b, []byte("has not arrived")) || bytes.Contains(b, []byte("order 1")) {
			t.Error("plaintext on disk")
		}
	}
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.View(func(tx *Tx) error {
		for _, c := range []struct {
			b    string
			k    []byte
			want []byte
			get  func(string, []byte) ([]byte, error)
		}{
			{"raw", U64(7), big, func(b string, k []byte) ([]byte, error) { return tx.GetScoped(7, b, k) }},
			{"small", U64(7), small, func(b string, k []byte) ([]byte, error) { return tx.GetScoped(7, b, k) }},
			{"text", []byte("t"), text, tx.Get},
		} {
			if got, err := c.get(c.b, c.k); err != nil || !bytes.Equal(got, c.want) {
				t.Errorf("%s: %v, %d bytes, want %d", c.b, err, len(got), len(c.want))
			}
		}
		return nil
	})
}

// A reference moved to another record, or two blobs swapped in the segment, must not open.
func TestSwappedBlobsDoNotOpen(t *testing.T) {
	db, path := openTest(t)
	a, b := mail(1), mail(2)
	db.Update(func(tx *Tx) error {
		return errors.Join(tx.PutScoped(1, "raw", U64(1), a), tx.PutScoped(1, "raw", U64(2), b))
	})
	var refA, refB []byte
	db.View(func(tx *Tx) error {
		refA, _ = tx.GetPlain("raw", U64(1))
		refB, _ = tx.GetPlain("raw", U64(2))
		return nil
	})
	// The reference of record 2 put under record 1.
	db.Update(func(tx *Tx) error { return tx.PutPlain("raw", U64(1), refB) })
	db.View(func(tx *Tx) error {
		if v, err := tx.GetScoped(1, "raw", U64(1)); err == nil {
			t.Errorf("record 1 opened with record 2's reference: %d bytes", len(v))
		}
		return nil
	})
	db.Update(func(tx *Tx) error { return tx.PutPlain("raw", U64(1), refA) })
	db.Close()

	// Swap the two blobs' bytes in the segment file, adjusting the references to match.
	ra, _ := parseRef(refA)
	rb, _ := parseRef(refB)
	segPath := filepath.Join(SegmentDir(path), segName(ra.seg))
	seg, _ := os.ReadFile(segPath)
	blobA := append([]byte(nil), seg[ra.off:ra.off+int64(ra.n)]...)
	blobB := append([]byte(nil), seg[rb.off:rb.off+int64(rb.n)]...)
	swapped := append(append(append([]byte(nil), seg[:ra.off]...), blobB...), blobA...)
	os.WriteFile(segPath, swapped, 0o600)
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.Update(func(tx *Tx) error {
		na := blobRef{seg: ra.seg, off: ra.off + int64(rb.n), n: ra.n, scope: 1}
		nb := blobRef{seg: ra.seg, off: ra.off, n: rb.n, scope: 1}
		return errors.Join(tx.PutPlain("raw", U64(1), na.bytes()), tx.PutPlain("raw", U64(2), nb.bytes()))
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

// A transaction that rolls back leaves nothing behind: its appends are written over, and the
// values committed around it read back.
func TestRolledBackAppendsAreReused(t *testing.T) {
	db, path := openTest(t)
	if err := db.Update(func(tx *Tx) error { return tx.Put("raw", []byte("a"), mail(1)) }); err != nil {
		t.Fatal(err)
	}
	end := db.segs.pos
	boom := errors.New("boom")
	if err := db.Batch(func(tx *Tx) error {
		if err := tx.Put("raw", []byte("b"), mail(2)); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("batch: %v", err)
	}
	if db.segs.pos != end {
		t.Errorf("after rollback the segment ends at %d, want %d", db.segs.pos, end)
	}
	if err := db.Update(func(tx *Tx) error { return tx.Put("raw", []byte("c"), mail(3)) }); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		for k, want := range map[string][]byte{"a": mail(1)[:10], "c": mail(3)[:10]} {
			if v, err := tx.Get("raw", []byte(k)); err != nil || !bytes.HasPrefix(v, want) {
				t.Errorf("%s: %v", k, err)
			}
		}
		if v, _ := tx.GetPlain("raw", []byte("b")); v != nil {
			t.Error("rolled-back record present")
		}
		return nil
	})
	db.Close()
	// The bytes of "b" past the end of "c" are cut off when the database is next opened.
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if fi, _ := os.Stat(filepath.Join(SegmentDir(path), segName(1))); fi.Size() != db.segs.pos || db2.segs.pos != db.segs.pos {
		t.Errorf("segment is %d bytes, committed end %d, reopened at %d", fi.Size(), db.segs.pos, db2.segs.pos)
	}
}

// Concurrent writers share one segment fsync per commit, and every value reads back.
func TestBatchSharesSegmentSync(t *testing.T) {
	db, _ := openTest(t)
	var mu sync.Mutex
	syncs := 0
	testHookBeforeCommit = func() { mu.Lock(); syncs++; mu.Unlock() }
	defer func() { testHookBeforeCommit = nil }()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := db.Batch(func(tx *Tx) error { return tx.PutScoped(uint64(i+1), "raw", U64(uint64(i)), mail(i)) }); err != nil {
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if syncs >= 40 || syncs == 0 {
		t.Errorf("40 writers made %d segment syncs", syncs)
	}
	t.Logf("40 writers, %d segment syncs", syncs)
	db.View(func(tx *Tx) error {
		for i := range 40 {
			if v, err := tx.GetScoped(uint64(i+1), "raw", U64(uint64(i))); err != nil || !bytes.Equal(v[:20], mail(i)[:20]) {
				t.Errorf("value %d: %v", i, err)
			}
		}
		return nil
	})
}

// TestCrashBetweenSegmentSyncAndCommit kills a process (SIGKILL) after a transaction's blobs
// are written and fsynced but before bbolt commits. On the next open the transaction is gone
// without a trace: no reference to it, the segment cut back to the last commit, the values
// committed before it intact, and new writes go on.
func TestCrashBetweenSegmentSyncAndCommit(t *testing.T) {
	if os.Getenv("MAILGATE_STORE_CRASH_DB") != "" {
		crashChild()
		return
	}
	path := filepath.Join(t.TempDir(), "mailgate.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashBetweenSegmentSyncAndCommit$")
	cmd.Env = append(os.Environ(), "MAILGATE_STORE_CRASH_DB="+path)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed: %v\n%s", err, out)
	}
	segPath := filepath.Join(SegmentDir(path), segName(1))
	fi, err := os.Stat(segPath)
	if err != nil {
		t.Fatal(err)
	}
	crashed := fi.Size()

	db, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fi, _ = os.Stat(segPath)
	if fi.Size() >= crashed || fi.Size() != db.segs.pos {
		t.Errorf("segment was %d bytes at the crash, %d after open; committed end %d", crashed, fi.Size(), db.segs.pos)
	}
	db.View(func(tx *Tx) error {
		for i := range 3 {
			if v, err := tx.GetScoped(9, "raw", U64(uint64(i))); err != nil || !bytes.Equal(v, crashMail(i)) {
				t.Errorf("committed value %d: %v", i, err)
			}
		}
		if v, _ := tx.GetPlain("raw", U64(99)); v != nil {
			t.Error("the killed transaction's reference is in the database")
		}
		c := tx.Cursor("raw")
		for k := c.First(); k != nil; k = c.Next() {
			v, _ := tx.GetPlain("raw", k)
			if r, err := parseRef(v); err == nil && r.off+int64(r.n) > fi.Size() {
				t.Errorf("reference %x points past the segment's end", k)
			}
		}
		return nil
	})
	if err := db.Update(func(tx *Tx) error { return tx.PutScoped(9, "raw", U64(100), crashMail(100)) }); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		if v, err := tx.GetScoped(9, "raw", U64(100)); err != nil || !bytes.Equal(v, crashMail(100)) {
			t.Errorf("write after recovery: %v", err)
		}
		return nil
	})
}

func crashMail(i int) []byte {
	// Deterministic but incompressible enough to stay a blob.
	b := make([]byte, 4000)
	x := uint32(i*7919 + 1)
	for j := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[j] = byte(x)
	}
	return b
}

func crashChild() {
	path := os.Getenv("MAILGATE_STORE_CRASH_DB")
	db, err := Open(path, testKey(1), Options{})
	if err != nil {
		panic(err)
	}
	for i := range 3 {
		if err := db.Update(func(tx *Tx) error { return tx.PutScoped(9, "raw", U64(uint64(i)), crashMail(i)) }); err != nil {
			panic(err)
		}
	}
	testHookBeforeCommit = func() { syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	db.Batch(func(tx *Tx) error { return tx.PutScoped(9, "raw", U64(99), crashMail(99)) })
	panic("not killed")
}

// TestPurgedBlobsCannotBeOpened: destroying a scope (ticket purge) makes its blobs unreadable
// even though their bytes are still in the segment and the reference is put back.
func TestPurgedBlobsCannotBeOpened(t *testing.T) {
	db, _ := openTest(t)
	if err := db.Update(func(tx *Tx) error { return tx.PutScoped(4, "raw", U64(4), mail(4)) }); err != nil {
		t.Fatal(err)
	}
	var ref []byte
	db.View(func(tx *Tx) error { ref, _ = tx.GetPlain("raw", U64(4)); return nil })
	err := db.Update(func(tx *Tx) error {
		return errors.Join(tx.Delete("raw", U64(4)), tx.DestroyScope(4))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *Tx) error { return tx.PutPlain("raw", U64(4), ref) })
	db.View(func(tx *Tx) error {
		if v, err := tx.GetScoped(4, "raw", U64(4)); !errors.Is(err, ErrScopeDestroyed) {
			t.Errorf("purged blob: %v, %d bytes", err, len(v))
		}
		return nil
	})
}

// TestBackupUnderWritesHasEveryBlob: a backup taken while writers append blobs restores (with
// tar) to a database whose every reference opens, and that holds everything committed before
// the backup began.
func TestBackupUnderWritesHasEveryBlob(t *testing.T) {
	db, _ := openTest(t)
	for i := range 20 {
		db.Update(func(tx *Tx) error { return tx.PutScoped(1, "raw", U64(uint64(i)), mail(i)) })
	}
	stop, going := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 20; ; i++ {
			if i == 25 {
				close(going)
			}
			select {
			case <-stop:
				return
			default:
			}
			if err := db.Batch(func(tx *Tx) error { return tx.PutScoped(1, "raw", U64(uint64(i)), mail(i)) }); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	<-going
	out := filepath.Join(t.TempDir(), "b.tar")
	if _, err := db.Backup(out); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	n := backupRecords(t, out)
	if n < 25 {
		t.Errorf("backup holds %d records, want at least the 25 written before it", n)
	}
	t.Logf("backup under writes: %d records", n)
}

// backupRecords restores the backup at out and checks every "raw" record of scope 1 opens and
// is the mail(i) of its key; it returns how many there are.
func backupRecords(t *testing.T, out string) int {
	t.Helper()
	dir := t.TempDir()
	extract(t, out, dir)
	b, err := Open(filepath.Join(dir, "mailgate.db"), testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := 0
	b.View(func(tx *Tx) error {
		c := tx.Cursor("raw")
		for k := c.First(); k != nil; k = c.Next() {
			v, err := tx.GetScoped(1, "raw", k)
			if err != nil || !bytes.HasPrefix(v, fmt.Appendf(nil, "Subject: order %d\r\n", FromU64(k))) {
				t.Errorf("record %d of the backup: %v", FromU64(k), err)
			}
			n++
		}
		return nil
	})
	return n
}

// A value that is empty or a truncated reference is an error, never a panic.
func TestMalformedStoredValuesAreErrors(t *testing.T) {
	db, _ := openTest(t)
	db.Update(func(tx *Tx) error {
		return errors.Join(tx.PutPlain("b", []byte("empty"), []byte{}), tx.PutPlain("b", []byte("ref"), []byte{refFormat, 0, 0}),
			tx.PutPlain("b", []byte("far"), blobRef{seg: 9, off: 1 << 40, n: 100}.bytes()))
	})
	db.View(func(tx *Tx) error {
		for _, k := range []string{"empty", "ref", "far"} {
			if _, err := tx.Get("b", []byte(k)); err == nil {
				t.Errorf("%s: no error", k)
			}
		}
		return nil
	})
}

// A database whose segments were lost or cut short (a restore that copied only mailgate.db)
// does not open, and says what to do, instead of failing later on every read.
func TestMissingOrShortSegmentsAreAClearError(t *testing.T) {
	for _, damage := range []string{"missing", "short"} {
		t.Run(damage, func(t *testing.T) {
			db, path := openTest(t)
			if err := db.Update(func(tx *Tx) error { return tx.Put("raw", []byte("a"), mail(1)) }); err != nil {
				t.Fatal(err)
			}
			db.Close()
			seg := filepath.Join(SegmentDir(path), segName(1))
			if damage == "missing" {
				os.RemoveAll(SegmentDir(path))
			} else {
				os.Truncate(seg, 10)
			}
			_, err := Open(path, testKey(1), Options{})
			if err == nil || !strings.Contains(err.Error(), "restore the data directory from a backup") {
				t.Fatalf("open with %s segments: %v", damage, err)
			}
		})
	}
}
