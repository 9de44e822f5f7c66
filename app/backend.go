package app

import (
	"context"
	"sort"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/api"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

type backend struct{ a *App }

func (a *App) apiBackend() api.Backend { return backend{a} }

func (b backend) Ready() (bool, string) { return b.a.ready() }

func (b backend) Account(id string) api.Account {
	b.a.procMu.Lock()
	st, _ := b.a.proc.Planner.Get(id)
	b.a.procMu.Unlock()
	acc := api.Account{AccountID: id, Frozen: st.Frozen, FrozenReason: st.FrozenReason, StepUpRequired: st.StepUp,
		RiskScore: st.LastRiskScore, State: &st}
	acc.RecentDecisions = b.Decisions(id, 20)
	if acc.RecentDecisions == nil {
		acc.RecentDecisions = []detector.Decision{}
	}
	return acc
}

func (b backend) Decisions(accountID string, limit int) []detector.Decision {
	return b.a.recent.list(limit, func(d *detector.Decision) bool { return accountID == "" || d.AccountID == accountID })
}

func (b backend) Alerts(status string) []alerts.Alert {
	b.a.procMu.Lock()
	all := b.a.proc.Alerts.Open()
	b.a.procMu.Unlock()
	var out []alerts.Alert
	for _, a := range all {
		if status == "" || a.Status == status {
			out = append(out, a)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].UpdatedAt.After(out[j].UpdatedAt) })
	return out
}

func (b backend) Rules() *rules.Set { return b.a.proc.Engine.Rules() }

func (b backend) ReloadRules() (*rules.Set, error) { return b.a.ReloadRules() }

// Score decides on one event synchronously, through the same processor as
// the stream, and publishes its outputs like the stream does.
func (b backend) Score(ev *event.Event) (detector.Decision, error) {
	var out Outputs
	b.a.procMu.Lock()
	dup := b.a.proc.Handle(ev, &out)
	b.a.procMu.Unlock()
	if dup {
		return detector.Decision{}, &api.DuplicateError{EventID: ev.EventID}
	}
	msgs := b.a.appendOutputs(nil, &out)
	if err := b.a.producer.Write(context.Background(), "outputs", msgs); err != nil {
		return detector.Decision{}, err
	}
	b.a.recent.add(out.Decisions)
	return out.Decisions[0], nil
}
