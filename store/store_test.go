package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func openTest(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mailgate.db")
	db, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func TestSealedRoundTripAndNotInFile(t *testing.T) {
	db, path := openTest(t)
	secret := []byte("customer@example.org wrote: my card is 4111")
	if err := db.Update(func(tx *Tx) error { return tx.Put("messages", []byte("k1"), secret) }); err != nil {
		t.Fatal(err)
	}
	var got []byte
	db.View(func(tx *Tx) error { got, _ = tx.Get("messages", []byte("k1")); return nil })
	if !bytes.Equal(got, secret) {
		t.Fatalf("got %q", got)
	}
	db.Close()
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, []byte("customer@example.org")) || bytes.Contains(raw, []byte("4111")) {
		t.Fatal("plaintext found in the database file")
	}
}

func TestSwappedRecordsDoNotOpen(t *testing.T) {
	db, _ := openTest(t)
	db.Update(func(tx *Tx) error {
		tx.Put("b", []byte("a"), []byte("alpha"))
		return tx.Put("b", []byte("z"), []byte("zulu"))
	})
	// An attacker with write access to the file swaps two sealed values.
	err := db.bolt.Update(func(btx *bolt.Tx) error {
		b := btx.Bucket([]byte("b"))
		a := append([]byte(nil), b.Get([]byte("a"))...)
		z := append([]byte(nil), b.Get([]byte("z"))...)
		b.Put([]byte("a"), z)
		return b.Put([]byte("z"), a)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		if _, err := tx.Get("b", []byte("a")); err == nil {
			t.Error("swapped record opened")
		}
		return nil
	})
}

func TestWrongKeyAndLocked(t *testing.T) {
	db, path := openTest(t)
	if _, err := Open(path, testKey(1), Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	db.Close()
	if _, err := Open(path, testKey(2), Options{}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v", err)
	}
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	db2.Close()
}

func TestNewerSchemaRefused(t *testing.T) {
	db, path := openTest(t)
	db.Update(func(tx *Tx) error { return tx.PutPlain(metaBucket, []byte("schema"), U64(SchemaVersion+1)) })
	db.Close()
	if _, err := Open(path, testKey(1), Options{}); err == nil {
		t.Fatal("opened a database from the future")
	}
}

func TestScopeDestroy(t *testing.T) {
	db, _ := openTest(t)
	db.Update(func(tx *Tx) error {
		tx.PutScoped(7, "msg", []byte("7/1"), []byte("ticket seven"))
		return tx.PutScoped(8, "msg", []byte("8/1"), []byte("ticket eight"))
	})
	db.Update(func(tx *Tx) error { return tx.DestroyScope(7) })
	db.View(func(tx *Tx) error {
		if _, err := tx.GetScoped(7, "msg", []byte("7/1")); !errors.Is(err, ErrScopeDestroyed) {
			t.Errorf("destroyed scope: %v", err)
		}
		if v, err := tx.GetScoped(8, "msg", []byte("8/1")); err != nil || string(v) != "ticket eight" {
			t.Errorf("other scope: %q %v", v, err)
		}
		// A value of scope 8 cannot be read as if it were scope 9.
		if _, err := tx.GetScoped(9, "msg", []byte("8/1")); err == nil {
			t.Error("read across scopes")
		}
		return nil
	})
}

func TestScopeSurvivesReopenAndRollback(t *testing.T) {
	db, path := openTest(t)
	boom := errors.New("boom")
	db.Update(func(tx *Tx) error { tx.PutScoped(3, "m", []byte("x"), []byte("lost")); return boom })
	db.Update(func(tx *Tx) error { return tx.PutScoped(3, "m", []byte("x"), []byte("kept")) })
	db.Close()
	db2, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.View(func(tx *Tx) error {
		v, err := tx.GetScoped(3, "m", []byte("x"))
		if err != nil || string(v) != "kept" {
			t.Errorf("got %q %v", v, err)
		}
		return nil
	})
}

func TestIndexIsKeyed(t *testing.T) {
	db, _ := openTest(t)
	path2 := filepath.Join(t.TempDir(), "o.db")
	other, _ := Open(path2, testKey(9), Options{})
	defer other.Close()
	if bytes.Equal(db.Index("addr", "a@example.org"), other.Index("addr", "a@example.org")) {
		t.Fatal("index does not depend on the key")
	}
	if bytes.Equal(db.Index("addr", "a"), db.Index("msgid", "a")) {
		t.Fatal("index kinds collide")
	}
}

func TestBatchConcurrent(t *testing.T) {
	db, _ := openTest(t)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := db.Batch(func(tx *Tx) error {
				n, err := tx.NextSeq("seq")
				if err != nil {
					return err
				}
				return tx.Put("vals", U64(n), []byte("v"))
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	db.View(func(tx *Tx) error {
		if n := tx.Count("vals"); n != 50 {
			t.Errorf("count %d", n)
		}
		return nil
	})
}

func TestBackupOpensWithSameKey(t *testing.T) {
	db, _ := openTest(t)
	db.Update(func(tx *Tx) error { return tx.Put("b", []byte("k"), []byte("v")) })
	out := filepath.Join(t.TempDir(), "backup.db")
	if _, err := db.Backup(out); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(out)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("backup mode %o", fi.Mode().Perm())
	}
	restored := t.TempDir()
	extract(t, out, restored)
	b, err := Open(filepath.Join(restored, "mailgate.db"), testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.View(func(tx *Tx) error {
		if v, _ := tx.Get("b", []byte("k")); string(v) != "v" {
			t.Errorf("backup value %q", v)
		}
		return nil
	})
}

func TestKeyFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "data.key")
	if err := WriteNewKey(f); err != nil {
		t.Fatal(err)
	}
	if err := WriteNewKey(f); err == nil {
		t.Fatal("overwrote a key")
	}
	if _, err := LoadKey(f); err != nil {
		t.Fatal(err)
	}
	os.Chmod(f, 0o644)
	if _, err := LoadKey(f); err == nil {
		t.Fatal("loaded a world-readable key")
	}
}

func BenchmarkBatchPut(b *testing.B) {
	db, err := Open(filepath.Join(b.TempDir(), "b.db"), testKey(1), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	val := bytes.Repeat([]byte("x"), 8192)
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			db.Batch(func(tx *Tx) error {
				n, _ := tx.NextSeq("m")
				return tx.Put("m", U64(n), val)
			})
		}
	})
}

