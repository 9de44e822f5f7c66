package app

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/rules"
)

// A manual action made on the owner lands on a standby between the same
// events as on the owner: not before the standby has followed the events
// the owner had handled when it was made, and only once however often it
// is read (a restart reads the topic again from its start).
func TestManualActionIsAdoptedAtItsPlace(t *testing.T) {
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	owner := NewProcessor(cfg, set, nil, slog.New(slog.DiscardHandler))
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ch := owner.Planner.Freeze("acc-1", "support agent", "customer reported the phone stolen", now)
	owner.Planner.MarkManual("acc-1", now)
	rec, err := owner.Planner.Record("acc-1")
	if err != nil {
		t.Fatal(err)
	}
	act := manualAction{AccountID: "acc-1", At: now, Record: rec, Audit: ch.Audit,
		After: map[string]map[int]int64{"wallet.events": {0: 120, 1: 80}}}

	a := &App{cfg: cfg, proc: NewProcessor(cfg, set, nil, slog.New(slog.DiscardHandler)),
		amet: newAppMetrics(prometheus.NewRegistry()), log: slog.New(slog.DiscardHandler)}
	frozen := func() bool { st, _ := a.proc.Planner.Get("acc-1"); return st.Frozen }
	receive := func() {
		a.manualIn = append(a.manualIn, act)
		a.manualWaiting.Store(true)
	}

	receive()
	next := map[string]map[int]int64{"wallet.events": {0: 120, 1: 79}}
	a.adoptManual(next)
	if frozen() {
		t.Fatal("adopted before the standby followed partition 1 to where the owner was")
	}
	next["wallet.events"][1] = 80
	a.adoptManual(next)
	if !frozen() {
		t.Fatal("not adopted once the standby reached the owner's place")
	}
	if got := a.proc.Planner.PendingAudit("acc-1"); len(got) != 1 || got[0].Actor != "support agent" || got[0].Origin != "manual" {
		t.Errorf("audit trail after adopting: %+v, want the owner's manual freeze", got)
	}

	// Read again after support unfroze the account here: nothing changes.
	if _, err := a.proc.Planner.Unfreeze("acc-1", "support agent", "verified by phone", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	a.proc.Planner.MarkManual("acc-1", now.Add(time.Minute))
	receive()
	a.adoptManual(next)
	if frozen() {
		t.Error("an action read again undid a newer one")
	}
	if len(a.manualPending) != 0 {
		t.Errorf("%d actions left pending", len(a.manualPending))
	}
}
