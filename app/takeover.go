package app

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	gojson "github.com/goccy/go-json"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
)

// A following standby learns of the owner's alerts and commands as it
// folds the owner's events into its own state, but it delivers none of
// them: they are the owner's, and went into the owner's outbox. If the
// owner dies while a receiver is down, they wait in its outbox until its
// volume is started again. So the standby keeps what it learned in the
// last alerts.takeover_redeliver, and when it takes the partitions over it
// puts the latest version of each alert, and each command for the account
// service, into its own outbox: support or the account service may get one
// twice (receivers deduplicate by id), never not at all.
//
// An owner that stops (a rolling restart, an upgrade) rather than dies
// gives its outbox a moment to deliver, and if nothing is left it says so
// on the actions topic before it leaves the group: a handover, naming the
// offsets of its last checkpoint, which it then commits. A standby taking
// over follows the events up to there instead of deciding them again, and
// delivers again none of the alerts it learned of from them — so a
// planned restart sends support nothing twice.

// learnedMax bounds the alerts and commands kept, whatever the window: a
// flood (a credential-stuffing wave over a hundred thousand accounts)
// keeps its most recent ones.
const learnedMax = 100_000

// learnedOutput is an alert, or with command set a command, the standby
// learned of.
type learnedOutput struct {
	at      time.Time // wall clock, when followed
	place   eventPlace
	alert   alerts.Alert
	command *enforce.Command
	// manual: the command of a manual action, which goes to the commands
	// topic through the outbox too (an automatic one is written with the
	// decisions, and decided again if it was not).
	manual bool
}

// eventPlace is the event an alert was raised for, as the standby
// followed it: a handover from the owner covers the alerts of the events
// before the offsets it names.
type eventPlace struct {
	topic     string
	partition int
	offset    int64
}

// before reports whether the event at p lies before the offset at names
// for its partition.
func (p eventPlace) before(at map[string]map[int]int64) bool {
	end, ok := at[p.topic][p.partition]
	return ok && p.offset < end
}

// learnAlerts keeps the alert records the owner wrote for the event at
// place, which this standby followed. Pipeline only.
func (a *App) learnAlerts(list []alerts.Alert, place eventPlace, now time.Time) {
	a.learnOutputs(list, nil, place, now)
}

// learnOutputs keeps the alert records and, with an account service to
// send them to, the commands the owner issued for the event at place.
// Pipeline only.
func (a *App) learnOutputs(list []alerts.Alert, cmds []enforce.Command, place eventPlace, now time.Time) {
	window := a.cfg.Alerts.TakeoverRedeliver.D()
	if a.cfg.Enforce.AccountService.URL == "" {
		cmds = nil
	}
	if window <= 0 || len(list)+len(cmds) == 0 || a.handedOverBefore(place) {
		return
	}
	for i := range list {
		a.learned = append(a.learned, learnedOutput{at: now, place: place, alert: list[i]})
	}
	for _, c := range cmds {
		// A copy: cmds is the follower's scratch, reused for the next event.
		a.learned = append(a.learned, learnedOutput{at: now, place: place, command: &c})
	}
	a.trimLearned(now)
}

// trimLearned forgets what was learned longer ago than the window, and the
// oldest past learnedMax. Pipeline only.
func (a *App) trimLearned(now time.Time) {
	window := a.cfg.Alerts.TakeoverRedeliver.D()
	drop := 0
	for drop < len(a.learned) && (now.Sub(a.learned[drop].at) > window || len(a.learned)-drop > learnedMax) {
		drop++
	}
	// Appending moves what is kept to a new array when this one is full,
	// so the dropped head is not held for long.
	a.learned = a.learned[drop:]
}

// learnManualCommands keeps the commands of a manual action made on the
// owner, adopted at its place. Pipeline only.
func (a *App) learnManualCommands(act *manualAction, now time.Time) {
	window := a.cfg.Alerts.TakeoverRedeliver.D()
	if window <= 0 || len(act.Commands) == 0 || a.share != nil {
		// Members that share the partitions each deliver their own: a
		// partition's undelivered records move with its state (share.go).
		return
	}
	// Its place is just before where the owner stood when it made the
	// change: a handover from there on covers it.
	var place eventPlace
	if len(act.After) > 0 {
		t := slices.Min(slices.Collect(maps.Keys(act.After)))
		if ps := act.After[t]; len(ps) > 0 {
			p := slices.Min(slices.Collect(maps.Keys(ps)))
			place = eventPlace{t, p, ps[p] - 1}
		}
	}
	if a.handedOverBefore(place) {
		return
	}
	for _, c := range act.Commands {
		a.learned = append(a.learned, learnedOutput{at: now, place: place, command: &c, manual: true})
	}
	a.trimLearned(now)
}

