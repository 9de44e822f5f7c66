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

// stateKeys are the keys of the rows an event touches, and which of them it
// has. ProcessFrom and Prefetch both take them from keysOf, so that what is
// loaded ahead is what will be used.
type stateKeys struct {
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

func keysOf(ev *event.Event) stateKeys {
	k := stateKeys{acct: key64(ev.AccountID), has: hasEvent}
	if ev.DeviceID != "" {
		k.dev, k.has = key64(ev.DeviceID), k.has|hasDev
	}
	if ev.IP != "" {
		k.ip, k.has = key64(ev.IP), k.has|hasIP
	}
	if ev.CounterpartyID != "" && ev.Type == event.TypeTransaction {
		k.payee, k.has = key64(ev.CounterpartyID), k.has|hasPayee
	}
	if ev.Type == event.TypePaymentAttempt {
		k.chain, k.has = chainKey(ev.AccountID, ev.PaymentID), k.has|hasChain
	}
	return k
}

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
	*p = keysOf(ev)
	e.accounts.prefetchSlot(p.acct)
	if p.has&hasDev != 0 {
		e.devices.prefetchSlot(p.dev)
	}
	if p.has&hasIP != 0 {
		e.ips.prefetchSlot(p.ip)
	}
	if p.has&hasPayee != 0 {
		e.payees.prefetchSlot(p.payee)
	}
	if p.has&hasChain != 0 {
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
