package app

import (
	"slices"
	"sync"
	"time"

	"github.com/walletguard/walletguard/api"
	"github.com/walletguard/walletguard/detector"
)

// minuteStats counts events, decisions and rule hits per wall-clock minute
// for the last hour: the console's overview, drawn from the daemon itself.
type minuteStats struct {
	mu      sync.Mutex
	buckets [60]minuteBucket
	total   map[string]int // rule hits since start
}

type minuteBucket struct {
	minute    int64
	events    int
	decisions map[string]int
	rules     map[string]int
}

func (s *minuteStats) bucket(now time.Time) *minuteBucket {
	m := now.Unix() / 60
	b := &s.buckets[m%60]
	if b.minute != m {
		*b = minuteBucket{minute: m, decisions: map[string]int{}, rules: map[string]int{}}
	}
	return b
}

// add counts events and the decisions they produced.
func (s *minuteStats) add(now time.Time, events int, ds []detector.Decision) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total == nil {
		s.total = map[string]int{}
	}
	b := s.bucket(now)
	b.events += events
	for i := range ds {
		b.decisions[ds[i].Action]++
		for _, h := range ds[i].Rules {
			b.rules[h.ID]++
			s.total[h.ID]++
		}
	}
}

func (s *minuteStats) snapshot(now time.Time) api.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := api.Stats{RuleHitsTotal: map[string]int{}}
	hour := map[string]int{}
	cur := now.Unix() / 60
	for m := cur - 59; m <= cur; m++ {
		ms := api.MinuteStats{T: time.Unix(m*60, 0).UTC(), Decisions: map[string]int{}}
		if b := &s.buckets[m%60]; b.minute == m {
			ms.Events = b.events
			for k, v := range b.decisions {
				ms.Decisions[k] = v
			}
			for k, v := range b.rules {
				hour[k] += v
			}
		}
		st.Minutes = append(st.Minutes, ms)
	}
	for k, v := range hour {
		st.TopRules = append(st.TopRules, api.RuleHits{ID: k, Hits: v})
	}
	slices.SortFunc(st.TopRules, func(a, b api.RuleHits) int {
		if a.Hits != b.Hits {
			return b.Hits - a.Hits
		}
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	if st.TopRules == nil {
		st.TopRules = []api.RuleHits{}
	}
	for k, v := range s.total {
		st.RuleHitsTotal[k] = v
	}
	return st
}
