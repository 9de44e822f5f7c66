// Package enforce owns what walletguard does to accounts and remembers it:
// each account's security state (frozen, step-up required, TOTP enrollment
// and failed codes), the account commands that change it (freeze and
// require_2fa from decisions; freeze, unfreeze and clear_2fa from people and
// verified codes) with stable ids, the freeze-storm breaker, TOTP two-factor
// verification with secrets sealed at rest, and the audit trail of every
// action. It does not decide risk (detector) or deliver anything (the app
// produces commands to Kafka and the outbox sends them on).
package enforce

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/rules"
)

// Commands (CONTRACT §2).
const (
	CmdFreeze     = "freeze"
	CmdUnfreeze   = "unfreeze"
	CmdRequire2FA = "require_2fa"
	CmdClear2FA   = "clear_2fa"
)

// Actor of automatic actions.
const Auto = "walletguard"

// Command is one record of the account-commands topic.
type Command struct {
	CommandID  string    `json:"command_id"`
	Command    string    `json:"command"`
	AccountID  string    `json:"account_id"`
	Reason     string    `json:"reason"`
	DecisionID string    `json:"decision_id"`
	IssuedAt   time.Time `json:"issued_at"`
	Actor      string    `json:"actor"` // "walletguard" or the operator
}

// State is an account's security state. The TOTP secret is not part of it:
// it is kept sealed beside it and never leaves this package.
type State struct {
	Frozen         bool      `json:"frozen"`
	FrozenReason   string    `json:"frozen_reason,omitempty"`
	FrozenBy       string    `json:"frozen_by,omitempty"`
	FrozenAt       time.Time `json:"frozen_at,omitzero"`
	FrozenDecision string    `json:"frozen_decision,omitempty"`
	// StepUp stays required until a correct code is verified.
	StepUp        bool      `json:"step_up_required"`
	StepUpReason  string    `json:"step_up_reason,omitempty"`
	StepUpAt      time.Time `json:"step_up_at,omitzero"`
	LastRiskScore int       `json:"risk_score"`
	// TrustedUntil: support unfroze the account; until then automatic
	// freezes become step-ups (the customer proved who they are, and
	// freezing them again for the same trip is the harm support just undid).
	TrustedUntil time.Time `json:"trusted_until,omitzero"`
	UnfrozenBy   string    `json:"unfrozen_by,omitempty"`

	TOTPEnrolled bool      `json:"totp_enrolled"`
	EnrolledAt   time.Time `json:"totp_enrolled_at,omitzero"`
	WrongCodes   int       `json:"totp_wrong_codes"`
	LockedAt     time.Time `json:"totp_locked_at,omitzero"`
	LastVerified time.Time `json:"totp_last_verified_at,omitzero"`
	// ManualAt is when support or the gateway last changed the account
	// through the API (a freeze, an unfreeze, a 2FA enrolment or code): a
	// standby that adopts the change (Adopt) skips any not newer.
	ManualAt time.Time `json:"manual_at,omitzero"`

	lastStep int64  // the time step of the last accepted code: older or equal ones are replays
	sealed   []byte // AES-GCM sealed TOTP secret
}

// Locked reports whether code verification is locked after wrong codes.
func (s *State) Locked() bool { return !s.LockedAt.IsZero() }

// Config tunes the planner.
type Config struct {
	// Breaker: more than MaxFreezes automatic freezes within Window (event
	// time) opens it.
	MaxFreezes    int
	Window        time.Duration
	MaxWrongCodes int
	Issuer        string
	// UnfreezeGrace is how long after a manual unfreeze automatic freezes
	// of that account become step-ups; 0: none.
	UnfreezeGrace time.Duration
	// Sealer encrypts TOTP secrets; nil refuses enrollment.
	Sealer *Sealer
	// Forward, if set, receives every automatic command inside the
	// checkpoint transaction that saves it (the account-service outbox);
	// the app forwards manual commands itself, in their own transaction.
	Forward func(tx *bolt.Tx, c Command) error
	// Changelog, if set, receives every account state a checkpoint saves
	// (a manual action's is saved again by the next), keyed by account id,
	// and the breaker's under "" whenever it is saved, as stored (PutRecord
	// writes them back), inside the saving transaction.
	Changelog func(id string, v []byte)
	// Audited, if set, receives every audit entry a checkpoint saves, as
	// stored, inside the saving transaction: for the changelog too.
	Audited func(v []byte)
}

