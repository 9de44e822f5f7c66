package detector

import (
	"math"
	"time"
)

// Profile is what the detector has learned about one account, in the words
// a support agent uses: how long it has been seen, how it usually pays,
// where from and on what. It is the account's habit as the rules see it.
type Profile struct {
	FirstSeen     time.Time `json:"first_seen"`
	LastSeen      time.Time `json:"last_seen"`
	Events        int       `json:"events"`
	Transactions  int       `json:"transactions"`
	TypicalAmount int64     `json:"typical_amount,omitempty"` // in Currency; 0 until it paid
	Currency      string    `json:"currency,omitempty"`
	HomeCountry   string    `json:"home_country,omitempty"`
	Countries     []string  `json:"countries"` // most used first
	KnownDevices  int       `json:"known_devices"`
	KnownNetworks int       `json:"known_networks"`
	RegularPayees int       `json:"regular_payees"`
	// Balance is the last balance an event reported (nil: never reported).
	Balance            *int64     `json:"balance,omitempty"`
	LastLogin          *time.Time `json:"last_login,omitempty"`
	LastLoginCountry   string     `json:"last_login_country,omitempty"`
	LastSecurityChange *time.Time `json:"last_security_change,omitempty"`
	// HighestRiskToday is the highest decision score of the last 24 hours.
	HighestRiskToday int `json:"highest_risk_today"`
}

// Profile describes the account's learned state; false if it is unknown
// (never seen, or expired after idle_expiry).
func (e *Engine) Profile(accountID string) (Profile, bool) {
	a := e.accounts.get(key64(accountID))
	if a == nil || a.last == 0 {
		return Profile{}, false
	}
	at := func(s uint32) time.Time { return time.Unix(fromSec(s), 0).UTC() }
	p := Profile{FirstSeen: at(a.first), LastSeen: at(a.last), Events: int(a.events), Transactions: int(a.txs),
		Currency: unpack3(a.currency), HomeCountry: unpack2(a.homeCountry()), Countries: []string{}}
	if a.amtN > 0 {
		p.TypicalAmount = int64(math.Round(math.Exp(float64(a.amtMean))))
	}
	cs := a.countries
	for i := 1; i < len(cs); i++ { // most used first; three slots
		for j := i; j > 0 && cs[j].n > cs[j-1].n; j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
	for _, c := range cs {
		if c.code != 0 {
			p.Countries = append(p.Countries, unpack2(c.code))
		}
	}
	for _, d := range a.devices {
		if d.last != 0 {
			p.KnownDevices++
		}
	}
	for _, s := range a.prefixes {
		if s.last != 0 {
			p.KnownNetworks++
		}
	}
	for _, s := range a.payees {
		if s.last != 0 {
			p.RegularPayees++
		}
	}
	if a.hasBalance {
		b := a.balance
		p.Balance = &b
	}
	if a.loginAt != 0 {
		t := at(a.loginAt)
		p.LastLogin, p.LastLoginCountry = &t, unpack2(a.loginCountry)
	}
	if a.secAny != 0 {
		t := at(a.secAny)
		p.LastSecurityChange = &t
	}
	if a.riskAt != 0 && e.maxTS-min(e.maxTS, a.riskAt) <= day1 {
		p.HighestRiskToday = int(a.risk)
	}
	return p, true
}

// unpack3 is the inverse of pack3 (ISO 4217 codes).
func unpack3(v uint16) string {
	if v == 0 {
		return ""
	}
	v--
	return string([]byte{byte(v/676) + 'A', byte(v/26%26) + 'A', byte(v%26) + 'A'})
}
