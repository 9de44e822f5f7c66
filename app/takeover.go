package app

import (
	"time"

	"github.com/walletguard/walletguard/alerts"
)

// A following standby learns of the owner's alerts as it folds the owner's
// events into its own state, but it delivers none of them: they are the
// owner's, and went into the owner's outbox. If the owner dies while a
// receiver is down, those alerts wait in its outbox until its volume is
// started again. So the standby keeps what it learned in the last
// alerts.takeover_redeliver, and when it takes the partitions over it puts
// the latest version of each into its own outbox: support may get an alert
// twice (receivers deduplicate by alert_id), never not at all.

// learnedMax bounds the alerts kept, whatever the window: a flood of
// alerts (a credential-stuffing wave over a hundred thousand accounts)
// keeps its most recent ones.
const learnedMax = 100_000

type learnedAlert struct {
	at    time.Time // wall clock, when followed
	alert alerts.Alert
}

// learnAlerts keeps the alert records the owner wrote for an event this
// standby followed. Pipeline only.
func (a *App) learnAlerts(list []alerts.Alert, now time.Time) {
	window := a.cfg.Alerts.TakeoverRedeliver.D()
	if window <= 0 || len(list) == 0 {
		return
	}
	for i := range list {
		a.learned = append(a.learned, learnedAlert{at: now, alert: list[i]})
	}
	drop := 0
	for drop < len(a.learned) && (now.Sub(a.learned[drop].at) > window || len(a.learned)-drop > learnedMax) {
		drop++
	}
	// Appending moves what is kept to a new array when this one is full,
	// so the dropped head is not held for long.
	a.learned = a.learned[drop:]
}

// relearnAlert keeps al's new version, made by hand on the owner, if the
// standby would deliver the alert again on taking over: support then gets
// it as they left it, not reopened as it was before they acknowledged or
// resolved it. Pipeline only.
func (a *App) relearnAlert(al alerts.Alert, now time.Time) {
	for i := range a.learned {
		if a.learned[i].alert.AlertID == al.AlertID {
			a.learnAlerts([]alerts.Alert{al}, now)
			return
		}
	}
}

// redeliverLearned queues, once the standby owns partitions, the latest
// version of every alert it learned of within the window, for the next
// checkpoint to put in the outbox. Pipeline only.
func (a *App) redeliverLearned(now time.Time) {
	window := a.cfg.Alerts.TakeoverRedeliver.D()
	latest := map[string]int{}
	var list []alerts.Alert
	for _, l := range a.learned {
		if now.Sub(l.at) > window {
			continue
		}
		if i, ok := latest[l.alert.AlertID]; ok {
			list[i] = l.alert
			continue
		}
		latest[l.alert.AlertID] = len(list)
		list = append(list, l.alert)
	}
	a.learned = nil
	if len(list) == 0 {
		return
	}
	a.alertQ.add(list)
	a.amet.alertsRedelivered.Add(float64(len(list)))
	a.log.Info("took the partitions over: delivering again the alerts learned by following, which the previous owner may not have delivered; receivers deduplicate by alert_id",
		"alerts", len(list), "within", window)
}
