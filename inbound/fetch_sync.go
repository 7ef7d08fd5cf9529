package inbound

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailgate/store"
	"mailgate/tickets"
)

// cursor is how far the fetcher got in one mailbox: every UID up to Last (under this
// UIDVALIDITY) is committed to tickets or was skipped on purpose.
type cursor struct {
	Validity uint32
	Last     uint32
}

func (f *Fetcher) loadCursor() (cursor, error) {
	var c cursor
	err := f.db.View(func(tx *store.Tx) error {
		v, err := tx.Get(fetchBucket, f.cursorKey)
		if err != nil || v == nil {
			return err
		}
		if len(v) != 8 {
			return fmt.Errorf("fetch cursor has %d bytes, want 8", len(v))
		}
		c.Validity, c.Last = binary.BigEndian.Uint32(v), binary.BigEndian.Uint32(v[4:])
		return nil
	})
	if err != nil {
		return cursor{}, fmt.Errorf("read fetch cursor: %w", err)
	}
	return c, nil
}

// saveCursor commits the cursor durably (a group commit: Batch may run fn twice, which is
// harmless here).
func (f *Fetcher) saveCursor(c cursor) error {
	v := make([]byte, 8)
	binary.BigEndian.PutUint32(v, c.Validity)
	binary.BigEndian.PutUint32(v[4:], c.Last)
	if err := f.db.Batch(func(tx *store.Tx) error { return tx.Put(fetchBucket, f.cursorKey, v) }); err != nil {
		return fmt.Errorf("write fetch cursor: %w", err)
	}
	return nil
}

// session is one connection: log in, select, then sync and wait for mail until something
// fails or ctx ends. progressed reports whether at least one sync pass worked.
func (f *Fetcher) session(ctx context.Context) (progressed bool, err error) {
	u, err := f.connect(ctx)
	if err != nil {
		return false, err
	}
	logout := false
	defer func() { u.close(logout) }()
	sel, err := f.selectMailbox(ctx, u)
	if err != nil {
		return false, err
	}
	cur, err := f.loadCursor()
	if err != nil {
		return false, err
	}
	if cur.Validity != sel.UIDValidity {
		if cur.Validity != 0 {
			// The server renumbered the mailbox: UIDs mean nothing any more. Read it all
			// again; tickets drops the messages it already has (same Message-ID and sender).
			f.log.Warn("UIDVALIDITY changed; fetching the whole mailbox again", "old", cur.Validity, "new", sel.UIDValidity)
		}
		cur = cursor{Validity: sel.UIDValidity}
		if err := f.saveCursor(cur); err != nil {
			return false, err
		}
	}
	f.log.Info("connected", "mailbox", f.mailbox, "messages", sel.NumMessages, "uidvalidity", sel.UIDValidity, "last_uid", cur.Last, "idle", u.idle)
	f.update(func(s *FetchStatus) { s.Connected = true })
	for {
		// Anything announced so far is covered by the pass that follows.
		select {
		case <-u.events:
		default:
		}
		n, err := f.sync(ctx, u, &cur)
		if err != nil {
			return progressed, err
		}
		progressed = true
		f.update(func(s *FetchStatus) { s.LastSuccess, s.LastError = f.opts.Now(), "" })
		if f.afterPass != nil {
			f.afterPass(n)
		}
		if err := f.waitForMail(ctx, u); err != nil {
			logout = ctx.Err() != nil && !errors.Is(err, errClosed)
			return progressed, err
		}
	}
}

// newMessage is one UID above the cursor.
type newMessage struct {
	uid  imap.UID
	size int64
}

// sync handles every message above the cursor, in UID order, and returns how many.
func (f *Fetcher) sync(ctx context.Context, u *upstream, cur *cursor) (int, error) {
	// NOOP first: some servers (Dovecot among them) notice new deliveries only when a
	// command syncs the mailbox.
	if err := u.do(ctx, "NOOP", u.timeout, func() error { return u.c.Noop().Wait() }); err != nil {
		return 0, err
	}
	if mb := u.c.Mailbox(); (mb != nil && mb.NumMessages == 0) || cur.Last == ^uint32(0) {
		return 0, nil // nothing there, or no UID can follow the last one
	}
	var list []newMessage
	var set imap.UIDSet
	set.AddRange(imap.UID(cur.Last+1), 0) // last+1:*
	err := u.do(ctx, "UID FETCH sizes", u.timeout, func() error {
		cmd := u.c.Fetch(set, &imap.FetchOptions{UID: true, RFC822Size: true, Flags: true})
		defer cmd.Close()
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			buf, err := msg.Collect()
			if err != nil {
				return err
			}
			// "n:*" always matches the highest UID, even one below n (RFC 3501 6.4.8).
			if uint32(buf.UID) <= cur.Last || slices.Contains(buf.Flags, imap.FlagDeleted) {
				continue
			}
			list = append(list, newMessage{uid: buf.UID, size: buf.RFC822Size})
		}
		return cmd.Close()
	})
	if err != nil {
		return 0, err
	}
	slices.SortFunc(list, func(a, b newMessage) int { return int(int64(a.uid) - int64(b.uid)) })
	for _, m := range list {
		if err := f.handle(ctx, u, cur, m); err != nil {
			return 0, err
		}
	}
	return len(list), nil
}

