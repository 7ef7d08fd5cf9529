package tickets

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"mailgate/store"
)

// The search index. For every word of a message (subject, addresses, names, text) it keeps the
// ids of the tickets holding it, under a token HMAC(queue key, word): the queue key is derived
// from the master key per queue, so equal words in two queues give unrelated tokens and a file
// without the key shows no word. The id lists are sealed under the data key. What the file
// still shows is how many chunks a token has (roughly how common an unknown word is).
const (
	bSearch      = "search"       // token(16)|U32(chunk) → sealed U64 ticket ids
	bSearchState = "search_state" // "upto" → U64(last ticket id the start-up migration must index), "done" → U64(done up to)
	chunkIDs     = 256            // ids per sealed chunk: small enough to reseal on each append
	maxWords     = 2000           // unique words indexed per message
	maxScan      = 64 << 10       // bytes of a message's text that are indexed
	maxWordLen   = 64
)

func (s *Service) searchKey(queue string) []byte {
	if k, ok := s.skeys[queue]; ok {
		return k
	}
	return s.db.MAC("search queue key", []byte(queue))
}

func token(key []byte, word string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(word))
	return m.Sum(nil)[:16]
}

// splitPieces cuts text into address-or-word pieces, lower-cased.
func splitPieces(text string, fn func(piece string) bool) {
	isPart := func(r rune) bool {
		return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '@' || r == '.' || r == '-' || r == '_' || r == '+'
	}
	start := -1
	for i, r := range text + " " {
		if isPart(r) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			p := strings.Trim(text[start:i], ".-_+@")
			start = -1
			if p != "" && !fn(strings.ToLower(p)) {
				return
			}
		}
	}
}

