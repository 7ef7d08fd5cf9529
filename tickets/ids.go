package tickets

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"mailgate/access"
	"mailgate/store"
)

// Ticket ids are printed in subjects ("[#123]") that customers keep. A database restored from a
// backup would hand out again the ids minted after the backup, and a customer's "[#123]" would
// then name a stranger's ticket. So the ids are also counted outside the database, in a small
// file beside it (Options.IDFile):
//
//	mark N    ids up to N may be in use; fsynced before the database uses an id above N
//	clean L   written on a clean close: L is the last id handed out
//
// The mark moves in blocks of idBlock, so the file is written once per idBlock new tickets, not
// per ticket. At open (CheckIDs), a database whose sequence is behind the file's clean L was
// restored: ids continue after L exactly. Without a clean line the last run crashed, and ids
// continue after the mark (a gap of less than idBlock, never a reuse).
const idBlock = 1000

type idMark struct {
	mu   sync.Mutex
	file string
	mark uint64 // ids up to this may have been handed out
}

type idFile struct {
	mark, clean uint64
	hasClean    bool
	exists      bool
}

func readIDFile(file string) (idFile, error) {
	var f idFile
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("ticket id file: %w", err)
	}
	f.exists = true
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil || k != "mark" && k != "clean" {
			return f, fmt.Errorf("ticket id file %s: line %q is not \"mark N\" or \"clean N\"; mailgate keeps this file, do not edit it", file, line)
		}
		if k == "mark" {
			f.mark = n
		} else {
			f.clean, f.hasClean = n, true
		}
	}
	return f, nil
}

// writeIDFile replaces file durably: temp file, fsync, rename, fsync the directory.
func writeIDFile(file, content string) error {
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("ticket id file: %w", err)
	}
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ticket id file: %w", err)
	}
	d, err := os.Open(filepath.Dir(file))
	if err != nil {
		return fmt.Errorf("ticket id file: %w", err)
	}
	defer d.Close()
	return d.Sync()
}

func markLine(n uint64) string { return "mark " + strconv.FormatUint(n, 10) + "\n" }

// CheckIDs runs when the database is opened, before any ticket is made. When ids beyond the
// database's sequence may have been handed out (it was restored, or the last run crashed), the
// sequence continues after them, with an audit event. Then the file is marked as in use (its
// clean line removed) until CloseIDs. It returns the id the sequence now continues after when it
// moved, else 0.
func (s *Service) CheckIDs() (uint64, error) {
	if s.ids.file == "" {
		return 0, nil
	}
	s.ids.mu.Lock()
	defer s.ids.mu.Unlock()
	f, err := readIDFile(s.ids.file)
	if err != nil {
		return 0, err
	}
	var bumped, seq uint64
	err = s.db.Update(func(tx *store.Tx) error {
		seq = tx.Seq(bTicketID)
		after, why := uint64(0), ""
		switch {
		case f.hasClean && f.clean > seq:
			after, why = f.clean, "the database is older than the ids already handed out (restored from a backup)"
		case f.exists && !f.hasClean && f.mark > seq:
			after, why = f.mark, "the last run did not close cleanly; ids are skipped up to its reserved block"
		}
		if after == 0 {
			return nil
		}
		if err := tx.SetSeq(bTicketID, after); err != nil {
			return err
		}
		bumped, seq = after, after
		return s.audit(tx, access.Actor{Name: "mailgate"}, "ticket.ids", "tickets", "ok",
			fmt.Sprintf("%s: new tickets start after #%d", why, after))
	})
	if err != nil {
		return 0, fmt.Errorf("ticket ids: %w", err)
	}
	s.ids.mark = max(f.mark, seq)
	if err := writeIDFile(s.ids.file, markLine(s.ids.mark)); err != nil {
		return 0, err
	}
	return bumped, nil
}

// CloseIDs records the last id handed out, for the next CheckIDs. Call it last, when no more
// tickets can be made.
func (s *Service) CloseIDs() error {
	if s.ids.file == "" {
		return nil
	}
	s.ids.mu.Lock()
	defer s.ids.mu.Unlock()
	var seq uint64
	if err := s.db.View(func(tx *store.Tx) error { seq = tx.Seq(bTicketID); return nil }); err != nil {
		return err
	}
	return writeIDFile(s.ids.file, markLine(max(s.ids.mark, seq))+"clean "+strconv.FormatUint(seq, 10)+"\n")
}

// reserveID makes sure the id file covers id before the transaction that uses id commits.
func (s *Service) reserveID(id uint64) error {
	if s.ids.file == "" {
		return nil
	}
	s.ids.mu.Lock()
	defer s.ids.mu.Unlock()
	if id <= s.ids.mark {
		return nil
	}
	mark := id + idBlock - 1
	if err := writeIDFile(s.ids.file, markLine(mark)); err != nil {
		return err
	}
	s.ids.mark = mark
	return nil
}
