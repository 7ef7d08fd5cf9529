package tickets

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"mailgate/access"
	"mailgate/store"
)

// The work queue: agents list tickets by how long the customer has waited, by view (mine,
// unassigned, open, attention) with counts, and search them. Sorting 100,000 sealed tickets by a
// field cannot read them from the store per request (each is sealed under its own key), so
// every ticket's header is kept in memory, loaded once and updated after each commit that
// saves a ticket. Nothing of it is written anywhere: at rest there is only the sealed ticket.

// Views of the ticket list.
const (
	ViewOpen       = "open"       // new, open and pending: the work still to do
	ViewMine       = "mine"       // open and assigned to the agent
	ViewUnassigned = "unassigned" // open and assigned to nobody
	ViewAttention  = "attention"  // a reply bounced or failed: someone must look
	ViewAll        = "all"        // every status
)

// Views lists the views in the order the page shows them.
var Views = []string{ViewOpen, ViewMine, ViewUnassigned, ViewAttention, ViewAll}

// Sorts of the ticket list.
const (
	SortWaiting  = "waiting"  // the customer waiting longest first, then the most recently active
	SortActivity = "activity" // most recently active first
	SortNumber   = "number"   // newest ticket first
)

// ListQuery selects and orders one page of the work queue.
type ListQuery struct {
	View     string // one of Views; "" is ViewOpen
	Queue    string // "" is all of the agent's queues
	Status   Status // narrows the view further
	Assignee string
	Search   string // words that must all occur (see Search); "" lists everything
	Sort     string // one of the Sort constants; "" is SortWaiting
	Offset   int
	Limit    int // default 50, at most 500
}

// ListResult is one page of the work queue.
type ListResult struct {
	Tickets []Ticket
	Total   int            // tickets matching the query, over all pages
	Counts  map[string]int // per view, within the same queue filter and search
}

// open reports whether t still needs work.
func (t *Ticket) open() bool {
	return t.Status == StatusNew || t.Status == StatusOpen || t.Status == StatusPending
}

// Attention reports whether an agent must look at t: a reply bounced or could not be delivered.
func (t *Ticket) Attention() bool { return t.Bounced && t.Status != StatusClosed }

func inView(t *Ticket, view, me string) bool {
	switch view {
	case ViewMine:
		return t.open() && t.Assignee == me
	case ViewUnassigned:
		return t.open() && t.Assignee == ""
	case ViewAttention:
		return t.Attention()
	case ViewAll:
		return true
	default:
		return t.open()
	}
}

// ValidView and ValidSort check list parameters.
func ValidView(v string) bool { return v == "" || slices.Contains(Views, v) }

// ValidSort reports whether s is a known sort.
func ValidSort(s string) bool {
	return s == "" || s == SortWaiting || s == SortActivity || s == SortNumber
}

// headers is the in-memory copy of every ticket's header, shared by all Services on one DB.
type headers struct {
	mu     sync.RWMutex
	loaded bool
	byID   map[uint64]*Ticket
}

var headerCaches sync.Map // *store.DB → *headers

func headersOf(db *store.DB) *headers {
	h, _ := headerCaches.LoadOrStore(db, &headers{byID: map[uint64]*Ticket{}})
	return h.(*headers)
}

// remember makes the cache learn t once tx commits. A copy is taken now: the caller may change
// t after saving it, and only what was saved may show.
func remember(tx *store.Tx, t *Ticket) {
	c := *t
	c.Participants = slices.Clone(t.Participants)
	c.Links = slices.Clone(t.Links)
	h := headersOf(tx.DB())
	tx.OnCommit(func() {
		h.mu.Lock()
		if h.loaded {
			h.byID[c.ID] = &c
		}
		h.mu.Unlock()
	})
}

func forget(tx *store.Tx, id uint64) {
	h := headersOf(tx.DB())
	tx.OnCommit(func() {
		h.mu.Lock()
		delete(h.byID, id)
		h.mu.Unlock()
	})
}

