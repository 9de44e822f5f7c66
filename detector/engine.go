// Package detector owns per-key state on event time and turns each event into
// a decision: it keeps the compact picture of every account and of the
// devices, IPs, merchants, payees and payments involved, advances a watermark
// and event-time timers, evaluates the rule set against that picture, combines
// the scores and checkpoints everything, with the consumer offsets, to the
// embedded store. It does not read Kafka or act on decisions: ingest feeds it
// and app routes its decisions to enforcement, alerts and storage.
package detector

import (
	"container/heap"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

// Config tunes the engine.
type Config struct {
	AllowedLateness time.Duration
	IdleExpiry      time.Duration
	// MaxRows caps the accounts held, and each of the device, IP and payee
	// tables: past it, the entries seen longest ago are dropped first, so a
	// burst of new ids (a bug upstream, an attack) cannot exhaust memory.
	// 0: no cap.
	MaxRows    int
	Thresholds Thresholds
	AllowList  []string
}

// Thresholds are the lowest combined scores that lead to each action.
type Thresholds struct{ Review, StepUp, Freeze int }

// Hit is one rule that fired, with its reason.
type Hit struct {
	ID       string `json:"id"`
	Score    int    `json:"score"`
	Reason   string `json:"reason"`
	Category string `json:"category,omitempty"`
	Severity string `json:"severity,omitempty"`
	Action   string `json:"action,omitempty"`
	// Group is what the finding is about, for alert grouping: "account:…",
	// "payment:…", "merchant:…", "ip:…", "device:…" or "payee:…".
	Group string `json:"group,omitempty"`
}

// Decision is the engine's verdict on one event (CONTRACT §2), or on a timer
// that fired (Trigger "timer": EventID is the event that started it).
type Decision struct {
	DecisionID     string    `json:"decision_id"`
	EventID        string    `json:"event_id"`
	AccountID      string    `json:"account_id"`
	TS             time.Time `json:"ts"`
	Score          int       `json:"score"`
	Action         string    `json:"action"`
	Rules          []Hit     `json:"rules"`
	RulesetVersion string    `json:"ruleset_version"`
	EventType      string    `json:"event_type"`
	Trigger        string    `json:"trigger"`
	Shadow         []Hit     `json:"shadow_rules,omitempty"`
	// DowngradedFrom says why a freeze became a step-up: the allow-list, the
	// freeze-storm breaker, or a recent unfreeze by support.
	DowngradedFrom string `json:"downgraded_from,omitempty"`
	MerchantID     string `json:"merchant_id,omitempty"`
	PaymentID      string `json:"payment_id,omitempty"`
	AppVersion     string `json:"app_version,omitempty"`
}

// Engine holds all detection state. It is driven by one goroutine; only the
// rule set may be swapped from another (SetRules).
type Engine struct {
	cfg       Config
	log       *slog.Logger
	metrics   *Metrics
	following bool // see SetFollowing
	observed  bool // the event being decided was observed already: see ProcessObserved
	set       atomic.Pointer[rules.Set]
	allow     map[string]bool
	lateness  uint32
	idle      uint32
	accounts  *table[account]
	devices   *table[deviceState]
	ips       *table[ipState]
	payees    *table[payeeState]
	merchants map[uint64]*merchantState
	chains    *table[chain]
	// Timers are queued per source (a Kafka partition) and fire when that
	// source's own event time passes their deadline: partitions consumed
	// at different speeds (catching up after a lag) must not fire a timer
	// before the events that would cancel it were read.
	timers map[uint32]*timerHeap
	// Checkpoints write only what changed: the tables track their rows;
	// timers armed and gone (fired or cancelled) are listed here.
	capture      *Capture // the checkpoint being captured, nil if none
	timersNew    []*timer
	timersGone   []uint64
	timersForgot []uint64          // of timersGone, those handed over with their partition
	srcMax       map[uint32]uint32 // newest event time per source
	byAccount    map[uint64][]*timer
	timerSeq     uint64
	maxTS        uint32
	lastSweep    uint32
	syms         *symbols // error codes, statuses, currencies, merchants, app versions held in payment chains and merchants
	env          *rules.Env
	eval         rules.Evaluator
	evalErrs     uint64
	evicted      [5]uint64 // rows dropped over capacity, by evictionKinds
	timerBits    []uint64  // see markTimers
	sweepTick    uint32
	ahead        stateKeys // of the event announced last, see Prefetch
	rebase       bool      // set by Take: the next checkpoint is the whole state
}

// New makes an engine with a rule set.
func New(cfg Config, set *rules.Set, m *Metrics, log *slog.Logger) *Engine {
	e := &Engine{
		cfg: cfg, log: log, metrics: m,
		allow:     map[string]bool{},
		lateness:  uint32(cfg.AllowedLateness / time.Second),
		idle:      uint32(cfg.IdleExpiry / time.Second),
		accounts:  newPackedTable[account](unsafe.Offsetof(account{}.last) + 4),
		devices:   newPackedTable[deviceState](unsafe.Offsetof(deviceState{}.last) + 4),
		ips:       newTable[ipState](),
		payees:    newPackedTable[payeeState](unsafe.Offsetof(payeeState{}.last) + 4),
		merchants: map[uint64]*merchantState{},
		// Sweeping chains reads account, last and succeeded (chainExpiry, chainHasTimer).
		chains:    newPackedTable[chain](unsafe.Offsetof(chain{}.succeeded) + 1),
		byAccount: map[uint64][]*timer{},
		timers:    map[uint32]*timerHeap{},
		srcMax:    map[uint32]uint32{},
		syms:      newSymbols(log),
		env:       rules.NewEnv(),
	}
	if e.idle == 0 {
		e.idle = 30 * day1
	}
	for _, a := range cfg.AllowList {
		e.allow[a] = true
	}
	e.SetRules(set)
	return e
}

// Fresh returns an empty engine with e's configuration and rule set and no
// metrics: one to restore a state into beside e, while e goes on, for e to
// Take.
func (e *Engine) Fresh() *Engine { return New(e.cfg, e.set.Load(), nil, e.log) }

// Take replaces e's state with n's — rows, merchants, timers, clocks — and
// keeps e's rule set and counters; n is not to be used after. The next
// checkpoint replaces the store's rows rather than adding to them. It
// fails while a checkpoint of either is being captured.
func (e *Engine) Take(n *Engine) error {
	if e.capture != nil || n.capture != nil {
		return errors.New("replace state: a checkpoint is being captured")
	}
	e.accounts, e.devices, e.ips, e.payees, e.chains = n.accounts, n.devices, n.ips, n.payees, n.chains
	e.merchants, e.timers, e.srcMax, e.byAccount, e.syms = n.merchants, n.timers, n.srcMax, n.byAccount, n.syms
	e.timersNew, e.timersGone, e.timersForgot, e.timerBits = n.timersNew, n.timersGone, n.timersForgot, n.timerBits
	e.timerSeq, e.maxTS, e.lastSweep, e.sweepTick = n.timerSeq, n.maxTS, n.lastSweep, n.sweepTick
	e.ahead = stateKeys{}
	e.rebase = true
	e.updateGauges()
	return nil
}

// SetRules swaps the live rule set; safe from any goroutine.
func (e *Engine) SetRules(s *rules.Set) {
	e.set.Store(s)
	if e.metrics != nil {
		e.metrics.setRules(s)
	}
}

// Rules returns the live rule set.
func (e *Engine) Rules() *rules.Set { return e.set.Load() }

// Watermark is the event time up to which the engine considers input complete.
func (e *Engine) Watermark() time.Time {
	return time.Unix(fromSec(e.watermark()), 0).UTC()
}

func (e *Engine) watermark() uint32 {
	if e.maxTS <= e.lateness {
		return 0
	}
	return e.maxTS - e.lateness
}

func key64(s string) uint64 { return xxhash.Sum64String(s) }

// DecisionID is the stable id of the decision on an event: redelivery and
// replay give the same id, so consumers can drop repeats.
func DecisionID(eventID string) string { return StableID("dec_", eventID) }

// StableID is prefix and the hex of a 64-bit hash of the parts joined by
// NUL: the same cause gives the same id, in a replay too. Decisions,
// commands, alerts and audit rows all name themselves this way.
func StableID(prefix string, parts ...string) string {
	h := xxhash.Sum64String(strings.Join(parts, "\x00"))
	var b [8]byte
	for i := range b {
		b[i] = byte(h >> (8 * i))
	}
	return prefix + hex.EncodeToString(b[:])
}

// SetFollowing switches counting off (on) for the events processed next:
// a standby folds the events its owner decides into its state, and their
// decisions and rule hits are the owner's to count.
func (e *Engine) SetFollowing(on bool) { e.following = on }

// Process scores ev and folds it into the state. It appends to out the
// event's decision and any timer decisions that became due, and returns out.
// A redelivered event (same event_id as a recent one of the account) appends
// nothing and returns dup true.
func (e *Engine) Process(ev *event.Event, out []Decision) (_ []Decision, dup bool) {
	return e.ProcessFrom(0, ev, out)
}

// ProcessFrom is Process for an event read from source src (a partition):
// the event's timers fire on that source's event time.
func (e *Engine) ProcessFrom(src uint32, ev *event.Event, out []Decision) (_ []Decision, dup bool) {
	set := e.set.Load()
	now := toSec(ev.TS.Unix())
	keys := keysOf(ev)
	akey := keys.acct
	acct := e.accounts.upsert(akey)
	idh := hash32(ev.EventID)
	if acct.isDuplicate(idh) {
		return out, true
	}
	acct.remember(idh)
	acct.part = tagOf(src)

	env := e.env
	env.Event.Fill(ev)
	acct.view(&env.Account, ev, now)
	acctID := hash32(ev.AccountID)
	var dev *deviceState
	if keys.has&hasDev != 0 {
		dev = e.devices.upsert(keys.dev)
		if set.Uses(ev.Type, rules.RootDevice) {
			dev.view(&env.Device, now)
		}
	} else {
		env.Device = rules.DeviceView{}
	}
	var ip *ipState
	if keys.has&hasIP != 0 {
		ip = e.ips.upsert(keys.ip)
		if set.Uses(ev.Type, rules.RootIP) {
			ip.view(&env.IP, now)
		}
	} else {
		env.IP = rules.IPView{}
	}
	var merch *merchantState
	if ev.MerchantID != "" {
		merch = e.merchant(key64(ev.MerchantID))
		if set.Uses(ev.Type, rules.RootMerchant) {
			merch.view(&env.Merchant, now, e.syms)
		}
	} else {
		env.Merchant = rules.MerchantView{}
	}
	var payee *payeeState
	if keys.has&hasPayee != 0 {
		payee = e.payees.upsert(keys.payee)
		if set.Uses(ev.Type, rules.RootPayee) {
			payee.view(&env.Payee, now)
		}
	} else {
		env.Payee = rules.PayeeView{}
	}
	// App versions share the merchants' health counters, under their own keys.
	var app *merchantState
	if ev.Type == event.TypePaymentAttempt && ev.AppVersion != "" {
		app = e.merchant(appKey(ev.AppVersion))
		if set.Uses(ev.Type, rules.RootApp) {
			app.view(&env.App, now, e.syms)
		}
	} else {
		env.App = rules.MerchantView{}
	}
	var ch *chain
	if keys.has&hasChain != 0 {
		ch = e.chains.upsert(keys.chain)
		ch.part = tagOf(src)
		// The payment's chain includes this attempt: rules ask "how many
		// attempts so far", and a timer started now must see it.
		ch.update(ev, akey, now, e.syms)
		if set.Uses(ev.Type, rules.RootPayment) {
			ch.view(&env.Payment, ev.PaymentID, now, e.syms)
		}
	} else {
		env.Payment = rules.PaymentView{}
	}

	if e.mayHaveTimers(akey) {
		if ts := e.byAccount[akey]; len(ts) > 0 {
			e.cancelTimers(akey, ev, env, set)
		}
	}

	d := Decision{
		DecisionID: DecisionID(ev.EventID), EventID: ev.EventID, AccountID: ev.AccountID, TS: ev.TS,
		RulesetVersion: set.Version, EventType: ev.Type.String(), Trigger: "event",
		MerchantID: ev.MerchantID, PaymentID: ev.PaymentID, AppVersion: ev.AppVersion,
	}
	for _, r := range set.ForType(ev.Type) {
		ok, err := e.eval.Match(r, env)
		if err != nil {
			e.ruleError(r, err)
			continue
		}
		if !ok {
			continue
		}
		if r.Timer != nil {
			e.armTimer(r, ev, akey, now, src)
			continue
		}
		h := e.hit(r, env, ev)
		if e.metrics != nil && !e.following {
			e.metrics.hit(r)
		}
		if r.Shadow {
			d.Shadow = append(d.Shadow, h)
		} else {
			d.Rules = append(d.Rules, h)
		}
	}
	e.finish(&d)
	out = append(out, d)

	acct.noteRisk(d.Score, now)
	acct.update(ev, now)
	if !e.observed {
		if dev != nil {
			dev.update(ev, acctID, now)
		}
		if ip != nil {
			ip.update(ev, acctID, now)
		}
		if merch != nil {
			merch.update(ev, acctID, now, e.syms)
		}
		if app != nil {
			app.update(ev, acctID, now, e.syms)
		}
		if payee != nil {
			payee.update(ev, acctID, now)
		}
	}
	e.sweepStep(akey)
	if now > e.srcMax[src] {
		e.srcMax[src] = now
		out = e.fireDue(src, since(now, e.lateness), out)
	}
	if now > e.maxTS {
		e.maxTS = now
		if e.maxTS-e.lastSweep >= hour1 {
			e.sweep()
		}
	}
	return out, false
}

func (e *Engine) hit(r *rules.Rule, env *rules.Env, ev *event.Event) Hit {
	return Hit{ID: r.ID, Score: r.Score, Reason: e.eval.Reason(r, env), Category: r.Category,
		Severity: r.Severity, Action: r.Action, Group: groupKey(r.GroupBy, ev)}
}

// appKey keys an app version's health counters in the merchants map.
func appKey(version string) uint64 { return key64("app\x00" + version) }

// merchant returns the health counters under key (a merchant's or an app
// version's), made if absent.
func (e *Engine) merchant(key uint64) *merchantState { return getOrMake(e.merchants, key) }

// getOrMake returns m[k], a new zero V stored there first if absent.
func getOrMake[K comparable, V any](m map[K]*V, k K) *V {
	v := m[k]
	if v == nil {
		v = new(V)
		m[k] = v
	}
	return v
}

// chainKey is the key of a payment's chain: the hash of account, a zero byte
// and payment id, built on the stack (ids are at most 128 characters).
func chainKey(account, payment string) uint64 {
	var buf [2*128*4 + 1]byte
	return xxhash.Sum64(append(append(append(buf[:0], account...), 0), payment...))
}

func groupKey(by string, ev *event.Event) string {
	v := ev.AccountID
	switch by {
	case "payment":
		if ev.PaymentID != "" {
			return "payment:" + ev.AccountID + "/" + ev.PaymentID
		}
	case "merchant":
		v = ev.MerchantID
	case "app_version":
		if ev.AppVersion != "" {
			return "app:" + ev.AppVersion
		}
	case "ip":
		v = ev.IP
	case "device":
		v = ev.DeviceID
	case "payee":
		v = ev.CounterpartyID
	}
	if v == "" {
		return "account:" + ev.AccountID
	}
	if by == "" || by == "payment" {
		by = "account"
	}
	return by + ":" + v
}

// finish combines the hits into a score and an action. Scores combine like
// independent evidence (a "noisy OR"): 100·(1 − Π(1 − sᵢ/100)). Two rules of
// 50 give 75, not 100; no number of weak signals reaches 100, and adding a
// rule never lowers the score.
func (e *Engine) finish(d *Decision) {
	p := 1.0
	forced := rules.ActionAllow
	for _, h := range d.Rules {
		p *= 1 - float64(h.Score)/100
		if rules.ActionRank(h.Action) > rules.ActionRank(forced) {
			forced = h.Action
		}
	}
	d.Score = int(math.Round(100 * (1 - p)))
	th := e.cfg.Thresholds
	action := rules.ActionAllow
	switch {
	case d.Score >= th.Freeze:
		action = rules.ActionFreeze
	case d.Score >= th.StepUp:
		action = rules.ActionStepUp
	case d.Score >= th.Review:
		action = rules.ActionReview
	}
	if rules.ActionRank(forced) > rules.ActionRank(action) {
		action = forced
	}
	if action == rules.ActionFreeze && e.allow[d.AccountID] {
		action, d.DowngradedFrom = rules.ActionStepUp, rules.ActionFreeze
	}
	d.Action = action
	if d.Rules == nil {
		d.Rules = []Hit{}
	}
	if e.metrics != nil && !e.following {
		e.metrics.decided(d)
	}
}

func (e *Engine) ruleError(r *rules.Rule, err error) {
	e.evalErrs++
	if e.metrics != nil && !e.following {
		e.metrics.RuleErrors.Inc()
	}
	if e.evalErrs&(e.evalErrs-1) == 0 { // log the 1st, 2nd, 4th, 8th… error
		e.log.Warn("rule evaluation failed; treated as not matching", "rule", r.ID, "err", err, "errors_so_far", e.evalErrs)
	}
}

// sweepStep expires a few idle rows of each table per event (on event time)
// and, over capacity, drops the rows seen longest ago (never keep, the
// account of the event at hand).
func (e *Engine) sweepStep(keep uint64) {
	// Idle rows are looked for on every sixteenth event, two slots a table:
	// a million accounts are still all visited every 8M events — under a
	// minute at full speed, for an expiry measured in days. Every visit is
	// a cache miss, so visiting more often costs every event.
	e.sweepTick++
	if e.sweepTick&15 == 0 {
		cut := since(e.watermark(), e.idle)
		e.accounts.sweepSome(2, func(a *account) uint32 { return a.last }, cut, nil)
		e.devices.sweepSome(2, func(d *deviceState) uint32 { return d.last }, cut, nil)
		e.ips.sweepSome(2, func(s *ipState) uint32 { return s.last }, cut, nil)
		e.payees.sweepSome(2, func(p *payeeState) uint32 { return p.last }, cut, nil)
	}
	if e.sweepTick&3 == 0 {
		// Chains live a day, not a month, and come and go with payments:
		// four slots every fourth event, so that a million of them are
		// looked at within a million events.
		e.chains.sweepSome(4, chainExpiry, since(e.watermark(), day1), e.chainHasTimer)
	}
	// Checked per table before the call: almost always under capacity, and
	// then nothing else is done for the event.
	max := e.cfg.MaxRows
	if max <= 0 {
		return
	}
	if e.accounts.len() > max {
		evictOver(e, 0, e.accounts, max, func(a *account) uint32 { return a.last }, keep, e.dropTimers)
	}
	if e.devices.len() > max {
		evictOver(e, 1, e.devices, max, func(d *deviceState) uint32 { return d.last }, 0, nil)
	}
	if e.ips.len() > max {
		evictOver(e, 2, e.ips, max, func(s *ipState) uint32 { return s.last }, 0, nil)
	}
	if e.payees.len() > max {
		evictOver(e, 3, e.payees, max, func(p *payeeState) uint32 { return p.last }, 0, nil)
	}
	if e.chains.len() > max { // a flood of payment ids: a timer that finds its chain gone still fires
		evictOver(e, 4, e.chains, max, chainExpiry, 0, nil)
	}
}

// evictionKinds name the tables in walletguard_state_evicted_total.
var evictionKinds = [5]string{"account", "device", "ip", "payee", "payment"}

func evictOver[T any](e *Engine, kind int, t *table[T], max int, lastSeen func(*T) uint32, keep uint64, gone func(uint64)) {
	for t.len() > max {
		key, ok := t.evictOldest(16, lastSeen, keep)
		if !ok {
			return
		}
		if gone != nil {
			gone(key)
		}
		e.evicted[kind]++
		if e.metrics != nil {
			e.metrics.Evicted.WithLabelValues(evictionKinds[kind]).Inc()
		}
		if e.evicted[kind]&(e.evicted[kind]-1) == 0 { // logged at 1, 2, 4, 8… evictions
			e.log.Warn("detection state at capacity: dropping the entries seen longest ago", "kind", evictionKinds[kind],
				"max", max, "evicted", e.evicted[kind])
		}
	}
}

// sweep drops idle merchants hourly, on event time, and rebuilds the timer
// filter.
func (e *Engine) sweep() {
	e.lastSweep = e.maxTS
	e.rebuildTimerBits()
	// Timers armed since the last checkpoint that already ended need no
	// write; without checkpoints (replay) they would pile up here.
	e.timersNew = slices.DeleteFunc(e.timersNew, func(t *timer) bool { return t.cancelled || t.done })
	cut := since(e.watermark(), e.idle)
	n := 0
	for k, m := range e.merchants {
		if m.last < cut {
			delete(e.merchants, k)
			n++
		}
	}
	if n > 0 {
		e.log.Debug("expired idle state", "entries", n, "before", time.Unix(fromSec(cut), 0).UTC())
	}
	e.updateGauges()
}

// chainExpiry is what sweeping compares with a day before the watermark: a
// payment that succeeded is settled, and its chain goes an hour after its
// last attempt (late or repeated attempts within the hour still find it
// succeeded); one that has not stays a day, for the stuck-payment rules to
// count its failures. A chain a pending timer will read stays.
func chainExpiry(c *chain) uint32 {
	if c.succeeded && c.last > day1-hour1 {
		return c.last - (day1 - hour1)
	}
	return c.last
}

func (e *Engine) chainHasTimer(k uint64, c *chain) bool {
	if !e.mayHaveTimers(c.account) {
		return false
	}
	for _, t := range e.byAccount[c.account] {
		if t.paymentID != "" && chainKey(t.ev.AccountID, t.paymentID) == k {
			return true
		}
	}
	return false
}

func (e *Engine) updateGauges() {
	if e.metrics == nil {
		return
	}
	e.metrics.State.WithLabelValues("account").Set(float64(e.accounts.len()))
	e.metrics.State.WithLabelValues("device").Set(float64(e.devices.len()))
	e.metrics.State.WithLabelValues("ip").Set(float64(e.ips.len()))
	e.metrics.State.WithLabelValues("payee").Set(float64(e.payees.len()))
	e.metrics.State.WithLabelValues("merchant").Set(float64(len(e.merchants)))
	e.metrics.State.WithLabelValues("payment").Set(float64(e.chains.len()))
	e.metrics.State.WithLabelValues("timer").Set(float64(e.timerCount()))
}

// Stats summarises the state held.
type Stats struct {
	Accounts, Devices, IPs, Payees, Merchants, Payments, Timers int
}

// Stats counts the state held.
func (e *Engine) Stats() Stats {
	return Stats{e.accounts.len(), e.devices.len(), e.ips.len(), e.payees.len(), len(e.merchants), e.chains.len(), e.timerCount()}
}

// timer is a pending "nothing matching until within after" check.
type timer struct {
	due       uint32
	seq       uint64
	rule      string
	account   uint64
	paymentID string
	src       uint32
	ev        event.Event
	cancelled bool
	done      bool // fired
	saved     bool // in a checkpoint: its end must be written too
	index     int
}

// timerGone records the end of a timer for the next checkpoint, if one
// wrote it. A timer that came and went between two checkpoints leaves
// nothing behind — where none are taken (replay), nothing accumulates.
func (e *Engine) timerGone(t *timer) {
	if t.saved {
		e.timersGone = append(e.timersGone, t.seq)
	}
}

type timerHeap []*timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if h[i].due != h[j].due {
		return h[i].due < h[j].due
	}
	return h[i].seq < h[j].seq
}
func (h timerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *timerHeap) Push(x any)   { t := x.(*timer); t.index = len(*h); *h = append(*h, t) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil // the backing array must not keep a fired timer and its event
	t.index = -1
	*h = old[:len(old)-1]
	return t
}

