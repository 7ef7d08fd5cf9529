package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"mailgate/store"
)

var testKey = bytes.Repeat([]byte{3}, 32)

// fileLog is a closed store file with n events and a mirror beside it, as an attacker with
// write access to the data dir (and without the key) finds it.
type fileLog struct {
	dir, db, mirror string
}

func makeFileLog(t *testing.T, n int) fileLog {
	t.Helper()
	dir := t.TempDir()
	f := fileLog{dir: dir, db: filepath.Join(dir, "mailgate.db"), mirror: filepath.Join(dir, "audit.jsonl")}
	f.append(t, n)
	return f
}

func (f fileLog) open(t *testing.T) (*Log, *store.DB) {
	t.Helper()
	db, err := store.Open(f.db, testKey, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(db, f.mirror)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); db.Close() })
	return l, db
}

func (f fileLog) append(t *testing.T, n int) {
	t.Helper()
	l, db := f.open(t)
	for i := 0; i < n; i++ {
		if err := l.Append(Event{Actor: "alice", Action: "ticket.view", Object: "ticket/1", Remote: "127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	db.Close()
}

// attack edits the file with bbolt directly, as someone without the key would.
func (f fileLog) attack(t *testing.T, fn func(btx *bolt.Tx) error) {
	t.Helper()
	bdb, err := bolt.Open(f.db, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	if err := bdb.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// verifyBoth runs Verify and CheckHead on a fresh open and wants both to name the problem.
func (f fileLog) verifyBoth(t *testing.T, wantSeq uint64, wantReason string) {
	t.Helper()
	l, db := f.open(t)
	for name, check := range map[string]func() (int, error){"Verify": l.Verify, "CheckHead": l.CheckHead} {
		n, err := check()
		ce, ok := IsChainError(err)
		if !ok {
			t.Fatalf("%s: %d events, err %v: the attack went unnoticed", name, n, err)
		}
		if ce.Seq != wantSeq || !strings.Contains(ce.Reason, wantReason) {
			t.Fatalf("%s: %v, want seq %d and %q", name, err, wantSeq, wantReason)
		}
	}
	l.Close()
	db.Close()
}

func mirrorLines(t *testing.T, path string) []record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []record
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestEraseAuditBuckets(t *testing.T) {
	f := makeFileLog(t, 6)
	f.attack(t, func(btx *bolt.Tx) error {
		if err := btx.DeleteBucket([]byte(Bucket)); err != nil {
			return err
		}
		return btx.DeleteBucket([]byte(headBucket))
	})
	f.verifyBoth(t, 1, "all 6 events are gone: the audit log was erased")

	// Appending afterwards must not start a new chain that verifies.
	f.append(t, 1)
	f.verifyBoth(t, 1, "events 1..6 missing (deleted)")
}

// Deleting events in the middle is found without the walk too, from the key count.
func TestCheckHeadFindsGap(t *testing.T) {
	f := makeFileLog(t, 6)
	f.attack(t, func(btx *bolt.Tx) error { return btx.Bucket([]byte(Bucket)).Delete(store.U64(3)) })
	l, _ := f.open(t)
	if _, err := l.CheckHead(); err == nil || !strings.Contains(err.Error(), "1 events missing before seq 6") {
		t.Fatalf("CheckHead with event 3 deleted: %v", err)
	}
}

func TestDeleteAuditHead(t *testing.T) {
	f := makeFileLog(t, 4)
	f.attack(t, func(btx *bolt.Tx) error { return btx.DeleteBucket([]byte(headBucket)) })
	f.verifyBoth(t, 4, "chain head missing")
}

func TestRollBackAuditBucketsFromBackup(t *testing.T) {
	f := makeFileLog(t, 3)
	old := filepath.Join(f.dir, "old.db")
	copyFile(t, f.db, old) // an older copy of the file, as a backup holds it
	f.append(t, 4)         // events 4..7, e.g. someone reading tickets, which the attacker wants gone

	// Copy the audit buckets of the older backup, with its head, over the current ones.
	src, err := bolt.Open(old, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f.attack(t, func(btx *bolt.Tx) error {
		return src.View(func(stx *bolt.Tx) error {
			for _, name := range []string{Bucket, headBucket} {
				if err := btx.DeleteBucket([]byte(name)); err != nil {
					return err
				}
				dst, err := btx.CreateBucket([]byte(name))
				if err != nil {
					return err
				}
				sb := stx.Bucket([]byte(name))
				dst.SetSequence(sb.Sequence())
				if err := sb.ForEach(func(k, v []byte) error { return dst.Put(k, v) }); err != nil {
					return err
				}
			}
			return nil
		})
	})
	f.verifyBoth(t, 4, "events 4..7 missing at the end: the log was cut or rolled back")
}

func TestCutTailAndRewriteHeadFromMirror(t *testing.T) {
	f := makeFileLog(t, 6)
	m := mirrorLines(t, f.mirror)
	h, err := hex.DecodeString(m[3].Hash) // event 4's hash, public in the mirror
	if err != nil {
		t.Fatal(err)
	}
	f.attack(t, func(btx *bolt.Tx) error {
		b := btx.Bucket([]byte(Bucket))
		b.Delete(store.U64(5))
		b.Delete(store.U64(6))
		// The head as the old code wrote it: seq and hash, in the clear.
		return btx.Bucket([]byte(headBucket)).Put(headKey, append(store.U64(4), h...))
	})
	f.verifyBoth(t, 5, "events 5..6 missing at the end")
}

// The head alone rewritten (here: an older, once valid head) no longer passes for the end.
func TestForgedHead(t *testing.T) {
	f := makeFileLog(t, 3)
	var old []byte
	f.attack(t, func(btx *bolt.Tx) error {
		old = append([]byte(nil), btx.Bucket([]byte(headBucket)).Get(headKey)...)
		return nil
	})
	f.append(t, 1)
	f.attack(t, func(btx *bolt.Tx) error {
		head := btx.Bucket([]byte(headBucket)).Get(headKey)
		forged := append([]byte(nil), head...)
		copy(forged[8+hashLen:], old[8+hashLen:]) // right seq and hash, someone else's MAC
		return btx.Bucket([]byte(headBucket)).Put(headKey, forged)
	})
	f.verifyBoth(t, 4, "chain head does not authenticate")
}

// The whole file replaced by an older backup is consistent in itself: it looks like a restore,
// so the mirror that is ahead is kept under another name (MirrorRotated, which the app logs
// and audits) and a new segment begins.
func TestWholeFileRollbackRotatesMirror(t *testing.T) {
	f := makeFileLog(t, 3)
	old := filepath.Join(f.dir, "old.db")
	copyFile(t, f.db, old) // an older copy of the file, as a backup holds it
	f.append(t, 2)
	if err := os.Rename(old, f.db); err != nil {
		t.Fatal(err)
	}
	l, _ := f.open(t)
	if l.MirrorRotated == "" || l.MirrorAhead != 5 {
		t.Fatalf("mirror ahead by 2 events: rotated %q, ahead %d", l.MirrorRotated, l.MirrorAhead)
	}
}

// A database whose chain does not check out is no restore: its mirror stays, as evidence.
func TestBrokenChainKeepsMirror(t *testing.T) {
	f := makeFileLog(t, 4)
	f.attack(t, func(btx *bolt.Tx) error {
		btx.DeleteBucket([]byte(headBucket))
		return btx.DeleteBucket([]byte(Bucket))
	})
	l, _ := f.open(t)
	if l.MirrorRotated != "" {
		t.Fatalf("the mirror of an erased log was rotated away to %s", l.MirrorRotated)
	}
}

// While the log is open, a mirror line the database lacks, or another event under a seq the
// database has, fails Verify and CheckHead.
func TestVerifyComparesMirror(t *testing.T) {
	for _, c := range []struct {
		name, want string
		seq        uint64
	}{{"ahead", "is ahead of the database: it has events up to seq 9, the database 3", 4}, {"differs", "another event at seq 2", 2}} {
		t.Run(c.name, func(t *testing.T) {
			f := makeFileLog(t, 3)
			l, _ := f.open(t)
			m := mirrorLines(t, f.mirror)
			line := m[1]
			if c.name == "ahead" {
				line.Seq = 9
			} else {
				line.Hash = m[2].Hash
			}
			b, _ := json.Marshal(line)
			fh, _ := os.OpenFile(f.mirror, os.O_WRONLY|os.O_APPEND, 0)
			fh.Write(append(b, '\n'))
			fh.Close()
			for name, check := range map[string]func() (int, error){"Verify": l.Verify, "CheckHead": l.CheckHead} {
				_, err := check()
				ce, ok := IsChainError(err)
				if !ok || !ce.Mirror || ce.Seq != c.seq || !strings.Contains(ce.Reason, c.want) {
					t.Fatalf("%s: %v, want %q at seq %d", name, err, c.want, c.seq)
				}
			}
		})
	}
}

func TestMirrorToleratesTornLineAndRotation(t *testing.T) {
	f := makeFileLog(t, 3)
	fh, _ := os.OpenFile(f.mirror, os.O_WRONLY|os.O_APPEND, 0)
	fh.WriteString(`{"seq":4,"time":"2026-`) // a crash while writing
	fh.Close()
	l, _ := f.open(t)
	if n, err := l.Verify(); err != nil || n != 3 {
		t.Fatalf("torn last line: %d, %v", n, err)
	}
	os.Remove(f.mirror)
	if n, err := l.Verify(); err != nil || n != 3 {
		t.Fatalf("mirror moved away: %d, %v", n, err)
	}
}

func copyLegacy(t *testing.T) fileLog {
	t.Helper()
	b, err := os.ReadFile("testdata/legacy-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := fileLog{dir: dir, db: filepath.Join(dir, "mailgate.db"), mirror: filepath.Join(dir, "audit.jsonl")}
	if err := os.WriteFile(f.db, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// A database from before the anchor gets it (and an authenticated head) on its first open
// with the key, after its chain verified; from then on erasing it shows.
func TestUpgradeLegacyDatabase(t *testing.T) {
	f := copyLegacy(t)
	l, db := f.open(t)
	var anchored bool
	var head []byte
	db.View(func(tx *store.Tx) (err error) {
		_, anchored, err = tx.Anchor()
		head, _ = tx.GetPlain(headBucket, headKey)
		return err
	})
	if !anchored || len(head) != headLen {
		t.Fatalf("after the first open: anchored=%v head %d bytes", anchored, len(head))
	}
	if n, err := l.Verify(); err != nil || n != 5 {
		t.Fatalf("upgraded chain: %d, %v", n, err)
	}
	if err := l.Append(Event{Actor: "alice", Action: "login"}); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Verify(); err != nil || n != 6 {
		t.Fatalf("after an append: %d, %v", n, err)
	}
	l.Close()
	db.Close()
	f.attack(t, func(btx *bolt.Tx) error {
		btx.DeleteBucket([]byte(headBucket))
		return btx.DeleteBucket([]byte(Bucket))
	})
	f.verifyBoth(t, 1, "all 6 events are gone")
}

// A legacy chain that does not verify is not blessed with an anchor: the break stays visible.
func TestUpgradeRefusesBrokenLegacyChain(t *testing.T) {
	f := copyLegacy(t)
	f.attack(t, func(btx *bolt.Tx) error { return btx.Bucket([]byte(Bucket)).Delete(store.U64(3)) })
	l, db := f.open(t)
	var anchored bool
	db.View(func(tx *store.Tx) (err error) { _, anchored, err = tx.Anchor(); return err })
	if anchored {
		t.Fatal("a broken legacy chain got an anchor")
	}
	if _, err := l.Verify(); err == nil || !strings.Contains(err.Error(), "seq 3") {
		t.Fatalf("broken legacy chain: %v", err)
	}
}

// Verify while events are appended: the mirror is never taken to be ahead.
func TestVerifyWhileAppending(t *testing.T) {
	f := makeFileLog(t, 2)
	l, _ := f.open(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			if err := l.Append(Event{Actor: "alice", Action: "login"}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		if _, err := l.Verify(); err != nil {
			t.Fatal(err)
		}
		if _, err := l.CheckHead(); err != nil {
			t.Fatal(err)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
