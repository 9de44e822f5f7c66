package app

import (
	"context"
	"log/slog"
	"math"
	"sort"
	"sync/atomic"
	"time"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/api"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/outbox"
	"github.com/walletguard/walletguard/rules"
)

type backend struct{ a *App }

func (a *App) apiBackend() api.Backend { return backend{a} }

func (b backend) Ready() (bool, string) { return b.a.ready() }

func (b backend) Standby() (bool, string) {
	if b.a.stopping.Load() {
		return true, stoppingReason
	}
	if b.a.restoring.Load() {
		// A change now would go to the state being replaced.
		return true, restoringReason
	}
	if b.a.source == nil || !b.a.source.Standby() {
		return false, ""
	}
	return true, b.a.standbyReason()
}

// Owner looks the owner's advertised address up in the consumer group, at
// most every few seconds; "" when there is none, it advertised none, or it
// is this instance.
func (b backend) Owner() string {
	a := b.a
	if a.source == nil {
		return ""
	}
	return lookedUp(&a.ownerSeen, func(ctx context.Context) string {
		addr, _, err := ingest.GroupOwner(ctx, a.brokers, a.cfg.Kafka.GroupID)
		if err != nil {
			a.log.Warn("owner of the partitions not found; changes asked of this standby are refused", "err", err)
		}
		if addr == a.advertise() {
			addr = "" // this instance, stopping: the next owner is not known yet
		}
		return addr
	})
}

// ownerLookupEvery bounds how stale the addresses an instance passes
// requests on to may be (Owner, Peers): after a takeover or a rebalance
// the old ones refuse them.
const ownerLookupEvery = 3 * time.Second

// seenAt is a lookup in the consumer group and when it was made.
type seenAt[T any] struct {
	v  T
	at time.Time
}