// load reads every ticket once. The lock is taken before the read transaction starts, so a
// commit either is in the snapshot or updates the cache after it is loaded.
func (s *Service) loadHeaders() (*headers, error) {
	h := headersOf(s.db)
	h.mu.RLock()
	ok := h.loaded
	h.mu.RUnlock()
	if ok {
		return h, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.loaded {
		return h, nil
	}
	err := s.db.View(func(tx *store.Tx) error {
		c := tx.Cursor(bByQueue)
		for k := c.First(); k != nil; k = c.Next() {
			if len(k) != 16 {
				continue
			}
			id := store.FromU64(k[8:])
			t, err := loadTicket(tx, id)
			if errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) {
				continue
			}
			if err != nil {
				return err
			}
			h.byID[id] = t
		}
		return nil
	})
	if err != nil {
		clear(h.byID)
		return nil, err
	}
	h.loaded = true
	return h, nil
}

// waitingFirst orders by waiting time: tickets whose customer waits come first, the oldest
// wait first; then the rest by last activity, newest first; the ticket number breaks ties.
func waitingFirst(a, b *Ticket) int {
	aw, bw := !a.Waiting.IsZero(), !b.Waiting.IsZero()
	switch {
	case aw && bw:
		if c := a.Waiting.Compare(b.Waiting); c != 0 {
			return c
		}
	case aw:
		return -1
	case bw:
		return 1
	default:
		if c := b.Updated.Compare(a.Updated); c != 0 {
			return c
		}
	}
	return cmp.Compare(a.ID, b.ID)
}

func byActivity(a, b *Ticket) int {
	if c := b.Updated.Compare(a.Updated); c != 0 {
		return c
	}
	return cmp.Compare(b.ID, a.ID)
}

func byNumber(a, b *Ticket) int { return cmp.Compare(b.ID, a.ID) }

// Work returns one page of the work queue for a: the tickets of a's queues in the view, sorted,
// with the total and the count per view. The listing (and any search in it) is audited.
func (s *Service) Work(a access.Actor, q ListQuery) (ListResult, error) {
	if !ValidView(q.View) || !ValidSort(q.Sort) {
		return ListResult{}, fmt.Errorf("%w: unknown view or sort", ErrInvalid)
	}
	if q.Limit <= 0 || q.Limit > 500 {
		q.Limit = 50
	}
	if q.Offset < 0 {
		q.Offset = 0
	}
	var queues []string
	for _, qq := range s.opts.Queues {
		if (q.Queue == "" || q.Queue == qq.Name) && a.InQueue(qq.Name) {
			queues = append(queues, qq.Name)
		}
	}
	h, err := s.loadHeaders()
	if err != nil {
		return ListResult{}, err
	}
	var hits map[uint64]bool
	searching := q.Search != ""
	if searching {
		if hits, err = s.searchIDs(queues, q.Search); err != nil {
			return ListResult{}, err
		}
	}
	res := ListResult{Counts: map[string]int{}}
	var sel []*Ticket
	h.mu.RLock()
	consider := func(t *Ticket) {
		if !slices.Contains(queues, t.Queue) {
			return
		}
		for _, v := range Views {
			if inView(t, v, a.Name) {
				res.Counts[v]++
			}
		}
		if !inView(t, q.View, a.Name) || (q.Status != "" && t.Status != q.Status) || (q.Assignee != "" && t.Assignee != q.Assignee) {
			return
		}
		sel = append(sel, t)
	}
	if searching {
		for id := range hits {
			if t, ok := h.byID[id]; ok {
				consider(t)
			}
		}
	} else {
		for _, t := range h.byID {
			consider(t)
		}
	}
	h.mu.RUnlock()
	order := waitingFirst
	switch q.Sort {
	case SortActivity:
		order = byActivity
	case SortNumber:
		order = byNumber
	}
	res.Total = len(sel)
	end := min(q.Offset+q.Limit, len(sel))
	if q.Offset < len(sel) {
		topK(sel, end, order)
		for _, t := range sel[q.Offset:end] {
			c := *t
			res.Tickets = append(res.Tickets, c)
		}
	}
	detail := fmt.Sprintf("view=%s queue=%s status=%s sort=%s count=%d total=%d", cmp.Or(q.View, ViewOpen), q.Queue, q.Status, cmp.Or(q.Sort, SortWaiting), len(res.Tickets), res.Total)
	action := "ticket.list"
	if searching {
		action = "ticket.search"
		detail += " query=" + strconv.QuoteToASCII(clipQuery(q.Search))
	}
	// The data leaves only once its viewing (and what was searched for) is on record.
	if err := s.auditNow(a, action, "tickets", "ok", detail); err != nil {
		return ListResult{}, err
	}
	return res, nil
}

