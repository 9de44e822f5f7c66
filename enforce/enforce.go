// Package enforce owns what walletguard does to accounts: it turns decisions
// into account commands (freeze, require_2fa; unfreeze and clear_2fa come from
// people and verified codes), remembers each account's security state so a
// command is issued once per cause, and gives every command a stable id so
// downstream consumers can drop repeats. It does not decide risk (detector)
// or deliver commands (app produces them to Kafka).
package enforce

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
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

// State is an account's security state.
type State struct {
	Frozen         bool      `json:"frozen"`
	FrozenReason   string    `json:"frozen_reason,omitempty"`
	FrozenBy       string    `json:"frozen_by,omitempty"`
	FrozenAt       time.Time `json:"frozen_at,omitzero"`
	FrozenDecision string    `json:"frozen_decision,omitempty"`
	StepUp         bool      `json:"step_up_required"`
	StepUpReason   string    `json:"step_up_reason,omitempty"`
	StepUpAt       time.Time `json:"step_up_at,omitzero"`
	LastRiskScore  int       `json:"risk_score"`
}

// Planner turns decisions into commands and keeps account states. It is
// driven by the pipeline goroutine; durable through Save/Load in the same
// checkpoint transaction as the detector.
type Planner struct {
	states map[string]*State
	dirty  map[string]bool
}

// NewPlanner makes an empty planner.
func NewPlanner() *Planner {
	return &Planner{states: map[string]*State{}, dirty: map[string]bool{}}
}

// CommandID is stable for the same cause: the same account, command and decision.
func CommandID(account, command, cause string) string {
	h := xxhash.Sum64String(account + "\x00" + command + "\x00" + cause)
	var b [8]byte
	for i := range b {
		b[i] = byte(h >> (8 * i))
	}
	return "cmd_" + hex.EncodeToString(b[:])
}

// Plan returns the commands a decision calls for, appended to out. An account
// already frozen (or already asked for 2FA) gets no repeat command.
func (p *Planner) Plan(d *detector.Decision, out []Command) []Command {
	if d.Action != rules.ActionFreeze && d.Action != rules.ActionStepUp {
		if s := p.states[d.AccountID]; s != nil {
			s.LastRiskScore = d.Score
		}
		return out
	}
	s := p.state(d.AccountID)
	s.LastRiskScore = d.Score
	reason := topReason(d)
	switch d.Action {
	case rules.ActionFreeze:
		if s.Frozen {
			return out
		}
		s.Frozen, s.FrozenReason, s.FrozenBy, s.FrozenAt, s.FrozenDecision = true, reason, "walletguard", d.TS, d.DecisionID
		return append(out, Command{CommandID: CommandID(d.AccountID, CmdFreeze, d.DecisionID), Command: CmdFreeze,
			AccountID: d.AccountID, Reason: reason, DecisionID: d.DecisionID, IssuedAt: d.TS, Actor: "walletguard"})
	default:
		if s.StepUp || s.Frozen {
			return out
		}
		s.StepUp, s.StepUpReason, s.StepUpAt = true, reason, d.TS
		return append(out, Command{CommandID: CommandID(d.AccountID, CmdRequire2FA, d.DecisionID), Command: CmdRequire2FA,
			AccountID: d.AccountID, Reason: reason, DecisionID: d.DecisionID, IssuedAt: d.TS, Actor: "walletguard"})
	}
}

func (p *Planner) state(id string) *State {
	s := p.states[id]
	if s == nil {
		s = &State{}
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
	return *s, true
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

var bucket = []byte("enforce")

// Save writes changed states inside the caller's transaction.
func (p *Planner) Save(tx *bolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists(bucket)
	if err != nil {
		return err
	}
	for id := range p.dirty {
		v, err := json.Marshal(p.states[id])
		if err != nil {
			return err
		}
		if err := b.Put([]byte(id), v); err != nil {
			return err
		}
	}
	clear(p.dirty)
	return nil
}

// Load reads all states.
func (p *Planner) Load(db *bolt.DB) error {
	return db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var s State
			if err := json.Unmarshal(v, &s); err != nil {
				return fmt.Errorf("account state %s: %w", k, err)
			}
			p.states[string(k)] = &s
			return nil
		})
	})
}
