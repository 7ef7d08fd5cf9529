package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"mailgate/audit"
)

// mirrorSeqs reads an [audit] file mirror and returns its events' seqs in file order.
func mirrorSeqs(t *testing.T, file string) []audit.Event {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []audit.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func consecutive(t *testing.T, name string, evs []audit.Event) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq != evs[i-1].Seq+1 {
			t.Fatalf("%s: seq %d follows %d", name, evs[i].Seq, evs[i-1].Seq)
		}
	}
}

// TestRestoreKeepsTicketIDsAndMirror follows the README's restore steps with the real binary:
// tickets made after the backup are lost with the restore, but their ids were in customers'
// subjects, so new tickets must not get them again; and the [audit] file mirror, which holds
// the lost events, must not get a second, different event under the same seq.
func TestRestoreKeepsTicketIDsAndMirror(t *testing.T) {
	dir := t.TempDir()
	if r := mailgate(t, ".", "init", "-dir", dir, "-domain", "example.com"); r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "mailgate.toml")
	mirror := filepath.Join(dir, "audit.jsonl")
	text, _ := os.ReadFile(cfg)
	s := strings.Replace(string(text), "[audit]\nfile = \"\"", "[audit]\nfile = \""+mirror+"\"", 1)
	s = strings.Replace(s, "auto_ack = true", "auto_ack = false", 1)
	s = strings.Replace(s, `resolver = ""`, `resolver = "127.0.0.1:9"`, 1)
	s = strings.Replace(s, `timeout = "10s"`, `timeout = "1s"`, 1)
	os.WriteFile(cfg, []byte(s), 0o640)

	ids := func() []uint64 {
		var list []ticketJSON
		jsonOut(t, dir, &list, "ticket", "list", "-config", cfg)
		var out []uint64
		for _, tk := range list {
			out = append(out, *tk.ID)
		}
		return out
	}
	d := startServe(t, dir, "-config", cfg)
	d.waitReady(t)
	smtpAddr := d.line(t, `^listening: smtp (127\.0\.0\.1:\d+)`)[1]
	sendMail(t, smtpAddr, "alice@example.org", "support@example.com", "one", "1")
	sendMail(t, smtpAddr, "alice@example.org", "support@example.com", "two", "2")
	backupFile := filepath.Join(t.TempDir(), "backup.tar")
	if r := mailgate(t, dir, "backup", "-config", cfg, "-out", backupFile); r.code != 0 {
		t.Fatalf("backup:\n%s", r)
	}
	sendMail(t, smtpAddr, "bob@example.org", "support@example.com", "three", "3")
	sendMail(t, smtpAddr, "bob@example.org", "support@example.com", "four", "4")
	seen := ids()
	if len(seen) != 4 {
		t.Fatalf("tickets before the restore: %v", seen)
	}
	maxSeen := max(seen[0], seen[1], seen[2], seen[3])
	d.stop(t)
	before := mirrorSeqs(t, mirror)

	// Restore: the README's steps (the old database and segments moved aside, the archive
	// extracted into the data directory).
	data := filepath.Join(dir, "data")
	aside := filepath.Join(t.TempDir(), "old")
	if err := os.Mkdir(aside, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"mailgate.db", "mailgate.db.segments"} {
		if err := os.Rename(filepath.Join(data, f), filepath.Join(aside, f)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("tar", "-xf", backupFile, "-C", data).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf: %v\n%s", err, out)
	}
	if r := mailgate(t, dir, "audit", "verify", "-config", cfg); r.code != 0 {
		t.Fatalf("audit verify after the restore:\n%s", r)
	}
	if got := ids(); len(got) != 2 {
		t.Fatalf("tickets after the restore: %v", got)
	}

	d = startServe(t, dir, "-config", cfg)
	d.waitReady(t)
	smtpAddr = d.line(t, `^listening: smtp (127\.0\.0\.1:\d+)`)[1]
	sendMail(t, smtpAddr, "carol@example.org", "support@example.com", "five", "5")
	after := ids()
	var newID uint64
	for _, id := range after {
		newID = max(newID, id)
	}
	if len(after) != 3 || newID <= maxSeen {
		t.Fatalf("the new ticket got id %d, but ids up to %d were handed out before the restore (tickets %v)", newID, maxSeen, after)
	}
	if newID != maxSeen+1 {
		t.Errorf("after a clean stop the ids should continue without a gap: got %d after %d", newID, maxSeen)
	}
	d.stop(t)

	// The mirror: the old file is kept under another name, the new segment starts with the
	// event that says so, and no file holds two events under one seq.
	old, _ := filepath.Glob(mirror + ".before-restore.*")
	if len(old) != 1 {
		t.Fatalf("old mirror segments: %v", old)
	}
	kept := mirrorSeqs(t, old[0])
	if len(kept) != len(before) || kept[len(kept)-1].Seq != before[len(before)-1].Seq {
		t.Fatalf("the old segment changed: %d events, was %d", len(kept), len(before))
	}
	consecutive(t, old[0], kept)
	cur := mirrorSeqs(t, mirror)
	consecutive(t, mirror, cur)
	if cur[0].Action != "audit.mirror" || !strings.Contains(cur[0].Detail, filepath.Base(old[0])) || cur[0].Seq > kept[len(kept)-1].Seq {
		t.Fatalf("the new segment starts with %+v", cur[0])
	}
	evs := auditActions(t, dir, "-config", cfg)
	if len(evs["ticket.ids"]) != 1 || !strings.Contains(evs["ticket.ids"][0].Detail, "restored") {
		t.Fatalf("ticket.ids events: %+v", evs["ticket.ids"])
	}
	if r := mailgate(t, dir, "audit", "verify", "-config", cfg); r.code != 0 {
		t.Fatalf("audit verify at the end:\n%s", r)
	}
}
