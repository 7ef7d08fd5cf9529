package store

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// putV1 stores val exactly as schema 1's Put and PutScoped did: sealed as it is, inline.
func putV1(tx *Tx, scope uint64, bucket string, key, val []byte) error {
	s := tx.db.data
	if scope != 0 {
		var err error
		if s, err = tx.scope(scope, true); err != nil {
			return err
		}
	}
	return tx.PutPlain(bucket, key, s.seal(val, ad(bucket, key, scope)))
}

// TestMigrateSchema1ToSegments: a schema-1 database (every value sealed inline) is migrated on
// open: large values move to segments, the rest is compressed where that pays, everything
// reads back, the schema is 2, and the file shrinks.
func TestMigrateSchema1ToSegments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mailgate.db")
	db, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		scope  uint64
		bucket string
		key    []byte
		val    []byte
	}
	var recs []rec
	for i := range 300 {
		id := uint64(i + 1)
		recs = append(recs,
			rec{id, "raw", append(U64(id), 0, 0, 0, 1), mail(i)},
			rec{id, "messages", append(U64(id), 0, 0, 0, 1), bytes.Repeat([]byte("decoded text "), 100)},
			rec{0, "audit", U64(id), []byte(`{"actor":"mail","action":"mail.receive"}`)})
	}
	err = db.Update(func(tx *Tx) error {
		for _, r := range recs {
			if err := putV1(tx, r.scope, r.bucket, r.key, r.val); err != nil {
				return err
			}
		}
		// As schema 1 left it: no segments recorded.
		if err := tx.Delete(metaBucket, segTailKey); err != nil {
			return err
		}
		return tx.PutPlain(metaBucket, []byte("schema"), U64(1))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	os.RemoveAll(SegmentDir(path))
	before, _ := os.Stat(path)

	db, err = Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	after, _ := os.Stat(path)
	if after.Size() >= before.Size()/2 {
		t.Errorf("database file %d bytes before the migration, %d after", before.Size(), after.Size())
	}
	db.View(func(tx *Tx) error {
		if v := FromU64(mustPlain(tx, metaBucket, []byte("schema"))); v != SchemaVersion {
			t.Errorf("schema %d after migration", v)
		}
		for _, r := range recs {
			var got []byte
			var err error
			if r.scope != 0 {
				got, err = tx.GetScoped(r.scope, r.bucket, r.key)
			} else {
				got, err = tx.Get(r.bucket, r.key)
			}
			if err != nil || !bytes.Equal(got, r.val) {
				t.Fatalf("%s/%x after migration: %v", r.bucket, r.key, err)
			}
			v := mustPlain(tx, r.bucket, r.key)
			want := map[string]byte{"raw": refFormat, "messages": zstdFormat, "audit": sealFormat}[r.bucket]
			if v[0] != want {
				t.Fatalf("%s/%x has format %d after migration, want %d", r.bucket, r.key, v[0], want)
			}
		}
		return nil
	})
	// The sequence numbers survive the compaction.
	db.Update(func(tx *Tx) error {
		if _, err := tx.NextSeq("raw"); err != nil {
			t.Error(err)
		}
		return nil
	})
}

func mustPlain(tx *Tx, bucket string, key []byte) []byte {
	v, _ := tx.GetPlain(bucket, key)
	if v == nil {
		return []byte{0}
	}
	return v
}

// TestMigrationSurvivesKill: mailgate killed (SIGKILL) in the middle of the schema 1 → 2
// migration, between a batch's segment sync and its commit, finishes the migration on the next
// open with every value intact.
func TestMigrationSurvivesKill(t *testing.T) {
	if p := os.Getenv("MAILGATE_STORE_MIGRATE_DB"); p != "" {
		commits := 0
		testHookBeforeCommit = func() {
			if commits++; commits == 2 {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
		Open(p, testKey(1), Options{})
		t.Fatal("not killed")
	}
	path := filepath.Join(t.TempDir(), "mailgate.db")
	db, err := Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3*migrateBatch + 7
	err = db.Update(func(tx *Tx) error {
		for i := range n {
			if err := putV1(tx, uint64(i%5+1), "raw", append(U64(uint64(i%5+1)), U64(uint64(i))...), crashMail(i)); err != nil {
				return err
			}
		}
		return errors.Join(tx.Delete(metaBucket, segTailKey), tx.PutPlain(metaBucket, []byte("schema"), U64(1)))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	os.RemoveAll(SegmentDir(path))

	cmd := exec.Command(os.Args[0], "-test.run=^TestMigrationSurvivesKill$")
	cmd.Env = append(os.Environ(), "MAILGATE_STORE_MIGRATE_DB="+path)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed: %v\n%s", err, out)
	}
	// Half-way: one batch committed, the second lost, the schema still 1.
	db, err = Open(path, testKey(1), Options{ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "schema version 1") {
		t.Fatalf("after the kill the database should still be schema 1: %v", err)
	}

	db, err = Open(path, testKey(1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *Tx) error {
		if v := FromU64(mustPlain(tx, metaBucket, []byte("schema"))); v != SchemaVersion {
			t.Errorf("schema %d", v)
		}
		for i := range n {
			k := append(U64(uint64(i%5+1)), U64(uint64(i))...)
			v, err := tx.GetScoped(uint64(i%5+1), "raw", k)
			if err != nil || !bytes.Equal(v, crashMail(i)) {
				t.Fatalf("value %d after the interrupted migration: %v", i, err)
			}
			if mustPlain(tx, "raw", k)[0] != refFormat {
				t.Fatalf("value %d not migrated", i)
			}
		}
		return nil
	})
}