// maxMessage is the size limit: [smtp] max_message_bytes, as for SMTP mail.
func (f *Fetcher) maxMessage() int64 {
	if f.cfg.SMTP.MaxMessageBytes > 0 {
		return f.cfg.SMTP.MaxMessageBytes
	}
	return defaultMaxMessage
}

// handle fetches one message, verifies it, commits it to tickets, advances the cursor and
// only then marks it \Seen (or moves it). A crash between the commit and the cursor write
// fetches the message again, and tickets drops it as a duplicate.
func (f *Fetcher) handle(ctx context.Context, u *upstream, cur *cursor, m newMessage) error {
	limit := f.maxMessage()
	if m.size > limit {
		return f.skip(ctx, u, cur, m.uid, m.size)
	}
	raw, over, err := f.fetchBody(ctx, u, m.uid, limit)
	if err != nil {
		return err
	}
	if over {
		return f.skip(ctx, u, cur, m.uid, int64(len(raw)))
	}
	if raw == nil {
		// Expunged by someone else since the listing: nothing to fetch, UIDs are never reused.
		f.log.Info("message gone before it could be fetched", "uid", m.uid)
		cur.Last = uint32(m.uid)
		return f.saveCursor(*cur)
	}

	vd := f.v.VerifyNoEnvelope(ctx, raw, f.cfg.Verify.TrustedAuthservIDs)
	// The message is already delivered upstream: refusing is impossible, so DMARC's reject
	// becomes quarantine (nothing is lost, nothing is trusted); a temporary DNS failure
	// leaves it unverified, since no sender would retry.
	quarantine := vd.Disposition == "reject" ||
		(vd.Disposition == "quarantine" && f.cfg.Verify.DMARCQuarantine != "accept")
	class := Classify(raw, Envelope{})
	now := f.opts.Now()
	stored := StripAuthResults(raw, f.cfg.Hostname)
	if id := f.missingMessageID(raw); id != "" {
		stored = Prepend(stored, id)
	}
	stored = Prepend(Prepend(stored, f.received(cur.Validity, uint32(m.uid), now)), vd.AuthResults)
	auth := tickets.Auth{
		SPF: vd.SPF, DKIM: vd.DKIM, DMARC: vd.DMARC,
		Verified:    vd.Verified && !quarantine,
		Quarantined: quarantine,
		Results:     strings.TrimRight(vd.AuthResults, "\r\n"),
	}
	res, err := f.tk.Ingest(tickets.Incoming{
		Queue: f.acct.Queue, Raw: stored, Auth: auth, Via: "imap",
		Remote: f.account, Kind: class.Kind, BounceOf: class.BounceOf,
	})
	if err != nil {
		return fmt.Errorf("store message UID %d: %w", m.uid, err)
	}
	dup := res.Outcome == tickets.OutcomeDuplicate
	f.update(func(s *FetchStatus) {
		s.Fetched++
		if dup {
			s.Duplicates++
		}
	})
	attrs := []any{"uid", m.uid, "size", len(raw), "spf", vd.SPF, "dkim", vd.DKIM, "dmarc", vd.DMARC,
		"verified", auth.Verified, "quarantined", quarantine, "ticket", res.Ticket, "outcome", res.Outcome}
	if class.Kind != "" {
		attrs = append(attrs, "kind", class.Kind)
	}
	f.log.Info("message", attrs...)
	if f.afterIngest != nil {
		if err := f.afterIngest(uint32(m.uid)); err != nil {
			return err
		}
	}
	cur.Last = uint32(m.uid)
	if err := f.saveCursor(*cur); err != nil {
		return err
	}
	return f.done(ctx, u, m.uid)
}

// fetchBody reads the whole message without setting \Seen (BODY.PEEK[]), reading at most
// limit+1 bytes: over reports a message larger than the server said. raw is nil when the
// server returned nothing for uid.
func (f *Fetcher) fetchBody(ctx context.Context, u *upstream, uid imap.UID, limit int64) (raw []byte, over bool, err error) {
	sec := &imap.FetchItemBodySection{Peek: true}
	err = u.do(ctx, "UID FETCH "+strconv.FormatUint(uint64(uid), 10), 5*u.timeout, func() error {
		cmd := u.c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{sec}})
		defer cmd.Close()
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			var body []byte
			var got imap.UID
			var have bool
			for item := msg.Next(); item != nil; item = msg.Next() {
				switch it := item.(type) {
				case imapclient.FetchItemDataUID:
					got = it.UID
				case imapclient.FetchItemDataBodySection:
					if it.Literal == nil {
						continue
					}
					var buf bytes.Buffer
					if _, err := buf.ReadFrom(io.LimitReader(it.Literal, limit+1)); err != nil {
						return err
					}
					body, have = buf.Bytes(), true
				}
			}
			// A unilateral FETCH for another message (flags changed) may arrive here too.
			if got == uid && have {
				raw = body
				over = int64(len(body)) > limit
			}
		}
		return cmd.Close()
	})
	return raw, over, err
}

