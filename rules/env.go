package rules

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/expr-lang/expr"

	"github.com/walletguard/walletguard/event"
)

// Never is the "minutes since" value of something that has not happened:
// large enough that `account.mins_since_password_reset < 60` is simply false.
const Never = 1e9

// Env is everything a rule expression can see. The detector fills one per
// event; Env is also the type every expression is checked against at load,
// so a misspelt field is a load error. Field names are the expr tags.
//
// The views are values, not pointers: expr then compiles `account.amount_ratio`
// to one field load by index instead of a lookup by name at run time.
type Env struct {
	Event    EventView    `expr:"event"`
	Account  AccountView  `expr:"account"`
	Device   DeviceView   `expr:"device"`
	IP       IPView       `expr:"ip"`
	Merchant MerchantView `expr:"merchant"`
	// App is the payment health of the event's app version, across all
	// users: an error spike in one release is an app fault, not theirs.
	App     MerchantView `expr:"app"`
	Payee   PayeeView    `expr:"payee"`
	Payment PaymentView  `expr:"payment"`
}

// NewEnv returns a zero Env.
func NewEnv() *Env { return &Env{} }

// EventView is the event being scored, as rules see it.
type EventView struct {
	Type                string  `expr:"type"`
	EventID             string  `expr:"event_id"`
	AccountID           string  `expr:"account_id"`
	Hour                int     `expr:"hour"` // hour of day in UTC
	DeviceID            string  `expr:"device_id"`
	IP                  string  `expr:"ip"`
	Country             string  `expr:"country"`
	HasGeo              bool    `expr:"has_geo"`
	Lat                 float64 `expr:"lat"`
	Lon                 float64 `expr:"lon"`
	UserAgent           string  `expr:"user_agent"`
	AppVersion          string  `expr:"app_version"`
	Channel             string  `expr:"channel"`
	Result              string  `expr:"result"`
	FailureReason       string  `expr:"failure_reason"`
	Method              string  `expr:"method"`
	TxID                string  `expr:"tx_id"`
	Kind                string  `expr:"kind"`
	Amount              float64 `expr:"amount"`
	Currency            string  `expr:"currency"`
	Status              string  `expr:"status"`
	MerchantID          string  `expr:"merchant_id"`
	CounterpartyID      string  `expr:"counterparty_id"`
	CounterpartyCountry string  `expr:"counterparty_country"`
	BalanceAfter        float64 `expr:"balance_after"` // -1 when not reported
	Outgoing            bool    `expr:"outgoing"`      // money leaves the account
	PaymentID           string  `expr:"payment_id"`
	Attempt             int     `expr:"attempt"`
	ErrorCode           string  `expr:"error_code"`
	LatencyMS           int     `expr:"latency_ms"`
	Change              string  `expr:"change"`
}

// Fill copies ev into the view.
func (v *EventView) Fill(ev *event.Event) {
	*v = EventView{
		Type: ev.Type.String(), EventID: ev.EventID, AccountID: ev.AccountID, Hour: ev.TS.UTC().Hour(),
		DeviceID: ev.DeviceID, IP: ev.IP, Country: ev.Country(), HasGeo: ev.HasGeo(), Lat: ev.Geo.Lat, Lon: ev.Geo.Lon,
		UserAgent: ev.UserAgent, AppVersion: ev.AppVersion, Channel: ev.Channel,
		Result: ev.Result, FailureReason: ev.FailureReason, Method: ev.Method,
		TxID: ev.TxID, Kind: ev.Kind, Amount: float64(ev.Amount), Currency: ev.Currency, Status: ev.Status,
		MerchantID: ev.MerchantID, CounterpartyID: ev.CounterpartyID, CounterpartyCountry: ev.CounterpartyCountry,
		BalanceAfter: float64(ev.BalanceAfter), Outgoing: IsOutgoing(ev.Kind),
		PaymentID: ev.PaymentID, Attempt: int(ev.Attempt), ErrorCode: ev.ErrorCode, LatencyMS: int(ev.LatencyMS),
		Change: ev.Change,
	}
}