// wordsOf splits a piece into its words: letters or digits only.
func wordsOf(piece string) []string {
	return strings.FieldsFunc(piece, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
}

func keepWord(w string) bool {
	if len(w) > maxWordLen {
		return false
	}
	if len(w) >= 2 {
		return true
	}
	return w != "" && w[0] >= '0' && w[0] <= '9'
}

// eachWord calls fn with every word of text (a run of letters or digits) lower-cased, in a
// buffer fn must not keep. It is the indexer's hot loop: one pass, no allocation per word.
func eachWord(text string, fn func(w []byte) bool) {
	var buf []byte
	flush := func() bool {
		if len(buf) == 0 {
			return true
		}
		ok := fn(buf)
		buf = buf[:0]
		return ok
	}
	for i := 0; i < len(text); {
		c := text[i]
		if c < utf8.RuneSelf {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
				buf = append(buf, c)
			case c >= 'A' && c <= 'Z':
				buf = append(buf, c+'a'-'A')
			default:
				if !flush() {
					return
				}
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(text[i:])
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			buf = utf8.AppendRune(buf, unicode.ToLower(r))
		} else if !flush() {
			return
		}
		i += n
	}
	flush()
}

// indexWords are the words a message is found by: each word, and each address whole.
func indexWords(t *Ticket, m *Message) map[string]bool {
	out := map[string]bool{}
	add := func(text string) {
		if len(text) > maxScan {
			text = text[:maxScan]
		}
		if !strings.Contains(text, "@") {
			eachWord(text, func(w []byte) bool {
				if !out[string(w)] && keepWord(string(w)) {
					out[string(w)] = true
				}
				return len(out) < maxWords
			})
			return
		}
		splitPieces(text, func(p string) bool {
			if strings.Contains(p, "@") && len(p) <= 254 {
				out[p] = true
			}
			for _, w := range wordsOf(p) {
				if keepWord(w) {
					out[w] = true
				}
			}
			return len(out) < maxWords
		})
	}
	if m.Seq == 1 {
		add(t.Subject)
	}
	add(m.Subject)
	add(m.From)
	add(m.FromName)
	add(m.To)
	add(strings.Join(m.Cc, " "))
	add(m.Text)
	return out
}

// queryWords are the words a query must all match: an address is matched whole.
func queryWords(q string) []string {
	var out []string
	seen := map[string]bool{}
	splitPieces(q, func(p string) bool {
		var ws []string
		if strings.Contains(p, "@") {
			ws = []string{p}
		} else {
			ws = wordsOf(p)
		}
		for _, w := range ws {
			if keepWord(w) && !seen[w] {
				seen[w] = true
				out = append(out, w)
			}
		}
		return len(out) < 16
	})
	return out
}

// Messages are indexed after their commit, not in it: rewriting a sealed chunk for every word
// of every message would double the cost of taking mail in. The ingest transaction only notes
// the message in bSearchPending (a key of two numbers), and a background pass indexes what is
// pending in batches, one chunk rewrite per word per batch. A search first indexes whatever is
// still pending, so it never misses a committed message; a crash loses nothing, as the notes
// are in the store.
const bSearchPending = "search_pending" // U64(id)|U32(seq) → nothing (plain)

// indexDelay is how long the background pass waits for more commits before it runs.
const indexDelay = 200 * time.Millisecond

// queueForIndex notes message seq of ticket id for indexing, inside the caller's transaction.
func (s *Service) queueForIndex(tx *store.Tx, id uint64, seq int) error {
	if err := tx.PutPlain(bSearchPending, mkey(id, seq), nil); err != nil {
		return err
	}
	tx.OnCommit(s.kickIndexer)
	return nil
}

// kickIndexer makes sure one background pass runs after this commit.
func (s *Service) kickIndexer() {
	pc := postingCacheOf(s.db)
	pc.again.Store(true)
	if !pc.running.CompareAndSwap(false, true) {
		return
	}
	go func() {
		for {
			// Let commits gather first: every pass is a commit with its own fsync, and the
			// mail path must not pay one per message for the index.
			time.Sleep(indexDelay)
			pc.again.Store(false)
			if err := s.indexPending(); err != nil && s.db.Writable() == nil { // a closed store is no news
				s.opts.Logger.Warn("search index: indexing new messages failed; the next search retries", "err", err)
			}
			pc.running.Store(false)
			if !pc.again.Load() || !pc.running.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// indexPending indexes every pending message, a batch per transaction. The messages are read
// and their words hashed in a read transaction first: the write transaction, which the mail
// path waits for, only merges the tokens into the lists.
func (s *Service) indexPending() error {
	pc := postingCacheOf(s.db)
	pc.indexing.Lock()
	defer pc.indexing.Unlock()
	type pending struct {
		key  []byte
		id   uint64
		toks [][]byte
	}
	for {
		var items []pending
		err := s.db.View(func(tx *store.Tx) error {
			c := tx.Cursor(bSearchPending)
			for k := c.First(); k != nil && len(items) < 500; k = c.Next() {
				it := pending{key: append([]byte(nil), k...)}
				if len(k) == 12 {
					id, seq := store.FromU64(k), int(binary.BigEndian.Uint32(k[8:]))
					// A ticket or message gone (purged) has nothing to index.
					if t, err := loadTicket(tx, id); err == nil {
						if m, err := loadMessage(tx, id, seq); err == nil {
							key := s.searchKey(t.Queue)
							it.id = id
							for w := range indexWords(t, m) {
								it.toks = append(it.toks, token(key, w))
							}
						}
					}
				}
				items = append(items, it)
			}
			return nil
		})
		if err != nil || len(items) == 0 {
			return err
		}
		batch := make([]indexItem, len(items))
		for i, it := range items {
			batch[i] = indexItem{key: it.key, id: it.id, toks: it.toks}
		}
		err = s.mergePostings(batch)
		if err != nil || len(items) < 500 {
			return err
		}
	}
}

// indexMessage adds m's words to the index inside the caller's transaction.
func (s *Service) indexMessage(tx *store.Tx, t *Ticket, m *Message) error {
	if err := bumpIndexEpoch(tx); err != nil {
		return err
	}
	key := s.searchKey(t.Queue)
	for w := range indexWords(t, m) {
		if err := appendPostings(tx, token(key, w), []uint64{t.ID}); err != nil {
			return err
		}
	}
	return nil
}

// chunkWrite is one posting chunk's new content: key token|U32(chunk), value its ids.
type chunkWrite struct{ key, ids []byte }

// planPostings works out the chunk writes that add ids to token tok's list: into its last
// chunk, then new chunks. It only reads, so it can run in a read transaction.
func planPostings(tx *store.Tx, tok []byte, ids []uint64) ([]chunkWrite, error) {
	c := tx.Cursor(bSearch)
	end := binary.BigEndian.AppendUint32(append([]byte(nil), tok...), 0xffffffff)
	k := c.Seek(end)
	if k == nil {
		k = c.Last()
	} else {
		k = c.Prev()
	}
	var n uint32
	var chunk []byte
	if len(k) == 20 && string(k[:16]) == string(tok) {
		n = binary.BigEndian.Uint32(k[16:])
		v, err := tx.Get(bSearch, k)
		if err != nil {
			return nil, err
		}
		chunk = v
	}
	have := make(map[uint64]bool, len(chunk)/8+len(ids))
	for i := 0; i+8 <= len(chunk); i += 8 {
		have[store.FromU64(chunk[i:])] = true
	}
	var out []chunkWrite
	dirty := false
	for _, id := range ids {
		if have[id] {
			continue // already there: another message of the same ticket
		}
		if len(chunk)/8 >= chunkIDs {
			out = append(out, chunkWrite{binary.BigEndian.AppendUint32(append([]byte(nil), tok...), n), chunk})
			n++
			chunk, dirty = nil, false
		}
		chunk = append(chunk, store.U64(id)...)
		have[id] = true
		dirty = true
	}
	if dirty {
		out = append(out, chunkWrite{binary.BigEndian.AppendUint32(append([]byte(nil), tok...), n), chunk})
	}
	return out, nil
}

// putChunks stores planned chunk writes of token tok.
func putChunks(tx *store.Tx, tok []byte, writes []chunkWrite) error {
	if len(writes) == 0 {
		return nil
	}
	// Dropped now, so no search between this commit and its callback can take the cached list
	// for current; and again after the commit, for a search that cached the old one meanwhile.
	pc := postingCacheOf(tx.DB())
	pc.drop(tok)
	t := string(tok)
	tx.OnCommit(func() { pc.drop([]byte(t)) })
	for _, w := range writes {
		if err := tx.Put(bSearch, w.key, w.ids); err != nil {
			return err
		}
	}
	return nil
}

// appendPostings adds ids to token tok's list inside the caller's write transaction. Each
// chunk is opened and sealed once per call, however many ids join it.
func appendPostings(tx *store.Tx, tok []byte, ids []uint64) error {
	writes, err := planPostings(tx, tok, ids)
	if err != nil {
		return err
	}
	return putChunks(tx, tok, writes)
}

// indexEpochKey (in bSearchState) counts the transactions that change posting chunks outside
// a pass of indexPending: purges and the start-up migration.
var indexEpochKey = []byte("epoch")

// bumpIndexEpoch marks, inside tx, that it changes posting chunks on its own.
func bumpIndexEpoch(tx *store.Tx) error {
	v, err := tx.GetPlain(bSearchState, indexEpochKey)
	if err != nil {
		return err
	}
	var n uint64
	if len(v) == 8 {
		n = store.FromU64(v)
	}
	return tx.PutPlain(bSearchState, indexEpochKey, store.U64(n+1))
}

func indexEpoch(tx *store.Tx) ([]byte, error) { return tx.GetPlain(bSearchState, indexEpochKey) }

// testHookIndexPlanned runs between a pass's read and write transactions (tests).
var testHookIndexPlanned func()

// indexItem is one pending message for mergePostings: its pending key, its ticket and the
// tokens of its words.
type indexItem struct {
	key  []byte
	id   uint64
	toks [][]byte
}

// byToken groups the ticket ids of items by token, each list in the items' order without
// repeats of a ticket.
func byToken(items []indexItem) map[string][]uint64 {
	out := map[string][]uint64{}
	for _, it := range items {
		for _, tok := range it.toks {
			if l := out[string(tok)]; len(l) == 0 || l[len(l)-1] != it.id {
				out[string(tok)] = append(l, it.id)
			}
		}
	}
	return out
}

// mergePostings adds the items' ids to their tokens' lists and removes their pending keys, in
// one commit. The new chunks are worked out in a read transaction first (opening each token's
// last chunk and merging), so the write transaction, which every mail writer waits on, only
// stores them: merging a few thousand words under the write lock held it for tens of
// milliseconds, and every message arriving meanwhile waited that long for its 250. Passes
// run one at a time (postingCache.indexing), so no other pass appends between the read and the
// write. Purges and the start-up migration change chunks on their own and move the epoch;
// when it moved, the pass merges under the write lock as before.
func (s *Service) mergePostings(items []indexItem) error {
	byTok := byToken(items)
	toks := make([]string, 0, len(byTok))
	for tok := range byTok {
		toks = append(toks, tok)
	}
	slices.Sort(toks) // the write transaction then visits the B-tree in order
	var epoch []byte
	planned := make(map[string][]chunkWrite, len(toks))
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		if epoch, err = indexEpoch(tx); err != nil {
			return err
		}
		for _, tok := range toks {
			w, err := planPostings(tx, []byte(tok), byTok[tok])
			if err != nil {
				return err
			}
			planned[tok] = w
		}
		return nil
	})
	if err != nil {
		return err
	}
	if testHookIndexPlanned != nil {
		testHookIndexPlanned()
	}
	return s.db.Update(func(tx *store.Tx) error {
		now, err := indexEpoch(tx)
		if err != nil {
			return err
		}
		stale := string(now) != string(epoch)
		live := items[:0:0]
		for _, it := range items {
			v, err := tx.GetPlain(bSearchPending, it.key)
			if err != nil {
				return err
			}
			if v == nil {
				stale = true // purged since it was read: its id must not come back into the lists
				continue
			}
			if err := tx.Delete(bSearchPending, it.key); err != nil {
				return err
			}
			live = append(live, it)
		}
		if stale {
			for tok, ids := range byToken(live) {
				if err := appendPostings(tx, []byte(tok), ids); err != nil {
					return err
				}
			}
			return nil
		}
		for _, tok := range toks {
			if err := putChunks(tx, []byte(tok), planned[tok]); err != nil {
				return err
			}
		}
		return nil
	})
}

// unindexMessage takes ticket t out of the lists of m's words (a purge): with the master key,
// anyone could hash a dictionary and read the lists, so a destroyed ticket's id must not stay
// in them. A message still waiting to be indexed is simply dropped from the queue.
func (s *Service) unindexMessage(tx *store.Tx, t *Ticket, m *Message) error {
	if err := tx.Delete(bSearchPending, mkey(t.ID, m.Seq)); err != nil {
		return err
	}
	if err := bumpIndexEpoch(tx); err != nil {
		return err
	}
	key := s.searchKey(t.Queue)
	pc := postingCacheOf(tx.DB())
	for w := range indexWords(t, m) {
		tok := token(key, w)
		c := tx.Cursor(bSearch)
		var keys [][]byte
		for k := c.Seek(tok); len(k) == 20 && string(k[:16]) == string(tok); k = c.Next() {
			keys = append(keys, k)
		}
		for _, k := range keys {
			v, err := tx.Get(bSearch, k)
			if err != nil {
				return err
			}
			kept := v[:0:0]
			for i := 0; i+8 <= len(v); i += 8 {
				if store.FromU64(v[i:]) != t.ID {
					kept = append(kept, v[i:i+8]...)
				}
			}
			if len(kept) == len(v) {
				continue
			}
			// An emptied chunk stays (empty): the last chunk is where appends go.
			if err := tx.Put(bSearch, k, kept); err != nil {
				return err
			}
		}
		pc.drop(tok)
		t := string(tok)
		tx.OnCommit(func() { pc.drop([]byte(t)) })
	}
	return nil
}

func postings(tx *store.Tx, tok []byte, into func(id uint64)) error {
	c := tx.Cursor(bSearch)
	for k := c.Seek(tok); len(k) == 20 && string(k[:16]) == string(tok); k = c.Next() {
		v, err := tx.Get(bSearch, k)
		if err != nil {
			return err
		}
		for i := 0; i+8 <= len(v); i += 8 {
			into(store.FromU64(v[i:]))
		}
	}
	return nil
}

// searchIDs returns the ids of the tickets in queues holding every word of q, sorted. A query
// that is a ticket number ("123" or "#123") also finds that ticket. Posting lists are sorted
// and intersected by merging: a word in every ticket costs a sort, not 100,000 map inserts.
func (s *Service) searchIDs(queues []string, q string) ([]uint64, error) {
	var out []uint64
	if n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(q), "#"), 10, 64); err == nil && n > 0 {
		out = append(out, n) // the caller keeps it only if it is in the agent's queues
	}
	words := queryWords(q)
	if len(words) == 0 {
		return out, nil
	}
	// Whatever was committed before this search must be findable.
	if s.pendingIndex() {
		if err := s.indexPending(); err != nil {
			return nil, err
		}
	}
	pc := postingCacheOf(s.db)
	gen := pc.generation()
	err := s.db.View(func(tx *store.Tx) error {
		for _, queue := range queues {
			key := s.searchKey(queue)
			var have []uint64
			for i, w := range words {
				tok := token(key, w)
				list, ok := pc.get(tok)
				if !ok {
					if err := postings(tx, tok, func(id uint64) { list = append(list, id) }); err != nil {
						return err
					}
					slices.Sort(list)
					list = slices.Compact(list)
					pc.put(tok, list, gen)
				}
				if i == 0 && len(words) > 1 {
					list = slices.Clone(list) // intersect reuses its first argument, maybe the cache's
				}
				if i == 0 {
					have = list
				} else {
					have = intersect(have, list)
				}
				if len(have) == 0 {
					break
				}
			}
			out = merge(out, have)
		}
		return nil
	})
	return out, err
}

