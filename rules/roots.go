package rules

import (
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"

	"github.com/walletguard/walletguard/event"
)

// Root is one of the entity views of the environment, as a bit.
type Root uint8

// The views a rule can read besides its event.
const (
	RootDevice Root = 1 << iota
	RootIP
	RootMerchant
	RootApp
	RootPayee
	RootPayment
	RootAccount
)

var rootNames = map[string]Root{"device": RootDevice, "ip": RootIP, "merchant": RootMerchant,
	"app": RootApp, "payee": RootPayee, "payment": RootPayment, "account": RootAccount}

// rootsOf lists the views a compiled expression reads.
func rootsOf(p *vm.Program) Root {
	if p == nil {
		return 0
	}
	var c rootCollector
	n := p.Node()
	ast.Walk(&n, &c)
	return c.roots
}

type rootCollector struct{ roots Root }

func (c *rootCollector) Visit(n *ast.Node) {
	if id, ok := (*n).(*ast.IdentifierNode); ok {
		c.roots |= rootNames[id.Value]
	}
}

// Reads is every view the rule reads: its condition, timer conditions and
// reason.
func (r *Rule) Reads() Root { return r.reads }

// ConfirmReads is the views the rule's timer confirm condition reads: a
// timer that fires needs only these to be confirmed or dropped, and the
// rest of Reads for its reason once confirmed.
func (r *Rule) ConfirmReads() Root { return r.confirmReads }

func (r *Rule) roots() Root {
	v := rootsOf(r.when) | rootsOf(r.until) | rootsOf(r.confirm)
	for _, p := range r.reason {
		v |= rootsOf(p.prog)
	}
	return v
}

// Uses reports whether any rule for events of type t reads the view: the
// detector leaves the others unfilled (a view costs memory reads even when
// no rule looks at it).
func (s *Set) Uses(t event.Type, v Root) bool { return s.uses[t]&v != 0 }

// SpansAccounts reports whether the rule reads a view that counts over
// many accounts — a device, an IP, a merchant, an app version, a payee —
// and not only its event, its account and its payment. What such a rule
// sees depends on how the events of different accounts interleave.
func (r *Rule) SpansAccounts() bool { return r.reads&^(RootPayment|RootAccount) != 0 }

// AcrossAccounts is the ids of the set's rules that span accounts
// (Rule.SpansAccounts), for comparing what instances that split the
// accounts decide.
func (s *Set) AcrossAccounts() map[string]bool {
	spans := make(map[string]bool, len(s.Rules))
	for _, r := range s.Rules {
		spans[r.ID] = r.SpansAccounts()
	}
	return spans
}
