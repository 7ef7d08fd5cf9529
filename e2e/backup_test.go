package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBackupUnderLoadAndRestore: `mailgate backup` taken while mail pours in is a consistent
// copy, and the README's restore steps bring it back on another machine: it opens with the
// same key (and only with it), every ticket and message reads back, the audit chain verifies,
// and the restored mailgate takes new mail.
func TestBackupUnderLoadAndRestore(t *testing.T) {
	s := newSite(t, "")
	d := s.start(t)
	l := s.startLoad(t, "-n", "2000", "-c", "8", "-size", "4096", "-timeout", "8s")
	// The backup must be taken while mail is arriving: wait until the first tickets are
	// stored (the load tool may take more than a second to prepare its messages on a busy
	// machine, and a fixed sleep then backed up an empty store).
	s.waitTickets(t, 1, 60*time.Second)
	backup := filepath.Join(t.TempDir(), "mailgate-backup.tar")
	if code, out := s.cli(t, "backup", "-out", backup); code != 0 {
		t.Fatalf("backup while running: exit %d\n%s", code, out)
	}
	r, ids := l.wait(t)
	noPermanentFailures(t, r)
	if code := d.stop(); code != 0 {
		t.Fatalf("mailgate exited %d after SIGTERM:\n%s", code, d.out)
	}
	if st, err := os.Stat(backup); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, mode %v (want 0600)", err, st.Mode().Perm())
	}

	// Restore on another machine, as the README says: the config and the key file come
	// along, the backup is extracted into the empty data directory, audit verify, start.
	n := newSite(t, "")
	key, err := os.ReadFile(s.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.key, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(n.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-xf", backup, "-C", n.data).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf: %v %s", err, out)
	}
	if st, err := os.Stat(filepath.Join(n.data, "mailgate.db")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("restored database: %v, mode %v (want 0600)", err, st.Mode().Perm())
	}
	n.auditVerify(t)

	// With another key the copy does not open, and says so.
	w := newSite(t, "")
	os.MkdirAll(w.data, 0o700)
	exec.Command("tar", "-xf", backup, "-C", w.data).Run()
	if code, out := w.cli(t, "audit", "verify"); code == 0 || !strings.Contains(out, "does not open") {
		t.Errorf("backup with a wrong key: exit %d\n%s", code, out)
	}

	rd := n.start(t)
	code, out := n.cli(t, "ticket", "list", "--json")
	var list []struct {
		ID       uint64 `json:"id"`
		Messages int    `json:"messages"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) == 0 {
		t.Fatalf("ticket list on the restored copy: exit %d\n%.500s", code, out)
	}
	// ticket list shows a page; the ids are 1..N with N the newest.
	newest := list[0].ID
	if newest > uint64(len(ids)) {
		t.Errorf("the backup has %d tickets, more than the %d messages ever accepted", newest, len(ids))
	}
	for _, id := range []uint64{1, newest / 2, newest} {
		code, out := n.cli(t, "ticket", "show", strconv.FormatUint(max(id, 1), 10), "--json")
		var tk struct {
			Messages []struct {
				MessageID string `json:"message_id"`
				Text      string `json:"text"`
				Auth      struct {
					DKIM  string `json:"dkim"`
					DMARC string `json:"dmarc"`
				} `json:"auth"`
			} `json:"messages"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &tk) != nil || len(tk.Messages) != 1 ||
			!strings.HasPrefix(tk.Messages[0].MessageID, "load-") || !strings.Contains(tk.Messages[0].Text, "my order") ||
			!passOrLate(tk.Messages[0].Auth.DKIM) || !passOrLate(tk.Messages[0].Auth.DMARC) {
			t.Fatalf("ticket show %d on the restored copy: exit %d\n%.800s", id, code, out)
		}
	}
	// The restored mailgate takes new mail.
	r2, newIDs := n.startLoad(t, "-n", "20", "-c", "2").wait(t)
	if r2.Accepted != 20 {
		t.Fatalf("restored mailgate accepted %d of 20: %+v", r2.Accepted, r2)
	}
	if code := rd.stop(); code != 0 {
		t.Fatalf("restored mailgate exited %d:\n%s", code, rd.out)
	}
	n.auditVerify(t)

	// Every ticket in the copy reads back whole; every message it holds was acknowledged
	// before the end of the load (a copy never invents mail), and the new mail is there too.
	a := n.open(t)
	acked := map[string]bool{}
	for _, id := range append(ids, newIDs...) {
		acked[id] = true
	}
	all := allTickets(t, a)
	if len(all) != int(newest)+len(newIDs) {
		t.Errorf("%d tickets after restore and 20 new messages; the backup had %d", len(all), newest)
	}
	for _, tk := range all {
		_, msgs, err := a.Tickets.Get(admin, tk.ID)
		if err != nil || len(msgs) == 0 {
			t.Fatalf("ticket %d of the restored copy: %v", tk.ID, err)
		}
		for _, m := range msgs {
			if !acked[m.MessageID] {
				t.Errorf("ticket %d holds %s, which was never acknowledged", tk.ID, m.MessageID)
			}
			if _, raw, err := a.Tickets.Raw(admin, tk.ID, m.Seq, "e2e.check"); err != nil || len(raw) < 4096 {
				t.Fatalf("raw message %d/%d: %v (%d bytes)", tk.ID, m.Seq, err, len(raw))
			}
		}
	}
	checkStored(t, a, newIDs)
	t.Logf("backup under load held %d tickets of %d accepted; restored, verified, all readable", newest, len(ids))
}

// passOrLate: the verdict on the load tool's signed mail is pass, or temperror when its DNS
// answer came too late on a starved machine.
func passOrLate(v string) bool { return v == "pass" || v == "temperror" }

// waitTickets polls the running daemon until it holds at least n tickets.
func (s *site) waitTickets(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, out := s.cli(t, "ticket", "list", "--json")
		var list []json.RawMessage
		if code == 0 && json.Unmarshal([]byte(out), &list) == nil && len(list) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d tickets after %v: exit %d\n%.300s", n, within, code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