func (e *Engine) timerCount() int {
	n := 0
	for _, h := range e.timers {
		n += len(*h)
	}
	return n
}

func (e *Engine) queue(src uint32) *timerHeap { return getOrMake(e.timers, src) }

func (e *Engine) armTimer(r *rules.Rule, ev *event.Event, akey uint64, now, src uint32) {
	scopeID := ""
	if r.Timer.Scope == "payment" {
		scopeID = ev.PaymentID
	}
	for _, t := range e.byAccount[akey] {
		if t.rule == r.ID && t.paymentID == scopeID {
			return // one pending timer per rule and scope
		}
	}
	e.timerSeq++
	t := &timer{due: now + uint32(r.After/time.Second), seq: e.timerSeq, rule: r.ID, account: akey, paymentID: scopeID, ev: *ev, src: src}
	t.ev.Detail = nil
	heap.Push(e.queue(src), t)
	e.timersNew = append(e.timersNew, t)
	e.byAccount[akey] = append(e.byAccount[akey], t)
	e.markTimers(akey)
}

// timerBits is a filter of the accounts that may have pending timers: most
// events belong to accounts without any, and the filter answers that from a
// 128 KiB bitmap that stays in cache, where the map lookup it spares is a
// cache miss in a map of every account with a timer. A set bit may be stale
// (the timer fired or was cancelled); sweep rebuilds the bitmap.
const timerBitsLen = 1 << 20