func TestEmptyValueIsPresent(t *testing.T) {
	db, _ := openTest(t)
	db.Update(func(tx *Tx) error { return tx.PutPlain("b", []byte("k"), nil) })
	db.View(func(tx *Tx) error {
		if v, _ := tx.GetPlain("b", []byte("k")); v == nil {
			t.Error("empty value reads as absent")
		}
		if v, _ := tx.GetPlain("b", []byte("nope")); v != nil {
			t.Error("absent value reads as present")
		}
		return nil
	})
}

func TestTruncatedFileIsAClearError(t *testing.T) {
	db, path := openTest(t)
	db.Update(func(tx *Tx) error { return tx.Put("b", []byte("k"), bytes.Repeat([]byte("v"), 20000)) })
	db.Close()
	fi, _ := os.Stat(path)
	for _, size := range []int64{0, 100, 4096, fi.Size() / 2} {
		os.Truncate(path, size)
		_, err := Open(path, testKey(1), Options{})
		if err == nil {
			t.Fatalf("truncated to %d bytes: opened", size)
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("truncated to %d: error does not name the file: %v", size, err)
		}
	}
}

func BenchmarkSeal8K(b *testing.B) {
	s := newSealer(testKey(1))
	val := bytes.Repeat([]byte("x"), 8192)
	adata := ad("messages", U64(1), 7)
	b.SetBytes(int64(len(val)))
	for i := 0; i < b.N; i++ {
		s.seal(val, adata)
	}
}

func BenchmarkOpen8K(b *testing.B) {
	s := newSealer(testKey(1))
	adata := ad("messages", U64(1), 7)
	sealed := s.seal(bytes.Repeat([]byte("x"), 8192), adata)
	b.SetBytes(8192)
	for i := 0; i < b.N; i++ {
		if _, err := s.open(sealed, adata); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPut8K is sealing + put in one durable transaction each (one writer).
func BenchmarkPut8K(b *testing.B) {
	db, err := Open(filepath.Join(b.TempDir(), "b.db"), testKey(1), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	val := bytes.Repeat([]byte("x"), 8192)
	for i := 0; i < b.N; i++ {
		db.Update(func(tx *Tx) error { return tx.Put("m", U64(uint64(i)), val) })
	}
}

// BenchmarkGet8K is get + open from a read transaction.
func BenchmarkGet8K(b *testing.B) {
	db, err := Open(filepath.Join(b.TempDir(), "b.db"), testKey(1), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	val := bytes.Repeat([]byte("x"), 8192)
	db.Update(func(tx *Tx) error {
		for i := 0; i < 1000; i++ {
			tx.Put("m", U64(uint64(i)), val)
		}
		return nil
	})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		db.View(func(tx *Tx) error {
			_, err := tx.Get("m", U64(uint64(i%1000)))
			return err
		})
	}
}

func TestOnCommitReportsBatches(t *testing.T) {
	var mu sync.Mutex
	total := 0
	db, err := Open(filepath.Join(t.TempDir(), "c.db"), testKey(1), Options{OnCommit: func(n int, _ time.Duration) {
		mu.Lock()
		total += n
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db.Batch(func(tx *Tx) error { return tx.PutPlain("b", []byte("k"), []byte("v")) })
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if total != 10 {
		t.Fatalf("commits reported %d calls, want 10", total)
	}
}
