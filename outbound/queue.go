package outbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"mailgate/audit"
	"mailgate/store"
	"mailgate/tickets"
)

// Bucket holds the delivery queue: per job a sealed metadata record (U64(id)+"m") and the
// sealed message bytes (U64(id)+"r"), so a retry rewrites the small record only.
const Bucket = "outq"

const (
	maxBatch   = 256         // jobs picked per round
	maxIdle    = time.Minute // the worker looks at the queue at least this often
	maxErrText = 300
)

// job is one queued message: one per message, whatever the number of recipients.
type job struct {
	ID       uint64    `json:"id"`
	Ticket   uint64    `json:"ticket"`
	Seq      int       `json:"seq"`
	From     string    `json:"from"`
	Rcpts    []string  `json:"rcpts"` // still to deliver
	Sent     []string  `json:"sent,omitempty"`
	Failed   []failure `json:"failed,omitempty"`
	Attempts int       `json:"attempts"`
	Next     time.Time `json:"next"`
	Created  time.Time `json:"created"`
	LastErr  string    `json:"last_error,omitempty"`
}

type failure struct {
	Rcpt   string `json:"rcpt"`
	Reason string `json:"reason"`
}

// result is the outcome for one recipient of one attempt: err nil means 250.
type result struct {
	rcpt string
	err  error
	perm bool
}

func metaKey(id uint64) []byte { return append(store.U64(id), 'm') }
func rawKey(id uint64) []byte  { return append(store.U64(id), 'r') }

func getJob(tx *store.Tx, id uint64) (*job, error) {
	v, err := tx.Get(Bucket, metaKey(id))
	if err != nil || v == nil {
		return nil, err
	}
	var j job
	if err := json.Unmarshal(v, &j); err != nil {
		return nil, fmt.Errorf("queue job %d: %w", id, err)
	}
	return &j, nil
}

func putJob(tx *store.Tx, j *job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.Put(Bucket, metaKey(j.ID), b)
}

// EnqueueTx queues raw for delivery from `from` to the recipients inside the caller's write
// transaction: the job commits with the message it delivers, or not at all. It has no effect
// outside tx until the commit, so it is safe inside db.Batch. Call Kick after the commit.
func (o *Outbound) EnqueueTx(tx *store.Tx, ticket uint64, seq int, from string, to []string, raw []byte) error {
	from, err := checkAddr(from)
	if err != nil {
		return fmt.Errorf("enqueue: sender: %w", err)
	}
	var rcpts []string
	seen := map[string]bool{}
	for _, a := range to {
		a, err := checkAddr(a)
		if err != nil {
			return fmt.Errorf("enqueue: recipient: %w", err)
		}
		if k := strings.ToLower(a); !seen[k] {
			seen[k] = true
			rcpts = append(rcpts, a)
		}
	}
	if len(rcpts) == 0 {
		return errors.New("enqueue: no recipients")
	}
	if len(raw) == 0 {
		return errors.New("enqueue: empty message")
	}
	id, err := tx.NextSeq(Bucket)
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	now := o.now().UTC()
	j := &job{ID: id, Ticket: ticket, Seq: seq, From: from, Rcpts: rcpts, Next: now, Created: now}
	if err := putJob(tx, j); err != nil {
		return fmt.Errorf("enqueue job %d: %w", id, err)
	}
	if err := tx.Put(Bucket, rawKey(id), raw); err != nil {
		return fmt.Errorf("enqueue job %d: %w", id, err)
	}
	// Only a committed job is scheduled; a rolled-back or re-run Batch leaves no trace.
	tx.OnCommit(func() { o.schedule(id, now) })
	return nil
}

// Kick wakes the delivery worker; it never blocks.
func (o *Outbound) Kick() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

func (o *Outbound) schedule(id uint64, at time.Time) {
	o.mu.Lock()
	o.due[id] = at
	o.mu.Unlock()
}

