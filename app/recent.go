package app

import (
	"sync"

	"github.com/walletguard/walletguard/detector"
)

// recentDecisions keeps the newest decisions that did something (or fired a
// rule) for the API, in a fixed-size ring.
type recentDecisions struct {
	mu   sync.Mutex
	ring []detector.Decision
	next int
	full bool
}

func newRecent(n int) *recentDecisions { return &recentDecisions{ring: make([]detector.Decision, n)} }

func (r *recentDecisions) add(ds []detector.Decision) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range ds {
		if len(ds[i].Rules) == 0 && len(ds[i].Shadow) == 0 {
			continue
		}
		r.ring[r.next] = ds[i]
		r.next++
		if r.next == len(r.ring) {
			r.next, r.full = 0, true
		}
	}
}

// list returns up to limit decisions, newest first, that match keep.
func (r *recentDecisions) list(limit int, keep func(*detector.Decision) bool) []detector.Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []detector.Decision
	n := r.next
	if r.full {
		n = len(r.ring)
	}
	for i := 0; i < n && len(out) < limit; i++ {
		j := (r.next - 1 - i + len(r.ring)) % len(r.ring)
		if keep(&r.ring[j]) {
			out = append(out, r.ring[j])
		}
	}
	return out
}
