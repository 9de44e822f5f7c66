// Package rules owns the rule language: the YAML rule spec, its compilation
// into type-checked expr programs at load (errors name the file, the rule and
// the position in the expression), the environment rules see (Env), rule sets
// indexed by event type with a content-hash version, and the built-in rule
// packs. It evaluates nothing on its own: the detector fills an Env per event
// and runs the compiled programs.
package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/walletguard/walletguard/event"
)

// Actions in increasing order of force.
const (
	ActionAllow  = "allow"
	ActionReview = "review"
	ActionStepUp = "step_up"
	ActionFreeze = "freeze"
)

// ActionRank orders actions; unknown actions rank 0 like allow.
func ActionRank(a string) int {
	switch a {
	case ActionReview:
		return 1
	case ActionStepUp:
		return 2
	case ActionFreeze:
		return 3
	}
	return 0
}

var (
	categories = []string{"theft", "abnormal", "stuck_retry", "merchant_outage", "credential_stuffing", "app_fault", "brute_force", "velocity", "impossible_travel", "mule"}
	severities = []string{"low", "medium", "high", "critical"}
	scopes     = []string{"account", "payment", "merchant", "ip", "device", "payee", "app_version"}
)

// Severities lists the severities from the least.
func Severities() []string { return slices.Clone(severities) }

// SeverityRank orders severities; unknown ranks 0.
func SeverityRank(s string) int {
	for i, v := range severities {
		if v == s {
			return i + 1
		}
	}
	return 0
}

// Spec is a rule as written in YAML.
type Spec struct {
	ID          string     `yaml:"id"`
	Description string     `yaml:"description"`
	On          []string   `yaml:"on"`
	When        string     `yaml:"when"`
	Score       int        `yaml:"score"`
	Category    string     `yaml:"category"`
	Severity    string     `yaml:"severity"`
	Action      string     `yaml:"action"`
	Mode        string     `yaml:"mode"`
	Tags        []string   `yaml:"tags"`
	Reason      string     `yaml:"reason"`
	GroupBy     string     `yaml:"group_by"`
	Timer       *TimerSpec `yaml:"timer"`
}

// TimerSpec turns a rule into "nothing matching Until within After of the
// event that matched When": it fires when the watermark passes the deadline.
type TimerSpec struct {
	After string `yaml:"after"`
	// Scope ties later events to the timer: "payment" (same payment_id) or
	// "account" (same account).
	Scope string `yaml:"scope"`
	Until string `yaml:"until"`
	// Confirm, when set, is checked as the timer fires, over the state at
	// that moment (the event's account, device, IP, merchant and payment):
	// the rule hits only if it holds. "Look again in ten minutes": was the
	// IP this account just signed in from attacking others by then?
	Confirm string `yaml:"confirm"`
}

type fileSpec struct {
	Rules []yaml.Node `yaml:"rules"`
}

// Rule is a compiled rule.
type Rule struct {
	Spec
	File   string
	Line   int
	Types  []event.Type
	Shadow bool
	After  time.Duration

	when    *vm.Program
	guard   guard // the condition's first test, when it can be checked natively
	until   *vm.Program
	confirm *vm.Program
	// The conditions compiled to Go, nil where one needs the VM.
	whenFn, untilFn, confirmFn cond
	reason                     template
	reads, confirmReads        Root // see Reads
}

// Set is a loaded, validated rule set.
type Set struct {
	Rules   []*Rule
	Version string
	byType  [event.NumTypes][]*Rule
	uses    [event.NumTypes]Root
}

// ForType returns the rules that apply to events of type t.
func (s *Set) ForType(t event.Type) []*Rule { return s.byType[t] }

