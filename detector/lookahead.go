package detector

import (
	"unsafe"

	"github.com/walletguard/walletguard/event"
)

// With a million accounts, most of an event's cost is waiting for memory:
// the index entry and then the row of the account, device, IP and payee,
// each a cache miss. Told of events a little ahead, the engine has the CPU
// load their state in the background, in two steps (the index entry says
// where the row is), while it decides the events before them.

// lookahead is the event announced by the last Prefetch: its index entries
// are on their way, and the next Prefetch loads its rows.
type lookahead struct {
	acct, dev, ip, payee, chain uint64
	has                         uint8
}

const (
	hasEvent = 1 << iota
	hasDev
	hasIP
	hasPayee
	hasChain
)

// Prefetch announces ev, which the engine will be asked to process after
// the event already announced: callers announce two events ahead of the
// one they process. It changes nothing; a wrong or missing announcement
// only costs speed.
func (e *Engine) Prefetch(ev *event.Event) {
	p := &e.ahead
	if p.has&hasEvent != 0 {
		e.accounts.prefetchRow(p.acct)
		if p.has&hasDev != 0 {
			e.devices.prefetchRow(p.dev)
		}
		if p.has&hasIP != 0 {
			e.ips.prefetchRow(p.ip)
		}
		if p.has&hasPayee != 0 {
			e.payees.prefetchRow(p.payee)
		}
		if p.has&hasChain != 0 {
			e.chains.prefetchRow(p.chain)
		}
	}
	*p = lookahead{acct: key64(ev.AccountID), has: hasEvent}
	e.accounts.prefetchSlot(p.acct)
	if ev.DeviceID != "" {
		p.dev, p.has = key64(ev.DeviceID), p.has|hasDev
		e.devices.prefetchSlot(p.dev)
	}
	if ev.IP != "" {
		p.ip, p.has = key64(ev.IP), p.has|hasIP
		e.ips.prefetchSlot(p.ip)
	}
	if ev.CounterpartyID != "" && ev.Type == event.TypeTransaction {
		p.payee, p.has = key64(ev.CounterpartyID), p.has|hasPayee
		e.payees.prefetchSlot(p.payee)
	}
	if ev.Type == event.TypePaymentAttempt {
		p.chain, p.has = chainKey(ev.AccountID, ev.PaymentID), p.has|hasChain
		e.chains.prefetchSlot(p.chain)
	}
}

// prefetchSlot loads the index line where key's entry is, or would be.
func (t *table[T]) prefetchSlot(key uint64) {
	if x := &t.idx; x.slots != nil {
		prefetch(uintptr(unsafe.Pointer(&x.slots[key&x.mask])))
	}
}

// prefetchRow loads key's row, every line of it, and its flags.
func (t *table[T]) prefetchRow(key uint64) {
	i, ok := t.idx.get(key)
	if !ok {
		return
	}
	start := uintptr(unsafe.Pointer(t.row(i)))
	end := start + unsafe.Sizeof(*new(T))
	for a := start &^ 63; a < end; a += 64 {
		prefetch(a)
	}
	prefetch(uintptr(unsafe.Pointer(&t.flags[i])))
}