// AuditEntry is one automatic or manual action, with the decision or
// operator behind it.
type AuditEntry struct {
	At         time.Time `json:"at"`
	Action     string    `json:"action"` // freeze, unfreeze, require_2fa, clear_2fa, 2fa_enroll, 2fa_verify_failed, 2fa_locked, 2fa_unlock, breaker_open, breaker_reset, …
	Origin     string    `json:"origin"` // auto or manual
	Actor      string    `json:"actor"`
	AccountID  string    `json:"account_id,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	DecisionID string    `json:"decision_id,omitempty"`
	CommandID  string    `json:"command_id,omitempty"`
	Outcome    string    `json:"outcome,omitempty"`
}

// SystemAlert is an alert for operators that enforcement raises itself
// (the breaker opening, a 2FA lockout). Its wording beyond Reason comes from
// the alert templates of its category.
type SystemAlert struct {
	Key, Category, Severity, Reason string
	AccountID                       string
	At                              time.Time
}

// Change is what one manual action did: to be made durable together.
type Change struct {
	AccountID string
	Commands  []Command
	Audit     []AuditEntry
	Alerts    []SystemAlert
	// BreakerReset: the change closed the freeze-storm breaker.
	BreakerReset bool
}

// Planner turns decisions into commands and keeps account states. The
// pipeline drives Plan; the API's manual actions come in between under the
// same lock (the app's), so a Planner is not safe for concurrent use on its own.
type Planner struct {
	cfg     Config
	states  map[string]*State
	dirty   map[string]bool
	audit   []AuditEntry // automatic actions not yet saved
	fresh   []AuditEntry // automatic actions not yet taken by TakeAudit (the analytics sink)
	forward []Command    // automatic commands not yet handed to Forward
	alerts  []SystemAlert
	metrics *Metrics
	// following: the actions planned are a standby's copy of its owner's
	// (see SetFollowing).
	following bool
	// handedOver are accounts whose state another instance holds now
	// (HandOver), to delete from the store at the next save.
	handedOver []string

	breaker breakerState
	// share is the part of the accounts this instance decides, when
	// instances share the partitions (SetShare): the breaker's limit is
	// that part of MaxFreezes.
	share struct{ part, whole int }
}

// SetFollowing switches following on or off for the decisions planned
// next. A standby plans the decisions its owner made, to hold the same
// freezes and step-ups when it takes over, but the owner forwards the
// commands, counts the actions and writes them to analytics; the standby
// keeps them only in its state and audit trail.
func (p *Planner) SetFollowing(on bool) { p.following = on }

// ErrNotFound is returned for actions on accounts walletguard knows nothing of.
var ErrNotFound = errors.New("account not known")

// NewPlanner makes an empty planner.
func NewPlanner(cfg Config, m *Metrics) *Planner {
	if cfg.MaxFreezes <= 0 {
		cfg.MaxFreezes = 1 << 30
	}
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	if cfg.MaxWrongCodes <= 0 {
		cfg.MaxWrongCodes = 5
	}
	if cfg.Issuer == "" {
		cfg.Issuer = "walletguard"
	}
	p := &Planner{cfg: cfg, metrics: m}
	p.Reset()
	return p
}

// CommandID is stable for the same cause: the same account, command and decision.
func CommandID(account, command, cause string) string {
	return detector.StableID("cmd_", account, command, cause)
}

// Plan returns the commands a decision calls for, appended to out. An account
// already frozen (or already asked for 2FA) gets no repeat command. While the
// freeze-storm breaker is open, a freeze decision is turned into a step-up
// (the decision records it in DowngradedFrom).
func (p *Planner) Plan(d *detector.Decision, out []Command) []Command {
	if d.Action == rules.ActionFreeze {
		if s := p.states[d.AccountID]; s != nil && d.TS.Before(s.TrustedUntil) {
			d.Action, d.DowngradedFrom = rules.ActionStepUp, rules.ActionFreeze+" (unfrozen by "+s.UnfrozenBy+
				"; freezes become step-ups until "+s.TrustedUntil.UTC().Format(time.RFC3339)+")"
		} else if p.breakerBlocks(d) {
			d.Action, d.DowngradedFrom = rules.ActionStepUp, rules.ActionFreeze+" (freeze-storm breaker open)"
		}
	}
	if d.Action != rules.ActionFreeze && d.Action != rules.ActionStepUp {
		if s := p.states[d.AccountID]; s != nil && s.LastRiskScore != d.Score {
			s.LastRiskScore = d.Score
			p.dirty[d.AccountID] = true
		}
		return out
	}
	s := p.state(d.AccountID)
	s.LastRiskScore = d.Score
	reason := topReason(d)
	var c Command
	switch d.Action {
	case rules.ActionFreeze:
		if s.Frozen {
			return out
		}
		s.Frozen, s.FrozenReason, s.FrozenBy, s.FrozenAt, s.FrozenDecision = true, reason, Auto, d.TS, d.DecisionID
		c = Command{CommandID: CommandID(d.AccountID, CmdFreeze, d.DecisionID), Command: CmdFreeze,
			AccountID: d.AccountID, Reason: reason, DecisionID: d.DecisionID, IssuedAt: d.TS, Actor: Auto}
	default:
		if s.StepUp || s.Frozen {
			return out
		}
		s.StepUp, s.StepUpReason, s.StepUpAt = true, reason, d.TS
		c = Command{CommandID: CommandID(d.AccountID, CmdRequire2FA, d.DecisionID), Command: CmdRequire2FA,
			AccountID: d.AccountID, Reason: reason, DecisionID: d.DecisionID, IssuedAt: d.TS, Actor: Auto}
	}
	p.note(AuditEntry{At: d.TS, Action: c.Command, Origin: "auto", Actor: Auto, AccountID: d.AccountID,
		Reason: reason, DecisionID: d.DecisionID, CommandID: c.CommandID})
	if p.following {
		return append(out, c)
	}
	p.metrics.action(c.Command, "auto")
	if p.cfg.Forward != nil {
		p.forward = append(p.forward, c)
	}
	return append(out, c)
}

// note records an automatic action for the audit trail and the sink.
func (p *Planner) note(e AuditEntry) {
	p.audit = append(p.audit, e)
	if !p.following {
		p.fresh = append(p.fresh, e)
	}
}

// PendingAudit returns the automatic actions not yet saved (the next
// checkpoint saves them), newest first, of one account (all for "").
func (p *Planner) PendingAudit(account string) []AuditEntry {
	var out []AuditEntry
	for i := len(p.audit) - 1; i >= 0; i-- {
		if account == "" || p.audit[i].AccountID == account {
			out = append(out, p.audit[i])
		}
	}
	return out
}

// TakeAudit returns the automatic actions recorded since the last call.
func (p *Planner) TakeAudit() []AuditEntry {
	f := p.fresh
	p.fresh = nil
	return f
}

// TakeAlerts returns the system alerts raised since the last call.
func (p *Planner) TakeAlerts() []SystemAlert {
	a := p.alerts
	p.alerts = nil
	return a
}

func (p *Planner) state(id string) *State {
	s := p.states[id]
	if s == nil {
		s = &State{}
		id = strings.Clone(id) // held for as long as the account is: not the event record it came in
		p.states[id] = s
	}
	p.dirty[id] = true
	return s
}

// Get returns a copy of an account's state.
func (p *Planner) Get(id string) (State, bool) {
	s, ok := p.states[id]
	if !ok {
		return State{}, false
	}
	c := *s
	c.sealed = nil
	return c, true
}

// MarkManual records that a manual action changed the account at now.
func (p *Planner) MarkManual(id string, now time.Time) {
	p.state(id).ManualAt = now
}

// Record is the account's state as stored, the sealed TOTP secret
// included, for a standby to adopt; nil for an unknown account.
func (p *Planner) Record(id string) ([]byte, error) { return p.encodeState(id) }

// KeepAudit adds entries another instance wrote to the audit trail, to
// be saved with the next checkpoint.
func (p *Planner) KeepAudit(entries []AuditEntry) { p.audit = append(p.audit, entries...) }

// Adopt makes rec (another instance's Record of the account, after a
// manual action there) the account's state, and keeps the action's audit
// entries, both to be saved with the next checkpoint.
func (p *Planner) Adopt(id string, rec []byte, audit []AuditEntry) error {
	var r record
	if err := json.Unmarshal(rec, &r); err != nil {
		return fmt.Errorf("account record of %s: %w", id, err)
	}
	s := p.state(id)
	*s = r.State
	s.sealed, s.lastStep = r.Sealed, r.LastStep
	p.KeepAudit(audit)
	return nil
}

func topReason(d *detector.Decision) string {
	best := -1
	for i, h := range d.Rules {
		if best < 0 || h.Score > d.Rules[best].Score || h.Action != "" && d.Rules[best].Action == "" {
			best = i
		}
	}
	if best < 0 {
		return fmt.Sprintf("risk score %d", d.Score)
	}
	return d.Rules[best].ID + ": " + d.Rules[best].Reason
}

// Freeze freezes an account on an operator's word. Idempotent: an account
// already frozen gets no second command.
func (p *Planner) Freeze(id, actor, reason string, now time.Time) Change {
	s := p.state(id)
	ch := Change{AccountID: id}
	if s.Frozen {
		ch.Audit = append(ch.Audit, AuditEntry{At: now, Action: CmdFreeze, Origin: "manual", Actor: actor, AccountID: id,
			Reason: reason, Outcome: "already frozen"})
		return ch
	}
	s.Frozen, s.FrozenReason, s.FrozenBy, s.FrozenAt, s.FrozenDecision = true, reason, actor, now, ""
	return p.manual(ch, CmdFreeze, actor, reason, now)
}

// Unfreeze lifts a freeze; reason is required (the caller checks it).
func (p *Planner) Unfreeze(id, actor, reason string, now time.Time) (Change, error) {
	s, ok := p.states[id]
	if !ok || !s.Frozen {
		return Change{}, fmt.Errorf("account %s is not frozen: %w", id, ErrNotFound)
	}
	p.dirty[id] = true
	s.Frozen, s.FrozenReason, s.FrozenBy, s.FrozenAt, s.FrozenDecision = false, "", "", time.Time{}, ""
	if p.cfg.UnfreezeGrace > 0 {
		s.TrustedUntil, s.UnfrozenBy = now.Add(p.cfg.UnfreezeGrace).UTC(), actor
	}
	return p.manual(Change{AccountID: id}, CmdUnfreeze, actor, reason, now), nil
}

func (p *Planner) manual(ch Change, cmd, actor, reason string, now time.Time) Change {
	c := Command{CommandID: CommandID(ch.AccountID, cmd, "manual\x00"+actor+"\x00"+now.Format(time.RFC3339Nano)), Command: cmd,
		AccountID: ch.AccountID, Reason: reason, IssuedAt: now.UTC(), Actor: actor}
	ch.Commands = append(ch.Commands, c)
	ch.Audit = append(ch.Audit, AuditEntry{At: now.UTC(), Action: cmd, Origin: "manual", Actor: actor, AccountID: ch.AccountID,
		Reason: reason, CommandID: c.CommandID, Outcome: "done"})
	p.metrics.action(cmd, "manual")
	return ch
}
