package tickets

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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

// Attention reports whether an agent must look at t: a reply bounced or could not be delivered.
func (t *Ticket) Attention() bool { return t.Bounced && t.Status != StatusClosed }

// ValidView and ValidSort check list parameters.
func ValidView(v string) bool { return v == "" || slices.Contains(Views, v) }

// ValidSort reports whether s is a known sort.
func ValidSort(s string) bool {
	return s == "" || s == SortWaiting || s == SortActivity || s == SortNumber
}

// headers is the in-memory copy of every ticket's header, shared by all Services on one DB.
// Listing walks heads, a contiguous slice of small values (the fields views and sorts need,
// names interned): 100,000 tickets are scanned in about a millisecond, where chasing 100,000
// pointers to full tickets took a hundred.
type headers struct {
	mu     sync.RWMutex
	loaded bool
	byID   map[uint64]*Ticket
	pos    map[uint64]int // index in heads
	heads  []head
	names  map[string]uint32 // interned queue and agent names; 0 is ""
	list   []string
	// byCustomer: lower-cased customer address → ticket ids, for "their other tickets".
	byCustomer map[string][]uint64
	// orders holds the indexes of heads sorted by each of sorts, best first, kept in order as
	// tickets change (a binary search and a move per sort), so a page is read off the front
	// rather than picked out of 100,000 tickets per request. Built on first use after a load.
	orders  [3][]int32
	ordered bool
	// The counts per view and a listing's total depend on a head's class only (queue, assignee,
	// status, bounced): a few hundred classes, each with its number of tickets, so a listing
	// counts without looking at 100,000 tickets. classOf gives a ticket's class by id (plus one;
	// 0: none) for a search to tally its hits; sparse is set if an id is too large for it.
	classIdx map[headClass]uint16
	classes  []headClass
	classN   []int
	classOf  []uint16
	sparse   bool
}

// headClass is what views and filters look at in a head.
type headClass struct {
	queue, assignee uint32
	status          uint8
	bounced         bool
}

// maxDenseID bounds classOf (two bytes a ticket number); ticket numbers count up from 1.
const maxDenseID = 1 << 24

func (hd *head) class() headClass {
	return headClass{queue: hd.queue, assignee: hd.assignee, status: hd.status, bounced: hd.bounced}
}

// tally moves head hd in or out (n = 1 or -1) of its class.
func (h *headers) tally(hd *head, n int) {
	c := hd.class()
	ci, ok := h.classIdx[c]
	if !ok {
		if len(h.classes) >= 1<<16-1 {
			h.sparse = true // never expected: every search counts by scanning
		}
		ci = uint16(len(h.classes))
		h.classIdx[c] = ci
		h.classes = append(h.classes, c)
		h.classN = append(h.classN, 0)
	}
	h.classN[ci] += n
	switch {
	case hd.id >= maxDenseID:
		h.sparse = true
	case n < 0:
		h.classOf[hd.id] = 0
	default:
		if int(hd.id) >= len(h.classOf) {
			grown := make([]uint16, min(hd.id+1+hd.id/4, maxDenseID)) // room for the next tickets
			copy(grown, h.classOf)
			h.classOf = grown
		}
		h.classOf[hd.id] = ci + 1
	}
}

// sortOrder is a sort of the list and its comparison of heads (a total order: ids break ties).
type sortOrder struct {
	name string
	cmp  func(a, b *head) int
}

// sorts are the orders kept in headers.orders, in the same order.
var sorts = [3]sortOrder{{SortWaiting, waitingFirst}, {SortActivity, byActivity}, {SortNumber, byNumber}}

type head struct {
	waiting, updated int64 // unix nanoseconds; waiting 0: answered
	id               uint64
	assignee         uint32
	queue            uint32
	status           uint8
	bounced          bool
}

var statusCodes = map[Status]uint8{StatusNew: 1, StatusOpen: 2, StatusPending: 3, StatusSolved: 4, StatusClosed: 5}

