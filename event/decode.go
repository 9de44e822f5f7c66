package event

import (
	stdjson "encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"
)

// MaxSize is the largest event value accepted, in bytes (CONTRACT §1).
const MaxSize = 64 << 10

// MaxFutureSkew is how far ahead of arrival an event's ts may be.
const MaxFutureSkew = 24 * time.Hour

// MinTS is the earliest event time accepted: no wallet event predates it,
// and one that claims to (1970, year 1) comes from a clock that was never
// set. Detection state counts seconds from it.
var MinTS = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// Reason is why an event was rejected. It is a small closed set so that it can
// label metrics; the free-text detail lives in RejectError.Detail.
type Reason string

// Rejection reasons.
const (
	ReasonOversize       Reason = "oversize"
	ReasonInvalidJSON    Reason = "invalid_json"
	ReasonMissingField   Reason = "missing_field"
	ReasonWrongType      Reason = "wrong_type"
	ReasonUnknownType    Reason = "unknown_type"
	ReasonNegativeAmount Reason = "negative_amount"
	ReasonFutureTS       Reason = "future_ts"
	ReasonInvalidValue   Reason = "invalid_value"
)

// Reasons lists every rejection reason, for pre-initialising metrics.
func Reasons() []Reason {
	return []Reason{ReasonOversize, ReasonInvalidJSON, ReasonMissingField, ReasonWrongType,
		ReasonUnknownType, ReasonNegativeAmount, ReasonFutureTS, ReasonInvalidValue}
}

// RejectError says why bytes are not a valid event.
type RejectError struct {
	Reason Reason
	// Field is the field at fault ("ts", "geo.country", "amount"), empty
	// when the value as a whole is (not JSON, too large). It names what a
	// producer's fix is about, so dead letters are grouped by it.
	Field  string
	Detail string
}

func (e *RejectError) Error() string { return string(e.Reason) + ": " + e.Detail }

