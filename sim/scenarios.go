package sim

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

// session is an ordinary visit of an honest user, with the noise honest users make.
func (g *Generator) session(a *acct, t time.Time) {
	if t.Before(a.busyTill) {
		return
	}
	r := g.rng
	if t.Before(a.lastTS) {
		// The previous session was pushed into the future (a flight): this
		// one follows it.
		t = a.lastTS.Add(10*time.Minute + g.jitter(time.Hour))
	}
	place := a.home
	ip := a.ip
	if t.Before(a.travelTill) {
		place = a.travelTo
	} else if r.Float64() < 0.003 { // a trip abroad
		a.travelTo, a.travelTill = abroad[r.IntN(len(abroad))], t.Add(time.Duration(2+r.IntN(5))*24*time.Hour)
		place = a.travelTo
	}
	if place.name != a.lastPlace.name {
		// Nobody is in two cities at once: the first session at the new
		// place waits for the flight.
		km := rules.DistanceKm(a.lastPlace.lat, a.lastPlace.lon, place.lat, place.lon)
		arrive := a.lastTS.Add(time.Duration((km/700 + 1) * float64(time.Hour)))
		if t.Before(arrive) {
			t = arrive
		}
	}
	if place.name != a.home.name {
		ip = fmt.Sprintf("%s.%d.%d", place.ipBase, r.IntN(256), 2+r.IntN(250))
	}
	dev := a.devices[r.IntN(len(a.devices))]
	if r.Float64() < 0.002 { // a new phone
		dev = fmt.Sprintf("%s-n%d", a.devices[0], len(a.devices))
		a.devices = append(a.devices, dev)
		if r.Float64() < 0.3 { // the old one was lost: the password is reset from the new one
			reset := g.base(a, event.TypeAccountChange, t, place, dev, ip)
			reset.Change = "password_reset"
			g.emit(reset)
			t = t.Add(time.Minute + g.jitter(3*time.Minute))
		}
		login := g.base(a, event.TypeLogin, t, place, dev, ip)
		login.Result, login.Method = "success", "otp"
		g.emit(login)
		t = t.Add(30*time.Second + g.jitter(time.Minute))
		bind := g.base(a, event.TypeAccountChange, t, place, dev, ip)
		bind.Change = "device_bound"
		g.emit(bind)
	} else {
		if r.Float64() < 0.04 { // a typo before the good password
			fail := g.base(a, event.TypeLogin, t, place, dev, ip)
			fail.Result, fail.FailureReason, fail.Method = "failure", "bad_password", "password"
			g.emit(fail)
			t = t.Add(8*time.Second + g.jitter(30*time.Second))
		}
		if r.Float64() < 0.001 { // forgot the password
			for i := 0; i < 2; i++ {
				fail := g.base(a, event.TypeLogin, t, place, dev, ip)
				fail.Result, fail.FailureReason, fail.Method = "failure", "bad_password", "password"
				g.emit(fail)
				t = t.Add(15*time.Second + g.jitter(30*time.Second))
			}
			reset := g.base(a, event.TypeAccountChange, t, place, dev, ip)
			reset.Change = "password_reset"
			g.emit(reset)
			t = t.Add(time.Minute + g.jitter(2*time.Minute))
		}
		login := g.base(a, event.TypeLogin, t, place, dev, ip)
		login.Result, login.Method = "success", []string{"password", "biometric", "biometric"}[r.IntN(3)]
		g.emit(login)
	}
	if r.Float64() < 0.01 { // a new friend or family member to pay
		t = t.Add(20*time.Second + g.jitter(2*time.Minute))
		payee := fmt.Sprintf("acc-%07d", r.IntN(len(g.accounts)))
		add := g.base(a, event.TypeAccountChange, t, place, dev, ip)
		add.Change, add.Detail = "payee_added", map[string]any{"payee": payee}
		g.emit(add)
		a.payees = append(a.payees, payee)
		t = t.Add(30*time.Second + g.jitter(2*time.Minute))
		amt := g.amount(a, 2)
		if amt > a.balance {
			t = g.topup(a, t, place, dev, ip, amt*2)
		}
		a.balance -= amt
		tx := g.base(a, event.TypeTransaction, t, place, dev, ip)
		tx.TxID, tx.Kind, tx.Amount, tx.Currency, tx.Status = g.txID(), "transfer", amt, "IDR", "success"
		tx.CounterpartyID, tx.CounterpartyCountry, tx.BalanceAfter = payee, "ID", a.balance
		g.emit(tx)
	}
	for n := r.IntN(4); n > 0; n-- {
		t = t.Add(20*time.Second + g.jitter(4*time.Minute))
		switch x := r.Float64(); {
		case x < 0.6:
			scale := 1.0
			merchant := a.merchants[r.IntN(len(a.merchants))]
			if r.Float64() < 0.004 { // a rare big purchase: honest
				scale = 20 + r.Float64()*10
			}
			t = g.pay(a, t, place, dev, ip, merchant, g.amount(a, scale))
		case x < 0.85:
			amt := g.amount(a, 1.5)
			if amt > a.balance {
				t = g.topup(a, t, place, dev, ip, amt*2)
			}
			a.balance -= amt
			tx := g.base(a, event.TypeTransaction, t, place, dev, ip)
			tx.TxID, tx.Kind, tx.Amount, tx.Currency, tx.Status = g.txID(), "transfer", amt, "IDR", "success"
			tx.CounterpartyID, tx.CounterpartyCountry, tx.BalanceAfter = a.payees[r.IntN(len(a.payees))], "ID", a.balance
			g.emit(tx)
		default:
			t = g.topup(a, t, place, dev, ip, g.amount(a, 3))
		}
	}
	a.lastTS, a.lastPlace = t, place
}