// lookedUp returns the last lookup kept in last if it is recent enough,
// or looks again.
func lookedUp[T any](last *atomic.Pointer[seenAt[T]], look func(ctx context.Context) T) T {
	if l := last.Load(); l != nil && time.Since(l.at) < ownerLookupEvery {
		return l.v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	v := look(ctx)
	last.Store(&seenAt[T]{v: v, at: time.Now()})
	return v
}

// Decides: a member that shares the partitions decides the accounts whose
// detection rows it holds, which are those of its partitions (it drops the
// rest with the partitions it hands over).
func (b backend) Decides(accountID string) bool {
	a := b.a
	if a.share == nil {
		return true
	}
	a.procMu.Lock()
	p, ok := a.proc.Engine.AccountPartition(accountID)
	a.procMu.Unlock()
	if !ok {
		return false
	}
	a.share.mu.Lock()
	defer a.share.mu.Unlock()
	return a.share.decides(p)
}

// Peers looks the other sharing members up in the consumer group, at most
// every few seconds, as Owner does.
func (b backend) Peers() []string {
	a := b.a
	if a.share == nil {
		return nil
	}
	return lookedUp(&a.peersSeen, func(ctx context.Context) []string {
		members, err := ingest.SharingMembers(ctx, a.brokers, a.cfg.Kafka.GroupID)
		if err != nil {
			a.log.Warn("members sharing the partitions not found; requests about their accounts are answered here", "err", err)
		}
		var addrs []string
		for _, m := range members {
			if m.API != "" && m.API != a.advertise() {
				addrs = append(addrs, m.API)
			}
		}
		return addrs
	})
}

// HoldsAlert: a member that shares the partitions holds the alerts it
// raised — its accounts', and, leading, those that span accounts.
func (b backend) HoldsAlert(id string) bool {
	if b.a.share == nil {
		return true
	}
	_, ok := b.Alert(id)
	return ok
}

func (b backend) Account(id string) api.Account {
	b.a.procMu.Lock()
	st, _ := b.a.proc.Planner.Get(id)
	prof, known := b.a.proc.Engine.Profile(id)
	b.a.procMu.Unlock()
	acc := api.Account{AccountID: id, Frozen: st.Frozen, FrozenReason: st.FrozenReason, StepUpRequired: st.StepUp,
		RiskScore: st.LastRiskScore, State: &st}
	if known {
		acc.Profile = &prof
	}
	acc.RecentDecisions = b.timeline(id, 50)
	if acc.RecentDecisions == nil {
		acc.RecentDecisions = []api.TimelineEntry{}
	}
	acc.RecentActions, _, _ = b.Audit(id, 20, 0)
	if acc.RecentActions == nil {
		acc.RecentActions = []enforce.AuditEntry{}
	}
	return acc
}

func (b backend) Decisions(accountID string, limit int) []detector.Decision {
	var out []detector.Decision
	for _, e := range b.timeline(accountID, limit) {
		out = append(out, e.Decision)
	}
	return out
}

func (b backend) timeline(accountID string, limit int) []api.TimelineEntry {
	return b.a.recent.list(limit, func(d *detector.Decision) bool { return accountID == "" || d.AccountID == accountID })
}

func (b backend) Stats() api.Stats {
	st := b.a.stats.snapshot(time.Now())
	st.Breaker = b.Breaker()
	return st
}

// Alerts lists the alerts q picks, newest first.
func (b backend) Alerts(q alerts.Query) []alerts.Alert {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	return b.a.proc.Alerts.List(q)
}

func (b backend) Alert(id string) (alerts.Alert, bool) {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	return b.a.proc.Alerts.Get(id)
}

func (b backend) Rules() *rules.Set { return b.a.proc.Engine.Rules() }

func (b backend) ReloadRules() (*rules.Set, error) { return b.a.ReloadRules() }

// Score decides on one event synchronously, through the same processor and
// state as the stream. The answer does not wait for Kafka: the outputs are
// published right after by scorePublisher (the gateway needs its answer in
// well under a millisecond, a produce round trip takes several). Should
// walletguard die in between, the event's own copy on wallet.events is
// decided again after the restart, with the same decision and command ids.
func (b backend) Score(ev *event.Event) (detector.Decision, error) {
	var out Outputs
	b.a.procMu.Lock()
	dup := b.a.proc.HandleFrom(apiSource, ev, &out)
	if !dup && b.a.sink != nil {
		raw, _ := event.Marshal(ev)
		b.a.toSink(ev, raw, out.Decisions, out.Alerts, nil)
	}
	b.a.procMu.Unlock()
	if dup {
		return detector.Decision{}, &api.DuplicateError{EventID: ev.EventID}
	}
	b.a.scores.add(b.a.appendOutputs(nil, &out))
	b.a.recent.add(out.Decisions, ev)
	b.a.stats.add(time.Now(), 1, out.Decisions)
	return out.Decisions[0], nil
}

// publishScores writes the API's outputs to Kafka until ctx ends, then
// what is left within writeCtx (the shutdown timeout).
func (a *App) publishScores(ctx, writeCtx context.Context) {
	for {
		select {
		case <-a.scores.wake:
		case <-ctx.Done():
			if msgs := a.scores.take(); len(msgs) > 0 {
				if err := a.producer.Write(writeCtx, "score", msgs); err != nil {
					a.log.Error("scoring API outputs not written before shutdown", "records", len(msgs), "err", err)
				}
			}
			return
		}
		// The gateway has its answer already: gather what other requests
		// decide meanwhile into the same write, which costs the cores the
		// requests are served on far less than a write each.
		time.Sleep(scoreLinger)
		if msgs := a.scores.take(); len(msgs) > 0 {
			if err := a.producer.Write(writeCtx, "score", msgs); err != nil {
				a.log.Error("scoring API outputs not written", "records", len(msgs), "err", err)
			}
		}
	}
}

// scoreLinger is how long the scoring API's outputs wait for others to be
// written with.
const scoreLinger = 2 * time.Millisecond

func (b backend) Freeze(id, actor, reason string) (enforce.State, error) {
	return b.change(id, func(p *enforce.Planner, now time.Time) (enforce.Change, error) {
		return p.Freeze(id, actor, reason, now), nil
	})
}

func (b backend) Unfreeze(id, actor, reason string) (enforce.State, error) {
	return b.change(id, func(p *enforce.Planner, now time.Time) (enforce.Change, error) {
		return p.Unfreeze(id, actor, reason, now)
	})
}

// change runs a manual action on the account's state, makes it durable and
// returns the new state.
func (b backend) change(id string, do func(*enforce.Planner, time.Time) (enforce.Change, error)) (enforce.State, error) {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	ch, err := do(b.a.proc.Planner, time.Now())
	if err != nil {
		return enforce.State{}, err
	}
	if err := b.a.apply(ch); err != nil {
		return enforce.State{}, err
	}
	st, _ := b.a.proc.Planner.Get(id)
	return st, nil
}

func (b backend) Enroll(id, actor string) (enforce.Enrollment, error) {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	en, ch, err := b.a.proc.Planner.Enroll(id, actor, time.Now())
	if err != nil {
		return en, err
	}
	return en, b.a.apply(ch)
}

func (b backend) Verify(id, actor, code string) (enforce.VerifyResult, error) {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	res, ch, verr := b.a.proc.Planner.Verify(id, actor, code, time.Now())
	if len(ch.Audit) > 0 || len(ch.Commands) > 0 {
		// Wrong codes count durably too: a restart must not reset a lockout.
		if err := b.a.apply(ch); err != nil {
			return res, err
		}
	}
	return res, verr
}

func (b backend) Unlock2FA(id, actor, reason string) (enforce.State, error) {
	return b.change(id, func(p *enforce.Planner, now time.Time) (enforce.Change, error) {
		return p.Unlock2FA(id, actor, reason, now)
	})
}

func (b backend) Breaker() enforce.BreakerStatus {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	return b.a.proc.Planner.Breaker()
}

func (b backend) ResetBreaker(actor, reason string) (enforce.BreakerStatus, error) {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	ch, changed := b.a.proc.Planner.ResetBreaker(actor, reason, time.Now())
	if changed {
		if err := b.a.apply(ch); err != nil {
			return enforce.BreakerStatus{}, err
		}
	}
	return b.a.proc.Planner.Breaker(), nil
}

// Audit lists the trail newest first: automatic actions the next
// checkpoint will save, then what is stored — or, from a page's next on,
// what is stored before it. next is where the page after begins, 0 at the
// end of the trail. The first page holds every unsaved action (a
// checkpoint interval's, at most), even past limit: they have no place in
// the stored trail for a next page to begin after.
func (b backend) Audit(account string, limit int, before uint64) ([]enforce.AuditEntry, uint64, error) {
	var pending []enforce.AuditEntry
	if before == 0 {
		b.a.procMu.Lock()
		pending = b.a.proc.Planner.PendingAudit(account)
		b.a.procMu.Unlock()
	}
	var stored []enforce.AuditEntry
	next, err := uint64(math.MaxUint64), error(nil) // the stored trail from its newest
	if n := limit - len(pending); n > 0 {
		stored, next, err = enforce.ListAudit(b.a.store.DB(), account, n, before)
	}
	out := append(pending, stored...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.After(out[j].At) })
	return out, next, err
}

func (b backend) AlertLifecycle(id, actor, verb, note string) (alerts.Alert, error) {
	b.a.procMu.Lock()
	defer b.a.procMu.Unlock()
	now := time.Now()
	var al alerts.Alert
	var err error
	if verb == "ack" {
		al, err = b.a.proc.Alerts.Ack(id, actor, now)
	} else {
		al, err = b.a.proc.Alerts.Resolve(id, actor, note, now)
	}
	if err != nil {
		return al, err
	}
	ch := enforce.Change{AccountID: "", Audit: []enforce.AuditEntry{{At: now.UTC(), Action: "alert_" + verb, Origin: "manual", Actor: actor,
		AccountID: al.AccountID, Reason: note, Outcome: al.AlertID + " " + al.Status}}}
	return al, b.a.apply(ch, al)
}

func (b backend) DeadAlerts(limit int) []outbox.Item { return b.a.deadAlerts(limit) }

func (b backend) LogLevel() *slog.LevelVar { return b.a.logLevel }
