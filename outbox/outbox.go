// Package outbox owns durable, at-least-once delivery to the outside world:
// a record is written into the embedded store in the same transaction as the
// state change behind it, and a worker per destination sends records in
// order, retrying with exponential backoff and jitter until the receiver
// takes them (or, if the destination says so, gives up after an age and
// keeps them in a dead-letter list). A slow or dead receiver delays only its
// own destination. Records keep their id across retries, so receivers can
// drop repeats.
package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketPending = []byte("outbox")
	bucketDead    = []byte("outbox_dead")
)

// Item is one record to deliver.
type Item struct {
	ID      string          `json:"id"`
	Payload json.RawMessage `json:"payload"`
	AddedAt time.Time       `json:"added_at"`
	// Filled in on the dead-letter list.
	Attempts  int       `json:"attempts,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	GaveUpAt  time.Time `json:"gave_up_at,omitzero"`
	Dest      string    `json:"destination,omitempty"`
}

// Box is the outbox of one bbolt database.
type Box struct {
	db       *bolt.DB
	mu       sync.Mutex
	wake     map[string]chan struct{}
	onDead   func(key, stored []byte)
	onChange func(key, stored []byte)
	// counts are the records each destination has, pending and dead:
	// counted once on Open, then kept as changes commit, so that metrics
	// do not read every record on each scrape — a receiver down for hours
	// leaves millions waiting.
	counts map[string]*tally
}

type tally struct{ pending, dead int }

// Open prepares the outbox buckets in db.
func Open(db *bolt.DB) (*Box, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPending, bucketDead} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open outbox: %w", err)
	}
	b := &Box{db: db, wake: map[string]chan struct{}{}, counts: map[string]*tally{}}
	err = db.View(func(tx *bolt.Tx) error {
		for _, bk := range []struct {
			name []byte
			dead bool
		}{{bucketPending, false}, {bucketDead, true}} {
			c := tx.Bucket(bk.name).Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				if dest, ok := KeyDest(k); ok {
					b.count(dest, bk.dead, 1)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open outbox: count records: %w", err)
	}
	return b, nil
}

// count adds n to dest's pending (or dead) records.
func (b *Box) count(dest string, dead bool, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.counts[dest]
	if t == nil {
		t = &tally{}
		b.counts[dest] = t
	}
	if dead {
		t.dead += n
	} else {
		t.pending += n
	}
}

// countOnCommit counts n more (or fewer) of dest's records once tx commits.
func (b *Box) countOnCommit(tx *bolt.Tx, dest string, dead bool, n int) {
	tx.OnCommit(func() { b.count(dest, dead, n) })
}

func key(dest string, seq uint64) []byte {
	k := make([]byte, len(dest)+1+8)
	copy(k, dest)
	binary.BigEndian.PutUint64(k[len(dest)+1:], seq)
	return k
}

// Put adds a record for dest inside the caller's transaction; call Notify
// after the transaction commits to wake the destination's worker at once.
func (b *Box) Put(tx *bolt.Tx, dest, id string, payload []byte, now time.Time) error {
	bk := tx.Bucket(bucketPending)
	if bk == nil {
		var err error
		if bk, err = tx.CreateBucketIfNotExists(bucketPending); err != nil {
			return err
		}
	}
	seq, err := bk.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(Item{ID: id, Payload: payload, AddedAt: now})
	if err != nil {
		return fmt.Errorf("outbox %s: encode %s: %w", dest, id, err)
	}
	k := key(dest, seq)
	if err := bk.Put(k, v); err != nil {
		return err
	}
	b.changedOnCommit(tx, k, v)
	b.countOnCommit(tx, dest, false, 1)
	return nil
}

// OnChange sets fn to be told of every record put (stored is its stored
// form, as EachPending gives it) and every record gone from the pending
// ones (stored is nil: delivered, given up on, or drained into a digest),
// once the change is committed: for a copy of what waits kept elsewhere
// (the changelog) without reading the whole outbox again. fn must not
// block; it runs on the committing goroutine.
func (b *Box) OnChange(fn func(key, stored []byte)) {
	b.mu.Lock()
	b.onChange = fn
	b.mu.Unlock()
}

func (b *Box) changeHook() func(key, stored []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.onChange
}

// changedOnCommit tells OnChange's fn of a change made in tx once tx commits.
func (b *Box) changedOnCommit(tx *bolt.Tx, k, v []byte) {
	if fn := b.changeHook(); fn != nil {
		tx.OnCommit(func() { fn(k, v) })
	}
}

// EachPending hands fn every record waiting for delivery, destination by
// destination and in order: its key (unique in this outbox, never reused)
// and its stored form, for a copy of the outbox kept elsewhere (the
// changelog). Both are valid only during the call.
func (b *Box) EachPending(fn func(key, stored []byte) error) error {
	return b.db.View(func(tx *bolt.Tx) error { return tx.Bucket(bucketPending).ForEach(fn) })
}

// KeyDest is the destination of a record key EachPending gave.
func KeyDest(key []byte) (string, bool) {
	i := len(key) - 9
	if i < 0 || key[i] != 0 {
		return "", false
	}
	return string(key[:i]), true
}

// CheckStored reports whether stored is a record as EachPending gives it.
func CheckStored(stored []byte) error {
	_, err := decodeStored(stored)
	return err
}

func decodeStored(stored []byte) (Item, error) {
	var it Item
	if err := json.Unmarshal(stored, &it); err != nil || it.ID == "" {
		return it, fmt.Errorf("outbox record unreadable: %v", err)
	}
	return it, nil
}

// PutStored adds, inside the caller's transaction, a record for dest in the
// stored form EachPending gave (of this outbox or another's): with its id
// and the time it was first added, behind the records waiting now.
func (b *Box) PutStored(tx *bolt.Tx, dest string, stored []byte) error {
	it, err := decodeStored(stored)
	if err != nil {
		return fmt.Errorf("outbox %s: %w", dest, err)
	}
	return b.Put(tx, dest, it.ID, it.Payload, it.AddedAt)
}

// Notify wakes dest's worker.
func (b *Box) Notify(dest string) {
	select {
	case b.wakeChan(dest) <- struct{}{}:
	default:
	}
}

func (b *Box) wakeChan(dest string) chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.wake[dest]
	if c == nil {
		c = make(chan struct{}, 1)
		b.wake[dest] = c
	}
	return c
}

// Drain removes and returns every pending record of dest inside the
// caller's transaction (a digest collects them into one).
func (b *Box) Drain(tx *bolt.Tx, dest string) ([]Item, error) {
	items, keys, err := pending(tx, dest)
	if err != nil {
		return nil, err
	}
	bk := tx.Bucket(bucketPending)
	for _, k := range keys {
		if err := bk.Delete(k); err != nil {
			return nil, err
		}
		b.changedOnCommit(tx, k, nil)
	}
	b.countOnCommit(tx, dest, false, -len(keys))
	return items, nil
}

// pending reads dest's waiting records, oldest first, and their keys.
func pending(tx *bolt.Tx, dest string) ([]Item, [][]byte, error) {
	prefix := append([]byte(dest), 0)
	var items []Item
	var keys [][]byte
	c := tx.Bucket(bucketPending).Cursor()
	for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
		var it Item
		if err := json.Unmarshal(v, &it); err != nil {
			return nil, nil, fmt.Errorf("outbox %s: %w", dest, err)
		}
		items = append(items, it)
		keys = append(keys, append([]byte(nil), k...))
	}
	return items, keys, nil
}

// Stats reports, per destination, the pending records, the oldest one's
// age and the dead-letter count: for metrics. It reads one record per
// destination with records waiting.
func (b *Box) Stats() map[string]DestStats {
	out := map[string]DestStats{}
	b.mu.Lock()
	for dest, t := range b.counts {
		out[dest] = DestStats{Pending: t.pending, Dead: t.dead}
	}
	b.mu.Unlock()
	now := time.Now()
	_ = b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketPending).Cursor()
		for dest, st := range out {
			if st.Pending == 0 {
				continue
			}
			var it Item
			if _, v := firstIn(c, dest); v != nil && json.Unmarshal(v, &it) == nil {
				st.OldestAge = now.Sub(it.AddedAt)
				out[dest] = st
			}
		}
		return nil
	})
	return out
}

// DestStats describe one destination's queue.
type DestStats struct {
	Pending, Dead int
	OldestAge     time.Duration
}

// Pending reports how many records wait for dest and when the oldest was added.
func (b *Box) Pending(dest string) (n int, oldest time.Time) {
	b.mu.Lock()
	if t := b.counts[dest]; t != nil {
		n = t.pending
	}
	b.mu.Unlock()
	if n > 0 {
		_ = b.db.View(func(tx *bolt.Tx) error {
			var it Item
			if _, v := firstIn(tx.Bucket(bucketPending).Cursor(), dest); v != nil && json.Unmarshal(v, &it) == nil {
				oldest = it.AddedAt
			}
			return nil
		})
	}
	return n, oldest
}

// firstIn is dest's oldest waiting record in c's bucket; nil if none.
func firstIn(c *bolt.Cursor, dest string) (k, v []byte) {
	prefix := append([]byte(dest), 0)
	if k, v = c.Seek(prefix); k == nil || !hasPrefix(k, prefix) {
		return nil, nil
	}
	return k, v
}

// Waiting returns the records still waiting for dest, oldest first.
func (b *Box) Waiting(dest string) ([]Item, error) {
	var items []Item
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		items, _, err = pending(tx, dest)
		return err
	})
	return items, err
}

// Dead lists records dest gave up on, oldest first (all destinations for "").
func (b *Box) Dead(dest string, limit int) []Item {
	var out []Item
	_ = b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDead).Cursor()
		prefix := []byte(nil)
		if dest != "" {
			prefix = append([]byte(dest), 0)
		}
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix) && len(out) < limit; k, v = c.Next() {
			var it Item
			if json.Unmarshal(v, &it) == nil {
				out = append(out, it)
			}
		}
		return nil
	})
	return out
}

func hasPrefix(k, p []byte) bool {
	return len(k) >= len(p) && string(k[:len(p)]) == string(p)
}

// RetryAfterError asks for the next attempt no sooner than After (an HTTP
// 429 or 503 with Retry-After).
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string { return fmt.Sprintf("%v (retry after %s)", e.Err, e.After) }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// PermanentError is a refusal that retrying cannot fix (a 400): the record
// goes to the dead-letter list at once.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Policy is how a destination retries.
type Policy struct {
	MinBackoff, MaxBackoff time.Duration
	// GiveUpAfter moves a record older than this to the dead-letter list
	// after a failed attempt; 0 retries for ever.
	GiveUpAfter time.Duration
	// Observe, if set, sees every attempt's outcome (for metrics and logs).
	Observe func(it *Item, attempt int, err error)
}

// Deliver sends dest's records in order with send until ctx ends.
func (b *Box) Deliver(ctx context.Context, dest string, send func(context.Context, *Item) error, p Policy) {
	if p.MinBackoff <= 0 {
		p.MinBackoff = 500 * time.Millisecond
	}
	if p.MaxBackoff < p.MinBackoff {
		p.MaxBackoff = 5 * time.Minute
	}
	wake := b.wakeChan(dest)
	attempt := 0
	var lastKey []byte
	for ctx.Err() == nil {
		k, it, err := b.first(dest)
		if err != nil || it == nil {
			select {
			case <-ctx.Done():
			case <-wake:
			case <-time.After(time.Second): // records put without Notify
			}
			continue
		}
		if string(k) != string(lastKey) {
			attempt, lastKey = 0, k
		}
		attempt++
		err = send(ctx, it)
		if p.Observe != nil {
			p.Observe(it, attempt, err)
		}
		if err == nil {
			if derr := b.remove(k, nil); derr != nil {
				// Delivered but not forgotten: it will be sent again, which
				// receivers tolerate (same id).
				sleep(ctx, p.MinBackoff)
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		var perm *PermanentError
		if errors.As(err, &perm) || p.GiveUpAfter > 0 && time.Since(it.AddedAt) > p.GiveUpAfter {
			it.Attempts, it.LastError, it.GaveUpAt, it.Dest = attempt, err.Error(), time.Now().UTC(), dest
			_ = b.remove(k, it)
			continue
		}
		wait := backoff(attempt, p.MinBackoff, p.MaxBackoff)
		var ra *RetryAfterError
		if errors.As(err, &ra) && ra.After > wait {
			wait = ra.After // the receiver knows best when it will be back
		}
		sleep(ctx, wait)
	}
}

// backoff is exponential with full jitter in its upper half, so that many
// workers retrying one receiver do not arrive together.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo << min(attempt-1, 20)
	if d > hi || d <= 0 {
		d = hi
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (b *Box) first(dest string) ([]byte, *Item, error) {
	var k []byte
	var it *Item
	err := b.db.View(func(tx *bolt.Tx) error {
		kk, v := firstIn(tx.Bucket(bucketPending).Cursor(), dest)
		if kk == nil {
			return nil
		}
		k = append([]byte(nil), kk...)
		it = &Item{}
		return json.Unmarshal(v, it)
	})
	return k, it, err
}

// remove deletes a pending record; with dead set, it moves it to the
// dead-letter list instead.
func (b *Box) remove(k []byte, dead *Item) error {
	var v []byte
	err := b.db.Update(func(tx *bolt.Tx) error {
		if dead != nil {
			var err error
			if v, err = json.Marshal(dead); err != nil {
				return err
			}
			if err := tx.Bucket(bucketDead).Put(k, v); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketPending).Delete(k); err != nil {
			return err
		}
		b.changedOnCommit(tx, k, nil)
		if dest, ok := KeyDest(k); ok {
			b.countOnCommit(tx, dest, false, -1)
			if dead != nil {
				b.countOnCommit(tx, dest, true, 1)
			}
		}
		return nil
	})
	if err == nil && v != nil {
		b.mu.Lock()
		fn := b.onDead
		b.mu.Unlock()
		if fn != nil {
			fn(k, v)
		}
	}
	return err
}

// OnDead sets fn to be told of every record moved to the dead-letter list,
// once the move is durable: its key and its dead-letter form, as EachDead
// gives them, for a copy kept elsewhere (the changelog). fn runs on the
// destination's delivery goroutine and must not block.
func (b *Box) OnDead(fn func(key, stored []byte)) {
	b.mu.Lock()
	b.onDead = fn
	b.mu.Unlock()
}

// EachDead hands fn every record on the dead-letter list: its key and its
// stored form, valid only during the call.
func (b *Box) EachDead(fn func(key, stored []byte) error) error {
	return b.db.View(func(tx *bolt.Tx) error { return tx.Bucket(bucketDead).ForEach(fn) })
}

// PruneDead deletes, in the caller's transaction, up to limit dead letters
// given up on before cut, telling gone each one's stored form; it returns
// how many it deleted.
func (b *Box) PruneDead(tx *bolt.Tx, cut time.Time, limit int, gone func(stored []byte)) (int, error) {
	dead := tx.Bucket(bucketDead)
	if dead == nil {
		return 0, nil
	}
	var old, vals [][]byte
	c := dead.Cursor()
	for k, v := c.First(); k != nil && len(old) < limit; k, v = c.Next() {
		var it Item
		// An unreadable letter is kept: support may still make it out.
		if json.Unmarshal(v, &it) == nil && !it.GaveUpAt.IsZero() && it.GaveUpAt.Before(cut) {
			old, vals = append(old, bytes.Clone(k)), append(vals, bytes.Clone(v))
		}
	}
	for i, k := range old {
		if err := dead.Delete(k); err != nil {
			return 0, err
		}
		if d, ok := KeyDest(k); ok {
			b.countOnCommit(tx, d, true, -1)
		}
		if gone != nil {
			gone(vals[i])
		}
	}
	return len(old), nil
}

// CheckDead reports whether stored is a dead letter as EachDead gives it.
func CheckDead(stored []byte) error {
	it, err := decodeStored(stored)
	if err == nil && it.Dest == "" {
		err = errors.New("dead letter names no destination")
	}
	return err
}

// AddDead adds to the dead-letter list, in the caller's transaction (of
// the box's database), the dead letters given (as EachDead gave them,
// of this outbox or another's) that it does not hold already; it returns
// how many it added.
func (b *Box) AddDead(tx *bolt.Tx, stored [][]byte) (int, error) {
	if len(stored) == 0 {
		return 0, nil
	}
	dead, err := tx.CreateBucketIfNotExists(bucketDead)
	if err != nil {
		return 0, err
	}
	pend, err := tx.CreateBucketIfNotExists(bucketPending)
	if err != nil {
		return 0, err
	}
	have := map[string]bool{}
	err = dead.ForEach(func(_, v []byte) error {
		have[string(v)] = true
		return nil
	})
	if err != nil {
		return 0, err
	}
	added := 0
	for _, v := range stored {
		if have[string(v)] {
			continue
		}
		it, err := decodeStored(v)
		if err != nil {
			return added, fmt.Errorf("outbox dead letter: %w", err)
		}
		// A key from the pending records' sequence: unique in this
		// outbox, whichever outbox the letter came from.
		seq, err := pend.NextSequence()
		if err != nil {
			return added, err
		}
		if err := dead.Put(key(it.Dest, seq), v); err != nil {
			return added, err
		}
		b.countOnCommit(tx, it.Dest, true, 1)
		have[string(v)] = true
		added++
	}
	return added, nil
}