func (g *Generator) txID() string { g.seq++; return fmt.Sprintf("tx-%d-%d", g.cfg.Seed, g.seq) }

func (g *Generator) topup(a *acct, t time.Time, place city, dev, ip string, amt int64) time.Time {
	a.balance += amt
	tx := g.base(a, event.TypeTransaction, t, place, dev, ip)
	tx.TxID, tx.Kind, tx.Amount, tx.Currency, tx.Status, tx.BalanceAfter = g.txID(), "topup", amt, "IDR", "success", a.balance
	g.emit(tx)
	return t.Add(10*time.Second + g.jitter(20*time.Second))
}

// pay is a payment: its attempts (with the odd honest retry), then the transaction.
func (g *Generator) pay(a *acct, t time.Time, place city, dev, ip, merchant string, amt int64) time.Time {
	r := g.rng
	pid := fmt.Sprintf("pay-%d-%d", g.cfg.Seed, g.seq)
	g.seq++
	attempt := int64(1)
	att := func(status, code string) {
		ev := g.base(a, event.TypePaymentAttempt, t, place, dev, ip)
		ev.PaymentID, ev.Attempt, ev.Status, ev.ErrorCode = pid, attempt, status, code
		ev.MerchantID, ev.Amount, ev.Currency, ev.LatencyMS = merchant, amt, "IDR", int64(150+r.IntN(600))
		g.emit(ev)
		attempt++
		t = t.Add(5*time.Second + g.jitter(15*time.Second))
	}
	switch x := r.Float64(); {
	case x < 0.03: // flaky network, then fine
		att("retrying", "NETWORK_TIMEOUT")
	case x < 0.04 || amt > a.balance: // not enough money: top up, then pay
		att("failed", "INSUFFICIENT_BALANCE")
		t = g.topup(a, t, place, dev, ip, amt*2)
	}
	if amt > a.balance {
		t = g.topup(a, t, place, dev, ip, amt*2)
	}
	att("succeeded", "")
	a.balance -= amt
	tx := g.base(a, event.TypeTransaction, t, place, dev, ip)
	tx.TxID, tx.Kind, tx.Amount, tx.Currency, tx.Status = g.txID(), "payment", amt, "IDR", "success"
	tx.MerchantID, tx.BalanceAfter = merchant, a.balance
	g.emit(tx)
	return t
}

func (g *Generator) freeAccount(t time.Time) *acct {
	for i := 0; i < 100; i++ {
		a := g.accounts[g.rng.IntN(len(g.accounts))]
		// Not while travelling, nor just back: an incident at home must not
		// look like impossible travel.
		if !t.Before(a.busyTill) && !t.Before(a.travelTill) && a.lastPlace.name == a.home.name {
			return a
		}
	}
	return g.accounts[g.rng.IntN(len(g.accounts))]
}

