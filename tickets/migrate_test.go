package tickets

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"mailgate/access"
	"mailgate/audit"
	"mailgate/internal/testutil"
	"mailgate/store"
)

// TestMigratesSchema1Database opens a database written by the schema-1 code (raw mail,
// attachments and decoded text all sealed inline): the open migrates it, every message and
// attachment reads back byte for byte, the raw mail now lives in segments, the audit chain
// still verifies, and purge and new mail work on the migrated file.
func TestMigratesSchema1Database(t *testing.T) {
	src := testutil.Testdata(t, "mailgate-schema1")
	dir := t.TempDir()
	old, err := os.ReadFile(filepath.Join(src, "mailgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "mailgate.db")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(path, bytes.Repeat([]byte{5}, 32), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log, err := audit.New(db, "")
	if err != nil {
		t.Fatal(err)
	}
	svc := New(db, log, Options{Hostname: "mail.example.com", Queues: []Queue{{Name: "support", Address: "support@example.com"}}})

	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		id   uint64
		seq  int
		file string
	}{{1, 1, "m1.eml"}, {1, 2, "m3.eml"}, {2, 1, "m2.eml"}} {
		m, raw, err := svc.Raw(agentA, c.id, c.seq, "message.download")
		if err != nil || !bytes.Equal(raw, read(c.file)) {
			t.Fatalf("ticket %d message %d after migration: %v (%d bytes)", c.id, c.seq, err, len(raw))
		}
		if c.file == "m1.eml" && !bytes.Contains([]byte(m.Text), []byte("Line 3: my order 1001")) {
			t.Errorf("decoded text of m1 lost: %.80q", m.Text)
		}
	}
	att, data, err := svc.Attachment(agentA, 2, 1, 0)
	if err != nil || att.Name != "invoice.pdf" || !bytes.Equal(data, read("attachment.bin")) {
		t.Fatalf("attachment after migration: %v %+v (%d bytes)", err, att, len(data))
	}
	segs, _ := os.ReadDir(store.SegmentDir(path))
	if len(segs) == 0 {
		t.Error("no segment after migrating a database with 8 KB messages")
	}
	if fi, _ := os.Stat(path); fi.Size() > int64(len(old)) {
		t.Errorf("database grew from %d to %d bytes in the migration", len(old), fi.Size())
	}
	if n, err := log.Verify(); err != nil || n == 0 {
		t.Errorf("audit chain after migration: %d events, %v", n, err)
	}

	admin := access.Actor{Name: "root", Role: access.RoleAdmin, Remote: "local"}
	if err := svc.Purge(admin, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.Raw(agentA, 2, 1, "message.download"); err == nil {
		t.Error("purged ticket still readable")
	}
	if _, err := svc.Ingest(Incoming{Queue: "support", Raw: msgText("new@example.org", "After the upgrade", "new1@example.org"), Via: "smtp"}); err != nil {
		t.Fatal(err)
	}
}
