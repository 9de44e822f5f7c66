package detector

import (
	"math"

	"github.com/cespare/xxhash/v2"

	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

const (
	min1  = 60
	min10 = 600
	hour1 = 3600
	day1  = 86400
)

// device is a device known to one account.
type device struct {
	key   uint32
	first uint32
	last  uint32
}

type country struct {
	code uint16
	n    uint16
	last uint32
}

// account is the compact, fixed-size picture of one wallet account. It holds
// no pointers, so a million of them are one allocation the GC never scans,
// and it encodes to a fixed number of bytes for checkpoints (see Size in the
// README).
type account struct {
	balance, peak int64

	first, last uint32
	events      uint32
	txs         uint32

	dedup [8]uint32 // hashes of the last event_ids, to drop redeliveries

	loginFail1m, loginFail10m, loginFail1h win
	tx10m, tx1h, tx24h                     win
	secChanges                             win
	out1h, out24h                          sumWin

	// Amount habit: EWMA of log(amount) and of its absolute deviation.
	amtMean, amtDev float32

	devices   [4]device
	prefixes  [4]seen
	payees    [6]seen
	merchants bloom // every merchant ever paid: a user's shops outnumber any small recent-set
	countries [3]country

	loginLat, loginLon float32
	loginAt            uint32
	peakAt             uint32
	riskAt             uint32

	pwReset, mfaOff, phoneChg, emailChg, payeeAdded, secAny uint32
	newNet                                                  uint32 // first use of a network not in prefixes (not the first network)

	amtN         uint16
	hourN        uint16
	currency     uint16 // home currency, packed (the habits above are in it)
	loginCountry uint16
	hours        [24]uint8 // decayed histogram of active hours
	dedupPos     uint8
	consFail     uint8
	risk         uint8 // highest decision score in the last day
	hasBalance   bool
	paidAbroad   bool // an outgoing transaction to another country than home
	part         partTag
}

// homeCountry is the country the account is seen in most.
func (a *account) homeCountry() uint16 {
	var best country
	for _, c := range a.countries {
		if c.code != 0 && c.n > best.n {
			best = c
		}
	}
	return best.code
}

// noteRisk remembers a decision's score for a day.
func (a *account) noteRisk(score int, now uint32) {
	if a.riskAt == 0 || now-min(now, a.riskAt) > day1 || score >= int(a.risk) {
		a.risk, a.riskAt = uint8(score), now
	}
}

func hash32(s string) uint32 {
	h := xxhash.Sum64String(s)
	return uint32(h) ^ uint32(h>>32) | 1 // never 0: 0 marks an empty slot
}

func pack2(s string) uint16 {
	if len(s) != 2 {
		return 0
	}
	return uint16(s[0])<<8 | uint16(s[1])
}

func unpack2(v uint16) string {
	if v == 0 {
		return ""
	}
	a, b := byte(v>>8)-'A', byte(v)-'A'
	if a < 26 && b < 26 {
		return countryCodes[2*(26*int(a)+int(b)):][:2]
	}
	return string([]byte{byte(v >> 8), byte(v)})
}

// countryCodes is every two-letter code AA..ZZ in a row, so that naming a
// country (for every event's rule environment) allocates nothing.
var countryCodes = func() string {
	b := make([]byte, 0, 2*26*26)
	for a := byte('A'); a <= 'Z'; a++ {
		for c := byte('A'); c <= 'Z'; c++ {
			b = append(b, a, c)
		}
	}
	return string(b)
}()

func pack3(s string) uint16 {
	if len(s) != 3 {
		return 0
	}
	return uint16(s[0]-'A')*676 + uint16(s[1]-'A')*26 + uint16(s[2]-'A') + 1
}

// ipPrefix keys the network an address belongs to: the /24 of IPv4, the /48
// of IPv6; home networks and mobile carriers stay within one.
func ipPrefix(ip string) uint32 {
	if ip == "" {
		return 0
	}
	if i := lastIndexByte(ip, '.'); i > 0 && !containsByte(ip, ':') {
		return hash32(ip[:i])
	}
	// IPv6: the first three groups.
	n := 0
	for i := 0; i < len(ip); i++ {
		if ip[i] == ':' {
			n++
			if n == 3 {
				return hash32(ip[:i])
			}
		}
	}
	return hash32(ip)
}

func lastIndexByte(s string, c byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

func (a *account) isDuplicate(id uint32) bool {
	for _, h := range a.dedup {
		if h == id {
			return true
		}
	}
	return false
}

func (a *account) remember(id uint32) {
	a.dedup[a.dedupPos%uint8(len(a.dedup))] = id
	a.dedupPos++
}

func minsSince(now, t uint32) float64 {
	if t == 0 {
		return rules.Never
	}
	if now < t {
		return 0
	}
	return float64(now-t) / 60
}

// view fills v with the account as it was before ev.
func (a *account) view(v *rules.AccountView, ev *event.Event, now uint32) {
	*v = rules.AccountView{}
	if a.first == 0 {
		a.first = now // a brand-new account: age 0
	}
	v.AgeDays = float64(now-min(now, a.first)) / day1
	v.EventsSeen = int(a.events)
	v.Transactions = int(a.txs)

	for _, d := range a.devices {
		if d.last != 0 {
			v.KnownDevices++
		}
	}
	v.IsNewDevice = true
	if ev.DeviceID != "" {
		k := hash32(ev.DeviceID)
		for _, d := range a.devices {
			if d.key == k && d.last != 0 {
				v.IsNewDevice = false
				v.DeviceAgeHours = float64(now-min(now, d.first)) / 3600
				v.OnNewDevice = v.DeviceAgeHours < 24 && d.first > a.first+hour1
			}
		}
		if v.IsNewDevice {
			v.OnNewDevice = v.KnownDevices >= 1
		}
	} else {
		v.IsNewDevice = false
		v.DeviceAgeHours = 1e6
	}
	newest := uint32(0)
	if v.KnownDevices >= 2 { // the first device is not a "new device"
		for _, d := range a.devices {
			if d.first > newest && d.first != a.first {
				newest = d.first
			}
		}
	}
	v.MinsSinceNewDevice = minsSince(now, newest)
	v.MinsSinceNewNetwork = minsSince(now, a.newNet)
	if p := ipPrefix(ev.IP); p != 0 {
		v.IsNewIPPrefix = !has(a.prefixes[:], p)
	}
	var best country
	for _, c := range a.countries {
		if c.code != 0 {
			v.KnownCountries++
			if c.n > best.n {
				best = c
			}
		}
	}
	v.HomeCountry = unpack2(best.code)
	v.HasPaidAbroad = a.paidAbroad
	if cc := pack2(ev.Country()); cc != 0 {
		v.IsNewCountry = true
		for _, c := range a.countries {
			if c.code == cc {
				v.IsNewCountry = false
			}
		}
	}
	if ev.CounterpartyID != "" {
		v.IsNewPayee = !has(a.payees[:], hash32(ev.CounterpartyID))
	}
	if ev.MerchantID != "" {
		v.IsNewMerchant = !a.merchants.has(hash32(ev.MerchantID))
	}
	h := ev.TS.UTC().Hour()
	v.UsualHour = a.hourN < 10 || int(a.hours[h])*24 >= int(a.hourN)/2

	if a.loginAt != 0 {
		v.HasLoginHistory = true
		v.LastLoginCountry = unpack2(a.loginCountry)
		v.HoursSinceLogin = float64(now-min(now, a.loginAt)) / 3600
		if ev.HasGeo() && (a.loginLat != 0 || a.loginLon != 0) {
			v.KmFromLastLogin = rules.DistanceKm(float64(a.loginLat), float64(a.loginLon), ev.Geo.Lat, ev.Geo.Lon)
			hours := math.Max(v.HoursSinceLogin, 1.0/60) // a minute at least: clock skew between devices
			v.TravelSpeedKmh = v.KmFromLastLogin / hours
		}
	}

	v.LoginsFailed1m = a.loginFail1m.count(now, min1)
	v.LoginsFailed10m = a.loginFail10m.count(now, min10)
	v.LoginsFailed1h = a.loginFail1h.count(now, hour1)
	v.ConsecutiveLoginFails = int(a.consFail)
	v.TxCount10m = a.tx10m.count(now, min10)
	v.TxCount1h = a.tx1h.count(now, hour1)
	v.TxCount24h = a.tx24h.count(now, day1)
	v.TxCount1m = v.TxCount10m / 10 // derived: no separate 1-minute window kept
	v.OutAmount1h = a.out1h.sum(now, hour1)
	v.OutAmount24h = a.out24h.sum(now, day1)

	v.AmountSamples = int(a.amtN)
	sameCurrency := a.currency == 0 || a.currency == pack3(ev.Currency)
	if a.amtN > 0 && sameCurrency {
		v.TypicalAmount = math.Exp(float64(a.amtMean))
		if ev.Amount > 0 {
			v.AmountRatio = float64(ev.Amount) / v.TypicalAmount
			dev := math.Max(float64(a.amtDev), 0.25) // floor: a perfectly regular spender is not infinitely surprised
			v.AmountZScore = (math.Log(float64(ev.Amount)) - float64(a.amtMean)) / (1.4826 * dev)
		}
	}
	v.Balance = -1
	if a.hasBalance {
		v.Balance = float64(a.balance)
		if now-min(now, a.peakAt) <= 7*day1 {
			v.PeakBalance = float64(a.peak)
		} else {
			v.PeakBalance = float64(a.balance)
		}
	}
	if rules.IsOutgoing(ev.Kind) && ev.Type == event.TypeTransaction {
		before := float64(ev.Amount)
		if ev.BalanceAfter >= 0 {
			before += float64(ev.BalanceAfter)
		} else if a.hasBalance {
			before = math.Max(before, float64(a.balance))
		}
		if before > 0 {
			v.BalanceFraction = float64(ev.Amount) / before
		}
		peak := math.Max(v.PeakBalance, before)
		if peak > 0 {
			v.OutShare24h = math.Min(1, (v.OutAmount24h+float64(ev.Amount))/peak)
		}
	}
	v.MinsSincePasswordReset = minsSince(now, a.pwReset)
	v.MinsSinceMFADisabled = minsSince(now, a.mfaOff)
	v.MinsSincePhoneChange = minsSince(now, a.phoneChg)
	v.MinsSinceEmailChange = minsSince(now, a.emailChg)
	v.MinsSincePayeeAdded = minsSince(now, a.payeeAdded)
	v.MinsSinceSecurityChg = minsSince(now, a.secAny)
	v.SecurityChanges24h = a.secChanges.count(now, day1)
	if a.riskAt != 0 && now-min(now, a.riskAt) <= day1 {
		v.RecentRisk = int(a.risk)
	}
}

// update folds ev into the account.
func (a *account) update(ev *event.Event, now uint32) {
	if a.first == 0 || now < a.first {
		a.first = now
	}
	if now > a.last {
		a.last = now
	}
	a.events++
	if ev.DeviceID != "" {
		k := hash32(ev.DeviceID)
		found := false
		oldest := 0
		for i := range a.devices {
			d := &a.devices[i]
			if d.key == k && d.last != 0 {
				d.last = max(d.last, now)
				found = true
				break
			}
			if d.last < a.devices[oldest].last {
				oldest = i
			}
		}
		if !found {
			a.devices[oldest] = device{key: k, first: now, last: now}
		}
	}
	if p := ipPrefix(ev.IP); p != 0 {
		had := a.prefixes[0].last != 0 || a.prefixes[1].last != 0 || a.prefixes[2].last != 0 || a.prefixes[3].last != 0
		if !touch(a.prefixes[:], p, now) && had {
			a.newNet = now
		}
	}
	if cc := pack2(ev.Country()); cc != 0 {
		slot, oldest := -1, 0
		for i := range a.countries {
			if a.countries[i].code == cc {
				slot = i
				break
			}
			if a.countries[i].last < a.countries[oldest].last {
				oldest = i
			}
		}
		if slot < 0 {
			slot = oldest
			a.countries[slot] = country{code: cc}
		}
		c := &a.countries[slot]
		if c.n < math.MaxUint16 {
			c.n++
		}
		c.last = max(c.last, now)
	}
	h := ev.TS.UTC().Hour()
	if a.hours[h] == 255 { // decay so the histogram follows changing habits
		for i := range a.hours {
			a.hours[i] /= 2
		}
		a.hourN /= 2
	}
	a.hours[h]++
	a.hourN++

	switch ev.Type {
	case event.TypeLogin:
		if ev.Result == "failure" {
			a.loginFail1m.add(now, min1, 1)
			a.loginFail10m.add(now, min10, 1)
			a.loginFail1h.add(now, hour1, 1)
			if a.consFail < 255 {
				a.consFail++
			}
		} else {
			a.consFail = 0
			if now >= a.loginAt {
				a.loginAt = now
				a.loginCountry = pack2(ev.Country())
				if ev.HasGeo() {
					a.loginLat, a.loginLon = float32(ev.Geo.Lat), float32(ev.Geo.Lon)
				}
			}
		}
	case event.TypeTransaction:
		a.updateTx(ev, now)
	case event.TypeAccountChange:
		switch ev.Change {
		case "password_reset", "password_change":
			a.pwReset = now
		case "mfa_disabled":
			a.mfaOff = now
		case "phone_change":
			a.phoneChg = now
		case "email_change":
			a.emailChg = now
		case "payee_added":
			a.payeeAdded = now
		}
		switch ev.Change {
		case "password_reset", "password_change", "mfa_disabled", "phone_change", "email_change":
			a.secAny = now
			a.secChanges.add(now, day1, 1)
		}
	}
	if ev.BalanceAfter >= 0 {
		a.balance, a.hasBalance = ev.BalanceAfter, true
		if ev.BalanceAfter >= a.peak || now-min(now, a.peakAt) > 7*day1 {
			a.peak, a.peakAt = ev.BalanceAfter, now
		}
	}
}

func (a *account) updateTx(ev *event.Event, now uint32) {
	a.txs++
	if ev.Status == "failed" || ev.Status == "reversed" {
		return
	}
	if ev.BalanceAfter >= 0 && rules.IsOutgoing(ev.Kind) {
		// The balance before this transaction counts as a peak too.
		if before := ev.BalanceAfter + ev.Amount; before > a.peak || now-min(now, a.peakAt) > 7*day1 {
			a.peak, a.peakAt = before, now
		}
	}
	if !rules.IsOutgoing(ev.Kind) {
		return
	}
	if cc := pack2(ev.CounterpartyCountry); cc != 0 && cc != a.homeCountry() {
		a.paidAbroad = true
	}
	a.tx10m.add(now, min10, 1)
	a.tx1h.add(now, hour1, 1)
	a.tx24h.add(now, day1, 1)
	a.out1h.add(now, hour1, float64(ev.Amount))
	a.out24h.add(now, day1, float64(ev.Amount))
	if ev.CounterpartyID != "" {
		touch(a.payees[:], hash32(ev.CounterpartyID), now)
	}
	if ev.MerchantID != "" {
		a.merchants.add(hash32(ev.MerchantID))
	}
	cur := pack3(ev.Currency)
	if a.currency == 0 {
		a.currency = cur
	}
	if ev.Amount > 0 && cur == a.currency {
		x := float32(math.Log(float64(ev.Amount)))
		if a.amtN == 0 {
			a.amtMean, a.amtDev = x, 0.5
		} else {
			// Slow EWMA (about the last 20 payments), with outliers' pull
			// clipped so one big purchase does not move the habit much.
			const alpha = 0.05
			d := x - a.amtMean
			lim := 3 * max(a.amtDev, 0.25)
			clipped := max(-lim, min(lim, d))
			a.amtMean += alpha * clipped
			a.amtDev += alpha * (float32(math.Abs(float64(clipped))) - a.amtDev)
		}
		if a.amtN < math.MaxUint16 {
			a.amtN++
		}
	}
}
