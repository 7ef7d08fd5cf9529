package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"mailgate/audit"
	"mailgate/store"
)

// install is a stopped installation made by `init`, with an [audit] file mirror, as an
// attacker who can write data_dir (but cannot read key_file) finds it.
type install struct {
	dir, cfg, db, mirror string
}

func newInstall(t *testing.T, events int) install {
	t.Helper()
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	in := install{dir: dir, cfg: filepath.Join(dir, "mailgate.toml"), db: filepath.Join(dir, "data", "mailgate.db"), mirror: filepath.Join(dir, "audit.jsonl")}
	b, err := os.ReadFile(in.cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(b), "[audit]\nfile = \"\"", "[audit]\nfile = "+strconv.Quote(in.mirror), 1)
	if text == string(b) {
		t.Fatal("no [audit] file line in init's config")
	}
	os.WriteFile(in.cfg, []byte(text), 0o640)
	in.events(t, events)
	return in
}

// events makes n audit events the way an admin does: each direct admin command is one.
func (in install) events(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if r := mailgate(t, in.dir, "agent", "list", "-config", in.cfg); r.code != 0 {
			t.Fatalf("agent list:\n%s", r)
		}
	}
}

func (in install) attack(t *testing.T, fn func(btx *bolt.Tx) error) {
	t.Helper()
	bdb, err := bolt.Open(in.db, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	if err := bdb.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// verifyFails runs `mailgate audit verify` (the daemon is stopped, so directly) and wants exit
// 1 with want in its output.
func (in install) verifyFails(t *testing.T, want string) {
	t.Helper()
	r := mailgate(t, in.dir, "audit", "verify", "-config", in.cfg)
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, want) {
		t.Fatalf("audit verify after the attack: want exit 1 and %q:\n%s", want, r)
	}
}

// serveRefuses starts `mailgate serve` and wants it to exit non-zero, naming the problem,
// without ever getting ready.
func (in install) serveRefuses(t *testing.T, want string) {
	t.Helper()
	d := startServe(t, in.dir, "-config", in.cfg)
	select {
	case err := <-d.done:
		if err == nil || !strings.Contains(d.output(), want) {
			t.Fatalf("serve after the attack: %v, want a refusal naming %q:\n%s", err, want, d.output())
		}
	case <-d.ready:
		d.cmd.Process.Kill()
		t.Fatalf("serve started on a tampered audit log:\n%s", d.output())
	case <-time.After(2 * time.Minute):
		t.Fatalf("serve neither refused nor got ready:\n%s", d.output())
	}
}

// settle waits until the web listener serves: a SIGTERM between "ready" and that moment
// leaves the web server running (web.Server.Serve after Shutdown), and serve never exits.
func settle(t *testing.T, d *daemon) {
	t.Helper()
	d.waitReady(t)
	waitFor(t, "the web listener", func() bool { return strings.Contains(d.logs(), "web listening") })
}

func (in install) countEvents(t *testing.T) int {
	t.Helper()
	n := 0
	bdb, err := bolt.Open(in.db, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	bdb.View(func(btx *bolt.Tx) error {
		n = btx.Bucket([]byte(audit.Bucket)).Stats().KeyN
		return nil
	})
	return n
}

func TestAuditAttackEraseBuckets(t *testing.T) {
	in := newInstall(t, 4)
	n := in.countEvents(t)
	in.attack(t, func(btx *bolt.Tx) error {
		btx.DeleteBucket([]byte("audit_head"))
		return btx.DeleteBucket([]byte(audit.Bucket))
	})
	in.serveRefuses(t, "the audit log was erased")
	// The exact count also shows that neither serve nor verify added an event of its own
	// before checking.
	in.verifyFails(t, "all "+strconv.Itoa(n)+" events are gone: the audit log was erased")
	// verify's own event, appended after it reported, starts no new chain that would pass.
	in.serveRefuses(t, "events 1.."+strconv.Itoa(n)+" missing (deleted)")
}

func TestAuditAttackDeleteHead(t *testing.T) {
	in := newInstall(t, 3)
	in.attack(t, func(btx *bolt.Tx) error { return btx.DeleteBucket([]byte("audit_head")) })
	in.serveRefuses(t, "chain head missing")
	in.verifyFails(t, "chain head missing")
}

// Deleting the meta bucket, which holds the sealed state, leaves a file the store refuses.
func TestAuditAttackDeleteMeta(t *testing.T) {
	in := newInstall(t, 2)
	if r := mailgate(t, in.dir, "agent", "add", "-name", "bob", "-email", "bob@example.com", "-role", "agent", "-queue", "support", "-config", in.cfg); r.code != 0 {
		t.Fatalf("agent add:\n%s", r)
	}
	in.attack(t, func(btx *bolt.Tx) error {
		btx.DeleteBucket([]byte("audit_head"))
		btx.DeleteBucket([]byte(audit.Bucket))
		return btx.DeleteBucket([]byte("meta"))
	})
	in.serveRefuses(t, "key check record (meta/keycheck) is missing")
	in.verifyFails(t, "key check record (meta/keycheck) is missing")
}

func TestAuditAttackRollBackAuditBuckets(t *testing.T) {
	in := newInstall(t, 3)
	old := filepath.Join(t.TempDir(), "old.db")
	copyDB(t, in.db, old) // an older copy of the file (the daemon is stopped)
	in.events(t, 3)
	n := in.countEvents(t)
	src, err := bolt.Open(old, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var oldN int
	in.attack(t, func(btx *bolt.Tx) error {
		return src.View(func(stx *bolt.Tx) error {
			for _, name := range []string{audit.Bucket, "audit_head"} {
				if err := btx.DeleteBucket([]byte(name)); err != nil {
					return err
				}
				dst, err := btx.CreateBucket([]byte(name))
				if err != nil {
					return err
				}
				sb := stx.Bucket([]byte(name))
				dst.SetSequence(sb.Sequence())
				if name == audit.Bucket {
					oldN = sb.Stats().KeyN
				}
				if err := sb.ForEach(func(k, v []byte) error { return dst.Put(k, v) }); err != nil {
					return err
				}
			}
			return nil
		})
	})
	want := "events " + strconv.Itoa(oldN+1) + ".." + strconv.Itoa(n) + " missing at the end: the log was cut or rolled back"
	in.serveRefuses(t, want)
	in.verifyFails(t, want)
}

func TestAuditAttackCutTailRewriteHead(t *testing.T) {
	in := newInstall(t, 5)
	b, err := os.ReadFile(in.mirror)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	keep := len(lines) - 2
	var rec struct {
		Seq  uint64 `json:"seq"`
		Hash string `json:"hash"`
	}
	if err := json.Unmarshal([]byte(lines[keep-1]), &rec); err != nil || rec.Seq != uint64(keep) {
		t.Fatalf("mirror line %d: %v %+v", keep, err, rec)
	}
	h, _ := hex.DecodeString(rec.Hash)
	in.attack(t, func(btx *bolt.Tx) error {
		ab := btx.Bucket([]byte(audit.Bucket))
		for s := keep + 1; s <= len(lines); s++ {
			ab.Delete(store.U64(uint64(s)))
		}
		hb := btx.Bucket([]byte("audit_head"))
		old := hb.Get([]byte("head"))
		head := append(append(store.U64(rec.Seq), h...), old[40:]...) // keep whatever followed
		return hb.Put([]byte("head"), head)
	})
	want := "events " + strconv.Itoa(keep+1) + ".." + strconv.Itoa(len(lines)) + " missing at the end"
	in.serveRefuses(t, want)
	in.verifyFails(t, want)
}

// Putting an older backup in place of the whole file, or deleting everything in it, is
// consistent in itself and looks like a restore: serve starts, but warns, keeps the mirror
// under another name and records an audit.mirror event in the chain (which only the key can
// remove) naming it.
func TestAuditWholeFileRollbackMirrorAhead(t *testing.T) {
	for _, mode := range []string{"older backup", "delete everything"} {
		t.Run(mode, func(t *testing.T) {
			in := newInstall(t, 2)
			old := filepath.Join(t.TempDir(), "old.db")
			copyDB(t, in.db, old) // an older copy of the file (the daemon is stopped)
			in.events(t, 2)
			if mode == "older backup" {
				b, _ := os.ReadFile(old)
				if err := os.WriteFile(in.db, b, 0o600); err != nil {
					t.Fatal(err)
				}
			} else {
				in.attack(t, func(btx *bolt.Tx) error {
					var names [][]byte
					btx.ForEach(func(name []byte, _ *bolt.Bucket) error {
						names = append(names, append([]byte(nil), name...))
						return nil
					})
					for _, n := range names {
						if err := btx.DeleteBucket(n); err != nil {
							return err
						}
					}
					return nil
				})
			}
			d := startServe(t, in.dir, "-config", in.cfg)
			settle(t, d)
			if !strings.Contains(d.logs(), "the audit mirror held events the database does not") {
				t.Fatalf("no warning at start:\n%s", d.output())
			}
			d.stop(t)
			if kept, _ := filepath.Glob(in.mirror + ".before-restore.*"); len(kept) != 1 {
				t.Fatalf("the old mirror was not kept: %v", kept)
			}
			r := mailgate(t, in.dir, "audit", "export", "-config", in.cfg)
			if !strings.Contains(r.stdout, `"action":"audit.mirror"`) {
				t.Fatalf("no audit.mirror event:\n%s", r)
			}
		})
	}
}

// An intact installation starts, also with [audit] verify_at_start, and verify passes.
func TestAuditIntactStartsAndVerifies(t *testing.T) {
	in := newInstall(t, 2)
	b, _ := os.ReadFile(in.cfg)
	os.WriteFile(in.cfg, bytes.Replace(b, []byte("verify_at_start = false"), []byte("verify_at_start = true"), 1), 0o640)
	d := startServe(t, in.dir, "-config", in.cfg)
	settle(t, d)
	if !strings.Contains(d.logs(), "audit chain checked") || !strings.Contains(d.logs(), "check=full") {
		t.Fatalf("no full check at start:\n%s", d.logs())
	}
	d.stop(t)
	if r := mailgate(t, in.dir, "audit", "verify", "-config", in.cfg); r.code != 0 || !strings.Contains(r.stdout, "intact") {
		t.Fatalf("verify:\n%s", r)
	}
}

// A database from before the anchored audit state (audit/testdata/legacy-v1.db, see its
// README) is upgraded on its first open with the key, then erasing its log shows.
func TestAuditLegacyDatabaseUpgraded(t *testing.T) {
	in := newInstall(t, 0)
	legacy, err := os.ReadFile("../../audit/testdata/legacy-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(in.db)
	if err := os.WriteFile(in.db, legacy, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(in.mirror)
	keyFile := filepath.Join(in.dir, "data.key")
	os.WriteFile(keyFile, []byte(strings.Repeat("03", 32)+"\n"), 0o600)
	r := mailgate(t, in.dir, "audit", "verify", "-config", in.cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "audit chain intact: 5 events") {
		t.Fatalf("verify of the legacy database:\n%s", r)
	}
	d := startServe(t, in.dir, "-config", in.cfg)
	settle(t, d)
	d.stop(t)
	n := in.countEvents(t)
	in.attack(t, func(btx *bolt.Tx) error {
		btx.DeleteBucket([]byte("audit_head"))
		return btx.DeleteBucket([]byte(audit.Bucket))
	})
	in.serveRefuses(t, "the audit log was erased")
	in.verifyFails(t, "all "+strconv.Itoa(n)+" events are gone")
}

// An event edited in the middle (here by someone with the key, who did not rewrite the rest)
// is past CheckHead's reach; [audit] verify_at_start walks the chain and refuses.
func TestAuditVerifyAtStartFindsEditedEvent(t *testing.T) {
	in := newInstall(t, 4)
	db := openDB(t, filepath.Join(in.dir, "data.key"), in.db)
	editEvent(t, db, 2, "detail", "edited")
	db.Close()
	b, _ := os.ReadFile(in.cfg)
	os.WriteFile(in.cfg, bytes.Replace(b, []byte("verify_at_start = false"), []byte("verify_at_start = true"), 1), 0o640)
	in.serveRefuses(t, "audit chain broken at seq 2: hash does not match the event")
}

func copyDB(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
