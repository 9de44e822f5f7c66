package detector

import (
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

// deviceState is one device across accounts.
type deviceState struct {
	first, last uint32
	accounts    [6]seen // distinct accounts recently on it
	fails10m    win
}

func (d *deviceState) view(v *rules.DeviceView, now uint32) {
	*v = rules.DeviceView{Known: d.first != 0}
	if d.first == 0 {
		return
	}
	v.Accounts1h = countSince(d.accounts[:], since(now, hour1))
	v.Accounts24h = countSince(d.accounts[:], since(now, day1))
	v.LoginFails10m = d.fails10m.count(now, min10)
	v.AgeHours = float64(now-min(now, d.first)) / 3600
}

func (d *deviceState) update(ev *event.Event, acct, now uint32) {
	if d.first == 0 {
		d.first = now
	}
	d.last = max(d.last, now)
	touch(d.accounts[:], acct, now)
	if ev.Type == event.TypeLogin && ev.Result == "failure" {
		d.fails10m.add(now, min10, 1)
	}
}

// ipState is one IP address across accounts. Accounts failing logins from
// it are counted for credential stuffing: the first in the row, more in a
// set allocated once a second account fails within the hour — an address
// where one user mistypes a password is common, one where several fail is
// rare, and a set for each of the former was a sixteenth of all state.
type ipState struct {
	first, last uint32
	logins10m   win
	fails10m    win
	accounts    [4]seen
	failedOne   [1]seen   // the account failing logins, while it is the only one
	failed      *[64]seen // accounts with failed logins, once more than one
}

func (s *ipState) view(v *rules.IPView, now uint32) {
	*v = rules.IPView{Known: s.first != 0}
	if s.first == 0 {
		return
	}
	v.Logins10m = s.logins10m.count(now, min10)
	v.LoginFails10m = s.fails10m.count(now, min10)
	v.Accounts1h = countSince(s.accounts[:], since(now, hour1))
	if f := s.failedSet(); f != nil {
		v.FailedAccounts10 = countSince(f, since(now, min10))
		v.FailedAccounts1h = countSince(f, since(now, hour1))
		v.Accounts1h = max(v.Accounts1h, v.FailedAccounts1h)
	}
	if v.Logins10m > 0 {
		v.FailureRatio10m = min(1, float64(v.LoginFails10m)/float64(v.Logins10m))
	}
}

func (s *ipState) update(ev *event.Event, acct, now uint32) {
	if s.first == 0 {
		s.first = now
	}
	s.last = max(s.last, now)
	touch(s.accounts[:], acct, now)
	if ev.Type != event.TypeLogin {
		return
	}
	s.logins10m.add(now, min10, 1)
	if ev.Result == "failure" {
		s.fails10m.add(now, min10, 1)
		s.failedLogin(acct, now)
	}
}

// failedSet is the accounts with failed logins, nil if none.
func (s *ipState) failedSet() []seen {
	switch {
	case s.failed != nil:
		return s.failed[:]
	case s.failedOne[0].last != 0:
		return s.failedOne[:]
	}
	return nil
}

func (s *ipState) failedLogin(acct, now uint32) {
	one := &s.failedOne[0]
	switch {
	case s.failed != nil:
		touch(s.failed[:], acct, now)
	case one.last == 0 || one.last < since(now, hour1):
		*one = seen{key: acct, last: now}
	case one.key == acct:
		one.last = max(one.last, now)
	default:
		s.failed = new([64]seen)
		s.failed[0], *one = *one, seen{}
		touch(s.failed[:], acct, now)
	}
}

// merchantState is one merchant's payment health. Merchants are few, so it
// may be larger than per-account state.
type merchantState struct {
	first, last uint32
	attempts10m win
	failures10m win
	baseline    float32 // EWMA of the failure rate of closed 10-minute buckets
	baseN       uint16
	bucket      uint32
	bAttempts   uint32
	bFailures   uint32
	failing     [128]seen // distinct accounts with failing attempts
	errCodes    [6]errCount
}

type errCount struct {
	code   sym
	n      uint32
	bucket uint32
}

// errSlot returns the slot counting code, taking over the slot counted
// longest ago when code is not counted yet.
func (m *merchantState) errSlot(code sym) *errCount {
	low := 0
	for i := range m.errCodes {
		if m.errCodes[i].code == code {
			return &m.errCodes[i]
		}
		if m.errCodes[i].bucket < m.errCodes[low].bucket {
			low = i
		}
	}
	m.errCodes[low] = errCount{code: code}
	return &m.errCodes[low]
}

func (m *merchantState) view(v *rules.MerchantView, now uint32, syms *symbols) {
	*v = rules.MerchantView{Known: m.first != 0}
	if m.first == 0 {
		return
	}
	v.BaselineFailRate = float64(m.baseline)
	if m.baseN < 3 {
		v.BaselineFailRate = 0.05 // too young to know: assume a typical 5%
	}
	if now+min10 < m.attempts10m.start {
		// The windows hold later minutes only: an event this late (or
		// decided again after a takeover, behind what was counted since)
		// is not judged by them, as they no longer count it (addTo).
		return
	}
	v.Attempts10m = m.attempts10m.count(now, min10)
	v.Failures10m = m.failures10m.count(now, min10)
	if v.Attempts10m > 0 {
		v.FailureRate10m = min(1, float64(v.Failures10m)/float64(v.Attempts10m))
	}
	v.FailingAccounts10m = countSince(m.failing[:], since(now, min10))
	var best errCount
	floor := since(now, 2*min10)
	for _, e := range m.errCodes {
		if e.bucket >= floor && e.n > best.n {
			best = e
		}
	}
	v.TopError10m = syms.name(best.code)
}

func failedAttempt(ev *event.Event) bool {
	return ev.Status == "failed" || ev.Status == "retrying"
}

func (m *merchantState) update(ev *event.Event, acct, now uint32, syms *symbols) {
	if m.first == 0 {
		m.first = now
	}
	m.last = max(m.last, now)
	if ev.Type != event.TypePaymentAttempt {
		return
	}
	b := now - now%min10
	if b > m.bucket {
		// Close the finished bucket into the baseline, unless it was itself
		// an outage (a spike should not teach the baseline that failing is normal).
		if m.bAttempts >= 10 {
			rate := float32(m.bFailures) / float32(m.bAttempts)
			if m.baseN == 0 {
				m.baseline = rate
			} else if m.baseN < 3 || rate < 3*m.baseline+0.1 {
				m.baseline += 0.1 * (rate - m.baseline)
			}
			m.baseN++
		}
		m.bucket, m.bAttempts, m.bFailures = b, 0, 0
	}
	m.attempts10m.add(now, min10, 1)
	if b == m.bucket {
		m.bAttempts++
	}
	if !failedAttempt(ev) {
		return
	}
	m.failures10m.add(now, min10, 1)
	if b == m.bucket {
		m.bFailures++
	}
	touch(m.failing[:], acct, now)
	if ev.ErrorCode == "" {
		return
	}
	e := m.errSlot(syms.id(ev.ErrorCode))
	if e.bucket < since(b, min10) {
		e.n = 0
	}
	e.n++
	e.bucket = b
}

// payeeState is one counterparty across senders (mule detection).
type payeeState struct {
	first, last uint32
	senders     [8]seen
	received    sumWin
}

func (p *payeeState) view(v *rules.PayeeView, now uint32) {
	*v = rules.PayeeView{Known: p.first != 0}
	if p.first == 0 {
		return
	}
	v.Senders24h = countSince(p.senders[:], since(now, day1))
	v.AgeHours = float64(now-min(now, p.first)) / 3600
	v.Received24h = p.received.sum(now, day1)
}

func (p *payeeState) update(ev *event.Event, acct, now uint32) {
	if ev.Type != event.TypeTransaction || !rules.IsOutgoing(ev.Kind) || ev.Status == "failed" || ev.Status == "reversed" {
		return
	}
	if p.first == 0 {
		p.first = now
	}
	p.last = max(p.last, now)
	touch(p.senders[:], acct, now)
	p.received.add(now, day1, float64(ev.Amount))
}

// chain is the attempts of one payment_id. It does not keep the id: its
// key hashes it, and whoever reads the chain (an attempt, a timer) has it —
// a string per chain was a tenth of all detection state.
type chain struct {
	account     uint64
	first, last uint32
	firstFail   uint32
	attempts    uint16
	failures    uint16
	succeeded   bool
	part        partTag
	lastStatus  sym
	lastError   sym
	errs        [4]chainErr
	merchant    sym
	currency    sym
	appVersion  sym
	amount      int64
}

// chainErr counts one error code of a payment's attempts.
type chainErr struct {
	code sym
	n    uint32
}

// view fills v for rules; paymentID is the chain's (from the attempt or the
// timer that reads it).
func (c *chain) view(v *rules.PaymentView, paymentID string, now uint32, syms *symbols) {
	*v = rules.PaymentView{Known: c.first != 0}
	if c.first == 0 {
		return
	}
	v.Attempts, v.Failures, v.Succeeded = int(c.attempts), int(c.failures), c.succeeded
	v.LastStatus, v.LastError = syms.name(c.lastStatus), syms.name(c.lastError)
	var best chainErr
	for _, e := range c.errs {
		if e.code != symNone {
			v.DistinctErrors++
			if e.n > best.n {
				best = e
			}
		}
	}
	v.DominantError = syms.name(best.code)
	v.MinsSinceFirst = minsSince(now, c.first)
	v.MinsSinceFailure = minsSince(now, c.firstFail)
	v.MerchantID, v.Amount, v.Currency, v.AppVersion, v.PaymentID = syms.name(c.merchant), float64(c.amount), syms.name(c.currency), syms.name(c.appVersion), paymentID
}

func (c *chain) update(ev *event.Event, acct uint64, now uint32, syms *symbols) {
	if c.first == 0 || now < c.first {
		c.first = now
		c.account = acct
	}
	c.last = max(c.last, now)
	if c.attempts < 65535 {
		c.attempts++
	}
	c.lastStatus = syms.id(ev.Status)
	if ev.MerchantID != "" {
		c.merchant = syms.id(ev.MerchantID)
	}
	if ev.Amount > 0 {
		c.amount, c.currency = ev.Amount, syms.id(ev.Currency)
	}
	if ev.AppVersion != "" {
		c.appVersion = syms.id(ev.AppVersion)
	}
	switch {
	case ev.Status == "succeeded":
		c.succeeded = true
	case failedAttempt(ev):
		if c.failures < 65535 {
			c.failures++
		}
		if c.firstFail == 0 || now < c.firstFail {
			c.firstFail = now
		}
		if ev.ErrorCode != "" {
			c.lastError = syms.id(ev.ErrorCode)
			c.countError(c.lastError)
		}
	}
}

// countError counts one attempt failing with code; a code not counted yet
// takes the slot of the rarest one when all four are taken.
func (c *chain) countError(code sym) {
	low := 0
	for i := range c.errs {
		if c.errs[i].code == code {
			c.errs[i].n++
			return
		}
		if c.errs[i].n < c.errs[low].n {
			low = i
		}
	}
	c.errs[low] = chainErr{code: code, n: 1}
}