func (e *Engine) markTimers(akey uint64) {
	if e.timerBits == nil {
		e.timerBits = make([]uint64, timerBitsLen/64)
	}
	i := akey % timerBitsLen
	e.timerBits[i/64] |= 1 << (i % 64)
}

func (e *Engine) mayHaveTimers(akey uint64) bool {
	if e.timerBits == nil {
		return false
	}
	i := akey % timerBitsLen
	return e.timerBits[i/64]&(1<<(i%64)) != 0
}

func (e *Engine) rebuildTimerBits() {
	if e.timerBits != nil {
		clear(e.timerBits)
	}
	for k := range e.byAccount {
		e.markTimers(k)
	}
}

// dropTimers removes the pending timers of an account whose state was
// dropped at capacity: they would hold memory (each keeps its event) for an
// account the engine no longer knows.
func (e *Engine) dropTimers(akey uint64) { e.endTimers(akey, e.timerGone) }

// endTimers cancels the account's pending timers, each recorded by gone.
func (e *Engine) endTimers(akey uint64, gone func(*timer)) {
	for _, t := range e.byAccount[akey] {
		if h := e.timers[t.src]; h != nil && t.index >= 0 && t.index < len(*h) && (*h)[t.index] == t {
			heap.Remove(h, t.index)
		}
		t.cancelled = true
		gone(t)
	}
	delete(e.byAccount, akey)
}

