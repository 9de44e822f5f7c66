package app

import (
	"context"
	"fmt"
	"time"

	gojson "github.com/goccy/go-json"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/outbox"
)

// Outbox destinations of account commands.
const (
	// destCommands carries manual commands to the account-commands topic
	// (automatic ones are produced with their decisions).
	destCommands = "commands"
	// destAccountService carries every command to the wallet's account
	// service, when one is configured.
	destAccountService = "account_service"
)

// apply makes a manual action durable before it is answered: the account's
// state, the audit entries, the commands (into the outbox, from which they
// reach Kafka and the account service) and any alerts, in one transaction.
// The caller holds procMu. changed are alert versions a lifecycle call made
// (acknowledged, resolved), saved and delivered like new ones.
func (a *App) apply(ch enforce.Change, changed ...alerts.Alert) error {
	now := time.Now()
	var out Outputs
	out.Alerts = append(out.Alerts, changed...)
	for _, sa := range ch.Alerts {
		out.Alerts = a.proc.Alerts.Raise(sa.Key, sa.Category, sa.Severity, sa.AccountID, sa.Reason, sa.At, out.Alerts)
	}
	if ch.AccountID != "" {
		a.proc.Planner.MarkManual(ch.AccountID, now)
	}
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	err := a.store.DB().Update(func(tx *bolt.Tx) error {
		if err := a.proc.Planner.SaveAccount(tx, ch.AccountID); err != nil {
			return err
		}
		put := func(dest, id string, payload []byte) error { return a.box.Put(tx, dest, id, payload, now) }
		act := manualAction{AccountID: ch.AccountID, At: now, Audit: ch.Audit, Commands: ch.Commands}
		if ch.BreakerReset {
			// Stamped as the breaker has it, so that reading it back here skips it.
			act.BreakerReset, act.At = true, a.proc.Planner.BreakerResetAt()
		}
		if err := a.publishManual(put, act); err != nil {
			return err
		}
		for _, al := range changed {
			if err := a.publishManual(put, manualAction{Alert: lifecycleChange(al), At: al.ManualAt, Audit: ch.Audit}); err != nil {
				return err
			}
		}
		var noted func([]byte)
		if a.clog != nil {
			noted = a.clog.noteAudit // under writeMu, as the changelog's hooks must be
		}
		if err := enforce.AppendAudit(tx, noted, ch.Audit...); err != nil {
			return err
		}
		if err := a.proc.Planner.ForwardPending(tx); err != nil {
			return err
		}
		for i := range ch.Commands {
			b, err := gojson.Marshal(&ch.Commands[i])
			if err != nil {
				return err
			}
			if err := a.box.Put(tx, destCommands, ch.Commands[i].CommandID, b, now); err != nil {
				return err
			}
			if a.cfg.Enforce.AccountService.URL != "" {
				if err := a.box.Put(tx, destAccountService, ch.Commands[i].CommandID, b, now); err != nil {
					return err
				}
			}
		}
		if len(out.Alerts) > 0 {
			if err := a.enqueueAlerts(tx, out.Alerts); err != nil {
				return err
			}
		}
		if len(out.Alerts) > 0 {
			return a.proc.Alerts.Save(tx)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save %s: %w", describeChange(ch), err)
	}
	if len(out.Alerts) > 0 {
		// Still under writeMu: no checkpoint write can come between the
		// outbox write above and this.
		a.direct.wrote(out.Alerts)
		a.alertQ.drop(a.direct.supersedes)
	}
	a.toSink(nil, nil, nil, out.Alerts, ch.Audit)
	a.countAlerts(out.Alerts)
	if len(out.Alerts) > 0 {
		a.notifyReceivers()
	}
	for _, c := range ch.Commands {
		a.amet.commands.WithLabelValues(c.Command).Inc()
	}
	if a.cfg.Kafka.ActionsTopic != "" {
		a.box.Notify(destActions) // a change with nothing to publish costs one look at an empty queue
	}
	if len(ch.Commands) > 0 {
		a.box.Notify(destCommands)
		a.box.Notify(destAccountService)
	}
	for _, e := range ch.Audit {
		a.log.Info("account action", "action", e.Action, "origin", e.Origin, "actor", e.Actor, "account", e.AccountID, "outcome", e.Outcome)
	}
	return nil
}

func describeChange(ch enforce.Change) string {
	if len(ch.Audit) > 0 {
		return ch.Audit[0].Action + " of " + ch.AccountID
	}
	return "change of " + ch.AccountID
}

// deliverCommands runs the outbox workers of account commands until ctx ends.
func (a *App) deliverCommands(ctx context.Context) {
	go a.box.Deliver(ctx, destCommands, func(ctx context.Context, it *outbox.Item) error {
		var c enforce.Command
		if err := gojson.Unmarshal(it.Payload, &c); err != nil {
			return &outbox.PermanentError{Err: fmt.Errorf("decode command %s: %w", it.ID, err)}
		}
		return a.producer.Write(ctx, "commands", []ingest.Message{{Topic: a.cfg.Kafka.CommandsTopic, Key: []byte(c.AccountID), Value: it.Payload}})
	}, outbox.Policy{MinBackoff: 200 * time.Millisecond, MaxBackoff: 30 * time.Second, Observe: a.observeDelivery(destCommands)})
	if svc := a.cfg.Enforce.AccountService; svc.URL != "" {
		p := &outbox.Poster{URL: svc.URL, Secret: svc.Secret, Client: a.receivers[destAccountService]}
		go a.box.Deliver(ctx, destAccountService, p.Send,
			// A freeze waits on the account service: once it is back, the
			// next attempt comes within half a minute (or when its
			// Retry-After says).
			outbox.Policy{MinBackoff: time.Second, MaxBackoff: 30 * time.Second, Observe: a.observeDelivery(destAccountService)})
	}
}

func (a *App) observeDelivery(dest string) func(*outbox.Item, int, error) {
	// From 0, so that the first record given up on is an increase.
	a.dlv.deliveries.WithLabelValues(dest, "dead")
	return func(it *outbox.Item, attempt int, err error) {
		if attempt > 1 {
			a.dlv.retries.WithLabelValues(dest).Inc()
		}
		if err == nil {
			a.dlv.deliveries.WithLabelValues(dest, "delivered").Inc()
			return
		}
		a.dlv.deliveries.WithLabelValues(dest, "failed").Inc()
		if attempt == 1 || attempt%10 == 0 {
			a.log.Warn("delivery failed; retrying", "destination", dest, "id", it.ID, "attempt", attempt, "err", err)
		}
	}
}
