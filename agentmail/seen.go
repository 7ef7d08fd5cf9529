package agentmail

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"mailgate/store"
)

// seenBucket holds each agent's \Seen flags: one plain key per seen message,
// HMAC(agent, queue)[:8] | U32(uid) → nothing. The key reveals only that some agent saw some
// UID of some queue; a prefix scan loads one agent's flags for one queue at SELECT.
const seenBucket = "imap_seen"

type seenStore struct{ db *store.DB }

func (s seenStore) prefix(agent, queue string) []byte {
	return s.db.Index("imap-seen", agent+"\x00"+queue)[:8]
}

// load returns the UIDs agent has seen in queue.
func (s seenStore) load(agent, queue string) (map[uint32]bool, error) {
	pre := s.prefix(agent, queue)
	out := map[uint32]bool{}
	err := s.db.View(func(tx *store.Tx) error {
		c := tx.Cursor(seenBucket)
		for k := c.Seek(pre); k != nil && len(k) == 12 && bytes.Equal(k[:8], pre); k = c.Next() {
			out[binary.BigEndian.Uint32(k[8:])] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load seen flags: %w", err)
	}
	return out, nil
}

// set marks uids seen (or unseen) for agent in queue, durably, in one commit.
func (s seenStore) set(agent, queue string, uids []uint32, seen bool) error {
	if len(uids) == 0 {
		return nil
	}
	pre := s.prefix(agent, queue)
	err := s.db.Batch(func(tx *store.Tx) error {
		for _, uid := range uids {
			k := binary.BigEndian.AppendUint32(append([]byte(nil), pre...), uid)
			var err error
			if seen {
				err = tx.PutPlain(seenBucket, k, nil)
			} else {
				err = tx.Delete(seenBucket, k)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store seen flags: %w", err)
	}
	return nil
}