func (g *Generator) label(kind string, t time.Time) *Label {
	l := &Label{IncidentID: fmt.Sprintf("inc-%d-%03d", g.cfg.Seed, len(g.labels)+1), Kind: kind, Start: t}
	g.labels = append(g.labels, l)
	return l
}

func (g *Generator) incident(s scheduled) {
	switch s.kind {
	case KindStuckRetry:
		g.stuckRetry(s.at)
	case KindMerchantOutage:
		g.outage(s.at)
	case KindAppFault:
		g.appFault(s.at)
	case KindTakeover:
		g.takeover(s.at)
	case KindStuffing:
		g.stuffing(s.at)
	case KindSpendingSpike:
		g.spike(s.at)
	}
}

var causeCodes = map[string]string{
	"network": "NETWORK_TIMEOUT", "balance": "INSUFFICIENT_BALANCE", "verification": "VERIFICATION_REQUIRED",
}

// stuckRetry: a payment retried again and again, never succeeding.
func (g *Generator) stuckRetry(t time.Time) {
	r := g.rng
	a := g.freeAccount(t)
	cause := []string{"network", "balance", "verification"}[r.IntN(3)]
	l := g.label(KindStuckRetry, t)
	l.Accounts, l.Cause, l.Expect = []string{a.id}, cause, "alert"
	pid := fmt.Sprintf("pay-stuck-%d-%d", g.cfg.Seed, g.seq)
	g.seq++
	l.PaymentID = pid
	merchant := a.merchants[r.IntN(len(a.merchants))]
	l.MerchantID = merchant
	amt := g.amount(a, 1)
	login := g.base(a, event.TypeLogin, t, a.home, a.devices[0], a.ip)
	login.Result, login.Method = "success", "biometric"
	l.EventIDs = append(l.EventIDs, g.emit(login))
	n := 3 + r.IntN(4)
	for i := 1; i <= n; i++ {
		t = t.Add(20*time.Second + g.jitter(70*time.Second))
		ev := g.base(a, event.TypePaymentAttempt, t, a.home, a.devices[0], a.ip)
		ev.PaymentID, ev.Attempt, ev.Status, ev.ErrorCode = pid, int64(i), "retrying", causeCodes[cause]
		if i == n {
			ev.Status = "failed"
		}
		if cause == "network" && i%3 == 0 {
			ev.ErrorCode = "APP_ERROR" // noise: not every attempt says the same
		}
		ev.MerchantID, ev.Amount, ev.Currency, ev.LatencyMS = merchant, amt, "IDR", int64(2000+r.IntN(8000))
		l.EventIDs = append(l.EventIDs, g.emit(ev))
	}
	l.End = t
	a.busyTill, a.lastTS = t.Add(15*time.Minute), t
}

// outage: one merchant failing for everyone for a quarter of an hour.
func (g *Generator) outage(t time.Time) {
	r := g.rng
	merchant := g.merchants[r.IntN(len(g.merchants))]
	l := g.label(KindMerchantOutage, t)
	l.MerchantID, l.Expect = merchant, "alert"
	users := 30 + r.IntN(40)
	if users > len(g.accounts)/3 {
		users = max(6, len(g.accounts)/3)
	}
	end := t
	for i := 0; i < users; i++ {
		a := g.freeAccount(t)
		ts := t.Add(g.jitter(15 * time.Minute))
		pid := fmt.Sprintf("pay-out-%d-%d", g.cfg.Seed, g.seq)
		g.seq++
		amt := g.amount(a, 1)
		for k := int64(1); k <= int64(1+r.IntN(3)); k++ {
			ev := g.base(a, event.TypePaymentAttempt, ts, a.home, a.devices[0], a.ip)
			ev.PaymentID, ev.Attempt, ev.Status, ev.ErrorCode = pid, k, "retrying", "MERCHANT_UNAVAILABLE"
			ev.MerchantID, ev.Amount, ev.Currency, ev.LatencyMS = merchant, amt, "IDR", int64(5000+r.IntN(5000))
			l.EventIDs = append(l.EventIDs, g.emit(ev))
			ts = ts.Add(15*time.Second + g.jitter(40*time.Second))
		}
		l.Accounts = append(l.Accounts, a.id)
		a.busyTill = ts.Add(15 * time.Minute)
		if ts.After(end) {
			end = ts
		}
	}
	l.End = end
}

