package app

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
)

// On taking over, a standby delivers again the latest version of each
// alert it followed within alerts.takeover_redeliver, and nothing older:
// support gets no stale copy of an alert that has changed since, and no
// burst of alerts from long ago.
func TestTakeoverRedeliversRecentAlertsOnce(t *testing.T) {
	cfg := config.Default()
	cfg.Alerts.TakeoverRedeliver = config.Duration(10 * time.Minute)
	a := &App{cfg: cfg, alertQ: newQueue[alerts.Alert](), amet: newAppMetrics(prometheus.NewRegistry()), log: slog.New(slog.DiscardHandler)}

	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	alert := func(id, status string) alerts.Alert { return alerts.Alert{AlertID: id, Status: status} }
	a.learnAlerts([]alerts.Alert{alert("old", "open")}, t0)
	a.learnAlerts([]alerts.Alert{alert("takeover", "open"), alert("stuck", "open")}, t0.Add(15*time.Minute))
	a.learnAlerts([]alerts.Alert{alert("takeover", "acknowledged")}, t0.Add(16*time.Minute))
	a.redeliverLearned(t0.Add(17 * time.Minute))

	got := map[string]string{}
	for _, al := range a.alertQ.take() {
		if _, dup := got[al.AlertID]; dup {
			t.Errorf("alert %s queued twice", al.AlertID)
		}
		got[al.AlertID] = al.Status
	}
	want := map[string]string{"takeover": "acknowledged", "stuck": "open"}
	if len(got) != len(want) || got["takeover"] != want["takeover"] || got["stuck"] != want["stuck"] {
		t.Errorf("delivered again %v, want %v", got, want)
	}

	// Taken over once, the standby owns: nothing is left to deliver again.
	a.redeliverLearned(t0.Add(18 * time.Minute))
	if left := a.alertQ.take(); len(left) != 0 {
		t.Errorf("a second takeover check delivered %d alerts again", len(left))
	}

	// With the window at 0 nothing is kept.
	a.cfg.Alerts.TakeoverRedeliver = 0
	a.learnAlerts([]alerts.Alert{alert("late", "open")}, t0.Add(20*time.Minute))
	if a.learned != nil {
		t.Errorf("kept %d alerts with takeover_redeliver 0", len(a.learned))
	}
}