func reject(r Reason, field, format string, args ...any) error {
	return &RejectError{Reason: r, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the rejection reason of err, or "" if err is not a rejection.
func ReasonOf(err error) Reason {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// missingInt marks an integer field the JSON did not set: no valid event
// carries it, and it survives decoding untouched when the key is absent or null.
const missingInt = math.MinInt64

type wire struct {
	Event
	TS string `json:"ts"`
}

// Decode parses and validates one event. now is the arrival time, used only
// for the future-timestamp check. It is the single JSON entry point of the
// project: goccy/go-json was chosen by measurement (BenchmarkDecode* in this
// package: about 5x faster than encoding/json on a typical event).
func Decode(b []byte, now time.Time) (Event, error) {
	return decode(b, now, false)
}

// DecodeOwned is Decode for a record the caller hands over: the event's
// strings point into b instead of a copy of it, so b must never change
// afterwards. kafka-go gives every record a buffer of its own, and the copy
// was a quarter of the decoding time.
func DecodeOwned(b []byte, now time.Time) (Event, error) {
	return decode(b, now, true)
}

func decode(b []byte, now time.Time, owned bool) (Event, error) {
	if len(b) <= MaxSize {
		var w wire
		if decodeFast(b, &w, owned) {
			ev := w.Event
			if err := validate(&ev, w.TS, now); err != nil {
				return Event{}, err
			}
			return ev, nil
		}
	}
	return decodeGoJSON(b, now)
}

// decodeGoJSON is Decode without the fast path, which must agree with it.
func decodeGoJSON(b []byte, now time.Time) (Event, error) {
	return decodeWith(gojson.Unmarshal, b, now)
}

// decodeStd is the same decoder on encoding/json, kept for the benchmark that
// justifies the choice.
func decodeStd(b []byte, now time.Time) (Event, error) {
	return decodeWith(stdjson.Unmarshal, b, now)
}

func decodeWith(unmarshal func([]byte, any) error, b []byte, now time.Time) (Event, error) {
	if len(b) > MaxSize {
		return Event{}, reject(ReasonOversize, "", "event is %d bytes, the limit is %d", len(b), MaxSize)
	}
	if !startsObject(b) {
		return Event{}, reject(ReasonInvalidJSON, "", "value is not a JSON object")
	}
	if !utf8.Valid(b) {
		return Event{}, reject(ReasonInvalidJSON, "", "value is not valid UTF-8")
	}
	var w wire
	w.Amount, w.Attempt, w.BalanceAfter, w.LatencyMS = missingInt, missingInt, missingInt, missingInt
	if err := unmarshal(b, &w); err != nil {
		return Event{}, classifyJSONError(err)
	}
	ev := w.Event
	if err := validate(&ev, w.TS, now); err != nil {
		return Event{}, err
	}
	return ev, nil
}

func startsObject(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return true
		default:
			return false
		}
	}
	return false
}

func classifyJSONError(err error) error {
	var gte *gojson.UnmarshalTypeError
	if errors.As(err, &gte) {
		return reject(ReasonWrongType, gte.Field, "field %q: %s is not %s", fieldName(gte.Field), gte.Value, gte.Type)
	}
	var ste *stdjson.UnmarshalTypeError
	if errors.As(err, &ste) {
		return reject(ReasonWrongType, ste.Field, "field %q: %s is not %s", fieldName(ste.Field), ste.Value, ste.Type)
	}
	return reject(ReasonInvalidJSON, "", "%s", err.Error())
}

func fieldName(f string) string {
	if f == "" {
		return "(value)"
	}
	return f
}

var (
	channels    = set("app", "web", "api", "merchant")
	results     = set("success", "failure")
	methods     = set("password", "otp", "biometric", "sso")
	kinds       = set("payment", "transfer", "withdrawal", "cash_out", "topup", "refund")
	txStatuses  = set("success", "failed", "pending", "reversed")
	attStatuses = set("succeeded", "failed", "retrying", "pending")
	changes     = set("password_reset", "password_change", "mfa_disabled", "mfa_enrolled", "phone_change",
		"email_change", "device_bound", "payee_added", "limit_change", "card_added")
)

func set(vals ...string) map[string]struct{} {
	m := make(map[string]struct{}, len(vals))
	for _, v := range vals {
		m[v] = struct{}{}
	}
	return m
}

func oneOf(m map[string]struct{}, v string) bool { _, ok := m[v]; return ok }

func validate(ev *Event, ts string, now time.Time) error {
	if ev.TypeName == "" {
		return reject(ReasonMissingField, "type", "type is required")
	}
	ev.Type = ParseType(ev.TypeName)
	if ev.Type == TypeUnknown {
		return reject(ReasonUnknownType, "type", "type %q is not one of login, transaction, payment_attempt, account_change", clip(ev.TypeName))
	}
	if err := idField("event_id", ev.EventID); err != nil {
		return err
	}
	if err := idField("account_id", ev.AccountID); err != nil {
		return err
	}
	if ts == "" {
		return reject(ReasonMissingField, "ts", "ts is required")
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return reject(ReasonInvalidValue, "ts", "ts %q is not RFC 3339 with an offset", clip(ts))
	}
	if t.Before(MinTS) {
		return reject(ReasonInvalidValue, "ts", "ts %s is before %s, the earliest accepted (a device clock that was never set?)", ts, MinTS.Format(time.DateOnly))
	}
	if t.After(now.Add(MaxFutureSkew)) {
		return reject(ReasonFutureTS, "ts", "ts %s is more than 24h after arrival %s", ts, now.UTC().Format(time.RFC3339))
	}
	ev.TS = t
	if ev.IP != "" {
		if _, err := netip.ParseAddr(ev.IP); err != nil {
			return reject(ReasonInvalidValue, "ip", "ip %q is not an IPv4 or IPv6 literal", clip(ev.IP))
		}
	}
	if ev.Channel != "" && !oneOf(channels, ev.Channel) {
		return reject(ReasonInvalidValue, "channel", "channel %q is not one of app, web, api, merchant", clip(ev.Channel))
	}
	if g := ev.Geo; g != (Geo{}) {
		if g.Country != "" && !isCountry(g.Country) {
			return reject(ReasonInvalidValue, "geo.country", "geo.country %q is not an ISO 3166-1 alpha-2 code", clip(g.Country))
		}
		if g.Lat < -90 || g.Lat > 90 || g.Lon < -180 || g.Lon > 180 {
			return reject(ReasonInvalidValue, "geo", "geo lat/lon %g,%g out of range", g.Lat, g.Lon)
		}
	}
	// Integers that this type does not require default to zero (or -1 for an
	// unreported balance) before the type's own checks.
	amountSet := ev.Amount != missingInt
	attemptSet := ev.Attempt != missingInt
	if !amountSet {
		ev.Amount = 0
	}
	if !attemptSet {
		ev.Attempt = 0
	}
	if ev.BalanceAfter == missingInt {
		ev.BalanceAfter = -1
	}
	if ev.LatencyMS == missingInt {
		ev.LatencyMS = 0
	} else if ev.LatencyMS < 0 {
		return reject(ReasonInvalidValue, "latency_ms", "latency_ms %d is negative", ev.LatencyMS)
	}
	if ev.Amount < 0 {
		return reject(ReasonNegativeAmount, "amount", "amount %d is negative", ev.Amount)
	}
	if ev.Currency != "" && !isCurrency(ev.Currency) {
		return reject(ReasonInvalidValue, "currency", "currency %q is not an ISO 4217 code", clip(ev.Currency))
	}
	if ev.CounterpartyCountry != "" && !isCountry(ev.CounterpartyCountry) {
		return reject(ReasonInvalidValue, "counterparty_country", "counterparty_country %q is not an ISO 3166-1 alpha-2 code", clip(ev.CounterpartyCountry))
	}

	switch ev.Type {
	case TypeLogin:
		if err := enumField("result", ev.Result, results, true); err != nil {
			return err
		}
		if err := enumField("method", ev.Method, methods, false); err != nil {
			return err
		}
	case TypeTransaction:
		if ev.TxID == "" {
			return reject(ReasonMissingField, "tx_id", "tx_id is required for a transaction")
		}
		if err := enumField("kind", ev.Kind, kinds, true); err != nil {
			return err
		}
		if !amountSet {
			return reject(ReasonMissingField, "amount", "amount is required for a transaction")
		}
		if ev.Currency == "" {
			return reject(ReasonMissingField, "currency", "currency is required for a transaction")
		}
		if err := enumField("status", ev.Status, txStatuses, true); err != nil {
			return err
		}
	case TypePaymentAttempt:
		if ev.PaymentID == "" {
			return reject(ReasonMissingField, "payment_id", "payment_id is required for a payment_attempt")
		}
		if !attemptSet {
			return reject(ReasonMissingField, "attempt", "attempt is required for a payment_attempt")
		}
		if ev.Attempt < 1 {
			return reject(ReasonInvalidValue, "attempt", "attempt %d is below 1", ev.Attempt)
		}
		if err := enumField("status", ev.Status, attStatuses, true); err != nil {
			return err
		}
	case TypeAccountChange:
		if err := enumField("change", ev.Change, changes, true); err != nil {
			return err
		}
	}
	return nil
}

func idField(name, v string) error {
	if v == "" {
		return reject(ReasonMissingField, name, "%s is required", name)
	}
	if len(v) > 128 && utf8.RuneCountInString(v) > 128 {
		return reject(ReasonInvalidValue, name, "%s is longer than 128 characters", name)
	}
	return nil
}

func enumField(name, v string, allowed map[string]struct{}, required bool) error {
	if v == "" {
		if required {
			return reject(ReasonMissingField, name, "%s is required", name)
		}
		return nil
	}
	if !oneOf(allowed, v) {
		return reject(ReasonInvalidValue, name, "%s %q is not an allowed value", name, clip(v))
	}
	return nil
}

func isUpperAlpha(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < n; i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

func isCountry(s string) bool  { return isUpperAlpha(s, 2) }
func isCurrency(s string) bool { return isUpperAlpha(s, 3) }

// clip keeps hostile values from bloating error messages and logs.
func clip(s string) string {
	if len(s) <= 64 {
		return s
	}
	return strings.ToValidUTF8(s[:64], "") + "…"
}

// Hints are what a rejected value still says about its producer: the event
// type, app build and channel it claims, when it is a JSON object that
// holds them as strings, whatever else is wrong with it. They group dead
// letters by where they came from.
type Hints struct {
	Type, AppVersion, Channel string
}

// HintsOf reads the hints of a value; a value that is not a JSON object
// has none.
func HintsOf(b []byte) Hints {
	var m map[string]gojson.RawMessage
	if !startsObject(b) || gojson.Unmarshal(b, &m) != nil {
		return Hints{}
	}
	str := func(k string) string {
		var s string
		if gojson.Unmarshal(m[k], &s) != nil {
			return ""
		}
		return clip(s)
	}
	return Hints{Type: str("type"), AppVersion: str("app_version"), Channel: str("channel")}
}