// cancelTimers checks ev against the account's pending timers.
func (e *Engine) cancelTimers(akey uint64, ev *event.Event, env *rules.Env, set *rules.Set) {
	ts := e.byAccount[akey]
	kept := ts[:0]
	for _, t := range ts {
		r := set.ByID(t.rule)
		if r == nil || r.Timer == nil {
			t.cancelled = true // the rule was removed or changed by a reload
			e.timerGone(t)
			continue
		}
		if t.paymentID != "" && ev.PaymentID != t.paymentID {
			kept = append(kept, t)
			continue
		}
		stop, err := e.eval.Until(r, env)
		if err != nil {
			e.ruleError(r, err)
		}
		if stop && toSec(ev.TS.Unix()) <= t.due {
			t.cancelled = true
			e.timerGone(t)
			continue
		}
		kept = append(kept, t)
	}
	if len(kept) == 0 {
		delete(e.byAccount, akey)
	} else {
		e.byAccount[akey] = kept
	}
}

// fireDue fires every timer of src whose deadline the source's watermark has passed.
func (e *Engine) fireDue(src, wm uint32, out []Decision) []Decision {
	set := e.set.Load()
	h := e.timers[src]
	for h != nil && len(*h) > 0 && (*h)[0].due <= wm {
		t := heap.Pop(h).(*timer)
		t.done = true
		e.timerGone(t)
		e.dropFromAccount(t)
		if t.cancelled {
			continue
		}
		r := set.ByID(t.rule)
		if r == nil || r.Timer == nil {
			continue
		}
		if d, ok := e.timerDecision(r, t, set); ok {
			out = append(out, d)
		}
	}
	return out
}

