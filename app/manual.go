package app

import (
	"context"
	"fmt"
	"maps"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/outbox"
)

// Manual actions follow to a standby. A standby learns from the event
// topics, and what support and the gateway change through the owner's API
// — an unfreeze, a manual freeze, a TOTP enrolment, a code, an alert
// acknowledged — is not in them. So the owner publishes each such change
// to kafka.actions_topic: the account's resulting state (its TOTP secret
// still sealed) or the alert's lifecycle call, and where the owner was in
// the event partitions when it made it. Every instance
// reads that topic whole; a standby adopts each change once its own
// following has reached the same place, so the change lands between the
// same events as on the owner, and after a takeover the new owner still
// knows it. An instance skips a change not newer than the account's last
// manual one (its own, or one adopted before a restart); alerts likewise.

// destActions carries manual actions to the actions topic.
const destActions = "actions"

// manualAction is a record of the actions topic.
type manualAction struct {
	AccountID string    `json:"account_id"`
	At        time.Time `json:"at"`
	// After: the owner had handled the event partitions up to these next
	// offsets (topic, partition) when it made the change.
	After  map[string]map[int]int64 `json:"after"`
	Record gojson.RawMessage        `json:"record,omitempty"`
	Audit  []enforce.AuditEntry     `json:"audit"`
	// Alert is set for an acknowledgement or resolution of an alert, which
	// the follower makes itself: its own copy of the alert is the owner's
	// up to that place.
	Alert *alertChange `json:"alert,omitempty"`
	// BreakerReset is set when an admin closed the freeze-storm breaker,
	// which the follower's breaker, having counted the same freezes, needs
	// at the same place.
	BreakerReset bool `json:"breaker_reset,omitempty"`
	// Commands are the account commands the change issued, which the
	// owner's outbox delivers: a standby that takes over delivers them
	// again (takeover.go), in case the owner died before it did.
	Commands []enforce.Command `json:"commands,omitempty"`
	// Handover is set when the owner stopped with its outbox delivered
	// (takeover.go): not a change, word that the alerts of the events
	// before After went out.
	Handover bool `json:"handover,omitempty"`
}

// breakerKey keys the breaker's resets in the actions topic.
const breakerKey = "system|freeze-breaker"

// subject names what act changes, as its key in the actions topic.
func (act *manualAction) subject() string {
	switch {
	case act.Alert != nil:
		return act.Alert.ID
	case act.BreakerReset:
		return breakerKey
	case act.Handover:
		return handoverKey
	}
	return act.AccountID
}

type alertChange struct {
	ID    string `json:"id"`
	Verb  string `json:"verb"` // ack or resolve
	Actor string `json:"actor"`
	Note  string `json:"note,omitempty"`
}

// publishManual puts a manual change — an account's new state, an alert's
// lifecycle call or the breaker's reset, as act says with its subject, time
// and audit entries — into the outbox for the actions topic, inside the
// transaction that saves it. The caller holds procMu.
func (a *App) publishManual(put func(dest, id string, payload []byte) error, act manualAction) error {
	key := act.subject()
	if a.cfg.Kafka.ActionsTopic == "" || key == "" {
		return nil
	}
	act.After = cloneOffsets(a.next)
	if act.AccountID != "" {
		rec, err := a.proc.Planner.Record(act.AccountID)
		if err != nil || rec == nil {
			return err
		}
		act.Record = rec
	}
	b, err := gojson.Marshal(&act)
	if err != nil {
		return fmt.Errorf("encode manual action on %s: %w", key, err)
	}
	return put(destActions, key+"/"+act.At.Format(time.RFC3339Nano), b)
}

// lifecycleChange is the alert change of an acknowledgement or resolution
// that produced al.
func lifecycleChange(al alerts.Alert) *alertChange {
	if al.Status == "resolved" {
		return &alertChange{ID: al.AlertID, Verb: "resolve", Actor: al.ResolvedBy, Note: al.Resolution}
	}
	return &alertChange{ID: al.AlertID, Verb: "ack", Actor: al.AcknowledgedBy}
}

// deliverManual runs the outbox worker of the actions topic, and the
// reader that hands its records to the pipeline, until ctx ends.
func (a *App) deliverManual(ctx context.Context) {
	topic := a.cfg.Kafka.ActionsTopic
	if topic == "" {
		return
	}
	go a.box.Deliver(ctx, destActions, func(ctx context.Context, it *outbox.Item) error {
		var m manualAction
		if err := gojson.Unmarshal(it.Payload, &m); err != nil {
			return &outbox.PermanentError{Err: fmt.Errorf("decode manual action %s: %w", it.ID, err)}
		}
		return a.producer.Write(ctx, "actions", []ingest.Message{{Topic: topic, Key: []byte(m.subject()), Value: it.Payload}})
	}, outbox.Policy{MinBackoff: 200 * time.Millisecond, MaxBackoff: 30 * time.Second, Observe: a.observeDelivery(destActions)})
	go ingest.Tail(ctx, a.brokers, topic, a.log, func(partition int, m kafka.Message) { a.received(partition, m.Offset, m.Value) })
}