// topK puts the k first tickets in order at the front of sel. A full sort of 100,000 tickets
// for one page of 50 is most of a request's time; a bounded heap is not.
func topK(sel []*Ticket, k int, order func(a, b *Ticket) int) {
	if k >= len(sel)/4 {
		slices.SortFunc(sel, order)
		return
	}
	// Max-heap of the k best so far at sel[:k]: the root is the worst of them.
	less := func(i, j int) bool { return order(sel[i], sel[j]) > 0 }
	down := func(i, n int) {
		for {
			l := 2*i + 1
			if l >= n {
				return
			}
			m := l
			if r := l + 1; r < n && less(r, l) {
				m = r
			}
			if !less(m, i) {
				return
			}
			sel[i], sel[m] = sel[m], sel[i]
			i = m
		}
	}
	for i := k/2 - 1; i >= 0; i-- {
		down(i, k)
	}
	for i := k; i < len(sel); i++ {
		if order(sel[i], sel[0]) < 0 {
			sel[0], sel[i] = sel[i], sel[0]
			down(0, k)
		}
	}
	slices.SortFunc(sel[:k], order)
}

func clipQuery(s string) string {
	if len(s) <= 100 {
		return s
	}
	return s[:100]
}

// CustomerTickets returns the other tickets of the same customer address in a's queues, newest
// first: context for the agent on the ticket page. Reading them is part of the ticket view.
func (s *Service) CustomerTickets(a access.Actor, t *Ticket, limit int) ([]Ticket, error) {
	h, err := s.loadHeaders()
	if err != nil {
		return nil, err
	}
	var out []Ticket
	h.mu.RLock()
	for _, o := range h.byID {
		if o.ID != t.ID && equalAddr(o.Customer, t.Customer) && t.Customer != "" && a.InQueue(o.Queue) {
			out = append(out, *o)
		}
	}
	h.mu.RUnlock()
	slices.SortFunc(out, func(x, y Ticket) int { return cmp.Compare(y.ID, x.ID) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// noteMessage keeps the ticket's derived work-queue fields true as m joins it.
func (t *Ticket) noteMessage(m *Message, now time.Time) {
	switch m.Direction {
	case In:
		switch m.Kind {
		case "":
			if t.Waiting.IsZero() {
				t.Waiting = cmp.Or(m.Received, now)
			}
			t.Unverified, t.Quarantined, t.AutoReply = !m.Verified, m.Quarantined, false
		default: // an auto-reply, or a bounce that matched none of our replies
			t.AutoReply = true
		}
		if m.Encrypted {
			t.Encrypted = true
		}
	case Out:
		if m.Kind == "" && m.Author != "mailgate" { // an agent's answer, not the acknowledgement
			t.Waiting = time.Time{}
			t.Bounced = false
		}
	case Note:
		if m.Kind == "bounce" {
			t.Bounced = true
		}
	}
	t.Derived = derivedVersion
}

// derivedVersion is the version of the derived fields; tickets stored before have 0 and are
// brought up to date at start (Prepare).
const derivedVersion = 1