// IsOutgoing reports whether a transaction kind moves money out of the account.
func IsOutgoing(kind string) bool {
	switch kind {
	case "payment", "transfer", "withdrawal", "cash_out":
		return true
	}
	return false
}

// AccountView is what walletguard knows about the event's account, as it was
// just before this event (so "new device" means new before this event).
type AccountView struct {
	AgeDays      float64 `expr:"age_days"`    // since walletguard first saw it
	EventsSeen   int     `expr:"events_seen"` // events of the account so far
	Transactions int     `expr:"transactions"`

	IsNewDevice    bool    `expr:"is_new_device"`
	DeviceAgeHours float64 `expr:"device_age_hours"` // since this device first appeared on the account (0 if new)
	KnownDevices   int     `expr:"known_devices"`
	// OnNewDevice: the event's device joined this account in the last 24 h,
	// after the account had been used from another device.
	OnNewDevice      bool    `expr:"on_new_device"`
	IsNewIPPrefix    bool    `expr:"is_new_ip_prefix"`
	IsNewCountry     bool    `expr:"is_new_country"`
	HomeCountry      string  `expr:"home_country"`
	KnownCountries   int     `expr:"known_countries"`
	HasPaidAbroad    bool    `expr:"has_paid_abroad"` // ever sent money to another country than home
	IsNewPayee       bool    `expr:"is_new_payee"`
	IsNewMerchant    bool    `expr:"is_new_merchant"`
	UsualHour        bool    `expr:"usual_hour"`
	HasLoginHistory  bool    `expr:"has_login_history"`
	LastLoginCountry string  `expr:"last_login_country"`
	KmFromLastLogin  float64 `expr:"km_from_last_login"`
	HoursSinceLogin  float64 `expr:"hours_since_last_login"`
	TravelSpeedKmh   float64 `expr:"travel_speed_kmh"` // from the last located login to this event

	LoginsFailed1m        int `expr:"logins_failed_1m"`
	LoginsFailed10m       int `expr:"logins_failed_10m"`
	LoginsFailed1h        int `expr:"logins_failed_1h"`
	LoginsOK1h            int `expr:"logins_ok_1h"`
	ConsecutiveLoginFails int `expr:"consecutive_login_failures"`

	TxCount1m    int     `expr:"tx_count_1m"`
	TxCount10m   int     `expr:"tx_count_10m"`
	TxCount1h    int     `expr:"tx_count_1h"`
	TxCount24h   int     `expr:"tx_count_24h"`
	OutAmount1h  float64 `expr:"out_amount_1h"`
	OutAmount24h float64 `expr:"out_amount_24h"`

	TypicalAmount float64 `expr:"typical_amount"` // geometric-mean habit of outgoing amounts
	AmountSamples int     `expr:"amount_samples"`
	AmountRatio   float64 `expr:"amount_ratio"`  // event amount / typical amount (0 without history)
	AmountZScore  float64 `expr:"amount_zscore"` // robust log-space deviation of this amount

	Balance         float64 `expr:"balance"`          // last reported, -1 if never
	PeakBalance     float64 `expr:"peak_balance"`     // highest reported in the last days
	BalanceFraction float64 `expr:"balance_fraction"` // share of the balance this outgoing amount takes
	OutShare24h     float64 `expr:"out_share_24h"`    // share of the peak balance moved out in 24h, this event included

	MinsSincePasswordReset float64 `expr:"mins_since_password_reset"`
	MinsSinceMFADisabled   float64 `expr:"mins_since_mfa_disabled"`
	MinsSincePhoneChange   float64 `expr:"mins_since_phone_change"`
	MinsSinceEmailChange   float64 `expr:"mins_since_email_change"`
	MinsSincePayeeAdded    float64 `expr:"mins_since_payee_added"`
	MinsSinceSecurityChg   float64 `expr:"mins_since_security_change"` // any of the above
	MinsSinceNewDevice     float64 `expr:"mins_since_new_device"`      // newest device's first appearance
	MinsSinceNewNetwork    float64 `expr:"mins_since_new_network"`     // first use of an IP range the account had not used
	SecurityChanges24h     int     `expr:"security_changes_24h"`
	// RecentRisk is the highest score of the account's decisions in the last
	// 24 h: evidence from earlier events (a reset, a 2FA removal) carries over
	// to the transfer that follows.
	RecentRisk int `expr:"recent_risk"`
}