func (e *Engine) dropFromAccount(t *timer) {
	ts := e.byAccount[t.account]
	for i, x := range ts {
		if x == t {
			ts = append(ts[:i], ts[i+1:]...)
			break
		}
	}
	if len(ts) == 0 {
		delete(e.byAccount, t.account)
	} else {
		e.byAccount[t.account] = ts
	}
}

func (e *Engine) timerDecision(r *rules.Rule, t *timer, set *rules.Set) (Decision, bool) {
	ev := &t.ev
	env := e.env
	env.Event.Fill(ev)
	// Most timers that fire are not confirmed (a failed login's stuffing
	// check reads its IP alone, and most IPs were one user mistyping): the
	// views the confirm reads are filled first, the rest of what the rule
	// reads only for one confirmed. Each view is rows to find in memory.
	need := r.ConfirmReads()
	e.timerViews(env, t, need)
	if ok, err := e.eval.Confirm(r, env); err != nil || !ok {
		if err != nil {
			e.ruleError(r, err)
		}
		return Decision{}, false
	}
	e.timerViews(env, t, r.Reads()&^need)
	h := e.hit(r, env, ev)
	if e.metrics != nil && !e.following {
		e.metrics.hit(r)
	}
	d := Decision{
		DecisionID: DecisionID("timer\x00" + r.ID + "\x00" + ev.EventID), EventID: ev.EventID, AccountID: ev.AccountID,
		TS: time.Unix(fromSec(t.due), 0).UTC(), RulesetVersion: set.Version, EventType: ev.Type.String(), Trigger: "timer",
		MerchantID: ev.MerchantID, PaymentID: ev.PaymentID, AppVersion: ev.AppVersion,
	}
	if r.Shadow {
		d.Shadow = []Hit{h}
	} else {
		d.Rules = []Hit{h}
	}
	e.finish(&d)
	return d, true
}

