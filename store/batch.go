package store

import (
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// batcher is mailgate's group commit. Unlike bolt.DB.Batch it never waits on a timer: while one
// commit is being fsynced, newly arriving writers queue up, and the next commit takes all of them.
// Under load the batch grows by itself; a lone writer pays one commit and no delay.
type batcher struct {
	db       *DB
	onCommit func(batch int, took time.Duration)
	mu       sync.Mutex
	pending  []*call
	running  bool
}

type call struct {
	fn   func(*Tx) error
	done chan error
}

const maxBatch = 256

// errRetryAlone marks a batch that failed because of one call: the others are retried.
type retryAlone struct{ i int }

func (r retryAlone) Error() string { return fmt.Sprintf("batch call %d failed", r.i) }

func (b *batcher) do(fn func(*Tx) error) error {
	c := &call{fn: fn, done: make(chan error, 1)}
	b.mu.Lock()
	b.pending = append(b.pending, c)
	if !b.running {
		b.running = true
		go b.loop()
	}
	b.mu.Unlock()
	return <-c.done
}

// loop commits batches until nothing is pending.
func (b *batcher) loop() {
	for {
		b.mu.Lock()
		if len(b.pending) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		n := min(len(b.pending), maxBatch)
		calls := b.pending[:n:n]
		b.pending = append([]*call(nil), b.pending[n:]...)
		b.mu.Unlock()
		b.commit(calls)
	}
}

func (b *batcher) commit(calls []*call) {
	start, n := time.Now(), len(calls)
	for len(calls) > 0 {
		err := b.db.update(func(btx *bolt.Tx) error {
			for i, c := range calls {
				if err := b.db.run(btx, c.fn); err != nil {
					return retryAlone{i}
				}
			}
			return nil
		})
		var ra retryAlone
		if errors.As(err, &ra) {
			// Run the failing call on its own so it gets its own error, and the rest again together.
			bad := calls[ra.i]
			bad.done <- b.db.update(func(btx *bolt.Tx) error { return b.db.run(btx, bad.fn) })
			calls = append(calls[:ra.i:ra.i], calls[ra.i+1:]...)
			continue
		}
		// Report before the writers are released, so whoever waits for them sees the
		// commit counted (a deferred report raced with the callers' next step).
		if b.onCommit != nil {
			b.onCommit(n, time.Since(start))
		}
		for _, c := range calls {
			c.done <- err
		}
		return
	}
}