// DeviceView describes the event's device across all accounts.
type DeviceView struct {
	Known         bool    `expr:"known"`
	Accounts1h    int     `expr:"accounts_1h"`  // distinct accounts seen on it
	Accounts24h   int     `expr:"accounts_24h"` // distinct accounts seen on it
	LoginFails10m int     `expr:"login_failures_10m"`
	AgeHours      float64 `expr:"age_hours"`
}

// IPView describes the event's IP address across all accounts.
type IPView struct {
	Known            bool    `expr:"known"`
	Logins10m        int     `expr:"logins_10m"`
	LoginFails10m    int     `expr:"login_failures_10m"`
	FailedAccounts10 int     `expr:"failed_accounts_10m"` // distinct accounts with failed logins
	FailedAccounts1h int     `expr:"failed_accounts_1h"`
	Accounts1h       int     `expr:"accounts_1h"`
	FailureRatio10m  float64 `expr:"failure_ratio_10m"`
}

// MerchantView describes the event's merchant's recent payment health.
type MerchantView struct {
	Known              bool    `expr:"known"`
	Attempts10m        int     `expr:"attempts_10m"`
	Failures10m        int     `expr:"failures_10m"`
	FailureRate10m     float64 `expr:"failure_rate_10m"`
	BaselineFailRate   float64 `expr:"baseline_failure_rate"`
	FailingAccounts10m int     `expr:"failing_accounts_10m"` // distinct users with failed attempts
	TopError10m        string  `expr:"top_error_10m"`
}

// PayeeView describes the event's counterparty across all senders.
type PayeeView struct {
	Known       bool    `expr:"known"`
	Senders24h  int     `expr:"senders_24h"` // distinct accounts that paid it
	AgeHours    float64 `expr:"age_hours"`   // since walletguard first saw it paid
	Received24h float64 `expr:"received_24h"`
}

// PaymentView is the chain of attempts of the event's payment_id. A chain is
// kept a day after its last attempt, an hour once the payment succeeded, and
// as long as a timer will read it.
type PaymentView struct {
	Known            bool    `expr:"known"`
	Attempts         int     `expr:"attempts"`
	Failures         int     `expr:"failures"` // failed or retrying attempts
	Succeeded        bool    `expr:"succeeded"`
	LastStatus       string  `expr:"last_status"`
	LastError        string  `expr:"last_error"`
	DominantError    string  `expr:"dominant_error"`
	DistinctErrors   int     `expr:"distinct_errors"`
	MinsSinceFirst   float64 `expr:"mins_since_first"`
	MinsSinceFailure float64 `expr:"mins_since_first_failure"`
	MerchantID       string  `expr:"merchant_id"`
	Amount           float64 `expr:"amount"`
	Currency         string  `expr:"currency"`
	AppVersion       string  `expr:"app_version"`
	PaymentID        string  `expr:"payment_id"`
}

// functions are the helpers expressions may call, with their signatures
// declared so that calls are type-checked at load.
func functions() []expr.Option {
	return []expr.Option{
		expr.Function("distance_km", func(p ...any) (any, error) {
			return DistanceKm(p[0].(float64), p[1].(float64), p[2].(float64), p[3].(float64)), nil
		}, new(func(float64, float64, float64, float64) float64)),
		expr.Function("money", func(p ...any) (any, error) {
			return Money(p[0].(float64), p[1].(string)), nil
		}, new(func(float64, string) string)),
		expr.Function("num", func(p ...any) (any, error) {
			return Num(p[0].(float64)), nil
		}, new(func(float64) string)),
		expr.Function("fixed", func(p ...any) (any, error) {
			return strconv.FormatFloat(p[0].(float64), 'f', p[1].(int), 64), nil
		}, new(func(float64, int) string)),
		expr.Function("minutes", func(p ...any) (any, error) {
			return Minutes(p[0].(float64)), nil
		}, new(func(float64) string)),
		expr.Function("count", func(p ...any) (any, error) {
			return Count(p[0].(int), p[1].(string)), nil
		}, new(func(int, string) string)),
		expr.Function("advice", func(p ...any) (any, error) {
			return Advice(p[0].(string)), nil
		}, new(func(string) string)),
		expr.Function("cause", func(p ...any) (any, error) {
			return Cause(p[0].(string)), nil
		}, new(func(string) string)),
	}
}

