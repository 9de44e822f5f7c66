package enforce

import (
	"fmt"
	"time"

	"github.com/walletguard/walletguard/detector"
)

// breakerState counts automatic freezes on event time. When more than
// MaxFreezes fall within Window, a bad rule or a broken upstream field is
// far likelier than a wave of real thefts: automatic freezing stops (freezes
// become step-ups, which cost an honest user one code) until an admin
// closes the breaker.
type breakerState struct {
	Open     bool        `json:"open"`
	OpenedAt time.Time   `json:"opened_at,omitzero"`
	Why      string      `json:"why,omitempty"`
	Recent   []time.Time `json:"recent,omitempty"` // automatic freezes within the window
	Held     int         `json:"held"`             // freezes turned into step-ups while open
	// ResetAt is when an admin last closed it, here or on the instance
	// whose reset this one adopted.
	ResetAt time.Time `json:"reset_at,omitzero"`
	dirty   bool
}

// BreakerStatus is the breaker as the API and readiness show it.
type BreakerStatus struct {
	Open       bool      `json:"open"`
	OpenedAt   time.Time `json:"opened_at,omitzero"`
	Why        string    `json:"why,omitempty"`
	Held       int       `json:"freezes_held"`
	MaxFreezes int       `json:"max_freezes"`
	Window     string    `json:"window"`
	// Share is the part of the partitions this instance decides, when
	// instances share them (kafka.share_partitions): its breaker counts
	// its own freezes against that part of enforce.breaker.max_freezes,
	// which MaxFreezes then is.
	Share string `json:"share,omitempty"`
}

// SetShare tells the planner that this instance decides part of whole
// partitions, the rest being decided by others sharing them: a freeze
// storm, which spreads over accounts and so over partitions, is counted
// against the same part of the breaker's limit, so that together the
// members open at about the limit one instance has. whole 0: everything.
func (p *Planner) SetShare(part, whole int) {
	p.share.part, p.share.whole = part, whole
}

// maxFreezes is the breaker's limit for the freezes this instance makes.
func (p *Planner) maxFreezes() int {
	if p.share.whole <= 0 || p.share.part >= p.share.whole {
		return p.cfg.MaxFreezes
	}
	return max(1, (p.cfg.MaxFreezes*p.share.part+p.share.whole-1)/p.share.whole)
}

// Breaker reports the freeze-storm breaker's state.
func (p *Planner) Breaker() BreakerStatus {
	b := &p.breaker
	st := BreakerStatus{Open: b.Open, OpenedAt: b.OpenedAt, Why: b.Why, Held: b.Held, MaxFreezes: p.maxFreezes(), Window: p.cfg.Window.String()}
	if p.share.whole > 0 {
		st.Share = fmt.Sprintf("%d of %d partitions", p.share.part, p.share.whole)
	}
	return st
}

// breakerBlocks counts an automatic freeze and reports whether the breaker
// holds it back.
func (p *Planner) breakerBlocks(d *detector.Decision) bool {
	b := &p.breaker
	if s := p.states[d.AccountID]; s != nil && s.Frozen {
		return false // no new freeze: nothing to count
	}
	if b.Open {
		b.Held++
		b.dirty = true
		return true
	}
	cut := d.TS.Add(-p.cfg.Window)
	i := 0
	for i < len(b.Recent) && !b.Recent[i].After(cut) {
		i++
	}
	b.Recent = append(b.Recent[i:], d.TS)
	b.dirty = true
	limit := p.maxFreezes()
	if len(b.Recent) <= limit {
		return false
	}
	b.Open, b.OpenedAt, b.Held = true, d.TS, 1
	b.Why = fmt.Sprintf("%d automatic freezes within %s (limit %d); latest on %s by rule %s",
		len(b.Recent), p.cfg.Window, limit, d.AccountID, topRuleID(d))
	if limit != p.cfg.MaxFreezes {
		b.Why += fmt.Sprintf(" (this instance's part of %d: it decides %d of %d partitions)", p.cfg.MaxFreezes, p.share.part, p.share.whole)
	}
	b.Recent = nil
	p.metrics.breakerOpen(true)
	p.note(AuditEntry{At: d.TS, Action: "breaker_open", Origin: "auto", Actor: Auto, Reason: b.Why, DecisionID: d.DecisionID})
	p.alerts = append(p.alerts, SystemAlert{Key: "system|freeze-breaker", Category: "freeze_storm", Severity: "critical", At: d.TS,
		Reason: b.Why + "; freezes are now step-ups until an admin closes the breaker"})
	return true
}

func topRuleID(d *detector.Decision) string {
	best := ""
	score := -1
	for _, h := range d.Rules {
		if h.Action == "freeze" || h.Score > score {
			best, score = h.ID, h.Score
			if h.Action == "freeze" {
				break
			}
		}
	}
	return best
}

// ResetBreaker closes the breaker (an admin's decision).
func (p *Planner) ResetBreaker(actor, reason string, now time.Time) (Change, bool) {
	b := &p.breaker
	if !b.Open {
		return Change{}, false
	}
	held := b.Held
	p.closeBreaker(now)
	return Change{BreakerReset: true, Audit: []AuditEntry{{At: now.UTC(), Action: "breaker_reset", Origin: "manual", Actor: actor, Reason: reason,
		Outcome: fmt.Sprintf("automatic freezing resumed; %d freezes had been held as step-ups", held)}}}, true
}

func (p *Planner) closeBreaker(at time.Time) {
	p.breaker = breakerState{ResetAt: at.UTC(), dirty: true}
	p.metrics.breakerOpen(false)
}

// BreakerResetAt is when the breaker was last closed by hand.
func (p *Planner) BreakerResetAt() time.Time { return p.breaker.ResetAt }

// AdoptBreakerReset closes the breaker as an admin did on another instance
// at the same place in the events, and keeps that reset's audit entries.
// The breaker counted the same freezes here, so it is open here too,
// unless this instance did not follow them.
func (p *Planner) AdoptBreakerReset(at time.Time, audit []AuditEntry) {
	p.closeBreaker(at)
	p.KeepAudit(audit)
}