// ByID finds a rule.
func (s *Set) ByID(id string) *Rule {
	for _, r := range s.Rules {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// Source is one rule file's name and content.
type Source struct {
	Name    string
	Content []byte
}

// Compile validates and compiles rule files into a Set. Every error found is
// reported, each naming the file, the rule and the position.
func Compile(files []Source) (*Set, error) {
	sorted := append([]Source(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	h := sha256.New()
	set := &Set{}
	var errs []error
	seen := map[string]string{}
	for _, f := range sorted {
		fmt.Fprintf(h, "%s\x00%d\x00", f.Name, len(f.Content))
		h.Write(f.Content)
		rs, err := compileFile(f)
		errs = append(errs, err)
		for _, r := range rs {
			if prev, dup := seen[r.ID]; dup {
				errs = append(errs, fmt.Errorf("%s:%d: rule %s: id already used in %s", r.File, r.Line, r.ID, prev))
				continue
			}
			seen[r.ID] = fmt.Sprintf("%s:%d", r.File, r.Line)
			set.Rules = append(set.Rules, r)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, r := range set.Rules {
		roots := r.reads
		for _, t := range r.Types {
			set.byType[t] = append(set.byType[t], r)
			set.uses[t] |= roots
		}
	}
	set.Version = hex.EncodeToString(h.Sum(nil))[:12]
	return set, nil
}

func compileFile(f Source) ([]*Rule, error) {
	dec := yaml.NewDecoder(bytes.NewReader(f.Content))
	dec.KnownFields(true)
	var fs fileSpec
	if err := dec.Decode(&fs); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name, err)
	}
	var out []*Rule
	var errs []error
	for _, n := range fs.Rules {
		var s Spec
		if err := decodeStrict(&n, &s); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", f.Name, n.Line, err))
			continue
		}
		r, err := compileRule(s, f.Name, n.Line)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

// decodeStrict decodes one rule node rejecting unknown keys.
func decodeStrict(n *yaml.Node, s *Spec) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(s)
}

func compileRule(s Spec, file string, line int) (*Rule, error) {
	r := &Rule{Spec: s, File: file, Line: line}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: rule %s: %s", file, line, orUnnamed(s.ID), fmt.Sprintf(format, args...)))
	}
	if s.ID == "" || strings.ContainsAny(s.ID, " \t\n") {
		bad("id must be set and have no spaces")
	}
	if len(s.On) == 0 {
		bad("on: list the event types it applies to")
	}
	for _, t := range s.On {
		et := event.ParseType(t)
		if et == event.TypeUnknown {
			bad("on: %q is not an event type", t)
			continue
		}
		r.Types = append(r.Types, et)
	}
	if s.Score < 0 || s.Score > 100 {
		bad("score %d is not within 0–100", s.Score)
	}
	if s.Category != "" && !contains(categories, s.Category) {
		bad("category %q is not one of %s", s.Category, strings.Join(categories, ", "))
	}
	if s.Severity == "" {
		r.Severity = "low"
	} else if !contains(severities, s.Severity) {
		bad("severity %q is not one of %s", s.Severity, strings.Join(severities, ", "))
	}
	if s.Action != "" && ActionRank(s.Action) == 0 && s.Action != ActionAllow {
		bad("action %q is not review, step_up or freeze", s.Action)
	}
	switch s.Mode {
	case "", "enforce":
		r.Mode = "enforce"
	case "shadow":
		r.Shadow = true
	default:
		bad("mode %q is not enforce or shadow", s.Mode)
	}
	if s.GroupBy == "" {
		r.GroupBy = "account"
	} else if !contains(scopes, s.GroupBy) {
		bad("group_by %q is not one of %s", s.GroupBy, strings.Join(scopes, ", "))
	}
	opts := append([]expr.Option{expr.Env(Env{}), expr.AsBool()}, functions()...)
	if s.When == "" {
		bad("when: an expression is required")
	} else if p, err := expr.Compile(s.When, opts...); err != nil {
		bad("when: %s", exprError(err))
	} else {
		r.when, r.guard, r.whenFn = p, guardOf(p), nativeCond(p)
	}
	if t := s.Timer; t != nil {
		d, err := time.ParseDuration(t.After)
		if err != nil || d <= 0 {
			bad("timer.after: %q is not a positive duration", t.After)
		}
		r.After = d
		if t.Scope != "payment" && t.Scope != "account" {
			bad("timer.scope: %q is not payment or account", t.Scope)
		}
		switch {
		case t.Until == "" && t.Confirm == "":
			bad("timer: until or confirm (or both) is required")
		case t.Until != "":
			if p, err := expr.Compile(t.Until, opts...); err != nil {
				bad("timer.until: %s", exprError(err))
			} else {
				r.until, r.untilFn = p, nativeCond(p)
			}
		}
		if t.Confirm != "" {
			if p, err := expr.Compile(t.Confirm, opts...); err != nil {
				bad("timer.confirm: %s", exprError(err))
			} else {
				r.confirm, r.confirmFn = p, nativeCond(p)
			}
		}
	}
	tpl, err := parseTemplate(s.Reason)
	if err != nil {
		bad("reason: %s", err)
	}
	r.reason = tpl
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	r.reads, r.confirmReads = r.roots(), rootsOf(r.confirm)
	return r, nil
}

func orUnnamed(id string) string {
	if id == "" {
		return "(no id)"
	}
	return id
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// exprError keeps expr's position and caret snippet on one readable block.
func exprError(err error) string {
	return strings.TrimSpace(strings.ReplaceAll(err.Error(), "\n", "\n    "))
}

// Evaluator runs compiled programs with a reused VM. It is not safe for
// concurrent use: give each worker its own.
type Evaluator struct {
	vm     vm.VM
	vmOnly bool // tests: run every condition on expr's VM
}

// Match evaluates the rule's condition.
func (e *Evaluator) Match(r *Rule, env *Env) (bool, error) {
	if r.whenFn != nil && !e.vmOnly {
		return r.whenFn(env), nil
	}
	if r.guard != nil && !r.guard(&env.Event) {
		return false, nil
	}
	out, err := e.vm.Run(r.when, env)
	if err != nil {
		return false, fmt.Errorf("rule %s: %w", r.ID, err)
	}
	b, _ := out.(bool)
	return b, nil
}

// Until evaluates the rule's timer cancel condition.
func (e *Evaluator) Until(r *Rule, env *Env) (bool, error) {
	if r.until == nil {
		return false, nil
	}
	if r.untilFn != nil && !e.vmOnly {
		return r.untilFn(env), nil
	}
	out, err := e.vm.Run(r.until, env)
	if err != nil {
		return false, fmt.Errorf("rule %s timer.until: %w", r.ID, err)
	}
	b, _ := out.(bool)
	return b, nil
}

// Confirm evaluates the rule's timer confirm condition; true without one.
func (e *Evaluator) Confirm(r *Rule, env *Env) (bool, error) {
	if r.confirm == nil {
		return true, nil
	}
	if r.confirmFn != nil && !e.vmOnly {
		return r.confirmFn(env), nil
	}
	out, err := e.vm.Run(r.confirm, env)
	if err != nil {
		return false, fmt.Errorf("rule %s timer.confirm: %w", r.ID, err)
	}
	b, _ := out.(bool)
	return b, nil
}

// Reason renders the rule's reason for env; without a template it is the
// description.
func (e *Evaluator) Reason(r *Rule, env *Env) string {
	if len(r.reason) == 0 {
		if r.Description != "" {
			return r.Description
		}
		return r.ID
	}
	return r.reason.render(&e.vm, env)
}