// skip leaves an oversize message upstream, flagged for a person to look at, and moves the
// cursor past it. It is never lost silently: an error in the log and in Status.
func (f *Fetcher) skip(ctx context.Context, u *upstream, cur *cursor, uid imap.UID, size int64) error {
	reason := fmt.Sprintf("UID %d in %s is %d bytes, over max_message_bytes (%d); left in the mailbox and flagged",
		uid, f.mailbox, size, f.maxMessage())
	f.log.Error("message too large; not fetched", "uid", uid, "size", size, "limit", f.maxMessage())
	cur.Last = uint32(uid)
	if err := f.saveCursor(*cur); err != nil {
		return err
	}
	f.update(func(s *FetchStatus) { s.Skipped++; s.LastSkipped = reason })
	return f.flag(ctx, u, uid, imap.FlagFlagged)
}

// done marks a committed message \Seen and moves it when the account says so. A NO from the
// server is logged and kept in Status but does not end the session: the cursor already
// guarantees the message is not fetched again. A broken connection does end it.
func (f *Fetcher) done(ctx context.Context, u *upstream, uid imap.UID) error {
	if err := f.flag(ctx, u, uid, imap.FlagSeen); err != nil {
		return err
	}
	if f.acct.Move == "" {
		return nil
	}
	move := func() error { _, err := u.c.Move(imap.UIDSetNum(uid), f.acct.Move).Wait(); return err }
	what := "UID MOVE " + strconv.FormatUint(uint64(uid), 10) + " to " + f.acct.Move
	err := u.do(ctx, what, u.timeout, move)
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Code == imap.ResponseCodeTryCreate {
		f.log.Info("creating the folder for fetched mail", "folder", f.acct.Move)
		err = u.do(ctx, "CREATE "+f.acct.Move, u.timeout, func() error { return u.c.Create(f.acct.Move, nil).Wait() })
		if err == nil {
			err = u.do(ctx, what, u.timeout, move)
		}
	}
	return f.softError(err)
}

func (f *Fetcher) flag(ctx context.Context, u *upstream, uid imap.UID, flag imap.Flag) error {
	err := u.do(ctx, "UID STORE "+strconv.FormatUint(uint64(uid), 10)+" +FLAGS "+string(flag), u.timeout, func() error {
		return u.c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{flag}}, nil).Close()
	})
	return f.softError(err)
}

// softError passes on errors that end the connection and records a server's refusal.
func (f *Fetcher) softError(err error) error {
	var ie *imap.Error
	if err == nil || !errors.As(err, &ie) {
		return err
	}
	f.log.Error("upstream refused a command after the message was stored", "err", err)
	f.update(func(s *FetchStatus) { s.Warnings++; s.LastWarning = err.Error() })
	return nil
}

// received is the trace field for a fetched message: where it came from, no secrets.
func (f *Fetcher) received(validity, uid uint32, now time.Time) string {
	with := "IMAP"
	if f.acct.TLS != "none" {
		with = "IMAPS"
	}
	return "Received: from " + traceWord(f.host) + " (" + traceWord(f.addr) + " mailbox " + traceWord(f.mailbox) +
		" uid " + strconv.FormatUint(uint64(validity), 10) + "." + strconv.FormatUint(uint64(uid), 10) + ")\r\n" +
		"\tby " + traceWord(f.cfg.Hostname) + " (mailgate) with " + with + ";\r\n" +
		"\t" + now.Format(time.RFC1123Z) + "\r\n"
}

// traceWord keeps a value from breaking out of its place in a header comment.
func traceWord(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '(' || r == ')' || r == ' ' {
			return '_'
		}
		return r
	}, clean(s))
}

// missingMessageID returns a Message-ID field for a message that has none, else "". tickets
// drops a message it already has by Message-ID; without one, a message fetched again after
// a crash between its commit and the cursor write would be stored twice. The id is derived
// from the message's bytes, so every fetch of the same message gets the same one, whatever
// its UID (a UIDVALIDITY change refetches everything).
func (f *Fetcher) missingMessageID(raw []byte) string {
	fields, _, _ := headerFields(raw)
	for _, fl := range fields {
		if strings.EqualFold(fl.name, "Message-ID") && firstID(unfold(fl.value)) != "" {
			return ""
		}
	}
	sum := sha256.Sum256(raw)
	return "Message-ID: <fetched." + hex.EncodeToString(sum[:16]) + "@" + traceWord(f.cfg.Hostname) + ">\r\n"
}