// Flush fires the timers due by each source's newest event time, ignoring
// the allowed lateness: the end of a replay, where no later event will come.
func (e *Engine) Flush(out []Decision) []Decision {
	srcs := make([]uint32, 0, len(e.timers))
	for src := range e.timers {
		srcs = append(srcs, src)
	}
	slices.Sort(srcs) // map order must not decide the output order
	for _, src := range srcs {
		out = e.fireDue(src, e.srcMax[src], out)
	}
	return out
}

// timerViews fills the views of env that need names, as they are at the
// timer's due time, for the event that set it.
func (e *Engine) timerViews(env *rules.Env, t *timer, need rules.Root) {
	ev, now := &t.ev, t.due
	if need&rules.RootAccount != 0 {
		if a := e.accounts.get(t.account); a != nil {
			a.view(&env.Account, ev, now)
		} else {
			env.Account = rules.AccountView{}
		}
	}
	if need&rules.RootDevice != 0 {
		env.Device = rules.DeviceView{}
		if ev.DeviceID != "" {
			if d := e.devices.get(key64(ev.DeviceID)); d != nil {
				d.view(&env.Device, now)
			}
		}
	}
	if need&rules.RootIP != 0 {
		env.IP = rules.IPView{}
		if ev.IP != "" {
			if ip := e.ips.get(key64(ev.IP)); ip != nil {
				ip.view(&env.IP, now)
			}
		}
	}
	if need&rules.RootPayee != 0 {
		env.Payee = rules.PayeeView{}
	}
	if need&rules.RootMerchant != 0 {
		env.Merchant = rules.MerchantView{}
		if m := e.merchants[key64(ev.MerchantID)]; m != nil && ev.MerchantID != "" {
			m.view(&env.Merchant, now, e.syms)
		}
	}
	if need&rules.RootApp != 0 {
		env.App = rules.MerchantView{}
		if m := e.merchants[appKey(ev.AppVersion)]; m != nil && ev.AppVersion != "" {
			m.view(&env.App, now, e.syms)
		}
	}
	if need&rules.RootPayment != 0 {
		env.Payment = rules.PaymentView{}
		if t.paymentID != "" {
			if c := e.chains.get(chainKey(ev.AccountID, t.paymentID)); c != nil {
				c.view(&env.Payment, t.paymentID, now, e.syms)
			}
		}
	}
}

func heapInit(h *timerHeap) { heap.Init(h) }
