package app

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/outbox"
	"github.com/walletguard/walletguard/rules"
)

// bareApp is an App with only what the pipeline's manual-action and
// takeover steps use: a processor on the built-in rules, the alert queue,
// metrics and a silent log — no broker, store or HTTP.
func bareApp(t *testing.T, cfg config.Config) *App {
	t.Helper()
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &App{cfg: cfg, proc: NewProcessor(cfg, set, nil, slog.New(slog.DiscardHandler)), alertQ: newQueue[alerts.Alert](),
		amet: newAppMetrics(prometheus.NewRegistry()), log: slog.New(slog.DiscardHandler)}
}

// A manual action made on the owner lands on a standby between the same
// events as on the owner: not before the standby has followed the events
// the owner had handled when it was made, and only once however often it
// is read (a restart reads the topic again from its start).
func TestManualActionIsAdoptedAtItsPlace(t *testing.T) {
	cfg := config.Default()
	owner := bareApp(t, cfg).proc
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ch := owner.Planner.Freeze("acc-1", "support agent", "customer reported the phone stolen", now)
	owner.Planner.MarkManual("acc-1", now)
	rec, err := owner.Planner.Record("acc-1")
	if err != nil {
		t.Fatal(err)
	}
	act := manualAction{AccountID: "acc-1", At: now, Record: rec, Audit: ch.Audit,
		After: map[string]map[int]int64{"wallet.events": {0: 120, 1: 80}}}

	a := bareApp(t, cfg)
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

// While a manual action has not reached Kafka, offsets are committed no
// further than where it was made: a standby follows only what is
// committed, so it cannot pass the place of a change it has not read.
func TestCommitsWaitForManualActions(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "wg.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	box, err := outbox.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	a := &App{cfg: config.Default(), box: box, log: slog.New(slog.DiscardHandler)}
	if caps := a.commitCaps(); caps != nil {
		t.Fatalf("caps with nothing waiting: %v", caps)
	}
	put := func(id string, after map[string]map[int]int64) {
		b, _ := gojson.Marshal(&manualAction{AccountID: id, At: time.Now(), After: after})
		if err := db.Update(func(tx *bolt.Tx) error { return box.Put(tx, destActions, id, b, time.Now()) }); err != nil {
			t.Fatal(err)
		}
	}
	put("acc-1", map[string]map[int]int64{"wallet.events": {0: 500, 1: 40}})
	put("acc-2", map[string]map[int]int64{"wallet.events": {0: 450, 1: 90}})
	caps := a.commitCaps()
	if caps["wallet.events"][0] != 450 || caps["wallet.events"][1] != 40 {
		t.Errorf("caps %v, want the lowest place per partition: 450 and 40", caps)
	}
	// Delivered, they hold nothing back.
	if err := db.Update(func(tx *bolt.Tx) error { _, err := box.Drain(tx, destActions); return err }); err != nil {
		t.Fatal(err)
	}
	if caps := a.commitCaps(); caps != nil {
		t.Errorf("caps once delivered: %v", caps)
	}
}

// An alert acknowledged on the owner, adopted by a following standby, is
// delivered again on takeover as support left it: not reopened with the
// version the standby learned before the acknowledgement.
func TestTakeoverDeliversAdoptedAlertChange(t *testing.T) {
	a := bareApp(t, config.Default())
	now := time.Now()
	raised := a.proc.Alerts.Raise("merchant_outage:m-17", "merchant_outage", "high", "", "merchant m-17 failing 64% of payments", now, nil)
	if len(raised) != 1 {
		t.Fatalf("raised %d alerts, want 1", len(raised))
	}
	a.learnAlerts(raised, eventPlace{"wallet.events", 0, 9}, now)

	a.manualIn = append(a.manualIn, manualAction{At: now.Add(time.Second),
		Alert: &alertChange{ID: raised[0].AlertID, Verb: "ack", Actor: "support agent"},
		After: map[string]map[int]int64{"wallet.events": {0: 10}}})
	a.manualWaiting.Store(true)
	a.adoptManual(map[string]map[int]int64{"wallet.events": {0: 10}})

	a.redeliverLearned(now.Add(2 * time.Second))
	got := a.alertQ.take()
	if len(got) != 1 || got[0].Status != "acknowledged" || got[0].AcknowledgedBy != "support agent" {
		t.Fatalf("delivered again on takeover: %+v, want the alert acknowledged by support agent", got)
	}
}

// An admin's reset of the freeze-storm breaker on the owner closes the
// breaker a standby opened by following the same freezes, at the same
// place; read again later (a restart), it does not close the breaker a new
// flood opened since.
func TestBreakerResetFollows(t *testing.T) {
	cfg := config.Default()
	cfg.Enforce.Breaker.MaxFreezes = 2
	a := bareApp(t, cfg)
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	flood := func(prefix string, at time.Time) {
		for i := range 4 {
			d := detector.Decision{DecisionID: fmt.Sprintf("d-%s-%d", prefix, i), AccountID: fmt.Sprintf("%s-%d", prefix, i), TS: at, Action: rules.ActionFreeze,
				Score: 95, Rules: []detector.Hit{{ID: "broken_rule", Score: 95, Action: "freeze"}}}
			a.proc.Planner.Plan(&d, nil)
		}
	}
	flood("a", t0)
	if !a.proc.Planner.Breaker().Open {
		t.Fatal("breaker not open after a flood over the limit")
	}
	reset := manualAction{BreakerReset: true, At: t0.Add(time.Minute),
		Audit: []enforce.AuditEntry{{At: t0.Add(time.Minute), Action: "breaker_reset", Origin: "manual", Actor: "risk admin", Reason: "rule fixed"}},
		After: map[string]map[int]int64{"wallet.events": {0: 50}}}
	receive := func() {
		a.manualIn = append(a.manualIn, reset)
		a.manualWaiting.Store(true)
	}
	receive()
	a.adoptManual(map[string]map[int]int64{"wallet.events": {0: 49}})
	if !a.proc.Planner.Breaker().Open {
		t.Fatal("breaker closed before the standby reached the place of the reset")
	}
	a.adoptManual(map[string]map[int]int64{"wallet.events": {0: 50}})
	if a.proc.Planner.Breaker().Open {
		t.Fatal("the owner's reset did not close the standby's breaker")
	}
	if got := a.proc.Planner.PendingAudit(""); len(got) == 0 || got[0].Actor != "risk admin" { // newest first
		t.Errorf("audit after adopting the reset: %+v", got)
	}

	flood("b", t0.Add(2*time.Hour))
	receive()
	a.adoptManual(map[string]map[int]int64{"wallet.events": {0: 90}})
	if !a.proc.Planner.Breaker().Open {
		t.Error("the old reset, read again, closed the breaker a later flood opened")
	}
}
