package app

import (
	dto "github.com/prometheus/client_model/go"

	"github.com/walletguard/walletguard/detector"
)

// Snapshot is a few headline numbers read from the daemon's own metrics.
type Snapshot struct {
	Consumed, Rejected, DeadLettered, Duplicates float64
	Lag                                          float64
	Decisions                                    map[string]float64 // by action
	Commands                                     map[string]float64
	Alerts                                       float64
}

// Consumed is Snapshot().Consumed without gathering every series: for a
// caller that polls it often (walletguard bench waits on it).
func (a *App) Consumed() float64 { return a.imet.ConsumedTotal() }

// Snapshot reads the headline numbers.
func (a *App) Snapshot() Snapshot {
	s := Snapshot{Decisions: map[string]float64{}, Commands: map[string]float64{}}
	mfs, err := a.reg.Gather()
	if err != nil {
		return s
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := value(m)
			switch mf.GetName() {
			case "walletguard_events_consumed_total":
				s.Consumed += v
			case "walletguard_events_rejected_total":
				s.Rejected += v
			case "walletguard_events_dead_lettered_total":
				s.DeadLettered += v
			case "walletguard_events_duplicate_total":
				s.Duplicates += v
			case "walletguard_consumer_lag":
				s.Lag += v
			case "walletguard_decisions_total":
				s.Decisions[label(m, "action")] += v
			case "walletguard_account_commands_total":
				s.Commands[label(m, "command")] += v
			case "walletguard_alerts_total":
				s.Alerts += v
			}
		}
	}
	return s
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// State counts what the detection state holds. It takes the pipeline's
// lock: call it before Run, or rarely.
func (a *App) State() detector.Stats {
	a.procMu.Lock()
	defer a.procMu.Unlock()
	return a.proc.Engine.Stats()
}