// Start loads the queue (a short scan of the queue bucket, once) and starts the delivery
// worker. Mail queued before a restart is delivered from where it stopped.
func (o *Outbound) Start(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stop != nil {
		return errors.New("outbound: already started")
	}
	n := 0
	err := o.db.View(func(tx *store.Tx) error {
		c := tx.Cursor(Bucket)
		for k := c.First(); k != nil; k = c.Next() {
			if len(k) != 9 || k[8] != 'm' {
				continue
			}
			j, err := getJob(tx, store.FromU64(k[:8]))
			if err != nil {
				return err
			}
			if j != nil {
				o.due[j.ID] = j.Next
				n++
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbound: load queue: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	o.stop = cancel
	o.done = make(chan struct{})
	o.log.Info("delivery queue started", "queued", n, "relay", o.relayName())
	go o.run(ctx)
	return nil
}

// Stop stops the worker and waits for it. A delivery cut short is not counted: it is tried
// again after the next Start.
func (o *Outbound) Stop() {
	o.mu.Lock()
	stop, done := o.stop, o.done
	o.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-done
	o.mu.Lock()
	o.stop, o.done = nil, nil
	o.mu.Unlock()
}

// Queued returns the number of messages waiting for delivery.
func (o *Outbound) Queued() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.due)
}

func (o *Outbound) relayName() string {
	if o.relay == "" {
		return "outbox:" + o.outbox
	}
	return o.relay
}

func (o *Outbound) run(ctx context.Context) {
	defer close(o.done)
	for ctx.Err() == nil {
		batch, wait := o.pick()
		if len(batch) > 0 {
			o.round(ctx, batch)
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-o.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// pick marks up to maxBatch due jobs in flight, oldest first, and says how long to sleep when
// none is due.
func (o *Outbound) pick() ([]uint64, time.Duration) {
	now := o.now()
	o.mu.Lock()
	defer o.mu.Unlock()
	var ready []uint64
	wait := maxIdle
	for id, at := range o.due {
		if o.inflight[id] {
			continue
		}
		if !at.After(now) {
			ready = append(ready, id)
		} else if d := at.Sub(now); d < wait {
			wait = d
		}
	}
	sort.Slice(ready, func(a, b int) bool {
		ta, tb := o.due[ready[a]], o.due[ready[b]]
		if !ta.Equal(tb) {
			return ta.Before(tb)
		}
		return ready[a] < ready[b]
	})
	if len(ready) > maxBatch {
		ready = ready[:maxBatch]
	}
	for _, id := range ready {
		o.inflight[id] = true
	}
	return ready, wait
}

// outcome is one finished delivery attempt waiting to be recorded.
type outcome struct {
	id   uint64
	res  []result
	took time.Duration // the SMTP conversation for this message
}

// round delivers batch over up to Concurrency transports, each reused for several messages.
// A single recorder commits the outcomes as they come, many per commit, so the relay
// conversation of the next message overlaps the fsync of the last ones.
func (o *Outbound) round(ctx context.Context, batch []uint64) {
	ids := make(chan uint64)
	results := make(chan outcome, len(batch))
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		for oc := range results {
			ocs := []outcome{oc}
		drain:
			for {
				select {
				case more, ok := <-results:
					if !ok {
						break drain
					}
					ocs = append(ocs, more)
				default:
					break drain
				}
			}
			o.recordAll(ocs)
		}
	}()
	var wg sync.WaitGroup
	n := min(o.opts.Concurrency, len(batch))
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := o.newTransport()
			defer tr.close()
			for id := range ids {
				if ctx.Err() != nil {
					continue
				}
				start := time.Now()
				if res, ok := o.deliver(ctx, tr, id); ok {
					results <- outcome{id: id, res: res, took: time.Since(start)}
				}
			}
		}()
	}
	for _, id := range batch {
		ids <- id
	}
	close(ids)
	wg.Wait()
	close(results)
	<-recorded
	o.mu.Lock()
	for _, id := range batch {
		delete(o.inflight, id)
	}
	o.mu.Unlock()
}

// deliver makes one attempt for job id; ok is false when there is nothing to record.
func (o *Outbound) deliver(ctx context.Context, tr transport, id uint64) (res []result, ok bool) {
	var j *job
	var raw []byte
	err := o.db.View(func(tx *store.Tx) error {
		var err error
		if j, err = getJob(tx, id); err != nil || j == nil {
			return err
		}
		raw, err = tx.Get(Bucket, rawKey(id))
		return err
	})
	if err == nil && (j == nil || raw == nil) {
		o.mu.Lock()
		delete(o.due, id) // finished elsewhere
		o.mu.Unlock()
		return nil, false
	}
	if err != nil {
		o.log.Error("delivery: cannot read queued job", "job", id, "err", err)
		o.schedule(id, o.now().Add(o.firstRetry))
		return nil, false
	}
	res = tr.send(ctx, j, raw)
	if ctx.Err() != nil {
		return nil, false // stopped mid-way: not an attempt; the next Start retries it
	}
	return res, true
}

// recordAll commits outcomes in one transaction: per-recipient progress, the next try, or the
// final state with the ticket's delivery mark, a note for failures and the audit event. If
// that commit fails, each outcome is tried alone, so one bad job cannot hold back the rest.
func (o *Outbound) recordAll(ocs []outcome) {
	now := o.now().UTC()
	atts := make([]Attempt, len(ocs))
	done := make([]bool, len(ocs))
	err := o.db.Update(func(tx *store.Tx) error {
		for i, oc := range ocs {
			var err error
			if atts[i], done[i], err = o.recordTx(tx, oc, now); err != nil {
				return err
			}
			atts[i].Took = oc.took
		}
		return nil
	})
	if err != nil && len(ocs) > 1 {
		for _, oc := range ocs {
			o.recordAll([]outcome{oc})
		}
		return
	}
	if err != nil {
		o.log.Error("delivery: cannot record the attempt; trying again later", "job", ocs[0].id, "err", err)
		o.schedule(ocs[0].id, now.Add(o.firstRetry))
		return
	}
	for i, oc := range ocs {
		o.recorded(oc.id, atts[i], done[i])
	}
}

// recordTx applies one outcome inside tx.
func (o *Outbound) recordTx(tx *store.Tx, oc outcome, now time.Time) (Attempt, bool, error) {
	cur, err := getJob(tx, oc.id)
	if err != nil || cur == nil {
		return Attempt{}, true, err
	}
	next, a := o.apply(cur, oc.res, now)
	if a.Outcome == "retry" {
		return a, false, putJob(tx, next)
	}
	if err := tx.Delete(Bucket, metaKey(oc.id)); err != nil {
		return a, true, err
	}
	if err := tx.Delete(Bucket, rawKey(oc.id)); err != nil {
		return a, true, err
	}
	return a, true, o.finish(tx, next, a)
}

// recorded updates the schedule after a commit, logs the attempt and tells the observer.
func (o *Outbound) recorded(id uint64, a Attempt, done bool) {
	o.mu.Lock()
	if done {
		delete(o.due, id)
	} else {
		o.due[id] = a.Next
	}
	o.mu.Unlock()
	if a.Job == 0 {
		return
	}
	level := slog.LevelInfo
	if a.Outcome != "sent" {
		level = slog.LevelWarn
	}
	o.log.Log(context.Background(), level, "delivery attempt", "job", a.Job, "ticket", a.Ticket, "message", a.Seq,
		"attempt", a.Attempt, "relay", o.relayName(), "sent", a.Sent, "deferred", a.Deferred, "failed", a.Failed,
		"outcome", a.Outcome, "next", a.Next, "err", a.Err)
	if o.opts.Observe != nil {
		o.opts.Observe(a)
	}
}

// apply folds res into a copy of j. It is a pure function of its inputs: a failed commit
// can be redone from the stored job.
func (o *Outbound) apply(j *job, res []result, now time.Time) (*job, Attempt) {
	n := *j
	n.Rcpts, n.Sent, n.Failed = nil, append([]string(nil), j.Sent...), append([]failure(nil), j.Failed...)
	n.Attempts++
	a := Attempt{Job: j.ID, Ticket: j.Ticket, Seq: j.Seq, Attempt: n.Attempts}
	byRcpt := make(map[string]result, len(res))
	for _, r := range res {
		byRcpt[strings.ToLower(r.rcpt)] = r
	}
	for _, rc := range j.Rcpts {
		r, ok := byRcpt[strings.ToLower(rc)]
		switch {
		case ok && r.err == nil:
			n.Sent = append(n.Sent, rc)
			a.Sent++
		case ok && r.perm:
			n.Failed = append(n.Failed, failure{Rcpt: rc, Reason: errText(r.err)})
			a.Failed++
			a.Err = errText(r.err)
		default:
			n.Rcpts = append(n.Rcpts, rc)
			a.Deferred++
			if ok {
				a.Err = errText(r.err)
			} else {
				a.Err = "no result for this recipient"
			}
		}
	}
	if a.Err != "" {
		n.LastErr = a.Err
	}
	if len(n.Rcpts) > 0 && now.Sub(j.Created) >= o.giveUp {
		reason := fmt.Sprintf("gave up after %s of retries; last error: %s", o.giveUp, n.LastErr)
		for _, rc := range n.Rcpts {
			n.Failed = append(n.Failed, failure{Rcpt: rc, Reason: reason})
		}
		a.Failed += len(n.Rcpts)
		a.Deferred = 0
		n.Rcpts = nil
	}
	switch {
	case len(n.Rcpts) > 0:
		a.Outcome = "retry"
		n.Next = now.Add(backoff(o.firstRetry, o.opts.MaxRetryInterval, n.Attempts))
		a.Next = n.Next
	case len(n.Failed) > 0:
		a.Outcome = "failed"
	default:
		a.Outcome = "sent"
	}
	return &n, a
}

// backoff is the wait after the attempts-th failed attempt: first, then doubling, capped.
func backoff(first, limit time.Duration, attempts int) time.Duration {
	d := first
	for i := 1; i < attempts && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// finish marks the ticket's message, notes a failure where agents see it, and audits.
func (o *Outbound) finish(tx *store.Tx, j *job, a Attempt) error {
	if o.tickets != nil {
		if err := ignoreGone(o.tickets.SetDelivery(tx, j.Ticket, j.Seq, a.Outcome)); err != nil {
			return fmt.Errorf("mark message %d of ticket %d %s: %w", j.Seq, j.Ticket, a.Outcome, err)
		}
		if a.Outcome == "failed" {
			if err := ignoreGone(o.tickets.SystemNote(tx, j.Ticket, failureNote(j), "delivery failed")); err != nil {
				return fmt.Errorf("note on ticket %d: %w", j.Ticket, err)
			}
		}
	}
	ev := audit.Event{
		Actor: "mailgate", Action: "mail.delivered", Object: fmt.Sprintf("ticket/%d", j.Ticket), Result: audit.OK,
		Detail: fmt.Sprintf("message=%d job=%d attempts=%d delivered=%d", j.Seq, j.ID, j.Attempts, len(j.Sent)),
	}
	if a.Outcome == "failed" {
		ev.Action, ev.Result = "mail.failed", audit.Failed
		ev.Detail += fmt.Sprintf(" failed=%d: %s", len(j.Failed), j.Failed[len(j.Failed)-1].Reason)
	}
	return o.audit.AppendTx(tx, ev)
}

// failureNote is the internal note agents read on the ticket.
func failureNote(j *job) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Message %d could not be delivered to:\n", j.Seq)
	for _, f := range j.Failed {
		fmt.Fprintf(&b, "  %s: %s\n", f.Rcpt, f.Reason)
	}
	if len(j.Sent) > 0 {
		fmt.Fprintf(&b, "It was delivered to: %s\n", strings.Join(j.Sent, ", "))
	}
	b.WriteString("Check the address with the customer, or write to them another way.")
	return b.String()
}

func ignoreGone(err error) error {
	if errors.Is(err, tickets.ErrNotFound) || errors.Is(err, store.ErrScopeDestroyed) {
		return nil // the ticket was deleted meanwhile; the queue still finishes
	}
	return err
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	s := strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, err.Error())
	if len(s) > maxErrText {
		s = s[:maxErrText] + "…"
	}
	return s
}