func (h *headers) intern(s string) uint32 {
	if s == "" {
		return 0
	}
	if n, ok := h.names[s]; ok {
		return n
	}
	h.list = append(h.list, s)
	n := uint32(len(h.list))
	h.names[s] = n
	return n
}

// lookup is intern without adding: a name no ticket has gets a number no head carries.
func (h *headers) lookup(s string) uint32 {
	if s == "" {
		return 0
	}
	if n, ok := h.names[s]; ok {
		return n
	}
	return ^uint32(0)
}

// set keeps what lists show of t: participants, links and events stay in the sealed ticket,
// so 100,000 headers cost tens of megabytes, not hundreds.
func (h *headers) set(full *Ticket) {
	c := *full
	c.Participants, c.Links, c.Events = nil, nil, nil
	t := &c
	hd := head{id: t.ID, updated: t.Updated.UnixNano(), assignee: h.intern(t.Assignee), queue: h.intern(t.Queue),
		status: statusCodes[t.Status], bounced: t.Bounced}
	if !t.Waiting.IsZero() {
		hd.waiting = t.Waiting.UnixNano()
	}
	h.byID[t.ID] = t
	if i, ok := h.pos[t.ID]; ok {
		if h.heads[i] == hd {
			return
		}
		h.unorder(i)
		h.tally(&h.heads[i], -1)
		h.heads[i] = hd
		h.tally(&hd, 1)
		h.order(i)
		return
	}
	h.pos[t.ID] = len(h.heads)
	h.heads = append(h.heads, hd)
	h.tally(&hd, 1)
	h.order(len(h.heads) - 1)
	if t.Customer != "" {
		c := strings.ToLower(t.Customer)
		h.byCustomer[c] = append(h.byCustomer[c], t.ID)
	}
}

func (h *headers) del(id uint64) {
	i, ok := h.pos[id]
	if !ok {
		return
	}
	last := len(h.heads) - 1
	h.unorder(i)
	h.tally(&h.heads[i], -1)
	if i != last && h.ordered {
		// The last head moves into the gap: its entries in the orders follow it.
		for o := range sorts {
			if k, ok := h.find(o, last); ok {
				h.orders[o][k] = int32(i)
			} else {
				h.ordered = false
			}
		}
	}
	h.heads[i] = h.heads[last]
	h.pos[h.heads[i].id] = i
	h.heads = h.heads[:last]
	if t := h.byID[id]; t != nil && t.Customer != "" {
		c := strings.ToLower(t.Customer)
		h.byCustomer[c] = slices.DeleteFunc(h.byCustomer[c], func(x uint64) bool { return x == id })
		if len(h.byCustomer[c]) == 0 {
			delete(h.byCustomer, c)
		}
	}
	delete(h.pos, id)
	delete(h.byID, id)
}

// find returns where head i stands in order o (found by its current value, so it must not have
// changed since it was placed).
func (h *headers) find(o, i int) (int, bool) {
	ord, cmp := h.orders[o], sorts[o].cmp
	hd := &h.heads[i]
	k, _ := slices.BinarySearchFunc(ord, hd, func(x int32, t *head) int { return cmp(&h.heads[x], t) })
	return k, k < len(ord) && ord[k] == int32(i)
}

// unorder takes head i out of the orders, before it changes or goes.
func (h *headers) unorder(i int) {
	if !h.ordered {
		return
	}
	for o := range sorts {
		k, ok := h.find(o, i)
		if !ok {
			h.ordered = false // never expected; the next listing sorts afresh
			return
		}
		h.orders[o] = slices.Delete(h.orders[o], k, k+1)
	}
}

// order puts head i, new or just changed, in its place in the orders.
func (h *headers) order(i int) {
	if !h.ordered {
		return
	}
	for o := range sorts {
		k, _ := h.find(o, i)
		h.orders[o] = slices.Insert(h.orders[o], k, int32(i))
	}
}

