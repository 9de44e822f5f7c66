package ingest

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultSkew is how far ahead in event time one partition's records may be
// handed on of another partition that still has records to hand on. What
// spans accounts — a merchant's or an app version's failure rate, an
// address's logins — is counted in windows of minutes across partitions;
// catching up on a backlog, a fetch of one partition holds hours of events,
// and reading them unaligned counts a merchant's windows out of order: an
// outage where there was none. A minute is small against those windows, and
// live partitions, read as they are written, are far closer than that.
const DefaultSkew = time.Minute

// maxHold bounds how long a record waits for other partitions: one whose
// fetches fail delays the others once by this much, then holds them back
// no more until it hands a record on again.
const maxHold = 5 * time.Second

// aligner keeps the partitions a Source hands on within skew of each other
// in event time. Each fetcher is a lane; a lane is behind while it holds a
// record or more records are known to follow (its last record was below the
// high watermark), and only lanes behind hold the others back. The lane
// with the oldest record never waits, so the partitions always move.
type aligner struct {
	skew    int64 // ns
	maxHold time.Duration
	waits   prometheus.Counter
	overdue prometheus.Counter

	// limit caches the newest event time (unix ns) that may go without
	// looking at the lanes: lanes lower it as they fall behind (lower), and
	// it is recomputed, under mu, whenever a record is over it.
	limit   atomic.Int64
	waiting atomic.Int32

	mu sync.Mutex
	// lanes is a slice, not a map: every record of a backlog walks it
	// while another lane waits.
	lanes []*lane
	wake  chan struct{}
}

// lane is one fetcher's place in event time.
type lane struct {
	at     atomic.Int64 // unix ns of the record held or last handed on; unknownAt before the first
	behind atomic.Bool
}

// unknownAt marks a lane that has records to hand on but has not fetched
// the first: every other lane waits for it.
const unknownAt = math.MinInt64

func newAligner(skew time.Duration, waits, overdue prometheus.Counter) *aligner {
	a := &aligner{skew: int64(skew), maxHold: maxHold, waits: waits, overdue: overdue, wake: make(chan struct{})}
	a.limit.Store(math.MaxInt64)
	return a
}

// join adds a lane that holds every other back until it learns where it
// is (handed, hold): fetchers of a generation join before any of them
// hands a record on. Nil on a nil aligner, as are all lanes then.
func (a *aligner) join() *lane {
	if a == nil {
		return nil
	}
	l := &lane{}
	l.at.Store(unknownAt)
	l.behind.Store(true)
	a.mu.Lock()
	a.lanes = append(a.lanes, l)
	a.recompute()
	a.mu.Unlock()
	return l
}

// leave removes a lane when its fetcher stops.
func (a *aligner) leave(l *lane) {
	if l == nil {
		return
	}
	a.mu.Lock()
	if i := slices.Index(a.lanes, l); i >= 0 {
		a.lanes = slices.Delete(a.lanes, i, i+1)
	}
	a.recompute()
	a.mu.Unlock()
}

// hold marks the lane as holding a record of event time t, and waits until
// it may be handed on: until no lane behind is more than skew older, ctx
// ends (false), or maxHold has passed.
func (a *aligner) hold(ctx context.Context, l *lane, t time.Time) bool {
	if l == nil {
		return true
	}
	ns := t.UnixNano()
	l.at.Store(ns)
	l.behind.Store(true)
	a.lower(ns)
	a.changed()
	if ns <= a.limit.Load() {
		return true
	}
	var timeout <-chan time.Time
	for {
		a.mu.Lock()
		// Counted as waiting before the lanes are read: a lane that moves
		// after this either sees the count and wakes us, or moved before
		// the read.
		a.waiting.Add(1)
		a.recompute()
		if ns <= a.limit.Load() {
			a.waiting.Add(-1)
			a.mu.Unlock()
			return true
		}
		wake := a.wake
		a.mu.Unlock()
		if timeout == nil {
			a.waits.Inc()
			timer := time.NewTimer(a.maxHold)
			defer timer.Stop()
			timeout = timer.C
		}
		select {
		case <-wake:
			a.waiting.Add(-1)
		case <-timeout:
			a.waiting.Add(-1)
			a.overdue.Inc()
			a.release(ns)
			return true
		case <-ctx.Done():
			a.waiting.Add(-1)
			return false
		}
	}
}

// handed marks the lane's record handed on; more says whether the
// partition had records after it when it was fetched.
func (a *aligner) handed(l *lane, more bool) {
	if l != nil && l.behind.Load() != more {
		l.behind.Store(more)
		if more {
			a.lower(l.at.Load())
		}
		a.changed()
	}
}

// lower brings limit down for a lane behind at ns, without the lock: the
// cached limit may lag the lanes upwards (a record then looks again, under
// the lock) but not downwards, or a partition falling behind after being
// caught up would not hold the others back.
func (a *aligner) lower(ns int64) {
	want := a.limitFor(ns)
	for {
		cur := a.limit.Load()
		if cur <= want || a.limit.CompareAndSwap(cur, want) {
			return
		}
	}
}

// changed wakes the waiting lanes, if any, after a lane moved.
func (a *aligner) changed() {
	if a.waiting.Load() == 0 {
		return
	}
	a.mu.Lock()
	a.recompute()
	a.mu.Unlock()
}

// release stops the lanes that held a record of time ns back past maxHold
// from holding anyone back until they hand a record on again.
func (a *aligner) release(ns int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range a.lanes {
		if at := l.at.Load(); l.behind.Load() && (at == unknownAt || at+a.skew < ns) {
			l.behind.Store(false)
		}
	}
	a.recompute()
}

// recompute sets limit from the lanes behind, and wakes the waiting lanes
// if it rose; a.mu held. A waiter looked at the limit under mu before it
// waited and only recompute raises it (lower only lowers), so a limit no
// higher than before frees none: waking them on every move of every lane
// cost a backlog more than decoding its records.
func (a *aligner) recompute() {
	oldest := int64(math.MaxInt64)
	for _, l := range a.lanes {
		if l.behind.Load() {
			oldest = min(oldest, l.at.Load())
		}
	}
	limit := int64(math.MaxInt64) // no lane behind
	if oldest != math.MaxInt64 {
		limit = a.limitFor(oldest)
	}
	if limit > a.limit.Swap(limit) {
		a.broadcast()
	}
}

// limitFor is the newest event time that may go while the oldest lane
// behind is at ns.
func (a *aligner) limitFor(ns int64) int64 {
	if ns == unknownAt {
		return unknownAt
	}
	return ns + a.skew
}

// broadcast wakes every waiting lane to look again; a.mu held.
func (a *aligner) broadcast() {
	close(a.wake)
	a.wake = make(chan struct{})
}
