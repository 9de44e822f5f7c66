package detector

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/walletguard/walletguard/rules"
)

// Metrics are the detector's Prometheus series. Rule ids label the hit
// counter: they come from reviewed rule files, not from input, so they are
// bounded.
type Metrics struct {
	Decisions  *prometheus.CounterVec
	RuleHits   *prometheus.CounterVec
	RuleErrors prometheus.Counter
	State      *prometheus.GaugeVec
	Evicted    *prometheus.CounterVec
	Ruleset    *prometheus.GaugeVec
	Rules      prometheus.Gauge

	mu      sync.Mutex
	version string
	hits    map[*rules.Rule]prometheus.Counter
	// decisions caches the counters by action rank and trigger: a label
	// lookup per event costs more than the rest of the bookkeeping.
	decisions [4][2]prometheus.Counter
}

// NewMetrics registers the detector's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		Decisions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_decisions_total", Help: "Decisions made, by action and trigger (event or timer).",
		}, []string{"action", "trigger"}),
		RuleHits: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_rule_hits_total", Help: "Rule matches, by rule id and mode (enforce or shadow).",
		}, []string{"rule", "mode"}),
		RuleErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_rule_eval_errors_total", Help: "Rule evaluations that failed at run time (treated as no match).",
		}),
		State: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "walletguard_state_entries", Help: "Entries held in detection state, by kind.",
		}, []string{"kind"}),
		Evicted: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_state_evicted_total", Help: "Entries dropped from detection state because it was at capacity (detector.max_rows), by kind.",
		}, []string{"kind"}),
		Ruleset: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "walletguard_ruleset_info", Help: "The active rule set: 1 for its content-hash version.",
		}, []string{"version"}),
		Rules: f.NewGauge(prometheus.GaugeOpts{
			Name: "walletguard_rules_loaded", Help: "Rules in the active rule set.",
		}),
		hits: map[*rules.Rule]prometheus.Counter{},
	}
	for _, k := range evictionKinds {
		m.Evicted.WithLabelValues(k)
	}
	for i, a := range []string{rules.ActionAllow, rules.ActionReview, rules.ActionStepUp, rules.ActionFreeze} {
		m.decisions[i][0] = m.Decisions.WithLabelValues(a, "event")
		m.decisions[i][1] = m.Decisions.WithLabelValues(a, "timer")
	}
	return m
}

func (m *Metrics) setRules(s *rules.Set) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.version != "" {
		m.Ruleset.DeleteLabelValues(m.version)
	}
	m.version = s.Version
	m.Ruleset.WithLabelValues(s.Version).Set(1)
	m.Rules.Set(float64(len(s.Rules)))
	m.hits = make(map[*rules.Rule]prometheus.Counter, len(s.Rules))
	for _, r := range s.Rules {
		mode := "enforce"
		if r.Shadow {
			mode = "shadow"
		}
		m.hits[r] = m.RuleHits.WithLabelValues(r.ID, mode)
	}
}

func (m *Metrics) hit(r *rules.Rule) {
	m.mu.Lock()
	c := m.hits[r]
	m.mu.Unlock()
	if c != nil {
		c.Inc()
	}
}

func (m *Metrics) decided(d *Decision) {
	t := 0
	if d.Trigger == "timer" {
		t = 1
	}
	m.decisions[rules.ActionRank(d.Action)][t].Inc()
}