// sortAll builds the orders from scratch: after a load, or if they were found out of step.
func (h *headers) sortAll() {
	for o, so := range sorts {
		ord := h.orders[o][:0]
		for i := range h.heads {
			ord = append(ord, int32(i))
		}
		slices.SortFunc(ord, func(x, y int32) int { return so.cmp(&h.heads[x], &h.heads[y]) })
		h.orders[o] = ord
	}
	h.ordered = true
}

var headerCaches sync.Map // *store.DB → *headers

func headersOf(db *store.DB) *headers {
	h, _ := headerCaches.LoadOrStore(db, &headers{byID: map[uint64]*Ticket{}, pos: map[uint64]int{}, names: map[string]uint32{},
		byCustomer: map[string][]uint64{}, classIdx: map[headClass]uint16{}})
	return h.(*headers)
}

// remember makes the cache learn t once tx commits. A copy is taken now: the caller may change
// t after saving it, and only what was saved may show.
func remember(tx *store.Tx, t *Ticket) {
	c := *t // set drops the slices, so a shallow copy is enough
	h := headersOf(tx.DB())
	tx.OnCommit(func() {
		h.mu.Lock()
		if h.loaded {
			h.set(&c)
		}
		h.mu.Unlock()
	})
}

func forget(tx *store.Tx, id uint64) {
	h := headersOf(tx.DB())
	tx.OnCommit(func() {
		h.mu.Lock()
		h.del(id)
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
			h.set(t)
		}
		return nil
	})
	if err != nil {
		clear(h.byID)
		clear(h.pos)
		clear(h.byCustomer)
		h.heads = nil
		h.ordered = false
		clear(h.classIdx)
		h.classes, h.classN, h.classOf, h.sparse = nil, nil, nil, false
		return nil, err
	}
	h.sortAll()
	h.loaded = true
	return h, nil
}

func (hd *head) open() bool { return hd.status >= 1 && hd.status <= 3 }

// waitingFirst orders by waiting time: tickets whose customer waits come first, the oldest
// wait first; then the rest by last activity, newest first; the ticket number breaks ties.
func waitingFirst(a, b *head) int {
	aw, bw := a.waiting != 0, b.waiting != 0
	switch {
	case aw && bw:
		if c := cmp.Compare(a.waiting, b.waiting); c != 0 {
			return c
		}
	case aw:
		return -1
	case bw:
		return 1
	default:
		if c := cmp.Compare(b.updated, a.updated); c != 0 {
			return c
		}
	}
	return cmp.Compare(a.id, b.id)
}

func byActivity(a, b *head) int {
	if c := cmp.Compare(b.updated, a.updated); c != 0 {
		return c
	}
	return cmp.Compare(b.id, a.id)
}