// DistanceKm is the great-circle distance between two points in degrees.
func DistanceKm(lat1, lon1, lat2, lon2 float64) float64 {
	const r = 6371.0
	rad := math.Pi / 180
	dlat, dlon := (lat2-lat1)*rad, (lon2-lon1)*rad
	a := math.Sin(dlat/2)*math.Sin(dlat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dlon/2)*math.Sin(dlon/2)
	return 2 * r * math.Asin(math.Min(1, math.Sqrt(a)))
}

// minorUnits is the number of decimals of a currency's minor unit where it
// is not 2 (ISO 4217).
var minorUnits = map[string]int{"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3, "JOD": 3}

// Money renders an amount in minor units as a person reads it: "48,000.00 IDR".
func Money(minor float64, currency string) string {
	d, ok := minorUnits[currency]
	if !ok {
		d = 2
	}
	v := minor / math.Pow10(d)
	whole := math.Trunc(v)
	s := Num(whole)
	if d > 0 {
		frac := math.Round((v - whole) * math.Pow10(d))
		s += "." + fmt.Sprintf("%0*d", d, int64(math.Abs(frac)))
	}
	return s + " " + currency
}

// Num renders a number with thousands separators and at most one decimal
// for small values: 4800000 -> "4,800,000", 23.46 -> "23.5".
func Num(v float64) string {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return "n/a"
	}
	if math.Abs(v) < 100 && v != math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	n := int64(math.Round(v))
	neg := n < 0
	if neg {
		n = -n
	}
	digits := strconv.FormatInt(n, 10)
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range digits {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Count renders how many of a thing there are, the noun in the singular
// for one and with an "s" otherwise: "1 attempt", "12 attempts",
// "1,200 accounts". A support agent reads reasons aloud to users.
func Count(n int, noun string) string {
	if n == 1 || n == -1 {
		return Num(float64(n)) + " " + noun
	}
	return Num(float64(n)) + " " + noun + "s"
}

// Minutes renders a duration in minutes for a person: "45 s", "12 min", "3.5 h".
func Minutes(m float64) string {
	if m >= Never {
		return "never"
	}
	d := time.Duration(m * float64(time.Minute))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%.1f h", d.Hours())
	default:
		return fmt.Sprintf("%.1f days", d.Hours()/24)
	}
}

// Cause names the likely cause behind a payment error code, for a person.
func Cause(code string) string {
	switch code {
	case "NETWORK_TIMEOUT":
		return "network"
	case "INSUFFICIENT_BALANCE":
		return "balance"
	case "ACCOUNT_FROZEN", "VERIFICATION_REQUIRED":
		return "verification"
	case "LIMIT_EXCEEDED":
		return "limit"
	case "MERCHANT_UNAVAILABLE":
		return "merchant"
	case "APP_ERROR":
		return "app"
	case "":
		return "unknown"
	}
	return "other"
}

// Advice is what support should tell the user for a payment error code.
func Advice(code string) string {
	switch Cause(code) {
	case "network":
		return "ask the user to check their connection (switch Wi-Fi/mobile data) and retry once"
	case "balance":
		return "ask the user to top up or check the linked card, then retry"
	case "verification":
		return "guide the user to complete identity verification (or check why the account is restricted)"
	case "limit":
		return "explain the transaction limit; offer a limit review if eligible"
	case "merchant":
		return "the merchant is having problems; advise the user to wait or pay another way"
	case "app":
		return "ask the user to update the app to the latest version"
	}
	return "check the attempts' error codes with the payments team"
}