// received takes a record of the actions topic, read at offset of
// partition, for the pipeline to weigh.
func (a *App) received(partition int, offset int64, value []byte) {
	var act manualAction
	err := gojson.Unmarshal(value, &act)
	a.manualMu.Lock()
	defer a.manualMu.Unlock()
	if a.actionsRead == nil {
		a.actionsRead = map[int]int64{}
	}
	a.actionsRead[partition] = offset + 1
	a.amet.manualRead.Inc()
	if err != nil || act.subject() == "" {
		a.log.Warn("manual action record not understood; skipped", "topic", a.cfg.Kafka.ActionsTopic, "partition", partition, "offset", offset, "err", err)
		return
	}
	if act.Handover {
		a.noteHandover(&act) // at once: a takeover under way asks for it
	}
	a.manualIn = append(a.manualIn, act)
	a.manualWaiting.Store(true)
}

// adoptManual applies the manual actions read so far whose place in the
// event partitions the pipeline has reached (next), in the order they were
// made. Pipeline only, with procMu held.
func (a *App) adoptManual(next map[string]map[int]int64) {
	if a.manualWaiting.Swap(false) {
		a.manualMu.Lock()
		a.manualPending = append(a.manualPending, a.manualIn...)
		a.manualIn = nil
		a.manualMu.Unlock()
	}
	kept := a.manualPending[:0]
	for _, act := range a.manualPending {
		if act.Handover {
			continue // weighed when a partition is taken over (takeover.go)
		}
		if !reached(next, act.After) {
			kept = append(kept, act)
			continue
		}
		// At its place, what it changes is here as the owner had it (an
		// alert raised just before, say), unless it is older.
		if !act.At.After(a.manualAt(&act)) {
			continue // made here, or adopted already
		}
		changed, err := a.adopt(&act)
		if err != nil {
			a.log.Error("manual action not adopted", "account", act.AccountID, "err", err)
			continue
		}
		if changed != nil {
			a.relearnAlert(*changed, time.Now())
		}
		a.learnManualCommands(&act, time.Now())
		a.amet.manualAdopted.Inc()
		for _, e := range act.Audit {
			a.log.Info("adopted a manual action made on the owner", "action", e.Action, "actor", e.Actor, "account", act.AccountID)
		}
	}
	clear(a.manualPending[len(kept):])
	a.manualPending = kept
}

// commitCaps are, per event partition, the lowest place of a manual action
// not yet in the actions topic: offsets are committed no further until it
// is, so a standby, which follows only what is committed, cannot pass the
// place of a change it has not yet read.
func (a *App) commitCaps() map[string]map[int]int64 {
	if a.cfg.Kafka.ActionsTopic == "" {
		return nil
	}
	items, err := a.box.Waiting(destActions)
	if err != nil {
		a.log.Error("manual actions waiting for Kafka not read; committing as far as handled", "err", err)
		return nil
	}
	var caps map[string]map[int]int64
	for _, it := range items {
		var act manualAction
		if gojson.Unmarshal(it.Payload, &act) != nil {
			continue
		}
		for t, ps := range act.After {
			for p, o := range ps {
				if caps == nil {
					caps = map[string]map[int]int64{}
				}
				if caps[t] == nil {
					caps[t] = map[int]int64{}
				}
				if c, ok := caps[t][p]; !ok || o < c {
					caps[t][p] = o
				}
			}
		}
	}
	return caps
}

// manualAt is when what act changes was last changed by hand here.
func (a *App) manualAt(act *manualAction) time.Time {
	if act.BreakerReset {
		return a.proc.Planner.BreakerResetAt()
	}
	if act.Alert != nil {
		al, ok := a.proc.Alerts.Get(act.Alert.ID)
		if !ok {
			return act.At // an alert this instance does not hold at the change's place: nothing to change
		}
		return al.ManualAt
	}
	st, _ := a.proc.Planner.Get(act.AccountID)
	return st.ManualAt
}

// adopt makes act's change here, and returns the alert it changed, if any.
func (a *App) adopt(act *manualAction) (*alerts.Alert, error) {
	if ch := act.Alert; ch != nil {
		var al alerts.Alert
		var err error
		if ch.Verb == "resolve" {
			al, err = a.proc.Alerts.Resolve(ch.ID, ch.Actor, ch.Note, act.At)
		} else {
			al, err = a.proc.Alerts.Ack(ch.ID, ch.Actor, act.At)
		}
		if err != nil {
			return nil, err
		}
		a.proc.Planner.KeepAudit(act.Audit)
		return &al, nil
	}
	if act.BreakerReset {
		a.proc.Planner.AdoptBreakerReset(act.At, act.Audit)
		return nil, nil
	}
	return nil, a.proc.Planner.Adopt(act.AccountID, act.Record, act.Audit)
}

// cloneOffsets copies next offsets by topic and partition.
func cloneOffsets(m map[string]map[int]int64) map[string]map[int]int64 {
	c := make(map[string]map[int]int64, len(m))
	for t, ps := range m {
		c[t] = maps.Clone(ps)
	}
	return c
}

// reached reports whether next is at or past every offset of after.
func reached(next, after map[string]map[int]int64) bool {
	for t, ps := range after {
		for p, o := range ps {
			if next[t][p] < o {
				return false
			}
		}
	}
	return true
}