// relearnAlert keeps al's new version, made by hand on the owner, if the
// standby would deliver the alert again on taking over: support then gets
// it as they left it, not reopened as it was before they acknowledged or
// resolved it. Pipeline only.
func (a *App) relearnAlert(al alerts.Alert, now time.Time) {
	for i := range a.learned {
		if a.learned[i].command == nil && a.learned[i].alert.AlertID == al.AlertID {
			a.learnAlerts([]alerts.Alert{al}, a.learned[i].place, now)
			return
		}
	}
}

// forgetDelivered drops the alerts learned from events before after: the
// owner handed over (stopped) with every alert of those events delivered.
// Pipeline only.
func (a *App) forgetDelivered(after map[string]map[int]int64) {
	n := len(a.learned)
	a.learned = slices.DeleteFunc(a.learned, func(l learnedOutput) bool { return l.place.before(after) })
	if n > len(a.learned) {
		a.log.Info("the previous owner handed over with its alerts and commands delivered: they are not delivered again",
			"forgotten", n-len(a.learned), "kept", len(a.learned))
	}
}

// readActions waits until the actions topic's reader has handed on every
// record the topic holds now, or ctx ends.
func (a *App) readActions(ctx context.Context) error {
	if at := a.actionsReadAt.Load(); at != 0 && time.Since(time.Unix(0, at)) < time.Second {
		return nil // read to its end just now: for the partitions of one rebalance, ask once
	}
	ends, err := ingest.EndOffsets(ctx, a.brokers, a.cfg.Kafka.ActionsTopic)
	if err != nil {
		return err
	}
	for {
		a.manualMu.Lock()
		done := true
		for p, end := range ends {
			if a.actionsRead[p] < end {
				done = false
			}
		}
		a.manualMu.Unlock()
		if done {
			a.actionsReadAt.Store(time.Now().UnixNano())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("read up to %v: %w", ends, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// handoverReadWait bounds how long an assignment waits for the actions
// topic to be read: the rebalance, and every partition's first fetch,
// wait with it.
const handoverReadWait = 2 * time.Second

// handedOver is the Source's HandedOver: the offset below which the
// previous owner handed the partition over with every output delivered,
// or -1 if it did not (it died), or this instance has not read it. The
// owner wrote it just before leaving the group, so the actions topic gets
// a moment to be read to its end first. A handover counts only if the
// group's committed offset is where it says the owner stopped: the owner
// committed exactly that as it left, and nothing was decided since — an
// older handover, or one whose owner could not commit, is not taken.
func (a *App) handedOver(topic string, partition int, committed int64) int64 {
	if a.cfg.Kafka.ActionsTopic == "" {
		a.amet.takeovers.WithLabelValues("no").Inc()
		return -1
	}
	a.awaitHandovers("deciding again from where following stopped")
	a.manualMu.Lock()
	defer a.manualMu.Unlock()
	o, ok := a.handoverAt[topic][partition]
	if !ok || o != committed {
		delete(a.handedOverTo[topic], partition)
		a.amet.takeovers.WithLabelValues("no").Inc()
		return -1
	}
	a.amet.takeovers.WithLabelValues("yes").Inc()
	if a.handedOverTo == nil {
		a.handedOverTo = map[string]map[int]int64{}
	}
	if a.handedOverTo[topic] == nil {
		a.handedOverTo[topic] = map[int]int64{}
	}
	a.handedOverTo[topic][partition] = o
	return o
}

// awaitHandovers waits up to handoverReadWait for the actions topic to be
// read to its end, so that a handover written there is known at takeover;
// if it is not, it logs that, and instead what happens.
func (a *App) awaitHandovers(instead string) {
	ctx, cancel := context.WithTimeout(context.Background(), handoverReadWait)
	defer cancel()
	if err := a.readActions(ctx); err != nil {
		a.log.Warn("actions topic not read to its end at takeover; "+instead, "err", err)
	}
}

// noteHandover keeps where a handover says the owner stopped, per
// partition, the furthest of all read. Called with manualMu held.
func (a *App) noteHandover(act *manualAction) {
	if a.handoverAt == nil {
		a.handoverAt = map[string]map[int]int64{}
	}
	for t, ps := range act.After {
		if a.handoverAt[t] == nil {
			a.handoverAt[t] = map[int]int64{}
		}
		for p, o := range ps {
			a.handoverAt[t][p] = max(a.handoverAt[t][p], o)
		}
	}
}

// takeOver, once the standby owns partitions (with their starts chosen),
// forgets the learned alerts a handover it took covers and delivers the
// rest again. What it follows after, up to where the old owner stopped, is
// not learned (handedOverBefore). It also puts in its outbox what the
// previous owner's still held, if restored from the changelog. Pipeline
// only.
func (a *App) takeOver() {
	a.manualMu.Lock()
	taken := a.handedOverTo
	a.manualMu.Unlock()
	a.forgetDelivered(taken)
	a.redeliverLearned(time.Now())
	a.deliverOwed()
}

// takeoverDue reports whether the instance has just come to own
// partitions with something of the previous owner's to deliver. Pipeline
// only.
func (a *App) takeoverDue() bool {
	if a.learned == nil && a.owed == nil || a.source == nil {
		return false
	}
	if a.source.Ready() {
		return true
	}
	if a.owed != nil && a.source.Standby() {
		// Another instance owns the partitions and delivers its own
		// outbox: what it owed when the state was restored is its to send.
		a.log.Info("standing by: the outbox records restored from the changelog are the owner's to deliver", "records", len(a.owed.records))
		a.owed = nil
	}
	return false
}

// owedOutbox is what a restored state's owner still had to deliver: the
// outbox records the changelog held at its marker, in outbox order.
type owedOutbox struct {
	records []owedRecord
	offsets detector.Offsets // where the state was taken
}

type owedRecord struct {
	dest   string
	stored []byte // as outbox.Box.EachPending gives it
}

// deliverOwed puts in the outbox, on taking partitions over, the records
// the previous owner's outbox held when the restored state was taken —
// alerts to support, commands to the account service, manual actions —
// unless that owner handed over past them, delivered. Receivers drop by
// id what it delivered after its last checkpoint. Pipeline only.
func (a *App) deliverOwed() {
	o := a.owed
	a.owed = nil
	if o == nil || len(o.records) == 0 {
		return
	}
	if a.handedOverPast(o.offsets) {
		a.log.Info("the previous owner handed over with its outbox delivered: the records restored are not delivered again", "records", len(o.records))
		return
	}
	known := map[string]bool{}
	for _, d := range a.outboxDests() {
		known[d] = true
	}
	put := map[string]int{}
	var skipped []string
	a.writeMu.Lock()
	err := a.store.DB().Update(func(tx *bolt.Tx) error {
		for _, r := range o.records {
			if !known[r.dest] {
				skipped = append(skipped, r.dest)
				continue
			}
			if err := a.box.PutStored(tx, r.dest, r.stored); err != nil {
				return err
			}
			put[r.dest]++
		}
		return nil
	})
	a.writeMu.Unlock()
	if err != nil {
		a.log.Error("the previous owner's undelivered records, restored from the changelog, not put in the outbox", "records", len(o.records), "err", err)
		return
	}
	if len(skipped) > 0 {
		slices.Sort(skipped)
		a.log.Warn("restored outbox records for destinations this instance does not have left out (check alerts.webhooks, enforce.account_service, kafka.actions_topic)",
			"records", len(skipped), "destinations", slices.Compact(skipped))
	}
	for dest, n := range put {
		a.amet.outboxRestored.WithLabelValues(dest).Add(float64(n))
		a.box.Notify(dest)
	}
	if len(put) > 0 {
		a.log.Info("took the partitions over: delivering what the previous owner's outbox held at its last checkpoint, restored from the changelog; receivers deduplicate by id",
			"destinations", put)
	}
}

// outboxDests are the outbox destinations this instance delivers to.
func (a *App) outboxDests() []string {
	dests := []string{destCommands}
	if a.cfg.Kafka.ActionsTopic != "" {
		dests = append(dests, destActions)
	}
	if a.cfg.Enforce.AccountService.URL != "" {
		dests = append(dests, destAccountService)
	}
	digests := hasRateLimit(a.cfg.Alerts.Webhooks)
	for _, w := range a.cfg.Alerts.Webhooks {
		dests = append(dests, alertDest(w.Name))
		if digests {
			dests = append(dests, digestDest(w.Name))
		}
	}
	return dests
}

// handedOverBefore reports whether a handover taken with the partition
// covers the event at place: the alerts of the events the new owner
// follows up to where the old one stopped went out already.
func (a *App) handedOverBefore(place eventPlace) bool {
	a.manualMu.Lock()
	defer a.manualMu.Unlock()
	return place.before(a.handedOverTo)
}

// redeliverLearned queues, once the standby owns partitions, the latest
// version of every alert it learned of within the window, for the next
// checkpoint to put in the outbox, and puts the commands there. Pipeline
// only.
func (a *App) redeliverLearned(now time.Time) {
	window := a.cfg.Alerts.TakeoverRedeliver.D()
	latest := map[string]int{}
	var list []alerts.Alert
	var cmds []learnedOutput
	for _, l := range a.learned {
		if now.Sub(l.at) > window {
			continue
		}
		if l.command != nil {
			cmds = append(cmds, l)
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
	a.redeliverCommands(cmds)
	if len(list) == 0 {
		return
	}
	a.alertQ.add(list)
	a.amet.alertsRedelivered.Add(float64(len(list)))
	a.log.Info("took the partitions over: delivering again the alerts learned by following, which the previous owner may not have delivered; receivers deduplicate by alert_id",
		"alerts", len(list), "within", window)
}

// redeliverCommands puts the commands learned by following in the outbox
// of the account service, in the order the owner issued them, and those
// of manual actions in the commands topic's too. A command learned twice
// (an event followed again after a restart) goes once.
func (a *App) redeliverCommands(cmds []learnedOutput) {
	if len(cmds) == 0 {
		return
	}
	svc := a.cfg.Enforce.AccountService.URL != ""
	seen := map[string]bool{}
	put := 0
	a.writeMu.Lock()
	err := a.store.DB().Update(func(tx *bolt.Tx) error {
		for _, l := range cmds {
			c := l.command
			if seen[c.CommandID] {
				continue
			}
			seen[c.CommandID] = true
			b, err := gojson.Marshal(c)
			if err != nil {
				return err
			}
			if l.manual {
				if err := a.box.Put(tx, destCommands, c.CommandID, b, time.Now()); err != nil {
					return err
				}
			}
			if svc {
				if err := a.box.Put(tx, destAccountService, c.CommandID, b, time.Now()); err != nil {
					return err
				}
			}
			put++
		}
		return nil
	})
	a.writeMu.Unlock()
	if err != nil {
		a.log.Error("commands learned by following not put in the outbox", "commands", len(seen), "err", err)
		return
	}
	a.box.Notify(destCommands)
	a.box.Notify(destAccountService)
	a.amet.commandsRedelivered.Add(float64(put))
	a.log.Info("took the partitions over: delivering again the commands learned by following, which the previous owner may not have delivered; receivers deduplicate by command_id",
		"commands", put)
}

// handoverKey keys handovers in the actions topic.
const handoverKey = "system|handover"

// handOver is the owner's last step before it leaves the group on a
// graceful stop: the outbox gets until ctx ends to deliver every alert,
// digest, command and manual action; if it did, a handover record with
// the offsets handled tells a standby that none of the alerts it learned
// of before them need delivering again.
func (a *App) handOver(ctx context.Context) {
	durable := a.durable.Load()
	if a.cfg.Kafka.ActionsTopic == "" || a.source == nil || !a.source.Ready() || durable == nil {
		return // a standby, or one that never checkpointed: nothing of its own to hand over
	}
	if hasRateLimit(a.cfg.Alerts.Webhooks) {
		a.sendDigests() // held alerts go out now, as a digest, rather than wait for the next start
	}
	dests := a.outboxDests()
	a.notifyReceivers()
	left := func() (n int) {
		for _, d := range dests {
			p, _ := a.box.Pending(d)
			n += p
		}
		return n
	}
	for left() > 0 {
		select {
		case <-ctx.Done():
			a.log.Warn("stopping with deliveries pending: a standby that takes over delivers again the alerts it learned of, and the rest go out at this instance's next start",
				"pending", left())
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Up to the last checkpoint written, not the events handled: if the
	// final one failed, the alerts of the events after it are in no outbox,
	// and the standby must decide those events again.
	act := manualAction{Handover: true, At: time.Now().UTC(), After: cloneOffsets(*durable)}
	b, err := json.Marshal(&act)
	if err == nil {
		err = a.producer.Write(ctx, "actions", []ingest.Message{{Topic: a.cfg.Kafka.ActionsTopic, Key: []byte(handoverKey), Value: b}})
	}
	if err != nil {
		a.log.Warn("handover not written: a standby that takes over delivers again the alerts it learned of", "err", err)
		return
	}
	a.log.Info("handed over: every alert, command and manual action delivered; a standby taking over will not deliver these alerts again")
}
