package tickets

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailgate/audit"
	"mailgate/store"
)

// TestTicketIDsAfterRestoreAndCrash opens a database with its id file the way the daemon does:
// a clean restart continues without a gap, a database copied back from before continues after
// the ids handed out since, a crashed run (no clean line) skips its reserved block, and a
// missing file is written again.
func TestTicketIDsAfterRestoreAndCrash(t *testing.T) {
	dir := t.TempDir()
	dbPath, idFile := filepath.Join(dir, "t.db"), filepath.Join(dir, "ticket-ids")
	key := bytes.Repeat([]byte{7}, 32)
	var db *store.DB
	var svc *Service
	open := func() {
		t.Helper()
		var err error
		if db, err = store.Open(dbPath, key, store.Options{}); err != nil {
			t.Fatal(err)
		}
		log, _ := audit.New(db, "")
		svc = New(db, log, Options{Hostname: "mail.example.com", Queues: []Queue{{Name: "support", Address: "support@example.com"}},
			Mailer: &fakeMailer{}, IDFile: idFile})
		if _, err := svc.CheckIDs(); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	newTicket := func() uint64 {
		t.Helper()
		n++
		r, err := svc.Ingest(Incoming{Queue: "support", Via: "smtp", Remote: "127.0.0.1",
			Raw: msgText("c@customer.example", "help", "m"+strings.Repeat("x", n)+"@customer.example")})
		if err != nil || !r.New {
			t.Fatalf("ingest: %+v %v", r, err)
		}
		return r.Ticket
	}
	closeClean := func() {
		t.Helper()
		if err := svc.CloseIDs(); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}

	open()
	newTicket()
	newTicket()
	closeClean()
	if b, _ := os.ReadFile(idFile); string(b) != "mark 1000\nclean 2\n" {
		t.Fatalf("id file after a clean close: %q", b)
	}
	backup, _ := os.ReadFile(dbPath)
	open()
	if id := newTicket(); id != 3 {
		t.Fatalf("after a clean restart: id %d, want 3", id)
	}
	newTicket()
	closeClean()

	// Restore the copy taken after ticket 2: ids 3 and 4 are known to customers.
	os.WriteFile(dbPath, backup, 0o600)
	open()
	if id := newTicket(); id != 5 {
		t.Fatalf("after the restore: id %d, want 5", id)
	}
	// A crash: no CloseIDs. The next run cannot know how far the ids went within the block.
	db.Close()
	open()
	if id := newTicket(); id != 1001 {
		t.Fatalf("after a crash: id %d, want 1001 (after the reserved block)", id)
	}
	closeClean()
	// The file is lost: it is written again from the database, and ids go on.
	os.Remove(idFile)
	open()
	if id := newTicket(); id != 1002 {
		t.Fatalf("without the file: id %d, want 1002", id)
	}
	closeClean()
	if b, _ := os.ReadFile(idFile); !strings.HasPrefix(string(b), "mark ") || !strings.HasSuffix(string(b), "clean 1002\n") {
		t.Fatalf("id file: %q", b)
	}
	os.WriteFile(idFile, []byte("garbage\n"), 0o600)
	var err error
	if db, err = store.Open(dbPath, key, store.Options{}); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log, _ := audit.New(db, "")
	svc = New(db, log, Options{IDFile: idFile})
	if _, err := svc.CheckIDs(); err == nil || !strings.Contains(err.Error(), "do not edit") {
		t.Fatalf("a damaged id file: %v", err)
	}
}

// BenchmarkIngestIDFile is BenchmarkIngest with the ticket id file the daemon keeps: every
// message opens a ticket, so this is the worst case for reserveID (one fsynced write per
// idBlock tickets).
func BenchmarkIngestIDFile(b *testing.B) {
	e := newEnv(b)
	e.svc.ids.file = filepath.Join(b.TempDir(), "ticket-ids")
	if _, err := e.svc.CheckIDs(); err != nil {
		b.Fatal(err)
	}
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 140)
	b.SetParallelism(4)
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			raw := []byte(fmt.Sprintf("From: c%d@x.example\r\nTo: support@example.com\r\nSubject: s\r\nMessage-ID: <%d@x.example>\r\nDate: %s\r\n\r\n%s", i, i, time.Now().Format(time.RFC1123Z), body))
			if _, err := e.svc.Ingest(Incoming{Queue: "support", Raw: raw, Via: "smtp"}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
