package app

import (
	"github.com/cespare/xxhash/v2"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
)

// Outputs are the records one or more events produced.
type Outputs struct {
	Decisions []detector.Decision
	Commands  []enforce.Command
	Alerts    []alerts.Alert
}

// Reset empties the outputs, keeping their capacity.
func (o *Outputs) Reset() {
	o.Decisions, o.Commands, o.Alerts = o.Decisions[:0], o.Commands[:0], o.Alerts[:0]
}

// Processor is the one path from a valid event to its outputs, shared by the
// daemon, replay and the synchronous scoring API so that all three decide
// alike.
type Processor struct {
	Engine  *detector.Engine
	Planner *enforce.Planner
	Alerts  *alerts.Manager
}

// Handle scores ev and appends what it produced; dup reports a redelivered
// event that produced nothing.
func (p *Processor) Handle(ev *event.Event, out *Outputs) (dup bool) {
	return p.HandleFrom(0, ev, out)
}

// HandleFrom is Handle for an event from source src (a partition: its
// timers fire on that partition's event time).
func (p *Processor) HandleFrom(src uint32, ev *event.Event, out *Outputs) (dup bool) {
	n := len(out.Decisions)
	out.Decisions, dup = p.Engine.ProcessFrom(src, ev, out.Decisions)
	p.follow(out, n)
	return dup
}

// HandleObservedFrom is HandleFrom for an event the engine observed
// before it decided the partition (detector.Engine.ProcessObserved).
func (p *Processor) HandleObservedFrom(src uint32, ev *event.Event, out *Outputs) (dup bool) {
	n := len(out.Decisions)
	out.Decisions, dup = p.Engine.ProcessObserved(src, ev, out.Decisions)
	p.follow(out, n)
	return dup
}

// FollowFrom folds ev, which another instance has decided, into the state
// as HandleFrom would, with the engine and planner following (see
// detector.Engine.SetFollowing): the state changes, nothing is counted or
// forwarded, and the outputs — the owner's — land in scratch for the
// caller to look at and drop.
func (p *Processor) FollowFrom(src uint32, ev *event.Event, scratch *Outputs) {
	p.Engine.SetFollowing(true)
	p.Planner.SetFollowing(true)
	p.HandleFrom(src, ev, scratch)
	p.Engine.SetFollowing(false)
	p.Planner.SetFollowing(false)
}

// Flush fires timers due by the last event time (end of a replay).
func (p *Processor) Flush(out *Outputs) {
	n := len(out.Decisions)
	out.Decisions = p.Engine.Flush(out.Decisions)
	p.follow(out, n)
}

func (p *Processor) follow(out *Outputs, from int) {
	for i := from; i < len(out.Decisions); i++ {
		d := &out.Decisions[i]
		out.Commands = p.Planner.Plan(d, out.Commands)
		for _, sa := range p.Planner.TakeAlerts() {
			out.Alerts = p.Alerts.Raise(sa.Key, sa.Category, sa.Severity, sa.AccountID, sa.Reason, sa.At, out.Alerts)
		}
		if len(d.Rules) > 0 {
			out.Alerts = p.Alerts.Observe(d, out.Alerts)
		}
	}
}

// SourceID names a topic partition as a timer source.
func SourceID(topic string, partition int) uint32 {
	return uint32(xxhash.Sum64String(topic))<<16 | uint32(partition)&0xffff
}

// apiSource is the timer source of events scored through POST /v1/score.
const apiSource = 0xffffffff