// merge is the sorted union of two sorted lists, in a new slice: neither is changed (one may
// be the cache's).
func merge(a, b []uint64) []uint64 {
	if len(a) == 0 {
		return b
	}
	if len(b) == 0 {
		return a
	}
	out := make([]uint64, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			out = append(out, a[i])
			i++
		case a[i] > b[j]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return append(append(out, a[i:]...), b[j:]...)
}

// intersect merges two sorted lists into the ids in both, reusing a's storage.
func intersect(a, b []uint64) []uint64 {
	out := a[:0]
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// Prepare brings tickets stored by an older mailgate up to date before serving: the derived
// work-queue fields and the search index. It remembers how far it got, so an interrupted run
// goes on where it stopped; tickets created meanwhile are indexed as they arrive.
func (s *Service) Prepare() (migrated int, err error) {
	var upto, done uint64
	err = s.db.Batch(func(tx *store.Tx) error {
		v, err := tx.GetPlain(bSearchState, []byte("upto"))
		if err != nil {
			return err
		}
		if len(v) == 8 {
			upto = store.FromU64(v)
			d, err := tx.GetPlain(bSearchState, []byte("done"))
			if err != nil {
				return err
			}
			if len(d) == 8 {
				done = store.FromU64(d)
			}
			return nil
		}
		upto = tx.Seq(bTicketID)
		return tx.PutPlain(bSearchState, []byte("upto"), store.U64(upto))
	})
	if err != nil {
		return 0, err
	}
	const step = 100
	for done < upto {
		last := min(done+step, upto)
		err := s.db.Update(func(tx *store.Tx) error {
			for id := done + 1; id <= last; id++ {
				ok, err := s.migrateTicket(tx, id)
				if err != nil {
					return fmt.Errorf("ticket %d: %w", id, err)
				}
				if ok {
					migrated++
				}
			}
			return tx.PutPlain(bSearchState, []byte("done"), store.U64(last))
		})
		if err != nil {
			return migrated, fmt.Errorf("migrate tickets to the search index: %w", err)
		}
		done = last
	}
	if err := s.indexPending(); err != nil {
		return migrated, fmt.Errorf("index the migrated tickets: %w", err)
	}
	return migrated, nil
}

func (s *Service) migrateTicket(tx *store.Tx, id uint64) (bool, error) {
	t, err := loadTicket(tx, id)
	if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	t.Waiting, t.Unverified, t.Quarantined, t.AutoReply, t.Bounced = time.Time{}, false, false, false, false
	for seq := 1; seq <= t.Messages; seq++ {
		m, err := loadMessage(tx, id, seq)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return false, err
		}
		t.noteMessage(m, m.Received)
		if m.Direction == Out && (m.Delivery == "failed" || m.Delivery == "bounced") && m.Kind == "" {
			t.Bounced = true
		}
		if err := s.queueForIndex(tx, id, seq); err != nil {
			return false, err
		}
	}
	t.Derived = derivedVersion
	return true, saveTicket(tx, t)
}

// pendingIndex reports whether messages wait to be indexed.
func (s *Service) pendingIndex() bool {
	pending := false
	s.db.View(func(tx *store.Tx) error {
		pending = tx.Cursor(bSearchPending).First() != nil
		return nil
	})
	return pending
}

// postingCache keeps the opened, sorted id lists of common words in memory (never on disk),
// so a search for a word in half the store does not open and sort 50,000 ids every time.
// A commit that adds to a token drops its entry; a search stores what it read only if no
// commit added to any token since it began (it may have read an older snapshot).
type postingCache struct {
	// indexing serialises passes over bSearchPending; running and again keep one background
	// pass going while commits arrive.
	indexing       sync.Mutex
	running, again atomic.Bool

	mu    sync.Mutex
	gen   uint64
	lists map[string][]uint64
	ids   int
}

const (
	cacheMinIDs = 1024    // shorter lists are cheap to read
	cacheMaxIDs = 4 << 20 // 32 MB of ids at most; then start afresh
)

var postingCaches sync.Map // *store.DB → *postingCache

func postingCacheOf(db *store.DB) *postingCache {
	c, _ := postingCaches.LoadOrStore(db, &postingCache{lists: map[string][]uint64{}})
	return c.(*postingCache)
}

func (c *postingCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *postingCache) get(tok []byte) ([]uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.lists[string(tok)]
	return l, ok
}

func (c *postingCache) put(tok []byte, list []uint64, gen uint64) {
	if len(list) < cacheMinIDs {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if c.ids+len(list) > cacheMaxIDs {
		clear(c.lists)
		c.ids = 0
	}
	if _, ok := c.lists[string(tok)]; !ok {
		c.lists[string(tok)] = list
		c.ids += len(list)
	}
}

func (c *postingCache) drop(tok []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if l, ok := c.lists[string(tok)]; ok {
		c.ids -= len(l)
		delete(c.lists, string(tok))
	}
}