func byNumber(a, b *head) int { return cmp.Compare(b.id, a.id) }

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
	var hits [][]uint64 // per queue, sorted; read only (they may be the posting cache's)
	nhits := 0
	searching := q.Search != ""
	if searching {
		if hits, err = s.searchIDs(queues, q.Search); err != nil {
			return ListResult{}, err
		}
		for _, l := range hits {
			nhits += len(l)
		}
	}
	view := cmp.Or(q.View, ViewOpen)
	so := slices.IndexFunc(sorts[:], func(x sortOrder) bool { return x.name == cmp.Or(q.Sort, SortWaiting) })
	res := ListResult{Counts: map[string]int{}}
	h.mu.RLock()
	for !h.ordered {
		h.mu.RUnlock()
		h.mu.Lock()
		if !h.ordered {
			h.sortAll()
		}
		h.mu.Unlock()
		h.mu.RLock()
	}
	f := workFilter{view: slices.Index(Views, view), st: statusCodes[q.Status], byAssignee: q.Assignee != ""}
	for _, name := range queues {
		if n := h.lookup(name); n != ^uint32(0) {
			f.qids = append(f.qids, n)
		}
	}
	f.me, f.who = h.lookup(a.Name), h.lookup(q.Assignee)
	var page []int32
	if searching && nhits < 4096 {
		best := f.few(h, hits, sorts[so].cmp)
		page = best[min(q.Offset, len(best)):min(q.Offset+q.Limit, len(best))]
	} else {
		var bits []uint64 // the hits as a bitmap; nil when not searching
		if searching {
			var top uint64
			for _, l := range hits {
				if len(l) > 0 {
					top = max(top, l[len(l)-1])
				}
			}
			bits = make([]uint64, top/64+1)
			var perClass []int
			if !h.sparse {
				perClass = make([]int, len(h.classes)+1) // by classOf: 0 is no ticket
			}
			for _, l := range hits { // disjoint: no ticket twice
				for _, id := range l {
					bits[id/64] |= 1 << (id % 64)
				}
				if perClass == nil {
					continue
				}
				// Neighbouring tickets mostly share a class: counting runs keeps the count in a
				// register instead of one add to memory per hit.
				var run int
				var last uint16
				for _, id := range l {
					var c uint16
					if id < uint64(len(h.classOf)) {
						c = h.classOf[id]
					}
					if c != last {
						perClass[last] += run
						last, run = c, 0
					}
					run++
				}
				perClass[last] += run
			}
			if perClass != nil {
				f.countClasses(h, perClass[1:])
			} else {
				f.count(h, bits)
			}
		} else {
			f.countClasses(h, h.classN)
		}
		// The order is kept sorted: the page is the first matches from where it begins.
		skip := q.Offset
		page = make([]int32, 0, q.Limit)
		for _, i := range h.orders[so] {
			if len(page) == q.Limit || f.total-skip <= len(page) {
				break
			}
			hd := &h.heads[i]
			if bits != nil && (hd.id/64 >= uint64(len(bits)) || bits[hd.id/64]&(1<<(hd.id%64)) == 0) {
				continue
			}
			if _, in := f.match(hd); !in {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			page = append(page, i)
		}
	}
	res.Tickets = make([]Ticket, 0, len(page))
	for _, i := range page {
		res.Tickets = append(res.Tickets, *h.byID[h.heads[i].id])
	}
	h.mu.RUnlock()
	res.Total = f.total
	for vi, v := range Views {
		res.Counts[v] = f.counts[vi]
	}
	detail := fmt.Sprintf("view=%s queue=%s status=%s sort=%s count=%d total=%d", view, q.Queue, q.Status, cmp.Or(q.Sort, SortWaiting), len(res.Tickets), res.Total)
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

// workFilter is one listing's selection of heads.
type workFilter struct {
	qids       []uint32 // the queues listed
	view       int      // index in Views
	st         uint8    // a status asked for; 0 any
	me, who    uint32   // the agent, the assignee asked for
	byAssignee bool
	counts     [5]int // per view, in the order of Views
	total      int
}

// match reports whether hd is in the listed queues, and whether it is also in the view and
// the status and assignee asked for; it counts hd in the views it belongs to.
func (f *workFilter) match(hd *head) (inQueues, in bool) {
	if len(f.qids) == 1 && hd.queue != f.qids[0] || len(f.qids) != 1 && !slices.Contains(f.qids, hd.queue) {
		return false, false
	}
	open := hd.open()
	switch f.view {
	case 0:
		in = open
	case 1:
		in = open && hd.assignee == f.me
	case 2:
		in = open && hd.assignee == 0
	case 3:
		in = hd.bounced && hd.status != 5
	default:
		in = true
	}
	return true, in && (f.st == 0 || hd.status == f.st) && (!f.byAssignee || hd.assignee == f.who)
}

// add counts n tickets like hd, in the listed queues, in their views and, if in, in the total.
func (f *workFilter) add(hd *head, in bool, n int) {
	if hd.open() {
		f.counts[0] += n
		if hd.assignee == f.me {
			f.counts[1] += n
		}
		if hd.assignee == 0 {
			f.counts[2] += n
		}
	}
	if hd.bounced && hd.status != 5 {
		f.counts[3] += n
	}
	f.counts[4] += n
	if in {
		f.total += n
	}
}

// countClasses counts n[c] tickets of each class c.
func (f *workFilter) countClasses(h *headers, n []int) {
	for ci, c := range h.classes {
		if n[ci] == 0 {
			continue
		}
		hd := head{queue: c.queue, assignee: c.assignee, status: c.status, bounced: c.bounced}
		if ok, in := f.match(&hd); ok {
			f.add(&hd, in, n[ci])
		}
	}
}

// count counts every head (or every one in bits) in the views and the total: one pass over a
// contiguous slice, a few nanoseconds a ticket.
func (f *workFilter) count(h *headers, bits []uint64) {
	for i := range h.heads {
		hd := &h.heads[i]
		if bits != nil && (hd.id/64 >= uint64(len(bits)) || bits[hd.id/64]&(1<<(hd.id%64)) == 0) {
			continue
		}
		if ok, in := f.match(hd); ok {
			f.add(hd, in, 1)
		}
	}
}

// few counts a search's few hits and returns those in the view, sorted: a handful of lookups,
// where walking 100,000 heads would cost more.
func (f *workFilter) few(h *headers, hits [][]uint64, order func(a, b *head) int) []int32 {
	var all []uint64
	for _, l := range hits {
		all = merge(all, l) // a ticket found in two queues' lists counts once
	}
	var best []int32
	for _, id := range all {
		i, ok := h.pos[id]
		if !ok {
			continue
		}
		hd := &h.heads[i]
		ok, in := f.match(hd)
		if !ok {
			continue
		}
		f.add(hd, in, 1)
		if in {
			best = append(best, int32(i))
		}
	}
	slices.SortFunc(best, func(x, y int32) int { return order(&h.heads[x], &h.heads[y]) })
	return best
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
	ids := slices.Clone(h.byCustomer[strings.ToLower(t.Customer)])
	slices.SortFunc(ids, func(x, y uint64) int { return cmp.Compare(y, x) })
	for _, id := range ids {
		if len(out) >= limit {
			break
		}
		if o := h.byID[id]; o != nil && o.ID != t.ID && t.Customer != "" && a.InQueue(o.Queue) {
			out = append(out, *o)
		}
	}
	h.mu.RUnlock()
	if len(out) > 0 {
		// Their subjects and states are customer data too: the look is on record.
		detail := fmt.Sprintf("other tickets of the customer of ticket/%d count=%d", t.ID, len(out))
		if err := s.auditNow(a, "ticket.list", "tickets", "ok", detail); err != nil {
			return nil, err
		}
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

// MessageCount is how many messages ticket id has, for a who may see it: a page compares it
// with the count it was loaded with to tell that something arrived meanwhile. It reveals no
// content, so it is not audited as a view.
func (s *Service) MessageCount(a access.Actor, id uint64) (int, bool) {
	h, err := s.loadHeaders()
	if err != nil {
		return 0, false
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	t, ok := h.byID[id]
	if !ok || !a.InQueue(t.Queue) {
		return 0, false
	}
	return t.Messages, true
}

// Since says what joined ticket id after message seen that an agent about to reply must know:
// customer mail and other agents' replies (not notes, not automatic mail). The look is audited.
func (s *Service) Since(a access.Actor, id uint64, seen int) ([]string, error) {
	var out []string
	err := s.readVisible(a, id, "ticket.view", func(tx *store.Tx, t *Ticket) (string, error) {
		for seq := seen + 1; seq <= t.Messages; seq++ {
			m, err := loadMessage(tx, id, seq)
			if err != nil {
				return "", err
			}
			switch {
			case m.Direction == In && m.Kind == "":
				out = append(out, "a new message from "+m.From)
			case m.Direction == Out && m.Kind == "" && m.Author != a.Name && m.Author != "mailgate":
				out = append(out, m.Author+" replied")
			}
		}
		return fmt.Sprintf("changes since message %d", seen), nil
	})
	return out, err
}
