package detector

import (
	"cmp"
	"container/heap"
	"errors"
	"slices"

	"github.com/walletguard/walletguard/event"
)

// The event topic is keyed by account, so all of an account's events come
// from one source partition: its row, its payment chains and its timers
// belong to that partition. Devices, IPs, payees, merchants and app
// versions do not — their counts span every partition. What is here lets
// several engines share the partitions: each decides its own and only
// observes the others' events (Observe), so that every engine's entity
// counts are those of one engine reading everything; and a partition's
// state moves from one engine to another (DropPartition, AdoptPartition)
// when its owner changes.

// partTag is the partition number of the source an account row or a
// payment chain was last written from, plus one: 0 is a row from before
// partitions were recorded (or from partition 65535, past the tag's range),
// which no partition claims until its account's next event. A source's
// number holds its topic in its upper half (app.SourceID); the tag keeps
// only the partition, because an account's events share their partition
// number on every topic keyed by account with as many partitions — the
// topics members share are split alike (ingest's sharedOwners).
type partTag uint16

func tagOf(src uint32) partTag {
	p := src & 0xffff
	if p == 0xffff {
		return 0
	}
	return partTag(p + 1)
}

// RowPartition is the partition number of the source a changelog row of an
// account, a payment chain or a timer (Capture.EachRow) was written from;
// ok is false for a row of what spans partitions (a device, an IP, a payee,
// a merchant), a delete (v empty), and a row from before partitions were
// recorded.
func RowPartition(kind byte, v []byte) (partition int, ok bool) {
	var tag partTag
	switch kind {
	case rowAccount:
		var a account
		if decodeStored(v, &a) != nil {
			return 0, false
		}
		tag = a.part
	case rowChain:
		tag = chainTag(v)
	case rowTimer:
		t, err := decodeTimerHead(v)
		if err != nil {
			return 0, false
		}
		tag = tagOf(t)
	}
	if tag == 0 {
		return 0, false
	}
	return int(tag) - 1, true
}

// chainTag reads the partition tag that ends an encoded chain (appendChain)
// without its symbols.
func chainTag(b []byte) partTag {
	r := rbuf{b: b}
	for range 7 { // account, first, last, firstFail, attempts, failures, succeeded
		r.u64()
	}
	r.skip()
	r.skip()
	for range len(chain{}.errs) {
		r.skip()
		r.u64()
	}
	r.skip()
	r.u64()
	r.skip()
	r.skip()
	r.skip()
	if r.err != nil || len(r.b) == 0 {
		return 0
	}
	t := partTag(r.u64())
	if r.err != nil {
		return 0
	}
	return t
}

// AccountPartition is the partition number of the source the account's
// last event came from; ok is false for an account the engine holds no
// row of, or one from before partitions were recorded.
func (e *Engine) AccountPartition(accountID string) (partition int, ok bool) {
	a := e.accounts.get(key64(accountID))
	if a == nil || a.part == 0 {
		return 0, false
	}
	return int(a.part) - 1, true
}

// PartitionState counts what a partition's state held when it was dropped
// or adopted.
type PartitionState struct {
	Accounts, Payments, Timers int
}

// Observe folds an event of a partition another engine decides into the
// entity state — the devices, IPs, payees, merchants and app versions it
// names — exactly as ProcessFrom would, and touches nothing of its account:
// no row, chain, timer or decision. It moves the engine's clock (sweeps,
// expiry) as ProcessFrom does, but not the partition's own event time,
// which only decided events move: a partition adopted later fires its
// timers on the time its owner reached. A redelivered event cannot be told
// without its account's row and is counted again.
func (e *Engine) Observe(ev *event.Event) {
	now := toSec(ev.TS.Unix())
	keys := keysOf(ev)
	acctID := hash32(ev.AccountID)
	// The same rows as ProcessFrom upserts, so that the tables hold the
	// same keys (capacity and sweeping see the same rows).
	if keys.has&hasDev != 0 {
		e.devices.upsert(keys.dev).update(ev, acctID, now)
	}
	if keys.has&hasIP != 0 {
		e.ips.upsert(keys.ip).update(ev, acctID, now)
	}
	if ev.MerchantID != "" {
		e.merchant(key64(ev.MerchantID)).update(ev, acctID, now, e.syms)
	}
	if ev.Type == event.TypePaymentAttempt && ev.AppVersion != "" {
		e.merchant(appKey(ev.AppVersion)).update(ev, acctID, now, e.syms)
	}
	if keys.has&hasPayee != 0 {
		e.payees.upsert(keys.payee).update(ev, acctID, now)
	}
	e.sweepStep(0)
	if now > e.maxTS {
		e.maxTS = now
		if e.maxTS-e.lastSweep >= hour1 {
			e.sweep()
		}
	}
}

// forgetTimers is dropTimers for an account handed over with its partition.
func (e *Engine) forgetTimers(akey uint64) { e.endTimers(akey, e.timerForgot) }

// timerForgot is timerGone for a timer handed over with its partition.
func (e *Engine) timerForgot(t *timer) {
	if t.saved {
		e.timersForgot = append(e.timersForgot, t.seq)
	}
	e.timerGone(t)
}

