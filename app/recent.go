package app

import (
	"sync"

	"github.com/walletguard/walletguard/api"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/event"
)

// recentDecisions keeps the newest decisions that fired a rule, with the
// event behind each, for the API and the console's timelines, in a
// fixed-size ring.
type recentDecisions struct {
	mu   sync.Mutex
	ring []api.TimelineEntry
	next int
	full bool
}

func newRecent(n int) *recentDecisions { return &recentDecisions{ring: make([]api.TimelineEntry, n)} }

// add records ds; ev, if given, is the event they decided.
func (r *recentDecisions) add(ds []detector.Decision, ev *event.Event) {
	if !anyFired(ds) {
		return // most events: no lock taken on the hot path
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range ds {
		if len(ds[i].Rules) == 0 && len(ds[i].Shadow) == 0 {
			continue
		}
		e := api.TimelineEntry{Decision: ds[i]}
		if ev != nil && ds[i].EventID == ev.EventID && ds[i].Trigger == "event" {
			e.Event = api.Brief(ev)
		}
		r.ring[r.next] = e
		r.next++
		if r.next == len(r.ring) {
			r.next, r.full = 0, true
		}
	}
}

// list returns up to limit entries, newest first, that match keep.
func (r *recentDecisions) list(limit int, keep func(*detector.Decision) bool) []api.TimelineEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []api.TimelineEntry
	n := r.next
	if r.full {
		n = len(r.ring)
	}
	for i := 0; i < n && len(out) < limit; i++ {
		j := (r.next - 1 - i + len(r.ring)) % len(r.ring)
		if keep(&r.ring[j].Decision) {
			out = append(out, r.ring[j])
		}
	}
	return out
}

func anyFired(ds []detector.Decision) bool {
	for i := range ds {
		if len(ds[i].Rules) > 0 || len(ds[i].Shadow) > 0 {
			return true
		}
	}
	return false
}
