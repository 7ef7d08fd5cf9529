package tickets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"mailgate/access"
	"mailgate/store"
)

// Purge destroys ticket id for good: its data key is deleted, so every sealed record of it
// (messages, raw mail, attachments, notes) can never be read again, even from old backups
// taken after the key was gone; the records and index entries are removed to reclaim space.
// Only admins may purge; the act is audited.
func (s *Service) Purge(a access.Actor, id uint64) error {
	if a.Role != access.RoleAdmin {
		s.denied(a, "ticket.purge", id, "only admins purge tickets")
		return ErrForbidden
	}
	var outcome error
	err := s.db.Batch(func(tx *store.Tx) error {
		outcome = nil
		t, err := loadTicket(tx, id)
		if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) {
			outcome = ErrNotFound
			return s.audit(tx, a, "ticket.purge", object(id), "failed", "no such ticket")
		}
		if err != nil {
			return err
		}
		if err := s.purgeTx(tx, t); err != nil {
			return err
		}
		return s.audit(tx, a, "ticket.purge", object(id), "ok", fmt.Sprintf("messages=%d", t.Messages))
	})
	if err != nil {
		return fmt.Errorf("purge ticket %d: %w", id, err)
	}
	return outcome
}

func (s *Service) purgeTx(tx *store.Tx, t *Ticket) error {
	for seq := 1; seq <= t.Messages; seq++ {
		m, err := loadMessage(tx, t.ID, seq)
		if err == nil {
			// The index must not remember which words a destroyed ticket held.
			if err := s.unindexMessage(tx, t, m); err != nil {
				return err
			}
			if m.MessageID != "" {
				for _, k := range [][]byte{s.db.Index("msgid", normID(m.MessageID)), queueIDKey(s.db, t.Queue, m.MessageID)} {
					// Only drop an index entry that points here: another ticket may hold the id.
					if v, _ := tx.GetPlain(bMsgID, k); len(v) == 12 && store.FromU64(v) == t.ID {
						if err := tx.Delete(bMsgID, k); err != nil {
							return err
						}
					}
				}
			}
			for i := range m.Attachments {
				if err := tx.Delete(bAttach, binary.BigEndian.AppendUint32(mkey(t.ID, seq), uint32(i))); err != nil {
					return err
				}
			}
		}
		for _, b := range []string{bMessages, bBody, bRaw} {
			if err := tx.Delete(b, mkey(t.ID, seq)); err != nil {
				return err
			}
		}
	}
	// IMAP mailbox entries stay: they hold only numbers, and a mailbox must not shrink under a
	// client that has it selected; fetching them now yields "no longer available".
	for _, k := range [][]byte{
		append(append([]byte(nil), s.qprefix(t.Queue)...), store.U64(t.ID)...),
	} {
		if err := tx.Delete(bByQueue, k); err != nil {
			return err
		}
	}
	if err := tx.Delete(bAutoAck, store.U64(t.ID)); err != nil {
		return err
	}
	if err := tx.Delete(bTickets, tkey(t.ID)); err != nil {
		return err
	}
	forget(tx, t.ID)
	return tx.DestroyScope(t.ID)
}

// PurgeClosed destroys every ticket closed for longer than age (the [retention] closed_after
// sweep). It walks the ticket list, so it runs in the background, never on the mail path.
func (s *Service) PurgeClosed(age time.Duration) (int, error) {
	if age <= 0 {
		return 0, nil
	}
	cutoff := s.opts.Now().Add(-age)
	var due []uint64
	err := s.db.View(func(tx *store.Tx) error {
		c := tx.Cursor(bTickets)
		for k := c.First(); k != nil; k = c.Next() {
			t, err := loadTicket(tx, store.FromU64(k))
			if err != nil {
				continue
			}
			if t.Status == StatusClosed && t.Updated.Before(cutoff) {
				due = append(due, t.ID)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	retention := access.Actor{Name: "retention", Role: access.RoleAdmin, Remote: "local"}
	for _, id := range due {
		if err := s.Purge(retention, id); err != nil && !errors.Is(err, ErrNotFound) {
			return n, err
		}
		n++
	}
	return n, nil
}