// ProcessObserved is ProcessFrom for an event this engine observed before
// it owned the partition — an event its previous owner decided after its
// last checkpoint, decided again by the new one: the account's state takes
// it in, the entities, which counted it when it was observed, do not again.
// Entity views are then those of the moment the partition was adopted, a
// little ahead of the event: a decision near a threshold (distinct accounts
// on an IP, a merchant's failure rate) can differ from the one the previous
// owner published.
func (e *Engine) ProcessObserved(src uint32, ev *event.Event, out []Decision) (_ []Decision, dup bool) {
	e.observed = true
	defer func() { e.observed = false }()
	return e.ProcessFrom(src, ev, out)
}

// DropPartition removes the state of src's partition, on every topic — its
// accounts, their payment chains and timers — when another instance takes the partition
// over. The next checkpoint deletes them from the store, but does not hand
// their deletion to a changelog (Capture.EachRow): there they are the new
// owner's. Entity state stays: it counts every partition's events.
func (e *Engine) DropPartition(src uint32) (PartitionState, error) {
	if e.capture != nil {
		return PartitionState{}, errors.New("drop partition: a checkpoint is being captured")
	}
	tag := tagOf(src)
	var st PartitionState
	var keys []uint64
	e.accounts.idx.each(func(k uint64, i uint32) {
		if e.accounts.read(i).part == tag {
			keys = append(keys, k)
		}
	})
	for _, k := range keys {
		st.Timers += len(e.byAccount[k])
		e.forgetTimers(k)
		if i, ok := e.accounts.idx.get(k); ok {
			e.accounts.forget(i, k)
		}
	}
	st.Accounts = len(keys)
	keys = keys[:0]
	e.chains.idx.each(func(k uint64, i uint32) {
		if e.chains.read(i).part == tag {
			keys = append(keys, k)
		}
	})
	for _, k := range keys {
		if i, ok := e.chains.idx.get(k); ok {
			e.chains.forget(i, k)
		}
	}
	st.Payments = len(keys)
	// Timers of accounts whose rows went at capacity are in the queue yet;
	// the partition's queues are one per topic.
	for s, h := range e.timers {
		if tagOf(s) != tag {
			continue
		}
		for _, t := range *h {
			if !t.cancelled && !t.done {
				st.Timers++
				t.cancelled = true
				e.timerForgot(t)
				e.dropFromAccount(t)
			}
		}
		delete(e.timers, s)
	}
	for s := range e.srcMax {
		if tagOf(s) == tag {
			delete(e.srcMax, s)
		}
	}
	e.ahead = stateKeys{}
	e.updateGauges()
	return st, nil
}

// AdoptPartition replaces the state of src's partition, on every topic, with n's — an engine
// restored from the previous owner's checkpoint or changelog: its accounts,
// their payment chains and pending timers, and the partition's event time.
// Entity state is not taken: an engine that observed the partition's
// events has it. The next checkpoint writes the adopted rows. n keeps its
// state, and is not to be used for deciding after.
func (e *Engine) AdoptPartition(n *Engine, src uint32) (PartitionState, error) {
	if n.capture != nil {
		return PartitionState{}, errors.New("adopt partition: a checkpoint of the adopted state is being captured")
	}
	if _, err := e.DropPartition(src); err != nil {
		return PartitionState{}, err
	}
	tag := tagOf(src)
	var st PartitionState
	n.accounts.idx.each(func(k uint64, i uint32) {
		if r := n.accounts.read(i); r.part == tag {
			row := *r
			*e.accounts.upsert(k) = row
			st.Accounts++
		}
	})
	n.chains.idx.each(func(k uint64, i uint32) {
		if r := n.chains.read(i); r.part == tag {
			row := *r
			row.resymbol(n.syms, e.syms)
			*e.chains.upsert(k) = row
			st.Payments++
		}
	})
	// Renumbered in the order they were armed: a timer due in the same
	// second as another fires after it, as it would have at the owner.
	var pending []*timer
	for s, h := range n.timers {
		if tagOf(s) != tag {
			continue
		}
		for _, t := range *h {
			if !t.cancelled && !t.done {
				pending = append(pending, t)
			}
		}
	}
	for s, m := range n.srcMax {
		if tagOf(s) == tag {
			e.srcMax[s] = m
		}
	}
	slices.SortFunc(pending, func(a, b *timer) int { return cmp.Compare(a.seq, b.seq) })
	for _, t := range pending {
		// A timer's seq is its key in this engine's checkpoints.
		e.timerSeq++
		c := &timer{due: t.due, seq: e.timerSeq, rule: t.rule, account: t.account, paymentID: t.paymentID, src: t.src, ev: t.ev}
		heap.Push(e.queue(t.src), c)
		e.timersNew = append(e.timersNew, c)
		e.byAccount[c.account] = append(e.byAccount[c.account], c)
		e.markTimers(c.account)
		st.Timers++
	}
	e.maxTS = max(e.maxTS, n.maxTS)
	e.updateGauges()
	return st, nil
}

// resymbol rewrites the chain's symbols, numbered in from's table, into
// to's numbering.
func (c *chain) resymbol(from, to *symbols) {
	re := func(s sym) sym {
		if s <= symOther {
			return s // reserved: the same in every table
		}
		return to.id(from.name(s))
	}
	c.lastStatus, c.lastError = re(c.lastStatus), re(c.lastError)
	c.merchant, c.currency, c.appVersion = re(c.merchant), re(c.currency), re(c.appVersion)
	for i := range c.errs {
		c.errs[i].code = re(c.errs[i].code)
	}
}
