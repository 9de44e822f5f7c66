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
		e.prefetchKeys(p, true)
	}
	*p = keysOf(ev)
	e.prefetchKeys(p, false)
}

// prefetchKeys loads the index entries of k's rows, or with rows the rows.
func (e *Engine) prefetchKeys(k *stateKeys, rows bool) {
	e.accounts.prefetch(k.acct, rows)
	if k.has&hasDev != 0 {
		e.devices.prefetch(k.dev, rows)
	}
	if k.has&hasIP != 0 {
		e.ips.prefetch(k.ip, rows)
	}
	if k.has&hasPayee != 0 {
		e.payees.prefetch(k.payee, rows)
	}
	if k.has&hasChain != 0 {
		e.chains.prefetch(k.chain, rows)
	}
}

func (t *table[T]) prefetch(key uint64, row bool) {
	if row {
		t.prefetchRow(key)
	} else {
		t.prefetchSlot(key)
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
	e := t.idx.find(key)
	if e == nil {
		return
	}
	i := e.row - 1
	var start, end uintptr
	if t.pk != nil {
		start, end = t.pk.span(e.loc)
	} else {
		start = uintptr(unsafe.Pointer(t.row(i)))
		end = start + unsafe.Sizeof(*new(T))
	}
	for a := start &^ 63; a < end; a += 64 {
		prefetch(a)
	}
	prefetch(uintptr(unsafe.Pointer(&t.flags[i])))
}
