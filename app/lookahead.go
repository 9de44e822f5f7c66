package app

import (
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/ingest"
)

// recordsAhead receives records up to two ahead of the one being handled
// and announces their events to the engine, which has their state loaded
// into the CPU cache meanwhile (detector.Engine.Prefetch). It only takes
// records already waiting: it never delays the one at hand.
type recordsAhead struct {
	in     <-chan ingest.Record
	engine *detector.Engine
	buf    [2]ingest.Record
	head   int
	n      int
	closed bool
}

// take returns the oldest record received ahead; got is false when none
// is, and ok false once the input has closed and all were taken.
func (r *recordsAhead) take() (rec ingest.Record, ok, got bool) {
	if r.n == 0 {
		return rec, false, r.closed
	}
	rec = r.buf[r.head]
	r.buf[r.head] = ingest.Record{}
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return rec, true, true
}

// fill receives the records already waiting, up to two, and announces
// them. Call it with the engine locked.
func (r *recordsAhead) fill() {
	for r.n < len(r.buf) && !r.closed {
		select {
		case rec, ok := <-r.in:
			if !ok {
				r.closed = true
				return
			}
			i := (r.head + r.n) % len(r.buf)
			r.buf[i] = rec
			r.n++
			if rec.Err == nil {
				r.engine.Prefetch(&r.buf[i].Event)
			}
		default:
			return
		}
	}
}
