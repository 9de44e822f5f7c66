package enforce

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are enforcement's Prometheus series; a nil *Metrics records nothing
// (replay, eval).
type Metrics struct {
	actions  *prometheus.CounterVec
	breaker  prometheus.Gauge
	verifies *prometheus.CounterVec
	lockouts prometheus.Counter
}

// NewMetrics registers enforcement's series.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		actions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_actions_total", Help: "Actions on accounts, by action and origin (auto: a decision; manual: an operator or a verified code).",
		}, []string{"action", "origin"}),
		breaker: f.NewGauge(prometheus.GaugeOpts{
			Name: "walletguard_freeze_breaker_open", Help: "1 while the freeze-storm breaker holds automatic freezes back (they become step-ups).",
		}),
		verifies: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_2fa_verifications_total", Help: "Two-factor code verifications by outcome.",
		}, []string{"outcome"}),
		lockouts: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_2fa_lockouts_total", Help: "Accounts whose two-factor verification was locked after wrong codes.",
		}),
	}
	for _, a := range []string{CmdFreeze, CmdRequire2FA} {
		m.actions.WithLabelValues(a, "auto")
	}
	for _, a := range []string{CmdFreeze, CmdUnfreeze, CmdClear2FA} {
		m.actions.WithLabelValues(a, "manual")
	}
	for _, o := range []string{"ok", "wrong", "replayed", "locked", "not_enrolled", "malformed"} {
		m.verifies.WithLabelValues(o)
	}
	return m
}

func (m *Metrics) action(a, origin string) {
	if m != nil {
		m.actions.WithLabelValues(a, origin).Inc()
	}
}

func (m *Metrics) breakerOpen(open bool) {
	if m == nil {
		return
	}
	if open {
		m.breaker.Set(1)
	} else {
		m.breaker.Set(0)
	}
}

func (m *Metrics) verify(outcome string) {
	if m != nil {
		m.verifies.WithLabelValues(outcome).Inc()
	}
}

func (m *Metrics) lockout() {
	if m != nil {
		m.lockouts.Inc()
	}
}