// appFault: a new app release breaks payments for the users who installed
// it, whatever the merchant: they retry and give up.
func (g *Generator) appFault(t time.Time) {
	r := g.rng
	l := g.label(KindAppFault, t)
	l.AppVersion, l.Expect = fmt.Sprintf("5.3.%d", len(g.labels)), "alert"
	users := min(15+r.IntN(25), max(6, len(g.accounts)/3))
	end := t
	for i := 0; i < users; i++ {
		a := g.freeAccount(t)
		a.appVer = l.AppVersion // this user updated; later sessions use the new release too
		ts := t.Add(g.jitter(20 * time.Minute))
		pid := fmt.Sprintf("pay-app-%d-%d", g.cfg.Seed, g.seq)
		g.seq++
		merchant := a.merchants[r.IntN(len(a.merchants))]
		amt := g.amount(a, 1)
		n := int64(1 + r.IntN(3))
		for k := int64(1); k <= n; k++ {
			ev := g.base(a, event.TypePaymentAttempt, ts, a.home, a.devices[0], a.ip)
			ev.PaymentID, ev.Attempt, ev.Status, ev.ErrorCode = pid, k, "retrying", "APP_ERROR"
			if k == n {
				ev.Status = "failed"
			}
			ev.MerchantID, ev.Amount, ev.Currency, ev.LatencyMS = merchant, amt, "IDR", int64(100+r.IntN(300))
			l.EventIDs = append(l.EventIDs, g.emit(ev))
			ts = ts.Add(10*time.Second + g.jitter(30*time.Second))
		}
		l.Accounts = append(l.Accounts, a.id)
		a.busyTill = ts.Add(15 * time.Minute)
		if ts.After(end) {
			end = ts
		}
	}
	l.End = end
}

// takeover: an attacker gets in, changes what protects the account, adds a
// payee and drains the balance.
func (g *Generator) takeover(t time.Time) {
	r := g.rng
	a := g.freeAccount(t)
	if a.balance < 50_000_000 { // make it worth stealing
		t = g.topup(a, t, a.home, a.devices[0], a.ip, 200_000_000+int64(r.IntN(300_000_000)))
		t = t.Add(2*time.Hour + g.jitter(4*time.Hour))
	}
	variant := []string{"reset_2fa", "sim_swap", "quiet_new_device"}[r.IntN(3)]
	l := g.label(KindTakeover, t)
	l.Accounts, l.Variant, l.Expect = []string{a.id}, variant, "freeze"
	l.Start = t
	place := attackerPlaces[r.IntN(len(attackerPlaces))]
	dev := fmt.Sprintf("dev-x-%d-%d", g.cfg.Seed, g.seq)
	g.seq++
	ip := fmt.Sprintf("%s.%d.%d", place.ipBase, r.IntN(256), 2+r.IntN(250))
	// Attackers often tunnel through the victim's own country.
	if r.Float64() < 0.5 {
		place = a.home
		place.lat, place.lon = place.lat+0.3, place.lon+0.3
	}
	step := func(d time.Duration) { t = t.Add(d/2 + g.jitter(d)) }
	ev := func(typ event.Type) event.Event { return g.base(a, typ, t, place, dev, ip) }
	emit := func(e event.Event) { l.EventIDs = append(l.EventIDs, g.emit(e)) }
	switch variant {
	case "reset_2fa":
		e := ev(event.TypeAccountChange)
		e.Change = "password_reset"
		emit(e)
		step(2 * time.Minute)
		e = ev(event.TypeLogin)
		e.Result, e.Method = "success", "password"
		emit(e)
		step(3 * time.Minute)
		e = ev(event.TypeAccountChange)
		e.Change = "mfa_disabled"
		emit(e)
	case "sim_swap":
		e := ev(event.TypeAccountChange)
		e.Change = "phone_change"
		emit(e)
		step(4 * time.Minute)
		e = ev(event.TypeLogin)
		e.Result, e.Method = "success", "otp"
		emit(e)
	default:
		e := ev(event.TypeLogin)
		e.Result, e.Method = "success", "password"
		emit(e)
		step(40 * time.Minute)
	}
	step(4 * time.Minute)
	mule := fmt.Sprintf("mule-%d-%d", g.cfg.Seed, r.IntN(20))
	e := ev(event.TypeAccountChange)
	e.Change, e.Detail = "payee_added", map[string]any{"payee": mule}
	emit(e)
	shares := []float64{0.45, 0.6, 1}
	for _, sh := range shares {
		step(3 * time.Minute)
		amt := int64(math.Round(float64(a.balance)*sh/100) * 100)
		if amt <= 0 {
			break
		}
		a.balance -= amt
		tx := ev(event.TypeTransaction)
		tx.TxID, tx.Kind, tx.Amount, tx.Currency, tx.Status = g.txID(), "transfer", amt, "IDR", "success"
		tx.CounterpartyID, tx.CounterpartyCountry, tx.BalanceAfter = mule, "ID", a.balance
		id := g.emit(tx)
		l.EventIDs = append(l.EventIDs, id)
		l.LossEventIDs = append(l.LossEventIDs, id)
	}
	l.End = t
	a.busyTill, a.lastTS = t.Add(6*time.Hour), t
}

// stuffing: one IP trying leaked passwords on hundreds of accounts.
func (g *Generator) stuffing(t time.Time) {
	r := g.rng
	place := attackerPlaces[r.IntN(len(attackerPlaces))]
	ip := fmt.Sprintf("%s.%d.%d", place.ipBase, r.IntN(256), 2+r.IntN(250))
	l := g.label(KindStuffing, t)
	l.IP, l.Expect = ip, "alert"
	n := min(150+r.IntN(250), len(g.accounts)/2)
	end := t
	for i := 0; i < n; i++ {
		a := g.freeAccount(t)
		ts := t.Add(g.jitter(20 * time.Minute))
		dev := fmt.Sprintf("bot-%d-%d", g.cfg.Seed, r.IntN(50))
		e := g.base(a, event.TypeLogin, ts, place, dev, ip)
		e.Channel, e.UserAgent = "web", "Mozilla/5.0 (X11; Linux x86_64)"
		if r.Float64() < 0.03 {
			e.Result, e.Method = "success", "password"
			l.Compromised = append(l.Compromised, a.id)
		} else {
			e.Result, e.FailureReason, e.Method = "failure", "bad_password", "password"
		}
		l.EventIDs = append(l.EventIDs, g.emit(e))
		l.Accounts = append(l.Accounts, a.id)
		a.busyTill = ts.Add(time.Hour)
		if ts.After(end) {
			end = ts
		}
	}
	l.End = end
}

// spike: a payment far above the account's habit at a merchant it never used.
func (g *Generator) spike(t time.Time) {
	r := g.rng
	a := g.freeAccount(t)
	l := g.label(KindSpendingSpike, t)
	l.Accounts, l.Expect = []string{a.id}, "step_up"
	login := g.base(a, event.TypeLogin, t, a.home, a.devices[0], a.ip)
	login.Result, login.Method = "success", "password"
	l.EventIDs = append(l.EventIDs, g.emit(login))
	t = t.Add(time.Minute + g.jitter(2*time.Minute))
	amt := g.amount(a, 60+r.Float64()*60)
	merchant := g.merchants[r.IntN(len(g.merchants))]
	for slices.Contains(a.merchants, merchant) {
		merchant = g.merchants[r.IntN(len(g.merchants))]
	}
	l.MerchantID = merchant
	if amt > a.balance {
		a.balance += amt * 2
	}
	a.balance -= amt
	tx := g.base(a, event.TypeTransaction, t, a.home, a.devices[0], a.ip)
	tx.TxID, tx.Kind, tx.Amount, tx.Currency, tx.Status = g.txID(), "payment", amt, "IDR", "success"
	tx.MerchantID, tx.BalanceAfter = merchant, a.balance
	l.EventIDs = append(l.EventIDs, g.emit(tx))
	l.End = t
	a.busyTill, a.lastTS = t.Add(time.Hour), t
}
